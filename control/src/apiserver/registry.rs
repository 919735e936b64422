//! The built-in OCI registry: the OCI distribution API under `/v2/` on the
//! API server's HTTPS port, so a cluster needs no registry of its own to run
//! its components (`hello:v1` in a pod spec pulls from here).
//!
//! Requests pass the API server's bearer-token authentication first (admin,
//! node, or ServiceAccount token; 401 with an OCI `UNAUTHORIZED` body and a
//! `WWW-Authenticate: Bearer realm=".../v2/token"` challenge otherwise).
//! Clients that only know user name and password log in through that token
//! endpoint with a Skiff token as the password ([`front`]). Everyone
//! authenticated may pull; only the admin may push or delete (403
//! `DENIED`).
//!
//! Endpoints: `GET /v2/`; blobs `HEAD|GET /v2/<name>/blobs/<digest>`;
//! uploads `POST /v2/<name>/blobs/uploads/` (monolithic with `?digest=`),
//! `PATCH` chunks, `PUT ?digest=` to finish (the sha256 is verified: 400
//! `DIGEST_INVALID` otherwise), `GET` status, `DELETE` cancel; manifests
//! `PUT|GET|HEAD|DELETE /v2/<name>/manifests/<tag|digest>`; `GET
//! /v2/<name>/tags/list` (`?n=&last=`). Blob bodies stream to disk (at most
//! [`MAX_BLOB`] per blob); see [`storage`] for the files.

mod storage;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::State;
use super::auth::User;
pub(crate) use storage::Storage;

/// The largest blob accepted (a component, its config): larger uploads get
/// 413. Components are compiled in memory by the nodes, so this is far
/// beyond any sensible one.
pub const MAX_BLOB: u64 = 256 << 20;

/// The largest manifest accepted (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// How long a request body may stall before the upload is abandoned.
const BODY_IDLE: Duration = Duration::from_secs(60);

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const CONTENT_DIGEST: &str = "docker-content-digest";

/// Whether `path` belongs to the registry.
pub(super) fn owns(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The token endpoint of the Docker token flow, `/v2/token`.
const TOKEN_PATH: &str = "/v2/token";

/// Middleware in front of authentication. It serves the token endpoint
/// (which must be reachable without a bearer token), and gives the
/// registry's 401s an OCI error body and a `WWW-Authenticate` challenge
/// pointing at that endpoint, so clients that log in with a user name and
/// password (`oras`, `docker login`, wkg) can use a Skiff token as the
/// password.
pub(super) async fn front(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == TOKEN_PATH {
        return with_api_version(token(&state, request.headers()));
    }
    let registry = owns(path);
    let realm = format!("https://{}{TOKEN_PATH}", authority(&request));
    let response = next.run(request).await;
    if registry && response.status() == StatusCode::UNAUTHORIZED {
        let mut response = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid bearer token (admin, node or ServiceAccount) is required",
        );
        if let Ok(challenge) =
            HeaderValue::from_str(&format!("Bearer realm=\"{realm}\",service=\"skiff\""))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        return response;
    }
    response
}

/// The `host[:port]` the client addressed (HTTP/2 authority or `Host`).
fn authority(request: &Request) -> String {
    request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|a| !a.contains(['"', '\\', '/']))
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// `GET /v2/token` with HTTP Basic credentials whose password is a Skiff
/// token (admin, node, or a validly signed, unexpired ServiceAccount
/// token): answers that token as the bearer token to use. Every request
/// made with it is authenticated again as usual.
fn token(state: &State, headers: &HeaderMap) -> Response {
    use base64::Engine;
    let password = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()));
    let valid = password.as_deref().filter(|p| {
        state.tokens.authenticate(p).is_some()
            || state
                .tokens
                .verify(p, jiff::Timestamp::now().as_second())
                .is_some()
    });
    match valid {
        Some(token) => {
            let body = serde_json::json!({"token": token, "access_token": token});
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        None => oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "log in with a Skiff token (admin, node or ServiceAccount) as the password",
        ),
    }
}

/// An OCI error response.
fn oci_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "errors": [{"code": code, "message": message.into()}]
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static(API_VERSION.0),
                API_VERSION.1,
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn internal(err: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %err, "registry storage failed");
    oci_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        format!("storage error: {err}"),
    )
}

