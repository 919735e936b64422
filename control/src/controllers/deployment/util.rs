//! The arithmetic of rollouts, free of I/O (kube's
//! `pkg/controller/deployment/util`): template hashes, surge and
//! unavailability fenceposts, how far to scale the new ReplicaSet,
//! proportional scaling, revisions and conditions.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision of a Deployment's rollout (on the Deployment and its RSes).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Revisions an RS had before being rolled back to.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's `spec.replicas` when the RS was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` when the RS was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations of the Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// The alphabet of generated name suffixes: no vowels (no words) and no
/// look-alikes (kube's `rand.SafeEncodeString`).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Condition types and reasons, spelled as Kubernetes spells them.
pub mod reason {
    /// Condition type: enough pods are available.
    pub const AVAILABLE: &str = "Available";
    /// Condition type: the rollout is moving (or done, or stuck).
    pub const PROGRESSING: &str = "Progressing";
    /// Condition type: a ReplicaSet cannot create or delete pods.
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    /// A new ReplicaSet was created for the template.
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    /// An existing ReplicaSet matches the template.
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    /// The rollout made progress.
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    /// The new ReplicaSet is fully available: the rollout is complete.
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    /// No progress within `progressDeadlineSeconds`.
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    /// The new ReplicaSet could not be created.
    pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
    /// The Deployment was paused.
    pub const PAUSED: &str = "DeploymentPaused";
    /// The Deployment was resumed.
    pub const RESUMED: &str = "DeploymentResumed";
    /// At least `replicas - maxUnavailable` pods are available.
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Fewer than `replicas - maxUnavailable` pods are available.
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// FNV-1a, 32 bits.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// kube's `rand.SafeEncodeString`: each byte of `s` mapped into
/// [`ALPHANUMS`].
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// A template as canonical JSON: `pod-template-hash` removed, and nulls,
/// empty objects, empty arrays and empty strings dropped, so that two
/// templates that mean the same (after defaulting, or a round trip through
/// `kubectl rollout undo`) compare and hash the same.
fn canonical(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    prune(&mut value);
    value
}

/// Drops empty things recursively; returns whether `value` itself is empty.
fn prune(value: &mut Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune(item);
            }
            items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, v| !prune(v));
            map.is_empty()
        }
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The `pod-template-hash` of a template: FNV-32a of its canonical JSON
/// (and of `collision_count`, little-endian, when set), its decimal
/// rendering encoded with [`safe_encode`], as kube renders its hash. Stable
/// across restarts and processes; not equal to kube's own value.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&canonical(template)).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Whether two templates are the same apart from `pod-template-hash`
/// (kube's `EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    canonical(a) == canonical(b)
}

/// kube's `GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total`
/// rounded up or down. `None` for a malformed value.
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> Option<i32> {
    match value {
        None => Some(0),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            let product = percent * i64::from(total);
            let scaled = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(scaled).ok()
        }
    }
}

/// The Deployment's `spec.replicas` (default 1).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Whether the Deployment rolls (the default) rather than recreates.
pub fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// `(maxSurge, maxUnavailable)` resolved against `desired` (kube's
/// `ResolveFenceposts`): surge rounds up, unavailable rounds down, and
/// both zero becomes unavailable 1 so a rollout can move.
pub fn fenceposts(d: &Deployment, desired: i32) -> (i32, i32) {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".into());
    let surge_value = rolling.map_or(Some(&default), |r| r.max_surge.as_ref());
    let unavailable_value = rolling.map_or(Some(&default), |r| r.max_unavailable.as_ref());
    let surge = scaled_value(surge_value, desired, true).unwrap_or(0).max(0);
    let mut unavailable = scaled_value(unavailable_value, desired, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// The surge of a rolling Deployment, 0 for Recreate.
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d, replicas(d)).0
}

/// How many pods may be unavailable during a rolling update (never more
/// than `replicas`), 0 for Recreate.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let desired = replicas(d);
    if !is_rolling(d) || desired == 0 {
        return 0;
    }
    fenceposts(d, desired).1.min(desired)
}

/// `spec.replicas` of a ReplicaSet (default 1).
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i32 {
    rs.status.as_ref().and_then(f).unwrap_or(0)
}

/// `status.replicas` of a ReplicaSet.
pub fn rs_actual(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| Some(s.replicas))
}

/// `status.availableReplicas` of a ReplicaSet.
pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.available_replicas)
}

/// `status.readyReplicas` of a ReplicaSet.
pub fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.ready_replicas)
}

/// An annotation parsed as an integer.
pub fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i64> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// The revision of a ReplicaSet (0 when it has none).
pub fn revision(rs: &ReplicaSet) -> i64 {
    int_annotation(rs, REVISION).unwrap_or(0)
}

