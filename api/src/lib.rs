//! Skiff's API: the Kubernetes resources it serves and the rules applied to
//! them, free of I/O so the API server, controllers and tests share them.
//!
//! Start with [`resources`]: the registry of every resource type (group,
//! version, kind, plural, scope, subresources). Objects travel as JSON
//! ([`serde_json::Value`]) through the server and are checked against their
//! `k8s-openapi` types where it matters:
//!
//! - [`admission`]: defaulting and validation as Kubernetes does them, with
//!   an [`Invalid`] error naming every bad field.
//! - [`patch`]: JSON patch, merge patch, strategic merge patch and
//!   server-side apply.
//! - [`table`]: the `meta.k8s.io/v1` Table rows `kubectl get` prints.
//! - [`selector`]: label and field selectors.
//! - [`quantity`]: resource quantities as exact integers.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cidr;
pub mod invalid;
pub mod patch;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod table;

pub use invalid::{Cause, Invalid};
pub use k8s_openapi;
pub use resources::{ResourceType, Scope};
