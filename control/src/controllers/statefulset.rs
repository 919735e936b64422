//! The StatefulSet controller: pods with stable identities (`web-0`,
//! `web-1`, ...) and stable per-pod volumes, as Kubernetes' statefulset
//! controller runs them.
//!
//! - Pod `<set>-<ordinal>` (ordinals from `spec.ordinals.start`) has
//!   hostname `<set>-<ordinal>`, subdomain `spec.serviceName`, labels
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`
//!   and `controller-revision-hash`, and is owned by the set (controller).
//! - Each `volumeClaimTemplates` entry becomes a volume of the same name
//!   claiming `<template>-<set>-<ordinal>`, exactly the claim Kubernetes
//!   would bind; the node agent maps a claim name to a stable directory.
//! - `OrderedReady` creates pods one at a time in ordinal order, each once
//!   the previous is Running and Ready, and removes them highest ordinal
//!   first, one at a time, only while all others are healthy; `Parallel`
//!   creates and removes them all at once.
//! - `RollingUpdate` replaces pods whose revision differs from the
//!   template's, highest ordinal first, one at a time, waiting for each to
//!   be healthy, leaving ordinals below `partition` alone; `OnDelete` only
//!   uses the new template for pods deleted by someone else.
//! - Failed or succeeded pods are deleted and recreated.
//! - Status: `replicas`, `readyReplicas`, `availableReplicas` (ready for
//!   `minReadySeconds`), `currentReplicas`, `updatedReplicas`,
//!   `currentRevision`, `updateRevision`, `observedGeneration`.
//!
//! Revisions are `<set>-<hash of the pod template>`; the API server keeps
//! no ControllerRevisions, so old templates are not kept: a pod below the
//! partition that must be recreated gets the current template.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use super::Context;
use super::chain;
use super::events::reference;
use crate::controllers::job::owned_by;

/// Label with the pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label with the revision (template hash) a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What can fail while reconciling a StatefulSet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} for statefulset {namespace}/{name}")]
    Api {
        /// What was being done (`create pod web-0`).
        action: String,
        /// The set's namespace.
        namespace: String,
        /// The set's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// `spec.selector` cannot be turned into a label selector.
    #[error("statefulset {namespace}/{name} has an invalid selector: {reason}")]
    Selector {
        /// The set's namespace.
        namespace: String,
        /// The set's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

type State = super::Reconciler;

/// Runs the StatefulSet controller until the task is aborted; returns an
/// error only if its watches end.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let state = State::new(&ctx, "statefulset-controller");
    Controller::new(
        Api::<StatefulSet>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Pod>::all(ctx.client.clone()),
        watcher::Config::default().labels(POD_NAME_LABEL),
    )
    .run(reconcile, error_policy, state)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(error = %chain(&error), "statefulset reconcile");
        }
    })
    .await;
    anyhow::bail!("the statefulset controller's watches ended")
}

fn error_policy(set: Arc<StatefulSet>, error: &Error, _: Arc<State>) -> Action {
    super::retry_after_error("statefulset", &set.name_any(), error, error.api_source())
}

impl Error {
    /// The API error behind this one, if any.
    fn api_source(&self) -> Option<&kube::Error> {
        match self {
            Error::Api { source, .. } => Some(source),
            #[allow(
                unreachable_patterns,
                reason = "only some controllers have other variants"
            )]
            _ => None,
        }
    }
}

/// The revision name for a set's current template: `<set>-<hash>`, the
/// hash spelled like Kubernetes' (`SafeEncodeString` of a 32-bit FNV-1a).
pub fn revision(set: &StatefulSet) -> String {
    let template = set.spec.as_ref().map(|s| &s.template);
    let bytes = serde_json::to_vec(&template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let encoded: String = hash
        .to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect();
    format!("{}-{encoded}", set.name_any())
}

/// The ordinal in a pod name `<set>-<ordinal>`, if it is one.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    n.parse().ok()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// When the pod became ready, if it is Running and Ready.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    if phase(pod) != "Running" {
        return None;
    }
    let ready = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(ready.last_transition_time.as_ref().map(|t| t.0))
}

fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

async fn reconcile(set: Arc<StatefulSet>, state: Arc<State>) -> Result<Action, Error> {
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let sets: Api<StatefulSet> = Api::namespaced(state.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
    let api_err = |action: &str| {
        let (action, namespace, name) = (action.to_owned(), namespace.clone(), name.clone());
        move |source| Error::Api {
            action,
            namespace,
            name,
            source,
        }
    };
    // Read fresh: pods are listed fresh, and the set with them, so a
    // decision never rests on a stale cache.
    let Some(set) = sets.get_opt(&name).await.map_err(api_err("get"))? else {
        return Ok(Action::await_change());
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = set.spec.clone().unwrap_or_default();
    let selector = Selector::try_from(spec.selector.clone()).map_err(|e| Error::Selector {
        namespace: namespace.clone(),
        name: name.clone(),
        reason: e.to_string(),
    })?;
    if selector.selects_all() {
        // Validation forbids it; never act on every pod in the namespace.
        return Ok(Action::await_change());
    }
    let uid = set.uid().unwrap_or_default();
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(api_err("list pods"))?
        .items
        .into_iter()
        .filter(|p| owned_by(&p.metadata, &uid))
        .collect();

    let now = state.clock.now();
    let update_revision = revision(&set);
    let old_status = set.status.clone().unwrap_or_default();
    let current_revision = old_status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0).max(0));

    let mut sync = Sync {
        state: &state,
        set: &set,
        pods_api: &pods_api,
        update_revision: update_revision.clone(),
        wait: None,
    };

    // Status, from the pods as found.
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        current_revision: Some(current_revision.clone()),
        update_revision: Some(update_revision.clone()),
        collision_count: Some(old_status.collision_count.unwrap_or(0)),
        conditions: old_status.conditions.clone(),
        ..StatefulSetStatus::default()
    };
    for pod in &pods {
        status.replicas += 1;
        if let Some(since) = ready_since(pod) {
            status.ready_replicas = Some(status.ready_replicas.unwrap_or(0) + 1);
            let available_at = since
                .unwrap_or(now)
                .checked_add(SignedDuration::from_secs(min_ready))
                .unwrap_or(Timestamp::MAX);
            if min_ready == 0 || available_at <= now {
                status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
            } else {
                sync.wait_at_most(
                    Duration::try_from(available_at.duration_since(now)).unwrap_or_default(),
                );
            }
        }
        if !terminating(pod) {
            if pod_revision(pod) == Some(current_revision.as_str()) {
                status.current_replicas = Some(status.current_replicas.unwrap_or(0) + 1);
            }
            if pod_revision(pod) == Some(update_revision.as_str()) {
                status.updated_replicas = Some(status.updated_replicas.unwrap_or(0) + 1);
            }
        }
    }
    let ready = status.ready_replicas.unwrap_or(0);
    if status.updated_replicas.unwrap_or(0) == status.replicas
        && ready == status.replicas
        && status.replicas == spec.replicas.unwrap_or(1)
    {
        // The rollout is complete: the update revision becomes current.
        status.current_revision = Some(update_revision.clone());
        status.current_replicas = status.updated_replicas;
    }
    status.available_replicas.get_or_insert(0);
    status.ready_replicas.get_or_insert(0);
    status.current_replicas.get_or_insert(0);
    status.updated_replicas.get_or_insert(0);

    let result = sync.act(&spec, &pods, min_ready, now).await;
    let wait = sync.wait;
    if Some(&status) != set.status.as_ref() {
        let mut updated = set.clone();
        updated.status = Some(status);
        sets.replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(api_err("update status"))?;
    }
    result?;
    Ok(Action::requeue(wait.map_or(state.resync, |w| {
        w.min(state.resync).max(Duration::from_millis(10))
    })))
}

struct Sync<'a> {
    state: &'a State,
    set: &'a StatefulSet,
    pods_api: &'a Api<Pod>,
    update_revision: String,
    wait: Option<Duration>,
}

impl Sync<'_> {
    fn wait_at_most(&mut self, wait: Duration) {
        self.wait = Some(self.wait.map_or(wait, |w| w.min(wait)));
    }

    /// Kubernetes' `updateStatefulSet`: create, recreate, remove and update
    /// pods, one step at a time unless the policy is `Parallel`.
    async fn act(
        &mut self,
        spec: &k8s_openapi::api::apps::v1::StatefulSetSpec,
        pods: &[Pod],
        min_ready: i64,
        now: Timestamp,
    ) -> Result<(), Error> {
        let name = self.set.name_any();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .unwrap_or(0)
            .max(0);
        let end = start.saturating_add(replicas);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let healthy = |pod: &Pod| {
            !terminating(pod)
                && ready_since(pod).is_some_and(|since| {
                    min_ready == 0
                        || since.is_none_or(|s| {
                            s.checked_add(SignedDuration::from_secs(min_ready))
                                .is_ok_and(|at| at <= now)
                        })
                })
        };

        let mut members: BTreeMap<i32, &Pod> = BTreeMap::new();
        let mut condemned: Vec<(i32, &Pod)> = Vec::new();
        for pod in pods {
            match ordinal(&name, &pod.name_any()) {
                Some(o) if (start..end).contains(&o) => {
                    members.insert(o, pod);
                }
                o => condemned.push((o.unwrap_or(-1), pod)),
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

        // 1. Every ordinal in range has a healthy pod, in order.
        for ordinal in start..end {
            match members.get(&ordinal) {
                None => {
                    self.create(ordinal).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if matches!(phase(pod), "Failed" | "Succeeded") && !terminating(pod) => {
                    let reason = if phase(pod) == "Failed" {
                        "RecreatingFailedPod"
                    } else {
                        "RecreatingTerminatedPod"
                    };
                    self.state
                        .recorder
                        .warning(
                            &reference(self.set),
                            reason,
                            &format!(
                                "StatefulSet {}/{name} is recreating {} Pod {}",
                                self.set.namespace().unwrap_or_default(),
                                phase(pod).to_lowercase(),
                                pod.name_any()
                            ),
                        )
                        .await;
                    self.delete(pod).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if ordered && !healthy(pod) => return Ok(()),
                Some(_) => {}
            }
        }

        // 2. Pods beyond the range go, highest ordinal first.
        let first_unhealthy = members
            .values()
            .copied()
            .chain(condemned.iter().rev().map(|(_, p)| *p))
            .find(|p| !healthy(p))
            .map(|p| p.name_any());
        for (_, pod) in &condemned {
            if terminating(pod) {
                if ordered {
                    return Ok(());
                }
                continue;
            }
            if ordered
                && first_unhealthy
                    .as_ref()
                    .is_some_and(|u| *u != pod.name_any())
            {
                return Ok(());
            }
            self.delete(pod).await?;
            if ordered {
                return Ok(());
            }
        }

        // 3. Rolling update, highest ordinal first, down to the partition.
        let strategy = spec.update_strategy.as_ref();
        if strategy
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
            != "RollingUpdate"
        {
            return Ok(());
        }
        let partition = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);
        let update_min = start.saturating_add(partition);
        for ordinal in (update_min..end).rev() {
            let Some(pod) = members.get(&ordinal) else {
                // Just created (Parallel): wait for it like any unhealthy
                // pod.
                return Ok(());
            };
            if pod_revision(pod) != Some(self.update_revision.as_str()) && !terminating(pod) {
                self.delete(pod).await?;
                return Ok(());
            }
            if !healthy(pod) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn create(&mut self, ordinal: i32) -> Result<(), Error> {
        let pod = pod_for(self.set, ordinal, &self.update_revision);
        let pod_name = pod.name_any();
        let set_name = self.set.name_any();
        let me = reference(self.set);
        match self.pods_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.state
                    .recorder
                    .normal(
                        &me,
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                    )
                    .await;
                Ok(())
            }
            // Ours, seen next time (or someone else's, which we leave).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(error) => {
                self.state
                    .recorder
                    .warning(
                        &me,
                        "FailedCreate",
                        &format!(
                            "create Pod {pod_name} in StatefulSet {set_name} failed error: {error}"
                        ),
                    )
                    .await;
                Err(Error::Api {
                    action: format!("create pod {pod_name}"),
                    namespace: self.set.namespace().unwrap_or_default(),
                    name: set_name,
                    source: error,
                })
            }
        }
    }

    async fn delete(&mut self, pod: &Pod) -> Result<(), Error> {
        let pod_name = pod.name_any();
        let set_name = self.set.name_any();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods_api.delete(&pod_name, &params).await {
            Ok(_) => {
                self.state
                    .recorder
                    .normal(
                        &reference(self.set),
                        "SuccessfulDelete",
                        &format!("delete Pod {pod_name} in StatefulSet {set_name} successful"),
                    )
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(error) => Err(Error::Api {
                action: format!("delete pod {pod_name}"),
                namespace: self.set.namespace().unwrap_or_default(),
                name: set_name,
                source: error,
            }),
        }
    }
}

/// The claim name for template `claim` of pod `ordinal`:
/// `<template>-<set>-<ordinal>`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// The pod for `ordinal` at `revision` (Kubernetes' `newStatefulSetPod`
/// with `initIdentity` and `updateStorage`).
fn pod_for(set: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let name = format!("{set_name}-{ordinal}");
    let spec = set.spec.clone().unwrap_or_default();
    let meta = spec.template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_INDEX_LABEL.to_owned(), ordinal.to_string());
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.filter(|s| !s.is_empty());
    let claims: Vec<Volume> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .map(|claim| Volume {
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&claim, &set_name, ordinal),
                read_only: None,
            }),
            name: claim,
            ..Volume::default()
        })
        .collect();
    if !claims.is_empty() {
        let mut volumes = claims.clone();
        volumes.extend(
            pod_spec
                .volumes
                .take()
                .into_iter()
                .flatten()
                .filter(|v| !claims.iter().any(|c| c.name == v.name)),
        );
        pod_spec.volumes = Some(volumes);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: StatefulSet::api_version(&()).into_owned(),
                kind: StatefulSet::kind(&()).into_owned(),
                name: set_name,
                uid: set.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webs-1"), None);
        assert_eq!(ordinal("web", "web-db-1"), None);
    }

    #[test]
    fn revisions_follow_the_template() {
        let mut set = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..ObjectMeta::default()
            },
            ..StatefulSet::default()
        };
        let first = revision(&set);
        assert!(first.starts_with("web-"), "{first}");
        assert_eq!(revision(&set), first);
        set.spec.get_or_insert_default().template.metadata = Some(ObjectMeta {
            labels: Some([("v".to_owned(), "2".to_owned())].into()),
            ..ObjectMeta::default()
        });
        assert_ne!(revision(&set), first);
    }
}
