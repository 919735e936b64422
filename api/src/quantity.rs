//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`)
//! read exactly, as integers: CPU in millicores, everything else in units
//! (bytes for memory). Like Kubernetes' `MilliValue()` and `Value()`, a
//! fractional result is rounded up, so `1.5m` CPU asks for 2 millicores and
//! `0.1` bytes for 1 byte: a request never shrinks by being rounded.

/// The value of `s` multiplied by 1000 (millicores for CPU), rounded up;
/// `None` if `s` is not a quantity. Saturates at `i64::MAX`/`i64::MIN`.
pub fn parse_milli(s: &str) -> Option<i64> {
    parse_scaled(s, 3)
}

/// The value of `s` in units (bytes for memory), rounded up; `None` if `s`
/// is not a quantity. Saturates at `i64::MAX`/`i64::MIN`.
pub fn parse_units(s: &str) -> Option<i64> {
    parse_scaled(s, 0)
}

/// `s` times `10^scale`, rounded towards positive infinity.
fn parse_scaled(s: &str, scale: i32) -> Option<i64> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // Mantissa digits beyond u128's range are dropped as if they were
    // zeros: a request of 10^38 of anything already saturates.
    let mut mantissa: u128 = 0;
    let mut exponent: i32 = scale;
    let mut truncated = false;
    for (digit, fractional) in whole
        .bytes()
        .map(|b| (b, false))
        .chain(fraction.bytes().map(|b| (b, true)))
    {
        let d = u128::from(digit - b'0');
        match mantissa.checked_mul(10).and_then(|m| m.checked_add(d)) {
            Some(m) => {
                mantissa = m;
                if fractional {
                    exponent -= 1;
                }
            }
            None => {
                truncated |= d != 0;
                if !fractional {
                    exponent += 1;
                }
            }
        }
    }
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        exp => {
            let e = exp.strip_prefix(['e', 'E'])?;
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Exponents this large saturate or vanish anyway.
            let value: i32 = digits.parse().unwrap_or(i32::MAX / 4).min(i32::MAX / 4);
            (0, if e.starts_with('-') { -value } else { value })
        }
    };
    exponent += decimal;
    let magnitude = scale_up(mantissa, binary, exponent, truncated);
    Some(if negative {
        // Rounding up a negative value goes towards zero.
        let down = scale_up_floor(mantissa, binary, exponent);
        -(i64::try_from(down).unwrap_or(i64::MAX))
    } else {
        i64::try_from(magnitude).unwrap_or(i64::MAX)
    })
}

/// `ceil(mantissa * 2^binary * 10^exponent)`, saturating at `u128::MAX`.
fn scale_up(mantissa: u128, binary: u32, exponent: i32, truncated: bool) -> u128 {
    let floor = scale_up_floor(mantissa, binary, exponent);
    let exact = if exponent >= 0 {
        true
    } else {
        divides(mantissa, binary, exponent)
    };
    if exact && !truncated {
        floor
    } else {
        floor.saturating_add(1)
    }
}

/// `floor(mantissa * 2^binary * 10^exponent)`, saturating at `u128::MAX`.
fn scale_up_floor(mantissa: u128, binary: u32, exponent: i32) -> u128 {
    if mantissa == 0 {
        return 0;
    }
    let shifted = if binary >= mantissa.leading_zeros() {
        return u128::MAX;
    } else {
        mantissa << binary
    };
    if exponent >= 0 {
        let mut value = shifted;
        for _ in 0..exponent {
            value = match value.checked_mul(10) {
                Some(v) => v,
                None => return u128::MAX,
            };
        }
        value
    } else {
        let mut value = shifted;
        for _ in 0..exponent.unsigned_abs() {
            if value == 0 {
                break;
            }
            value /= 10;
        }
        value
    }
}

/// Whether `mantissa * 2^binary` is a multiple of `10^-exponent`.
fn divides(mantissa: u128, binary: u32, exponent: i32) -> bool {
    if mantissa == 0 {
        return true;
    }
    if binary >= mantissa.leading_zeros() {
        // Saturated: the value is huge, its fractional part irrelevant.
        return true;
    }
    let mut value = mantissa << binary;
    for _ in 0..exponent.unsigned_abs() {
        if !value.is_multiple_of(10) {
            return false;
        }
        value /= 10;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{parse_milli, parse_units};

    #[test]
    fn cpu_in_millicores() {
        let cases: &[(&str, Option<i64>)] = &[
            ("100m", Some(100)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            (".5", Some(500)),
            ("2.", Some(2000)),
            ("1.5m", Some(2)),
            ("250000u", Some(250)),
            ("1n", Some(1)),
            ("0", Some(0)),
            ("0m", Some(0)),
            ("1e3", Some(1_000_000)),
            ("1E-3", Some(1)),
            ("1k", Some(1_000_000)),
            ("+3", Some(3000)),
            ("-1", Some(-1000)),
            ("-1.5m", Some(-1)),
            ("999999999999999999999", Some(i64::MAX)),
            ("", None),
            ("m", None),
            (".", None),
            ("1.2.3", None),
            ("1x", None),
            ("1e", None),
            ("1e+-3", None),
            ("abc", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_milli(s), *want, "{s:?}");
        }
    }

    #[test]
    fn memory_in_bytes() {
        let cases: &[(&str, Option<i64>)] = &[
            ("128Mi", Some(128 << 20)),
            ("1G", Some(1_000_000_000)),
            ("1e3", Some(1000)),
            ("512Ki", Some(512 << 10)),
            ("1.5Gi", Some(3 << 29)),
            ("0.1", Some(1)),
            ("100m", Some(1)),
            ("1Ei", Some(1 << 60)),
            ("8Ei", Some(i64::MAX)),
            ("1e100", Some(i64::MAX)),
            ("1e-100", Some(1)),
            ("12345", Some(12345)),
            ("1Mi ", Some(1 << 20)),
            ("1 Mi", None),
            ("1KiB", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_units(s), *want, "{s:?}");
        }
    }
}
