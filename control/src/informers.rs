//! Shared watches, as client-go's shared informers: the controllers and
//! the scheduler of one process that watch the same resource type (all
//! namespaces, no selector) get their events from ONE watch on the API
//! server, decoded once, instead of one watch each.
//!
//! A pod change used to reach the controller manager eight times (the
//! scheduler, the ReplicaSet, Deployment, StatefulSet, Job, endpoint and
//! node-lifecycle controllers each had their own pod watch), each time
//! encoded by the API server, encrypted, decrypted and decoded again.
//!
//! The watch keeps one cache of the objects ([`Informers::store`]), which
//! the controllers read instead of keeping a copy each (client-go's
//! indexer); it is updated before subscribers are told of a change.
//!
//! Objects are shared, not copied: the subscribers of [`Informers::events`]
//! get the same `Arc` (one decode, one copy into the cache, whatever the
//! number of subscribers), and `metadata.managedFields` is dropped on
//! arrival, as kube-scheduler's and kube-controller-manager's informers do
//! (no controller reads it, and it is often the larger part of an object).
//!
//! A subscriber sees exactly what its own `kube::runtime::watcher` would:
//! `Init`, the listed objects as `InitApply`, `InitDone`, then `Apply` and
//! `Delete`; one that joins late is first given the objects the shared
//! watch holds. The watch starts with the first subscriber and stops when
//! the last one is dropped (a control-plane process that loses leadership
//! stops loading the API server). Each subscriber has its own unbounded
//! queue, as client-go's listeners do, so a slow controller never makes
//! another miss or wait for an event.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// What a shareable resource type must be: typed, with a static
/// description (`Pod`, `Node`, ...).
pub trait Shareable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Shareable for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// One process's shared watches, by resource type. Cheap to clone; clones
/// share the watches.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    by_type: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("types", &self.by_type.lock().len())
            .finish_non_exhaustive()
    }
}

impl Informers {
    /// Shared watches through `client`.
    pub fn new(client: kube::Client) -> Informers {
        Informers {
            client,
            by_type: Arc::default(),
        }
    }

    /// The events of every `K` in all namespaces, as
    /// `watcher(Api::<K>::all(client), watcher::Config::default())` would
    /// give them (without `managedFields`), each object shared with the
    /// other subscribers; never ending while the process runs (the shared
    /// watch logs its errors and resumes with backoff).
    pub fn events<K: Shareable>(&self) -> Subscription<K> {
        Shared::subscribe(&self.shared::<K>())
    }

