//! The filters and scores, one module per concern, named after the
//! kube-scheduler plugins they mirror. Filters answer "can this pod run on
//! this node?" with the reason Kubernetes prints when not; scores rank the
//! nodes that can, each normalised to `0..=MAX_NODE_SCORE` before the
//! algorithm weights them.
//!
//! Everything here is pure: it reads a [`PodInfo`] and the
//! [`Snapshot`](super::snapshot::Snapshot).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::snapshot::{NodeInfo, PodInfo};

pub mod interpod;
pub mod node;
pub mod node_affinity;
pub mod ports;
pub mod resources;
pub mod spread;
pub mod taints;

/// The highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// kube-scheduler's `DefaultNormalizeScore`: scales scores so the highest
/// becomes [`MAX_NODE_SCORE`]; with `reverse`, the lowest does instead.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.fill(MAX_NODE_SCORE);
        }
        return;
    }
    for score in scores {
        let scaled = MAX_NODE_SCORE * *score / max;
        *score = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

/// Whether `labels` satisfy a `metav1.LabelSelector` (an empty selector
/// matches everything; an unknown operator matches nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| label_requirement_matches(r, labels))
}

fn label_requirement_matches(
    r: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Whether a node selector requirement holds for `value` (the node's label
/// or field, `None` when absent): `In`, `NotIn`, `Exists`, `DoesNotExist`,
/// `Gt` and `Lt` (integers).
pub fn node_requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let contains = |v: &str| values.iter().any(|x| x == v);
    let compare = |want: std::cmp::Ordering| {
        let [bound] = values else {
            return false;
        };
        match (
            value.and_then(|v| v.parse::<i64>().ok()),
            bound.parse::<i64>().ok(),
        ) {
            (Some(v), Some(bound)) => v.cmp(&bound) == want,
            _ => false,
        }
    };
    match r.operator.as_str() {
        "In" => value.is_some_and(contains),
        "NotIn" => value.is_none_or(|v| !contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// The hostname topology key.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// The node's value for a topology key: its label, or for
/// [`HOSTNAME`] on a node without that label, its name (every node is its
/// own host; Skiff's agent sets the label, hand-made Nodes may not).
pub fn topology_value<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    match node.labels().get(key) {
        Some(value) => Some(value),
        None if key == HOSTNAME => Some(node.name()),
        None => None,
    }
}

/// The node's topology pairs: its labels, plus the [`HOSTNAME`] pair
/// when the label is missing.
pub fn topology_pairs(node: &NodeInfo) -> impl Iterator<Item = (&str, &str)> {
    let labels = node.labels();
    let implicit = (!labels.contains_key(HOSTNAME)).then(|| (HOSTNAME, node.name()));
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(implicit)
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    if toleration
        .key
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != taint.key)
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// The pod's tolerations.
pub fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// Whether the pod tolerates a taint with this key and effect and no value
/// (what Kubernetes puts on cordoned and not-ready nodes).
pub fn tolerates_condition_taint(pod: &PodInfo, key: &str, effect: &str) -> bool {
    let taint = Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        value: None,
        time_added: None,
    };
    tolerations(pod).iter().any(|t| tolerates(t, &taint))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for the plugins' table tests.

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A Ready node with this much cpu, memory and pod room, and labels.
    pub fn node(name: &str, cpu: &str, memory: &str, pods: &str, labels: &[(&str, &str)]) -> Node {
        let allocatable: BTreeMap<String, Quantity> =
            [("cpu", cpu), ("memory", memory), ("pods", pods)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
                .collect();
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(allocatable.clone()),
                capacity: Some(allocatable),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// A pending pod in `default` requesting `cpu` and `memory`.
    pub fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let requests: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
            .collect();
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                scheduler_name: Some("default-scheduler".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `pod` with labels.
    pub fn labelled(mut pod: Pod, labels: &[(&str, &str)]) -> Pod {
        pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        pod
    }

    /// `pod` bound to `node`.
    pub fn on(mut pod: Pod, node: &str) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.to_owned());
        }
        pod
    }

    /// A string map.
    pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testing::map;

    #[test]
    fn label_selectors() {
        let req = |op: &str, values: &[&str]| LabelSelectorRequirement {
            key: "app".into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        };
        let expr = |r| LabelSelector {
            match_expressions: Some(vec![r]),
            match_labels: None,
        };
        let web = map(&[("app", "web")]);
        let none = map(&[]);
        let cases = [
            ("empty matches all", LabelSelector::default(), &web, true),
            (
                "matchLabels equal",
                LabelSelector {
                    match_labels: Some(map(&[("app", "web")])),
                    match_expressions: None,
                },
                &web,
                true,
            ),
            (
                "matchLabels differ",
                LabelSelector {
                    match_labels: Some(map(&[("app", "db")])),
                    match_expressions: None,
                },
                &web,
                false,
            ),
            ("In", expr(req("In", &["web", "x"])), &web, true),
            ("In absent", expr(req("In", &["web"])), &none, false),
            ("NotIn", expr(req("NotIn", &["web"])), &web, false),
            ("NotIn absent", expr(req("NotIn", &["web"])), &none, true),
            ("Exists", expr(req("Exists", &[])), &web, true),
            ("DoesNotExist", expr(req("DoesNotExist", &[])), &web, false),
            (
                "DoesNotExist absent",
                expr(req("DoesNotExist", &[])),
                &none,
                true,
            ),
            ("unknown operator", expr(req("Gt", &["1"])), &web, false),
        ];
        for (what, selector, labels, want) in cases {
            assert_eq!(selector_matches(&selector, labels), want, "{what}");
        }
    }

    #[test]
    fn node_requirements() {
        let req = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        };
        let cases = [
            (req("In", &["a", "b"]), Some("b"), true),
            (req("In", &["a"]), None, false),
            (req("NotIn", &["a"]), Some("a"), false),
            (req("NotIn", &["a"]), None, true),
            (req("Exists", &[]), Some(""), true),
            (req("DoesNotExist", &[]), Some("x"), false),
            (req("Gt", &["5"]), Some("6"), true),
            (req("Gt", &["5"]), Some("5"), false),
            (req("Gt", &["5"]), Some("x"), false),
            (req("Gt", &["5"]), None, false),
            (req("Lt", &["5"]), Some("-1"), true),
            (req("Lt", &["5", "6"]), Some("1"), false),
            (req("Bogus", &[]), Some("1"), false),
        ];
        for (r, value, want) in cases {
            assert_eq!(node_requirement_matches(&r, value), want, "{r:?} {value:?}");
        }
    }

    #[test]
    fn tolerations_match_taints() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        };
        let tol =
            |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
                Toleration {
                    key: key.map(Into::into),
                    operator: op.map(Into::into),
                    value: value.map(Into::into),
                    effect: effect.map(Into::into),
                    toleration_seconds: None,
                }
            };
        let t = taint("gpu", Some("yes"), "NoSchedule");
        let cases = [
            (tol(Some("gpu"), None, Some("yes"), None), true),
            (tol(Some("gpu"), Some("Equal"), Some("no"), None), false),
            (
                tol(Some("gpu"), Some("Exists"), None, Some("NoSchedule")),
                true,
            ),
            (
                tol(Some("gpu"), Some("Exists"), None, Some("NoExecute")),
                false,
            ),
            (tol(None, Some("Exists"), None, None), true),
            (tol(Some("other"), Some("Exists"), None, None), false),
            (tol(Some("gpu"), Some("Weird"), None, None), false),
        ];
        for (toleration, want) in cases {
            assert_eq!(tolerates(&toleration, &t), want, "{toleration:?}");
        }
    }

    #[test]
    fn normalising() {
        let cases: [(&[i64], bool, &[i64]); 4] = [
            (&[1, 2, 4], false, &[25, 50, 100]),
            (&[1, 2, 4], true, &[75, 50, 0]),
            (&[0, 0], false, &[0, 0]),
            (&[0, 0], true, &[100, 100]),
        ];
        for (input, reverse, want) in cases {
            let mut scores = input.to_vec();
            default_normalize(&mut scores, reverse);
            assert_eq!(scores, want, "{input:?} reverse={reverse}");
        }
    }
}
