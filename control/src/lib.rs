//! Skiff's control plane: the state of the cluster and, to come, the API
//! server, scheduler and controllers that act on it (see DESIGN.md).
//!
//! For now it holds the [`store`]: keys to bytes with etcd's semantics
//! (revisions, compare-and-swap, watch, compaction). Begin with
//! [`store::Store`], the trait the API server will hold as an
//! `Arc<dyn Store>`, and [`store::SledStore::open`], its embedded backend.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod client;
pub mod controllers;
pub mod leader;
pub mod manager;
pub mod scheduler;
pub mod store;
