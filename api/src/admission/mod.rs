//! Admission: defaulting and validation as the Kubernetes API server does
//! them, for every type in [`RESOURCES`](crate::resources::RESOURCES).
//!
//! [`admit`] is the one entry point. In order it
//! 1. decodes the body as its `k8s-openapi` type (a wrong type is a
//!    [`AdmitError::BadRequest`] naming the field),
//! 2. finds fields the type does not know by a decode/encode round trip,
//!    and prunes them (reporting them as causes when strict, as warnings
//!    otherwise),
//! 3. applies defaults (`SetDefaults_*`),
//! 4. validates, collecting every problem into one [`Invalid`].
//!
//! Server-owned metadata (uid, resourceVersion, timestamps, generation,
//! managedFields), name generation and IP/port allocation are the API
//! server's job, not this module's.

mod cron;
mod csr;
mod defaults;
mod names;
mod pod;
mod quantity;
mod rules;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

use serde_json::Value;

pub use csr::parse_request;

use crate::{Cause, Invalid, ResourceType};

/// The write being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object (POST, or an apply that creates).
    Create,
    /// A replacement of an existing object (PUT, PATCH): immutable fields
    /// are checked against the old object.
    Update,
}

/// An object that passed admission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Warnings for the `Warning` response header (`unknown field "spec.x"`).
    pub warnings: Vec<String>,
}

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The object is not valid: `422 Invalid`, with every bad field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The body is not an object of this type at all (a string where a
    /// number belongs): `400 BadRequest`.
    #[error("{0}")]
    BadRequest(String),
}

/// Applies defaults to `obj` in place, then validates it (against `old` on
/// update, for immutable fields).
///
/// `strict` is `fieldValidation=Strict`: fields the type does not know are
/// errors ([`Cause::unknown`] with their full path, `spec.replicasx`).
/// Otherwise they are pruned from `obj`, as Kubernetes prunes them, and
/// reported as warnings. Either way `obj` is left pruned and defaulted.
///
/// This errors with [`AdmitError::BadRequest`] if `obj` is not a JSON
/// object of `rt`'s type, and with [`AdmitError::Invalid`] listing every
/// problem otherwise.
pub fn admit(
    rt: &ResourceType,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<Admitted, AdmitError> {
    let cannot = |detail: String| {
        AdmitError::BadRequest(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {detail}",
            kind = rt.kind,
            version = rt.version,
        ))
    };
    let Some(map) = obj.as_object_mut() else {
        return Err(cannot("the body must be a JSON object".into()));
    };
    for (key, value) in [
        ("apiVersion", rt.api_version()),
        ("kind", rt.kind.to_owned()),
    ] {
        if map.get(key).is_none_or(Value::is_null) {
            map.insert(key.into(), Value::String(value));
        }
    }

    let encoded = match schema::round_trip(rt.kind, obj) {
        None => return Err(cannot(format!("no admission rules for kind {:?}", rt.kind))),
        Some(Ok(encoded)) => encoded,
        Some(Err(e)) => {
            let path = schema::locate(rt.kind, obj, &e);
            return Err(cannot(if path.is_empty() {
                e
            } else {
                format!("{path}: {e}")
            }));
        }
    };
    let unknown = schema::prune_unknown(obj, &encoded);
    let mut causes = Vec::new();
    let mut warnings = Vec::new();
    if strict {
        causes.extend(unknown.into_iter().map(Cause::unknown));
    } else {
        warnings.extend(
            unknown
                .into_iter()
                .map(|path| format!("unknown field {path:?}")),
        );
    }

    defaults::apply(rt.kind, op, obj, old);
    validate::object(rt, op, obj, old, &mut causes).map_err(cannot)?;

    if causes.is_empty() {
        Ok(Admitted { warnings })
    } else {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(AdmitError::Invalid(Invalid {
            kind: rt.kind.to_owned(),
            name: name.to_owned(),
            causes,
        }))
    }
}
