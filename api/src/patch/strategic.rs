//! Strategic merge patch, as `k8s.io/apimachinery/pkg/util/strategicpatch`
//! applies it on the server (`MergeParallelList` and `IgnoreUnmatchedNulls`
//! on): maps merge key by key, lists merge by the field's strategy from
//! [`schema`](super::schema), and `$`-directives steer both.
//!
//! Directives: `$patch: replace | delete` on maps and list elements
//! (`$patch: merge` is accepted on maps as a no-op and refused in lists, as
//! Kubernetes refuses it), `$retainKeys`, `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>`, and `null` to delete a field. Any
//! other `$`-key is a bad request (Kubernetes would store it as a field).
//!
//! Where Kubernetes copies a new value from the patch with its directives
//! stripped (a field or list element the original lacks), this merges it
//! into an empty value instead, so `null`s and directives inside it are
//! honoured the same way (`$patch: replace` keeps the map instead of
//! dropping it).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::schema::{self, Field, List, Ty};
use super::{PatchError, Result};

/// `$patch: replace | delete | merge`.
const PATCH: &str = "$patch";
/// `$retainKeys: [..]`: keys of the original map to keep.
const RETAIN_KEYS: &str = "$retainKeys";
/// `$setElementOrder/<field>: [..]`: the order of the merged list.
const SET_ORDER: &str = "$setElementOrder/";
/// `$deleteFromPrimitiveList/<field>: [..]`: scalars to drop from a set.
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch (`application/strategic-merge-patch+json`)
/// to an object of `kind`.
///
/// Errors with [`PatchError::Unsupported`] for a kind without a schema and
/// [`PatchError::BadRequest`] for a patch that is not an object, a bad or
/// unknown directive, a list element without its merge key, or a
/// `$setElementOrder` list that contradicts the patch.
pub fn strategic_merge_patch(kind: &str, original: &Value, patch: &Value) -> Result<Value> {
    let ty = schema::of_kind(kind).ok_or_else(|| {
        PatchError::Unsupported(format!(
            "strategic merge patch is not supported for {kind}; use a JSON or merge patch"
        ))
    })?;
    let Value::Object(patch) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    let original = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    merge_map(original, patch.clone(), Some(ty)).map(Value::Object)
}

fn bad(message: impl Into<String>) -> PatchError {
    PatchError::BadRequest(message.into())
}

fn field_of(ty: Option<&'static Ty>, name: &str) -> Field {
    ty.map_or(schema::PLAIN, |ty| ty.field(name))
}

/// Merges `patch` into `original`, both maps of type `ty`.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: Option<&'static Ty>,
) -> Result<Map<String, Value>> {
    if let Some(directive) = patch.remove(PATCH) {
        match directive.as_str() {
            // The patch is the new value, cleaned of its own directives.
            Some("replace") => return merge_map(Map::new(), patch, ty),
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => return Err(bad(format!("unknown patch type: {directive} in map"))),
        }
    }
    retain_keys(&mut original, &mut patch)?;

    let ordered: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER))
        .cloned()
        .collect();
    for key in ordered {
        let order = patch.remove(&key).unwrap_or(Value::Null);
        set_element_order(
            &mut original,
            &mut patch,
            &key[SET_ORDER.len()..],
            order,
            ty,
        )?;
    }

    let mut deletions = Vec::new();
    for (key, patch_value) in patch {
        if let Some(name) = key.strip_prefix(DELETE_FROM) {
            deletions.push((name.to_string(), patch_value));
            continue;
        }
        if key.starts_with('$') {
            return Err(bad(format!("unknown patch directive {key:?}")));
        }
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let field = field_of(ty, &key);
        let old = original.remove(&key);
        let merged = match patch_value {
            Value::Object(p) => {
                let base = match old {
                    Some(Value::Object(o)) => o,
                    // Deleting a map the original lacks leaves nothing
                    // (a map it has becomes `{}`, as in Kubernetes).
                    _ if p.get(PATCH).and_then(Value::as_str) == Some("delete") => continue,
                    _ => Map::new(),
                };
                Value::Object(merge_map(base, p, field.ty)?)
            }
            Value::Array(p) => {
                let base = match old {
                    Some(Value::Array(o)) => o,
                    _ => Vec::new(),
                };
                Value::Array(merge_list(base, p, field)?)
            }
            scalar => scalar,
        };
        original.insert(key, merged);
    }

    for (name, values) in deletions {
        let Value::Array(values) = values else {
            return Err(bad(format!("{DELETE_FROM}{name} must be a list")));
        };
        if let Some(Value::Array(list)) = original.get_mut(&name) {
            list.retain(|v| !values.contains(v));
        }
    }
    Ok(original)
}

