//! Events (core/v1, what `kubectl describe` and `kubectl events` read),
//! recorded the way Kubernetes' event recorder does: one Event object per
//! distinct (object, type, reason, message), its `count` and
//! `lastTimestamp` bumped when the same thing happens again.
//!
//! Recording never fails or delays the caller: an Event is a courtesy to the
//! user, and a controller must not stop or wait because one could not be
//! written. As client-go's broadcaster does, [`Recorder::publish`] only
//! queues the write; background writers send it, and when the queue is full
//! (the API server is slower than the events come) the event is dropped and
//! counted ([`Recorder::dropped`]), rather than holding the controller back.
//! Writes of the same event go through one writer, in order, so a count
//! bump never overtakes the creation it bumps.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use tokio::sync::mpsc;

use super::Clock;

/// Remembered events per recorder before the oldest are forgotten (a
/// forgotten event is recorded anew instead of counted).
const REMEMBERED: usize = 4096;

/// Background writers per recorder: events for different objects are
/// written concurrently, each event's own writes in order.
const WRITERS: usize = 8;

/// Queued writes per writer; past that, events are dropped (client-go's
/// broadcaster keeps 1,000 in all).
const QUEUED_PER_WRITER: usize = 128;

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Records Events for one component. Cheap to clone; clones share the
/// aggregation memory and the writers.
#[derive(Clone)]
pub struct Recorder {
    component: String,
    clock: Arc<dyn Clock>,
    seen: Arc<parking_lot::Mutex<HashMap<Key, Seen>>>,
    sink: Arc<Sink>,
}

/// The writers' queues, started with the first event (a recorder may be
/// made outside the runtime).
struct Sink {
    client: kube::Client,
    queues: parking_lot::Mutex<Option<Vec<mpsc::Sender<Write>>>>,
    hasher: std::collections::hash_map::RandomState,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    name: String,
    event_type: EventType,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
}

/// One queued write: the Event as it should now be (with its count), and
/// whether it exists already (then only count and time are patched).
struct Write {
    event: Event,
    bump: bool,
}

/// The reference an Event points at, for any typed object.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    object.object_ref(&())
}

impl Recorder {
    /// A recorder reporting as `component` (`replicaset-controller`,
    /// `default-scheduler`, ...).
    pub fn new(client: kube::Client, component: &str, clock: Arc<dyn Clock>) -> Recorder {
        Recorder {
            component: component.to_owned(),
            clock,
            seen: Arc::default(),
            sink: Arc::new(Sink {
                client,
                queues: parking_lot::Mutex::new(None),
                hasher: std::collections::hash_map::RandomState::new(),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Records that `reason` happened to `object`, with a human `message`:
    /// queues the write and returns.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) {
        let now = self.clock.now();
        let time = Time(now);
        let key = Key {
            uid: object.uid.clone().unwrap_or_default(),
            kind: object.kind.clone().unwrap_or_default(),
            name: object.name.clone().unwrap_or_default(),
            event_type,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let mut seen = self.seen.lock();
        let (namespace, name, count) = match seen.get(&key) {
            Some(s) => (s.namespace.clone(), s.name.clone(), s.count + 1),
            None => {
                let namespace = object
                    .namespace
                    .clone()
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or_else(|| "default".to_owned());
                let name = format!(
                    "{}.{:016x}",
                    key.name,
                    now.as_nanosecond() as u64 ^ u64::from(rand_suffix())
                );
                (namespace, name, 1)
            }
        };
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(event_type.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            first_timestamp: Some(time.clone()),
            last_timestamp: Some(time),
            event_time: Some(MicroTime(now)),
            count: Some(count),
            action: Some(reason.to_owned()),
            ..Event::default()
        };
        let write = Write {
            event,
            bump: count > 1,
        };
        if !self.sink.send(self.sink.hasher.hash_one(&key), write) {
            return;
        }
        if seen.len() >= REMEMBERED && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                namespace,
                name,
                count,
            },
        );
    }

    /// Shorthand for a `Normal` event.
    pub async fn normal(&self, object: &ObjectReference, reason: &str, message: &str) {
        self.publish(object, EventType::Normal, reason, message)
            .await;
    }

    /// Shorthand for a `Warning` event.
    pub async fn warning(&self, object: &ObjectReference, reason: &str, message: &str) {
        self.publish(object, EventType::Warning, reason, message)
            .await;
    }

    /// How many events were dropped because the writers' queues were full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped.load(Ordering::Relaxed)
    }
}

impl Sink {
    /// Queues `write` on the writer its event's hash picks (starting the
    /// writers the first time); `false` if it was dropped.
    fn send(&self, hash: u64, write: Write) -> bool {
        let mut queues = self.queues.lock();
        let queues = queues.get_or_insert_with(|| {
            (0..WRITERS)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(QUEUED_PER_WRITER);
                    tokio::spawn(write_all(self.client.clone(), rx));
                    tx
                })
                .collect()
        });
        let queue = &queues[(hash % WRITERS as u64) as usize];
        match queue.try_send(write) {
            Ok(()) => true,
            Err(error) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    let write = error.into_inner();
                    tracing::warn!(
                        dropped,
                        reason = write.event.reason.as_deref().unwrap_or_default(),
                        "events are coming faster than the API server takes them; dropping"
                    );
                }
                false
            }
        }
    }
}

/// One writer: sends its queue's writes in order until every recorder
/// sharing it is gone.
async fn write_all(client: kube::Client, mut queue: mpsc::Receiver<Write>) {
    while let Some(write) = queue.recv().await {
        let reason = write.event.reason.clone().unwrap_or_default();
        if let Err(error) = write_one(&client, write).await {
            tracing::warn!(%error, reason, "could not record an event");
        }
    }
}

/// Creates the Event, or bumps its count and time; an Event gone meanwhile
/// (expired, deleted) is created again.
async fn write_one(client: &kube::Client, write: Write) -> kube::Result<()> {
    let Write { event, bump } = write;
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if bump {
        let name = event.metadata.name.clone().unwrap_or_default();
        let patch =
            serde_json::json!({"count": event.count, "lastTimestamp": event.last_timestamp});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    api.create(&PostParams::default(), &event).await.map(drop)
}

/// A little per-process entropy for event names, so two recorders writing
/// in the same nanosecond do not collide.
fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_fields().0
}
