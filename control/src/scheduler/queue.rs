//! The scheduling queue (kube's active, backoff and unschedulable queues in
//! one structure), free of I/O: the caller passes "now".
//!
//! - *active*: pods to try, highest `spec.priority` first, then in arrival
//!   order;
//! - *in flight*: popped and being scheduled or bound;
//! - *unschedulable*: no node fitted; retried when the cluster changes
//!   ([`Queue::move_all`], after the pod's backoff) or, without any change,
//!   when its retry timer fires;
//! - *backoff*: waiting out a backoff before going back to active.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// The first backoff after a failed attempt (kube's `podInitialBackoff`).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a change lets a pod retry (kube's
/// `podMaxBackoff`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest wait before an unschedulable pod is retried with no change
/// seen at all. Shorter than kube's 5 minutes: a retry costs little here
/// and catches changes the queue cannot see (a namespace's labels).
pub const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    InFlight { moved: bool },
    Unschedulable { backoff_until: Instant },
    Backoff,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    state: State,
    attempts: u32,
    order: (Reverse<i32>, u64),
    timer: Option<Instant>,
}

/// Pending pods, by uid.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BTreeSet<((Reverse<i32>, u64), String)>,
    timers: BTreeSet<(Instant, String)>,
    /// Uids in state Unschedulable, and in state InFlight: what
    /// [`Queue::move_all`] visits, without walking every queued pod on
    /// each cluster change.
    unschedulable: HashSet<String>,
    in_flight: HashSet<String>,
    seq: u64,
}

fn backoff(attempts: u32, cap: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF.saturating_mul(1 << shift).min(cap)
}

