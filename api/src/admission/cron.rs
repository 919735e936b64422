//! Cron schedules as the CronJob controller accepts them (robfig/cron's
//! standard parser): five fields or a `@descriptor`.

const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];
const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Checks a schedule; the error says what is wrong, like robfig/cron's.
pub fn check(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if s.starts_with('@') {
        return if DESCRIPTORS.contains(&s) {
            Ok(())
        } else {
            Err(format!("unrecognized descriptor: {s}"))
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let specs: [(u32, u32, &[&str]); 5] = [
        (0, 59, &[]),
        (0, 23, &[]),
        (1, 31, &[]),
        (1, 12, MONTHS),
        (0, 6, DAYS),
    ];
    for (i, (field, (min, max, names))) in fields.iter().zip(specs).enumerate() {
        let question_ok = i == 2 || i == 4;
        for part in field.split(',') {
            check_part(part, min, max, names, question_ok)?;
        }
    }
    Ok(())
}

fn check_part(
    part: &str,
    min: u32,
    max: u32,
    names: &[&str],
    question_ok: bool,
) -> Result<(), String> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (part, None),
    };
    if let Some(step) = step {
        let n: u32 = step
            .parse()
            .map_err(|_| format!("failed to parse int from {step}"))?;
        if n == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
    }
    if range == "*" || (question_ok && range == "?") {
        return Ok(());
    }
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (value(a, names)?, value(b, names)?),
        None => {
            let v = value(range, names)?;
            (v, v)
        }
    };
    if lo < min {
        return Err(format!(
            "beginning of range ({lo}) below minimum ({min}): {part}"
        ));
    }
    if hi > max {
        return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
    }
    if lo > hi {
        return Err(format!(
            "beginning of range ({lo}) beyond end of range ({hi}): {part}"
        ));
    }
    Ok(())
}

fn value(s: &str, names: &[&str]) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        let offset = if names.len() == 12 { 1 } else { 0 };
        return Ok(i as u32 + offset);
    }
    s.parse()
        .map_err(|_| format!("failed to parse int from {s}"))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn schedules() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * *",
            "@hourly",
            "0 9-17 * * MON-FRI",
            "15,45 */2 1 jan ?",
            "0 0 1 1/3 *",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * 0 * *",
            "@every 5m",
            "a * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