/// What a registry path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Base,
    Blob(String, &'a str),
    Uploads(String),
    Upload(String, &'a str),
    Manifest(String, &'a str),
    Tags(String),
}

fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/v2")?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let n = segments.len();
    let name = |end: usize| -> Option<String> {
        (end > 0)
            .then(|| segments[..end].join("/"))
            .filter(|name| storage::valid_name(name))
    };
    match segments.as_slice() {
        [] => Some(Endpoint::Base),
        [.., "blobs", "uploads"] if n >= 3 => Some(Endpoint::Uploads(name(n - 2)?)),
        [.., "blobs", "uploads", id] if n >= 4 => Some(Endpoint::Upload(name(n - 3)?, id)),
        [.., "blobs", digest] if n >= 3 => Some(Endpoint::Blob(name(n - 2)?, digest)),
        [.., "manifests", reference] if n >= 3 => Some(Endpoint::Manifest(name(n - 2)?, reference)),
        [.., "tags", "list"] if n >= 3 => Some(Endpoint::Tags(name(n - 2)?)),
        _ => None,
    }
}

/// Serves one registry request (authentication already passed).
pub(super) async fn handle(state: &Arc<State>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let user = parts.extensions.get::<User>().cloned();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let registry = &state.registry;
    let Some(endpoint) = endpoint(&path) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_INVALID",
            format!("{path} is not a registry endpoint, or names an invalid repository"),
        );
    };
    let writes = !matches!(method, Method::GET | Method::HEAD);
    if writes && user != Some(User::Admin) {
        return oci_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "only the cluster admin may push to or delete from the built-in registry",
        );
    }
    let response = match (&method, endpoint) {
        (&Method::GET | &Method::HEAD, Endpoint::Base) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        (&Method::GET | &Method::HEAD, Endpoint::Blob(_, digest)) => {
            get_blob(registry, digest, method == Method::HEAD).await
        }
        (&Method::POST, Endpoint::Uploads(name)) => {
            start_upload(registry, &name, query.get("digest"), &parts.headers, body).await
        }
        (&Method::PATCH, Endpoint::Upload(name, id)) => {
            patch_upload(registry, &name, id, &parts.headers, body).await
        }
        (&Method::PUT, Endpoint::Upload(name, id)) => {
            finish_upload(
                registry,
                &name,
                id,
                query.get("digest"),
                &parts.headers,
                body,
            )
            .await
        }
        (&Method::GET, Endpoint::Upload(name, id)) => upload_status(registry, &name, id).await,
        (&Method::DELETE, Endpoint::Upload(_, id)) => match registry.upload_path(id).await {
            Some(path) => match tokio::fs::remove_file(path).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(err) => internal(err),
            },
            None => upload_unknown(id),
        },
        (&Method::PUT, Endpoint::Manifest(name, reference)) => {
            put_manifest(registry, &name, reference, &parts.headers, body).await
        }
        (&Method::GET | &Method::HEAD, Endpoint::Manifest(name, reference)) => {
            get_manifest(registry, &name, reference, method == Method::HEAD).await
        }
        (&Method::DELETE, Endpoint::Manifest(name, reference)) => {
            delete_manifest(registry, &name, reference).await
        }
        (&Method::GET, Endpoint::Tags(name)) => list_tags(registry, &name, &query).await,
        (method, _) => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported on {path}"),
        ),
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "registry request");
    with_api_version(response)
}

fn with_api_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    response
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn digest_invalid(message: impl Into<String>) -> Response {
    oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
}

fn upload_unknown(id: &str) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        format!("upload {id} is unknown (finished, cancelled, or never started)"),
    )
}

fn too_large(limit: u64) -> Response {
    oci_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!("the content is larger than the {} MiB limit", limit >> 20),
    )
}

async fn get_blob(registry: &Storage, digest: &str, head: bool) -> Response {
    let Some(path) = registry.blob_path(digest) else {
        return digest_invalid(format!("{digest:?} is not a sha256 digest"));
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return oci_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {digest} is unknown to the registry"),
            );
        }
        Err(err) => return internal(err),
    };
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(err) => return internal(err),
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(futures::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), file))
                }
                Err(err) => Some((Err(err), file)),
            }
        }))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(CONTENT_DIGEST, header_value(digest));
    response
}

/// Why a body could not be appended.
enum BodyError {
    TooLarge,
    Read(String),
    Io(std::io::Error),
}

impl BodyError {
    fn response(self, limit: u64) -> Response {
        match self {
            BodyError::TooLarge => too_large(limit),
            BodyError::Read(err) => oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("error reading the request body: {err}"),
            ),
            BodyError::Io(err) => internal(err),
        }
    }
}

/// Appends `body` to `file` (which holds `already` bytes), at most `limit`
/// bytes in all; returns the new length.
async fn append_body(
    file: &mut tokio::fs::File,
    already: u64,
    limit: u64,
    mut body: Body,
) -> Result<u64, BodyError> {
    let mut len = already;
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(BodyError::Read(err.to_string())),
            Err(_) => return Err(BodyError::Read("the body stalled".into())),
        };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            if len > limit {
                return Err(BodyError::TooLarge);
            }
            file.write_all(&data).await.map_err(BodyError::Io)?;
        }
    }
    file.flush().await.map_err(BodyError::Io)?;
    Ok(len)
}

