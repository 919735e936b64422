//! Small shared checks producing Kubernetes-style causes.

use serde::Serialize;
use serde_json::{Value, json};

use crate::Cause;

/// `field: Required value`.
pub fn required(field: impl Into<String>) -> Cause {
    Cause::required(field)
}

/// `field: Required value: detail`.
pub fn required_detail(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        message: format!("Required value: {detail}"),
        ..Cause::required(field)
    }
}

/// `field: Not found: "value"`.
pub fn not_found(field: impl Into<String>, value: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueNotFound",
        message: format!("Not found: {value:?}"),
    }
}

/// `field: Too long: must have at most N bytes`.
pub fn too_long(field: impl Into<String>, max: usize) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueTooLong",
        message: format!("Too long: must have at most {max} bytes"),
    }
}

/// Checks that `value` is one of `allowed`.
pub fn supported(field: &str, value: &str, allowed: &[&str], out: &mut Vec<Cause>) {
    if !allowed.contains(&value) {
        out.push(Cause::not_supported(field, &json!(value), allowed));
    }
}

/// Checks that an optional number is not negative.
pub fn nonneg(field: &str, value: Option<i64>, out: &mut Vec<Cause>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        out.push(Cause::invalid(
            field,
            &json!(v),
            "must be greater than or equal to 0",
        ));
    }
}

/// Checks that an optional number is positive.
pub fn positive(field: &str, value: Option<i64>, out: &mut Vec<Cause>) {
    if let Some(v) = value.filter(|v| *v <= 0) {
        out.push(Cause::invalid(field, &json!(v), "must be greater than 0"));
    }
}

/// Checks `lo <= value <= hi`.
pub fn between(field: &str, value: i64, lo: i64, hi: i64, out: &mut Vec<Cause>) {
    if value < lo || value > hi {
        out.push(Cause::invalid(
            field,
            &json!(value),
            format!("must be between {lo} and {hi}, inclusive"),
        ));
    }
}

/// Checks a port number (1–65535).
pub fn port_num(field: &str, port: i32, out: &mut Vec<Cause>) {
    between(field, i64::from(port), 1, 65535, out);
}

/// Checks an IP address.
pub fn ip(field: &str, value: &str, out: &mut Vec<Cause>) {
    if value.parse::<std::net::IpAddr>().is_err() {
        out.push(Cause::invalid(
            field,
            &json!(value),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

/// `field: Invalid value: ...: field is immutable` unless `new == old`.
pub fn immutable<T: Serialize + PartialEq>(field: &str, new: &T, old: &T, out: &mut Vec<Cause>) {
    if new != old {
        let shown = serde_json::to_value(new).unwrap_or(Value::Null);
        out.push(Cause::invalid(field, &shown, "field is immutable"));
    }
}
