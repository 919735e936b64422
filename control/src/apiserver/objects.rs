//! The verbs on objects: get, list, create, update, patch, delete, scale,
//! bind. Metadata is kept as Kubernetes keeps it: `uid`, `resourceVersion`
//! (the store's mod revision), `generation` (bumped on spec changes only),
//! `creationTimestamp`, `deletionTimestamp` with finalizers, and
//! `managedFields`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skiff_api::admission::{self, AdmitError, Operation};
use skiff_api::patch::{self, PatchError, PatchType};
use skiff_api::selector::{FieldSelector, LabelSelector};
use skiff_api::{ResourceType, resources};

use super::routes::{Req, Target};
use super::{ApiError, ApiResult, State};
use crate::store::{KeyValue, ListOptions};

/// How many times a patch or status write is retried on a write conflict
/// before the conflict reaches the client.
const PATCH_RETRIES: usize = 5;

/// Namespaces every cluster has.
const DEFAULT_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The current time as Kubernetes writes timestamps (RFC 3339, seconds).
pub(crate) fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// A JSON response.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut response = (code, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object stored under `kv`, with its resourceVersion.
pub(crate) fn from_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// A stored object's JSON with `metadata.resourceVersion` set to
/// `revision`, spliced into the text instead of decoding and encoding the
/// object (what a watch sends every watcher for every change). `None` if
/// the text has no top-level `metadata` object.
pub(crate) fn with_resource_version(json: &[u8], revision: u64) -> Option<Vec<u8>> {
    let at = metadata_body(json)?;
    let rest = &json[at..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(json.len() + 48);
    out.extend_from_slice(&json[..at]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Where the members of the top-level object's `metadata` object begin
/// (just after its `{`). Stored objects never carry a resourceVersion, so
/// one can be added there without looking inside.
fn metadata_body(json: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut last_key: Option<&[u8]> = None;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while *json.get(i)? != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 {
                    last_key = Some(&json[start..i]);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b':' if depth == 1 && last_key == Some(b"metadata".as_slice()) => {
                let value = i
                    + 1
                    + json[i + 1..]
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())?;
                return (json[value] == b'{').then_some(value + 1);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

pub(crate) fn set_resource_version(obj: &mut Value, revision: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The stored form of an object: its JSON without `metadata.resourceVersion`
/// (the store's revision is the truth) or `selfLink`, written without
/// copying the object.
fn to_stored(obj: &Value) -> bytes::Bytes {
    let json = serde_json::to_vec(&Stored(obj)).expect("a JSON value always serializes");
    bytes::Bytes::from(json)
}

/// Serializes an object as [`to_stored`] stores it.
struct Stored<'a>(&'a Value);

/// Serializes a `metadata` map without the keys the store does not keep.
struct StoredMetadata<'a>(&'a serde_json::Map<String, Value>);

const NOT_STORED: [&str; 2] = ["resourceVersion", "selfLink"];

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(obj) = self.0.as_object() else {
            return self.0.serialize(s);
        };
        let mut map = s.serialize_map(Some(obj.len()))?;
        for (key, value) in obj {
            match value.as_object() {
                Some(meta) if key == "metadata" => {
                    map.serialize_entry(key, &StoredMetadata(meta))?
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

impl serde::Serialize for StoredMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .filter(|(key, _)| !NOT_STORED.contains(&key.as_str())),
        )
    }
}

fn resource_version_of(obj: &Value) -> ApiResult<Option<u64>> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// Decodes a request body: JSON (also when no content type is sent, as
/// the Python client does), YAML, or the protobuf envelope kubectl uses for
/// some creates.
fn decode_body(req: &Req) -> ApiResult<Value> {
    let ct = req.media_type();
    let value: Value = match ct {
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(&req.body)?,
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml_ng::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        "" | "application/json" | "text/plain" | "*/*" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        other if other.ends_with("+json") => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Checks the body's apiVersion and kind (filling them when absent) and
/// its namespace against the URL's.
fn check_identity(rt: &ResourceType, t: &Target, obj: &mut Value) -> ApiResult<()> {
    let api_version = rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"].as_object_mut().expect("set above");
    if rt.namespaced() {
        let url_ns = t.namespace.as_deref().unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(url_ns));
            }
            Some(ns) if ns == url_ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = &t.name {
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), json!(url_name));
            }
            Some(n) if n == url_name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )));
            }
        }
    }
    Ok(())
}

fn admit(
    rt: &ResourceType,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
    req: &Req,
) -> ApiResult<Vec<String>> {
    let strict = req.param("fieldValidation") == Some("Strict");
    match admission::admit(rt, op, obj, old, strict) {
        Ok(admitted) => Ok(admitted.warnings),
        // Unknown fields under `fieldValidation=Strict` are a decoding
        // error in Kubernetes (400), not a validation one (422).
        Err(AdmitError::Invalid(invalid))
            if invalid
                .causes
                .iter()
                .all(|c| c.message.starts_with("unknown field")) =>
        {
            let fields: Vec<String> = invalid.causes.iter().map(|c| c.message.clone()).collect();
            Err(ApiError::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", "),
                kind = rt.kind,
                version = rt.version,
            )))
        }
        Err(AdmitError::Invalid(invalid)) => Err(ApiError::invalid(&invalid, rt.group)),
        Err(AdmitError::BadRequest(message)) => Err(ApiError::bad_request(message)),
    }
}

