//! Outbound HTTP through `wasi:http/outgoing-handler`.

use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Method, Uri};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{self as wasi, ErrorCode, OutgoingRequest, Scheme};

use crate::{body, fields};

/// An outbound request that did not produce a response.
///
/// The message is meant for people: a WASI `error-code` is rendered as text
/// (`HttpRequestDenied` reads "HTTP request denied", an internal error
/// includes the host's description), prefixed by the URL that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request could not be expressed as a WASI request: no authority
    /// (host) in the URL, an unsupported method, or an invalid header.
    #[error("invalid request to {url}: {reason}")]
    InvalidRequest {
        /// The request's URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The host refused the request or it failed before a response arrived:
    /// denied by policy, DNS, connection, TLS or protocol errors.
    #[error("request to {url} failed: {reason}")]
    Failed {
        /// The request's URL.
        url: String,
        /// The host's error, rendered readably.
        reason: String,
    },
    /// The response arrived but its status, headers or body were unusable.
    #[error("bad response from {url}: {reason}")]
    BadResponse {
        /// The request's URL.
        url: String,
        /// What was wrong with the response.
        reason: String,
    },
}

/// Sends `request` and waits for the complete response, body included.
///
/// The host decides which destinations a pod may reach; a refusal is a
/// [`FetchError::Failed`] whose message says "HTTP request denied". The URL
/// must be absolute (`http://host/path`); the scheme defaults to `http`.
/// Headers the host manages itself (such as `connection`) are dropped.
///
/// ```no_run
/// let request = skiff_guest::http::Request::post("http://api.internal/jobs")
///     .header("content-type", "application/json")
///     .body(br#"{"digits": 100}"#.to_vec())
///     .unwrap();
/// let response = skiff_guest::fetch(request)?;
/// println!("{}", response.status());
/// # Ok::<(), skiff_guest::FetchError>(())
/// ```
pub fn fetch(request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
    let (parts, bytes) = request.into_parts();
    let url = parts.uri.to_string();
    let invalid = |reason: String| FetchError::InvalidRequest {
        url: url.clone(),
        reason,
    };
    let failed = |reason: String| FetchError::Failed {
        url: url.clone(),
        reason,
    };

    let mut headers = parts.headers;
    if !bytes.is_empty() && !headers.contains_key(CONTENT_LENGTH) {
        // Without a length the host would send the body chunked.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    let outgoing = OutgoingRequest::new(fields::to_fields(&headers).map_err(invalid)?);
    outgoing
        .set_method(&to_wasi_method(&parts.method))
        .map_err(|()| invalid(format!("method {} is not supported", parts.method)))?;
    let scheme = match parts.uri.scheme_str() {
        None | Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => Scheme::Other(other.to_owned()),
    };
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("the scheme is not supported".to_owned()))?;
    let authority = parts
        .uri
        .authority()
        .ok_or_else(|| invalid("the URL has no host".to_owned()))?;
    outgoing
        .set_authority(Some(authority.as_str()))
        .map_err(|()| invalid(format!("the authority {authority} is not valid")))?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| invalid(format!("the path {path} is not valid")))?;

    // A request whose body is never opened goes out with an empty body and
    // no framing headers, which is what a `GET` should look like.
    let outgoing_body = if bytes.is_empty() {
        None
    } else {
        Some(outgoing.body().expect("a new request's body is available"))
    };
    let future =
        outgoing_handler::handle(outgoing, None).map_err(|code| failed(describe(&code)))?;
    if let Some(outgoing_body) = outgoing_body {
        // Write the body only once the host owns the request: it does not
        // drain the body stream before then, so a large body would block.
        body::write_outgoing(outgoing_body, &bytes)
            .map_err(|e| failed(format!("sending the request body failed: {e}")))?;
    }

    let incoming = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return Err(failed(describe(&code))),
            Some(Err(())) => unreachable!("the response is taken only once"),
            None => future.subscribe().block(),
        }
    };
    drop(future);

    let bad = |reason: String| FetchError::BadResponse {
        url: url.clone(),
        reason,
    };
    let status = http::StatusCode::from_u16(incoming.status())
        .map_err(|_| bad(format!("invalid status code {}", incoming.status())))?;
    let headers = fields::to_header_map(incoming.headers().entries()).map_err(bad)?;
    let incoming_body = incoming
        .consume()
        .expect("a new response's body is available");
    let bytes = body::read_incoming(incoming_body)
        .map_err(|e| bad(format!("reading the body failed: {e}")))?;

    let mut response = http::Response::new(bytes);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Sends a `GET` for `url` and waits for the complete response.
