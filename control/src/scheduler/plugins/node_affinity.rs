//! Node selection by labels (kube's `NodeAffinity`): `nodeSelector` and
//! required node affinity filter, preferred node affinity scores.

use k8s_openapi::api::core::v1::{NodeAffinity, NodeSelectorTerm};

use super::node_requirement_matches;
use crate::scheduler::snapshot::{NodeInfo, PodInfo};

/// The reason for a node that does not match.
pub const MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

fn affinity(pod: &PodInfo) -> Option<&NodeAffinity> {
    pod.pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()
}

/// Whether a node selector term holds for the node. A term with no
/// requirement matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    expressions
        .iter()
        .all(|r| node_requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then(|| node.name());
            r.key == "metadata.name" && node_requirement_matches(r, value)
        })
}

/// Whether the node satisfies the pod's `nodeSelector` and required node
/// affinity (also what topology spreading's `nodeAffinityPolicy: Honor`
/// asks).
pub fn matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let labels = node.labels();
    let selector_ok = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !selector_ok {
        return false;
    }
    match affinity(pod).and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        Some(required) => required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node)),
        None => true,
    }
}

/// Fails a node that does not satisfy [`matches`].
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), &'static str> {
    if matches(pod, node) {
        Ok(())
    } else {
        Err(MISMATCH)
    }
}

/// The summed weights of the preferred terms the node matches; normalise
/// with [`super::default_normalize`].
pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    affinity(pod)
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| p.weight != 0 && term_matches(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{map, node, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, NodeSelector, NodeSelectorRequirement, PreferredSchedulingTerm,
    };

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn term(
        exprs: Vec<NodeSelectorRequirement>,
        fields: Vec<NodeSelectorRequirement>,
    ) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: Some(fields),
        }
    }

    fn with(
        selector: &[(&str, &str)],
        required: Option<Vec<NodeSelectorTerm>>,
        preferred: Vec<(i32, NodeSelectorTerm)>,
    ) -> PodInfo {
        let mut p = pod("p", "", "");
        let spec = p.spec.as_mut().unwrap();
        spec.node_selector = Some(map(selector));
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: required.map(
                    |node_selector_terms| NodeSelector {
                        node_selector_terms,
                    },
                ),
                preferred_during_scheduling_ignored_during_execution: Some(
                    preferred
                        .into_iter()
                        .map(|(weight, preference)| PreferredSchedulingTerm { weight, preference })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        PodInfo::new(p)
    }

    #[test]
    fn filter_by_selector_and_required_affinity() {
        let n = NodeInfo::new(node("n1", "1", "1Gi", "10", &[("zone", "a"), ("gen", "3")]));
        let cases = [
            ("nothing asked", with(&[], None, vec![]), true),
            (
                "selector matches",
                with(&[("zone", "a")], None, vec![]),
                true,
            ),
            (
                "selector differs",
                with(&[("zone", "b")], None, vec![]),
                false,
            ),
            (
                "selector label missing",
                with(&[("disk", "ssd")], None, vec![]),
                false,
            ),
            (
                "In",
                with(
                    &[],
                    Some(vec![term(vec![req("zone", "In", &["a", "b"])], vec![])]),
                    vec![],
                ),
                true,
            ),
            (
                "NotIn",
                with(
                    &[],
                    Some(vec![term(vec![req("zone", "NotIn", &["a"])], vec![])]),
                    vec![],
                ),
                false,
            ),
            (
                "Exists",
                with(
                    &[],
                    Some(vec![term(vec![req("gen", "Exists", &[])], vec![])]),
                    vec![],
                ),
                true,
            ),
            (
                "DoesNotExist",
                with(
                    &[],
                    Some(vec![term(vec![req("gpu", "DoesNotExist", &[])], vec![])]),
                    vec![],
                ),
                true,
            ),
            (
                "Gt",
                with(
                    &[],
                    Some(vec![term(vec![req("gen", "Gt", &["2"])], vec![])]),
                    vec![],
                ),
                true,
            ),
            (
                "Lt",
                with(
                    &[],
                    Some(vec![term(vec![req("gen", "Lt", &["3"])], vec![])]),
                    vec![],
                ),
                false,
            ),
            (
                "terms are ORed",
                with(
                    &[],
                    Some(vec![
                        term(vec![req("zone", "In", &["b"])], vec![]),
                        term(vec![req("zone", "In", &["a"])], vec![]),
                    ]),
                    vec![],
                ),
                true,
            ),
            (
                "expressions are ANDed",
                with(
                    &[],
                    Some(vec![term(
                        vec![req("zone", "In", &["a"]), req("gen", "In", &["4"])],
                        vec![],
                    )]),
                    vec![],
                ),
                false,
            ),
            (
                "empty term matches nothing",
                with(&[], Some(vec![term(vec![], vec![])]), vec![]),
                false,
            ),
            (
                "no terms matches nothing",
                with(&[], Some(vec![]), vec![]),
                false,
            ),
            (
                "matchFields name",
                with(
                    &[],
                    Some(vec![term(
                        vec![],
                        vec![req("metadata.name", "In", &["n1"])],
                    )]),
                    vec![],
                ),
                true,
            ),
            (
                "matchFields other name",
                with(
                    &[],
                    Some(vec![term(
                        vec![],
                        vec![req("metadata.name", "In", &["n2"])],
                    )]),
                    vec![],
                ),
                false,
            ),
            (
                "matchFields unknown field",
                with(
                    &[],
                    Some(vec![term(
                        vec![],
                        vec![req("metadata.uid", "NotIn", &["x"])],
                    )]),
                    vec![],
                ),
                false,
            ),
        ];
        for (what, p, ok) in cases {
            assert_eq!(filter(&p, &n).is_ok(), ok, "{what}");
            if !ok {
                assert_eq!(filter(&p, &n), Err(MISMATCH), "{what}");
            }
        }
    }

    #[test]
    fn score_sums_matching_preferences() {
        let n = NodeInfo::new(node(
            "n1",
            "1",
            "1Gi",
            "10",
            &[("zone", "a"), ("disk", "ssd")],
        ));
        let cases = [
            ("none", with(&[], None, vec![]), 0),
            (
                "two match",
                with(
                    &[],
                    None,
                    vec![
                        (10, term(vec![req("zone", "In", &["a"])], vec![])),
                        (5, term(vec![req("disk", "Exists", &[])], vec![])),
                        (7, term(vec![req("zone", "In", &["b"])], vec![])),
                    ],
                ),
                15,
            ),
        ];
        for (what, p, want) in cases {
            assert_eq!(score(&p, &n), want, "{what}");
        }
    }
}