/// Adds `Warning` headers, as Kubernetes does for dropped unknown fields.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels (no words), no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Whether everything but `metadata` and `status` is equal: generation
/// moves only when this changes.
fn spec_equal(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    strip(a) == strip(b)
}

pub(super) async fn get_object(
    state: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<(Value, u64)> {
    let key = rt.key(ns, name);
    match state.store.get(&key).await {
        Ok(Some(kv)) => Ok((from_kv(&kv)?, kv.mod_revision)),
        Ok(None) => Err(ApiError::not_found(rt.plural, rt.group, name)),
        Err(err) => Err(ApiError::from_store(err, rt.plural, rt.group, name)),
    }
}

fn namespaces() -> &'static ResourceType {
    resources::by_kind("v1", "Namespace").expect("Namespace is registered")
}

/// Creates the default namespaces if they are missing.
pub(super) async fn ensure_default_namespaces(state: &Arc<State>) {
    for ns in DEFAULT_NAMESPACES {
        let rt = namespaces();
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        if admission::admit(rt, Operation::Create, &mut obj, None, false).is_err() {
            continue;
        }
        stamp_new(rt, &mut obj);
        match state.store.create(&rt.key(None, ns), to_stored(&obj)).await {
            Ok(_) | Err(crate::store::Error::AlreadyExists { .. }) => {}
            Err(err) => {
                tracing::warn!(namespace = ns, error = %err, "cannot create a default namespace")
            }
        }
    }
}

/// Whether Kubernetes keeps `metadata.generation` for the type: those with
/// a desired state (a spec) do; plain data objects do not.
fn has_generation(rt: &ResourceType) -> bool {
    !matches!(
        rt.kind,
        "ConfigMap" | "Secret" | "Endpoints" | "Event" | "ServiceAccount" | "EndpointSlice"
    )
}

/// Sets the metadata a new object of type `rt` gets from the server.
fn stamp_new(rt: &ResourceType, obj: &mut Value) {
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "generation",
    ] {
        meta.remove(field);
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if has_generation(rt) {
        meta.insert("generation".into(), json!(1));
    }
}

/// A new Job's selector and pod labels, as Kubernetes generates them unless
/// `spec.manualSelector` is true: the Job's uid and name, under both the
/// current and the legacy label keys, with the selector on the uid.
fn generate_job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true))
        || job.pointer("/spec/selector").is_some_and(|s| !s.is_null())
    {
        return;
    }
    let uid = job.pointer("/metadata/uid").cloned().unwrap_or(json!(""));
    let name = job.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    let meta = &mut template["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        meta["labels"][key] = value.clone();
    }
}

pub(super) async fn get(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or_default();
    let (obj, _) = get_object(state, t.rt, t.namespace.as_deref(), name).await?;
    Ok(render_one(t.rt, req, obj))
}

/// One object, as JSON or as a one-row Table.
fn render_one(rt: &ResourceType, req: &Req, obj: Value) -> Response {
    if req.wants_table() {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(json!(""));
        let table = skiff_api::table::table(
            rt,
            std::slice::from_ref(&obj),
            include_object(req),
            std::time::SystemTime::now(),
            json!({ "resourceVersion": rv }),
        );
        return json_response(StatusCode::OK, &table);
    }
    json_response(StatusCode::OK, &obj)
}

pub(crate) fn include_object(req: &Req) -> skiff_api::table::IncludeObject {
    match req.param("includeObject") {
        Some("None") => skiff_api::table::IncludeObject::None,
        Some("Object") => skiff_api::table::IncludeObject::Object,
        _ => skiff_api::table::IncludeObject::Metadata,
    }
}

/// Parsed list filters.
pub(crate) struct Filter {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    /// What the selectors read of an object, for testing stored JSON.
    projection: skiff_api::selector::Projection,
}

impl Filter {
    pub(crate) fn from(req: &Req) -> ApiResult<Filter> {
        let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
        let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
        let projection = skiff_api::selector::Projection::new(&labels, &fields);
        Ok(Filter {
            labels,
            fields,
            projection,
        })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }

    /// Whether the object stored as `json` is selected, reading only what
    /// the selectors look at. An object that cannot be read is not.
    pub(crate) fn matches_stored(&self, json: &[u8]) -> bool {
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        self.projection
            .read(json)
            .is_ok_and(|projected| self.matches(&projected))
    }
}

