//! Events (core/v1, what `kubectl describe` and `kubectl events` read),
//! recorded the way Kubernetes' event recorder does: one Event object per
//! distinct (object, type, reason, message), its `count` and
//! `lastTimestamp` bumped when the same thing happens again.
//!
//! Recording never fails the caller: an Event is a courtesy to the user,
//! and a controller must not stop because one could not be written.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};

use super::Clock;

/// Remembered events per recorder before the oldest are forgotten (a
/// forgotten event is recorded anew instead of counted).
const REMEMBERED: usize = 4096;

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
/// aggregation memory.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    clock: Arc<dyn Clock>,
    seen: Arc<parking_lot::Mutex<HashMap<Key, Seen>>>,
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

/// The reference an Event points at, for any typed object.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    object.object_ref(&())
}

impl Recorder {
    /// A recorder reporting as `component` (`replicaset-controller`,
    /// `default-scheduler`, ...).
    pub fn new(client: kube::Client, component: &str, clock: Arc<dyn Clock>) -> Recorder {
        Recorder {
            client,
            component: component.to_owned(),
            clock,
            seen: Arc::default(),
        }
    }

    /// Records that `reason` happened to `object`, with a human `message`.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(error) = self.try_publish(object, event_type, reason, message).await {
            tracing::warn!(%error, reason, message, "could not record an event");
        }
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

    async fn try_publish(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> kube::Result<()> {
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
        let previous = self.seen.lock().get(&key).cloned();
        if let Some(seen) = previous {
            let count = seen.count + 1;
            let api: Api<Event> = Api::namespaced(self.client.clone(), &seen.namespace);
            let patch = serde_json::json!({"count": count, "lastTimestamp": time});
            match api
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Some(entry) = self.seen.lock().get_mut(&key) {
                        entry.count = count;
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
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
            count: Some(1),
            action: Some(reason.to_owned()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        let mut seen = self.seen.lock();
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                namespace,
                name,
                count: 1,
            },
        );
        Ok(())
    }
}

/// A little per-process entropy for event names, so two recorders writing
/// in the same nanosecond do not collide.
fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_fields().0
}
