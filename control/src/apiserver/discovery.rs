//! Discovery (legacy and aggregated), `/version`, and the OpenAPI v3
//! documents `kubectl apply` consults.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use skiff_api::ResourceType;
use skiff_api::resources::{RESOURCES, groups as served_groups};

use super::objects::json_response;
use super::routes::Req;
use super::{ApiError, ApiResult, GIT_VERSION};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const OBJECT_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(super) fn version() -> Response {
    let body = json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    });
    json_response(StatusCode::OK, &body)
}

fn wants_aggregated(req: &Req) -> bool {
    req.accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList"))
}

fn aggregated_response(items: Vec<Value>) -> Response {
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED));
    response
}

/// `(name, kind, response group, response version, verbs)` of each
/// subresource.
fn subresource(
    rt: &ResourceType,
    sub: &str,
) -> (
    String,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
) {
    let name = format!("{}/{sub}", rt.plural);
    match sub {
        "scale" => (
            name,
            "Scale",
            "autoscaling",
            "v1",
            &["get", "patch", "update"],
        ),
        "binding" => (name, "Binding", "", "v1", &["create"]),
        "log" => (name, "Pod", "", "v1", &["get"]),
        "proxy" => (name, "NodeProxyOptions", "", "v1", &["get"]),
        "token" => (
            name,
            "TokenRequest",
            "authentication.k8s.io",
            "v1",
            &["create"],
        ),
        _ => (
            name,
            rt.kind,
            rt.group,
            rt.version,
            &["get", "patch", "update"],
        ),
    }
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let subresources: Vec<Value> = r
                .subresources
                .iter()
                .map(|sub| {
                    let (_, kind, g, v, verbs) = subresource(r, sub);
                    json!({
                        "subresource": sub,
                        "responseKind": {"group": g, "version": v, "kind": kind},
                        "verbs": verbs,
                    })
                })
                .collect();
            json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": OBJECT_VERBS,
                "shortNames": r.short_names,
                "categories": r.categories,
                "subresources": subresources,
            })
        })
        .collect();
    json!({
        "metadata": {"name": group},
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

pub(super) fn core_versions(req: &Req) -> Response {
    if wants_aggregated(req) {
        return aggregated_response(vec![aggregated_group("", "v1")]);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

fn group_object(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub(super) fn groups(req: &Req) -> Response {
    let named: Vec<(&str, &str)> = served_groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    if wants_aggregated(req) {
        return aggregated_response(named.iter().map(|(g, v)| aggregated_group(g, v)).collect());
    }
    let groups: Vec<Value> = named.iter().map(|(g, v)| group_object(g, v)).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

pub(super) fn group(group: &str) -> ApiResult<Response> {
    let (g, v) = served_groups()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())
        .ok_or_else(|| ApiError::not_found("groups", "", group))?;
    let mut body = group_object(g, v);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body))
}

pub(super) fn resource_list(group: &str, version: &str) -> ApiResult<Response> {
    if !served_groups().contains(&(group, version)) {
        return Err(ApiError::not_found(
            "groupversions",
            "",
            &format!("{group}/{version}"),
        ));
    }
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced(),
            "kind": r.kind,
            "verbs": OBJECT_VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let (name, kind, g, v, verbs) = subresource(r, sub);
            let mut entry = json!({
                "name": name,
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": kind,
                "verbs": verbs,
            });
            if (g, v) != (r.group, r.version) {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub(super) fn openapi_index() -> Response {
    let mut paths = serde_json::Map::new();
    for (g, v) in served_groups() {
        let path = openapi_path(g, v);
        // The hash only has to change when the document does; it changes
        // with the build.
        let url = format!(
            "/openapi/v3/{path}?hash={}",
            env!("CARGO_PKG_VERSION").replace('.', "")
        );
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

/// A group-version's OpenAPI 3.0 document: every path with its operations,
/// each tagged with its kind and carrying the `fieldValidation` parameter,
/// which tells kubectl the server validates (so it sends
/// `fieldValidation=Strict` instead of validating on the client).
pub(super) fn openapi_document(rest: &[&str]) -> ApiResult<Response> {
    let (group, version) = match rest {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::not_found("openapi", "", &rest.join("/"))),
    };
    if !served_groups().contains(&(group, version)) {
        return Err(ApiError::not_found("openapi", "", &rest.join("/")));
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let field_validation = json!({
        "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "Ignore, Warn or Strict: how the server treats unknown or duplicate fields",
    });
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let schema_name = format!(
            "io.k8s.api.{}.{}.{}",
            if r.group.is_empty() {
                "core"
            } else {
                r.group.split('.').next().unwrap_or(r.group)
            },
            r.version,
            r.kind
        );
        // No GVK on the schema: kubectl then computes apply patches from its
        // compiled-in types (which carry the merge keys) rather than from a
        // schema that does not list every field.
        schemas.insert(schema_name.clone(), json!({"type": "object"}));
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [field_validation],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}}},
            })
        };
        let collection = if r.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": op("list"), "post": op("post")}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Skiff", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    });
    Ok(json_response(StatusCode::OK, &doc))
}