///
/// See [`fetch`] for how the request is made; an unparsable URL is a
/// [`FetchError::InvalidRequest`].
///
/// ```no_run
/// let response = skiff_guest::get("http://example.com/")?;
/// let text = String::from_utf8_lossy(response.body());
/// # Ok::<(), skiff_guest::FetchError>(())
/// ```
pub fn get(url: &str) -> Result<http::Response<Vec<u8>>, FetchError> {
    let uri: Uri = url.parse().map_err(|e| FetchError::InvalidRequest {
        url: url.to_owned(),
        reason: format!("not a valid URL: {e}"),
    })?;
    let mut request = http::Request::new(Vec::new());
    *request.uri_mut() = uri;
    fetch(request)
}

fn to_wasi_method(method: &Method) -> wasi::Method {
    match *method {
        Method::GET => wasi::Method::Get,
        Method::HEAD => wasi::Method::Head,
        Method::POST => wasi::Method::Post,
        Method::PUT => wasi::Method::Put,
        Method::DELETE => wasi::Method::Delete,
        Method::CONNECT => wasi::Method::Connect,
        Method::OPTIONS => wasi::Method::Options,
        Method::TRACE => wasi::Method::Trace,
        Method::PATCH => wasi::Method::Patch,
        ref other => wasi::Method::Other(other.as_str().to_owned()),
    }
}

pub(crate) fn from_wasi_method(method: wasi::Method) -> Result<Method, String> {
    Ok(match method {
        wasi::Method::Get => Method::GET,
        wasi::Method::Head => Method::HEAD,
        wasi::Method::Post => Method::POST,
        wasi::Method::Put => Method::PUT,
        wasi::Method::Delete => Method::DELETE,
        wasi::Method::Connect => Method::CONNECT,
        wasi::Method::Options => Method::OPTIONS,
        wasi::Method::Trace => Method::TRACE,
        wasi::Method::Patch => Method::PATCH,
        wasi::Method::Other(other) => {
            Method::from_bytes(other.as_bytes()).map_err(|_| format!("invalid method {other:?}"))?
        }
    })
}

pub(crate) fn scheme_str(scheme: &Scheme) -> String {
    match scheme {
        Scheme::Http => "http".to_owned(),
        Scheme::Https => "https".to_owned(),
        Scheme::Other(other) => other.clone(),
    }
}

