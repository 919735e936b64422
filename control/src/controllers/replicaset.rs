//! The ReplicaSet controller: keeps `spec.replicas` active pods matching
//! each ReplicaSet's selector, as Kubernetes' `replicaset-controller` does.
//!
//! Per ReplicaSet it claims pods (adopts matching orphans, releases owned
//! pods whose labels stopped matching), creates pods from the template in
//! slow-start batches (1, 2, 4, ...) or deletes the pods kube would delete
//! first (unscheduled, pending, not ready, newest: [`pods::deletion_order`]),
//! and writes the status counts. *Expectations* remember the pods it
//! created or deleted until its watch has seen them, so a lagging watch
//! never makes it create or delete twice.
//!
//! Begin with [`run`]. The pod helpers in [`pods`] are shared with the
//! Deployment controller.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{self, Action, trigger_with};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{applier, watcher};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use super::events::{Recorder, reference};
use super::{Clock, Context};

pub mod pods;

use pods::{Ranked, controller_of, controller_ref, is_active, selects};

/// The most pods one sync creates or deletes (kube's `BurstReplicas`).
const BURST_REPLICAS: usize = 500;

/// How long an unmet expectation blocks syncing before it is presumed lost
/// (a missed watch event must not wedge a ReplicaSet forever; kube: 5 min).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

/// What can fail in one sync of a ReplicaSet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was being done ("creating a pod for default/web").
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The caches were never filled (the watch task stopped).
    #[error("the pod or replicaset cache was dropped before it was filled")]
    CacheDropped,
}

impl Error {
    fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }

    /// Whether this is an optimistic-concurrency conflict (retry quietly).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// What one ReplicaSet is waiting to see in its watch.
#[derive(Debug, Default)]
struct Expectation {
    /// Names of pods created and not yet seen.
    creates: HashSet<String>,
    /// UIDs of pods deleted and not yet seen gone (or terminating).
    deletes: HashSet<String>,
    /// Names seen while a create batch was in flight (the watch may beat
    /// the create's response).
    seen_early: HashSet<String>,
    creating: bool,
    since: Option<Instant>,
}

struct Controller {
    client: kube::Client,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    resync: Duration,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Mutex<HashMap<String, Expectation>>,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the ReplicaSet controller until the task is aborted; returns an
/// error only if its watches end.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let (sets, sets_writer) = reflector::store::<ReplicaSet>();
    let pods = ctx.informers.store::<Pod>();
    let controller = Arc::new(Controller {
        client: ctx.client.clone(),
        clock: ctx.clock.clone(),
        recorder: ctx.recorder("replicaset-controller"),
        resync: ctx.options.resync,
        sets: sets.clone(),
        pods,
        expectations: Mutex::default(),
        failures: Mutex::default(),
    });
    let set_events = reflector::reflector(sets_writer, ctx.informers.watch::<ReplicaSet>());
    let pod_events = ctx.informers.events::<Pod>().map(Ok::<_, watcher::Error>);
    let c = controller.clone();
    let set_triggers = trigger_with(set_events, move |event| c.set_event(event));
    let c = controller.clone();
    let pod_triggers = trigger_with(pod_events, move |event| c.pod_event(event));
    let queue = futures::stream::select(set_triggers, pod_triggers);
    applier(
        |rs, c: Arc<Controller>| Box::pin(async move { c.reconcile_logged(rs).await }),
        |rs, error, c| c.error_policy(&rs, error),
        controller,
        sets,
        queue,
        controller::Config::default(),
    )
    .for_each(|result| async move { log_result(result) })
    .await;
    anyhow::bail!("the replicaset controller's watches ended")
}

/// Logs what the applier reports: reconcile errors (conflicts quietly),
/// watch errors, objects gone before their turn.
pub(crate) fn log_result<K, E: std::error::Error, Q: std::error::Error>(
    result: Result<(ObjectRef<K>, Action), controller::Error<E, Q>>,
) where
    K: kube::Resource,
{
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(object)) => {
            tracing::trace!(%object, "object gone before its reconcile");
        }
        Err(controller::Error::ReconcilerFailed(error, object)) => {
            tracing::debug!(%object, error = %error, "sync failed; will retry");
        }
        Err(error) => tracing::warn!(error = %error, "watch error"),
    }
}

