//! `pi`: an example Skiff job (a `wasi:cli/command` component).
//!
//! Prints pi to N decimal places, truncated, on one line: `pi 5` prints
//! `3.14159`, and `pi 0` prints `3`. N is the first argument, else the
//! `DIGITS` environment variable, else 100. It must be an integer from 0 to
//! [`MAX_DIGITS`]; anything else is reported on stderr with exit code 2.
//!
//! The digits come from the Rabinowitz–Wagon spigot, which uses only
//! machine integers and is exact: O(N²) time, O(N) memory, so the job also
//! serves as a tunable CPU burner.

use std::io::Write;
use std::process::ExitCode;

/// The largest N accepted: the spigot keeps about 3.4·N `u64`s (27 MB at
/// this limit) and runs for hours at this size, so larger requests are
/// almost certainly mistakes.
const MAX_DIGITS: usize = 1_000_000;

const DEFAULT_DIGITS: usize = 100;

/// Extra digits computed past the last one printed. The spigot may hold back
/// a run of 9s until it learns whether a carry arrives, so the printed digits
/// are final only once a few more have been produced; runs of 9s among the
/// first million decimals are at most 7 long.
const GUARD_DIGITS: usize = 10;

fn main() -> ExitCode {
    let requested = std::env::args()
        .nth(1)
        .map(|arg| (arg, "argument"))
        .or_else(|| std::env::var("DIGITS").ok().map(|var| (var, "DIGITS")));
    let places = match requested {
        None => DEFAULT_DIGITS,
        Some((text, source)) => match text.trim().parse::<usize>() {
            Ok(n) if n <= MAX_DIGITS => n,
            _ => {
                eprintln!(
                    "pi: invalid digit count {text:?} from {source}: \
                     expected an integer from 0 to {MAX_DIGITS}"
                );
                return ExitCode::from(2);
            }
        },
    };

    let digits = pi_digits(places + 1);
    let mut line = String::with_capacity(places + 3);
    line.push(char::from(b'0' + digits[0]));
    if places > 0 {
        line.push('.');
        line.extend(digits[1..].iter().map(|&d| char::from(b'0' + d)));
    }
    line.push('\n');
    match std::io::stdout().lock().write_all(line.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi: writing to stdout failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first `count` decimal digits of pi, starting with the 3.
fn pi_digits(count: usize) -> Vec<u8> {
    let total = count + GUARD_DIGITS;
    // Pi in a mixed-radix representation: 2 + 1/3·(2 + 2/5·(2 + 3/7·(...))).
    let len = total * 10 / 3 + 1;
    let mut remainders = vec![2u64; len];
    let mut digits = Vec::with_capacity(total + 1);
    let mut predigit: Option<u8> = None;
    let mut nines = 0usize;

    for _ in 0..total {
        // Multiply by 10 and normalise from the right; what carries out of
        // the leftmost place is the next digit, possibly 10.
        let mut carry = 0u64;
        for i in (1..len).rev() {
            let place = i as u64;
            let x = remainders[i] * 10 + carry * (place + 1);
            let radix = 2 * place + 1;
            remainders[i] = x % radix;
            carry = x / radix;
        }
        let x = remainders[0] * 10 + carry;
        remainders[0] = x % 10;
        let q = (x / 10) as u8;

        match q {
            9 => nines += 1,
            10 => {
                digits.extend(predigit.map(|d| d + 1));
                digits.extend(std::iter::repeat_n(0, nines));
                predigit = Some(0);
                nines = 0;
            }
            _ => {
                digits.extend(predigit);
                digits.extend(std::iter::repeat_n(9, nines));
                predigit = Some(q);
                nines = 0;
            }
        }
    }
    digits.extend(predigit);
    digits.extend(std::iter::repeat_n(9, nines));
    digits.truncate(count);
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &str = "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679";

    #[test]
    fn matches_known_digits() {
        let digits: String = pi_digits(KNOWN.len())
            .iter()
            .map(|&d| char::from(b'0' + d))
            .collect();
        assert_eq!(digits, KNOWN);
    }

    #[test]
    fn survives_the_feynman_point() {
        // Six 9s start at decimal place 762.
        let digits = pi_digits(800);
        assert_eq!(&digits[762..768], &[9; 6]);
        assert_eq!(digits[768], 8);
    }
}
