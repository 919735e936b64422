//! The node-lifecycle decisions, free of I/O and of the wall clock: which
//! taints a node should carry, how its conditions read once its agent is
//! silent, and when a pod on a tainted node is due for eviction.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{NodeCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The taint on a node whose agent stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint on a node whose agent reports it not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The condition types a silent node's conditions are set Unknown for.
const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What the controller knows of a node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heartbeats arrive; the agent reports Ready (or nothing contrary).
    Ready,
    /// Heartbeats arrive, but the agent reports the node not ready.
    NotReady,
    /// No heartbeat within the grace period.
    Unreachable,
}

/// `now` truncated to whole seconds, as Kubernetes writes `Time`.
pub fn seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The node's taints with the lifecycle taints made to match `health`:
/// `unreachable` (NoSchedule and NoExecute) when unreachable, `not-ready`
/// when not ready, neither when ready. Other taints, and the `timeAdded`
/// of lifecycle taints already present, are kept. `None` if nothing
/// changes.
pub fn desired_taints(current: &[Taint], health: Health, now: Timestamp) -> Option<Vec<Taint>> {
    let wanted_key = match health {
        Health::Ready => None,
        Health::NotReady => Some(NOT_READY),
        Health::Unreachable => Some(UNREACHABLE),
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| {
            let lifecycle = t.key == UNREACHABLE || t.key == NOT_READY;
            !lifecycle
                || (Some(t.key.as_str()) == wanted_key
                    && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        })
        .cloned()
        .collect();
    if let Some(key) = wanted_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.to_owned(),
                    effect: effect.to_owned(),
                    time_added: Some(Time(seconds(now))),
                    value: None,
                });
            }
        }
    }
    (out.as_slice() != current).then_some(out)
}

/// The conditions of a node whose agent went silent: Ready and the
/// pressure conditions Unknown (`NodeStatusUnknown`, or
/// `NodeStatusNeverUpdated` for those never reported), other conditions
/// kept. `None` if they already read so.
pub fn unknown_conditions(current: &[NodeCondition], now: Timestamp) -> Option<Vec<NodeCondition>> {
    let now = Time(seconds(now));
    let mut out = current.to_vec();
    let mut changed = false;
    for ty in CONDITIONS {
        match out.iter_mut().find(|c| c.type_ == *ty) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".to_owned();
                c.reason = Some("NodeStatusUnknown".to_owned());
                c.message = Some("Kubelet stopped posting node status.".to_owned());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            None => {
                out.push(NodeCondition {
                    type_: (*ty).to_owned(),
                    status: "Unknown".to_owned(),
                    reason: Some("NodeStatusNeverUpdated".to_owned()),
                    message: Some("Kubelet never posted node status.".to_owned()),
                    last_heartbeat_time: None,
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// When a pod with `tolerations` on a node with `taints` is due for
/// eviction: for each NoExecute taint, its `timeAdded` (else `noticed`)
/// plus the shortest matching toleration's `tolerationSeconds`; a taint
/// nothing tolerates evicts at once, except `unreachable` and `not-ready`
/// which allow `default` (what Kubernetes' DefaultTolerationSeconds
/// admission grants every pod). `None`: tolerated forever.
pub fn eviction_due(
    taints: &[Taint],
    tolerations: &[Toleration],
    default: Duration,
    noticed: Timestamp,
) -> Option<Timestamp> {
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let allowed = if matching.is_empty() {
            if taint.key == UNREACHABLE || taint.key == NOT_READY {
                Some(default)
            } else {
                Some(Duration::ZERO)
            }
        } else {
            matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        };
        let Some(allowed) = allowed else { continue };
        let since = taint.time_added.as_ref().map_or(noticed, |t| t.0);
        let at = jiff::SignedDuration::try_from(allowed)
            .ok()
            .and_then(|d| since.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn unreachable_taints_are_added_once_and_removed_when_ready() {
        let user = Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let tainted = desired_taints(std::slice::from_ref(&user), Health::Unreachable, ts(100))
            .expect("taints added");
        assert_eq!(tainted.len(), 3);
        assert!(
            tainted
                .iter()
                .filter(|t| t.key == UNREACHABLE)
                .all(|t| t.time_added == Some(Time(ts(100))))
        );
        assert_eq!(desired_taints(&tainted, Health::Unreachable, ts(200)), None);
        let swapped = desired_taints(&tainted, Health::NotReady, ts(200)).unwrap();
        assert!(swapped.iter().all(|t| t.key != UNREACHABLE));
        assert_eq!(swapped.iter().filter(|t| t.key == NOT_READY).count(), 2);
        assert_eq!(
            desired_taints(&tainted, Health::Ready, ts(300)),
            Some(vec![user])
        );
    }

    #[test]
    fn eviction_waits_for_the_shortest_toleration_or_the_default() {
        let taints = desired_taints(&[], Health::Unreachable, ts(1000)).unwrap();
        let default = Duration::from_secs(30);
        assert_eq!(eviction_due(&taints, &[], default, ts(0)), Some(ts(1030)));
        let long = [toleration(UNREACHABLE, Some(600))];
        assert_eq!(eviction_due(&taints, &long, default, ts(0)), Some(ts(1600)));
        let forever = [toleration(UNREACHABLE, None)];
        assert_eq!(eviction_due(&taints, &forever, default, ts(0)), None);
        let negative = [toleration(UNREACHABLE, Some(-5))];
        assert_eq!(
            eviction_due(&taints, &negative, default, ts(0)),
            Some(ts(1000))
        );
    }

    #[test]
    fn untolerated_user_noexecute_taints_evict_at_once() {
        let taint = Taint {
            key: "maintenance".into(),
            value: Some("yes".into()),
            effect: "NoExecute".into(),
            time_added: None,
        };
        let default = Duration::from_secs(30);
        let taints = std::slice::from_ref(&taint);
        assert_eq!(eviction_due(taints, &[], default, ts(5)), Some(ts(5)));
        let equal = Toleration {
            key: Some("maintenance".into()),
            value: Some("yes".into()),
            ..Toleration::default()
        };
        assert_eq!(eviction_due(taints, &[equal], default, ts(5)), None);
    }

    #[test]
    fn a_silent_node_reads_unknown() {
        let ready = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..NodeCondition::default()
        };
        let conditions = unknown_conditions(&[ready], ts(10)).unwrap();
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(|c| c.status == "Unknown"));
        assert_eq!(conditions[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(unknown_conditions(&conditions, ts(20)), None);
    }
}
