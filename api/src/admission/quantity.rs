//! Resource quantities (`500m`, `128Mi`, `1e3`), parsed far enough to
//! compare requests with limits.

/// The message Kubernetes gives for a quantity it cannot parse.
pub const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// The value of a quantity, or `None` if it is not one.
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    let num_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(num_end);
    let digits = number.trim_start_matches(['+', '-']);
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let e = exp.strip_prefix(['e', 'E'])?;
            let unsigned = e.trim_start_matches(['+', '-']);
            if unsigned.is_empty()
                || !unsigned.chars().all(|c| c.is_ascii_digit())
                || e.len() - unsigned.len() > 1
            {
                return None;
            }
            10f64.powi(e.parse().ok()?)
        }
    };
    Some(base * factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<f64>)] = &[
            ("1", Some(1.0)),
            ("500m", Some(0.5)),
            ("0.5", Some(0.5)),
            ("128Mi", Some(128.0 * 1024.0 * 1024.0)),
            ("1Gi", Some(1024f64.powi(3))),
            ("2k", Some(2000.0)),
            ("1e3", Some(1000.0)),
            ("1E-3", Some(0.001)),
            ("-1", Some(-1.0)),
            ("", None),
            ("abc", None),
            ("1x", None),
            ("Mi", None),
            ("1.2.3", None),
            ("1e", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), *want, "{s:?}");
        }
    }
}
