//! The protobuf request bodies kubectl and client-go send for built-in
//! types (`kubectl create namespace|configmap|secret|deployment|service|job|
//! cronjob|serviceaccount|ingress`, leases, events): `k8s\0`, then a
//! `runtime.Unknown` {typeMeta(1){apiVersion(1), kind(2)}, raw(2),
//! contentEncoding(3), contentType(4)} whose `raw` is the object's own
//! protobuf encoding.
//!
//! Decoding is driven by the table in [`schema`]: for each message, its
//! fields as (tag, JSON name, shape, type, emit rule). Tags and wire types
//! come from k8s-pb; JSON names, pointer-ness and inlining from the Go
//! types, so the JSON is what Go's `encoding/json` writes for the object
//! Go decoded (what the client would have sent as JSON), with these rules:
//!
//! - A Go pointer field ([`Emit::Present`]) is on the wire only when the
//!   client set it, so it is written whenever present, even when zero
//!   (`replicas: 0`, `emptyDir: {}`, `suspend: false`).
//! - A non-pointer scalar ([`Emit::NonZero`]) is always on the wire (Go's
//!   encoder writes every one), so it is written only when non-zero/
//!   non-empty; the server defaults the rest. The same goes for the
//!   struct-like scalars `IntOrString`, `Quantity`, `Time`, `MicroTime`
//!   (a zero `Time` is JSON `null` in Go: dropped).
//! - A non-pointer nested message ([`Emit::Always`]) is always written,
//!   `{}` when empty, as Go does (`"resources": {}`, `"strategy": {}`).
//! - Lists and maps are written only when non-empty.
//! - Go's `json:",inline"` members (`ProbeHandler` in `Probe`,
//!   `VolumeSource` in `Volume`, ...) are merged into their parent.
//! - Skipped entirely: every `status` (the server resets it) and the
//!   server-set metadata `selfLink`, `uid`, `generation`,
//!   `creationTimestamp`, `deletionTimestamp`, `deletionGracePeriodSeconds`,
//!   `managedFields`. `resourceVersion` is kept: updates use it as their
//!   precondition.
//!
//! A field the schema does not know is ignored when blank (zero, empty, or
//! a message of blanks) and refused with 415 otherwise, naming the message
//! and the tag, so nothing is silently lost; so is a kind outside the
//! table with anything beyond metadata. Malformed protobuf is a 400.

#[rustfmt::skip]
mod schema;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One message type: its Go name (for errors) and its fields.
pub(super) struct Message {
    name: &'static str,
    fields: &'static [Field],
}

/// One field of a message.
pub(super) struct Field {
    tag: u32,
    /// The JSON name (empty for an inlined member).
    json: &'static str,
    shape: Shape,
    ty: Ty,
    emit: Emit,
}

/// How many values a field holds.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Shape {
    One,
    /// `repeated`.
    List,
    /// `map<string, ty>`: entries {key(1), value(2)}.
    Map,
}

/// What a field's values are.
#[derive(Clone, Copy)]
pub(super) enum Ty {
    /// Never decoded nor checked (status, server-set metadata).
    Skip,
    Str,
    Bool,
    /// int32 or int64 (varint).
    Int,
    /// A base64 string in JSON.
    Bytes,
    /// {type(1) 0=int 1=string, intVal(2), strVal(3)}: a JSON number or string.
    IntOrString,
    /// {string(1)}: a JSON string.
    Quantity,
    /// {seconds(1), nanos(2)}: RFC 3339 to the second.
    Time,
    /// {seconds(1), nanos(2)}: RFC 3339 to the microsecond.
    MicroTime,
    Msg(&'static Message),
    /// A message whose fields are merged into the parent's JSON.
    Inline(&'static Message),
}

/// When a singular field is written to JSON (lists and maps: when non-empty).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Emit {
    /// A Go pointer: whenever it is on the wire.
    Present,
    /// A Go value: when not zero or empty.
    NonZero,
    /// A Go struct value: always, `{}` when empty.
    Always,
}

pub(super) const fn f(tag: u32, json: &'static str, shape: Shape, ty: Ty, emit: Emit) -> Field {
    Field {
        tag,
        json,
        shape,
        ty,
        emit,
    }
}

/// Why decoding failed: bad protobuf (400) or a field not understood (415).
enum Error {
    Malformed(String),
    Unknown(String),
}

type Result<T> = std::result::Result<T, Error>;

fn malformed<T>(what: impl std::fmt::Display) -> Result<T> {
    Err(Error::Malformed(what.to_string()))
}

/// One protobuf field value on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Splits a message into its (tag, value) fields, in wire order.
fn fields(mut buf: &[u8]) -> Option<Vec<(u32, Wire<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let tag = u32::try_from(key >> 3).ok().filter(|&t| t != 0)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(&mut buf)?),
            1 => {
                let (bytes, rest) = buf.split_first_chunk::<8>()?;
                buf = rest;
                Wire::Fixed(u64::from_le_bytes(*bytes))
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Wire::Bytes(bytes)
            }
            5 => {
                let (bytes, rest) = buf.split_first_chunk::<4>()?;
                buf = rest;
                Wire::Fixed(u64::from(u32::from_le_bytes(*bytes)))
            }
            _ => return None,
        };
        out.push((tag, value));
    }
    Some(out)
}

