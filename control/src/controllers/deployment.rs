//! The Deployment controller: rolls a Deployment's pods from one template
//! to the next through ReplicaSets, as Kubernetes' `deployment-controller`
//! does.
//!
//! Each template gets a ReplicaSet named `<deployment>-<hash>` whose
//! selector, template and pods carry `pod-template-hash: <hash>`
//! ([`util::template_hash`]). A RollingUpdate grows the new ReplicaSet
//! while the pods stay within `replicas + maxSurge` and shrinks old ones
//! while at least `replicas - maxUnavailable` stay available; Recreate
//! scales the old ones to zero, waits for their pods to go, then scales
//! the new one up. Revisions (`deployment.kubernetes.io/revision`) count
//! rollouts; rolling back to an old template (`kubectl rollout undo`)
//! reuses its ReplicaSet and gives it the next revision. The status
//! (`kubectl rollout status`) carries the replica counts and the
//! `Available` and `Progressing` conditions with kube's reasons,
//! including `ProgressDeadlineExceeded`. Paused Deployments do not roll
//! but still scale (proportionally across ReplicaSets mid-rollout).
//!
//! Begin with [`run`]; the arithmetic lives in [`util`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{self, Action, trigger_with};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{applier, watcher};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use super::events::{Recorder, reference};
use super::replicaset::pods::{controller_of, controller_ref, selects};
use super::replicaset::{backoff, log_result};
use super::{Clock, Context};

pub mod util;

use util::{reason, rs_replicas};

/// What can fail in one sync of a Deployment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} failed: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The new ReplicaSet's name is taken by one with another template;
    /// `status.collisionCount` was raised so the next try hashes anew.
    #[error("replicaset {0} exists with a different template (hash collision)")]
    HashCollision(String),
    /// The caches were never filled (the watch task stopped).
    #[error("a cache was dropped before it was filled")]
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

type Result<T, E = Error> = std::result::Result<T, E>;

struct Controller {
    client: kube::Client,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    resync: Duration,
    deployments: Store<Deployment>,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the Deployment controller until the task is aborted; returns an
/// error only if its watches end.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let (deployments, deployments_writer) = reflector::store::<Deployment>();
    let (sets, sets_writer) = reflector::store::<ReplicaSet>();
    let pods = ctx.informers.store::<Pod>();
    let controller = Arc::new(Controller {
        client: ctx.client.clone(),
        clock: ctx.clock.clone(),
        recorder: ctx.recorder("deployment-controller"),
        resync: ctx.options.resync,
        deployments: deployments.clone(),
        sets,
        pods,
        failures: Mutex::default(),
    });
    let deployment_events =
        reflector::reflector(deployments_writer, ctx.informers.watch::<Deployment>());
    let set_events = reflector::reflector(sets_writer, ctx.informers.watch::<ReplicaSet>());
    let pod_events = ctx.informers.events::<Pod>().map(Ok::<_, watcher::Error>);
    let c = controller.clone();
    let deployment_triggers = trigger_with(deployment_events, move |event| match event {
        watcher::Event::Apply(d) | watcher::Event::InitApply(d) => vec![ObjectRef::from_obj(&d)],
        watcher::Event::Delete(d) => {
            c.failures.lock().remove(&d.uid().unwrap_or_default());
            Vec::new()
        }
        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
    });
    let c = controller.clone();
    let set_triggers = trigger_with(set_events, move |event| c.set_event(event));
    let c = controller.clone();
    let pod_triggers = trigger_with(pod_events, move |event| c.pod_event(event));
    let queue = futures::stream::select(
        deployment_triggers,
        futures::stream::select(set_triggers, pod_triggers),
    );
    applier(
        |d, c: Arc<Controller>| Box::pin(async move { c.reconcile_logged(d).await }),
        |d, error, c| c.error_policy(&d, error),
        controller,
        deployments,
        queue,
        controller::Config::default(),
    )
    .for_each(|result| async move { log_result(result) })
    .await;
    anyhow::bail!("the deployment controller's watches ended")
}

fn selector_of(d: &Deployment) -> Option<Selector> {
    Selector::try_from(d.spec.as_ref()?.selector.clone()).ok()
}

