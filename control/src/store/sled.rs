//! The embedded backend: [`SledStore`], a [`Store`] in a sled database.
//!
//! # Layout
//!
//! Three sled trees, records encoded as described in `codec.rs`:
//!
//! - `kv`: key → key-value record, the current state (including writes of
//!   a batch that is applied but not yet flushed, see below).
//! - `log`: revision (8 bytes, big-endian) → event record: the history that
//!   watches replay and past-revision lists undo. Holds every revision above
//!   the compaction point, contiguously.
//! - `meta`: `compacted` → the compaction point (8 bytes, big-endian).
//!
//! On open the revision is the last `log` key, or the compaction point if the
//! log is empty.
//!
//! # Group commit
//!
//! Writes are queued to one writer thread. It takes every queued write (up
//! to [`MAX_BATCH`]), applies them in order in ONE sled transaction over
//! `kv` and `log` (assigning consecutive revisions to those that pass their
//! checks), does ONE flush, then publishes the new committed revision,
//! broadcasts the batch's events to watchers and acknowledges each write.
//!
//! Readers must never see a write that is applied but not yet flushed (a
//! crash would lose it). So every read happens "as of" the committed
//! revision: under a read lock (the writer holds it exclusively only while
//! it applies a batch, never while it flushes), it reads `kv` and undoes the
//! log entries above the revision it reads at. The same mechanism serves
//! lists at a past revision.
//!
//! # Watch
//!
//! A watch subscribes to the broadcast *before* it reads the committed
//! revision, then replays the log up to that revision in chunks, then
//! switches to the broadcast, skipping events it already replayed. If it
//! lags behind the broadcast (or sees a gap) it goes back to replaying the
//! log from the next revision it needs, so no event is lost or repeated.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::sled::transaction::{
    ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::codec;
use super::{Error, Event, EventStream, KeyValue, ListOptions, ListResult, Result, Store};

/// Most writes applied and flushed as one batch: large enough to amortise a
/// flush over many writers, small enough that one batch's transaction and
/// the readers it blocks stay short.
const MAX_BATCH: usize = 512;

/// Writes that may wait for the writer before callers are slowed down.
const QUEUE_DEPTH: usize = 4096;

/// Batches a watcher may fall behind the live broadcast before it must
/// re-read the history (which it does transparently, at some cost).
const WATCH_BUFFER: usize = 1024;

/// History entries a replaying watch reads per step; bounds the time the
/// writer can be held off by one replay read.
const REPLAY_CHUNK: usize = 512;

const META_COMPACTED: &[u8] = b"compacted";

/// One batch's events, shared by every watcher.
type Batch = Arc<[Event]>;

/// A [`Store`] in an embedded sled database, with group commit.
///
/// Dropping it stops accepting writes and joins the writer thread (which
/// finishes its current batch first). Open watch streams keep the database
/// open until they are dropped; they end once the store is dropped.
pub struct SledStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    events: broadcast::Sender<Batch>,
    writer: Option<JoinHandle<()>>,
}

/// What the store handle, the writer thread and watch streams share.
struct Shared {
    db: ::sled::Db,
    kv: ::sled::Tree,
    log: ::sled::Tree,
    meta: ::sled::Tree,
    /// Held exclusively by the writer while it applies a batch or moves the
    /// compaction point, and shared by every read, so that a read sees one
    /// consistent `kv` + `log` + compaction point. It guards the index of
    /// the last applied batch, which reads at the committed revision use
    /// instead of walking that batch's history while it is being flushed.
    apply: RwLock<Unflushed>,
    /// The revision of the last flushed (acknowledged) write.
    committed: AtomicU64,
    /// The compaction point: the oldest revision still readable.
    compacted: AtomicU64,
    /// Flushes done for write batches (to observe group commit).
    flushes: AtomicU64,
}

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<u64>,
    },
    Delete {
        key: String,
        expected: Option<u64>,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<KeyValue>>,
}

