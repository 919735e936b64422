//! The garbage collector, as Kubernetes' garbage-collector controller:
//!
//! - **background** cascading deletion: an object all of whose owners
//!   (by uid) no longer exist is deleted;
//! - **foreground**: an owner being deleted with the `foregroundDeletion`
//!   finalizer has its dependents deleted, and keeps the finalizer until
//!   those with `blockOwnerDeletion: true` are gone;
//! - **orphan**: an owner being deleted with the `orphan` finalizer has
//!   its reference removed from every dependent, then loses the finalizer.
//!
//! It watches every resource type the API server serves (Events aside, as
//! Kubernetes does) into a graph of uid → owners and dependents
//! ([`graph`]), and examines only the objects a change concerns; before
//! deleting anything it checks the owners live against the API server, so
//! a lagging watch never causes a wrong deletion. A periodic resync
//! ([`Options::resync`](super::Options)) is the backstop.

mod graph;
pub(crate) mod informer;
pub(crate) mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_api::resources::{self, RESOURCES};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::graph::{FOREGROUND, Graph, Identity, ORPHAN};
use self::informer::{api_resource, is_status};
use self::queue::WorkQueue;
use super::Context;

/// How many objects are examined at once (Kubernetes' default
/// `--concurrent-gc-syncs` is 20; two cores are shared here).
const WORKERS: usize = 8;

/// How long workers wait for every watch's first list before they start
/// anyway.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Uids confirmed absent, remembered to spare lookups when many dependents
/// share a deleted owner; cleared past this many (uids never return).
const ABSENT_REMEMBERED: usize = 10_000;

/// Types not collected (Kubernetes ignores Events too: they are many,
/// short-lived, and never owners).
fn collected(rt: &skiff_api::ResourceType) -> bool {
    rt.kind != "Event"
}

/// A change seen by a watch, for the graph builder.
struct Change {
    /// Index into [`RESOURCES`].
    rt: usize,
    event: watcher::Event<DynamicObject>,
}

struct State {
    ctx: Context,
    graph: parking_lot::Mutex<Graph>,
    queue: WorkQueue<String>,
    absent: parking_lot::Mutex<HashSet<String>>,
}

/// Runs the garbage collector until aborted.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let state = Arc::new(State {
        ctx,
        graph: parking_lot::Mutex::default(),
        queue: WorkQueue::default(),
        absent: parking_lot::Mutex::default(),
    });
    let mut tasks = JoinSet::new();
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let mut types = 0;
    for (index, rt) in RESOURCES.iter().enumerate().filter(|(_, rt)| collected(rt)) {
        types += 1;
        let api: Api<DynamicObject> = Api::all_with(state.ctx.client.clone(), &api_resource(rt));
        let tx = tx.clone();
        tasks.spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if tx.send(Change { rt: index, event }).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(resource = rt.plural, %error, "garbage collector watch failed; retrying");
                    }
                }
            }
        });
    }
    drop(tx);

    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let s = state.clone();
    tasks.spawn(async move {
        // Objects listed since a watch (re)started, per type: at the end of
        // the list, those not listed again were deleted meanwhile.
        let mut relisting: HashMap<usize, HashSet<String>> = HashMap::new();
        let mut synced: HashSet<usize> = HashSet::new();
        while let Some(Change { rt, event }) = rx.recv().await {
            let enqueue = s.apply(rt, event, &mut relisting, &mut synced);
            for uid in enqueue {
                s.queue.add(uid);
            }
            if synced.len() == types && !*synced_tx.borrow() {
                tracing::debug!("garbage collector graph synced");
                let _ = synced_tx.send(true);
            }
        }
    });

    for _ in 0..WORKERS {
        let s = state.clone();
        let mut synced = synced_rx.clone();
        tasks.spawn(async move {
            // Like Kubernetes, wait for the graph, but not forever: every
            // deletion is checked live, so a type whose watch keeps failing
            // only delays collection, never makes it wrong.
            if let Ok(Err(_)) = tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s)).await {
                return;
            }
            loop {
                let uid = s.queue.next().await;
                match s.process(&uid).await {
                    Ok(()) => s.queue.forget(&uid),
                    Err(error) => {
                        tracing::warn!(%uid, error = %format!("{error:#}"), "garbage collection failed; retrying");
                        s.queue.retry(uid.clone());
                    }
                }
                s.queue.done(&uid);
            }
        });
    }

    let s = state.clone();
    tasks.spawn(async move {
        let mut tick =
            tokio::time::interval(s.ctx.options.resync.max(std::time::Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let uids = s.graph.lock().resync();
            for uid in uids {
                s.queue.add(uid);
            }
        }
    });

    match tasks.join_next().await {
        Some(Err(error)) => Err(error).context("a garbage collector task failed"),
        _ => anyhow::bail!("a garbage collector task ended"),
    }
}

