//! Server-side apply and field ownership, after Kubernetes'
//! `sigs.k8s.io/structured-merge-diff` and the API server's field manager.
//!
//! Every object carries `metadata.managedFields`: one entry per manager
//! (and operation, `Apply` or `Update`) with the set of fields it owns in
//! the `FieldsV1` encoding: `f:<field>` for a field, `k:{"name":"app"}` for
//! an element of a list merged by key, `v:"x"` for an element of a set, and
//! `.` for a map or element owned as a whole next to owned children.
//!
//! - [`apply`] merges an applied configuration into the live object; the
//!   applier comes to own exactly the fields it applied, fields it applied
//!   before and no longer does are removed unless someone else owns them,
//!   and changing a field another manager owns is a conflict unless forced.
//! - [`record_update`] records the fields an ordinary write (create,
//!   update, JSON/merge/strategic patch) set or changed, taking them from
//!   other managers, so a later apply meets them as conflicts.
//!
//! Simplifications: associative lists are keyed by the single merge key of
//! the strategic-merge schema (Kubernetes keys container ports by
//! `containerPort` and `protocol`); a list element without its key, or with
//! a duplicate key, makes the whole list one atomic field; `null`s in an
//! applied configuration are dropped rather than owned; no
//! `before-first-apply` entry is made for objects created without managed
//! fields; the apply body's `status` is ignored (status is written through
//! the status subresource).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value, json};

use super::schema::{self, Field, List, Ty};
use super::{PatchError, Result};

/// One field path, as the `FieldsV1` keys along it (`f:spec`,
/// `k:{"name":"app"}`, `v:"x"`).
type Path = Vec<String>;

/// A set of field paths.
type FieldSet = BTreeSet<Path>;

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager (`kubectl`, `kubectl-client-side-apply`).
    pub manager: String,
    /// How it came to own the field: `Apply` or `Update`.
    pub operation: String,
    /// The API version the owner wrote with (`apps/v1`).
    pub api_version: String,
    /// The field, as Kubernetes prints it: `.spec.replicas`,
    /// `.spec.template.spec.containers[name="app"].image`.
    pub field: String,
}

impl Conflict {
    /// `conflict with "kubectl" using apps/v1` (for an `Update` owner) or
    /// `conflict with "other"` (for an `Apply` owner), as in Kubernetes'
    /// `FieldManagerConflict` causes.
    pub fn message(&self) -> String {
        format!("conflict with {}", self.owner())
    }

    fn owner(&self) -> String {
        if self.operation == "Update" {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }
}

/// Every conflict of one apply; the server answers `409 Conflict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflicts {
    /// The conflicts, by manager then field. Never empty.
    pub conflicts: Vec<Conflict>,
}

impl ApplyConflicts {
    /// The `409 Conflict` `Status` Kubernetes answers, with one
    /// `FieldManagerConflict` cause per field.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": "Conflict",
            "details": {
                "causes": self.conflicts.iter().map(|c| json!({
                    "reason": "FieldManagerConflict",
                    "message": c.message(),
                    "field": c.field,
                })).collect::<Vec<_>>(),
            },
            "code": 409,
        })
    }
}

impl fmt::Display for ApplyConflicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [c] = self.conflicts.as_slice() {
            return write!(
                f,
                "Apply failed with 1 conflict: {}: {}",
                c.message(),
                c.field
            );
        }
        write!(f, "Apply failed with {} conflicts: ", self.conflicts.len())?;
        let mut owner = String::new();
        for (i, c) in self.conflicts.iter().enumerate() {
            if c.owner() != owner {
                owner = c.owner();
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "conflicts with {owner}:")?;
            }
            write!(f, "\n- {}", c.field)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyConflicts {}

/// Reads the body of an `application/apply-patch+yaml` request: JSON (what
/// kubectl, client-go and kube-rs send) or YAML (one document).
///
/// Errors with [`PatchError::BadRequest`] when the body is neither, or is
/// not an object.
pub fn decode_apply_body(body: &[u8]) -> Result<Value> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => serde_yaml_ng::from_slice(body).map_err(|e| {
            PatchError::BadRequest(format!(
                "the apply configuration is neither JSON nor YAML: {e}"
            ))
        })?,
    };
    if !value.is_object() {
        return Err(PatchError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    }
    Ok(value)
}

