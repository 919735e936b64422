//! Skiff's node agent (the kubelet of a wasm cluster): it registers its
//! Node, heartbeats through a Lease, runs the pods bound to it as wasm
//! components on [`skiff_runtime`], and reports their status back through
//! the Kubernetes API.
//!
//! [`agent`] is the agent itself; [`images`] resolves a pod's `image` to a
//! verified component on disk (OCI registries, the control plane's built-in
//! registry, local files in development mode).
#![forbid(unsafe_code)]

pub mod agent;
pub mod images;
pub mod overlay;