    /// [`Informers::events`] with objects of their own, as a
    /// `kube::runtime::watcher` stream (for `reflector` and the like); never
    /// an error.
    pub fn watch<K: Shareable>(
        &self,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + Unpin + 'static
    {
        self.events::<K>()
            .map(|event| Ok(map_event(event, Arc::unwrap_or_clone)))
    }

    /// The cache of every `K` that the shared watch keeps: ready once its
    /// first list completes, kept current while anyone in the process
    /// subscribes to [`Informers::watch`] for `K`, and updated before the
    /// subscribers hear of a change.
    pub fn store<K: Shareable>(&self) -> Store<K> {
        self.shared::<K>().inner.lock().writer.as_reader()
    }

    fn shared<K: Shareable>(&self) -> Arc<Shared<K>> {
        {
            let mut by_type = self.by_type.lock();
            let entry = by_type.entry(TypeId::of::<K>()).or_insert_with(|| {
                Arc::new(Shared::<K> {
                    client: self.client.clone(),
                    inner: Mutex::new(Inner::default()),
                })
            });
            entry
                .clone()
                .downcast::<Shared<K>>()
                .expect("an informer is stored under its own type")
        }
    }
}

struct Shared<K: Shareable> {
    client: kube::Client,
    inner: Mutex<Inner<K>>,
}

/// The same event with `f` applied to its object, if it has one.
fn map_event<A, B>(event: watcher::Event<A>, f: impl FnOnce(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(f(obj)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(obj) => watcher::Event::Apply(f(obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(f(obj)),
    }
}

struct Inner<K: Shareable> {
    subscribers: Vec<(u64, mpsc::UnboundedSender<watcher::Event<Arc<K>>>)>,
    next_id: u64,
    /// Every object as of the last completed list and the events since.
    writer: Writer<K>,
    /// Whether a list has completed since the watch started.
    synced: bool,
    /// The objects of a (re)list under way.
    relist: Option<Vec<Arc<K>>>,
    /// The running watch, and its generation: events of an older
    /// generation (a watch being aborted) are ignored.
    task: Option<tokio::task::AbortHandle>,
    generation: u64,
}

impl<K: Shareable> Default for Inner<K> {
    fn default() -> Self {
        Inner {
            subscribers: Vec::new(),
            next_id: 0,
            writer: Writer::default(),
            synced: false,
            relist: None,
            task: None,
            generation: 0,
        }
    }
}

impl<K: Shareable> Shared<K> {
    fn subscribe(this: &Arc<Shared<K>>) -> Subscription<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = this.inner.lock();
        // Catch up: what a watch of our own would have sent so far.
        if let Some(relist) = &inner.relist {
            let _ = tx.send(watcher::Event::Init);
            for obj in relist {
                let _ = tx.send(watcher::Event::InitApply(obj.clone()));
            }
        } else if inner.synced {
            let _ = tx.send(watcher::Event::Init);
            for obj in inner.writer.as_reader().state() {
                let _ = tx.send(watcher::Event::InitApply(obj));
            }
            let _ = tx.send(watcher::Event::InitDone);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.push((id, tx));
        if inner.task.is_none() {
            inner.generation += 1;
            let generation = inner.generation;
            let task = tokio::spawn(Shared::pump(this.clone(), generation));
            inner.task = Some(task.abort_handle());
        }
        Subscription {
            id,
            events: rx,
            shared: this.clone(),
        }
    }

    async fn pump(this: Arc<Shared<K>>, generation: u64) {
        let api = Api::<K>::all(this.client.clone());
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let event = event.modify(|obj| obj.meta_mut().managed_fields = None);
                    this.publish(generation, event);
                }
                Err(error) => {
                    let what = K::plural(&());
                    tracing::warn!(resource = %what, %error, "shared watch failed; retrying");
                }
            }
        }
    }

    fn publish(&self, generation: u64, event: watcher::Event<K>) {
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.task.is_none() {
            return;
        }
        inner.writer.apply_watcher_event(&event);
        let event = map_event(event, Arc::new);
        inner
            .subscribers
            .retain(|(_, tx)| tx.send(event.clone()).is_ok());
        match event {
            watcher::Event::Init => inner.relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => {
                if let Some(relist) = inner.relist.as_mut() {
                    relist.push(obj);
                }
            }
            watcher::Event::InitDone => {
                inner.relist = None;
                inner.synced = true;
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut inner = self.inner.lock();
        inner.subscribers.retain(|(i, _)| *i != id);
        if inner.subscribers.is_empty()
            && let Some(task) = inner.task.take()
        {
            task.abort();
            // A new watch fills a new cache: whoever reads the old one
            // has unsubscribed.
            inner.writer = Writer::default();
            inner.synced = false;
            inner.relist = None;
        }
    }
}

/// One subscriber's events of a shared watch (see [`Informers::events`]).
/// Dropping it unsubscribes.
pub struct Subscription<K: Shareable> {
    id: u64,
    events: mpsc::UnboundedReceiver<watcher::Event<Arc<K>>>,
    shared: Arc<Shared<K>>,
}

impl<K: Shareable> Stream for Subscription<K> {
    type Item = watcher::Event<Arc<K>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl<K: Shareable> Drop for Subscription<K> {
    fn drop(&mut self) {
        self.shared.unsubscribe(self.id);
    }
}
