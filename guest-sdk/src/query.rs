//! Query strings: `?url=http%3A%2F%2Fweb&n=3` into decoded values.

/// The percent-decoded value of the first `name=value` pair in `query`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| percent_decode(key) == name)
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is,
/// and `+` stays `+` (this is URL, not form, decoding).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("http%3A%2F%2F127.0.0.1%3A8080%2Fa%3Fb%3Dc"),
            "http://127.0.0.1:8080/a?b=c"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz+%41"), "%zz+A");
    }

    #[test]
    fn params_are_found_and_decoded() {
        let query = "x=1&url=http%3A%2F%2Fh%2F&ms=5";
        assert_eq!(query_param(query, "url").as_deref(), Some("http://h/"));
        assert_eq!(query_param(query, "ms").as_deref(), Some("5"));
        assert_eq!(query_param(query, "nope"), None);
    }
}