/// How far to scale the new ReplicaSet now (kube's `NewRSNewReplicas`):
/// a rolling update adds pods while the total stays within `replicas +
/// maxSurge`; Recreate goes straight to `replicas`.
///
/// The total counts, per ReplicaSet, the larger of its `spec.replicas` and
/// `status.replicas`: pods an old ReplicaSet was told to shed but still
/// has are counted until they are gone, so the pods never exceed the
/// surge (kube counts `spec.replicas` alone and may overshoot briefly).
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let desired = replicas(d);
    if !is_rolling(d) {
        return desired;
    }
    let surge = fenceposts(d, desired).0;
    let current: i32 = all
        .iter()
        .map(|rs| rs_replicas(rs).max(rs_actual(rs)))
        .sum();
    let max_total = desired + surge;
    let new_replicas = rs_replicas(new_rs);
    if current >= max_total {
        return new_replicas;
    }
    let up = (max_total - current).min(desired - new_replicas).max(0);
    new_replicas + up
}

/// The ReplicaSets with replicas (kube's `FilterActiveReplicaSets`).
pub fn active<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> Vec<&'a ReplicaSet> {
    sets.into_iter().filter(|rs| rs_replicas(rs) > 0).collect()
}

/// Oldest first, then by name (kube's `ReplicaSetsByCreationTimestamp`).
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Lowest revision first, then oldest (kube's `ReplicaSetsByRevision`).
pub fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    revision(a)
        .cmp(&revision(b))
        .then_with(|| by_creation(a, b))
}

/// The ReplicaSet whose template is the Deployment's: the oldest, if
/// several (kube's `FindNewReplicaSet`).
pub fn find_new<'a>(d: &Deployment, sets: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = &d.spec.as_ref()?.template;
    let mut sorted: Vec<&ReplicaSet> = sets.iter().collect();
    sorted.sort_by(|a, b| by_creation(a, b));
    sorted.into_iter().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, template))
    })
}

/// Whether the Deployment needs the RS's replica annotations updated.
pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    int_annotation(rs, DESIRED_REPLICAS) != Some(i64::from(desired))
        || int_annotation(rs, MAX_REPLICAS) != Some(i64::from(max))
}

/// Writes the replica annotations; returns whether anything changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    if !replicas_annotations_need_update(rs, desired, max) {
        return false;
    }
    let annotations = rs.metadata.annotations.get_or_insert_default();
    annotations.insert(DESIRED_REPLICAS.into(), desired.to_string());
    annotations.insert(MAX_REPLICAS.into(), max.to_string());
    true
}

/// kube's `SetNewReplicaSetAnnotations`: copies the Deployment's
/// annotations, raises the revision to `new_revision` (keeping the old one
/// in the revision history when rolling back to this RS), and, for an RS
/// about to be created, sets the replica annotations. Returns whether
/// anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = false;
    let annotations = rs.metadata.annotations.get_or_insert_default();
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&key.as_str()) {
            continue;
        }
        if annotations.get(key) != Some(value) {
            annotations.insert(key.clone(), value.clone());
            changed = true;
        }
    }
    let old = annotations.get(REVISION).cloned();
    let old_revision = match old.as_deref() {
        None => Some(0),
        Some(s) => s.parse::<i64>().ok(),
    };
    if let Some(old_revision) = old_revision
        && old_revision < new_revision
    {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = match annotations.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            annotations.insert(REVISION_HISTORY.into(), history);
        }
    }
    if !exists {
        let desired = replicas(d);
        changed |= set_replicas_annotations(rs, desired, desired + max_surge(d));
    }
    changed
}

/// kube's `getProportion`: this RS's share of `to_add` (negative to take
/// away), bounded by what remains to hand out.
pub fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    let size = rs_replicas(rs);
    if size == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

fn replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let size = rs_replicas(rs);
    let desired = replicas(d);
    if desired == 0 {
        return -size;
    }
    let deployment_replicas = desired + max_surge(d);
    let annotated = int_annotation(rs, MAX_REPLICAS)
        .and_then(|v| i32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or_else(|| d.status.as_ref().map_or(0, |s| s.replicas.unwrap_or(0)));
    if annotated == 0 {
        return 0;
    }
    let scaled = f64::from(size) * f64::from(deployment_replicas) / f64::from(annotated);
    scaled.round() as i32 - size
}

/// Whether the RS carries the whole Deployment and all its pods are
/// available (kube's `IsSaturated`).
pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let desired = replicas(d);
    rs_replicas(rs) == desired
        && int_annotation(rs, DESIRED_REPLICAS) == Some(i64::from(desired))
        && rs_available(rs) == desired
}

/// Whether the Deployment has a progress deadline.
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// The condition of `type_`, if present.
pub fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// A fresh condition stamped `now`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// kube's `SetDeploymentCondition`: no change when status and reason are
/// the same; the transition time is kept when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = condition_of(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_.clone());
    status.conditions.get_or_insert_default().push(condition);
}

fn condition_of<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    condition(status, type_)
}

/// Removes the condition of `type_`.
pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