/// What an owner reference points at, as found live.
enum Owner {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Exists, being deleted in the foreground.
    Waiting,
    /// Does not exist (or another object has its name now).
    Dangling,
}

impl State {
    fn identity(rt: &skiff_api::ResourceType, obj: &DynamicObject) -> Option<Identity> {
        Some(Identity {
            api_version: rt.api_version(),
            kind: rt.kind.to_owned(),
            namespace: obj.metadata.namespace.clone(),
            name: obj.metadata.name.clone()?,
            uid: obj.metadata.uid.clone()?,
        })
    }

    /// Applies one watch event to the graph; the uids to examine.
    fn apply(
        &self,
        index: usize,
        event: watcher::Event<DynamicObject>,
        relisting: &mut HashMap<usize, HashSet<String>>,
        synced: &mut HashSet<usize>,
    ) -> Vec<String> {
        let rt = &RESOURCES[index];
        let mut graph = self.graph.lock();
        match event {
            watcher::Event::Init => {
                relisting.insert(index, HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                let Some(id) = Self::identity(rt, &obj) else {
                    return Vec::new();
                };
                relisting.entry(index).or_default().insert(id.uid.clone());
                graph.upsert(id, &obj.metadata)
            }
            watcher::Event::InitDone => {
                synced.insert(index);
                let listed = relisting.remove(&index).unwrap_or_default();
                let mut enqueue = Vec::new();
                for uid in graph.uids_of(&rt.api_version(), rt.kind) {
                    if !listed.contains(&uid) {
                        enqueue.extend(graph.remove(&uid));
                    }
                }
                enqueue
            }
            watcher::Event::Apply(obj) => match Self::identity(rt, &obj) {
                Some(id) => graph.upsert(id, &obj.metadata),
                None => Vec::new(),
            },
            watcher::Event::Delete(obj) => match obj.metadata.uid.as_deref() {
                Some(uid) => graph.remove(uid),
                None => Vec::new(),
            },
        }
    }

    fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Option<Api<DynamicObject>> {
        let rt = resources::by_kind(api_version, kind)?;
        let ar = api_resource(rt);
        let client = self.ctx.client.clone();
        Some(match (rt.namespaced(), namespace) {
            (true, Some(ns)) => Api::namespaced_with(client, ns, &ar),
            (true, None) => return None,
            (false, _) => Api::all_with(client, &ar),
        })
    }

    /// The object `id` names as it is now, if it is still that object.
    async fn latest(
        &self,
        id: &Identity,
    ) -> anyhow::Result<Option<(Api<DynamicObject>, DynamicObject)>> {
        let Some(api) = self.api(&id.api_version, &id.kind, id.namespace.as_deref()) else {
            return Ok(None);
        };
        match api.get_opt(&id.name).await? {
            Some(obj) if obj.metadata.uid.as_deref() == Some(id.uid.as_str()) => {
                Ok(Some((api, obj)))
            }
            _ => Ok(None),
        }
    }

    /// Examines one object.
    async fn process(&self, uid: &str) -> anyhow::Result<()> {
        let (id, observed, deleting, finalizers) = {
            let graph = self.graph.lock();
            let Some(node) = graph.nodes.get(uid) else {
                return Ok(());
            };
            (
                node.identity.clone(),
                node.observed,
                node.deleting,
                node.finalizers.clone(),
            )
        };
        if !observed {
            // A virtual owner: its dependents are examined themselves.
            return Ok(());
        }
        if deleting {
            if finalizers.iter().any(|f| f == ORPHAN) {
                return self.orphan_dependents(&id).await;
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                return self.delete_dependents(&id).await;
            }
            return Ok(());
        }
        self.attempt_to_delete(&id).await
    }

    async fn owner(
        &self,
        namespace: Option<&str>,
        reference: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> anyhow::Result<Owner> {
        if self.absent.lock().contains(&reference.uid) {
            return Ok(Owner::Dangling);
        }
        if resources::by_kind(&reference.api_version, &reference.kind).is_none() {
            // A type this server does not serve: it cannot be checked, so
            // the dependent is kept.
            tracing::debug!(kind = %reference.kind, api_version = %reference.api_version, "owner of an unknown type");
            return Ok(Owner::Solid);
        }
        let Some(api) = self.api(&reference.api_version, &reference.kind, namespace) else {
            // A namespaced owner of a cluster-scoped object is invalid.
            return Ok(Owner::Dangling);
        };
        match api.get_opt(&reference.name).await? {
            Some(obj) if obj.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
                let waiting = obj.metadata.deletion_timestamp.is_some()
                    && obj.finalizers().iter().any(|f| f == FOREGROUND);
                Ok(if waiting {
                    Owner::Waiting
                } else {
                    Owner::Solid
                })
            }
            _ => {
                let mut absent = self.absent.lock();
                if absent.len() >= ABSENT_REMEMBERED {
                    absent.clear();
                }
                absent.insert(reference.uid.clone());
                Ok(Owner::Dangling)
            }
        }
    }

    /// Kubernetes' `attemptToDeleteItem`: deletes the object if no owner
    /// of it is left (or, with owners left, drops references to those
    /// gone or deleting in the foreground).
    async fn attempt_to_delete(&self, id: &Identity) -> anyhow::Result<()> {
        let Some((api, latest)) = self.latest(id).await? else {
            return Ok(());
        };
        if latest.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let references = latest.owner_references().to_vec();
        if references.is_empty() {
            return Ok(());
        }
        let mut solid = 0;
        let mut remove = HashSet::new();
        let mut waiting = false;
        for reference in &references {
            match self.owner(id.namespace.as_deref(), reference).await? {
                Owner::Solid => solid += 1,
                Owner::Waiting => {
                    waiting = true;
                    remove.insert(reference.uid.clone());
                }
                Owner::Dangling => {
                    remove.insert(reference.uid.clone());
                }
            }
        }
        let rv = latest.resource_version();
        if solid > 0 {
            if remove.is_empty() {
                return Ok(());
            }
            let kept: Vec<_> = references
                .iter()
                .filter(|r| !remove.contains(&r.uid))
                .collect();
            let patch = json!({"metadata": {"resourceVersion": rv, "ownerReferences": kept}});
            return match api
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(e)
                    .with_context(|| format!("removing gone owners from {} {}", id.kind, id.name)),
            };
        }
        let has_dependents = !self.graph.lock().dependents(&id.uid).is_empty();
        let policy = if waiting && has_dependents {
            PropagationPolicy::Foreground
        } else if latest.finalizers().iter().any(|f| f == ORPHAN) {
            PropagationPolicy::Orphan
        } else if latest.finalizers().iter().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: rv,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&id.name, &params).await {
            Ok(_) => {
                tracing::info!(kind = %id.kind, namespace = ?id.namespace, name = %id.name, "garbage collected an object whose owners are gone");
                Ok(())
            }
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {} {}", id.kind, id.name)),
        }
    }

    /// Foreground deletion: the owner's dependents are deleted; once none
    /// blocking is left, its `foregroundDeletion` finalizer goes.
    async fn delete_dependents(&self, owner: &Identity) -> anyhow::Result<()> {
        let dependents = self.graph.lock().dependents(&owner.uid);
        let blocking: Vec<&Identity> = dependents
            .iter()
            .filter(|(_, blocks)| *blocks)
            .map(|(id, _)| id)
            .collect();
        if blocking.is_empty() {
            return self.remove_finalizer(owner, FOREGROUND).await;
        }
        // The dependents delete themselves (their owner is waiting); their
        // deletion events bring the owner back here.
        for (dependent, _) in &dependents {
            self.queue.add(dependent.uid.clone());
        }
        Ok(())
    }

    /// Orphaning: the reference to the owner is removed from every
    /// dependent, then the owner's `orphan` finalizer goes.
    async fn orphan_dependents(&self, owner: &Identity) -> anyhow::Result<()> {
        let dependents = self.graph.lock().dependents(&owner.uid);
        for (dependent, _) in dependents {
            let Some((api, latest)) = self.latest(&dependent).await? else {
                continue;
            };
            let references = latest.owner_references();
            if !references.iter().any(|r| r.uid == owner.uid) {
                continue;
            }
            let kept: Vec<_> = references.iter().filter(|r| r.uid != owner.uid).collect();
            let patch = json!({"metadata": {"resourceVersion": latest.resource_version(), "ownerReferences": kept}});
            match api
                .patch(
                    &dependent.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("orphaning {} {}", dependent.kind, dependent.name)
                    });
                }
            }
        }
        self.remove_finalizer(owner, ORPHAN).await
    }

    async fn remove_finalizer(&self, id: &Identity, finalizer: &str) -> anyhow::Result<()> {
        let Some((api, latest)) = self.latest(id).await? else {
            return Ok(());
        };
        let finalizers = latest.finalizers();
        if !finalizers.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
        // Skiff's API server deletes a Terminating namespace on the first
        // write leaving its metadata finalizers empty, even with its
        // `kubernetes` spec finalizer set: the last metadata finalizer
        // waits for the namespace controller.
        if id.kind == "Namespace"
            && rest.is_empty()
            && latest
                .data
                .pointer("/spec/finalizers")
                .and_then(|f| f.as_array())
                .is_some_and(|f| !f.is_empty())
        {
            return Ok(());
        }
        let patch =
            json!({"metadata": {"resourceVersion": latest.resource_version(), "finalizers": rest}});
        match api
            .patch(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(kind = %id.kind, namespace = ?id.namespace, name = %id.name, finalizer, "removed the garbage collector's finalizer");
                Ok(())
            }
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "removing the {finalizer} finalizer of {} {}",
                    id.kind, id.name
                )
            }),
        }
    }
}