/// The field manager of a write that names none: the `User-Agent` up to its
/// first `/` (`kubectl/v1.32.0 (linux/amd64) ...` → `kubectl`), printable
/// characters only, at most 128, as the Kubernetes API server derives it.
pub fn manager_from_user_agent(user_agent: &str) -> String {
    user_agent
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect()
}

/// Server-side apply of `applied` (the configuration `manager` wants) to the
/// `live` object of `kind` (`None` to create it), returning the object to
/// store with `metadata.managedFields` updated; `now` (RFC 3339) becomes the
/// time of the applier's entry when its field set changes.
///
/// Errors with [`PatchError::BadRequest`] when `manager` is empty, the
/// configuration is not an object, lacks `apiVersion`, names another kind or
/// carries `metadata.managedFields`; with [`PatchError::Conflict`] listing
/// every field the apply would change that another manager owns, unless
/// `force`, which moves those fields to `manager`.
pub fn apply(
    kind: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value> {
    if manager.is_empty() {
        return Err(PatchError::BadRequest(
            "PATCH requests with apply must set fieldManager".into(),
        ));
    }
    let Value::Object(config) = applied else {
        return Err(PatchError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    };
    let api_version = match config.get("apiVersion") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        _ => {
            return Err(PatchError::BadRequest(
                "the apply configuration must set apiVersion".into(),
            ));
        }
    };
    if config.get("kind").and_then(Value::as_str) != Some(kind) {
        return Err(PatchError::BadRequest(format!(
            "the apply configuration must be of kind {kind}"
        )));
    }
    if config
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some()
    {
        return Err(PatchError::BadRequest(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let mut config = Value::Object(config.clone());
    drop_nulls(&mut config);
    if let Some(config) = config.as_object_mut() {
        config.remove("status");
    }

    let root = root_field(kind);
    let mut live = live.cloned().unwrap_or_else(|| json!({}));
    let mut managers = take_managed_fields(&mut live);
    let before = managers.clone();

    let mut set = FieldSet::new();
    walk(&config, root, &mut Vec::new(), &mut set);
    let set = strip(set);
    let me = Manager::new(manager, "Apply");
    let last = managers.get(&me).map(|e| e.set.clone()).unwrap_or_default();
    managers.insert(
        me.clone(),
        Entry {
            set,
            api_version,
            time: None,
        },
    );

    let mut merged = merge(Some(&live), &config, root);
    if !last.is_empty() {
        let owned: FieldSet = managers
            .values()
            .flat_map(|e| e.set.iter().cloned())
            .collect();
        let gone: Vec<&Path> = last
            .iter()
            .filter(|p| !owned.iter().any(|o| o.starts_with(p)))
            .collect();
        for path in gone {
            remove_path(&mut merged, path, root);
        }
    }

    let changes = compare(&live, &merged, root);
    let touched: FieldSet = changes.added.union(&changes.modified).cloned().collect();
    let mut conflicts = Vec::new();
    for (who, entry) in &managers {
        if *who == me {
            continue;
        }
        for path in entry.set.intersection(&touched) {
            conflicts.push(Conflict {
                manager: who.manager.clone(),
                operation: who.operation.clone(),
                api_version: entry.api_version.clone(),
                field: print_path(path),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(PatchError::Conflict(ApplyConflicts { conflicts }));
    }
    for (who, entry) in managers.iter_mut() {
        if *who != me {
            entry
                .set
                .retain(|p| !touched.contains(p) && !changes.removed.contains(p));
        }
    }
    finish(&mut merged, managers, &before, now);
    Ok(merged)
}

/// Records in `new.metadata.managedFields` the fields an ordinary write by
/// `manager` set or changed (operation `Update`), starting from `old`'s
/// managed fields (`None` when creating). Fields it changed leave other
/// managers' sets, as do fields it removed. `metadata.managedFields` sent by
/// the client is ignored. `now` (RFC 3339) becomes the time of the entry
/// when its field set changes.
///
/// Errors with [`PatchError::BadRequest`] when `manager` is empty.
pub fn record_update(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
) -> Result<()> {
    if manager.is_empty() {
        return Err(PatchError::BadRequest(
            "a field manager must be named".into(),
        ));
    }
    let root = root_field(kind);
    let mut old = old.cloned().unwrap_or_else(|| json!({}));
    let mut managers = take_managed_fields(&mut old);
    let before = managers.clone();
    take_managed_fields(new);

    let changes = compare(&old, new, root);
    let touched: FieldSet = changes.added.union(&changes.modified).cloned().collect();
    for entry in managers.values_mut() {
        entry
            .set
            .retain(|p| !touched.contains(p) && !changes.removed.contains(p));
    }
    let me = Manager::new(manager, "Update");
    let mut set = managers.remove(&me).map(|e| e.set).unwrap_or_default();
    set.extend(touched);
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    managers.insert(
        me,
        Entry {
            set,
            api_version,
            time: None,
        },
    );
    finish(new, managers, &before, now);
    Ok(())
}

/// Who owns fields: a manager's name and operation (Kubernetes keeps an
/// `Apply` and an `Update` entry of the same manager apart), and the
/// subresource it wrote through, if any.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Manager {
    manager: String,
    operation: String,
    subresource: Option<String>,
}

impl Manager {
    fn new(manager: &str, operation: &str) -> Manager {
        Manager {
            manager: manager.to_string(),
            operation: operation.to_string(),
            subresource: None,
        }
    }
}

/// What one manager owns.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    set: FieldSet,
    api_version: String,
    /// The entry's recorded time; `None` for an entry written now.
    time: Option<String>,
}

fn root_field(kind: &str) -> Field {
    Field {
        ty: Some(schema::of_kind_or_plain(kind)),
        ..schema::PLAIN
    }
}

/// Removes and parses `metadata.managedFields`. Entries that cannot be read
/// are dropped: they were not written by this module.
fn take_managed_fields(object: &mut Value) -> BTreeMap<Manager, Entry> {
    let mut managers = BTreeMap::new();
    let Some(Value::Array(entries)) = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("managedFields"))
    else {
        return managers;
    };
    for entry in entries {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(manager), Some(operation), Some(Value::Object(fields))) =
            (text("manager"), text("operation"), entry.get("fieldsV1"))
        else {
            continue;
        };
        let mut set = FieldSet::new();
        parse_fields(fields, &mut Vec::new(), &mut set);
        let who = Manager {
            manager,
            operation,
            subresource: text("subresource").filter(|s| !s.is_empty()),
        };
        managers.insert(
            who,
            Entry {
                set,
                api_version: text("apiVersion").unwrap_or_default(),
                time: text("time"),
            },
        );
    }
    managers
}

/// Writes `managers` back as `metadata.managedFields`, dropping empty
/// entries, stamping `now` on entries whose set changed since `before`, and
/// sorting as Kubernetes does (operation, time, manager).
fn finish(
    object: &mut Value,
    managers: BTreeMap<Manager, Entry>,
    before: &BTreeMap<Manager, Entry>,
    now: &str,
) {
    let mut entries: Vec<(Manager, Entry)> = managers
        .into_iter()
        .filter(|(_, e)| !e.set.is_empty())
        .map(|(who, mut e)| {
            let old = before.get(&who);
            e.time = match old {
                Some(old) if old.set == e.set && old.time.is_some() => old.time.clone(),
                _ => Some(now.to_string()),
            };
            (who, e)
        })
        .collect();
    entries.sort_by(|(a, ea), (b, eb)| {
        (
            &a.operation,
            &ea.time,
            &a.manager,
            &ea.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &eb.time,
                &b.manager,
                &eb.api_version,
                &b.subresource,
            ))
    });
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(who, e)| {
            let mut v = json!({
                "manager": who.manager,
                "operation": who.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(&e.set),
            });
            if let Some(sub) = who.subresource {
                v["subresource"] = Value::String(sub);
            }
            v
        })
        .collect();
    if !object.is_object() {
        *object = json!({});
    }
    let metadata = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(metadata)) = metadata {
        if entries.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

fn parse_fields(node: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
    for (key, child) in node {
        if key == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(key.clone());
        match child {
            Value::Object(m) if !m.is_empty() => parse_fields(m, path, out),
            _ => {
                out.insert(path.clone());
            }
        }
        path.pop();
    }
}

/// The `FieldsV1` JSON of a set.
fn encode_fields(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn to_json(node: &Node) -> Value {
        let mut out = Map::new();
        if node.member && !node.children.is_empty() {
            out.insert(".".into(), json!({}));
        }
        for (k, child) in &node.children {
            out.insert(k.clone(), to_json(child));
        }
        Value::Object(out)
    }
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }
    to_json(&root)
}

/// A path as Kubernetes prints it in conflicts: `.spec.containers[name="a"].image`.
fn print_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(name) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = pe.strip_prefix("k:") {
            let fields = match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(m) => m
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                Err(_) => key.to_string(),
            };
            out.push_str(&format!("[{fields}]"));
        } else if let Some(value) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        } else if let Some(index) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{index}]"));
        } else {
            out.push_str(pe);
        }
    }
    out
}