/// `$retainKeys`: drops the original's keys not listed, after checking the
/// patch sets only listed keys.
fn retain_keys(original: &mut Map<String, Value>, patch: &mut Map<String, Value>) -> Result<()> {
    let Some(keys) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let keys: Vec<&str> = match &keys {
        Value::Null => Vec::new(),
        Value::Array(keys) => keys
            .iter()
            .map(|k| {
                k.as_str()
                    .ok_or_else(|| bad(format!("{RETAIN_KEYS} must be a list of strings, got {k}")))
            })
            .collect::<Result<_>>()?,
        other => return Err(bad(format!("{RETAIN_KEYS} must be a list, got {other}"))),
    };
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_FROM) || k.starts_with(SET_ORDER) {
            continue;
        }
        if !keys.contains(&k.as_str()) {
            return Err(bad(format!(
                "field {k:?} in the patch is not in {RETAIN_KEYS} {keys:?}"
            )));
        }
    }
    original.retain(|k, _| keys.contains(&k.as_str()));
    Ok(())
}

/// `$setElementOrder/<name>`: merges the patch's list `name` (if any) into
/// the original's and orders the result: elements the order names follow
/// it, the others keep their place relative to the original.
fn set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    name: &str,
    order: Value,
    ty: Option<&'static Ty>,
) -> Result<()> {
    let Value::Array(order) = order else {
        return Err(bad(format!("{SET_ORDER}{name} must be a list")));
    };
    let field = field_of(ty, name);
    let key = match field.list {
        List::Map(key) => Some(key),
        List::Set | List::Atomic => None,
    };
    let original_list = match original.get(name) {
        Some(Value::Array(list)) => Some(list.clone()),
        _ => None,
    };
    let patch_list = match patch.remove(name) {
        None => None,
        Some(Value::Array(list)) => Some(list),
        Some(other) => {
            return Err(bad(format!(
                "{name} must be a list to use {SET_ORDER}{name}, got {other}"
            )));
        }
    };
    if let Some(list) = &patch_list {
        check_order(list, &order, key, name)?;
    }
    let merged = match (original_list.clone(), patch_list) {
        (None, None) => return Ok(()),
        (Some(o), None) => o,
        (o, Some(p)) => merge_list(o.unwrap_or_default(), p, field)?,
    };
    let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index(&order, v, key).is_some());
    let merged = normalize_order(
        in_order,
        server_only,
        &order,
        &original_list.unwrap_or_default(),
        key,
    );
    original.insert(name.to_string(), Value::Array(merged));
    Ok(())
}

/// Every element of the patch list must appear in `$setElementOrder`, in the
/// same relative order.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>, name: &str) -> Result<()> {
    let elements: Vec<&Value> = patch.iter().filter(|v| v.get(PATCH).is_none()).collect();
    let (mut i, mut j) = (0, 0);
    while i < elements.len() && j < order.len() {
        if ident(elements[i], key).is_some() && ident(elements[i], key) == ident(&order[j], key) {
            i += 1;
        }
        j += 1;
    }
    if i < elements.len() {
        return Err(bad(format!(
            "the order in the patch list {name} doesn't match its {SET_ORDER}{name} list"
        )));
    }
    Ok(())
}