enum Request {
    Write(WriteRequest),
    Compact {
        revision: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl SledStore {
    /// Opens (or creates) the store in the directory `path`, restoring its
    /// revision and compaction point, and starts its writer thread.
    ///
    /// This blocks on disk I/O. It errors if the directory cannot be used
    /// or is held by another open store (sled locks it; a store that is
    /// just closing is waited for, up to two seconds).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_buffer(path.as_ref(), WATCH_BUFFER)
    }

    fn open_with_buffer(path: &Path, watch_buffer: usize) -> Result<Self> {
        let label = path.display().to_string();
        let backend = |e: ::sled::Error| backend_error(&label, e);
        let db = open_db(path).map_err(backend)?;
        let kv = db.open_tree("kv").map_err(backend)?;
        let log = db.open_tree("log").map_err(backend)?;
        let meta = db.open_tree("meta").map_err(backend)?;

        let compacted = match meta.get(META_COMPACTED).map_err(backend)? {
            None => 0,
            Some(bytes) => codec::decode_revision(&bytes).map_err(|reason| Error::Corrupt {
                key: "meta/compacted".to_owned(),
                reason,
            })?,
        };
        let last_logged = match log.last().map_err(backend)? {
            None => 0,
            Some((key, _)) => codec::decode_revision(&key).map_err(|reason| Error::Corrupt {
                key: "log".to_owned(),
                reason,
            })?,
        };
        let revision = last_logged.max(compacted);
        tracing::debug!(path = %label, revision, compacted, "opened sled store");

        let shared = Arc::new(Shared {
            db,
            kv,
            log,
            meta,
            apply: RwLock::new(Unflushed::default()),
            committed: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            flushes: AtomicU64::new(0),
        });
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let (events, _) = broadcast::channel(watch_buffer);
        let writer = {
            let shared = Arc::clone(&shared);
            let events = events.clone();
            std::thread::Builder::new()
                .name("skiff-store-writer".to_owned())
                .spawn(move || run_writer(&shared, queue, &events))
                .map_err(|e| Error::Backend {
                    key: label.clone(),
                    source: Arc::new(e),
                })?
        };
        Ok(SledStore {
            shared,
            requests: Some(requests),
            events,
            writer: Some(writer),
        })
    }

    async fn write(&self, op: Op) -> Result<KeyValue> {
        let failed = Error::Closed {
            key: op.key().to_owned(),
        };
        let Some(requests) = &self.requests else {
            return Err(failed);
        };
        let (reply, acked) = oneshot::channel();
        if requests
            .send(Request::Write(WriteRequest { op, reply }))
            .await
            .is_err()
        {
            return Err(failed);
        }
        // The writer drops `reply` without answering only when it stops.
        acked.await.unwrap_or(Err(failed))
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish its batch and exit; join
        // it so that no write is in flight once `drop` returns.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl Store for SledStore {
    fn current_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move { Ok(self.shared.committed()) })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            let unflushed = self.shared.apply.read();
            let at = self.shared.committed();
            self.shared.state_at(&unflushed, key, at)
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        options: ListOptions,
    ) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(async move {
            let unflushed = self.shared.apply.read();
            let at = self.shared.readable_revision(prefix, options.revision)?;
            let limit = options.limit.filter(|&limit| limit > 0);
            let (kvs, more) = self.shared.list_at(
                &unflushed,
                prefix,
                options.start_after.as_deref(),
                limit,
                at,
            )?;
            Ok(ListResult {
                kvs,
                revision: at,
                more,
            })
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.write(Op::Create {
            key: key.to_owned(),
            value,
        }))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.write(Op::Update {
            key: key.to_owned(),
            value,
            expected: expected_mod_revision,
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.write(Op::Delete {
            key: key.to_owned(),
            expected: expected_mod_revision,
        }))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from_revision: u64,
    ) -> BoxFuture<'a, Result<EventStream>> {
        Box::pin(async move {
            // Subscribe first: every batch committed after the revision we
            // replay up to is then certain to reach us live.
            let live = self.events.subscribe();
            let compacted = self.shared.compacted();
            if from_revision < compacted {
                return Err(Error::Compacted {
                    key: prefix.to_owned(),
                    requested: from_revision,
                    compacted,
                });
            }
            let watch = Watch {
                shared: Arc::clone(&self.shared),
                live,
                prefix: prefix.to_owned(),
                next: from_revision.saturating_add(1),
                pending: VecDeque::new(),
                replaying: true,
                done: false,
            };
            let stream: EventStream = Box::pin(futures::stream::unfold(watch, Watch::step));
            Ok(stream)
        })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let closed = || Error::Closed {
                key: format!("compact@{revision}"),
            };
            let requests = self.requests.as_ref().ok_or_else(closed)?;
            let (reply, done) = oneshot::channel();
            requests
                .send(Request::Compact { revision, reply })
                .await
                .map_err(|_| closed())?;
            done.await.unwrap_or_else(|_| Err(closed()))
        })
    }
}