/// Fields no manager owns: identity and server-set metadata, and status
/// (written through its own subresource).
fn strip(mut set: FieldSet) -> FieldSet {
    const EXACT: &[&[&str]] = &[
        &["f:apiVersion"],
        &["f:kind"],
        &["f:metadata"],
        &["f:metadata", "f:name"],
        &["f:metadata", "f:namespace"],
        &["f:metadata", "f:creationTimestamp"],
        &["f:metadata", "f:selfLink"],
        &["f:metadata", "f:uid"],
        &["f:metadata", "f:generation"],
        &["f:metadata", "f:resourceVersion"],
    ];
    const SUBTREES: &[&[&str]] = &[&["f:status"], &["f:metadata", "f:managedFields"]];
    set.retain(|p| {
        !EXACT
            .iter()
            .any(|e| p.iter().map(String::as_str).eq(e.iter().copied()))
            && !SUBTREES
                .iter()
                .any(|s| p.len() >= s.len() && p.iter().zip(s.iter()).all(|(a, b)| a == b))
    });
    set
}

/// The path element of a list element: `k:{"name":"a"}` or `v:"x"`.
fn element_key(list: List, element: &Value) -> Option<String> {
    match list {
        List::Atomic => None,
        List::Set => Some(format!("v:{element}")),
        List::Map(key) => {
            let value = element.as_object()?.get(key)?;
            Some(format!("k:{}", json!({ key: value })))
        }
    }
}

