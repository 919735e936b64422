//! Taints and tolerations (kube's `TaintToleration`): a pod goes only where
//! it tolerates every `NoSchedule` and `NoExecute` taint; untolerated
//! `PreferNoSchedule` taints only lower the score.

use super::{tolerates, tolerations};
use crate::scheduler::snapshot::{NodeInfo, PodInfo};

/// Fails a node with a `NoSchedule` or `NoExecute` taint the pod does not
/// tolerate, naming the first such taint as Kubernetes does.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), String> {
    let tolerations = tolerations(pod);
    match node.taints().iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    }) {
        Some(taint) => Err(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        )),
        None => Ok(()),
    }
}

/// The number of `PreferNoSchedule` taints the pod does not tolerate (only
/// tolerations with that effect or none count); normalise with
/// [`super::default_normalize`] reversed.
pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let tolerations: Vec<_> = tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    node.taints()
        .iter()
        .filter(|taint| {
            taint.effect == "PreferNoSchedule" && !tolerations.iter().any(|t| tolerates(t, taint))
        })
        .count() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{node, pod};
    use k8s_openapi::api::core::v1::{Taint, Toleration};

    fn tainted(taints: &[(&str, &str, &str)]) -> NodeInfo {
        let mut n = node("n", "1", "1Gi", "10", &[]);
        n.spec.as_mut().unwrap().taints = Some(
            taints
                .iter()
                .map(|(key, value, effect)| Taint {
                    key: (*key).into(),
                    value: Some((*value).into()),
                    effect: (*effect).into(),
                    time_added: None,
                })
                .collect(),
        );
        NodeInfo::new(n)
    }

    fn tolerating(tolerations: &[(&str, &str)]) -> PodInfo {
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().tolerations = Some(
            tolerations
                .iter()
                .map(|(key, effect)| Toleration {
                    key: Some((*key).into()),
                    operator: Some("Exists".into()),
                    effect: (!effect.is_empty()).then(|| (*effect).into()),
                    ..Default::default()
                })
                .collect(),
        );
        PodInfo::new(p)
    }

    #[test]
    fn filter_on_hard_taints() {
        let cases = [
            ("no taints", tainted(&[]), tolerating(&[]), Ok(())),
            (
                "untolerated",
                tainted(&[("gpu", "true", "NoSchedule")]),
                tolerating(&[]),
                Err("node(s) had untolerated taint {gpu: true}".to_owned()),
            ),
            (
                "NoExecute",
                tainted(&[("dedicated", "db", "NoExecute")]),
                tolerating(&[]),
                Err("node(s) had untolerated taint {dedicated: db}".to_owned()),
            ),
            (
                "tolerated",
                tainted(&[("gpu", "true", "NoSchedule")]),
                tolerating(&[("gpu", "NoSchedule")]),
                Ok(()),
            ),
            (
                "wrong effect tolerated",
                tainted(&[("gpu", "true", "NoSchedule")]),
                tolerating(&[("gpu", "NoExecute")]),
                Err("node(s) had untolerated taint {gpu: true}".to_owned()),
            ),
            (
                "PreferNoSchedule does not filter",
                tainted(&[("soft", "x", "PreferNoSchedule")]),
                tolerating(&[]),
                Ok(()),
            ),
        ];
        for (what, n, p, want) in cases {
            assert_eq!(filter(&p, &n), want, "{what}");
        }
    }

    #[test]
    fn score_counts_soft_taints() {
        let cases = [
            ("none", tainted(&[]), tolerating(&[]), 0),
            (
                "two soft",
                tainted(&[("a", "", "PreferNoSchedule"), ("b", "", "PreferNoSchedule")]),
                tolerating(&[]),
                2,
            ),
            (
                "one tolerated",
                tainted(&[("a", "", "PreferNoSchedule"), ("b", "", "PreferNoSchedule")]),
                tolerating(&[("a", "")]),
                1,
            ),
            (
                "NoSchedule toleration does not count",
                tainted(&[("a", "", "PreferNoSchedule")]),
                tolerating(&[("a", "NoSchedule")]),
                1,
            ),
            (
                "hard taints ignored",
                tainted(&[("a", "", "NoSchedule")]),
                tolerating(&[]),
                0,
            ),
        ];
        for (what, n, p, want) in cases {
            assert_eq!(score(&p, &n), want, "{what}");
        }
    }
}