/// The continue token: where the next page starts, at which revision.
fn encode_continue(revision: u64, after: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": revision, "start": after}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(u64, String)> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((
        v["rv"].as_u64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

/// Reads the matching objects of a collection as stored: at most `limit`
/// (with a continue token when more match), at one consistent revision,
/// tested against the filter without decoding them.
pub(crate) async fn read_list(
    state: &State,
    t: &Target,
    filter: &Filter,
    limit: Option<usize>,
    continue_from: Option<(u64, String)>,
    revision: Option<u64>,
) -> ApiResult<(Vec<KeyValue>, u64, Option<String>)> {
    let rt = t.rt;
    let store_err = |e| ApiError::from_store(e, rt.plural, rt.group, "");
    // `metadata.name=X` pins one key: read just that.
    if let (Some(name), None) = (filter.fields.name(), &continue_from) {
        if rt.namespaced() && t.namespace.is_none() {
            // Across namespaces: fall through to the scan.
        } else {
            let revision = match revision {
                Some(r) => r,
                None => state.store.current_revision().await.map_err(store_err)?,
            };
            let list = state
                .store
                .list(
                    &rt.key(t.namespace.as_deref(), name),
                    ListOptions {
                        revision: Some(revision),
                        limit: None,
                        start_after: None,
                    },
                )
                .await
                .map_err(store_err)?;
            let key = rt.key(t.namespace.as_deref(), name);
            let items = list
                .kvs
                .into_iter()
                .filter(|kv| kv.key == key && filter.matches_stored(&kv.value))
                .collect();
            return Ok((items, list.revision, None));
        }
    }
    let prefix = rt.prefix(t.namespace.as_deref());
    let (mut revision, mut after) = match continue_from {
        Some((rv, after)) => (Some(rv), Some(after)),
        None => (revision, None),
    };
    let mut items = Vec::new();
    let mut list_revision;
    // Read in chunks so a selective filter over many objects stays bounded
    // in memory per step.
    const CHUNK: usize = 500;
    loop {
        let page = state
            .store
            .list(
                &prefix,
                ListOptions {
                    revision,
                    limit: Some(CHUNK),
                    start_after: after.clone(),
                },
            )
            .await
            .map_err(store_err)?;
        list_revision = page.revision;
        revision = Some(page.revision);
        let last_key = page.kvs.last().map(|kv| kv.key.clone());
        for kv in page.kvs {
            if !filter.matches_stored(&kv.value) {
                continue;
            }
            if limit.is_some_and(|l| items.len() == l) {
                // One more match exists: the page ends at the last item.
                let last = items
                    .last()
                    .map(|kv: &KeyValue| kv.key.clone())
                    .unwrap_or_default();
                return Ok((
                    items,
                    list_revision,
                    Some(encode_continue(list_revision, &last)),
                ));
            }
            items.push(kv);
        }
        match last_key {
            Some(last) if page.more => after = Some(last),
            _ => break,
        }
    }
    Ok((items, list_revision, None))
}

fn obj_ns(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

pub(super) async fn list(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let filter = Filter::from(req)?;
    let limit = match req.param("limit") {
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(l) => Some(l),
            Err(_) => return Err(ApiError::bad_request(format!("invalid limit {l:?}"))),
        },
        None => None,
    };
    let continue_from = req.param("continue").map(decode_continue).transpose()?;
    let revision = match (
        req.param("resourceVersion"),
        req.param("resourceVersionMatch"),
    ) {
        (Some(rv), Some("Exact")) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
        _ => None,
    };
    let (kvs, revision, next) =
        read_list(state, t, &filter, limit, continue_from, revision).await?;
    let mut meta = json!({ "resourceVersion": revision.to_string() });
    if let Some(next) = &next {
        meta["continue"] = json!(next);
    }
    if req.wants_table() {
        let items = kvs.iter().map(from_kv).collect::<ApiResult<Vec<_>>>()?;
        let table = skiff_api::table::table(
            t.rt,
            &items,
            include_object(req),
            std::time::SystemTime::now(),
            meta,
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    // The items as stored, their resourceVersions spliced in.
    let head = json!({
        "kind": t.rt.list_kind(),
        "apiVersion": t.rt.api_version(),
        "metadata": meta,
    })
    .to_string();
    let size = kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>();
    let mut body = Vec::with_capacity(head.len() + size + 16);
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&stored_json(kv)?);
    }
    body.extend_from_slice(b"]}");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The JSON of a stored object with its resourceVersion, spliced without
/// decoding it when its text allows.
pub(crate) fn stored_json(kv: &KeyValue) -> ApiResult<Vec<u8>> {
    match with_resource_version(&kv.value, kv.mod_revision) {
        Some(json) => Ok(json),
        None => Ok(from_kv(kv)?.to_string().into_bytes()),
    }
}

pub(super) async fn create(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let mut obj = decode_body(req)?;
    check_identity(t.rt, t, &mut obj)?;
    let (obj, warnings) = create_object(state, req, t.rt, obj, false).await?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &obj),
        &warnings,
    ))
}

