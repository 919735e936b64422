//! From an HTTP request to a resource type, a namespace, a name and a verb.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_api::ResourceType;
use skiff_api::resources::by_plural;

use super::{ApiError, ApiResult, MAX_BODY, State, discovery, nodeproxy, objects, watch};

/// What a handler needs from the request.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) query: HashMap<String, String>,
    pub(crate) accept: String,
    pub(crate) content_type: String,
    pub(crate) user_agent: String,
    pub(crate) body: Bytes,
}

impl Req {
    /// A query parameter, if present and non-empty.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether a boolean query parameter is set (`true` or `1`).
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    /// The body's media type, without parameters (`application/json`).
    pub(crate) fn media_type(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }

    /// Whether the client asked for a `meta.k8s.io` Table.
    pub(crate) fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    }

    /// The field manager: `?fieldManager=`, else the user agent's program
    /// name (`kubectl`), as Kubernetes does.
    pub(crate) fn manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_string();
        }
        let manager = skiff_api::patch::apply::manager_from_user_agent(&self.user_agent);
        if manager.is_empty() {
            "unknown".into()
        } else {
            manager
        }
    }
}

/// Where a resource request points.
pub(crate) struct Target {
    pub(crate) rt: &'static ResourceType,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
    /// The path after `nodes/NAME/proxy/`.
    pub(crate) proxy_path: Option<String>,
}

pub(super) fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::registry::front,
        ))
        .with_state(state)
}

async fn dispatch(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    // The built-in OCI registry streams its own (large) bodies.
    if super::registry::owns(request.uri().path()) {
        return super::registry::handle(&state, request).await;
    }
    let (parts, body) = request.into_parts();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let req = Req {
        method: parts.method.clone(),
        query,
        accept: header(header::ACCEPT),
        content_type: header(header::CONTENT_TYPE),
        user_agent: header(header::USER_AGENT),
        body,
    };
    let path = parts.uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let result = route(&state, &req, &segments).await;
    let span_path = parts.uri.path();
    match result {
        Ok(response) => {
            tracing::debug!(method = %parts.method, path = span_path, status = response.status().as_u16(), "request");
            response
        }
        Err(err) => {
            tracing::debug!(method = %parts.method, path = span_path, status = err.code.as_u16(), reason = err.reason, "request failed");
            err.into_response()
        }
    }
}

/// How much of an oversized body is read (and discarded) so the client,
/// still sending, can read the 413 instead of a reset connection. Beyond
/// this the connection is simply closed.
const MAX_DRAIN: usize = 4 * MAX_BODY;

/// Reads the body, at most [`MAX_BODY`] bytes (413 beyond).
async fn read_body(body: axum::body::Body) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Err(ApiError::bad_request(format!(
                    "error reading the request body: {err}"
                )));
            }
            Err(_) => return Err(ApiError::bad_request("timed out reading the request body")),
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > MAX_DRAIN {
                break;
            }
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok(Bytes::from(buf))
}

async fn route(state: &Arc<State>, req: &Req, segments: &[&str]) -> ApiResult<Response> {
    match segments {
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => Ok(discovery::version()),
        ["metrics"] => Ok(super::metrics::render(&state.watchers)),
        ["openapi", "v3"] => Ok(discovery::openapi_index()),
        ["openapi", "v3", rest @ ..] => discovery::openapi_document(rest),
        ["api"] => Ok(discovery::core_versions(req)),
        ["apis"] => Ok(discovery::groups(req)),
        ["api", "v1"] => discovery::resource_list("", "v1"),
        ["apis", group] => discovery::group(group),
        ["apis", group, version] => discovery::resource_list(group, version),
        ["api", "v1", rest @ ..] => resource(state, req, "", "v1", rest).await,
        ["apis", group, version, rest @ ..] => resource(state, req, group, version, rest).await,
        _ => Err(ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        }),
    }
}

/// Parses `[namespaces/NS/]PLURAL[/NAME[/SUB]]` under a group version.
fn target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let not_found = || ApiError {
        code: StatusCode::NOT_FOUND,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
    };
    // `namespaces/NS/PLURAL...` is a namespaced resource unless PLURAL is a
    // subresource of the namespace itself (`namespaces/NS/status`).
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(rt) = by_plural(group, version, plural).filter(|rt| rt.namespaced())
    {
        return match tail {
            [] => Ok(Target {
                rt,
                namespace: Some(ns.to_string()),
                name: None,
                subresource: None,
                proxy_path: None,
            }),
            [name] => Ok(Target {
                rt,
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                subresource: None,
                proxy_path: None,
            }),
            [name, sub] if rt.subresources.contains(sub) => Ok(Target {
                rt,
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                subresource: Some(sub.to_string()),
                proxy_path: None,
            }),
            _ => Err(not_found()),
        };
    }
    let (plural, tail) = rest.split_first().ok_or_else(not_found)?;
    let rt = by_plural(group, version, plural).ok_or_else(not_found)?;
    let (name, subresource, proxy_path) = match tail {
        [] => (None, None, None),
        [name] => (Some(name.to_string()), None, None),
        [name, "proxy", path @ ..] if rt.subresources.contains(&"proxy") => (
            Some(name.to_string()),
            Some("proxy".to_owned()),
            Some(path.join("/")),
        ),
        [name, sub] if rt.subresources.contains(sub) => {
            (Some(name.to_string()), Some(sub.to_string()), None)
        }
        _ => return Err(not_found()),
    };
    Ok(Target {
        rt,
        // A namespaced type listed without a namespace: across all.
        namespace: None,
        name,
        subresource,
        proxy_path,
    })
}

async fn resource(
    state: &Arc<State>,
    req: &Req,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response> {
    let t = target(group, version, rest)?;
    if t.rt.namespaced() && t.namespace.is_none() && t.name.is_some() {
        return Err(ApiError::bad_request(format!(
            "{} is namespaced: name it under /namespaces/NAMESPACE/",
            t.rt.plural
        )));
    }
    let sub = t.subresource.as_deref();
    match (&req.method, t.name.is_some(), sub) {
        (&Method::GET, false, None) if req.flag("watch") => watch::watch(state, req, &t).await,
        (&Method::GET, false, None) => objects::list(state, req, &t).await,
        (&Method::POST, false, None) => objects::create(state, req, &t).await,
        (&Method::DELETE, false, None) => objects::delete_collection(state, req, &t).await,
        (&Method::GET, true, None | Some("status" | "approval")) => {
            objects::get(state, req, &t).await
        }
        (&Method::PUT, true, None | Some("status" | "approval")) => {
            objects::update(state, req, &t).await
        }
        (&Method::PATCH, true, None | Some("status" | "approval")) => {
            objects::patch(state, req, &t).await
        }
        (&Method::DELETE, true, None) => objects::delete(state, req, &t).await,
        (&Method::GET | &Method::PUT | &Method::PATCH, true, Some("scale")) => {
            objects::scale(state, req, &t).await
        }
        (&Method::PUT, true, Some("finalize")) if t.rt.kind == "Namespace" => {
            objects::update(state, req, &t).await
        }
        (&Method::POST, true, Some("binding")) => objects::bind(state, req, &t).await,
        (&Method::POST, true, Some("token")) => objects::token_request(state, req, &t).await,
        (&Method::GET, true, Some("log")) => nodeproxy::pod_log(state, req, &t).await,
        (&Method::GET, true, Some("proxy")) => nodeproxy::node_proxy(state, req, &t).await,
        (method, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method ({method}) on the requested resource"
        ))),
    }
}
