//! `duration.HumanDuration` from `k8s.io/apimachinery/pkg/util/duration`:
//! the AGE kubectl prints.

const SECOND: i128 = 1_000_000_000;
const MINUTE: i128 = 60 * SECOND;
const HOUR: i128 = 60 * MINUTE;

/// Formats a duration given in nanoseconds (negative when the time lies in
/// the future) the way kubectl does: `5s`, `3m20s`, `10m`, `2h5m`, `3d4h`,
/// `400d`, `2y5d`.
pub fn human(nanos: i128) -> String {
    // Up to two seconds in the future counts as now: clocks disagree.
    let seconds = nanos / SECOND;
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / MINUTE;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / HOUR;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        let cases: &[(i128, &str)] = &[
            (-3 * SECOND, "<invalid>"),
            (-SECOND - 1, "0s"),
            (-SECOND / 2, "0s"),
            (0, "0s"),
            (5 * SECOND, "5s"),
            (119 * SECOND + SECOND / 2, "119s"),
            (2 * MINUTE, "2m"),
            (200 * SECOND, "3m20s"),
            (9 * MINUTE + 59 * SECOND, "9m59s"),
            (10 * MINUTE, "10m"),
            (179 * MINUTE, "179m"),
            (3 * HOUR, "3h"),
            (2 * HOUR + 5 * MINUTE, "125m"),
            (7 * HOUR + 59 * MINUTE, "7h59m"),
            (8 * HOUR, "8h"),
            (47 * HOUR + 59 * MINUTE, "47h"),
            (48 * HOUR, "2d"),
            (3 * 24 * HOUR + 4 * HOUR, "3d4h"),
            (8 * 24 * HOUR - HOUR, "7d23h"),
            (8 * 24 * HOUR, "8d"),
            (400 * 24 * HOUR, "400d"),
            (2 * 365 * 24 * HOUR, "2y"),
            (2 * 365 * 24 * HOUR + 5 * 24 * HOUR, "2y5d"),
            (8 * 365 * 24 * HOUR, "8y"),
            (20 * 365 * 24 * HOUR + 100 * 24 * HOUR, "20y"),
        ];
        for (nanos, want) in cases {
            assert_eq!(human(*nanos), *want, "{nanos}ns");
        }
    }
}