/// Creates `obj` (identity already checked): name generation, namespace
/// checks, server metadata, admission, allocation, managed fields, store.
/// `applied`: the object comes from server-side apply, which recorded its
/// managed fields already.
async fn create_object(
    state: &Arc<State>,
    req: &Req,
    rt: &'static ResourceType,
    mut obj: Value,
    applied: bool,
) -> ApiResult<(Value, Vec<String>)> {
    let generate = obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .map(str::to_string);
    if name_of(&obj).is_empty()
        && let Some(prefix) = generate.filter(|p| !p.is_empty())
    {
        obj["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    let ns = obj_ns(&obj).map(str::to_string);
    if rt.namespaced() {
        let ns = ns.as_deref().unwrap_or("default");
        let (namespace, _) = get_object(state, namespaces(), None, ns).await?;
        if namespace.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden(format!(
                "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.plural,
                name_of(&obj)
            )));
        }
    }
    stamp_new(rt, &mut obj);
    if rt.kind == "Job" {
        generate_job_selector(&mut obj);
    }
    if rt.subresources.contains(&"status") && rt.kind != "Namespace" {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
        if rt.kind == "Pod" {
            obj["status"] = json!({"phase": "Pending"});
        }
    }
    let managed = obj.pointer("/metadata/managedFields").cloned();
    let warnings = admit(rt, Operation::Create, &mut obj, None, req)?;
    if applied {
        // Server-side apply already recorded the applier's fields.
        if let Some(managed) = managed {
            obj["metadata"]["managedFields"] = managed;
        }
    } else if let Err(e) =
        patch::apply::record_update(rt.kind, None, &mut obj, &req.manager(), &now())
    {
        return Err(patch_error(e));
    }
    let name = name_of(&obj).to_string();
    let key = rt.key(ns.as_deref(), &name);
    let kv = if rt.kind == "Service" {
        let _guard = state.allocator.lock.lock().await;
        allocate_service(state, &mut obj, None).await?;
        state.store.create(&key, to_stored(&obj)).await
    } else {
        state.store.create(&key, to_stored(&obj)).await
    }
    .map_err(|e| ApiError::from_store(e, rt.plural, rt.group, &name))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok((obj, warnings))
}

/// Gives a Service its ClusterIP and NodePorts (keeping those it has, and
/// checking requested ones are free).
async fn allocate_service(state: &State, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
    let rt = resources::by_kind("v1", "Service").expect("Service is registered");
    let list = state
        .store
        .list(&rt.prefix(None), ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, rt.plural, rt.group, ""))?;
    let this_key = rt.key(obj_ns(obj), name_of(obj));
    let others: Vec<Value> = list
        .kvs
        .iter()
        .filter(|kv| kv.key != this_key)
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let allocator = &state.allocator;
    let svc_type = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let service_name = name_of(obj).to_string();
    let field_error = |field: &str, value: Value, detail: &str| {
        let invalid = skiff_api::Invalid {
            kind: "Service".into(),
            name: service_name.clone(),
            causes: vec![skiff_api::Cause::invalid(field, &value, detail)],
        };
        ApiError::invalid(&invalid, "")
    };
    if svc_type != "ExternalName" {
        let wanted = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .map(str::to_string);
        let kept = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let ip = match wanted.or(kept) {
            Some(ip) if ip == "None" => ip,
            Some(ip) if !ip.is_empty() => {
                let parsed: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                    field_error("spec.clusterIP", json!(ip), "must be a valid IP address")
                })?;
                if !allocator.contains(parsed) {
                    return Err(field_error(
                        "spec.clusterIP",
                        json!(ip),
                        "provided IP is not in the valid range",
                    ));
                }
                if others
                    .iter()
                    .any(|s| s.pointer("/spec/clusterIP") == Some(&json!(ip)))
                {
                    return Err(field_error(
                        "spec.clusterIP",
                        json!(ip),
                        "provided IP is already allocated",
                    ));
                }
                ip
            }
            _ => allocator
                .cluster_ip(&others)
                .ok_or_else(|| ApiError::internal("the service CIDR has no free addresses"))?
                .to_string(),
        };
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    }
    if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
        let mut used = super::alloc::Allocator::used_node_ports(&others);
        let (low, high) = allocator.node_port_range();
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, port) in ports.iter_mut().enumerate() {
                let requested = port.get("nodePort").and_then(Value::as_u64);
                let kept = old_ports
                    .iter()
                    .find(|p| p.get("port") == port.get("port"))
                    .and_then(|p| p.get("nodePort"))
                    .and_then(Value::as_u64);
                let chosen = match requested.or(kept) {
                    Some(p) => {
                        let p = u16::try_from(p).unwrap_or(0);
                        if p < low || p > high {
                            return Err(field_error(
                                &format!("spec.ports[{i}].nodePort"),
                                json!(p),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {low}-{high}"
                                ),
                            ));
                        }
                        if used.contains(&p) {
                            return Err(field_error(
                                &format!("spec.ports[{i}].nodePort"),
                                json!(p),
                                "provided port is already allocated",
                            ));
                        }
                        p
                    }
                    None => allocator
                        .node_port(&used)
                        .ok_or_else(|| ApiError::internal("no free NodePorts are left"))?,
                };
                used.insert(chosen);
                port["nodePort"] = json!(chosen);
            }
        }
    } else if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    Ok(())
}

