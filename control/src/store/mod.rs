//! The control plane's store: keys to bytes with etcd's semantics.
//!
//! Everything the API server keeps (pods, services, leases...) lives here
//! under keys like `/registry/pods/default/web-1`. The model is etcd's, so a
//! real etcd can sit behind the same [`Store`] trait:
//!
//! - One global, monotonic **revision**. An empty store is at revision 0 and
//!   every successful write (create, update or delete) bumps it by exactly 1.
//!   A failed write (already exists, not found, conflict) bumps nothing.
//! - Each [`KeyValue`] carries its `create_revision`, its `mod_revision` (the
//!   revision of its last write: the Kubernetes `resourceVersion`) and its
//!   `version` (writes since it was created, starting at 1).
//! - [`Store::update`] and [`Store::delete`] are compare-and-swap on
//!   `mod_revision` when given an expected one.
//! - [`Store::watch`] streams every change under a prefix after a revision:
//!   first the history, then live changes, in revision order, none lost or
//!   repeated. [`Store::list`] reports the revision it reflects, so
//!   "list, then watch from `list.revision`" misses nothing.
//! - [`Store::compact`] drops history; reading or watching below the
//!   compaction point fails with [`Error::Compacted`] (HTTP 410 Gone).
//! - A write is acknowledged only once it is durable on disk, and reads
//!   only ever see acknowledged writes.
//!
//! [`SledStore`] is the embedded backend. Begin with [`SledStore::open`],
//! then use it as an `Arc<dyn Store>`.

mod codec;
mod sled;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use self::sled::SledStore;

/// A key, its value, and the revisions that describe its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web-1`.
    pub key: String,
    /// The value: opaque bytes (the API server stores serialized objects).
    pub value: Bytes,
    /// The revision at which the key was (last) created.
    pub create_revision: u64,
    /// The revision of the last write to the key: its `resourceVersion`.
    pub mod_revision: u64,
    /// Number of writes since creation: 1 after create, +1 per update.
    pub version: u64,
}

/// One change to one key, as [`Store::watch`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created (`prev` is `None`) or updated.
    Put {
        /// The key as written; `kv.mod_revision` is the event's revision.
        kv: KeyValue,
        /// The key before this write, if it existed.
        prev: Option<KeyValue>,
    },
    /// The key was deleted.
    Delete {
        /// The key as it was just before deletion.
        prev: KeyValue,
        /// The revision of the deletion.
        revision: u64,
    },
}

impl Event {
    /// The store revision this change was made at.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// How [`Store::list`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read the state as of this revision; `None` reads the current state.
    /// Errors with [`Error::Compacted`] below the compaction point and with
    /// [`Error::FutureRevision`] above the current revision.
    pub revision: Option<u64>,
    /// Return at most this many keys; `None` (or, as in etcd, `Some(0)`)
    /// means no limit.
    pub limit: Option<usize>,
    /// Return only keys strictly after this one: pass the last key of the
    /// previous page (with that page's `revision`) to get the next page.
    pub start_after: Option<String>,
}

/// What [`Store::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// The keys under the prefix, in byte order of their keys.
    pub kvs: Vec<KeyValue>,
    /// The store revision the list reflects: watch from it to see every
    /// later change.
    pub revision: u64,
    /// Whether more keys remained beyond `limit`.
    pub more: bool,
}

/// A stream of changes from [`Store::watch`]. After an `Err` item the
/// stream ends. It also ends when the store is dropped.
pub type EventStream = BoxStream<'static, Result<Event>>;

/// A backend-specific failure, shared so that [`Error`] stays `Clone`.
pub type BackendError = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed. Each variant names the key (or, for a list
/// or watch, the prefix) it was about.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// [`Store::create`] found the key already present (HTTP 409).
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// [`Store::update`] or [`Store::delete`] found no such key (HTTP 404).
    #[error("key {key:?} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key's `mod_revision` was not the expected one (HTTP 409).
    #[error("key {key:?} was modified: expected mod_revision {expected}, found {current}")]
    Conflict {
        /// The key.
        key: String,
        /// The `mod_revision` the caller expected.
        expected: u64,
        /// The key's actual `mod_revision`.
        current: u64,
    },
    /// The requested revision's history was dropped by [`Store::compact`]
    /// (HTTP 410 Gone: the client must list again).
    #[error("revision {requested} for {key:?} is compacted (history kept from {compacted})")]
    Compacted {
        /// The key or prefix being read or watched.
        key: String,
        /// The revision asked for.
        requested: u64,
        /// The compaction point: the oldest revision still readable.
        compacted: u64,
    },
    /// The requested revision is beyond the store's current revision.
    #[error("revision {requested} for {key:?} is in the future (current revision {current})")]
    FutureRevision {
        /// The key or prefix being read; empty for [`Store::compact`].
        key: String,
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// A stored record could not be decoded.
    #[error("stored record for {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key (or `log@<revision>` for a history entry).
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The backend failed (disk I/O, the etcd connection...). A write that
    /// fails this way may or may not have happened, as with a timeout.
    #[error("store backend failed on {key:?}")]
    Backend {
        /// The key, prefix or path being worked on.
        key: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// The store has stopped accepting writes: it is shutting down, or an
    /// earlier flush to disk failed. The write to `key` did not happen.
    #[error("store is closed; write to {key:?} not done")]
    Closed {
        /// The key that was being written.
        key: String,
    },
}

/// The result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key-value store with etcd's semantics (see the [module docs](self)).
///
/// Object-safe: the API server holds an `Arc<dyn Store>`. Reads never see a
/// write before it is durable, and an acknowledged write is durable.
/// Dropping a write's future does not cancel the write: it may still
/// happen, as with an etcd request that timed out.
pub trait Store: Send + Sync {
    /// The revision of the last acknowledged write (0 for an empty store).
    fn current_revision(&self) -> BoxFuture<'_, Result<u64>>;

    /// The key's current value, or `None` if it does not exist.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// The keys starting with `prefix`, in key order, as of
    /// `options.revision` (default: now), paginated by `options.limit` and
    /// `options.start_after`.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        options: ListOptions,
    ) -> BoxFuture<'a, Result<ListResult>>;

    /// Creates `key`; errors with [`Error::AlreadyExists`] if it exists.
    /// Returns the new key-value (version 1).
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<KeyValue>>;

    /// Replaces the value of an existing `key`. With
    /// `expected_mod_revision`, only if the key's `mod_revision` equals it
    /// ([`Error::Conflict`] otherwise). Errors with [`Error::NotFound`] if
    /// the key does not exist. Returns the new key-value.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>>;

    /// Deletes `key`, with the same checks as [`Store::update`]. Returns the
    /// key-value as it was just before deletion.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>>;

    /// Streams every change to keys under `prefix` with a revision greater
    /// than `from_revision`, in revision order: the history first, then
    /// live changes. Errors with [`Error::Compacted`] if `from_revision` is
    /// below the compaction point (now, or later while the stream replays
    /// history). A `from_revision` in the future is allowed: the stream
    /// starts when the store reaches it.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_revision: u64,
    ) -> BoxFuture<'a, Result<EventStream>>;

    /// Drops the history at and below `revision`: afterwards reading or
    /// watching from a revision below it errors with [`Error::Compacted`].
    /// Compacting at or below the current compaction point does nothing;
    /// beyond the current revision errors with [`Error::FutureRevision`].
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>>;
}