/// The retry delay after `failures` consecutive failures: 100 ms doubling,
/// at most 30 s (kube's per-item rate limiter, coarser).
pub(crate) fn backoff(failures: u32) -> Duration {
    let factor = 1u64 << failures.min(9);
    Duration::from_millis(100 * factor).min(Duration::from_secs(30))
}

impl Controller {
    fn set_event(&self, event: watcher::Event<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
        match event {
            watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                vec![ObjectRef::from_obj(&rs)]
            }
            watcher::Event::Delete(rs) => {
                if let Some(uid) = rs.uid() {
                    self.expectations.lock().remove(&uid);
                    self.failures.lock().remove(&uid);
                }
                Vec::new()
            }
            watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
        }
    }

    /// Maps a pod event to the ReplicaSets to sync, recording what the
    /// expectations were waiting for.
    fn pod_event(&self, event: watcher::Event<Arc<Pod>>) -> Vec<ObjectRef<ReplicaSet>> {
        let (pod, deleted) = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => (pod, false),
            watcher::Event::Delete(pod) => (pod, true),
            watcher::Event::Init | watcher::Event::InitDone => return Vec::new(),
        };
        let namespace = pod.namespace().unwrap_or_default();
        if let Some(owner) = controller_of(&pod.metadata) {
            if owner.kind != "ReplicaSet" || !owner.api_version.starts_with("apps/") {
                return Vec::new();
            }
            self.observe(&owner.uid, &pod, deleted);
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            return Vec::new();
        }
        // An orphan: every ReplicaSet that could adopt it.
        self.sets
            .state()
            .iter()
            .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|rs| selector_of(rs).is_some_and(|s| selects(&s, pod.metadata.labels.as_ref())))
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect()
    }

    fn observe(&self, owner_uid: &str, pod: &Pod, deleted: bool) {
        let mut all = self.expectations.lock();
        let Some(exp) = all.get_mut(owner_uid) else {
            return;
        };
        let name = pod.name_any();
        if !exp.creates.remove(&name) && exp.creating {
            exp.seen_early.insert(name);
        }
        if (deleted || pod.metadata.deletion_timestamp.is_some())
            && let Some(uid) = pod.uid()
        {
            exp.deletes.remove(&uid);
        }
    }

    /// Whether the ReplicaSet with `uid` may act: every pod it created or
    /// deleted has been seen (checked against the cache too, in case an
    /// event was coalesced away), or the expectation expired.
    fn expectations_satisfied(&self, uid: &str, namespace: &str) -> bool {
        let mut all = self.expectations.lock();
        let Some(exp) = all.get_mut(uid) else {
            return true;
        };
        exp.creates.retain(|name| {
            self.pods
                .get(&ObjectRef::new(name).within(namespace))
                .is_none()
        });
        if !exp.deletes.is_empty() {
            let present: HashSet<String> = self
                .pods
                .state()
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.uid())
                .collect();
            exp.deletes.retain(|uid| present.contains(uid));
        }
        let expired = exp.since.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL);
        if (exp.creates.is_empty() && exp.deletes.is_empty()) || expired {
            all.remove(uid);
            return true;
        }
        false
    }

    fn error_policy(&self, rs: &ReplicaSet, error: &Error) -> Action {
        let key = rs.uid().unwrap_or_default();
        let mut failures = self.failures.lock();
        let count = failures.entry(key).or_insert(0);
        *count += 1;
        if !error.is_conflict() {
            tracing::warn!(replicaset = %rs.name_any(), %error, "sync failed");
        }
        Action::requeue(backoff(*count))
    }

    async fn reconcile_logged(&self, rs: Arc<ReplicaSet>) -> Result<Action, Error> {
        let action = self.reconcile(&rs).await?;
        self.failures.lock().remove(&rs.uid().unwrap_or_default());
        Ok(action)
    }

    async fn reconcile(&self, rs: &ReplicaSet) -> Result<Action, Error> {
        self.pods
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheDropped)?;
        let namespace = rs.namespace().unwrap_or_default();
        let uid = rs.uid().unwrap_or_default();
        let Some(selector) = selector_of(rs) else {
            self.recorder
                .warning(
                    &reference(rs),
                    "InvalidSelector",
                    "the ReplicaSet's selector cannot be parsed",
                )
                .await;
            return Ok(Action::await_change());
        };
        let satisfied = self.expectations_satisfied(&uid, &namespace);
        let candidates: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && is_active(p))
            .collect();
        let owned = self.claim(rs, &selector, candidates).await?;

        let mut manage_error = None;
        if satisfied && rs.metadata.deletion_timestamp.is_none() {
            manage_error = self.manage(rs, &owned).await.err();
        }
        let now = self.clock.now();
        let status = calculate_status(rs, &owned, manage_error.as_ref(), now);
        self.update_status(rs, status).await?;
        if let Some(error) = manage_error {
            return Err(error);
        }
        // Come back when a ready pod becomes available (minReadySeconds).
        let min_ready = spec_of(rs).min_ready_seconds.unwrap_or(0);
        let wait = owned
            .iter()
            .filter_map(|p| pods::available_in(p, min_ready, now))
            .filter(|d| !d.is_zero())
            .min();
        Ok(Action::requeue(
            wait.unwrap_or(self.resync).min(self.resync),
        ))
    }

    /// kube's `ClaimPods`: the active pods this ReplicaSet controls, after
    /// adopting matching orphans and releasing owned pods that no longer
    /// match.
    async fn claim(
        &self,
        rs: &ReplicaSet,
        selector: &Selector,
        candidates: Vec<Arc<Pod>>,
    ) -> Result<Vec<Arc<Pod>>, Error> {
        let uid = rs.uid().unwrap_or_default();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        let mut can_adopt = None;
        for pod in candidates {
            let matches = selects(selector, pod.metadata.labels.as_ref());
            match controller_of(&pod.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        self.release(rs, &pod).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if can_adopt.is_none() {
                        can_adopt = Some(self.can_adopt(rs).await?);
                    }
                    if can_adopt == Some(true)
                        && let Some(adopted) = self.adopt(rs, &pod).await?
                    {
                        owned.push(Arc::new(adopted));
                    }
                }
            }
        }
        Ok(owned)
    }

    /// A fresh read: adopt only for a ReplicaSet that still exists with the
    /// same uid and is not being deleted.
    async fn can_adopt(&self, rs: &ReplicaSet) -> Result<bool, Error> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        let fresh = api
            .get_opt(&rs.name_any())
            .await
            .map_err(Error::api(format!("reading replicaset {}", rs.name_any())))?;
        Ok(fresh.is_some_and(|f| f.uid() == rs.uid() && f.metadata.deletion_timestamp.is_none()))
    }

    async fn adopt(&self, rs: &ReplicaSet, pod: &Pod) -> Result<Option<Pod>, Error> {
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
        self.patch_owners(pod, json!(refs)).await
    }

    async fn release(&self, rs: &ReplicaSet, pod: &Pod) -> Result<(), Error> {
        let uid = rs.uid();
        let refs: Vec<_> = pod
            .owner_references()
            .iter()
            .filter(|r| Some(&r.uid) != uid.as_ref())
            .cloned()
            .collect();
        let refs = if refs.is_empty() {
            serde_json::Value::Null
        } else {
            json!(refs)
        };
        self.patch_owners(pod, refs).await.map(drop)
    }

    /// Sets a pod's ownerReferences, on the condition that the pod is still
    /// the one we looked at (uid and resourceVersion). A pod that changed or
    /// vanished is left for the next sync (`None`).
    async fn patch_owners(&self, pod: &Pod, refs: serde_json::Value) -> Result<Option<Pod>, Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "uid": pod.uid(),
            "resourceVersion": pod.resource_version(),
        }});
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(pod) => Ok(Some(pod)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(e) => Err(Error::api(format!(
                "patching the owners of pod {}",
                pod.name_any()
            ))(e)),
        }
    }

    /// Creates or deletes pods so the ReplicaSet has `spec.replicas`.
    async fn manage(&self, rs: &ReplicaSet, owned: &[Arc<Pod>]) -> Result<(), Error> {
        let want = usize::try_from(spec_of(rs).replicas.unwrap_or(1).max(0)).unwrap_or(0);
        let uid = rs.uid().unwrap_or_default();
        if owned.len() < want {
            let count = (want - owned.len()).min(BURST_REPLICAS);
            {
                let mut all = self.expectations.lock();
                let exp = all.entry(uid.clone()).or_default();
                exp.creating = true;
                exp.since = Some(Instant::now());
            }
            let result = self.create_pods(rs, &uid, count).await;
            if let Some(exp) = self.expectations.lock().get_mut(&uid) {
                exp.creating = false;
                exp.seen_early.clear();
            }
            result
        } else if owned.len() > want {
            let count = (owned.len() - want).min(BURST_REPLICAS);
            let victims = self.pods_to_delete(rs, owned, count);
            {
                let mut all = self.expectations.lock();
                let exp = all.entry(uid.clone()).or_default();
                exp.since = Some(Instant::now());
                exp.deletes.extend(victims.iter().filter_map(|p| p.uid()));
            }
            let results =
                futures::future::join_all(victims.iter().map(|pod| self.delete_pod(rs, pod))).await;
            let mut first_error = None;
            for (pod, result) in victims.iter().zip(results) {
                if let Err(error) = result {
                    if let (Some(exp), Some(pod_uid)) =
                        (self.expectations.lock().get_mut(&uid), pod.uid())
                    {
                        exp.deletes.remove(&pod_uid);
                    }
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        } else {
            Ok(())
        }
    }

    /// kube's `slowStartBatch`: create 1, then 2, 4, ... pods at once,
    /// stopping at the first batch with a failure (a quota or admission
    /// error would fail every one of a large burst).
    async fn create_pods(&self, rs: &ReplicaSet, uid: &str, count: usize) -> Result<(), Error> {
        let mut remaining = count;
        let mut batch = 1;
        while remaining > 0 {
            let size = batch.min(remaining);
            let results = futures::future::join_all((0..size).map(|_| self.create_pod(rs))).await;
            let mut first_error = None;
            for result in results {
                match result {
                    Ok(name) => {
                        let mut all = self.expectations.lock();
                        if let Some(exp) = all.get_mut(uid)
                            && !exp.seen_early.remove(&name)
                        {
                            exp.creates.insert(name);
                        }
                    }
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
            remaining -= size;
            batch *= 2;
        }
        Ok(())
    }

    async fn create_pod(&self, rs: &ReplicaSet) -> Result<String, Error> {
        let namespace = rs.namespace().unwrap_or_default();
        let pod = pod_from_template(rs);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let name = created.name_any();
                self.recorder
                    .normal(
                        &reference(rs),
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                    )
                    .await;
                Ok(name)
            }
            Err(error) => {
                self.recorder
                    .warning(
                        &reference(rs),
                        "FailedCreate",
                        &format!("Error creating: {error}"),
                    )
                    .await;
                Err(Error::api(format!(
                    "creating a pod for {namespace}/{}",
                    rs.name_any()
                ))(error))
            }
        }
    }

    async fn delete_pod(&self, rs: &ReplicaSet, pod: &Pod) -> Result<(), Error> {
        let name = pod.name_any();
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            preconditions: pod.uid().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                self.recorder
                    .normal(
                        &reference(rs),
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await;
                Ok(())
            }
            // Already gone (or replaced by a namesake): nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(error) => {
                self.recorder
                    .warning(
                        &reference(rs),
                        "FailedDelete",
                        &format!("Error deleting: {error}"),
                    )
                    .await;
                Err(Error::api(format!("deleting pod {name}"))(error))
            }
        }
    }

    /// The `count` pods kube would delete first. Pods are ranked by how
    /// many pods of the same workload (this ReplicaSet and its siblings
    /// under the same Deployment) share their node.
    fn pods_to_delete(&self, rs: &ReplicaSet, owned: &[Arc<Pod>], count: usize) -> Vec<Arc<Pod>> {
        let namespace = rs.namespace();
        let owner = controller_of(&rs.metadata).map(|r| r.uid.clone());
        let mut related_sets: HashSet<String> = rs.uid().into_iter().collect();
        if let Some(owner) = owner {
            related_sets.extend(
                self.sets
                    .state()
                    .iter()
                    .filter(|s| s.namespace() == namespace)
                    .filter(|s| controller_of(&s.metadata).map(|r| &r.uid) == Some(&owner))
                    .filter_map(|s| s.uid()),
            );
        }
        let mut on_node: HashMap<String, usize> = HashMap::new();
        for pod in self.pods.state() {
            if pod.namespace() == namespace
                && is_active(&pod)
                && controller_of(&pod.metadata).is_some_and(|r| related_sets.contains(&r.uid))
            {
                *on_node.entry(node_of(&pod)).or_default() += 1;
            }
        }
        let mut ranked: Vec<Ranked<'_>> = owned
            .iter()
            .map(|pod| Ranked {
                pod,
                rank: on_node.get(&node_of(pod)).copied().unwrap_or(0),
            })
            .collect();
        ranked.sort_by(pods::deletion_order);
        let chosen: HashSet<Option<String>> =
            ranked.iter().take(count).map(|r| r.pod.uid()).collect();
        owned
            .iter()
            .filter(|p| chosen.contains(&p.uid()))
            .cloned()
            .collect()
    }

    async fn update_status(&self, rs: &ReplicaSet, status: ReplicaSetStatus) -> Result<(), Error> {
        let current = rs.status.clone().unwrap_or_default();
        if same_status(&current, &status) {
            return Ok(());
        }
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        let patch = json!({"status": {
            "replicas": status.replicas,
            "fullyLabeledReplicas": status.fully_labeled_replicas,
            "readyReplicas": status.ready_replicas,
            "availableReplicas": status.available_replicas,
            "observedGeneration": status.observed_generation,
            "conditions": status.conditions,
        }});
        match api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::api(format!(
                "updating the status of replicaset {}",
                rs.name_any()
            ))(e)),
        }
    }
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn spec_of(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetSpec {
    rs.spec.clone().unwrap_or_default()
}

/// The ReplicaSet's selector, `None` when it cannot be parsed.
pub(crate) fn selector_of(rs: &ReplicaSet) -> Option<Selector> {
    Selector::try_from(rs.spec.as_ref()?.selector.clone()).ok()
}

/// A new pod from the ReplicaSet's template (kube's `GetPodFromTemplate`):
/// `generateName: <rs>-`, the template's labels, annotations and spec, and a
/// controller reference to the ReplicaSet.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let prefix = format!("{}-", rs.name_any());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The status kube's `calculateStatus` would write, from the pods the
/// ReplicaSet controls (`owned`, as they were before this sync acted).
pub fn calculate_status(
    rs: &ReplicaSet,
    owned: &[Arc<Pod>],
    manage_error: Option<&Error>,
    now: jiff::Timestamp,
) -> ReplicaSetStatus {
    let spec = spec_of(rs);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let has_failure = conditions.iter().any(|c| c.type_ == "ReplicaFailure");
    match manage_error {
        Some(error) if !has_failure => {
            let want = spec.replicas.unwrap_or(1);
            let reason = if (owned.len() as i64) < i64::from(want) {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(error.to_string()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| pods::fully_labeled(p, spec.template.as_ref()))),
        ready_replicas: Some(count(&pods::is_ready)),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

fn same_status(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    a.replicas == b.replicas
        && n(a.fully_labeled_replicas) == n(b.fully_labeled_replicas)
        && n(a.ready_replicas) == n(b.ready_replicas)
        && n(a.available_replicas) == n(b.available_replicas)
        && a.observed_generation == b.observed_generation
        && a.conditions.as_deref().unwrap_or_default()
            == b.conditions.as_deref().unwrap_or_default()
}