fn owner_is_deployment(meta: &ObjectMeta) -> Option<(&str, &str)> {
    controller_of(meta)
        .filter(|r| r.kind == "Deployment" && r.api_version.starts_with("apps/"))
        .map(|r| (r.name.as_str(), r.uid.as_str()))
}

fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

fn status_of(d: &Deployment) -> DeploymentStatus {
    d.status.clone().unwrap_or_default()
}

impl Controller {
    /// A ReplicaSet changed: sync its Deployment, or every Deployment that
    /// could adopt it.
    fn set_event(&self, event: watcher::Event<ReplicaSet>) -> Vec<ObjectRef<Deployment>> {
        let (rs, deleted) = match event {
            watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => (rs, false),
            watcher::Event::Delete(rs) => (rs, true),
            watcher::Event::Init | watcher::Event::InitDone => return Vec::new(),
        };
        let namespace = rs.namespace().unwrap_or_default();
        if controller_of(&rs.metadata).is_some() {
            // Controlled: only its own Deployment (if a Deployment) cares.
            return owner_is_deployment(&rs.metadata)
                .map(|(name, _)| ObjectRef::new(name).within(&namespace))
                .into_iter()
                .collect();
        }
        if deleted {
            return Vec::new();
        }
        self.deployments
            .state()
            .iter()
            .filter(|d| d.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|d| selector_of(d).is_some_and(|s| selects(&s, rs.metadata.labels.as_ref())))
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    }

    /// A pod went away: a Recreate rollout may be waiting for exactly that.
    fn pod_event(&self, event: watcher::Event<Arc<Pod>>) -> Vec<ObjectRef<Deployment>> {
        let watcher::Event::Delete(pod) = event else {
            return Vec::new();
        };
        let namespace = pod.namespace().unwrap_or_default();
        let Some(owner) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else {
            return Vec::new();
        };
        self.sets
            .get(&ObjectRef::new(&owner.name).within(&namespace))
            .and_then(|rs| {
                owner_is_deployment(&rs.metadata)
                    .map(|(name, _)| ObjectRef::new(name).within(&namespace))
            })
            .into_iter()
            .collect()
    }

    fn error_policy(&self, d: &Deployment, error: &Error) -> Action {
        let mut failures = self.failures.lock();
        let count = failures.entry(d.uid().unwrap_or_default()).or_insert(0);
        *count += 1;
        if !error.is_conflict() {
            tracing::warn!(deployment = %d.name_any(), %error, "sync failed");
        }
        Action::requeue(backoff(*count))
    }

    async fn reconcile_logged(&self, d: Arc<Deployment>) -> Result<Action> {
        let action = self.reconcile((*d).clone()).await?;
        self.failures.lock().remove(&d.uid().unwrap_or_default());
        Ok(action)
    }

