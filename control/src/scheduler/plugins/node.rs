//! The node's own state: cordoned (`spec.unschedulable`, kube's
//! `NodeUnschedulable`) or not Ready. A pod tolerating the taint Kubernetes
//! puts on such nodes (`node.kubernetes.io/unschedulable`,
//! `node.kubernetes.io/not-ready`, effect `NoSchedule`) may still go there,
//! as DaemonSet pods do.

use super::tolerates_condition_taint;
use crate::scheduler::snapshot::{NodeInfo, PodInfo};

/// The reason for a cordoned node.
pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// The reason for a node whose Ready condition is not True.
pub const NOT_READY: &str = "node(s) were not ready";

/// Fails a node that is not Ready or is cordoned.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), &'static str> {
    if !node.ready()
        && !tolerates_condition_taint(pod, "node.kubernetes.io/not-ready", "NoSchedule")
    {
        return Err(NOT_READY);
    }
    if node.unschedulable()
        && !tolerates_condition_taint(pod, "node.kubernetes.io/unschedulable", "NoSchedule")
    {
        return Err(UNSCHEDULABLE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{node, pod};
    use k8s_openapi::api::core::v1::Toleration;

    #[test]
    fn ready_and_cordoned() {
        let ready = node("n", "1", "1Gi", "10", &[]);
        let mut not_ready = ready.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "Unknown".into();
        let mut no_conditions = ready.clone();
        no_conditions.status.as_mut().unwrap().conditions = None;
        let mut cordoned = ready.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let plain = pod("p", "", "");
        let tolerant = |key: &str| {
            let mut p = pod("p", "", "");
            p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
            p
        };
        let cases = [
            ("ready", &ready, plain.clone(), Ok(())),
            ("not ready", &not_ready, plain.clone(), Err(NOT_READY)),
            (
                "no conditions",
                &no_conditions,
                plain.clone(),
                Err(NOT_READY),
            ),
            ("cordoned", &cordoned, plain.clone(), Err(UNSCHEDULABLE)),
            (
                "tolerates cordon",
                &cordoned,
                tolerant("node.kubernetes.io/unschedulable"),
                Ok(()),
            ),
            (
                "tolerates not-ready",
                &not_ready,
                tolerant("node.kubernetes.io/not-ready"),
                Ok(()),
            ),
        ];
        for (what, n, p, want) in cases {
            let info = NodeInfo::new(n.clone());
            assert_eq!(filter(&PodInfo::new(p), &info), want, "{what}");
        }
    }
}