fn upload_location(name: &str, id: &str, len: u64) -> Response {
    let mut response = StatusCode::ACCEPTED.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/uploads/{id}")),
    );
    headers.insert("docker-upload-uuid", header_value(id));
    // Range is inclusive: "0-0" before anything arrived, as registries do.
    headers.insert(
        header::RANGE,
        header_value(&format!("0-{}", len.saturating_sub(1))),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    response
}

fn blob_created(name: &str, digest: &str) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/{digest}")),
    );
    headers.insert(CONTENT_DIGEST, header_value(digest));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    response
}

async fn start_upload(
    registry: &Storage,
    name: &str,
    digest: Option<&String>,
    _headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Some(digest) = digest {
        // Monolithic: the whole blob in this request.
        if storage::digest_hex(digest).is_none() {
            return digest_invalid(format!("{digest:?} is not a sha256 digest"));
        }
        let temp = registry.temp_path();
        return match write_and_commit(registry, &temp, 0, body, digest).await {
            Ok(()) => blob_created(name, digest),
            Err(response) => response,
        };
    }
    // Cross-repository mounts (`?mount=`) are not offered: a new session
    // is the answer the spec allows for that.
    match registry.start_upload().await {
        Ok(id) => upload_location(name, &id, 0),
        Err(err) => internal(err),
    }
}

/// Appends `body` to `file` (creating it when `already` is 0), verifies
/// the whole file hashes to `digest` and moves it into the blob store. The
/// file is removed on failure.
async fn write_and_commit(
    registry: &Storage,
    path: &Path,
    already: u64,
    body: Body,
    digest: &str,
) -> Result<(), Response> {
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(internal)?;
        append_body(&mut file, already, MAX_BLOB, body)
            .await
            .map_err(|e| e.response(MAX_BLOB))?;
        file.sync_all().await.map_err(internal)?;
        drop(file);
        let actual = storage::sha256_file(path).await.map_err(internal)?;
        if actual != digest {
            return Err(digest_invalid(format!(
                "the content's digest is {actual}, not {digest}"
            )));
        }
        registry.commit_blob(path, digest).await.map_err(internal)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

/// Checks a `Content-Range: <start>-<end>` against the upload's length.
fn range_ok(headers: &HeaderMap, len: u64) -> bool {
    let Some(range) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let range = range
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    range
        .split_once('-')
        .and_then(|(start, _)| start.trim().parse::<u64>().ok())
        .is_some_and(|start| start == len)
}

async fn patch_upload(
    registry: &Storage,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(path) = registry.upload_path(id).await else {
        return upload_unknown(id);
    };
    let len = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta.len(),
        Err(err) => return internal(err),
    };
    if !range_ok(headers, len) {
        let mut response = oci_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("the chunk does not start at the upload's end ({len})"),
        );
        response.headers_mut().insert(
            header::RANGE,
            header_value(&format!("0-{}", len.saturating_sub(1))),
        );
        return response;
    }
    let mut file = match tokio::fs::OpenOptions::new().append(true).open(&path).await {
        Ok(file) => file,
        Err(err) => return internal(err),
    };
    match append_body(&mut file, len, MAX_BLOB, body).await {
        Ok(len) => upload_location(name, id, len),
        Err(err) => {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            err.response(MAX_BLOB)
        }
    }
}

async fn finish_upload(
    registry: &Storage,
    name: &str,
    id: &str,
    digest: Option<&String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(path) = registry.upload_path(id).await else {
        return upload_unknown(id);
    };
    let Some(digest) = digest else {
        return digest_invalid("finishing an upload needs ?digest=sha256:<hex>");
    };
    if storage::digest_hex(digest).is_none() {
        return digest_invalid(format!("{digest:?} is not a sha256 digest"));
    }
    let len = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta.len(),
        Err(err) => return internal(err),
    };
    if !range_ok(headers, len) {
        return oci_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("the chunk does not start at the upload's end ({len})"),
        );
    }
    match write_and_commit(registry, &path, len, body, digest).await {
        Ok(()) => blob_created(name, digest),
        Err(response) => response,
    }
}

