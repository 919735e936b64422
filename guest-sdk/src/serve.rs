//! The glue behind [`http_component!`](crate::http_component): turns a WASI
//! incoming request into a [`Request`], calls the handler, and writes its
//! response back.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{StatusCode, Uri};
use wasip2::http::types::{IncomingRequest, OutgoingResponse, ResponseOutparam};

use crate::{IntoResponse, Request, Response, body, fields};

/// Runs `handler` for one incoming request and sends its response.
///
/// Called by the code [`http_component!`](crate::http_component) generates.
pub fn serve<R, F>(request: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    F: FnOnce(Request) -> R,
    R: IntoResponse,
{
    let response = match read_request(request) {
        Ok(request) => handler(request).into_response(),
        Err(problem) => plain(StatusCode::BAD_REQUEST, format!("bad request: {problem}\n")),
    };
    send(response_out, response);
}

fn read_request(request: IncomingRequest) -> Result<Request, String> {
    let method = crate::fetch::from_wasi_method(request.method())?;

    let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let mut uri = Uri::builder();
    if let Some(authority) = request.authority() {
        let scheme = request
            .scheme()
            .map_or_else(|| "http".to_owned(), |s| crate::fetch::scheme_str(&s));
        uri = uri.scheme(scheme.as_str()).authority(authority);
    }
    let uri = uri
        .path_and_query(path.as_str())
        .build()
        .map_err(|e| format!("invalid request target {path:?}: {e}"))?;

    let headers = fields::to_header_map(request.headers().entries())?;

    let incoming = request
        .consume()
        .map_err(|()| "the request body was already consumed".to_owned())?;
    let bytes =
        body::read_incoming(incoming).map_err(|e| format!("reading the body failed: {e}"))?;
    drop(request);

    let mut out = Request::new(bytes);
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Sends `response`, falling back to a `500` if its headers are unusable.
fn send(response_out: ResponseOutparam, response: Response) {
    let (mut parts, bytes) = response.into_parts();
    // The body is complete, so say how long it is rather than have the host
    // fall back to chunked encoding.
    if !parts.headers.contains_key(CONTENT_LENGTH) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }

    let (status, headers, bytes) = match fields::to_fields(&parts.headers) {
        Ok(headers) => (parts.status, headers, bytes),
        Err(problem) => {
            let fallback = plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the handler's response was invalid: {problem}\n"),
            );
            let (mut parts, bytes) = fallback.into_parts();
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            let headers = fields::to_fields(&parts.headers)
                .expect("the fallback response's headers are valid");
            (parts.status, headers, bytes)
        }
    };

    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status.as_u16())
        .expect("an http::StatusCode is a valid WASI status code");
    let outgoing = response.body().expect("a new response's body is available");
    ResponseOutparam::set(response_out, Ok(response));

    // The status and headers are on their way; if the body fails now (the
    // client went away), there is no one left to tell but the pod's log.
    if let Err(problem) = body::write_outgoing(outgoing, &bytes) {
        eprintln!("skiff-guest: writing the response body failed: {problem}");
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(text.into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