fn patch_error(err: PatchError) -> ApiError {
    match err {
        PatchError::BadRequest(message) => ApiError::bad_request(message),
        PatchError::Unsupported(message) => ApiError::unsupported_media_type(&message),
        PatchError::Conflict(conflicts) => {
            let status = conflicts.to_status();
            ApiError {
                code: StatusCode::CONFLICT,
                reason: "Conflict",
                message: status["message"]
                    .as_str()
                    .unwrap_or("apply conflict")
                    .to_string(),
                details: status.get("details").cloned(),
            }
        }
    }
}

/// The shared tail of update and patch: merge server-owned fields from the
/// old object, bump generation, admit, record managed fields, and write
/// with compare-and-swap on `expected`.
async fn write_update(
    state: &Arc<State>,
    req: &Req,
    t: &Target,
    old: &Value,
    mut new: Value,
    expected: u64,
) -> ApiResult<(Value, Vec<String>)> {
    let rt = t.rt;
    let name = name_of(old).to_string();
    let approval = t.subresource.as_deref() == Some("approval");
    let status_only = approval || t.subresource.as_deref() == Some("status");
    if t.subresource.as_deref() == Some("finalize") {
        // namespaces/NAME/finalize changes spec.finalizers and nothing else.
        let finalizers = new.pointer("/spec/finalizers").cloned();
        new = old.clone();
        set_spec_finalizers(&mut new, finalizers);
    } else if rt.kind == "Namespace" {
        // Only the finalize subresource may change a namespace's finalizers.
        set_spec_finalizers(&mut new, old.pointer("/spec/finalizers").cloned());
    }
    if approval {
        // A CertificateSigningRequest's approval subresource changes
        // status.conditions (Approved, Denied) and nothing else.
        let conditions = new.pointer("/status/conditions").cloned();
        new = old.clone();
        if !new.get("status").is_some_and(Value::is_object) {
            new["status"] = json!({});
        }
        match (conditions, new["status"].as_object_mut()) {
            (Some(c), _) => new["status"]["conditions"] = c,
            (None, Some(status)) => {
                status.remove("conditions");
            }
            (None, None) => {}
        }
    } else if status_only {
        // The status subresource changes status and nothing else.
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    } else if rt.subresources.contains(&"status") && rt.kind != "Namespace" {
        // The main resource cannot change status.
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    // Server-owned metadata comes from the stored object.
    let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
    if let Some(uid) = new.pointer("/metadata/uid").and_then(Value::as_str)
        && !uid.is_empty()
        && Some(uid) != old_meta.get("uid").and_then(Value::as_str)
    {
        return Err(ApiError::conflict(rt.plural, rt.group, &name));
    }
    {
        let meta = new["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if status_only {
            meta.insert(
                "managedFields".into(),
                old_meta.get("managedFields").cloned().unwrap_or(json!([])),
            );
        }
    }
    if has_generation(rt) && !spec_equal(old, &new) {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    let warnings = admit(rt, Operation::Update, &mut new, Some(old), req)?;
    patch::apply::record_update(rt.kind, Some(old), &mut new, &req.manager(), &now())
        .map_err(patch_error)?;
    // An object being deleted goes once its last finalizer is removed (a
    // namespace's spec finalizers included).
    let empty = |path: &str| {
        new.pointer(path)
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty())
    };
    let finalizers_empty =
        empty("/metadata/finalizers") && (rt.kind != "Namespace" || empty("/spec/finalizers"));
    let key = rt.key(obj_ns(old), &name);
    if new.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers_empty
        && !needs_graceful_wait(rt, &new)
    {
        let kv = state
            .store
            .delete(&key, Some(expected))
            .await
            .map_err(|e| ApiError::from_store(e, rt.plural, rt.group, &name))?;
        let mut gone = new;
        set_resource_version(&mut gone, kv.mod_revision);
        return Ok((gone, warnings));
    }
    let result = if rt.kind == "Service" && !status_only {
        let _guard = state.allocator.lock.lock().await;
        allocate_service(state, &mut new, Some(old)).await?;
        state
            .store
            .update(&key, to_stored(&new), Some(expected))
            .await
    } else {
        state
            .store
            .update(&key, to_stored(&new), Some(expected))
            .await
    };
    let kv = result.map_err(|e| ApiError::from_store(e, rt.plural, rt.group, &name))?;
    set_resource_version(&mut new, kv.mod_revision);
    Ok((new, warnings))
}

/// A pod bound to a node, being deleted gracefully, waits for its node
/// agent to stop it (which then deletes it with grace 0).
fn needs_graceful_wait(rt: &ResourceType, obj: &Value) -> bool {
    rt.kind == "Pod"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
        && !matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

pub(super) async fn update(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let mut new = decode_body(req)?;
    check_identity(t.rt, t, &mut new)?;
    let name = t.name.as_deref().unwrap_or_default();
    let (old, current) = get_object(state, t.rt, t.namespace.as_deref(), name).await?;
    let expected = match resource_version_of(&new)? {
        Some(rv) if rv != current => return Err(ApiError::conflict(t.rt.plural, t.rt.group, name)),
        Some(rv) => rv,
        // An unconditional update, as most types allow.
        None => current,
    };
    let (obj, warnings) = write_update(state, req, t, &old, new, expected).await?;
    Ok(with_warnings(
        json_response(StatusCode::OK, &obj),
        &warnings,
    ))
}

pub(super) async fn patch(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let ct = req.media_type();
    let kind =
        PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
    let rt = t.rt;
    let name = t.name.as_deref().unwrap_or_default();
    for _ in 0..PATCH_RETRIES {
        let existing = match get_object(state, rt, t.namespace.as_deref(), name).await {
            Ok(found) => Some(found),
            Err(err) if err.code == StatusCode::NOT_FOUND && matches!(kind, PatchType::Apply) => {
                None
            }
            Err(err) => return Err(err),
        };
        let patched = match (&kind, &existing) {
            (PatchType::Json, Some((old, _))) => patch::json_patch(old, &req.body),
            (PatchType::Merge, Some((old, _))) => patch::merge_patch(old, &decode_body(req)?),
            (PatchType::StrategicMerge, Some((old, _))) => {
                patch::strategic_merge_patch(rt.kind, old, &decode_body(req)?)
            }
            (PatchType::Apply, live) => {
                let applied = decode_body(req)?;
                let manager = req.param("fieldManager").ok_or_else(|| {
                    ApiError::bad_request("PATCH requests of type apply must have a fieldManager")
                })?;
                patch::apply::apply(
                    rt.kind,
                    live.as_ref().map(|(o, _)| o),
                    &applied,
                    manager,
                    req.flag("force"),
                    &now(),
                )
            }
            (_, None) => return Err(ApiError::not_found(rt.plural, rt.group, name)),
        };
        let mut new = patched.map_err(patch_error)?;
        check_identity(rt, t, &mut new)?;
        let Some((old, current)) = existing else {
            // Server-side apply of a new object creates it.
            let (obj, warnings) = create_object(state, req, rt, new, true).await?;
            return Ok(with_warnings(
                json_response(StatusCode::CREATED, &obj),
                &warnings,
            ));
        };
        // A resourceVersion in the patch is a precondition; otherwise the
        // patch applies to whatever is current, retried on a race.
        let expected = match resource_version_of(&new)? {
            Some(rv) if rv != current => {
                if resource_version_of(&old)? == Some(rv) {
                    current
                } else {
                    return Err(ApiError::conflict(rt.plural, rt.group, name));
                }
            }
            _ => current,
        };
        match write_update(state, req, t, &old, new, expected).await {
            Err(err)
                if err.reason == "Conflict"
                    && err
                        .details
                        .as_ref()
                        .is_some_and(|d| d.get("causes").is_none()) =>
            {
                continue;
            }
            Err(err) => return Err(err),
            Ok((obj, warnings)) => {
                return Ok(with_warnings(
                    json_response(StatusCode::OK, &obj),
                    &warnings,
                ));
            }
        }
    }
    Err(ApiError::conflict(rt.plural, rt.group, name))
}

/// DeleteOptions from the body or the query.
struct DeleteOptions {
    propagation: Option<String>,
    grace: Option<i64>,
    precondition_uid: Option<String>,
    precondition_rv: Option<u64>,
}

fn delete_options(req: &Req) -> ApiResult<DeleteOptions> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let propagation = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| req.param("propagationPolicy").map(str::to_string))
        .or_else(
            || match body.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    if let Some(p) = &propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {p:?} is not supported: use Orphan, Background or Foreground"
        )));
    }
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    Ok(DeleteOptions {
        propagation,
        grace,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok()),
    })
}