/// The last batch the writer applied: the revision it was applied on, and
/// the state before it of each key it changed. While that revision is still
/// the committed one, the batch is applied but not yet flushed (the writer
/// applies one batch at a time, and flushes it before the next).
#[derive(Default)]
struct Unflushed {
    base: u64,
    before: HashMap<String, Option<KeyValue>>,
}

impl Unflushed {
    /// The state as of `at` of each key the batch changed, if the batch is
    /// exactly what lies above `at`; `None` when the history must be read.
    fn before(&self, at: u64, committed: u64) -> Option<&HashMap<String, Option<KeyValue>>> {
        static NOTHING: std::sync::LazyLock<HashMap<String, Option<KeyValue>>> =
            std::sync::LazyLock::new(HashMap::new);
        match self.base.cmp(&committed) {
            _ if at != committed => None,
            std::cmp::Ordering::Equal => Some(&self.before),
            // Flushed: nothing lies above the committed revision.
            std::cmp::Ordering::Less => Some(&NOTHING),
            // Never, as the committed revision only grows; but then the
            // history knows.
            std::cmp::Ordering::Greater => None,
        }
    }
}

impl Shared {
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    fn compacted(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// The revision a read of `key` (or prefix) at `requested` (default:
    /// now) should use, checked against the compaction point and the
    /// current revision. Call with the `apply` lock held for reading.
    fn readable_revision(&self, key: &str, requested: Option<u64>) -> Result<u64> {
        let committed = self.committed();
        let Some(requested) = requested else {
            return Ok(committed);
        };
        let compacted = self.compacted();
        if requested < compacted {
            return Err(Error::Compacted {
                key: key.to_owned(),
                requested,
                compacted,
            });
        }
        if requested > committed {
            return Err(Error::FutureRevision {
                key: key.to_owned(),
                requested,
                current: committed,
            });
        }
        Ok(requested)
    }

    /// The history after `at`, oldest first. Call with the `apply` lock held
    /// for reading and `at` at or above the compaction point.
    fn history_after(&self, at: u64) -> impl Iterator<Item = Result<Event>> + '_ {
        self.history_after_of(at, |_| true)
    }

