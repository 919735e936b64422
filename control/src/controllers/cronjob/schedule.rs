//! Cron schedules as Kubernetes' CronJob controller reads them: robfig/cron
//! v3's standard parser (five fields, or one of the `@` descriptors
//! Kubernetes accepts), evaluated in a time zone.
//!
//! A schedule fires at every instant, on a whole minute of the zone's wall
//! clock, whose wall-clock time matches the five fields. Around daylight
//! saving changes this gives robfig/cron's behaviour: a wall-clock time
//! skipped by a spring-forward gap does not fire that day, and one repeated
//! by a fall-back fold fires twice (once per offset).
//!
//! Written here rather than taken from a crate: the crates that parse cron
//! (`cron`, `croner`) compute on chrono and chrono-tz, a second date-time
//! library and zone database beside jiff's, and none documents robfig's
//! exact rules (`N/step` meaning `N-max/step`, the day-of-month OR
//! day-of-week rule unless either is `*`).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// How far ahead (or back) a schedule is searched before it is declared
/// unsatisfiable: ten years covers every leap day, even across 2100, which
/// is not a leap year, while bounding the work for `0 0 30 2 *`.
const SEARCH_SPAN: SignedDuration = SignedDuration::from_hours(24 * 366 * 10);

/// A bit set on a field written `*` or `?` (robfig's `starBit`): it decides
/// how the day-of-month and day-of-week fields combine.
const STAR: u64 = 1 << 63;

