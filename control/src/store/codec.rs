//! The on-disk encoding of key-values and events: a small, versioned,
//! length-prefixed binary format, written by hand so it stays stable and
//! cheap.
//!
//! Every record starts with a format byte ([`FORMAT_V1`]); integers are
//! big-endian.
//!
//! ```text
//! kv record     = FORMAT_V1 kv
//! event record  = FORMAT_V1 (0x00 kv has_prev [kv]     -- Put
//!                          | 0x01 revision:u64 kv)     -- Delete (kv = prev)
//! kv            = create_revision:u64 mod_revision:u64 version:u64
//!                 key_len:u32 key:utf8 value_len:u32 value
//! has_prev      = 0x00 | 0x01
//! ```
//!
//! A history key is the event's revision as 8 big-endian bytes, so byte
//! order is revision order.

use bytes::Bytes;

use super::{Event, KeyValue};

/// The only format so far. A new format gets a new byte, and decoding keeps
/// reading the old ones.
pub(crate) const FORMAT_V1: u8 = 1;

const TAG_PUT: u8 = 0;
const TAG_DELETE: u8 = 1;

/// The history key of `revision`.
pub(crate) fn revision_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

/// The revision a history key stands for.
pub(crate) fn decode_revision(key: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| format!("history key has {} bytes, not 8", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a key-value record.
pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 32 + kv.key.len() + kv.value.len());
    out.push(FORMAT_V1);
    put_kv(&mut out, kv);
    out
}

/// Decodes a key-value record.
pub(crate) fn decode_kv(bytes: &[u8]) -> Result<KeyValue, String> {
    let mut r = Reader::new(bytes)?;
    let kv = r.kv()?;
    r.finish()?;
    Ok(kv)
}

/// Encodes an event record.
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_V1);
    match event {
        Event::Put { kv, prev } => {
            out.push(TAG_PUT);
            put_kv(&mut out, kv);
            match prev {
                None => out.push(0),
                Some(prev) => {
                    out.push(1);
                    put_kv(&mut out, prev);
                }
            }
        }
        Event::Delete { prev, revision } => {
            out.push(TAG_DELETE);
            out.extend_from_slice(&revision.to_be_bytes());
            put_kv(&mut out, prev);
        }
    }
    out
}

/// Decodes an event record.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let mut r = Reader::new(bytes)?;
    let event = match r.u8()? {
        TAG_PUT => {
            let kv = r.kv()?;
            let prev = match r.u8()? {
                0 => None,
                1 => Some(r.kv()?),
                other => return Err(format!("bad has_prev byte {other}")),
            };
            Event::Put { kv, prev }
        }
        TAG_DELETE => {
            let revision = r.u64()?;
            let prev = r.kv()?;
            Event::Delete { prev, revision }
        }
        other => return Err(format!("unknown event tag {other}")),
    };
    r.finish()?;
    Ok(event)
}

/// The key an event record is about, read without decoding the rest (a
/// read walking history for one key skips the others cheaply).
pub(crate) fn event_key(bytes: &[u8]) -> Result<&str, String> {
    let mut r = Reader::new(bytes)?;
    match r.u8()? {
        TAG_PUT => {}
        TAG_DELETE => {
            r.u64()?;
        }
        other => return Err(format!("unknown event tag {other}")),
    }
    r.take(24)?; // create_revision, mod_revision, version
    std::str::from_utf8(r.bytes()?).map_err(|e| format!("key is not UTF-8: {e}"))
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    out.extend_from_slice(&kv.version.to_be_bytes());
    put_bytes(out, kv.key.as_bytes());
    put_bytes(out, &kv.value);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("keys and values are smaller than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { rest: bytes };
        match r.u8()? {
            FORMAT_V1 => Ok(r),
            other => Err(format!("unknown format version {other}")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!(
                "truncated: needed {n} more bytes, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?.try_into().expect("took 4 bytes");
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let bytes = self.take(8)?.try_into().expect("took 8 bytes");
        Ok(u64::from_be_bytes(bytes))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn kv(&mut self) -> Result<KeyValue, String> {
        let create_revision = self.u64()?;
        let mod_revision = self.u64()?;
        let version = self.u64()?;
        let key = std::str::from_utf8(self.bytes()?)
            .map_err(|e| format!("key is not UTF-8: {e}"))?
            .to_owned();
        let value = Bytes::copy_from_slice(self.bytes()?);
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
        })
    }

    fn finish(self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: u64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 1,
            mod_revision: rev,
            version: rev,
        }
    }

    #[test]
    fn kv_round_trips() {
        let original = kv("/registry/pods/default/web-1", "{\"spec\":{}}", 7);
        assert_eq!(decode_kv(&encode_kv(&original)).unwrap(), original);
        let empty = kv("", "", 0);
        assert_eq!(decode_kv(&encode_kv(&empty)).unwrap(), empty);
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Put {
                kv: kv("/a", "1", 1),
                prev: None,
            },
            Event::Put {
                kv: kv("/a", "2", 2),
                prev: Some(kv("/a", "1", 1)),
            },
            Event::Delete {
                prev: kv("/a", "2", 2),
                revision: 3,
            },
        ];
        for event in events {
            let bytes = encode_event(&event);
            assert_eq!(decode_event(&bytes).unwrap(), event);
            assert_eq!(event_key(&bytes).unwrap(), "/a");
        }
    }

    #[test]
    fn corrupt_records_are_rejected_not_misread() {
        let good = encode_kv(&kv("/a", "value", 3));
        // Every strict prefix is truncated.
        for len in 0..good.len() {
            assert!(decode_kv(&good[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_kv(&trailing).unwrap_err().contains("trailing"));
        let mut future = good.clone();
        future[0] = 2;
        assert!(decode_kv(&future).unwrap_err().contains("format version"));
        let mut bad_tag = encode_event(&Event::Delete {
            prev: kv("/a", "v", 1),
            revision: 2,
        });
        bad_tag[1] = 9;
        assert!(decode_event(&bad_tag).unwrap_err().contains("tag"));
        assert!(event_key(&bad_tag).unwrap_err().contains("tag"));
        let put = encode_event(&Event::Put {
            kv: kv("/key", "v", 1),
            prev: None,
        });
        // Cut anywhere up to the end of the key: no key to read.
        for len in 0..2 + 24 + 4 + "/key".len() {
            assert!(event_key(&put[..len]).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn revision_keys_sort_in_revision_order() {
        assert!(revision_key(255) < revision_key(256));
        assert!(revision_key(1) < revision_key(u64::MAX));
        assert_eq!(decode_revision(&revision_key(42)).unwrap(), 42);
        assert!(decode_revision(&[1, 2, 3]).is_err());
    }
}
