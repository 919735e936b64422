//! The namespace controller: a deleted namespace (phase Terminating, its
//! `kubernetes` spec finalizer still set) has everything in it deleted,
//! every namespaced type the API server serves; once nothing is left the
//! controller removes the `kubernetes` finalizer and the namespace goes.
//!
//! Deleting content is idempotent and retried: pods on nodes wait for
//! their agents, objects with finalizers for whoever owns the finalizer, so
//! a namespace may stay Terminating a while; it is examined again with a
//! backoff until empty.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_api::resources::RESOURCES;
use tokio::task::JoinSet;

use super::Context;
use super::gc::informer::{api_resource, is_status, reflect};
use super::gc::queue::WorkQueue;

/// The spec finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// How many namespaces are emptied at once (Kubernetes' default
/// `--concurrent-namespace-syncs` is 10; deleting content is API-heavy).
const WORKERS: usize = 4;

/// How soon a namespace with content left is examined again: first
/// quickly (most content goes at once), then backing off to a few seconds
/// (pods waiting out their grace period, objects held by finalizers).
fn recheck_delay(attempt: u32) -> Duration {
    (Duration::from_millis(200) * 2u32.saturating_pow(attempt.min(8))).min(Duration::from_secs(5))
}

struct State {
    ctx: Context,
    namespaces: Store<Namespace>,
    queue: WorkQueue<String>,
    attempts: parking_lot::Mutex<HashMap<String, u32>>,
}

/// Runs the namespace controller until aborted.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let (namespaces, writer) = reflector::store::<Namespace>();
    let state = Arc::new(State {
        ctx,
        namespaces,
        queue: WorkQueue::default(),
        attempts: parking_lot::Mutex::default(),
    });
    let mut tasks = JoinSet::new();
    let s = state.clone();
    let stream = reflect(state.ctx.informers.watch::<Namespace>(), writer);
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) = &event
                    && ns.metadata.deletion_timestamp.is_some()
                {
                    s.queue.add(ns.name_any());
                }
                std::future::ready(())
            })
            .await;
    });
    state
        .namespaces
        .wait_until_ready()
        .await
        .context("the namespace cache closed before it filled")?;
    for _ in 0..WORKERS {
        let s = state.clone();
        tasks.spawn(async move {
            loop {
                let name = s.queue.next().await;
                match s.sync(&name).await {
                    Ok(true) => {
                        s.attempts.lock().remove(&name);
                        s.queue.forget(&name);
                    }
                    Ok(false) => {
                        let attempt = {
                            let mut attempts = s.attempts.lock();
                            let a = attempts.entry(name.clone()).or_insert(0);
                            *a = a.saturating_add(1);
                            *a
                        };
                        s.queue.add_after(name.clone(), recheck_delay(attempt));
                    }
                    Err(error) => {
                        tracing::warn!(namespace = %name, error = %format!("{error:#}"), "cannot finish deleting the namespace; retrying");
                        s.queue.retry(name.clone());
                    }
                }
                s.queue.done(&name);
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
            for ns in s.namespaces.state() {
                if ns.metadata.deletion_timestamp.is_some() {
                    s.queue.add(ns.name_any());
                }
            }
        }
    });
    match tasks.join_next().await {
        Some(Err(error)) => Err(error).context("a namespace controller task failed"),
        _ => anyhow::bail!("a namespace controller task ended"),
    }
}

impl State {
    /// One step of deleting namespace `name`: `Ok(true)` when finished (or
    /// nothing to do), `Ok(false)` when content remains.
    async fn sync(&self, name: &str) -> anyhow::Result<bool> {
        let Some(ns) = self.namespaces.get(&ObjectRef::new(name)) else {
            return Ok(true);
        };
        if ns.metadata.deletion_timestamp.is_none() || !has_finalizer(&ns) {
            return Ok(true);
        }
        let mut remaining = Vec::new();
        let mut failures = Vec::new();
        for rt in RESOURCES.iter().filter(|rt| rt.namespaced()) {
            match self.delete_content(name, rt).await {
                Ok(true) => {}
                Ok(false) => remaining.push(rt.plural),
                Err(error) => failures.push(format!("{}: {error}", rt.plural)),
            }
        }
        if !failures.is_empty() {
            anyhow::bail!(
                "failed to delete all resource types: {}",
                failures.join("; ")
            );
        }
        if !remaining.is_empty() {
            tracing::debug!(namespace = name, ?remaining, "namespace content remains");
            return Ok(false);
        }
        self.finalize(&ns).await?;
        tracing::info!(namespace = name, "namespace emptied and finalized");
        Ok(true)
    }

    /// Deletes every object of type `rt` in namespace `ns`; whether none is
    /// left afterwards.
    async fn delete_content(&self, ns: &str, rt: &skiff_api::ResourceType) -> kube::Result<bool> {
        let ar = api_resource(rt);
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, &ar);
        let probe = ListParams::default().limit(1);
        if api.list(&probe).await?.items.is_empty() {
            return Ok(true);
        }
        api.delete_collection(&DeleteParams::background(), &ListParams::default())
            .await?;
        Ok(api.list(&probe).await?.items.is_empty())
    }

    /// Removes the `kubernetes` finalizer, through `namespaces/NAME/finalize`
    /// as Kubernetes does, or, where the server lacks that subresource, by
    /// updating `spec.finalizers` (Skiff's API server deletes a
    /// Terminating namespace on the first write leaving its metadata
    /// finalizers empty).
    async fn finalize(&self, ns: &Namespace) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        let name = ns.name_any();
        let rest: Vec<String> = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        let mut finalized = ns.clone();
        finalized
            .spec
            .get_or_insert_with(Default::default)
            .finalizers = Some(rest.clone());
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 405) => {}
            Err(e) => return Err(e).context("finalizing the namespace"),
        }
        let patch = json!({
            "metadata": {"resourceVersion": ns.resource_version()},
            "spec": {"finalizers": rest},
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e).context("removing the namespace's kubernetes finalizer"),
        }
    }
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}