/// Whether the rollout is done: every replica updated and available, and
/// the status describes the current generation (kube's
/// `DeploymentComplete`).
pub fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = replicas(d);
    status.updated_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
        && status.available_replicas.unwrap_or(0) == desired
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's current status
/// (kube's `DeploymentProgressing`).
pub fn is_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// When the progress deadline of the current Progressing condition passes
/// (`None` without a deadline or a condition).
pub fn progress_deadline(d: &Deployment, status: &DeploymentStatus) -> Option<jiff::Timestamp> {
    if !has_progress_deadline(d) {
        return None;
    }
    let seconds = d.spec.as_ref()?.progress_deadline_seconds?;
    let from = condition(status, reason::PROGRESSING)?
        .last_update_time
        .as_ref()?
        .0;
    from.checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// Whether the rollout has made no progress within its deadline (kube's
/// `DeploymentTimedOut`).
pub fn timed_out(d: &Deployment, status: &DeploymentStatus, now: jiff::Timestamp) -> bool {
    let Some(cond) = condition(status, reason::PROGRESSING) else {
        return false;
    };
    match cond.reason.as_deref() {
        Some(reason::NEW_RS_AVAILABLE) => false,
        Some(reason::TIMED_OUT) => true,
        _ => progress_deadline(d, status).is_some_and(|at| at < now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                template: template("a"),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }
    }

    fn rs(replicas: i32, max: Option<i32>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                annotations: max.map(|m| [(MAX_REPLICAS.to_owned(), m.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                ..ReplicaSetSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn hashes_are_stable_safe_and_ignore_the_hash_label() {
        let a = template("a");
        let h = template_hash(&a, None);
        assert_eq!(h, template_hash(&a.clone(), None));
        assert!(h.bytes().all(|b| ALPHANUMS.contains(&b)), "{h}");
        assert_ne!(h, template_hash(&template("b"), None));
        assert_ne!(h, template_hash(&a, Some(1)));
        let mut labelled = a.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        assert!(equal_ignore_hash(&a, &labelled));
        assert_eq!(template_hash(&labelled, None), h);
        // An empty map means the same as none.
        let mut empty = a.clone();
        empty.metadata.as_mut().unwrap().annotations = Some(Default::default());
        assert!(equal_ignore_hash(&a, &empty));
        assert!(!equal_ignore_hash(&a, &template("b")));
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn fenceposts_round_like_kube() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(
            fenceposts(&deployment(10, pct("25%"), pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            fenceposts(&deployment(3, pct("25%"), pct("25%")), 3),
            (1, 0)
        );
        assert_eq!(
            fenceposts(&deployment(3, IntOrString::Int(0), IntOrString::Int(0)), 3),
            (0, 1)
        );
        assert_eq!(
            max_unavailable(&deployment(2, pct("0%"), IntOrString::Int(5))),
            2
        );
        assert_eq!(scaled_value(Some(&pct("x")), 3, true), None);
    }

    #[test]
    fn new_replica_set_grows_within_the_surge() {
        let d = deployment(4, IntOrString::Int(1), IntOrString::Int(1));
        let old = rs(4, None);
        let new = rs(0, None);
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 1);
        let new = rs(1, None);
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 1);
        let old = rs(2, None);
        assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
        // Pods the old RS still has count until they are gone.
        let mut shrinking = rs(2, None);
        shrinking.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas: 4,
            ..Default::default()
        });
        assert_eq!(new_rs_new_replicas(&d, &[&shrinking, &new], &new), 1);
    }

    #[test]
    fn proportions_follow_max_replicas() {
        // 10 replicas + 3 surge scaled to 20 (+5 surge): 13 → 25.
        let d = deployment(20, IntOrString::String("25%".into()), IntOrString::Int(0));
        let a = rs(8, Some(13));
        let b = rs(5, Some(13));
        let to_add = 25 - 13;
        let pa = proportion(&a, &d, to_add, 0);
        let pb = proportion(&b, &d, to_add, pa);
        assert_eq!((pa, pb), (7, 5));
        assert_eq!(proportion(&rs(0, Some(13)), &d, to_add, 0), 0);
    }

    #[test]
    fn annotations_bump_revision_and_keep_history() {
        let mut d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        d.metadata.annotations = Some(
            [
                ("team".to_owned(), "x".to_owned()),
                (REVISION.to_owned(), "9".to_owned()),
            ]
            .into(),
        );
        let mut r = rs(0, None);
        assert!(set_new_rs_annotations(&d, &mut r, 1, false));
        let a = r.metadata.annotations.clone().unwrap();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(a.get("team").map(String::as_str), Some("x"));
        assert_eq!(a.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(a.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert!(!set_new_rs_annotations(&d, &mut r, 1, true));
        assert!(set_new_rs_annotations(&d, &mut r, 3, true));
        let a = r.metadata.annotations.unwrap();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(a.get(REVISION_HISTORY).map(String::as_str), Some("1"));
    }
}