/// The path elements of a list's elements, or `None` when the list cannot
/// be treated as keyed (atomic by schema, or an element without its key, or
/// a duplicate key): then it is one field.
fn element_keys(field: Field, list: &[Value]) -> Option<Vec<String>> {
    let keys: Vec<String> = list
        .iter()
        .map(|v| element_key(field.list, v))
        .collect::<Option<_>>()?;
    let unique: BTreeSet<&String> = keys.iter().collect();
    (unique.len() == keys.len()).then_some(keys)
}

fn child(field: Field, name: &str) -> Field {
    field
        .ty
        .map_or(schema::PLAIN, |ty: &'static Ty| ty.field(name))
}

/// The element type of a keyed list, as a struct-valued field (owned whole
/// when the list's elements are atomic).
fn element(field: Field) -> Field {
    Field {
        ty: field.ty,
        atomic: field.atomic,
        ..schema::PLAIN
    }
}

/// The fields set in `value` (structured-merge-diff's `ToFieldSet`): every
/// scalar, atomic list or map, empty map, and list element.
fn walk(value: &Value, field: Field, path: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !field.atomic && !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                walk(v, child(field, k), path, out);
                path.pop();
            }
        }
        Value::Array(list) => match element_keys(field, list) {
            Some(keys) => {
                for (key, v) in keys.into_iter().zip(list) {
                    path.push(key);
                    out.insert(path.clone());
                    if field.list != List::Set {
                        walk(v, element(field), path, out);
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Merges an applied configuration into the live value: maps field by
/// field, keyed lists element by element (new elements appended), sets by
/// union; everything else (scalars, atomic lists and maps) is replaced.
fn merge(live: Option<&Value>, config: &Value, field: Field) -> Value {
    match (live, config) {
        (Some(Value::Object(live)), Value::Object(config)) if !field.atomic => {
            let mut out = live.clone();
            for (k, v) in config {
                let merged = merge(live.get(k), v, child(field, k));
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Some(Value::Array(live)), Value::Array(config)) => {
            let (Some(live_keys), Some(config_keys)) =
                (element_keys(field, live), element_keys(field, config))
            else {
                return Value::Array(config.clone());
            };
            let mut out = live.clone();
            for (key, v) in config_keys.iter().zip(config) {
                match live_keys.iter().position(|k| k == key) {
                    Some(i) => out[i] = merge(Some(&live[i]), v, element(field)),
                    None => out.push(v.clone()),
                }
            }
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// Removes the field or element at `path`, then any map emptied by that.
fn remove_path(value: &mut Value, path: &[String], field: Field) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            let Some(name) = first.strip_prefix("f:") else {
                return;
            };
            if rest.is_empty() {
                map.remove(name);
            } else if let Some(value) = map.get_mut(name) {
                remove_path(value, rest, child(field, name));
                if value.as_object().is_some_and(Map::is_empty) {
                    map.remove(name);
                }
            }
        }
        Value::Array(list) => {
            let Some(i) = list
                .iter()
                .position(|v| element_key(field.list, v).as_ref() == Some(first))
            else {
                return;
            };
            if rest.is_empty() {
                list.remove(i);
            } else {
                remove_path(&mut list[i], rest, element(field));
            }
        }
        _ => {}
    }
}

/// What changed between two versions of an object, as field paths.
#[derive(Debug, Default)]
struct Changes {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

/// Compares two objects (structured-merge-diff's `Compare`), ignoring the
/// fields [`strip`] drops.
fn compare(old: &Value, new: &Value, root: Field) -> Changes {
    let mut changes = Changes::default();
    diff(Some(old), Some(new), root, &mut Vec::new(), &mut changes);
    changes.added = strip(changes.added);
    changes.modified = strip(changes.modified);
    changes.removed = strip(changes.removed);
    changes
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(l)) => l.is_empty(),
        Some(_) => false,
    }
}

fn diff(
    old: Option<&Value>,
    new: Option<&Value>,
    field: Field,
    path: &mut Path,
    out: &mut Changes,
) {
    let granular_map = |v: Option<&Value>| !field.atomic && v.is_none_or(Value::is_object);
    match (old, new) {
        (None, None) => {}
        _ if is_empty_container(old)
            && is_empty_container(new)
            && (old.is_none() || new.is_none()) => {}
        _ if granular_map(old) && granular_map(new) => {
            let (o, n) = (
                old.and_then(Value::as_object),
                new.and_then(Value::as_object),
            );
            // A map of a struct type always exists in Kubernetes' typed
            // objects, so only maps without one (labels, optional members)
            // come and go as a whole.
            if field.ty.is_none() {
                match (o, n) {
                    (None, Some(_)) => {
                        out.added.insert(path.clone());
                    }
                    (Some(_), None) => {
                        out.removed.insert(path.clone());
                    }
                    _ => {}
                }
            }
            let keys: BTreeSet<&String> = o.into_iter().chain(n).flat_map(|m| m.keys()).collect();
            for k in keys {
                path.push(format!("f:{k}"));
                diff(
                    o.and_then(|m| m.get(k)),
                    n.and_then(|m| m.get(k)),
                    child(field, k),
                    path,
                    out,
                );
                path.pop();
            }
        }
        _ if keyed_list(field, old) && keyed_list(field, new) => {
            let elements = |v: Option<&Value>| -> Vec<(String, Value)> {
                let list = v.and_then(Value::as_array).cloned().unwrap_or_default();
                element_keys(field, &list)
                    .unwrap_or_default()
                    .into_iter()
                    .zip(list)
                    .collect()
            };
            let (o, n) = (elements(old), elements(new));
            // Like a map without a struct type, a list comes and goes whole.
            match (o.is_empty(), n.is_empty()) {
                (true, false) => {
                    out.added.insert(path.clone());
                }
                (false, true) => {
                    out.removed.insert(path.clone());
                }
                _ => {}
            }
            let find = |list: &[(String, Value)], key: &str| {
                list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
            };
            let keys: BTreeSet<String> = o.iter().chain(&n).map(|(k, _)| k.clone()).collect();
            for key in keys {
                let (ov, nv) = (find(&o, &key), find(&n, &key));
                path.push(key);
                match (&ov, &nv) {
                    (None, Some(_)) => {
                        out.added.insert(path.clone());
                    }
                    (Some(_), None) => {
                        out.removed.insert(path.clone());
                    }
                    _ => {}
                }
                if field.list != List::Set {
                    diff(ov.as_ref(), nv.as_ref(), element(field), path, out);
                }
                path.pop();
            }
        }
        (None, Some(_)) => {
            out.added.insert(path.clone());
        }
        (Some(_), None) => {
            out.removed.insert(path.clone());
        }
        (Some(o), Some(n)) => {
            if o != n {
                out.modified.insert(path.clone());
            }
        }
    }
}

/// Whether `v` (absent, or a list) can be compared element by element.
fn keyed_list(field: Field, v: Option<&Value>) -> bool {
    match v {
        None => field.list != List::Atomic,
        Some(Value::Array(list)) => element_keys(field, list).is_some(),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T00:01:00Z";
    const T2: &str = "2026-01-01T00:02:00Z";

    fn deploy(replicas: Option<i64>, image: &str) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            }
        });
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        d
    }

    fn entries(object: &Value) -> &Vec<Value> {
        object["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
    }

    fn entry<'a>(object: &'a Value, manager: &str, operation: &str) -> &'a Value {
        entries(object)
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
            .unwrap_or_else(|| panic!("no {operation} entry for {manager} in {object:#}"))
    }

    fn conflicts(result: Result<Value>) -> Vec<(String, String)> {
        match result {
            Err(PatchError::Conflict(c)) => c
                .conflicts
                .into_iter()
                .map(|c| (c.manager, c.field))
                .collect(),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn create_by_apply_records_one_entry() {
        let out = apply(
            "Deployment",
            None,
            &deploy(Some(2), "nginx"),
            "kubectl",
            false,
            T0,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(entries(&out).len(), 1);
        assert_eq!(
            entries(&out)[0],
            json!({
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": T0,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                            "f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                                ".": {}, "f:image": {}, "f:name": {}
                            }}}
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let mut first = deploy(Some(2), "nginx");
        first["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "envoy"}));
        first["metadata"]["annotations"] = json!({"note": "x"});
        let live = apply("Deployment", None, &first, "kubectl", false, T0).unwrap();
        let out = apply(
            "Deployment",
            Some(&live),
            &deploy(None, "nginx"),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        assert!(out["spec"].get("replicas").is_none(), "{out:#}");
        assert!(out["metadata"].get("annotations").is_none(), "{out:#}");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "nginx"}])
        );
        assert_eq!(entry(&out, "kubectl", "Apply")["time"], T1);

        // Re-applying the same configuration changes nothing, not even the time.
        let again = apply(
            "Deployment",
            Some(&out),
            &deploy(None, "nginx"),
            "kubectl",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn two_managers_own_different_fields_and_share_equal_ones() {
        let live = apply(
            "Deployment",
            None,
            &deploy(Some(2), "nginx"),
            "a",
            false,
            T0,
        )
        .unwrap();
        let b = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"team": "blue", "app": "web"}}
        });
        let out = apply("Deployment", Some(&live), &b, "b", false, T1).unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "team": "blue"})
        );
        assert_eq!(
            entry(&out, "b", "Apply")["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}, "f:team": {}}}})
        );
        assert_eq!(entries(&out).len(), 2);

        // `a` stops applying the label both own: it stays, `b` still owns it.
        let mut a = deploy(Some(2), "nginx");
        a["metadata"]["labels"] = json!({"other": "x"});
        let out = apply("Deployment", Some(&out), &a, "a", false, T2).unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "team": "blue", "other": "x"})
        );
    }

    #[test]
    fn changing_a_field_another_applier_owns_conflicts_and_force_takes_it() {
        let live = apply(
            "Deployment",
            None,
            &deploy(Some(2), "nginx"),
            "a",
            false,
            T0,
        )
        .unwrap();
        let b = deploy(Some(5), "nginx:2");
        assert_eq!(
            conflicts(apply("Deployment", Some(&live), &b, "b", false, T1)),
            vec![
                ("a".to_string(), ".spec.replicas".to_string()),
                (
                    "a".to_string(),
                    ".spec.template.spec.containers[name=\"app\"].image".to_string()
                ),
            ]
        );
        let out = apply("Deployment", Some(&live), &b, "b", true, T1).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        let a_fields = &entry(&out, "a", "Apply")["fieldsV1"];
        assert!(
            a_fields["f:spec"].get("f:replicas").is_none(),
            "{a_fields:#}"
        );
        assert!(
            entry(&out, "b", "Apply")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_some()
        );

        // Now `a` dropping replicas does not remove it: `b` owns it.
        let out = apply(
            "Deployment",
            Some(&out),
            &deploy(None, "nginx:2"),
            "a",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
    }

    /// `kubectl scale` (an update) then `kubectl apply --server-side` of
    /// another replica count.
    #[test]
    fn conflict_with_an_update_manager() {
        let live = apply(
            "Deployment",
            None,
            &deploy(Some(2), "nginx"),
            "kubectl",
            false,
            T0,
        )
        .unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(4);
        record_update("Deployment", Some(&live), &mut scaled, "kubectl", T1).unwrap();
        assert_eq!(
            entry(&scaled, "kubectl", "Update")["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert!(
            entry(&scaled, "kubectl", "Apply")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );

        let err = apply(
            "Deployment",
            Some(&scaled),
            &deploy(Some(3), "nginx"),
            "kubectl",
            false,
            T2,
        )
        .unwrap_err();
        let PatchError::Conflict(c) = err else {
            panic!("{err:?}")
        };
        assert_eq!(c.conflicts.len(), 1);
        let status = c.to_status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(
            status["details"]["causes"][0],
            json!({
                "reason": "FieldManagerConflict",
                "message": "conflict with \"kubectl\" using apps/v1",
                "field": ".spec.replicas"
            })
        );
        assert_eq!(
            status["message"],
            "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
        );
        // Forcing takes the field; the updater, owning nothing else, is gone.
        let forced = apply(
            "Deployment",
            Some(&scaled),
            &deploy(Some(3), "nginx"),
            "kubectl",
            true,
            T2,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(entries(&forced).len(), 1, "{forced:#}");
        // Applying the value the updater set is no conflict.
        apply(
            "Deployment",
            Some(&scaled),
            &deploy(Some(4), "nginx"),
            "kubectl",
            false,
            T2,
        )
        .unwrap();
    }

    #[test]
    fn record_update_on_create_marks_new_maps_and_elements() {
        let mut new = deploy(Some(1), "nginx");
        record_update("Deployment", None, &mut new, "kubectl-create", T0).unwrap();
        let fields = &entry(&new, "kubectl-create", "Update")["fieldsV1"];
        assert_eq!(
            fields["f:metadata"]["f:labels"],
            json!({".": {}, "f:app": {}})
        );
        assert_eq!(
            fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert!(fields["f:metadata"].get("f:name").is_none());

        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "finalizers": ["a"],
                "ownerReferences": [{"uid": "1", "kind": "ReplicaSet", "name": "rs", "controller": true}]
            },
            "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "i"}]}
        });
        record_update("Pod", None, &mut pod, "kube-controller-manager", T0).unwrap();
        let fields = &entry(&pod, "kube-controller-manager", "Update")["fieldsV1"];
        assert_eq!(
            fields["f:metadata"],
            json!({
                "f:finalizers": {".": {}, "v:\"a\"": {}},
                "f:ownerReferences": {".": {}, "k:{\"uid\":\"1\"}": {}}
            })
        );
        assert_eq!(fields["f:spec"]["f:nodeSelector"], json!({}));
    }

    #[test]
    fn sets_and_keyed_elements_in_fields_v1() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "finalizers": ["x/y"]},
            "data": {"k": "v"},
            "status": {"ignored": true}
        });
        let out = apply("ConfigMap", None, &cm, "m", false, T0).unwrap();
        assert_eq!(
            entry(&out, "m", "Apply")["fieldsV1"],
            json!({"f:data": {"f:k": {}}, "f:metadata": {"f:finalizers": {"v:\"x/y\"": {}}}})
        );
        assert!(out.get("status").is_none());

        let mut fewer = cm.clone();
        fewer["metadata"]["finalizers"] = json!([]);
        let out = apply("ConfigMap", Some(&out), &fewer, "m", false, T1).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn bad_apply_configurations() {
        let d = deploy(Some(1), "nginx");
        assert!(matches!(
            apply("Deployment", None, &d, "", false, T0),
            Err(PatchError::BadRequest(_))
        ));
        assert!(matches!(
            apply("Pod", None, &d, "m", false, T0),
            Err(PatchError::BadRequest(_))
        ));
        let mut with_fields = d.clone();
        with_fields["metadata"]["managedFields"] = json!([]);
        assert!(matches!(
            apply("Deployment", None, &with_fields, "m", false, T0),
            Err(PatchError::BadRequest(_))
        ));
        assert_eq!(
            decode_apply_body(br#"{"kind":"Pod"}"#).unwrap(),
            json!({"kind": "Pod"})
        );
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  port: \"80\"\n  n: 3\n";
        assert_eq!(
            decode_apply_body(yaml).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"port": "80", "n": 3}})
        );
        for bad in [&b"- a list"[..], b"{not: [closed", b"\"text\""] {
            assert!(
                matches!(decode_apply_body(bad), Err(PatchError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_update_removing_a_field_takes_it_from_its_owner() {
        let mut d = deploy(Some(1), "nginx");
        d["metadata"]["annotations"] = json!({"note": "x"});
        let live = apply("Deployment", None, &d, "a", false, T0).unwrap();
        let mut edited = live.clone();
        edited["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        record_update("Deployment", Some(&live), &mut edited, "kubectl-edit", T1).unwrap();
        let a = &entry(&edited, "a", "Apply")["fieldsV1"];
        assert!(a["f:metadata"].get("f:annotations").is_none(), "{a:#}");
        // Removing fields gives the editor nothing to own.
        assert_eq!(entries(&edited).len(), 1);
        // Applying the annotation again is no conflict: nobody owns it now.
        let out = apply("Deployment", Some(&edited), &d, "a", false, T2).unwrap();
        assert_eq!(out["metadata"]["annotations"], json!({"note": "x"}));
    }

    #[test]
    fn service_ports_are_keyed_by_port() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        });
        let out = apply("Service", None, &svc, "m", false, T0).unwrap();
        assert_eq!(
            entry(&out, "m", "Apply")["fieldsV1"],
            json!({"f:spec": {
                "f:ports": {"k:{\"port\":80}": {".": {}, "f:port": {}, "f:targetPort": {}}},
                "f:selector": {}
            }})
        );
        let mut other = svc.clone();
        other["spec"]["ports"][0]["targetPort"] = json!(9090);
        other["spec"].as_object_mut().unwrap().remove("selector");
        let c = conflicts(apply("Service", Some(&out), &other, "n", false, T1));
        assert_eq!(
            c,
            vec![(
                "m".to_string(),
                ".spec.ports[port=80].targetPort".to_string()
            )]
        );
    }

    /// `kubectl create` then `kubectl apply --server-side` of the same
    /// values: no conflict, the fields are shared.
    #[test]
    fn applying_what_an_updater_wrote_shares_ownership() {
        let mut created = deploy(Some(1), "nginx");
        record_update("Deployment", None, &mut created, "kubectl-create", T0).unwrap();
        let out = apply(
            "Deployment",
            Some(&created),
            &deploy(Some(1), "nginx"),
            "kubectl",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(entries(&out).len(), 2);
        assert_eq!(entries(&out)[0]["operation"], "Apply");
        assert_eq!(
            entry(&out, "kubectl-create", "Update")["fieldsV1"],
            entry(&created, "kubectl-create", "Update")["fieldsV1"]
        );
        // The applier dropping replicas leaves it: the creator still owns it.
        let out = apply(
            "Deployment",
            Some(&out),
            &deploy(None, "nginx"),
            "kubectl",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(
            manager_from_user_agent("kubectl/v1.32.2 (linux/amd64) kubernetes/67a30c0"),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent("Python-urllib"), "Python-urllib");
    }

    #[test]
    fn conflict_messages_group_by_manager() {
        let c = ApplyConflicts {
            conflicts: vec![
                Conflict {
                    manager: "a".into(),
                    operation: "Apply".into(),
                    api_version: "v1".into(),
                    field: ".x".into(),
                },
                Conflict {
                    manager: "a".into(),
                    operation: "Apply".into(),
                    api_version: "v1".into(),
                    field: ".y".into(),
                },
            ],
        };
        assert_eq!(
            c.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .x\n- .y"
        );
    }
}
