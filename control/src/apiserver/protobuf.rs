//! The protobuf request bodies kubectl sends for some creates
//! (`kubectl create namespace`): `k8s\0` then a `runtime.Unknown` holding
//! the object's own protobuf encoding.
//!
//! Only what those requests carry is decoded: the type (apiVersion, kind)
//! and the object's `metadata` (name, generateName, namespace, labels,
//! annotations). An object whose protobuf has anything beyond metadata (a
//! spec, data) is refused with 415, so nothing is silently dropped; clients
//! fall back to JSON for those.

use serde_json::{Map, Value, json};

use super::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One protobuf field: its number and, for length-delimited fields, bytes.
enum Field<'a> {
    Bytes(u32, &'a [u8]),
    Varint(u64),
    Fixed,
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

fn fields(mut buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let number = u32::try_from(tag >> 3).ok()?;
        match tag & 7 {
            0 => out.push(Field::Varint(varint(&mut buf)?)),
            1 => {
                buf = buf.get(8..)?;
                out.push(Field::Fixed);
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                out.push(Field::Bytes(number, bytes));
            }
            5 => {
                buf = buf.get(4..)?;
                out.push(Field::Fixed);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a field's bytes carry nothing: an empty string or message, or a
/// message whose fields are all zero or blank (Go's encoder writes every
/// non-pointer field, so an unset spec arrives as a message of blanks).
fn is_blank(bytes: &[u8]) -> bool {
    bytes.is_empty()
        || fields(bytes).is_some_and(|fs| {
            fs.iter().all(|f| match f {
                Field::Bytes(_, b) => is_blank(b),
                Field::Varint(v) => *v == 0,
                Field::Fixed => false,
            })
        })
}

fn string(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// A `map<string,string>` entry: key = 1, value = 2.
fn map_entry(bytes: &[u8]) -> Option<(String, Value)> {
    let (mut key, mut value) = (String::new(), String::new());
    for f in fields(bytes)? {
        match f {
            Field::Bytes(1, b) => key = string(b)?,
            Field::Bytes(2, b) => value = string(b)?,
            _ => {}
        }
    }
    Some((key, json!(value)))
}

fn metadata(bytes: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let (mut labels, mut annotations) = (Map::new(), Map::new());
    for f in fields(bytes)? {
        match f {
            Field::Bytes(1, b) => {
                let v = string(b)?;
                if !v.is_empty() {
                    meta.insert("name".into(), json!(v));
                }
            }
            Field::Bytes(2, b) => {
                let v = string(b)?;
                if !v.is_empty() {
                    meta.insert("generateName".into(), json!(v));
                }
            }
            Field::Bytes(3, b) => {
                let v = string(b)?;
                if !v.is_empty() {
                    meta.insert("namespace".into(), json!(v));
                }
            }
            Field::Bytes(11, b) => {
                let (k, v) = map_entry(b)?;
                labels.insert(k, v);
            }
            Field::Bytes(12, b) => {
                let (k, v) = map_entry(b)?;
                annotations.insert(k, v);
            }
            // Server-set fields (uid, resourceVersion, timestamps, ...).
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    Some(Value::Object(meta))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub(super) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("error decoding protobuf body: {why}"));
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s\\0 prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for f in fields(unknown).ok_or_else(|| bad("malformed envelope"))? {
        match f {
            Field::Bytes(1, type_meta) => {
                for t in fields(type_meta).ok_or_else(|| bad("malformed type"))? {
                    match t {
                        Field::Bytes(1, b) => {
                            api_version = string(b).ok_or_else(|| bad("apiVersion is not UTF-8"))?
                        }
                        Field::Bytes(2, b) => {
                            kind = string(b).ok_or_else(|| bad("kind is not UTF-8"))?
                        }
                        _ => {}
                    }
                }
            }
            Field::Bytes(2, b) => raw = Some(b),
            _ => {}
        }
    }
    let raw = raw.ok_or_else(|| bad("no object"))?;
    let mut object = json!({"apiVersion": api_version, "kind": kind});
    for f in fields(raw).ok_or_else(|| bad("malformed object"))? {
        match f {
            Field::Bytes(1, meta) => {
                object["metadata"] = metadata(meta).ok_or_else(|| bad("malformed metadata"))?
            }
            // An unset spec or status carries nothing.
            Field::Bytes(_, b) if is_blank(b) => {}
            _ => {
                return Err(ApiError::unsupported_media_type(
                    "application/vnd.kubernetes.protobuf (only metadata-only objects; send JSON)",
                ));
            }
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(number << 3 | 2).unwrap(),
            u8::try_from(bytes.len()).unwrap(),
        ];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_namespace_as_kubectl_sends_it() {
        let label = [field(1, b"team"), field(2, b"blue")].concat();
        let meta = [field(1, b"dev"), field(11, &label)].concat();
        let raw = [field(1, &meta), field(2, b"")].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dev", "labels": {"team": "blue"}}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_decode() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        let raw = [field(1, &field(1, b"x")), field(2, &field(1, b"spec data"))].concat();
        let body = [MAGIC.to_vec(), field(2, &raw)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