/// Merges a patch list into an original list by the field's strategy.
fn merge_list(original: Vec<Value>, patch: Vec<Value>, field: Field) -> Result<Vec<Value>> {
    match field.list {
        List::Atomic => Ok(patch),
        List::Set => {
            if let Some(element) = patch.iter().find(|v| v.is_object() || v.is_array()) {
                return Err(bad(format!("a list of scalars cannot hold {element}")));
            }
            let mut merged = original.clone();
            for v in &patch {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            let (in_patch, server_only) = merged.into_iter().partition(|v| patch.contains(v));
            Ok(normalize_order(
                in_patch,
                server_only,
                &patch,
                &original,
                None,
            ))
        }
        List::Map(key) => merge_keyed(original, patch, key, field.ty),
    }
}

/// Merges lists of maps by `key`, honouring `$patch: delete` and
/// `$patch: replace` elements.
fn merge_keyed(
    original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    ty: Option<&'static Ty>,
) -> Result<Vec<Value>> {
    let mut merged = original.clone();
    let mut elements = Vec::new();
    let mut replace = false;
    for element in patch {
        let Value::Object(mut element) = element else {
            return Err(bad(format!(
                "a list merged by {key:?} must hold objects, got {element}"
            )));
        };
        match element.remove(PATCH) {
            None => elements.push(element),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let Some(value) = element.get(key) else {
                        return Err(bad(format!(
                            "map: {} does not contain declared merge key: {key}",
                            Value::Object(element)
                        )));
                    };
                    merged.retain(|v| v.get(key) != Some(value));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(bad("merging lists cannot yet be specified in the patch"));
                }
                _ => return Err(bad(format!("unknown patch type: {directive} in list"))),
            },
        }
    }
    if replace {
        merged = Vec::new();
    }
    let mut patch_order = Vec::with_capacity(elements.len());
    for element in elements {
        let Some(value) = element.get(key).cloned() else {
            return Err(bad(format!(
                "map: {} does not contain declared merge key: {key}",
                Value::Object(element)
            )));
        };
        patch_order.push(Value::Object(Map::from_iter([(
            key.to_string(),
            value.clone(),
        )])));
        match merged.iter_mut().find(|v| v.get(key) == Some(&value)) {
            Some(Value::Object(found)) => {
                let old = std::mem::take(found);
                *found = merge_map(old, element, ty)?;
            }
            _ => merged.push(Value::Object(merge_map(Map::new(), element, ty)?)),
        }
    }
    if replace {
        return Ok(merged);
    }
    let (in_patch, server_only) = merged
        .into_iter()
        .partition(|v| index(&patch_order, v, Some(key)).is_some());
    Ok(normalize_order(
        in_patch,
        server_only,
        &patch_order,
        &original,
        Some(key),
    ))
}

/// What identifies a list element: its merge key's value, or itself.
fn ident<'a>(v: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(key) => v.get(key),
        None => Some(v),
    }
}

/// Where `item` sits in `list`, comparing by merge key.
fn index(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = ident(item, key)?;
    list.iter().position(|v| ident(v, key) == Some(id))
}

