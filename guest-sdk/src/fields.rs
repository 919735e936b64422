//! Conversions between `wasi:http/types.fields` and [`http::HeaderMap`].

use http::header::{HeaderMap, HeaderName, HeaderValue};
use wasip2::http::types::{Fields, HeaderError};

/// Copies WASI header entries into a [`HeaderMap`], keeping repeated names.
///
/// Errors name the first header that is not valid HTTP.
pub(crate) fn to_header_map(entries: Vec<(String, Vec<u8>)>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(entries.len());
    for (name, value) in entries {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| format!("invalid value for header {name:?}"))?;
        map.append(header, value);
    }
    Ok(map)
}

/// Builds WASI fields from a [`HeaderMap`].
///
/// Headers the host forbids guests to set (hop-by-hop ones such as
/// `connection` or `transfer-encoding`, which the host manages itself) are
/// skipped; any other rejection is an error naming the header.
pub(crate) fn to_fields(headers: &HeaderMap) -> Result<Fields, String> {
    let fields = Fields::new();
    for (name, value) in headers {
        match fields.append(name.as_str(), value.as_bytes()) {
            Ok(()) | Err(HeaderError::Forbidden) => {}
            Err(HeaderError::InvalidSyntax) => {
                return Err(format!("header {name} is not valid HTTP"));
            }
            Err(HeaderError::Immutable) => {
                return Err(format!(
                    "header {name} could not be set: fields are immutable"
                ));
            }
        }
    }
    Ok(fields)
}