pub(super) async fn delete(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let options = delete_options(req)?;
    let name = t.name.as_deref().unwrap_or_default();
    let obj = delete_one(state, t.rt, t.namespace.as_deref(), name, &options).await?;
    Ok(json_response(StatusCode::OK, &obj))
}

async fn delete_one(
    state: &State,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> ApiResult<Value> {
    for _ in 0..PATCH_RETRIES {
        let (old, current) = get_object(state, rt, ns, name).await?;
        if let Some(uid) = &options.precondition_uid
            && old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(ApiError::conflict(rt.plural, rt.group, name));
        }
        if let Some(rv) = options.precondition_rv
            && rv != current
        {
            return Err(ApiError::conflict(rt.plural, rt.group, name));
        }
        let mut new = old.clone();
        let mut finalizers: Vec<Value> = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let add = match options.propagation.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = add
            && !finalizers.contains(&json!(f))
        {
            finalizers.push(json!(f));
        }
        let pod_grace = if rt.kind == "Pod" {
            let spec_grace = old
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            options.grace.unwrap_or(spec_grace).max(0)
        } else {
            0
        };
        let namespace_finalizers = rt.kind == "Namespace"
            && old
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        let already_deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        new["metadata"]["finalizers"] = json!(finalizers);
        if finalizers.is_empty() {
            new["metadata"]
                .as_object_mut()
                .map(|m| m.remove("finalizers"));
        }
        let graceful = needs_graceful_wait(rt, &{
            let mut probe = new.clone();
            probe["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
            probe
        });
        if finalizers.is_empty() && !graceful && !namespace_finalizers {
            match state.store.delete(&rt.key(ns, name), Some(current)).await {
                Ok(kv) => {
                    let mut gone = old;
                    set_resource_version(&mut gone, kv.mod_revision);
                    return Ok(gone);
                }
                Err(crate::store::Error::Conflict { .. }) => continue,
                Err(err) => return Err(ApiError::from_store(err, rt.plural, rt.group, name)),
            }
        }
        // Deletion waits: for finalizers, for a node agent, or for the
        // namespace controller.
        if !already_deleting {
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] =
                json!(if graceful { pod_grace } else { 0 });
        } else if graceful {
            // A second delete may only shorten the grace period.
            let current_grace = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["deletionGracePeriodSeconds"] = json!(current_grace.min(pod_grace));
        }
        if rt.kind == "Namespace" {
            new["status"]["phase"] = json!("Terminating");
        }
        if new == old {
            return Ok(old);
        }
        match state
            .store
            .update(&rt.key(ns, name), to_stored(&new), Some(current))
            .await
        {
            Ok(kv) => {
                set_resource_version(&mut new, kv.mod_revision);
                return Ok(new);
            }
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(err) => return Err(ApiError::from_store(err, rt.plural, rt.group, name)),
        }
    }
    Err(ApiError::conflict(rt.plural, rt.group, name))
}