/// Kubernetes' `normalizeElementOrder`: sorts the patch's elements by
/// `patch_order` and the server-only ones by `server_order`, then interleaves
/// them, an element of the server going first only when both are in the
/// original and it came first there.
fn normalize_order(
    mut patched: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let by = |order: &[Value]| {
        let order = order.to_vec();
        move |a: &Value, b: &Value| -> Ordering {
            match (index(&order, a, key), index(&order, b, key)) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => Ordering::Equal,
            }
        }
    };
    patched.sort_by(by(patch_order));
    server_only.sort_by(by(server_order));

    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patched.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (index(server_order, l, key), index(server_order, r, key)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn smp(kind: &str, original: Value, patch: Value) -> Value {
        strategic_merge_patch(kind, &original, &patch).unwrap()
    }

    fn deployment(containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "patch-demo"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": containers}
                }
            }
        })
    }

    fn containers(d: &Value) -> &Value {
        &d["spec"]["template"]["spec"]["containers"]
    }

    /// The docs' `patch-file-containers.yaml`: a second container merges in
    /// by name, in front of the one the patch does not mention.
    #[test]
    fn docs_patch_adds_a_container_by_name() {
        let live = deployment(json!([{"name": "patch-demo-ctr", "image": "nginx"}]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "patch-demo-ctr-2", "image": "redis"}
        ]}}}});
        let out = smp("Deployment", live, patch);
        assert_eq!(
            containers(&out),
            &json!([
                {"name": "patch-demo-ctr-2", "image": "redis"},
                {"name": "patch-demo-ctr", "image": "nginx"}
            ])
        );
        assert_eq!(out["spec"]["replicas"], 2);
    }

    /// The docs' `patch-file-tolerations.yaml`: tolerations have no patch
    /// strategy, so the list is replaced.
    #[test]
    fn docs_tolerations_are_replaced() {
        let mut live = deployment(json!([{"name": "app", "image": "nginx"}]));
        live["spec"]["template"]["spec"]["tolerations"] = json!([{"effect": "NoSchedule", "key": "dedicated", "value": "test-team", "operator": "Equal"}]);
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [
            {"effect": "NoSchedule", "key": "disktype", "value": "ssd", "operator": "Equal"}
        ]}}}});
        let out = smp("Deployment", live, patch);
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"effect": "NoSchedule", "key": "disktype", "value": "ssd", "operator": "Equal"}])
        );
    }

    /// The docs' retainKeys example: switching the strategy to `Recreate`
    /// clears `rollingUpdate`; without `$retainKeys` it would stay.
    #[test]
    fn docs_retain_keys_clears_other_union_members() {
        let mut live = deployment(json!([{"name": "app", "image": "nginx"}]));
        live["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
        let plain = smp(
            "Deployment",
            live.clone(),
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert!(plain["spec"]["strategy"].get("rollingUpdate").is_some());
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = smp("Deployment", live.clone(), patch);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let wrong =
            json!({"spec": {"strategy": {"$retainKeys": ["rollingUpdate"], "type": "Recreate"}}});
        assert!(matches!(
            strategic_merge_patch("Deployment", &live, &wrong),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let live = deployment(json!([
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:1"}
        ]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}
        ]}}}});
        let out = smp("Deployment", live, patch);
        assert_eq!(
            containers(&out),
            &json!([
                {"name": "a", "image": "a:2", "env": [
                    {"name": "X", "value": "1"}, {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}
                ]},
                {"name": "b", "image": "b:1"}
            ])
        );
    }

    #[test]
    fn patch_delete_removes_a_container() {
        let live = deployment(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "$patch": "delete"}
        ]}}}});
        assert_eq!(
            containers(&smp("Deployment", live, patch)),
            &json!([{"name": "b", "image": "b"}])
        );
    }

    #[test]
    fn patch_replace_on_a_list_and_a_map() {
        let live = deployment(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {"template": {
            "metadata": {"labels": {"$patch": "replace", "only": "this"}},
            "spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "c"}]}
        }}});
        let out = smp("Deployment", live, patch);
        assert_eq!(containers(&out), &json!([{"name": "c", "image": "c"}]));
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"],
            json!({"only": "this"})
        );
    }

    /// What `kubectl apply` sends after reordering and editing containers.
    #[test]
    fn set_element_order_orders_the_result() {
        let live = deployment(json!([
            {"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "c", "image": "c"}
        ]));
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}],
            "containers": [{"name": "a", "image": "a2"}, {"name": "d", "image": "d"}, {"name": "b", "$patch": "delete"}]
        }}}});
        let out = smp("Deployment", live.clone(), patch);
        assert_eq!(
            containers(&out),
            &json!([{"name": "c", "image": "c"}, {"name": "a", "image": "a2"}, {"name": "d", "image": "d"}])
        );
        let contradicting = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "d"}],
            "containers": [{"name": "d", "image": "d"}, {"name": "a", "image": "a2"}]
        }}}});
        assert!(matches!(
            strategic_merge_patch("Deployment", &live, &contradicting),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn finalizers_merge_as_a_set_and_delete_from_primitive_list() {
        let live = json!({"metadata": {"name": "x", "finalizers": ["a", "b"]}});
        let out = smp(
            "ConfigMap",
            live.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            "ConfigMap",
            live.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp(
            "ConfigMap",
            live,
            json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "b", "a"]));
    }

    #[test]
    fn null_deletes_and_unmatched_nulls_are_dropped() {
        let live =
            json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let patch = json!({"metadata": {"labels": {"a": null}, "annotations": {"gone": null, "kept": "y"}}, "data": null});
        let out = smp("ConfigMap", live, patch);
        assert_eq!(
            out,
            json!({"metadata": {"name": "x", "labels": {"b": "2"}, "annotations": {"kept": "y"}}})
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_pod_volumes_by_name() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let out = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );

        let pod = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}], "containers": []}});
        let patch = json!({"spec": {"volumes": [
            {"name": "v", "$retainKeys": ["name", "configMap"], "configMap": {"name": "cm"}}
        ]}});
        let out = smp("Pod", pod, patch);
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "cm"}}])
        );
    }

    #[test]
    fn pod_template_inside_a_cron_job_merges_containers() {
        let cron = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "a"}]
        }}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "args": ["x"]}]
        }}}}}});
        let out = smp("CronJob", cron, patch);
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "a", "args": ["x"]}])
        );
    }

    #[test]
    fn bad_patches_are_bad_requests() {
        let live = deployment(json!([{"name": "a", "image": "a"}]));
        for patch in [
            json!({"spec": {"$patch": "frobnicate"}}),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "explode", "name": "a"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge"}]}}}}),
            json!({"spec": {"$frobnicate": 1}}),
            json!(["not", "an", "object"]),
        ] {
            assert!(
                matches!(
                    strategic_merge_patch("Deployment", &live, &patch),
                    Err(PatchError::BadRequest(_))
                ),
                "{patch}"
            );
        }
        assert!(matches!(
            strategic_merge_patch("Widget", &live, &json!({})),
            Err(PatchError::Unsupported(_))
        ));
    }

    #[test]
    fn owner_references_by_uid_and_node_conditions_by_type() {
        let pod = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "kind": "ReplicaSet", "name": "a"}, {"uid": "2", "kind": "ReplicaSet", "name": "b"}
        ]}, "spec": {"containers": []}});
        let out = smp(
            "Pod",
            pod,
            json!({"metadata": {"ownerReferences": [{"uid": "2", "controller": true}]}}),
        );
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([
                {"uid": "1", "kind": "ReplicaSet", "name": "a"},
                {"uid": "2", "kind": "ReplicaSet", "name": "b", "controller": true}
            ])
        );

        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}, "status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]
        }});
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let out = smp("Node", node, patch);
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}])
        );
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.1"}])
        );
    }

    #[test]
    fn merge_directive_on_a_map_merges_and_lists_without_strategy_are_replaced() {
        let live = deployment(
            json!([{"name": "a", "image": "a", "args": ["1", "2"], "envFrom": [{"configMapRef": {"name": "x"}}]}]),
        );
        let patch = json!({"spec": {"template": {
            "metadata": {"$patch": "merge", "labels": {"extra": "1"}},
            "spec": {"containers": [{"name": "a", "args": ["3"], "envFrom": [{"secretRef": {"name": "y"}}]}]}
        }}});
        let out = smp("Deployment", live, patch);
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"],
            json!({"app": "nginx", "extra": "1"})
        );
        assert_eq!(
            containers(&out),
            &json!([{"name": "a", "image": "a", "args": ["3"], "envFrom": [{"secretRef": {"name": "y"}}]}])
        );
    }

    /// A patch as `kubectl apply` computes it from the last-applied
    /// configuration: a new image, one env var dropped, a volume switched
    /// from `emptyDir` to `configMap`, a finalizer dropped.
    #[test]
    fn kubectl_apply_patch() {
        let mut live = deployment(json!([{"name": "app", "image": "nginx:1", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
        ]}]));
        live["metadata"]["finalizers"] = json!(["x/one", "x/two"]);
        live["spec"]["template"]["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
        let patch = json!({
            "metadata": {
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "$deleteFromPrimitiveList/finalizers": ["x/two"]
            },
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "A"}],
                    "env": [{"$patch": "delete", "name": "B"}],
                    "image": "nginx:2",
                    "name": "app"
                }],
                "$setElementOrder/volumes": [{"name": "v"}],
                "volumes": [{"$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}, "name": "v"}]
            }}}
        });
        let out = smp("Deployment", live, patch);
        assert_eq!(
            containers(&out),
            &json!([{"name": "app", "image": "nginx:2", "env": [{"name": "A", "value": "1"}]}])
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "cm"}}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["x/one"]));
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"})
        );
    }

    #[test]
    fn delete_directive_on_a_map_empties_it() {
        let live = deployment(json!([{"name": "a", "image": "a"}]));
        let out = smp(
            "Deployment",
            live,
            json!({"spec": {"strategy": {"$patch": "delete"}, "template": {"metadata": {"$patch": "delete"}}}}),
        );
        assert_eq!(out["spec"]["template"]["metadata"], json!({}));
        assert!(out["spec"].get("strategy").is_none());
    }
}
