//! API errors: every failure reaches the client as a Kubernetes `Status`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store;

/// A failed request, rendered as a `Status` object with its HTTP code.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: StatusCode,
    /// Kubernetes reason: `NotFound`, `AlreadyExists`, `Conflict`, ...
    pub reason: &'static str,
    /// The sentence kubectl prints after `Error from server (Reason):`.
    pub message: String,
    /// `details`, when there is something to say (name, kind, causes).
    pub details: Option<Value>,
}

/// Result of an API handler step.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, plural: &str, group: &str, name: &str) -> ApiError {
        let mut details = json!({ "name": name, "kind": plural });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        self.details = Some(details);
        self
    }

    /// 404: `pods "nope" not found`.
    pub fn not_found(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} {name:?} not found"),
        )
        .with_details(plural, group, name)
    }

    /// 409: `pods "web" already exists`.
    pub fn already_exists(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} {name:?} already exists"),
        )
        .with_details(plural, group, name)
    }

    /// 409: the resourceVersion did not match.
    pub fn conflict(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .with_details(plural, group, name)
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401: no or a bad token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 405: the verb is not supported here.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// 410: the resourceVersion is older than the store keeps.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415: a body we cannot read.
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    /// 422 from admission.
    pub fn invalid(invalid: &skiff_api::Invalid, group: &str) -> ApiError {
        let status = invalid.to_status(group);
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: status["message"].as_str().unwrap_or_default().to_string(),
            details: Some(status["details"].clone()),
        }
    }

    /// 500: something failed inside the server; the message says what.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 503: the store is unavailable.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// Maps a store error for the object `name` of `plural`.
    pub fn from_store(err: store::Error, plural: &str, group: &str, name: &str) -> ApiError {
        match err {
            store::Error::NotFound { .. } => ApiError::not_found(plural, group, name),
            store::Error::AlreadyExists { .. } => ApiError::already_exists(plural, group, name),
            store::Error::Conflict { .. } => ApiError::conflict(plural, group, name),
            store::Error::Compacted {
                requested,
                compacted,
                ..
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            store::Error::FutureRevision {
                requested, current, ..
            } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            other => ApiError::unavailable(format!("storage error: {other}")),
        }
    }
}

/// `deployments.apps`, or `pods` for the core group.
fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code.is_server_error() {
            tracing::warn!(
                code = self.code.as_u16(),
                reason = self.reason,
                "{}",
                self.message
            );
        }
        let mut response = (self.code, self.status().to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}