pub(super) async fn delete_collection(
    state: &Arc<State>,
    req: &Req,
    t: &Target,
) -> ApiResult<Response> {
    let options = delete_options(req)?;
    let filter = Filter::from(req)?;
    let (kvs, _, _) = read_list(state, t, &filter, None, None, None).await?;
    let items = kvs.iter().map(from_kv).collect::<ApiResult<Vec<_>>>()?;
    let mut deleted = Vec::new();
    for item in items {
        match delete_one(state, t.rt, obj_ns(&item), name_of(&item), &options).await {
            Ok(obj) => deleted.push(obj),
            Err(err) if err.code == StatusCode::NOT_FOUND => {}
            Err(err) => return Err(err),
        }
    }
    let revision = state
        .store
        .current_revision()
        .await
        .map_err(|e| ApiError::from_store(e, t.rt.plural, t.rt.group, ""))?;
    let body = json!({
        "kind": t.rt.list_kind(),
        "apiVersion": t.rt.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// The `autoscaling/v1` Scale of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// A `metav1.LabelSelector` in its string form (`app=web,tier in (a,b)`).
fn selector_string(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            });
        }
    }
    parts.join(",")
}

pub(super) async fn scale(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let rt = t.rt;
    let name = t.name.as_deref().unwrap_or_default();
    for _ in 0..PATCH_RETRIES {
        let (old, current) = get_object(state, rt, t.namespace.as_deref(), name).await?;
        let scale = scale_of(&old);
        let new_scale = match req.method {
            axum::http::Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
            axum::http::Method::PUT => decode_body(req)?,
            _ => {
                let ct = req.media_type();
                match PatchType::from_content_type(ct) {
                    Some(PatchType::Json) => patch::json_patch(&scale, &req.body),
                    Some(PatchType::Merge | PatchType::StrategicMerge) => {
                        patch::merge_patch(&scale, &decode_body(req)?)
                    }
                    _ => return Err(ApiError::unsupported_media_type(ct)),
                }
                .map_err(patch_error)?
            }
        };
        if let Some(rv) = new_scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && rv != current.to_string()
            && req.method == axum::http::Method::PUT
        {
            return Err(ApiError::conflict(rt.plural, rt.group, name));
        }
        let replicas = new_scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))?;
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let main = Target {
            rt,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            subresource: None,
            proxy_path: None,
        };
        match write_update(state, req, &main, &old, new, current).await {
            Ok((obj, _)) => return Ok(json_response(StatusCode::OK, &scale_of(&obj))),
            Err(err) if err.reason == "Conflict" => continue,
            Err(err) => return Err(err),
        }
    }
    Err(ApiError::conflict(rt.plural, rt.group, name))
}

/// `pods/NAME/binding`: assigns the pod to a node, once.
pub(super) async fn bind(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let binding = decode_body(req)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            let invalid = skiff_api::Invalid {
                kind: "Binding".into(),
                name: t.name.clone().unwrap_or_default(),
                causes: vec![skiff_api::Cause::required("target.name")],
            };
            ApiError::invalid(&invalid, "")
        })?
        .to_string();
    let rt = t.rt;
    let name = t.name.as_deref().unwrap_or_default();
    let (old, current) = get_object(state, rt, t.namespace.as_deref(), name).await?;
    if let Some(bound) = old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on pods/binding {name:?}: pod {name} is already assigned to node {bound:?}"
            ),
            details: None,
        });
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict(rt.plural, rt.group, name));
    }
    let mut new = old;
    new["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = match new["status"]["conditions"].take() {
        Value::Array(all) => all
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect(),
        _ => Vec::new(),
    };
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}));
    new["status"]["conditions"] = json!(conditions);
    let key = rt.key(t.namespace.as_deref(), name);
    state
        .store
        .update(&key, to_stored(&new), Some(current))
        .await
        .map_err(|e| ApiError::from_store(e, rt.plural, rt.group, name))?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(json_response(StatusCode::CREATED, &status))
}