/// A schedule that could not be parsed; the message reads like robfig's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {schedule:?}: {reason}")]
pub struct ParseError {
    /// The schedule as written.
    pub schedule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Schedule {
    /// Parses a schedule: five fields (minute, hour, day of month, month,
    /// day of week; `*`, `?`, lists, ranges, steps, month and day names) or
    /// `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
    /// `@midnight`, `@hourly`. `@every` and `TZ=` prefixes are rejected, as
    /// Kubernetes' validation rejects them.
    pub fn parse(spec: &str) -> Result<Schedule, ParseError> {
        let err = |reason: String| ParseError {
            schedule: spec.to_owned(),
            reason,
        };
        let trimmed = spec.trim();
        if trimmed.is_empty() {
            return Err(err("empty spec string".into()));
        }
        if trimmed.starts_with('@') {
            let expanded = match trimmed {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                other => return Err(err(format!("unrecognized descriptor: {other}"))),
            };
            return Schedule::parse(expanded);
        }
        if trimmed.contains("TZ=") {
            return Err(err(
                "TZ and CRON_TZ are not supported in schedule, use timeZone instead".into(),
            ));
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected exactly 5 fields, found {}: {:?}",
                fields.len(),
                fields
            )));
        }
        let field = |s: &str, b: &Bounds| parse_field(s, b).map_err(&err);
        Ok(Schedule {
            minute: field(fields[0], &MINUTES)?,
            hour: field(fields[1], &HOURS)?,
            dom: field(fields[2], &DOM)?,
            month: field(fields[3], &MONTHS)?,
            dow: field(fields[4], &DOW)?,
        })
    }

    /// The first time strictly after `after` at which the schedule fires in
    /// `tz`; `None` if it never fires in the next ten years (`0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let limit = after.checked_add(SEARCH_SPAN).unwrap_or(Timestamp::MAX);
        let mut lower = after;
        let mut offset = tz.to_offset(after);
        let mut transitions = tz.following(after);
        loop {
            let transition = transitions.next().filter(|t| t.timestamp() < limit);
            let segment_end = transition.as_ref().map_or(limit, |t| t.timestamp());
            let last_day = offset.to_datetime(segment_end).date();
            if let Some(civil) = self.next_civil(offset.to_datetime(lower), last_day)
                && let Ok(at) = offset.to_timestamp(civil)
                && at < segment_end
            {
                return Some(at);
            }
            let transition = transition?;
            // Instants from the transition on, read at the new offset.
            lower = transition
                .timestamp()
                .checked_sub(SignedDuration::from_nanos(1))
                .ok()?;
            offset = transition.offset();
        }
    }

    /// The last time at or before `at` at which the schedule fires in `tz`;
    /// `None` if it did not fire in the ten years before.
    pub fn latest_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let limit = at.checked_sub(SEARCH_SPAN).unwrap_or(Timestamp::MIN);
        let mut upper = at;
        let mut offset = tz.to_offset(at);
        // A transition exactly at `at` starts the segment `at` is in.
        let start = at
            .checked_add(SignedDuration::from_nanos(1))
            .unwrap_or(Timestamp::MAX);
        let mut transitions = tz.preceding(start);
        loop {
            let transition = transitions.next().filter(|t| t.timestamp() > limit);
            let segment_start = transition.as_ref().map_or(limit, |t| t.timestamp());
            let first_day = offset.to_datetime(segment_start).date();
            if let Some(civil) = self.prev_civil(offset.to_datetime(upper), first_day)
                && let Ok(found) = offset.to_timestamp(civil)
                && found >= segment_start
            {
                return Some(found);
            }
            let transition = transition?;
            upper = transition
                .timestamp()
                .checked_sub(SignedDuration::from_nanos(1))
                .ok()?;
            offset = tz.to_offset(upper);
        }
    }

    /// The first matching wall-clock minute strictly after `after`, on or
    /// before the day `last_day`.
    fn next_civil(&self, after: DateTime, last_day: Date) -> Option<DateTime> {
        let start = floor_minute(after)
            .checked_add(SignedDuration::from_mins(1))
            .ok()?;
        let mut day = start.date();
        let (mut hour, mut minute) = (start.hour(), start.minute());
        while day <= last_day {
            if self.day_matches(day)
                && let Some((h, m)) = self.first_time_from(hour, minute)
            {
                return Some(day.at(h, m, 0, 0));
            }
            day = day.tomorrow().ok()?;
            (hour, minute) = (0, 0);
        }
        None
    }

    /// The last matching wall-clock minute at or before `at`, on or after
    /// the day `first_day`.
    fn prev_civil(&self, at: DateTime, first_day: Date) -> Option<DateTime> {
        let end = floor_minute(at);
        let mut day = end.date();
        let (mut hour, mut minute) = (end.hour(), end.minute());
        while day >= first_day {
            if self.day_matches(day)
                && let Some((h, m)) = self.last_time_until(hour, minute)
            {
                return Some(day.at(h, m, 0, 0));
            }
            day = day.yesterday().ok()?;
            (hour, minute) = (23, 59);
        }
        None
    }

    fn first_time_from(&self, hour: i8, minute: i8) -> Option<(i8, i8)> {
        (hour..24).filter(|&h| has(self.hour, h)).find_map(|h| {
            let from = if h == hour { minute } else { 0 };
            (from..60).find(|&m| has(self.minute, m)).map(|m| (h, m))
        })
    }

    fn last_time_until(&self, hour: i8, minute: i8) -> Option<(i8, i8)> {
        (0..=hour)
            .rev()
            .filter(|&h| has(self.hour, h))
            .find_map(|h| {
                let to = if h == hour { minute } else { 59 };
                (0..=to)
                    .rev()
                    .find(|&m| has(self.minute, m))
                    .map(|m| (h, m))
            })
    }

    /// robfig's `dayMatches`: both day fields must match if either is a
    /// star, otherwise either may.
    fn day_matches(&self, day: Date) -> bool {
        if !has(self.month, day.month()) {
            return false;
        }
        let dom = has(self.dom, day.day());
        let dow = has(self.dow, day.weekday().to_sunday_zero_offset());
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }
}

fn has(bits: u64, value: i8) -> bool {
    (0..63).contains(&value) && bits & (1 << value) != 0
}

fn floor_minute(t: DateTime) -> DateTime {
    t.date().at(t.hour(), t.minute(), 0, 0)
}

/// One field: comma-separated `*`, `?`, `N`, `N-M`, each with an optional
/// `/step` (`N/step` means `N-max/step`).
fn parse_field(field: &str, bounds: &Bounds) -> Result<u64, String> {
    let mut bits = 0;
    for part in field.split(',') {
        bits |= parse_range(part, bounds)?;
    }
    Ok(bits)
}

