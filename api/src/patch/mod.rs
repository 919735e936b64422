//! The four ways a `PATCH` changes an object: JSON patch (RFC 6902), merge
//! patch (RFC 7396), strategic merge patch and server-side apply.
//!
//! Start with [`PatchType::from_content_type`], then call [`patch()`] (or
//! [`json_patch()`], [`merge_patch`], [`strategic_merge_patch`]) with the
//! request body, or for server-side apply [`apply::decode_apply_body`] then
//! [`apply::apply`]. Ordinary writes (create, update, the other patches)
//! record who changed what with [`apply::record_update`] on the object about
//! to be stored (after defaulting, as Kubernetes does), so that a later
//! apply meets those managers' fields as conflicts. The patch strategies of
//! the built-in kinds live in a private schema module shared by strategic
//! merge patch and apply.

pub mod apply;
mod schema;
mod strategic;

use serde_json::Value;

pub use apply::ApplyConflicts;
pub use strategic::strategic_merge_patch;

/// The kind of patch a `PATCH` request carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`: RFC 6902 operations.
    Json,
    /// `application/merge-patch+json`: RFC 7396.
    Merge,
    /// `application/strategic-merge-patch+json`: Kubernetes' merge with
    /// per-field list strategies.
    StrategicMerge,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters such as
    /// `; charset=utf-8` are ignored), or `None` for any other media type,
    /// including `application/apply-patch+cbor`, which Skiff does not read.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        Some(match media.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::StrategicMerge,
            "application/apply-patch+yaml" => PatchType::Apply,
            _ => return None,
        })
    }

    /// The `Content-Type` of this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

/// A patch could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The patch is malformed: not JSON, not the right shape, a bad or
    /// unknown directive, a failed `test` operation. The server answers
    /// `400 BadRequest`.
    #[error("{0}")]
    BadRequest(String),
    /// Server-side apply met fields owned by other managers (and `force`
    /// was not set). The server answers `409 Conflict`, see
    /// [`ApplyConflicts::to_status`].
    #[error(transparent)]
    Conflict(ApplyConflicts),
    /// This patch type cannot be applied to this kind (strategic merge
    /// patch on a kind without a schema). The server answers
    /// `415 UnsupportedMediaType`.
    #[error("{0}")]
    Unsupported(String),
}

/// The result of a patch.
pub type Result<T, E = PatchError> = std::result::Result<T, E>;

/// Applies an RFC 6902 JSON patch (`application/json-patch+json`) given as
/// the request body.
///
/// Errors with [`PatchError::BadRequest`] when the body is not a list of
/// operations or an operation fails (a `test` that does not match, a path
/// that does not exist); the original is then left as it was.
pub fn json_patch(original: &Value, patch: &[u8]) -> Result<Value> {
    let operations: json_patch::Patch = serde_json::from_slice(patch)
        .map_err(|e| PatchError::BadRequest(format!("invalid JSON patch: {e}")))?;
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &operations)
        .map_err(|e| PatchError::BadRequest(format!("the JSON patch failed: {e}")))?;
    Ok(doc)
}

/// Applies an RFC 7396 merge patch (`application/merge-patch+json`): maps
/// merge, `null` deletes, everything else (lists included) is replaced.
///
/// Never fails today; it returns a `Result` like the other patches so
/// callers treat them alike.
pub fn merge_patch(original: &Value, patch: &Value) -> Result<Value> {
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// Applies a JSON, merge or strategic merge patch given as the request body
/// to an object of `kind`.
///
/// Errors with [`PatchError::BadRequest`] for a body that is not JSON, and
/// with [`PatchError::Unsupported`] for [`PatchType::Apply`], which needs
/// the field manager: call [`apply::apply`] for it.
pub fn patch(kind: &str, patch_type: PatchType, original: &Value, body: &[u8]) -> Result<Value> {
    let parse = || {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| PatchError::BadRequest(format!("the patch is not valid JSON: {e}")))
    };
    match patch_type {
        PatchType::Json => json_patch(original, body),
        PatchType::Merge => merge_patch(original, &parse()?),
        PatchType::StrategicMerge => strategic_merge_patch(kind, original, &parse()?),
        PatchType::Apply => Err(PatchError::Unsupported(
            "server-side apply needs a field manager; use patch::apply::apply".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+cbor"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for t in [
            PatchType::Json,
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
        }
    }

    /// What `kubectl rollout undo` sends.
    #[test]
    fn json_patch_replaces_the_template_and_fails_whole() {
        let live =
            json!({"spec": {"replicas": 1, "template": {"metadata": {"labels": {"v": "2"}}}}});
        let body = br#"[{"op":"replace","path":"/spec/template","value":{"metadata":{"labels":{"v":"1"}}}}]"#;
        let out = json_patch(&live, body).unwrap();
        assert_eq!(out["spec"]["template"]["metadata"]["labels"]["v"], "1");

        let failing = br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"test","path":"/spec/replicas","value":1}]"#;
        assert!(matches!(
            json_patch(&live, failing),
            Err(PatchError::BadRequest(_))
        ));
        assert!(matches!(
            json_patch(&live, b"{}"),
            Err(PatchError::BadRequest(_))
        ));
    }

    /// What `kubectl scale` sends to `.../scale`.
    #[test]
    fn merge_patch_merges_maps_and_replaces_lists() {
        let live =
            json!({"spec": {"replicas": 1, "list": [1, 2]}, "metadata": {"labels": {"a": "1"}}});
        let out = merge_patch(
            &live,
            &json!({"spec": {"replicas": 3, "list": [3]}, "metadata": {"labels": {"a": null}}}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"spec": {"replicas": 3, "list": [3]}, "metadata": {"labels": {}}})
        );
    }

    #[test]
    fn patch_dispatches_on_type() {
        let live = json!({"metadata": {"finalizers": ["a"]}});
        let out = patch(
            "ConfigMap",
            PatchType::StrategicMerge,
            &live,
            br#"{"metadata":{"finalizers":["b"]}}"#,
        )
        .unwrap();
        // Elements the original lacks go first, as `normalizeElementOrder` puts them.
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
        let out = patch(
            "ConfigMap",
            PatchType::Merge,
            &live,
            br#"{"metadata":{"finalizers":["b"]}}"#,
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert!(matches!(
            patch("ConfigMap", PatchType::Merge, &live, b"{not json"),
            Err(PatchError::BadRequest(_))
        ));
        assert!(matches!(
            patch("ConfigMap", PatchType::Apply, &live, b"{}"),
            Err(PatchError::Unsupported(_))
        ));
    }
}
