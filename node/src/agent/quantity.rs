//! Kubernetes resource quantities (`500m`, `1.5`, `64Mi`, `1e3`) as numbers.

/// `value` as thousandths of a unit (CPU millicores), rounded up, or `None`
/// if it is not a quantity.
pub(crate) fn milli(value: &str) -> Option<u64> {
    scaled(value, 1000)
}

/// `value` in whole units (memory bytes), rounded up, or `None` if it is not
/// a quantity.
pub(crate) fn units(value: &str) -> Option<u64> {
    scaled(value, 1)
}

/// Parses a quantity and returns it multiplied by `scale`, rounded up.
fn scaled(value: &str, scale: u128) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    if number.starts_with('-') {
        return None;
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole
        .chars()
        .chain(frac.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // Numerator and denominator of the value times `scale`, exactly.
    let digits: String = format!("{whole}{frac}");
    let mut num: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut den: u128 = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    num = num.checked_mul(scale)?;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e >= 0 {
                (10u128.checked_pow(e.unsigned_abs())?, 1)
            } else {
                (1, 10u128.checked_pow(e.unsigned_abs())?)
            }
        }
        _ => return None,
    };
    num = num.checked_mul(mul)?;
    den = den.checked_mul(div)?;
    u64::try_from(num.div_ceil(den)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("0.25"), Some(250));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("100u"), Some(1));
        assert_eq!(units("64Mi"), Some(64 << 20));
        assert_eq!(units("1Gi"), Some(1 << 30));
        assert_eq!(units("128M"), Some(128_000_000));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("1.5Ki"), Some(1536));
        assert_eq!(units("12"), Some(12));
        assert_eq!(units("abc"), None);
        assert_eq!(units("-1"), None);
        assert_eq!(units("1Qi"), None);
    }
}