    /// The history after `at` of the keys `wanted` accepts, oldest first;
    /// the other entries are skipped on their key alone, undecoded. Call
    /// with the `apply` lock held for reading and `at` at or above the
    /// compaction point.
    fn history_after_of<'s>(
        &'s self,
        at: u64,
        wanted: impl Fn(&str) -> bool + 's,
    ) -> impl Iterator<Item = Result<Event>> + 's {
        let corrupt = |key: &[u8], reason: String| Error::Corrupt {
            key: format!("log@{}", codec::decode_revision(key).unwrap_or_default()),
            reason,
        };
        self.log
            .range(codec::revision_key(at + 1)..)
            .filter_map(move |entry| {
                let (key, bytes) = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Some(Err(backend_error("log", e))),
                };
                match codec::event_key(&bytes) {
                    Ok(k) if !wanted(k) => None,
                    Ok(_) => Some(codec::decode_event(&bytes).map_err(|r| corrupt(&key, r))),
                    Err(reason) => Some(Err(corrupt(&key, reason))),
                }
            })
    }

    /// The value of `key` as of revision `at`. Call with the `apply` lock
    /// held for reading (`unflushed` is what it guards).
    fn state_at(&self, unflushed: &Unflushed, key: &str, at: u64) -> Result<Option<KeyValue>> {
        match unflushed.before(at, self.committed()) {
            Some(before) => {
                if let Some(state) = before.get(key) {
                    return Ok(state.clone());
                }
            }
            // The first change after `at` knows the state before it.
            None => {
                if let Some(event) = self.history_after_of(at, |k| k == key).next() {
                    return Ok(state_before(event?));
                }
            }
        }
        match self.kv.get(key).map_err(|e| backend_error(key, e))? {
            None => Ok(None),
            Some(bytes) => decode_kv(key, &bytes).map(Some),
        }
    }

    /// Up to `limit` keys under `prefix` and after `start_after`, as of
    /// revision `at`, and whether more remain. Call with the `apply` lock
    /// held for reading (`unflushed` is what it guards).
    fn list_at(
        &self,
        unflushed: &Unflushed,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: u64,
    ) -> Result<(Vec<KeyValue>, bool)> {
        let wanted = |key: &str| key.starts_with(prefix) && start_after.is_none_or(|s| key > s);

        // Keys changed after `at`: their state as of `at`, from the first
        // change after it. Every other key is as `kv` has it.
        let mut before: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        match unflushed.before(at, self.committed()) {
            Some(changed) => {
                for (key, state) in changed {
                    if wanted(key) {
                        before.insert(key.clone(), state.clone());
                    }
                }
            }
            None => {
                for event in self.history_after_of(at, wanted) {
                    let event = event?;
                    if !before.contains_key(event.key()) {
                        before.insert(event.key().to_owned(), state_before(event));
                    }
                }
            }
        }

        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.as_bytes()),
            _ => Bound::Included(prefix.as_bytes()),
        };
        let mut current = self
            .kv
            .range::<&[u8], _>((lower, Bound::Unbounded))
            .map(|entry| {
                let (key, bytes) = entry.map_err(|e| backend_error(prefix, e))?;
                decode_kv(&String::from_utf8_lossy(&key), &bytes)
            })
            .take_while(|kv| kv.as_ref().map_or(true, |kv| kv.key.starts_with(prefix)))
            .peekable();
        let mut changed = before.into_iter().peekable();

        let cap = limit.unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        loop {
            // Merge the two sorted sequences; a changed key's old state wins.
            let next = match (current.peek(), changed.peek()) {
                (None, None) => break,
                (Some(Err(_)), _) => return Err(current.next().expect("peeked").unwrap_err()),
                (Some(Ok(kv)), Some((key, _))) if kv.key.as_str() < key.as_str() => {
                    current.next().expect("peeked").map(Some)?
                }
                (Some(Ok(kv)), Some((key, _))) if kv.key == *key => {
                    current.next();
                    changed.next().expect("peeked").1
                }
                (Some(Ok(_)), None) => current.next().expect("peeked").map(Some)?,
                (_, Some(_)) => changed.next().expect("peeked").1,
            };
            if let Some(kv) = next {
                if kvs.len() == cap {
                    return Ok((kvs, true));
                }
                kvs.push(kv);
            }
        }
        Ok((kvs, false))
    }

    /// Up to `max` history entries from revision `from` up to `upto`, keeping
    /// those under `prefix`; returns them and the next revision to read.
    fn replay(&self, prefix: &str, from: u64, upto: u64, max: usize) -> Result<(Vec<Event>, u64)> {
        let _read = self.apply.read();
        let compacted = self.compacted();
        if from <= compacted {
            return Err(Error::Compacted {
                key: prefix.to_owned(),
                requested: from - 1,
                compacted,
            });
        }
        let end = upto.min(from.saturating_add(max as u64 - 1));
        let mut next = from;
        let mut events = Vec::new();
        for event in self.history_after(from - 1) {
            let event = event?;
            if event.revision() != next {
                return Err(Error::Corrupt {
                    key: format!("log@{next}"),
                    reason: format!("history jumps to revision {}", event.revision()),
                });
            }
            next += 1;
            if event.key().starts_with(prefix) {
                events.push(event);
            }
            if next > end {
                break;
            }
        }
        if next <= end {
            return Err(Error::Corrupt {
                key: format!("log@{next}"),
                reason: "history ends early".to_owned(),
            });
        }
        Ok((events, next))
    }

    /// Applies `writes` in one transaction and one flush, then publishes and
    /// acknowledges them. Returns `false` if the store can take no more
    /// writes (the flush or the transaction failed: what was applied may not
    /// be durable, so it must never become visible).
    fn commit(&self, writes: Vec<WriteRequest>, events: &broadcast::Sender<Batch>) -> bool {
        let base = self.committed();
        let applied = {
            let mut unflushed = self.apply.write();
            let applied = (&self.kv, &self.log).transaction(|(kv, log)| {
                let mut revision = base;
                let mut outcomes = Vec::with_capacity(writes.len());
                for write in &writes {
                    let outcome = apply(kv, log, &write.op, revision + 1)?;
                    if outcome.is_ok() {
                        revision += 1;
                    }
                    outcomes.push(outcome);
                }
                Ok((outcomes, revision))
            });
            // Index what the batch changed before any read can see it.
            let mut before = HashMap::new();
            if let Ok((outcomes, _)) = &applied {
                for (_, event) in outcomes.iter().flatten() {
                    before
                        .entry(event.key().to_owned())
                        .or_insert_with(|| state_before(event.clone()));
                }
            }
            *unflushed = Unflushed { base, before };
            applied
        };
        let flushed = applied.and_then(|applied| {
            if applied.1 > base {
                self.db.flush().map_err(TransactionError::Storage)?;
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(applied)
        });
        let (outcomes, revision) = match flushed {
            Ok(done) => done,
            Err(error) => {
                let error = match error {
                    TransactionError::Storage(e) => e,
                    TransactionError::Abort(never) => match never {},
                };
                tracing::error!(%error, "store write failed; the store stops taking writes");
                let source: super::BackendError = Arc::new(error);
                for write in writes {
                    let _ = write.reply.send(Err(Error::Backend {
                        key: write.op.key().to_owned(),
                        source: Arc::clone(&source),
                    }));
                }
                return false;
            }
        };

        self.committed.store(revision, Ordering::Release);
        let mut batch = Vec::new();
        for (write, outcome) in writes.into_iter().zip(outcomes) {
            let reply = outcome.map(|(reply, event)| {
                batch.push(event);
                reply
            });
            // The caller may have given up waiting; the write stands anyway.
            let _ = write.reply.send(reply);
        }
        if !batch.is_empty() {
            // No receivers just means nobody is watching.
            let _ = events.send(batch.into());
        }
        true
    }

    /// Moves the compaction point to `revision` and drops the history at and
    /// below it.
    fn compact(&self, revision: u64) -> Result<()> {
        let label = format!("compact@{revision}");
        let committed = self.committed();
        if revision > committed {
            return Err(Error::FutureRevision {
                key: String::new(),
                requested: revision,
                current: committed,
            });
        }
        if revision <= self.compacted() {
            return Ok(());
        }
        // Durable compaction point first: history below it is then dead
        // even if a crash interrupts the removal.
        self.meta
            .insert(META_COMPACTED, &codec::revision_key(revision))
            .map_err(|e| backend_error(&label, e))?;
        self.db.flush().map_err(|e| backend_error(&label, e))?;
        {
            // Readers check the compaction point under the read lock and
            // then rely on the history above it, which is never removed.
            let _apply = self.apply.write();
            self.compacted.store(revision, Ordering::Release);
        }
        loop {
            let mut batch = ::sled::Batch::default();
            let mut removed = 0;
            for key in self
                .log
                .range(..=codec::revision_key(revision))
                .keys()
                .take(4096)
            {
                batch.remove(key.map_err(|e| backend_error(&label, e))?);
                removed += 1;
            }
            if removed == 0 {
                break;
            }
            self.log
                .apply_batch(batch)
                .map_err(|e| backend_error(&label, e))?;
        }
        self.db.flush().map_err(|e| backend_error(&label, e))?;
        tracing::debug!(revision, "compacted store history");
        Ok(())
    }
}