/// Whether a value carries nothing: zero, an empty string or message, or a
/// message whose fields are all blank (Go's encoder writes every
/// non-pointer field, so an unset struct arrives as a message of blanks).
fn is_blank(value: Wire<'_>) -> bool {
    is_blank_within(value, 32)
}

/// [`is_blank`], looking at most `depth` messages deep (the body is
/// untrusted: deeper counts as not blank rather than risk the stack).
fn is_blank_within(value: Wire<'_>, depth: u32) -> bool {
    match value {
        Wire::Varint(v) | Wire::Fixed(v) => v == 0,
        Wire::Bytes(b) => {
            b.is_empty()
                || depth > 0
                    && fields(b).is_some_and(|fs| {
                        fs.into_iter().all(|(_, v)| is_blank_within(v, depth - 1))
                    })
        }
    }
}

/// The fields of a message, refusing any non-blank one not in `known`.
fn known_fields<'a>(name: &str, bytes: &'a [u8], known: &[u32]) -> Result<Vec<(u32, Wire<'a>)>> {
    let Some(fs) = fields(bytes) else {
        return malformed(format_args!("{name} is not valid protobuf"));
    };
    if let Some((tag, _)) = fs
        .iter()
        .find(|(tag, v)| !known.contains(tag) && !is_blank(*v))
    {
        return Err(Error::Unknown(format!("field {tag} of {name}")));
    }
    Ok(fs)
}

fn bytes_of<'a>(name: &str, value: Wire<'a>) -> Result<&'a [u8]> {
    match value {
        Wire::Bytes(b) => Ok(b),
        _ => malformed(format_args!("{name} is not length-delimited")),
    }
}

fn string(name: &str, value: Wire<'_>) -> Result<String> {
    match String::from_utf8(bytes_of(name, value)?.to_vec()) {
        Ok(s) => Ok(s),
        Err(_) => malformed(format_args!("{name} is not UTF-8")),
    }
}

fn int(name: &str, value: Wire<'_>) -> Result<i64> {
    match value {
        // Negative int32s are sign-extended to 64 bits on the wire.
        Wire::Varint(v) => Ok(v.cast_signed()),
        _ => malformed(format_args!("{name} is not a varint")),
    }
}

/// A singular value and whether it is zero.
fn scalar(name: &str, ty: Ty, value: Wire<'_>) -> Result<(Value, bool)> {
    Ok(match ty {
        Ty::Str => {
            let s = string(name, value)?;
            let zero = s.is_empty();
            (json!(s), zero)
        }
        Ty::Bool => {
            let b = int(name, value)? != 0;
            (json!(b), !b)
        }
        Ty::Int => {
            let i = int(name, value)?;
            (json!(i), i == 0)
        }
        Ty::Bytes => {
            let b = bytes_of(name, value)?;
            (
                json!(base64::engine::general_purpose::STANDARD.encode(b)),
                b.is_empty(),
            )
        }
        Ty::IntOrString => {
            let (mut is_string, mut int_val, mut str_val) = (false, 0, String::new());
            for (tag, v) in known_fields(name, bytes_of(name, value)?, &[1, 2, 3])? {
                match tag {
                    1 => is_string = int(name, v)? == 1,
                    2 => int_val = int(name, v)?,
                    3 => str_val = string(name, v)?,
                    _ => {}
                }
            }
            if is_string {
                (json!(str_val), false)
            } else {
                (json!(int_val), int_val == 0)
            }
        }
        Ty::Quantity => {
            let mut q = String::new();
            for (tag, v) in known_fields(name, bytes_of(name, value)?, &[1])? {
                if tag == 1 {
                    q = string(name, v)?;
                }
            }
            if q.is_empty() {
                (json!("0"), true)
            } else {
                (json!(q), false)
            }
        }
        Ty::Time | Ty::MicroTime => {
            let (mut seconds, mut nanos) = (0, 0);
            for (tag, v) in known_fields(name, bytes_of(name, value)?, &[1, 2])? {
                match tag {
                    1 => seconds = int(name, v)?,
                    2 => nanos = int(name, v)?,
                    _ => {}
                }
            }
            if seconds == 0 && nanos == 0 {
                return Ok((Value::Null, true));
            }
            let Ok(ts) = jiff::Timestamp::new(seconds, 0) else {
                return malformed(format_args!("{name} is out of range"));
            };
            let mut s = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            if matches!(ty, Ty::MicroTime) {
                s.push_str(&format!(".{:06}", nanos.clamp(0, 999_999_999) / 1000));
            }
            s.push('Z');
            (json!(s), false)
        }
        Ty::Msg(msg) => (Value::Object(message(msg, bytes_of(name, value)?)?), false),
        Ty::Skip | Ty::Inline(_) => (Value::Null, true),
    })
}

