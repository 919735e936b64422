//! The `meta.k8s.io/v1` Table that `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the
//! columns and cells of kube-apiserver's printers
//! (`pkg/printers/internalversion/printers.go`).
//!
//! The server always prints the wide form (every column, priority 1
//! included); kubectl hides priority-1 columns unless `-o wide`.

mod duration;
mod printers;

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::ResourceType;

pub use duration::human as human_duration;

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (kubectl's
    /// default: `-A` and `--show-labels` read it).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query value; `None` for an unknown one.
    pub fn parse(s: &str) -> Option<IncludeObject> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// One column: `(name, type, format, description, priority)`.
type Column = (&'static str, &'static str, &'static str, &'static str, u8);

/// A Table of `objects` (each a full object) for `rt`, as returned for
/// `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
///
/// `now` is the time AGE is measured from; `list_meta` becomes the Table's
/// `metadata` (`{resourceVersion, continue}`). An object that does not
/// decode as its type is printed from whatever fields it has.
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    include_object: IncludeObject,
    now: SystemTime,
    list_meta: Value,
) -> Value {
    let now = printers::Now::new(now);
    let columns = printers::columns(rt.kind);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let cells = printers::cells(rt.kind, obj, &now);
            debug_assert_eq!(cells.len(), columns.len(), "{} cells", rt.kind);
            let mut row = json!({ "cells": cells });
            match include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
                IncludeObject::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|(name, ty, format, description, priority)| {
            json!({
                "name": name,
                "type": ty,
                "format": format,
                "description": description,
                "priority": priority,
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests;