/// How long [`open_db`] waits for a just-closed database's lock.
///
/// sled's background threads may hold the database file (and its lock) for
/// a moment after the last handle is dropped, so reopening right after a
/// drop (a restart in the same process) can find it locked.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database at `path`, waiting up to [`LOCK_WAIT`] for the
/// lock a closing instance may still hold. A database held by a live store
/// still fails, after that wait.
fn open_db(path: &Path) -> ::sled::Result<::sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match ::sled::Config::new().path(path).open() {
            // sled reports a held lock only in this message.
            Err(::sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The writer thread: group commit until the queue closes or a write fails.
fn run_writer(
    shared: &Shared,
    mut queue: mpsc::Receiver<Request>,
    events: &broadcast::Sender<Batch>,
) {
    let mut requests = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        requests.push(first);
        while requests.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        for request in requests.drain(..) {
            match request {
                Request::Write(write) => writes.push(write),
                Request::Compact { revision, reply } => {
                    // Keep order: writes queued before the compaction first.
                    if !writes.is_empty() && !shared.commit(std::mem::take(&mut writes), events) {
                        return;
                    }
                    let _ = reply.send(shared.compact(revision));
                }
            }
        }
        if !writes.is_empty() && !shared.commit(writes, events) {
            return;
        }
    }
}

/// Applies one write at `revision` inside the batch's transaction. The
/// inner result is the write's own outcome (the reply and its event); the
/// outer one fails the whole batch.
fn apply(
    kv: &TransactionalTree,
    log: &TransactionalTree,
    op: &Op,
    revision: u64,
) -> ConflictableTransactionResult<Result<(KeyValue, Event)>, std::convert::Infallible> {
    let key = op.key();
    let current = match kv.get(key)? {
        None => None,
        Some(bytes) => match decode_kv(key, &bytes) {
            Ok(current) => Some(current),
            Err(corrupt) => return Ok(Err(corrupt)),
        },
    };
    let check = |current: Option<KeyValue>, expected: Option<u64>| match current {
        None => Err(Error::NotFound {
            key: key.to_owned(),
        }),
        Some(current) => match expected {
            Some(expected) if expected != current.mod_revision => Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current: current.mod_revision,
            }),
            _ => Ok(current),
        },
    };
    let (reply, event) = match op {
        Op::Create { value, .. } => {
            if current.is_some() {
                return Ok(Err(Error::AlreadyExists {
                    key: key.to_owned(),
                }));
            }
            let new = KeyValue {
                key: key.to_owned(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            };
            kv.insert(key, codec::encode_kv(&new))?;
            (
                new.clone(),
                Event::Put {
                    kv: new,
                    prev: None,
                },
            )
        }
        Op::Update {
            value, expected, ..
        } => {
            let prev = match check(current, *expected) {
                Ok(prev) => prev,
                Err(e) => return Ok(Err(e)),
            };
            let new = KeyValue {
                key: key.to_owned(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: revision,
                version: prev.version + 1,
            };
            kv.insert(key, codec::encode_kv(&new))?;
            (
                new.clone(),
                Event::Put {
                    kv: new,
                    prev: Some(prev),
                },
            )
        }
        Op::Delete { expected, .. } => {
            let prev = match check(current, *expected) {
                Ok(prev) => prev,
                Err(e) => return Ok(Err(e)),
            };
            kv.remove(key)?;
            (prev.clone(), Event::Delete { prev, revision })
        }
    };
    log.insert(&codec::revision_key(revision), codec::encode_event(&event))?;
    Ok(Ok((reply, event)))
}

/// The state of an event's key just before the event.
fn state_before(event: Event) -> Option<KeyValue> {
    match event {
        Event::Put { prev, .. } => prev,
        Event::Delete { prev, .. } => Some(prev),
    }
}

fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    codec::decode_kv(bytes).map_err(|reason| Error::Corrupt {
        key: key.to_owned(),
        reason,
    })
}

