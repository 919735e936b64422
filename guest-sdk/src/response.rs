//! What a handler may return.

use std::fmt::Display;

use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};

use crate::Response;

/// A value a handler can return: anything that converts into a complete
/// [`Response`].
///
/// | Handler returns | Response |
/// |---|---|
/// | `http::Response<Vec<u8>>`, `<String>`, `<&'static str>` | as built, headers untouched |
/// | `String`, `&'static str` | `200`, `content-type: text/plain; charset=utf-8` |
/// | `(StatusCode, String)`, `(StatusCode, &'static str)` | that status, plain text |
/// | `Result<T, E>` | `Ok(t)` as `t`; `Err(e)` a plain-text `500` with body `e.to_string()` |
///
/// `content-length` is always set from the body, unless the response already
/// carries one (which must then be right).
pub trait IntoResponse {
    /// Converts `self` into the response sent to the caller.
    fn into_response(self) -> Response;
}

impl IntoResponse for http::Response<Vec<u8>> {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for http::Response<String> {
    fn into_response(self) -> Response {
        self.map(String::into_bytes)
    }
}

impl IntoResponse for http::Response<&'static str> {
    fn into_response(self) -> Response {
        self.map(|body| body.as_bytes().to_vec())
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        plain_text(StatusCode::OK, self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        plain_text(StatusCode::OK, self.to_owned())
    }
}

impl IntoResponse for (StatusCode, String) {
    fn into_response(self) -> Response {
        plain_text(self.0, self.1)
    }
}

impl IntoResponse for (StatusCode, &'static str) {
    fn into_response(self) -> Response {
        plain_text(self.0, self.1.to_owned())
    }
}

impl<T: IntoResponse, E: Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(error) => plain_text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }
}

fn plain_text(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(text.into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(response: &Response) -> &str {
        std::str::from_utf8(response.body()).unwrap()
    }

    #[test]
    fn strings_are_200_plain_text() {
        let response = "hi".into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(&response), "hi");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn status_tuples_keep_their_status() {
        let response = (StatusCode::NOT_FOUND, "nope".to_owned()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(text(&response), "nope");
    }

    #[test]
    fn errors_become_500_with_their_text() {
        let result: Result<&'static str, String> = Err("disk on fire".to_owned());
        let response = result.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(text(&response), "disk on fire");
    }

    #[test]
    fn built_responses_are_untouched() {
        let built = http::Response::builder()
            .status(StatusCode::CREATED)
            .header("x-pod", "a")
            .body("made")
            .unwrap();
        let response = built.into_response();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-pod"], "a");
        assert!(response.headers().get(CONTENT_TYPE).is_none());
        assert_eq!(text(&response), "made");
    }
}