/// Renders a WASI `error-code` as a sentence fragment, with any payload the
/// host supplied.
pub(crate) fn describe(code: &ErrorCode) -> String {
    fn detail<T: std::fmt::Display>(what: &str, value: Option<&T>) -> String {
        value.map_or_else(String::new, |v| format!(" ({what} {v})"))
    }
    fn field(what: &str, payload: Option<&wasi::FieldSizePayload>) -> String {
        let Some(payload) = payload else {
            return what.to_owned();
        };
        let mut text = what.to_owned();
        if let Some(name) = &payload.field_name {
            text.push_str(&format!(" for {name}"));
        }
        text + &detail("size", payload.field_size.as_ref())
    }

    match code {
        ErrorCode::DnsTimeout => "DNS timeout".to_owned(),
        ErrorCode::DnsError(payload) => format!(
            "DNS error{}{}",
            detail("rcode", payload.rcode.as_ref()),
            detail("info code", payload.info_code.as_ref()),
        ),
        ErrorCode::DestinationNotFound => "destination not found".to_owned(),
        ErrorCode::DestinationUnavailable => "destination unavailable".to_owned(),
        ErrorCode::DestinationIpProhibited => "destination IP prohibited".to_owned(),
        ErrorCode::DestinationIpUnroutable => "destination IP unroutable".to_owned(),
        ErrorCode::ConnectionRefused => "connection refused".to_owned(),
        ErrorCode::ConnectionTerminated => "connection terminated".to_owned(),
        ErrorCode::ConnectionTimeout => "connection timeout".to_owned(),
        ErrorCode::ConnectionReadTimeout => "connection read timeout".to_owned(),
        ErrorCode::ConnectionWriteTimeout => "connection write timeout".to_owned(),
        ErrorCode::ConnectionLimitReached => "connection limit reached".to_owned(),
        ErrorCode::TlsProtocolError => "TLS protocol error".to_owned(),
        ErrorCode::TlsCertificateError => "TLS certificate error".to_owned(),
        ErrorCode::TlsAlertReceived(payload) => format!(
            "TLS alert received{}{}",
            detail("id", payload.alert_id.as_ref()),
            detail("message", payload.alert_message.as_ref()),
        ),
        ErrorCode::HttpRequestDenied => "HTTP request denied".to_owned(),
        ErrorCode::HttpRequestLengthRequired => "HTTP request length required".to_owned(),
        ErrorCode::HttpRequestBodySize(size) => {
            format!(
                "HTTP request body size error{}",
                detail("size", size.as_ref())
            )
        }
        ErrorCode::HttpRequestMethodInvalid => "HTTP request method invalid".to_owned(),
        ErrorCode::HttpRequestUriInvalid => "HTTP request URI invalid".to_owned(),
        ErrorCode::HttpRequestUriTooLong => "HTTP request URI too long".to_owned(),
        ErrorCode::HttpRequestHeaderSectionSize(size) => format!(
            "HTTP request header section too large{}",
            detail("size", size.as_ref())
        ),
        ErrorCode::HttpRequestHeaderSize(payload) => {
            field("HTTP request header too large", payload.as_ref())
        }
        ErrorCode::HttpRequestTrailerSectionSize(size) => format!(
            "HTTP request trailer section too large{}",
            detail("size", size.as_ref())
        ),
        ErrorCode::HttpRequestTrailerSize(payload) => {
            field("HTTP request trailer too large", Some(payload))
        }
        ErrorCode::HttpResponseIncomplete => "HTTP response incomplete".to_owned(),
        ErrorCode::HttpResponseHeaderSectionSize(size) => format!(
            "HTTP response header section too large{}",
            detail("size", size.as_ref())
        ),
        ErrorCode::HttpResponseHeaderSize(payload) => {
            field("HTTP response header too large", Some(payload))
        }
        ErrorCode::HttpResponseBodySize(size) => {
            format!(
                "HTTP response body too large{}",
                detail("size", size.as_ref())
            )
        }
        ErrorCode::HttpResponseTrailerSectionSize(size) => format!(
            "HTTP response trailer section too large{}",
            detail("size", size.as_ref())
        ),
        ErrorCode::HttpResponseTrailerSize(payload) => {
            field("HTTP response trailer too large", Some(payload))
        }
        ErrorCode::HttpResponseTransferCoding(coding) => format!(
            "HTTP response transfer coding error{}",
            detail("coding", coding.as_ref())
        ),
        ErrorCode::HttpResponseContentCoding(coding) => format!(
            "HTTP response content coding error{}",
            detail("coding", coding.as_ref())
        ),
        ErrorCode::HttpResponseTimeout => "HTTP response timeout".to_owned(),
        ErrorCode::HttpUpgradeFailed => "HTTP upgrade failed".to_owned(),
        ErrorCode::HttpProtocolError => "HTTP protocol error".to_owned(),
        ErrorCode::LoopDetected => "loop detected".to_owned(),
        ErrorCode::ConfigurationError => "configuration error".to_owned(),
        ErrorCode::InternalError(Some(message)) => format!("internal error: {message}"),
        ErrorCode::InternalError(None) => "internal error".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_text() {
        assert_eq!(
            describe(&ErrorCode::HttpRequestDenied),
            "HTTP request denied"
        );
        assert_eq!(
            describe(&ErrorCode::InternalError(Some("no route".to_owned()))),
            "internal error: no route"
        );
        assert_eq!(
            describe(&ErrorCode::DnsError(wasi::DnsErrorPayload {
                rcode: Some("NXDOMAIN".to_owned()),
                info_code: None,
            })),
            "DNS error (rcode NXDOMAIN)"
        );
        assert_eq!(
            describe(&ErrorCode::HttpResponseBodySize(Some(10))),
            "HTTP response body too large (size 10)"
        );
    }

    #[test]
    fn fetch_errors_name_the_url() {
        let error = FetchError::Failed {
            url: "http://a/b".to_owned(),
            reason: describe(&ErrorCode::HttpRequestDenied),
        };
        assert_eq!(
            error.to_string(),
            "request to http://a/b failed: HTTP request denied"
        );
    }
}
