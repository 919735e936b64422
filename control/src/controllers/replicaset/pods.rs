//! What the workload controllers need to know about a pod, free of I/O:
//! whether it counts (active), is ready, is available, which controller
//! owns it, and the order Kubernetes deletes pods in when scaling down
//! (`ActivePodsWithRanks` in kube's `controller_utils.go`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{Selector, SelectorExt};

/// The annotation that lets users rank pods for deletion (lower goes first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Whether `pod` counts towards a controller's replicas: not terminal
/// (Succeeded, Failed) and not being deleted (kube's `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

/// Whether `pod` has finished for good (phase Succeeded or Failed).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The pod's phase, `""` when the pod has no status yet.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The pod's `Ready` condition, if it has one.
pub fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Whether the pod has been ready for at least `min_ready_seconds` at
/// `now` (kube's `IsPodAvailable`). A ready condition without a transition
/// time counts as ready since forever.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    available_in(pod, min_ready_seconds, now) == Some(std::time::Duration::ZERO)
}

/// How long until a ready pod becomes available: `Some(0)` when it already
/// is, `None` when it is not ready at all.
pub fn available_in(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<std::time::Duration> {
    let condition = ready_condition(pod).filter(|c| c.status == "True")?;
    if min_ready_seconds <= 0 {
        return Some(std::time::Duration::ZERO);
    }
    let Some(since) = condition.last_transition_time.as_ref() else {
        return Some(std::time::Duration::ZERO);
    };
    let ready_at = since
        .0
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .unwrap_or(jiff::Timestamp::MAX);
    // Kubernetes: available once `readyTime + minReadySeconds < now`.
    if ready_at < now {
        Some(std::time::Duration::ZERO)
    } else {
        let wait = now.duration_until(ready_at);
        Some(
            std::time::Duration::try_from(wait).unwrap_or_default()
                + std::time::Duration::from_millis(1),
        )
    }
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner` with `blockOwnerDeletion`, as
/// Kubernetes' controllers set on what they create.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `selector` selects an object with `labels`.
pub fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    match labels {
        Some(labels) => selector.matches(labels),
        None => selector.matches(&BTreeMap::new()),
    }
}

/// Whether every label of the template is on the pod with the same value
/// (the pod is "fully labeled").
pub fn fully_labeled(pod: &Pod, template: Option<&PodTemplateSpec>) -> bool {
    let wanted = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let Some(wanted) = wanted else { return true };
    let have = pod.metadata.labels.as_ref();
    wanted
        .iter()
        .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
}

/// A pod with its rank: how many pods of the same workload share its node
/// (more crowded nodes are relieved first).
#[derive(Debug, Clone, Copy)]
pub struct Ranked<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Related active pods on the same node (including this one).
    pub rank: usize,
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// `Less` when `a` is later than `b` (or `a` is unset and `b` is not):
/// kube's `afterOrZero`, used so newer things go first.
fn after_or_zero(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Orders pods so that the ones to delete first come first:
/// 1. unscheduled before scheduled;
/// 2. Pending before Unknown before Running;
/// 3. not ready before ready;
/// 4. lower deletion cost first;
/// 5. more crowded node first;
/// 6. ready more recently first;
/// 7. more restarts first;
/// 8. newer first (then by name, for determinism).
pub fn deletion_order(a: &Ranked<'_>, b: &Ranked<'_>) -> Ordering {
    let (pa, pb) = (a.pod, b.pod);
    let (na, nb) = (node_name(pa), node_name(pb));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by = phase_ordinal(pa)
        .cmp(&phase_ordinal(pb))
        .then_with(|| is_ready(pa).cmp(&is_ready(pb)))
        .then_with(|| deletion_cost(pa).cmp(&deletion_cost(pb)))
        .then_with(|| b.rank.cmp(&a.rank));
    if by != Ordering::Equal {
        return by;
    }
    if is_ready(pa) && is_ready(pb) {
        let ready_time =
            |p: &Pod| ready_condition(p).and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
        let by = after_or_zero(ready_time(pa), ready_time(pb));
        if by != Ordering::Equal {
            return by;
        }
    }
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    max_restarts(pb)
        .cmp(&max_restarts(pa))
        .then_with(|| after_or_zero(created(pa), created(pb)))
        .then_with(|| pa.metadata.name.cmp(&pb.metadata.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: &str, phase: &str, ready: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_owned()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.map(|at| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(at).unwrap())),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    fn order(pods: &[Pod]) -> Vec<String> {
        let mut ranked: Vec<_> = pods.iter().map(|pod| Ranked { pod, rank: 1 }).collect();
        ranked.sort_by(deletion_order);
        ranked
            .iter()
            .map(|r| r.pod.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn deletes_unscheduled_then_pending_then_unready_then_newest() {
        let pods = vec![
            pod("old-ready", "n1", "Running", Some(100), 10),
            pod("new-ready", "n1", "Running", Some(200), 20),
            pod("running-unready", "n1", "Running", None, 5),
            pod("pending", "n1", "Pending", None, 1),
            pod("unscheduled", "", "Pending", None, 0),
        ];
        assert_eq!(
            order(&pods),
            [
                "unscheduled",
                "pending",
                "running-unready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", "n", "Running", Some(100), 0);
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        assert!(is_available(&p, 0, at(100)));
        assert!(!is_available(&p, 10, at(105)));
        assert!(is_available(&p, 10, at(111)));
        assert!(available_in(&p, 10, at(105)).unwrap() > std::time::Duration::from_secs(4));
        assert!(!is_available(
            &pod("q", "n", "Running", None, 0),
            0,
            at(100)
        ));
    }
}