    async fn reconcile(&self, mut d: Deployment) -> Result<Action> {
        self.sets
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheDropped)?;
        self.pods
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheDropped)?;
        let Some(selector) = selector_of(&d) else {
            self.recorder
                .warning(
                    &reference(&d),
                    "InvalidSelector",
                    "the Deployment's selector cannot be parsed",
                )
                .await;
            return Ok(Action::await_change());
        };
        if selector.selects_all() {
            self.recorder
                .warning(
                    &reference(&d),
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required.",
                )
                .await;
            let mut status = status_of(&d);
            if status.observed_generation < d.metadata.generation {
                status.observed_generation = d.metadata.generation;
                self.update_status(&mut d, status).await?;
            }
            return Ok(Action::await_change());
        }
        let mut sets = self.claim(&d, &selector).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let new = util::find_new(&d, &sets).map(|rs| rs.uid());
            let new = new.and_then(|uid| sets.iter().position(|s| s.uid() == uid));
            self.sync_status(&mut d, &sets, new).await?;
            return Ok(Action::requeue(self.resync));
        }
        self.check_paused_conditions(&mut d).await?;
        if is_paused(&d) {
            return self.sync(&mut d, &mut sets).await;
        }
        if self.is_scaling_event(&mut d, &mut sets).await? {
            return self.sync(&mut d, &mut sets).await;
        }
        if util::is_rolling(&d) {
            self.rollout_rolling(&mut d, &mut sets).await
        } else {
            self.rollout_recreate(&mut d, &mut sets).await
        }
    }

    /// kube's `ClaimReplicaSets`: the ReplicaSets this Deployment controls,
    /// after adopting matching orphans and releasing ones that stopped
    /// matching.
    async fn claim(&self, d: &Deployment, selector: &Selector) -> Result<Vec<ReplicaSet>> {
        let namespace = d.namespace();
        let uid = d.uid().unwrap_or_default();
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        let mut can_adopt = None;
        let mut candidates: Vec<Arc<ReplicaSet>> = self
            .sets
            .state()
            .into_iter()
            .filter(|rs| rs.namespace() == namespace)
            .collect();
        candidates.sort_by(|a, b| util::by_creation(a, b));
        for rs in candidates {
            let matches = selects(selector, rs.metadata.labels.as_ref());
            match controller_of(&rs.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        owned.push((*rs).clone());
                    } else if !deleting {
                        let refs: Vec<_> = rs
                            .owner_references()
                            .iter()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        let refs = if refs.is_empty() {
                            serde_json::Value::Null
                        } else {
                            json!(refs)
                        };
                        self.patch_owners(&rs, refs).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || rs.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if can_adopt.is_none() {
                        let api: Api<Deployment> = Api::namespaced(
                            self.client.clone(),
                            &namespace.clone().unwrap_or_default(),
                        );
                        let fresh = api
                            .get_opt(&d.name_any())
                            .await
                            .map_err(Error::api(format!("reading deployment {}", d.name_any())))?;
                        can_adopt = Some(fresh.is_some_and(|f| {
                            f.uid() == d.uid() && f.metadata.deletion_timestamp.is_none()
                        }));
                    }
                    if can_adopt == Some(true) {
                        let mut refs = rs.owner_references().to_vec();
                        refs.push(controller_ref("apps/v1", "Deployment", &d.metadata));
                        if let Some(adopted) = self.patch_owners(&rs, json!(refs)).await? {
                            owned.push(adopted);
                        }
                    }
                }
            }
        }
        Ok(owned)
    }

    async fn patch_owners(
        &self,
        rs: &ReplicaSet,
        refs: serde_json::Value,
    ) -> Result<Option<ReplicaSet>> {
        let api = self.sets_api(rs);
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "uid": rs.uid(),
            "resourceVersion": rs.resource_version(),
        }});
        match api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(rs) => Ok(Some(rs)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(e) => Err(Error::api(format!(
                "patching the owners of replicaset {}",
                rs.name_any()
            ))(e)),
        }
    }

    fn sets_api(&self, rs: &ReplicaSet) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default())
    }

    fn deployments_api(&self, d: &Deployment) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default())
    }

    /// Writes the Deployment's status (on the condition that the
    /// Deployment is the one we read), and keeps `d` current.
    async fn update_status(&self, d: &mut Deployment, status: DeploymentStatus) -> Result<()> {
        let mut copy = d.clone();
        copy.status = Some(status);
        *d = self
            .deployments_api(d)
            .replace_status(&d.name_any(), &PostParams::default(), &copy)
            .await
            .map_err(Error::api(format!(
                "updating the status of deployment {}",
                d.name_any()
            )))?;
        Ok(())
    }

    /// Sets the Deployment's revision annotation (kube's
    /// `SetDeploymentRevision`).
    async fn set_deployment_revision(&self, d: &mut Deployment, revision: &str) -> Result<()> {
        let current = d.annotations().get(util::REVISION).map(String::as_str);
        if current == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "annotations": {util::REVISION: revision},
            "resourceVersion": d.resource_version(),
        }});
        *d = self
            .deployments_api(d)
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::api(format!(
                "annotating deployment {}",
                d.name_any()
            )))?;
        Ok(())
    }

    async fn replace_rs(&self, rs: &ReplicaSet) -> Result<ReplicaSet> {
        self.sets_api(rs)
            .replace(&rs.name_any(), &PostParams::default(), rs)
            .await
            .map_err(Error::api(format!("updating replicaset {}", rs.name_any())))
    }

    /// kube's `checkPausedConditions`: records pausing and resuming in the
    /// Progressing condition (so the deadline does not run while paused).
    async fn check_paused_conditions(&self, d: &mut Deployment) -> Result<()> {
        if !util::has_progress_deadline(d) {
            return Ok(());
        }
        let mut status = status_of(d);
        let paused_recorded = util::condition(&status, reason::PROGRESSING)
            .is_some_and(|c| c.reason.as_deref() == Some(reason::PAUSED));
        let now = self.clock.now();
        let condition = if is_paused(d) && !paused_recorded {
            util::new_condition(
                reason::PROGRESSING,
                "Unknown",
                reason::PAUSED,
                "Deployment is paused".into(),
                now,
            )
        } else if !is_paused(d) && paused_recorded {
            util::new_condition(
                reason::PROGRESSING,
                "Unknown",
                reason::RESUMED,
                "Deployment is resumed".into(),
                now,
            )
        } else {
            return Ok(());
        };
        util::set_condition(&mut status, condition);
        self.update_status(d, status).await
    }

    /// kube's `getAllReplicaSetsAndSyncRevision` / `getNewReplicaSet`: the
    /// index of the ReplicaSet for the current template, after bringing its
    /// revision up to date (a rollback bumps an old RS's revision); creates
    /// it when `create` and there is none.
    async fn new_replica_set(
        &self,
        d: &mut Deployment,
        sets: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<Option<usize>> {
        let new_uid = util::find_new(d, sets).and_then(|rs| rs.uid());
        let new = new_uid.and_then(|uid| sets.iter().position(|s| s.uid() == Some(uid.clone())));
        let max_old_revision = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, rs)| util::revision(rs))
            .max()
            .unwrap_or(0);
        let new_revision = max_old_revision + 1;
        let spec = d.spec.clone().unwrap_or_default();
        let now = self.clock.now();

        if let Some(i) = new {
            let mut copy = sets[i].clone();
            let annotations_updated =
                util::set_new_rs_annotations(d, &mut copy, new_revision, true);
            let rs_spec = copy.spec.get_or_insert_default();
            let min_ready_changed = rs_spec.min_ready_seconds != spec.min_ready_seconds;
            if annotations_updated || min_ready_changed {
                rs_spec.min_ready_seconds = spec.min_ready_seconds;
                sets[i] = self.replace_rs(&copy).await?;
            }
            let revision = sets[i]
                .annotations()
                .get(util::REVISION)
                .cloned()
                .unwrap_or_default();
            self.set_deployment_revision(d, &revision).await?;
            let status = status_of(d);
            if util::has_progress_deadline(d)
                && util::condition(&status, reason::PROGRESSING).is_none()
            {
                let mut status = status;
                let message = format!("Found new replica set \"{}\"", sets[i].name_any());
                util::set_condition(
                    &mut status,
                    util::new_condition(
                        reason::PROGRESSING,
                        "True",
                        reason::FOUND_NEW_RS,
                        message,
                        now,
                    ),
                );
                self.update_status(d, status).await?;
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }

        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = util::template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .insert(util::POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_default()
            .insert(util::POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", d.name_any(), hash);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.namespace(),
                owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = sets.iter().chain(std::iter::once(&rs)).collect();
        let new_replicas = util::new_rs_new_replicas(d, &all, &rs);
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(new_replicas);
        }
        util::set_new_rs_annotations(d, &mut rs, new_revision, false);

        let api = self.sets_api(&rs);
        let (created, already_existed) = match api.create(&PostParams::default(), &rs).await {
            Ok(created) => (created, false),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api
                    .get(&name)
                    .await
                    .map_err(Error::api(format!("reading replicaset {name}")))?;
                let ours = controller_of(&existing.metadata).map(|r| r.uid.clone()) == d.uid();
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| util::equal_ignore_hash(t, &spec.template));
                if ours && same {
                    // Our cache had not seen it yet.
                    (existing, true)
                } else {
                    let mut status = status_of(d);
                    status.collision_count = Some(collision_count.unwrap_or(0).saturating_add(1));
                    self.update_status(d, status).await?;
                    return Err(Error::HashCollision(name));
                }
            }
            Err(error) => {
                if util::has_progress_deadline(d) {
                    let mut status = status_of(d);
                    let message = format!("Failed to create new replica set \"{name}\": {error}");
                    util::set_condition(
                        &mut status,
                        util::new_condition(
                            reason::PROGRESSING,
                            "False",
                            reason::FAILED_RS_CREATE,
                            message,
                            now,
                        ),
                    );
                    self.update_status(d, status).await?;
                }
                return Err(Error::api(format!("creating replicaset {name}"))(error));
            }
        };
        let replicas = rs_replicas(&created);
        if !already_existed && replicas > 0 {
            self.recorder
                .normal(
                    &reference(d),
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} to {replicas}"),
                )
                .await;
        }
        sets.push(created);
        let index = sets.len() - 1;
        self.set_deployment_revision(d, &new_revision.to_string())
            .await?;
        if !already_existed && util::has_progress_deadline(d) {
            let mut status = status_of(d);
            let message = format!("Created new replica set \"{name}\"");
            util::set_condition(
                &mut status,
                util::new_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::NEW_RS_CREATED,
                    message,
                    now,
                ),
            );
            self.update_status(d, status).await?;
        }
        Ok(Some(index))
    }

    /// Scales one ReplicaSet (and refreshes its replica annotations);
    /// returns whether its size changed.
    async fn scale_replica_set(
        &self,
        d: &Deployment,
        sets: &mut [ReplicaSet],
        i: usize,
        new_scale: i32,
        operation: &str,
    ) -> Result<bool> {
        let desired = util::replicas(d);
        let max = desired + util::max_surge(d);
        let size_changed = rs_replicas(&sets[i]) != new_scale;
        if !size_changed && !util::replicas_annotations_need_update(&sets[i], desired, max) {
            return Ok(false);
        }
        let mut copy = sets[i].clone();
        copy.spec.get_or_insert_default().replicas = Some(new_scale);
        util::set_replicas_annotations(&mut copy, desired, max);
        sets[i] = self.replace_rs(&copy).await?;
        if size_changed {
            self.recorder
                .normal(
                    &reference(d),
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled {operation} replica set {} to {new_scale}",
                        sets[i].name_any()
                    ),
                )
                .await;
        }
        Ok(size_changed)
    }

    async fn scale_and_record(
        &self,
        d: &Deployment,
        sets: &mut [ReplicaSet],
        i: usize,
        new_scale: i32,
    ) -> Result<bool> {
        let current = rs_replicas(&sets[i]);
        if current == new_scale {
            return Ok(false);
        }
        let operation = if current < new_scale { "up" } else { "down" };
        self.scale_replica_set(d, sets, i, new_scale, operation)
            .await
    }

    /// kube's `isScalingEvent`: some active ReplicaSet was sized for a
    /// different `spec.replicas` than the Deployment has now.
    async fn is_scaling_event(
        &self,
        d: &mut Deployment,
        sets: &mut Vec<ReplicaSet>,
    ) -> Result<bool> {
        self.new_replica_set(d, sets, false).await?;
        let desired = i64::from(util::replicas(d));
        Ok(util::active(sets.iter())
            .iter()
            .filter_map(|rs| util::int_annotation(rs, util::DESIRED_REPLICAS))
            .any(|want| want != desired))
    }

    /// kube's `sync`: scaling (and cleanup when paused), no rollout.
    async fn sync(&self, d: &mut Deployment, sets: &mut Vec<ReplicaSet>) -> Result<Action> {
        let new = self.new_replica_set(d, sets, false).await?;
        self.scale(d, sets, new).await?;
        if is_paused(d) {
            self.cleanup(d, sets, new).await?;
        }
        self.sync_status(d, sets, new).await?;
        Ok(Action::requeue(self.resync))
    }

    /// kube's `scale`: a lone active ReplicaSet takes the whole size; a
    /// saturated new one leaves old ones nothing; otherwise (rolling) the
    /// difference is shared in proportion to each ReplicaSet's size.
    async fn scale(
        &self,
        d: &Deployment,
        sets: &mut [ReplicaSet],
        new: Option<usize>,
    ) -> Result<()> {
        let desired = util::replicas(d);
        let old: Vec<usize> = (0..sets.len()).filter(|i| Some(*i) != new).collect();
        if let Some(i) = self.active_or_latest(sets, new, &old) {
            if rs_replicas(&sets[i]) != desired {
                self.scale_and_record(d, sets, i, desired).await?;
            }
            return Ok(());
        }
        if util::is_saturated(d, new.map(|i| &sets[i])) {
            for i in old {
                if rs_replicas(&sets[i]) > 0 {
                    self.scale_and_record(d, sets, i, 0).await?;
                }
            }
            return Ok(());
        }
        if !util::is_rolling(d) {
            return Ok(());
        }
        let mut active: Vec<usize> = (0..sets.len())
            .filter(|i| rs_replicas(&sets[*i]) > 0)
            .collect();
        let total: i32 = active.iter().map(|i| rs_replicas(&sets[*i])).sum();
        let allowed = if desired > 0 {
            desired + util::max_surge(d)
        } else {
            0
        };
        let to_add = allowed - total;
        let operation = match to_add.cmp(&0) {
            std::cmp::Ordering::Greater => {
                // Larger first; among equals, newer first.
                active.sort_by(|a, b| {
                    rs_replicas(&sets[*b])
                        .cmp(&rs_replicas(&sets[*a]))
                        .then_with(|| util::by_creation(&sets[*b], &sets[*a]))
                });
                "up"
            }
            std::cmp::Ordering::Less => {
                // Larger first; among equals, older first.
                active.sort_by(|a, b| {
                    rs_replicas(&sets[*b])
                        .cmp(&rs_replicas(&sets[*a]))
                        .then_with(|| util::by_creation(&sets[*a], &sets[*b]))
                });
                "down"
            }
            std::cmp::Ordering::Equal => "",
        };
        let mut added = 0;
        let mut sizes = HashMap::new();
        for &i in &active {
            let size = rs_replicas(&sets[i]);
            if to_add != 0 {
                let p = util::proportion(&sets[i], d, to_add, added);
                sizes.insert(i, size + p);
                added += p;
            } else {
                sizes.insert(i, size);
            }
        }
        for (n, &i) in active.iter().enumerate() {
            let mut size = sizes.get(&i).copied().unwrap_or(0);
            if n == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_replica_set(d, sets, i, size, operation).await?;
        }
        Ok(())
    }

    /// kube's `FindActiveOrLatest`: the only active ReplicaSet, or the
    /// newest when none is active; `None` when several are active.
    fn active_or_latest(
        &self,
        sets: &[ReplicaSet],
        new: Option<usize>,
        old: &[usize],
    ) -> Option<usize> {
        if new.is_none() && old.is_empty() {
            return None;
        }
        let active: Vec<usize> = old
            .iter()
            .copied()
            .chain(new)
            .filter(|i| rs_replicas(&sets[*i]) > 0)
            .collect();
        match active.len() {
            0 => new.or_else(|| {
                old.iter()
                    .copied()
                    .max_by(|a, b| util::by_creation(&sets[*a], &sets[*b]))
            }),
            1 => Some(active[0]),
            _ => None,
        }
    }

    async fn rollout_rolling(
        &self,
        d: &mut Deployment,
        sets: &mut Vec<ReplicaSet>,
    ) -> Result<Action> {
        let new = self.new_replica_set(d, sets, true).await?;
        let Some(n) = new else {
            return self.sync_rollout_status(d, sets, None).await;
        };
        if self.reconcile_new(d, sets, n).await? {
            return self.sync_rollout_status(d, sets, new).await;
        }
        if self.reconcile_old(d, sets, n).await? {
            return self.sync_rollout_status(d, sets, new).await;
        }
        if util::is_complete(d, &status_of(d)) {
            self.cleanup(d, sets, new).await?;
        }
        self.sync_rollout_status(d, sets, new).await
    }

    /// kube's `reconcileNewReplicaSet`.
    async fn reconcile_new(
        &self,
        d: &Deployment,
        sets: &mut [ReplicaSet],
        n: usize,
    ) -> Result<bool> {
        let desired = util::replicas(d);
        let current = rs_replicas(&sets[n]);
        if current == desired {
            return Ok(false);
        }
        if current > desired {
            return self.scale_and_record(d, sets, n, desired).await;
        }
        let all: Vec<&ReplicaSet> = sets.iter().collect();
        let target = util::new_rs_new_replicas(d, &all, &sets[n]);
        self.scale_and_record(d, sets, n, target).await
    }

    /// kube's `reconcileOldReplicaSets`: shrink old ReplicaSets as far as
    /// availability allows, unhealthy replicas first.
    async fn reconcile_old(
        &self,
        d: &Deployment,
        sets: &mut [ReplicaSet],
        n: usize,
    ) -> Result<bool> {
        let mut old: Vec<usize> = (0..sets.len())
            .filter(|i| *i != n && rs_replicas(&sets[*i]) > 0)
            .collect();
        if old.is_empty() {
            return Ok(false);
        }
        old.sort_by(|a, b| util::by_creation(&sets[*a], &sets[*b]));
        // What each ReplicaSet will have available once it has caught up
        // with its spec: a status that has not yet seen a scale-down may
        // count pods about to be deleted, which must not be spent twice.
        let settled = |rs: &ReplicaSet| util::rs_available(rs).min(rs_replicas(rs));
        let all_pods: i32 = sets.iter().map(rs_replicas).sum();
        let min_available = util::replicas(d) - util::max_unavailable(d);
        let new_unavailable = rs_replicas(&sets[n]) - settled(&sets[n]);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy replicas first: they would block the rollout otherwise.
        let mut cleaned = 0;
        for &i in &old {
            if cleaned >= max_scaled_down {
                break;
            }
            let size = rs_replicas(&sets[i]);
            let unhealthy = size - settled(&sets[i]);
            if size == 0 || unhealthy <= 0 {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(unhealthy);
            self.scale_and_record(d, sets, i, size - down).await?;
            cleaned += down;
        }
        // Then available ones, while enough stay available.
        let available: i32 = sets.iter().map(settled).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &old {
                if scaled >= total {
                    break;
                }
                let size = rs_replicas(&sets[i]);
                if size == 0 {
                    continue;
                }
                let down = size.min(total - scaled);
                self.scale_and_record(d, sets, i, size - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(
        &self,
        d: &mut Deployment,
        sets: &mut Vec<ReplicaSet>,
    ) -> Result<Action> {
        let mut new = self.new_replica_set(d, sets, false).await?;
        let mut scaled_down = false;
        for i in 0..sets.len() {
            if Some(i) != new && rs_replicas(&sets[i]) > 0 {
                scaled_down |= self.scale_and_record(d, sets, i, 0).await?;
            }
        }
        if scaled_down || self.old_pods_running(sets, new) {
            return self.sync_rollout_status(d, sets, new).await;
        }
        if new.is_none() {
            new = self.new_replica_set(d, sets, true).await?;
        }
        if let Some(n) = new {
            let desired = util::replicas(d);
            self.scale_and_record(d, sets, n, desired).await?;
        }
        if util::is_complete(d, &status_of(d)) {
            self.cleanup(d, sets, new).await?;
        }
        self.sync_rollout_status(d, sets, new).await
    }

    /// Whether any old ReplicaSet still has pods that may run (kube's
    /// `oldPodsRunning`): Recreate must not start new pods beside them.
    fn old_pods_running(&self, sets: &[ReplicaSet], new: Option<usize>) -> bool {
        let old: HashSet<String> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .filter_map(|(_, rs)| rs.uid())
            .collect();
        if sets
            .iter()
            .enumerate()
            .any(|(i, rs)| Some(i) != new && util::rs_actual(rs) > 0)
        {
            return true;
        }
        self.pods.state().iter().any(|pod| {
            controller_of(&pod.metadata).is_some_and(|r| old.contains(&r.uid))
                && !super::replicaset::pods::is_terminal(pod)
        })
    }

    /// kube's `cleanupDeployment`: deletes the oldest scaled-down
    /// ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, d: &Deployment, sets: &[ReplicaSet], new: Option<usize>) -> Result<()> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = sets
            .iter()
            .enumerate()
            .filter(|(i, rs)| Some(*i) != new && rs.metadata.deletion_timestamp.is_none())
            .map(|(_, rs)| rs)
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit.max(0));
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| util::by_revision(a, b));
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if util::rs_actual(rs) != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let params = DeleteParams {
                preconditions: rs.uid().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match self.sets_api(rs).delete(&rs.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(Error::api(format!("deleting replicaset {}", rs.name_any()))(e));
                }
            }
        }
        Ok(())
    }

    /// kube's `calculateStatus`.
    fn calculate_status(
        &self,
        d: &Deployment,
        sets: &[ReplicaSet],
        new: Option<usize>,
    ) -> DeploymentStatus {
        let available: i32 = sets.iter().map(util::rs_available).sum();
        let total: i32 = sets.iter().map(rs_replicas).sum();
        let old = status_of(d);
        let mut status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(sets.iter().map(util::rs_actual).sum()),
            updated_replicas: Some(new.map_or(0, |n| util::rs_actual(&sets[n]))),
            ready_replicas: Some(sets.iter().map(util::rs_ready).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            terminating_replicas: None,
        };
        let now = self.clock.now();
        let condition = if available >= util::replicas(d) - util::max_unavailable(d) {
            util::new_condition(
                reason::AVAILABLE,
                "True",
                reason::MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            )
        } else {
            util::new_condition(
                reason::AVAILABLE,
                "False",
                reason::MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            )
        };
        util::set_condition(&mut status, condition);
        status
    }

    /// kube's `syncDeploymentStatus`: writes the counts if they changed.
    async fn sync_status(
        &self,
        d: &mut Deployment,
        sets: &[ReplicaSet],
        new: Option<usize>,
    ) -> Result<()> {
        let status = self.calculate_status(d, sets, new);
        if d.status.as_ref() != Some(&status) {
            self.update_status(d, status).await?;
        }
        Ok(())
    }

    /// kube's `syncRolloutStatus`: the counts plus the Progressing
    /// condition (complete, progressing, or timed out), and when to look
    /// again for a deadline.
    async fn sync_rollout_status(
        &self,
        d: &mut Deployment,
        sets: &[ReplicaSet],
        new: Option<usize>,
    ) -> Result<Action> {
        let mut status = self.calculate_status(d, sets, new);
        let now = self.clock.now();
        if !util::has_progress_deadline(d) {
            util::remove_condition(&mut status, reason::PROGRESSING);
        }
        let current = util::condition(&status_of(d), reason::PROGRESSING).cloned();
        let complete_before = status.replicas == status.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(reason::NEW_RS_AVAILABLE));
        let new_name = new.map(|n| sets[n].name_any());
        let subject = |what: &str| match &new_name {
            Some(name) => format!("ReplicaSet \"{name}\" {what}"),
            None => format!("Deployment \"{}\" {what}", d.name_any()),
        };
        if util::has_progress_deadline(d) && !complete_before {
            if util::is_complete(d, &status) {
                util::set_condition(
                    &mut status,
                    util::new_condition(
                        reason::PROGRESSING,
                        "True",
                        reason::NEW_RS_AVAILABLE,
                        subject("has successfully progressed."),
                        now,
                    ),
                );
            } else if util::is_progressing(d, &status) {
                let mut condition = util::new_condition(
                    reason::PROGRESSING,
                    "True",
                    reason::RS_UPDATED,
                    subject("is progressing."),
                    now,
                );
                if let Some(current) = &current {
                    if current.status == "True" {
                        condition.last_transition_time = current.last_transition_time.clone();
                    }
                    util::remove_condition(&mut status, reason::PROGRESSING);
                }
                util::set_condition(&mut status, condition);
            } else if util::timed_out(d, &status, now) {
                util::set_condition(
                    &mut status,
                    util::new_condition(
                        reason::PROGRESSING,
                        "False",
                        reason::TIMED_OUT,
                        subject("has timed out progressing."),
                        now,
                    ),
                );
            }
        }
        // A ReplicaSet that cannot create or delete pods says so here.
        let failure = sets.iter().find_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == reason::REPLICA_FAILURE && c.status == "True")
                .cloned()
        });
        match failure {
            Some(c) => util::set_condition(
                &mut status,
                k8s_openapi::api::apps::v1::DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time,
                },
            ),
            None => util::remove_condition(&mut status, reason::REPLICA_FAILURE),
        }
        if d.status.as_ref() != Some(&status) {
            self.update_status(d, status.clone()).await?;
        }
        Ok(Action::requeue(self.requeue_stuck(d, &status, now)))
    }

    /// When to look again so a stuck rollout is marked timed out on time
    /// (kube's `requeueStuckDeployment`), else the resync period.
    fn requeue_stuck(
        &self,
        d: &Deployment,
        status: &DeploymentStatus,
        now: jiff::Timestamp,
    ) -> Duration {
        let Some(current) = util::condition(status, reason::PROGRESSING) else {
            return self.resync;
        };
        if util::is_complete(d, status) || current.reason.as_deref() == Some(reason::TIMED_OUT) {
            return self.resync;
        }
        let Some(deadline) = util::progress_deadline(d, status) else {
            return self.resync;
        };
        let after = Duration::try_from(now.duration_until(deadline)).unwrap_or_default();
        (after + Duration::from_millis(500)).min(self.resync)
    }
}
