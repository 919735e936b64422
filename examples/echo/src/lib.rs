//! `echo`: a Skiff HTTP pod that describes the request it received.
//!
//! Every request gets `200 OK` with `content-type: application/json` and
//! a body like
//!
//! ```json
//! {"method":"POST","path":"/a?b=c","headers":{"host":"pod","x-n":"1, 2"},"body":"hi"}
//! ```
//!
//! `path` includes the query; header names are lowercase, and a header that
//! appears more than once has its values joined with `", "`. The body is
//! decoded as UTF-8, with invalid sequences replaced by `U+FFFD`.

use skiff_guest::http::{self, header::CONTENT_TYPE};
use skiff_guest::{Request, http_component};

http_component!(echo);

fn echo(request: Request) -> Result<http::Response<Vec<u8>>, http::Error> {
    http::Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(describe(&request).to_string().into_bytes())
}

fn describe(request: &Request) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let values: Vec<_> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    serde_json::json!({
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(request.body()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_method_path_headers_and_body() {
        let request = http::Request::post("http://pod/a?b=c")
            .header("X-N", "1")
            .header("x-n", "2")
            .body(b"hi \xff".to_vec())
            .unwrap();
        assert_eq!(
            describe(&request),
            serde_json::json!({
                "method": "POST",
                "path": "/a?b=c",
                "headers": {"x-n": "1, 2"},
                "body": "hi \u{fffd}",
            })
        );
    }
}
