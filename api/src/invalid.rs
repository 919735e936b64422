//! The `422 Invalid` error: every bad field of an object, by path.

use serde_json::{Value, json};

/// One problem with one field, as Kubernetes reports it in
/// `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field path, as Kubernetes writes it: `spec.containers[0].image`,
    /// `metadata.labels`.
    pub field: String,
    /// The cause type: `FieldValueRequired`, `FieldValueInvalid`,
    /// `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueForbidden`, `FieldValueTooLong`, `FieldValueTypeInvalid`.
    pub reason: &'static str,
    /// What is wrong, for a person: `Required value`, `Invalid value: "Foo": ...`.
    pub message: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }

    /// A field has a value that is not allowed; `detail` says why.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    /// A field's value is not one of the supported ones.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {shown}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    /// A value appears twice where it must be unique.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
        }
    }

    /// A field that may not be set (or changed) here.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
        }
    }

    /// A field the schema does not know (rejected with `fieldValidation=Strict`).
    pub fn unknown(field: impl Into<String>) -> Cause {
        let field = field.into();
        Cause {
            message: format!("unknown field {field:?}"),
            field,
            reason: "FieldValueInvalid",
        }
    }
}

/// An object failed validation: the API server answers `422 Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?} is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
pub struct Invalid {
    /// The kind (`Deployment`).
    pub kind: String,
    /// The object's name (may be empty when the name itself is missing).
    pub name: String,
    /// Every problem found; never empty.
    pub causes: Vec<Cause>,
}

impl Invalid {
    /// The `Status` object Kubernetes returns for this error (code 422).
    pub fn to_status(&self, group: &str) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": "Invalid",
            "details": {
                "name": self.name,
                "group": group,
                "kind": self.kind,
                "causes": self.causes.iter().map(|c| json!({
                    "reason": c.reason,
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            },
            "code": 422,
        })
    }
}