/// Decodes one message into its JSON fields.
fn message(msg: &Message, bytes: &[u8]) -> Result<Map<String, Value>> {
    let known: Vec<u32> = msg.fields.iter().map(|f| f.tag).collect();
    let wire = known_fields(msg.name, bytes, &known)?;
    let mut out = Map::new();
    for field in msg.fields {
        let name = format!(
            "{}.{}",
            msg.name,
            if field.json.is_empty() {
                "(inline)"
            } else {
                field.json
            }
        );
        let mut values = wire
            .iter()
            .filter(|(tag, _)| *tag == field.tag)
            .map(|&(_, v)| v);
        match (field.shape, field.ty) {
            (_, Ty::Skip) => {}
            (Shape::One, Ty::Msg(sub) | Ty::Inline(sub)) => {
                // Repeats of a message field merge: decode them as one.
                let mut merged = Vec::new();
                let mut present = false;
                for v in values {
                    merged.extend_from_slice(bytes_of(&name, v)?);
                    present = true;
                }
                if !present && field.emit != Emit::Always {
                    continue;
                }
                let decoded = message(sub, &merged)?;
                if matches!(field.ty, Ty::Inline(_)) {
                    out.extend(decoded);
                } else {
                    out.insert(field.json.into(), Value::Object(decoded));
                }
            }
            (Shape::One, ty) => {
                if let Some(v) = values.next_back() {
                    let (value, zero) = scalar(&name, ty, v)?;
                    if !value.is_null() && (field.emit == Emit::Present || !zero) {
                        out.insert(field.json.into(), value);
                    }
                }
            }
            (Shape::List, ty) => {
                let mut list = Vec::new();
                for v in values {
                    match (ty, v) {
                        // A packed list of varints.
                        (Ty::Int | Ty::Bool, Wire::Bytes(mut packed)) => {
                            while !packed.is_empty() {
                                let Some(n) = varint(&mut packed) else {
                                    return malformed(format_args!("{name} is not a packed list"));
                                };
                                list.push(scalar(&name, ty, Wire::Varint(n))?.0);
                            }
                        }
                        _ => list.push(scalar(&name, ty, v)?.0),
                    }
                }
                if !list.is_empty() {
                    out.insert(field.json.into(), Value::Array(list));
                }
            }
            (Shape::Map, ty) => {
                let mut map = Map::new();
                for v in values {
                    let (mut key, mut value) = (String::new(), None);
                    for (tag, v) in known_fields(&name, bytes_of(&name, v)?, &[1, 2])? {
                        match tag {
                            1 => key = string(&name, v)?,
                            2 => value = Some(scalar(&name, ty, v)?.0),
                            _ => {}
                        }
                    }
                    let value = match value {
                        Some(value) => value,
                        None => scalar(&name, ty, Wire::Bytes(&[]))?.0,
                    };
                    map.insert(key, value);
                }
                if !map.is_empty() {
                    out.insert(field.json.into(), Value::Object(map));
                }
            }
        }
    }
    Ok(out)
}

/// Objects outside [`schema::KINDS`]: only their metadata is understood.
static OTHER: Message = Message {
    name: "object",
    fields: &[f(
        1,
        "metadata",
        Shape::One,
        Ty::Msg(&schema::OBJECT_META),
        Emit::Always,
    )],
};

/// Decodes a protobuf request body into the JSON object it stands for.
pub(super) fn decode(body: &[u8]) -> std::result::Result<Value, ApiError> {
    decode_object(body).map_err(|e| match e {
        Error::Malformed(why) => ApiError::bad_request(format!("error decoding protobuf body: {why}")),
        Error::Unknown(what) => ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf with {what}, which this server does not decode; send JSON"
        )),
    })
}

fn decode_object(body: &[u8]) -> Result<Value> {
    let Some(unknown) = body.strip_prefix(MAGIC) else {
        return malformed("missing the k8s\\0 prefix");
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (tag, v) in known_fields("runtime.Unknown", unknown, &[1, 2, 3, 4])? {
        match tag {
            1 => {
                for (tag, v) in known_fields("runtime.TypeMeta", bytes_of("typeMeta", v)?, &[1, 2])?
                {
                    match tag {
                        1 => api_version = string("apiVersion", v)?,
                        2 => kind = string("kind", v)?,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(bytes_of("raw", v)?),
            3 => {
                let encoding = string("contentEncoding", v)?;
                if !encoding.is_empty() {
                    return Err(Error::Unknown(format!("contentEncoding {encoding:?}")));
                }
            }
            _ => {}
        }
    }
    let Some(raw) = raw else {
        return malformed("no object");
    };
    let schema = schema::KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map_or(&OTHER, |(_, _, m)| *m);
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let fields = message(schema, raw).map_err(|e| match e {
        Error::Unknown(what) => Error::Unknown(format!("{what} (in a {api_version} {kind})")),
        e @ Error::Malformed(_) => e,
    })?;
    object.extend(fields);
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests;