async fn upload_status(registry: &Storage, name: &str, id: &str) -> Response {
    let Some(path) = registry.upload_path(id).await else {
        return upload_unknown(id);
    };
    match tokio::fs::metadata(&path).await {
        Ok(meta) => {
            let mut response = upload_location(name, id, meta.len());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(err) => internal(err),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestBody {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
}

async fn put_manifest(
    registry: &Storage,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let tag = if storage::digest_hex(reference).is_some() {
        None
    } else if storage::valid_tag(reference) {
        Some(reference)
    } else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("{reference:?} is neither a valid tag nor a sha256 digest"),
        );
    };
    let bytes = match read_limited(body, MAX_MANIFEST).await {
        Ok(bytes) => bytes,
        Err(err) => return err.response(MAX_MANIFEST),
    };
    let invalid = |message: String| oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message);
    let manifest: ManifestBody = match serde_json::from_slice(&bytes) {
        Ok(manifest) => manifest,
        Err(err) => return invalid(format!("the manifest is not valid JSON: {err}")),
    };
    if manifest.schema_version != Some(2) {
        return invalid("only schemaVersion 2 manifests are accepted".into());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .filter(|v| !v.is_empty());
    let Some(media_type) = content_type.or(manifest.media_type.clone()) else {
        return invalid("the manifest has no media type (Content-Type or mediaType)".into());
    };
    if media_type.contains(['\r', '\n']) || HeaderValue::from_str(&media_type).is_err() {
        return invalid(format!("invalid media type {media_type:?}"));
    }
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    if tag.is_none() && reference != digest {
        return digest_invalid(format!(
            "the manifest's digest is {digest}, not {reference}"
        ));
    }
    let referenced = manifest
        .config
        .iter()
        .chain(&manifest.layers)
        .chain(&manifest.manifests);
    for descriptor in referenced {
        if registry.blob_size(&descriptor.digest).await.is_none() {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!(
                    "the manifest references {}, which was not pushed",
                    descriptor.digest
                ),
            );
        }
    }
    if let Err(err) = registry
        .put_manifest(name, tag, &digest, &media_type, &bytes)
        .await
    {
        return internal(err);
    }
    tracing::info!(repository = name, reference, %digest, "manifest pushed");
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/manifests/{digest}")),
    );
    headers.insert(CONTENT_DIGEST, header_value(&digest));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    response
}

async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, BodyError> {
    let mut body = body;
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(BodyError::Read(err.to_string())),
            Err(_) => return Err(BodyError::Read("the body stalled".into())),
        };
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn manifest_unknown(registry: &Storage, name: &str, reference: &str) -> Response {
    if registry.repository_exists(name).await {
        oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {reference} is unknown in repository {name}"),
        )
    } else {
        oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is unknown to the registry"),
        )
    }
}

async fn get_manifest(registry: &Storage, name: &str, reference: &str, head: bool) -> Response {
    let Some(digest) = registry.resolve(name, reference).await else {
        return manifest_unknown(registry, name, reference).await;
    };
    let Some((media_type, bytes)) = registry.manifest(name, &digest).await else {
        return manifest_unknown(registry, name, reference).await;
    };
    let len = bytes.len() as u64;
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(bytes)
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header_value(&media_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(CONTENT_DIGEST, header_value(&digest));
    response
}

async fn delete_manifest(registry: &Storage, name: &str, reference: &str) -> Response {
    let deleted = if storage::digest_hex(reference).is_some() {
        registry.delete_manifest(name, reference).await
    } else {
        registry.delete_tag(name, reference).await
    };
    match deleted {
        Ok(true) => StatusCode::ACCEPTED.into_response(),
        Ok(false) => manifest_unknown(registry, name, reference).await,
        Err(err) => internal(err),
    }
}

async fn list_tags(registry: &Storage, name: &str, query: &HashMap<String, String>) -> Response {
    if !registry.repository_exists(name).await {
        return manifest_unknown(registry, name, "").await;
    }
    let mut tags = match registry.tags(name).await {
        Ok(tags) => tags,
        Err(err) => return internal(err),
    };
    if let Some(last) = query.get("last") {
        tags.retain(|t| t.as_str() > last.as_str());
    }
    if let Some(n) = query.get("n").and_then(|n| n.parse::<usize>().ok()) {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": name, "tags": tags });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(endpoint("/v2/"), Some(Endpoint::Base));
        assert_eq!(endpoint("/v2"), Some(Endpoint::Base));
        assert_eq!(
            endpoint(&format!("/v2/team/app/blobs/{digest}")),
            Some(Endpoint::Blob("team/app".into(), digest.as_str()))
        );
        assert_eq!(
            endpoint("/v2/app/blobs/uploads/"),
            Some(Endpoint::Uploads("app".into()))
        );
        assert_eq!(
            endpoint("/v2/a/b/blobs/uploads/0123"),
            Some(Endpoint::Upload("a/b".into(), "0123"))
        );
        assert_eq!(
            endpoint("/v2/app/manifests/v1"),
            Some(Endpoint::Manifest("app".into(), "v1"))
        );
        assert_eq!(
            endpoint("/v2/app/tags/list"),
            Some(Endpoint::Tags("app".into()))
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            endpoint("/v2/manifests/manifests/v1"),
            Some(Endpoint::Manifest("manifests".into(), "v1"))
        );
        assert_eq!(endpoint("/v2/Bad/manifests/v1"), None);
        assert_eq!(endpoint("/v2/manifests/v1"), None);
        assert_eq!(endpoint("/v2/../x/manifests/v1"), None);
    }
}
