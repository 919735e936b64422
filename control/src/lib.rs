//! Skiff's control plane: the state of the cluster and the loops that act
//! on it (see DESIGN.md).
//!
//! - [`store`]: keys to bytes with etcd's semantics (revisions,
//!   compare-and-swap, watch, compaction); [`store::SledStore`] embedded.
//! - [`apiserver`]: the Kubernetes API over HTTPS on that store (and the
//!   built-in OCI registry under `/v2/`).
//! - [`scheduler`] and [`controllers`]: API clients (kube-rs) placing pods
//!   and converging workloads, run together by [`manager`] behind
//!   [`leader`] election so several control-plane processes can stand by,
//!   sharing one watch per resource type through [`informers`].
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod client;
pub mod controllers;
pub mod informers;
pub mod leader;
pub mod manager;
pub mod scheduler;
pub mod store;