/// Longest and default lifetime of a ServiceAccount token, as Kubernetes'
/// TokenRequest defaults (one hour) and its usual maximum (one day).
const TOKEN_DEFAULT_SECONDS: i64 = 3600;
const TOKEN_MAX_SECONDS: i64 = 86_400;

/// `serviceaccounts/NAME/token`: issues a token for the account
/// (`kubectl create token NAME`).
pub(super) async fn token_request(
    state: &Arc<State>,
    req: &Req,
    t: &Target,
) -> ApiResult<Response> {
    let request = if req.body.is_empty() {
        json!({})
    } else {
        decode_body(req)?
    };
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or("default");
    let (account, _) = get_object(state, t.rt, Some(ns), name).await?;
    let seconds = request
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(TOKEN_DEFAULT_SECONDS);
    if !(600..=TOKEN_MAX_SECONDS).contains(&seconds) {
        let invalid = skiff_api::Invalid {
            kind: "TokenRequest".into(),
            name: name.to_string(),
            causes: vec![skiff_api::Cause::invalid(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not be shorter than 10 minutes or longer than 24 hours",
            )],
        };
        return Err(ApiError::invalid(&invalid, "authentication.k8s.io"));
    }
    let now_secs = jiff::Timestamp::now().as_second();
    let claims = super::auth::AccountClaims {
        ns: ns.to_string(),
        name: name.to_string(),
        uid: account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        exp: now_secs + seconds,
    };
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let body = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": now()},
        "spec": {
            "audiences": request.pointer("/spec/audiences").cloned().unwrap_or(json!([])),
            "expirationSeconds": seconds,
        },
        "status": {"token": state.tokens.issue(&claims), "expirationTimestamp": expires},
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

/// Sets (or, with `None`, removes) a namespace's `spec.finalizers`.
fn set_spec_finalizers(obj: &mut Value, finalizers: Option<Value>) {
    match finalizers {
        Some(f) => {
            if !obj["spec"].is_object() {
                obj["spec"] = json!({});
            }
            obj["spec"]["finalizers"] = f;
        }
        None => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splice gives what decoding, setting and encoding would.
    #[test]
    fn resource_version_spliced_into_stored_json() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "}{"}}}),
            json!({"kind": "ConfigMap", "metadata": {}, "data": {"metadata": "{\"no\": 1}"}}),
            json!({"data": {"k\"ey": "v\\", "metadata": {"nested": true}}, "metadata": {"name": "b"}}),
            json!({"items": [{"metadata": {"name": "inner"}}], "metadata": {"uid": "u"}}),
        ];
        for obj in objects {
            let stored = obj.to_string();
            let spliced = with_resource_version(stored.as_bytes(), 42).expect("metadata found");
            let got: Value = serde_json::from_slice(&spliced).expect("valid JSON");
            let mut want = obj.clone();
            set_resource_version(&mut want, 42);
            assert_eq!(got, want, "{stored}");
        }
        let padded = br#"{ "metadata" : { } , "kind":"X"}"#;
        let got: Value =
            serde_json::from_slice(&with_resource_version(padded, 7).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({"metadata": {"resourceVersion": "7"}, "kind": "X"})
        );
    }

    #[test]
    fn stored_form_drops_only_the_top_level_resource_version_and_self_link() {
        let obj = json!({
            "kind": "Pod",
            "metadata": {"name": "a", "resourceVersion": "5", "selfLink": "/x",
                         "labels": {"resourceVersion": "kept"}},
            "spec": {"metadata": {"resourceVersion": "kept"}},
        });
        let stored: Value = serde_json::from_slice(&to_stored(&obj)).unwrap();
        assert_eq!(
            stored,
            json!({
                "kind": "Pod",
                "metadata": {"name": "a", "labels": {"resourceVersion": "kept"}},
                "spec": {"metadata": {"resourceVersion": "kept"}},
            })
        );
        assert_eq!(&to_stored(&json!([1, "x"]))[..], br#"[1,"x"]"#);
    }

    #[test]
    fn no_metadata_object_is_no_splice() {
        for text in [
            &br#"{"kind":"X"}"#[..],
            br#"{"metadata":"str"}"#,
            br#"{"spec":{"metadata":{}}}"#,
            br#"{"metadata""#,
            br#"{"a":"unterminated"#,
            b"",
        ] {
            assert_eq!(with_resource_version(text, 1), None, "{text:?}");
        }
    }
}
