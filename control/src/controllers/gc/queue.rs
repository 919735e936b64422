//! A keyed work queue with client-go's workqueue semantics, shared by the
//! endpoints, namespace and garbage-collector controllers: a key waits in
//! the queue at most once however often it is added, is handed to one
//! worker at a time, and, if added again while a worker holds it, comes
//! back once that worker is done. Keys can also be added after a delay
//! (requeue after).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The queue. Share it behind an `Arc`.
pub(crate) struct WorkQueue<K> {
    inner: parking_lot::Mutex<Inner<K>>,
    notify: Notify,
}

struct Inner<K> {
    /// Keys ready for a worker, in arrival order.
    ready: VecDeque<K>,
    /// Keys waiting in `ready`, or to be requeued when their worker ends.
    dirty: HashSet<K>,
    /// Keys a worker holds.
    processing: HashSet<K>,
    /// Keys to add later, earliest first (the sequence number keeps the
    /// heap's order total without requiring `K: Ord`).
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_keys: std::collections::HashMap<u64, K>,
    sequence: u64,
    /// Consecutive failures per key, for the retry backoff.
    failures: std::collections::HashMap<K, u32>,
}

/// The first retry's delay; each further failure doubles it.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest retry delay: a key failing for a long time (an API server
/// away) is still tried twice a minute.
const RETRY_MAX: Duration = Duration::from_secs(30);

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue {
            inner: parking_lot::Mutex::new(Inner {
                ready: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                delayed: BinaryHeap::new(),
                delayed_keys: std::collections::HashMap::new(),
                sequence: 0,
                failures: std::collections::HashMap::new(),
            }),
            notify: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Inner<K> {
    fn add(&mut self, key: K) -> bool {
        if !self.dirty.insert(key.clone()) {
            return false;
        }
        if self.processing.contains(&key) {
            return false;
        }
        self.ready.push_back(key);
        true
    }

    /// Moves the delayed keys that are due into `ready`; returns when the
    /// next one is due.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((at, seq))) = self.delayed.peek().copied() {
            if at > now {
                return Some(at);
            }
            self.delayed.pop();
            if let Some(key) = self.delayed_keys.remove(&seq) {
                self.add(key);
            }
        }
        None
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// Adds `key` now.
    pub(crate) fn add(&self, key: K) {
        if self.inner.lock().add(key) {
            self.notify.notify_waiters();
        }
    }

    /// Adds `key` once `after` has passed.
    pub(crate) fn add_after(&self, key: K, after: Duration) {
        if after.is_zero() {
            return self.add(key);
        }
        {
            let mut inner = self.inner.lock();
            inner.sequence += 1;
            let seq = inner.sequence;
            inner.delayed.push(Reverse((Instant::now() + after, seq)));
            inner.delayed_keys.insert(seq, key);
        }
        self.notify.notify_waiters();
    }

    /// Adds `key` again after a delay growing with its consecutive
    /// failures (100 ms doubling to 30 s).
    pub(crate) fn retry(&self, key: K) {
        let delay = {
            let mut inner = self.inner.lock();
            let failures = inner.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            RETRY_BASE
                .saturating_mul(2u32.saturating_pow((*failures - 1).min(16)))
                .min(RETRY_MAX)
        };
        self.add_after(key, delay);
    }

    /// Forgets `key`'s failures (after it succeeded).
    pub(crate) fn forget(&self, key: &K) {
        self.inner.lock().failures.remove(key);
    }

    /// Waits for the next key; the caller must call [`WorkQueue::done`]
    /// with it when finished.
    pub(crate) async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let due = {
                let mut inner = self.inner.lock();
                let due = inner.promote(Instant::now());
                if let Some(key) = inner.ready.pop_front() {
                    inner.dirty.remove(&key);
                    inner.processing.insert(key.clone());
                    return key;
                }
                due
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Releases `key` after processing; it is queued again if it was added
    /// meanwhile.
    pub(crate) fn done(&self, key: &K) {
        let mut inner = self.inner.lock();
        inner.processing.remove(key);
        if inner.dirty.contains(key) {
            inner.ready.push_back(key.clone());
            drop(inner);
            self.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_and_returns_after_done_if_added_meanwhile() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, "a");
        q.add("a");
        assert_eq!(q.next().await, "b");
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        let nothing = tokio::time::timeout(Duration::from_millis(50), q.next()).await;
        assert!(nothing.is_err(), "the queue should be empty");
    }

    #[tokio::test]
    async fn delayed_keys_arrive_when_due() {
        let q = WorkQueue::default();
        q.add_after("late", Duration::from_millis(200));
        q.add_after("early", Duration::from_millis(100));
        assert_eq!(q.next().await, "early");
        assert_eq!(q.next().await, "late");
    }
}