fn backend_error(key: &str, error: ::sled::Error) -> Error {
    Error::Backend {
        key: key.to_owned(),
        source: Arc::new(error),
    }
}

/// A watch stream's state: replaying history, or following the broadcast.
struct Watch {
    shared: Arc<Shared>,
    live: broadcast::Receiver<Batch>,
    prefix: String,
    /// The next revision this watch must account for.
    next: u64,
    /// Events read but not yet yielded.
    pending: VecDeque<Event>,
    replaying: bool,
    done: bool,
}

impl Watch {
    async fn step(mut self) -> Option<(Result<Event>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            if self.replaying {
                let committed = self.shared.committed();
                if self.next > committed {
                    self.replaying = false;
                    continue;
                }
                match self
                    .shared
                    .replay(&self.prefix, self.next, committed, REPLAY_CHUNK)
                {
                    Ok((events, next)) => {
                        self.pending.extend(events);
                        self.next = next;
                    }
                    Err(error) => {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
                // A long replay with few matches must not hog the runtime.
                tokio::task::yield_now().await;
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    for event in batch.iter() {
                        let revision = event.revision();
                        if revision < self.next {
                            continue; // already replayed
                        }
                        if revision > self.next {
                            // A gap: fetch the missing part from the history.
                            self.replaying = true;
                            break;
                        }
                        self.next += 1;
                        if event.key().starts_with(&self.prefix) {
                            self.pending.push_back(event.clone());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, next = self.next, "watch lagged; replaying history");
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what} probably hung"))
    }

    /// A watcher whose broadcast buffer overflows while it is not polled
    /// still sees every event exactly once, from the history.
    #[tokio::test]
    async fn lagging_watch_rereads_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with_buffer(dir.path(), 2).unwrap();
        let mut watch = store.watch("/lag/", 0).await.unwrap();
        // Let the watch reach the live phase before writing.
        within(
            "writing the first key",
            store.create("/lag/0", Bytes::from("0")),
        )
        .await
        .unwrap();
        let first = within("first event", watch.next()).await.unwrap().unwrap();
        assert_eq!(first.revision(), 1);
        // Leave the watch waiting on the live broadcast, then overflow it.
        let idle = tokio::time::timeout(Duration::from_millis(100), watch.next()).await;
        assert!(idle.is_err(), "no event was written: {idle:?}");
        // Separate batches, far more than the buffer holds.
        for i in 1..50 {
            within(
                "writing keys while the watch is not polled",
                store.create(&format!("/lag/{i}"), Bytes::from(i.to_string())),
            )
            .await
            .unwrap();
        }
        for expected in 2..=50 {
            let event = within("lagged watch to catch up", watch.next())
                .await
                .expect("stream ended early")
                .unwrap();
            assert_eq!(event.revision(), expected);
        }
    }

    /// Writes queued while the writer is busy are applied in one batch with
    /// one flush, each acknowledged with its own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[expect(
        clippy::await_holding_lock,
        reason = "holding the writer off is the point; the waits are bounded and the \
                  tasks awaited meanwhile never take the lock"
    )]
    async fn queued_writes_are_group_committed() {
        const WRITES: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        store.create("/taken", Bytes::from("x")).await.unwrap();
        let flushes_before = store.shared.flushes.load(Ordering::Relaxed);

        // Hold the writer off (it blocks on the lock with the first write)
        // while every other write queues up behind it.
        let hold = store.shared.apply.write();
        let spawn = |i: usize| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                // Every tenth write fails, alone, inside the batch.
                let key = if i.is_multiple_of(10) {
                    "/taken".to_owned()
                } else {
                    format!("/g/{i}")
                };
                store.create(&key, Bytes::from("v")).await
            })
        };
        let queue = store.requests.as_ref().unwrap();
        let queued = || QUEUE_DEPTH - queue.capacity();
        // The first write, queued synchronously: once the queue is empty
        // again, the writer has taken it (alone) and waits for the lock.
        let (reply, first) = oneshot::channel();
        let op = Op::Create {
            key: "/taken".to_owned(),
            value: Bytes::from("v"),
        };
        assert!(
            queue
                .try_send(Request::Write(WriteRequest { op, reply }))
                .is_ok()
        );
        within("the writer to take the first write", async {
            while queued() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let tasks: Vec<_> = (1..WRITES).map(spawn).collect();
        within("the other writes to queue up", async {
            while queued() < WRITES - 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        drop(hold);

        let err = within("the first write", first).await.unwrap().unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        let mut revisions = Vec::new();
        for (i, task) in (1usize..).zip(tasks) {
            match within("a queued write", task).await.unwrap() {
                Ok(kv) => revisions.push(kv.mod_revision),
                Err(Error::AlreadyExists { key }) if i.is_multiple_of(10) => {
                    assert_eq!(key, "/taken")
                }
                Err(other) => panic!("write {i} failed: {other}"),
            }
        }
        revisions.sort_unstable();
        let succeeded = (WRITES - WRITES / 10) as u64;
        assert_eq!(revisions, (2..2 + succeeded).collect::<Vec<_>>());
        assert_eq!(store.shared.committed(), 1 + succeeded);
        let flushes = store.shared.flushes.load(Ordering::Relaxed) - flushes_before;
        assert!(flushes <= 2, "{flushes} flushes for {WRITES} queued writes");
    }

    /// Reads never see the applied-but-unflushed part of the log.
    #[tokio::test]
    async fn reads_ignore_writes_above_the_committed_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.create("/a", Bytes::from("1")).await.unwrap();
        // Pretend revision 1 was applied but not yet flushed.
        store.shared.committed.store(0, Ordering::Release);
        assert_eq!(store.get("/a").await.unwrap(), None);
        let list = store.list("/", ListOptions::default()).await.unwrap();
        assert_eq!((list.kvs.len(), list.revision), (0, 0));
        store.shared.committed.store(1, Ordering::Release);
        assert_eq!(store.get("/a").await.unwrap().unwrap().value, "1");

        // An update and a create in one unflushed batch: reads see the
        // state before it, from the batch's index; reads at an older
        // revision still undo the history.
        store.create("/b", Bytes::from("b")).await.unwrap();
        let (a, c) = futures::join!(
            store.update("/a", Bytes::from("2"), None),
            store.create("/c", Bytes::from("c"))
        );
        let (a, c) = (a.unwrap(), c.unwrap());
        let top = a.mod_revision.max(c.mod_revision);
        let below = a.mod_revision.min(c.mod_revision) - 1;
        store.shared.committed.store(below, Ordering::Release);
        assert_eq!(store.get("/a").await.unwrap().unwrap().value, "1");
        assert_eq!(store.get("/c").await.unwrap(), None);
        assert_eq!(store.get("/b").await.unwrap().unwrap().value, "b");
        let values = |list: ListResult| -> Vec<(String, Bytes)> {
            list.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
        };
        let now = values(store.list("/", ListOptions::default()).await.unwrap());
        assert_eq!(
            now,
            [
                ("/a".into(), Bytes::from("1")),
                ("/b".into(), Bytes::from("b"))
            ]
        );
        store.shared.committed.store(top, Ordering::Release);
        let old = ListOptions {
            revision: Some(1),
            ..ListOptions::default()
        };
        assert_eq!(
            values(store.list("/", old).await.unwrap()),
            [("/a".into(), Bytes::from("1"))]
        );
        assert_eq!(store.get("/a").await.unwrap().unwrap().value, "2");
        assert_eq!(store.get("/c").await.unwrap().unwrap().value, "c");
    }
}