fn parse_range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let mut range_and_step = expr.split('/');
    let range = range_and_step.next().unwrap_or_default();
    let step = range_and_step.next();
    if range_and_step.next().is_some() {
        return Err(format!("too many slashes: {expr}"));
    }
    let (mut start, mut end, mut extra) = (b.min, b.max, 0);
    let mut single = false;
    if range == "*" || range == "?" {
        extra = STAR;
    } else {
        let mut low_high = range.split('-');
        start = value(low_high.next().unwrap_or_default(), b)?;
        match (low_high.next(), low_high.next()) {
            (None, _) => {
                end = start;
                single = true;
            }
            (Some(high), None) => end = value(high, b)?,
            (Some(_), Some(_)) => return Err(format!("too many hyphens: {expr}")),
        }
    }
    let step = match step {
        None => 1,
        Some(s) => {
            let n: u32 = s
                .parse()
                .map_err(|_| format!("failed to parse int from {s}"))?;
            if single {
                end = b.max;
            }
            if n > 1 {
                extra = 0;
            }
            n
        }
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok((start..=end)
        .step_by(step as usize)
        .fold(extra, |bits, v| bits | (1 << v)))
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    if let Some(i) = b.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + b.min);
    }
    s.parse()
        .map_err(|_| format!("failed to parse int from {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, zone: &str, after: &str) -> String {
        let tz = TimeZone::get(zone).unwrap();
        let at = Schedule::parse(spec)
            .unwrap()
            .next_after(ts(after), &tz)
            .unwrap();
        at.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }

    fn prev(spec: &str, zone: &str, at: &str) -> String {
        let tz = TimeZone::get(zone).unwrap();
        let found = Schedule::parse(spec)
            .unwrap()
            .latest_at_or_before(ts(at), &tz)
            .unwrap();
        found
            .to_zoned(tz)
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    #[test]
    fn parses_what_kubernetes_accepts() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * *",
            "@hourly",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "0 9-17 * * MON-FRI",
            "15,45 */2 1 jan ?",
            "0 0 1 1/3 *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "61 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "@every 5m",
            "@HOURLY",
            "a * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "1-2-3 * * * *",
            "*/2/3 * * * *",
            "TZ=UTC * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_semantics() {
        // `N/step` runs from N to the field's maximum.
        assert_eq!(
            next("50/5 * * * *", "UTC", "2024-01-01T00:51:00Z"),
            "2024-01-01T00:55:00+00:00"
        );
        assert_eq!(
            next("50/5 * * * *", "UTC", "2024-01-01T00:55:00Z"),
            "2024-01-01T01:50:00+00:00"
        );
        // Day of month OR day of week when neither is a star: the 13th, or
        // any Friday.
        assert_eq!(
            next("0 0 13 * 5", "UTC", "2024-09-01T00:00:00Z"),
            "2024-09-06T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 13 * 5", "UTC", "2024-09-07T00:00:00Z"),
            "2024-09-13T00:00:00+00:00"
        );
        // ... AND when either is a star (or `?`).
        assert_eq!(
            next("0 0 13 * ?", "UTC", "2024-09-01T00:00:00Z"),
            "2024-09-13T00:00:00+00:00"
        );
        // `*/1` keeps the star; `*/2` does not.
        assert_eq!(
            next("0 0 1 * */1", "UTC", "2024-09-02T00:00:00Z"),
            "2024-10-01T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1 * */2", "UTC", "2024-09-02T00:00:00Z"),
            "2024-09-03T00:00:00+00:00"
        );
        // Names, any case.
        assert_eq!(
            next("30 8 * Feb Mon", "UTC", "2024-01-15T00:00:00Z"),
            "2024-02-05T08:30:00+00:00"
        );
        // Strictly after, at minute resolution.
        assert_eq!(
            next("* * * * *", "UTC", "2024-01-01T00:00:00Z"),
            "2024-01-01T00:01:00+00:00"
        );
        assert_eq!(
            next("* * * * *", "UTC", "2024-01-01T00:00:30Z"),
            "2024-01-01T00:01:00+00:00"
        );
        // Leap days, across the year 2100 that has none.
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z"),
            "2104-02-29T00:00:00+00:00"
        );
        // Never.
        let never = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            never.next_after(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
        assert_eq!(
            never.latest_at_or_before(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            next("0 9 * * *", "Asia/Tokyo", "2024-06-01T00:00:00Z"),
            "2024-06-02T09:00:00+09:00"
        );
        assert_eq!(
            next("0 9 * * *", "Asia/Kolkata", "2024-06-01T00:00:00Z"),
            "2024-06-01T09:00:00+05:30"
        );
        assert_eq!(
            prev("0 9 * * *", "Asia/Kolkata", "2024-06-01T03:29:59Z"),
            "2024-05-31T09:00:00+05:30"
        );
        assert_eq!(
            prev("0 9 * * *", "Asia/Kolkata", "2024-06-01T03:30:00Z"),
            "2024-06-01T09:00:00+05:30"
        );
    }

    /// robfig/cron's own daylight saving cases (America/New_York, 2012).
    #[test]
    fn daylight_saving() {
        let ny = "America/New_York";
        // Spring forward: 02:00 EST becomes 03:00 EDT; 02:xx never happens.
        assert_eq!(
            next("30 2 11 Mar *", ny, "2012-03-11T00:00:00-05:00"),
            "2013-03-11T02:30:00-04:00"
        );
        assert_eq!(
            next("0 * * * *", ny, "2012-03-11T00:00:00-05:00"),
            "2012-03-11T01:00:00-05:00"
        );
        assert_eq!(
            next("0 * * * *", ny, "2012-03-11T01:00:00-05:00"),
            "2012-03-11T03:00:00-04:00"
        );
        assert_eq!(
            next("0 1 * * *", ny, "2012-03-11T01:00:00-05:00"),
            "2012-03-12T01:00:00-04:00"
        );
        assert_eq!(
            next("0 2 * * *", ny, "2012-03-11T00:00:00-05:00"),
            "2012-03-12T02:00:00-04:00"
        );
        // Fall back: 02:00 EDT becomes 01:00 EST; 01:xx happens twice.
        assert_eq!(
            next("30 2 04 Nov *", ny, "2012-11-04T00:00:00-04:00"),
            "2012-11-04T02:30:00-05:00"
        );
        assert_eq!(
            next("30 1 04 Nov *", ny, "2012-11-04T01:45:00-04:00"),
            "2012-11-04T01:30:00-05:00"
        );
        assert_eq!(
            next("0 * * * *", ny, "2012-11-04T00:00:00-04:00"),
            "2012-11-04T01:00:00-04:00"
        );
        assert_eq!(
            next("0 * * * *", ny, "2012-11-04T01:00:00-04:00"),
            "2012-11-04T01:00:00-05:00"
        );
        assert_eq!(
            next("0 * * * *", ny, "2012-11-04T01:00:00-05:00"),
            "2012-11-04T02:00:00-05:00"
        );
        assert_eq!(
            next("0 1 * * *", ny, "2012-11-04T01:00:00-04:00"),
            "2012-11-04T01:00:00-05:00"
        );
        assert_eq!(
            next("0 1 * * *", ny, "2012-11-04T01:00:00-05:00"),
            "2012-11-05T01:00:00-05:00"
        );
        assert_eq!(
            next("0 3 * * *", ny, "2012-11-04T00:00:00-04:00"),
            "2012-11-04T03:00:00-05:00"
        );
        // Looking back over the same changes.
        assert_eq!(
            prev("0 * * * *", ny, "2012-11-04T01:59:00-05:00"),
            "2012-11-04T01:00:00-05:00"
        );
        assert_eq!(
            prev("0 * * * *", ny, "2012-11-04T00:59:59-05:00"),
            "2012-11-04T01:00:00-04:00"
        );
        assert_eq!(
            prev("0 * * * *", ny, "2012-03-11T03:30:00-04:00"),
            "2012-03-11T03:00:00-04:00"
        );
        assert_eq!(
            prev("30 2 * * *", ny, "2012-03-11T04:00:00-04:00"),
            "2012-03-10T02:30:00-05:00"
        );
    }

    #[test]
    fn next_and_latest_agree() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let schedule = Schedule::parse("*/20 1-3 * * *").unwrap();
        // Across the fall-back night, when 02:xx happens twice.
        let mut t = schedule
            .next_after(ts("2024-10-26T00:00:00Z"), &tz)
            .unwrap();
        let mut fired = vec![t];
        for _ in 0..40 {
            let n = schedule.next_after(t, &tz).unwrap();
            assert!(n > t);
            assert_eq!(schedule.latest_at_or_before(n, &tz), Some(n));
            let just_before = n.checked_sub(SignedDuration::from_secs(1)).unwrap();
            assert_eq!(schedule.latest_at_or_before(just_before, &tz), Some(t));
            fired.push(n);
            t = n;
        }
        let on_the_27th = fired
            .iter()
            .filter(|t| t.to_zoned(tz.clone()).date() == jiff::civil::date(2024, 10, 27))
            .count();
        assert_eq!(on_the_27th, 12, "01:00-03:40 with 02:xx twice: {fired:?}");
    }
}