fn spec_changed(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec || old.metadata.labels != new.metadata.labels
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// How many pods are queued in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a pod is ready to be popped.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Whether the pod with this uid is queued.
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// The uids of all queued pods.
    pub fn uids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The latest version of a queued pod.
    pub fn pod(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.entries.get(uid).map(|e| &e.pod)
    }

    fn set_timer(&mut self, uid: &str, at: Option<Instant>) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        if let Some(old) = entry.timer.take() {
            self.timers.remove(&(old, uid.to_owned()));
        }
        if let Some(at) = at {
            entry.timer = Some(at);
            self.timers.insert((at, uid.to_owned()));
        }
    }

    /// Sets a queued pod's state, keeping the state indexes in step.
    fn set_state(&mut self, uid: &str, state: State) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        entry.state = state;
        match state {
            State::Unschedulable { .. } => {
                self.unschedulable.insert(uid.to_owned());
                self.in_flight.remove(uid);
            }
            State::InFlight { .. } => {
                self.in_flight.insert(uid.to_owned());
                self.unschedulable.remove(uid);
            }
            State::Active | State::Backoff => {
                self.unschedulable.remove(uid);
                self.in_flight.remove(uid);
            }
        }
    }

    fn activate(&mut self, uid: &str) {
        self.set_timer(uid, None);
        self.set_state(uid, State::Active);
        if let Some(entry) = self.entries.get(uid) {
            self.active.insert((entry.order, uid.to_owned()));
        }
    }

    /// Adds a pending pod, or records a newer version of a queued one. An
    /// unschedulable pod whose spec or labels changed is retried (after its
    /// backoff); other updates (its own status) leave it waiting.
    pub fn add_or_update(&mut self, uid: &str, pod: Arc<Pod>, now: Instant) {
        let Some(entry) = self.entries.get_mut(uid) else {
            self.seq += 1;
            let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            let order = (Reverse(priority), self.seq);
            self.entries.insert(
                uid.to_owned(),
                Entry {
                    pod,
                    state: State::Active,
                    attempts: 0,
                    order,
                    timer: None,
                },
            );
            self.active.insert((order, uid.to_owned()));
            return;
        };
        let changed = spec_changed(&entry.pod, &pod);
        entry.pod = pod;
        match entry.state {
            State::InFlight { .. } if changed => {
                self.set_state(uid, State::InFlight { moved: true })
            }
            State::Unschedulable { backoff_until } if changed => {
                self.retry_after(uid, backoff_until, now);
            }
            _ => {}
        }
    }

    fn retry_after(&mut self, uid: &str, backoff_until: Instant, now: Instant) {
        if backoff_until <= now {
            self.activate(uid);
        } else {
            self.set_state(uid, State::Backoff);
            self.set_timer(uid, Some(backoff_until));
        }
    }

    /// Forgets a pod (deleted, bound elsewhere, no longer ours).
    pub fn remove(&mut self, uid: &str) {
        self.set_timer(uid, None);
        self.unschedulable.remove(uid);
        self.in_flight.remove(uid);
        if let Some(entry) = self.entries.remove(uid) {
            self.active.remove(&(entry.order, uid.to_owned()));
        }
    }

    /// Takes the next pod to schedule; it stays queued (in flight) until
    /// [`Queue::remove`], [`Queue::unschedulable`] or [`Queue::error`].
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        let (_, uid) = self.active.pop_first()?;
        self.set_state(&uid, State::InFlight { moved: false });
        let pod = self.entries.get(&uid)?.pod.clone();
        Some((uid, pod))
    }

    /// Records that no node fitted the in-flight pod. It waits for a
    /// cluster change (or a change while it was in flight) and its backoff,
    /// or for its retry timer.
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        entry.attempts += 1;
        let backoff_until = now + backoff(entry.attempts, MAX_BACKOFF);
        if matches!(entry.state, State::InFlight { moved: true }) {
            self.retry_after(uid, backoff_until, now);
            return;
        }
        let retry = now + backoff(entry.attempts, MAX_RETRY);
        self.set_state(uid, State::Unschedulable { backoff_until });
        self.set_timer(uid, Some(retry));
    }

    /// Records that scheduling or binding the in-flight pod failed for a
    /// reason other than fit (an API error): retry after a backoff.
    pub fn error(&mut self, uid: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        entry.attempts += 1;
        let until = now + backoff(entry.attempts, MAX_BACKOFF);
        self.retry_after(uid, until, now);
    }

    /// The cluster changed (a node, a bound pod): unschedulable pods may fit
    /// now. Each goes back to active once its backoff is over; in-flight
    /// pods are retried at once if they turn out unschedulable.
    pub fn move_all(&mut self, now: Instant) {
        let waiting: Vec<(String, Instant)> = self
            .unschedulable
            .iter()
            .filter_map(|uid| match self.entries.get(uid)?.state {
                State::Unschedulable { backoff_until } => Some((uid.clone(), backoff_until)),
                _ => None,
            })
            .collect();
        for (uid, backoff_until) in waiting {
            self.retry_after(&uid, backoff_until, now);
        }
        for uid in &self.in_flight {
            if let Some(entry) = self.entries.get_mut(uid) {
                entry.state = State::InFlight { moved: true };
            }
        }
    }

    /// When the next timer fires, if any.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Moves the pods whose backoff or retry timer is due to active.
    pub fn flush(&mut self, now: Instant) {
        while let Some((at, uid)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.activate(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(priority: i32, label: &str) -> Arc<Pod> {
        let mut p = Pod {
            spec: Some(PodSpec {
                priority: Some(priority),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.labels = Some([("v".to_owned(), label.to_owned())].into());
        Arc::new(p)
    }

    fn drain(q: &mut Queue) -> Vec<String> {
        std::iter::from_fn(|| q.pop().map(|(uid, _)| uid)).collect()
    }

    #[test]
    fn priority_then_arrival() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), now);
        q.add_or_update("b", pod(10, ""), now);
        q.add_or_update("c", pod(0, ""), now);
        q.add_or_update("a", pod(0, "x"), now);
        assert_eq!(drain(&mut q), ["b", "a", "c"]);
        assert_eq!(q.len(), 3, "popped pods stay in flight");
        q.remove("a");
        assert!(!q.contains("a"));
    }

    #[test]
    fn unschedulable_waits_for_change_or_timer() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), t0);
        q.pop();
        q.unschedulable("a", t0);
        assert!(!q.has_active());
        assert_eq!(q.next_timer(), Some(t0 + INITIAL_BACKOFF));
        // Its own status update changes nothing.
        q.add_or_update("a", pod(0, ""), t0);
        assert!(!q.has_active());
        // A cluster change after the backoff: retried at once.
        q.move_all(t0 + Duration::from_secs(2));
        assert_eq!(drain(&mut q), ["a"]);

        // Second failure: 2 s backoff; a change before it waits it out.
        q.unschedulable("a", t0);
        q.move_all(t0 + Duration::from_millis(500));
        assert!(!q.has_active());
        q.flush(t0 + Duration::from_millis(1999));
        assert!(!q.has_active());
        q.flush(t0 + Duration::from_secs(2));
        assert_eq!(drain(&mut q), ["a"]);
    }

    #[test]
    fn move_all_visits_exactly_the_unschedulable_and_in_flight_pods() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(2);
        let mut q = Queue::new();
        for uid in ["a", "b", "c", "d"] {
            q.add_or_update(uid, pod(0, ""), t0);
        }
        // a: unschedulable; b: unschedulable, then deleted; c: in flight;
        // d: still active.
        for _ in 0..3 {
            q.pop();
        }
        q.unschedulable("a", t0);
        q.unschedulable("b", t0);
        q.remove("b");
        q.move_all(later);
        assert_eq!(drain(&mut q), ["a", "d"], "b is gone, c still in flight");
        // c saw the change while in flight: unschedulable now means retry.
        q.unschedulable("c", later);
        q.flush(later + Duration::from_secs(1));
        assert_eq!(drain(&mut q), ["c"]);
        // Popped again, then active once more: a change moves nothing.
        q.error("a", later);
        q.flush(later + Duration::from_secs(60));
        q.move_all(later + Duration::from_secs(60));
        assert_eq!(drain(&mut q), ["a"]);
        assert!(q.unschedulable.is_empty());
        assert_eq!(q.in_flight.len(), 3, "a, c and d are in flight");
    }

    #[test]
    fn timer_retries_without_change_and_backs_off() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), t0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            q.pop();
            q.unschedulable("a", t0);
            let at = q.next_timer().unwrap();
            waits.push((at - t0).as_secs());
            q.flush(at);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn change_while_in_flight_retries_after_backoff() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), t0);
        q.pop();
        q.move_all(t0);
        q.unschedulable("a", t0);
        assert!(!q.has_active());
        assert_eq!(q.next_timer(), Some(t0 + INITIAL_BACKOFF));
        q.flush(t0 + INITIAL_BACKOFF);
        assert!(q.has_active());
    }

    #[test]
    fn spec_change_retries_unschedulable() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), t0);
        q.pop();
        q.unschedulable("a", t0);
        q.add_or_update("a", pod(0, "new"), t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut q), ["a"]);
        assert_eq!(q.next_timer(), None);
    }

    #[test]
    fn errors_back_off() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod(0, ""), t0);
        q.pop();
        q.error("a", t0);
        assert!(!q.has_active());
        q.flush(t0 + INITIAL_BACKOFF);
        assert_eq!(drain(&mut q), ["a"]);
    }
}
