//! Topology spreading (kube's `PodTopologySpread`): a pod's
//! `topologySpreadConstraints` with `whenUnsatisfiable: DoNotSchedule`
//! filter, those with `ScheduleAnyway` score. A pod without constraints of
//! its own gets the system defaults when it has a controlling owner: spread
//! its owner's pods across hosts (max skew 3) and zones (max skew 5),
//! scored only. (Kubernetes derives the defaults' selector from the
//! Services and controllers selecting the pod; Skiff groups by the
//! controlling owner, which is what those selectors pick in practice.)
//!
//! `kubernetes.io/hostname` domains are the node names where a node does
//! not carry that label.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::{MAX_NODE_SCORE, node_affinity, selector_matches, taints};
use crate::scheduler::snapshot::{NodeInfo, PodInfo, Snapshot};

pub use super::HOSTNAME;
/// The zone topology key.
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// The reason for a node where the pod would make the skew too large.
pub const SKEW: &str = "node(s) didn't match pod topology spread constraints";
/// The reason for a node without a constraint's topology label.
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

#[derive(Debug, Clone)]
enum Selector {
    Owner(String),
    Labels(LabelSelector),
}

#[derive(Debug, Clone)]
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: usize,
    selector: Selector,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    fn from_spec(c: &TopologySpreadConstraint, pod: &PodInfo) -> Constraint {
        let mut selector = c.label_selector.clone().unwrap_or_else(|| LabelSelector {
            // A missing selector selects nothing.
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "\u{0}never".into(),
                operator: "Exists".into(),
                values: None,
            }]),
            match_labels: None,
        });
        for key in c.match_label_keys.iter().flatten() {
            if let Some(value) = pod.labels().get(key) {
                selector
                    .match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(LabelSelectorRequirement {
                        key: key.clone(),
                        operator: "In".into(),
                        values: Some(vec![value.clone()]),
                    });
            }
        }
        Constraint {
            key: c.topology_key.clone(),
            max_skew: i64::from(c.max_skew.max(1)),
            min_domains: c.min_domains.map_or(1, |m| m.max(1) as usize),
            selector: Selector::Labels(selector),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    fn defaults(pod: &PodInfo) -> Vec<Constraint> {
        let Some(owner) = pod.owner.clone() else {
            return Vec::new();
        };
        [(HOSTNAME, 3), (ZONE, 5)]
            .into_iter()
            .map(|(key, max_skew)| Constraint {
                key: key.to_owned(),
                max_skew,
                min_domains: 1,
                selector: Selector::Owner(owner.clone()),
                honor_affinity: true,
                honor_taints: false,
            })
            .collect()
    }

    /// Whether `existing` counts towards this constraint for `pod`.
    fn selects(&self, pod: &PodInfo, existing: &PodInfo) -> bool {
        !existing.terminating
            && existing.namespace == pod.namespace
            && match &self.selector {
                Selector::Owner(uid) => existing.owner.as_deref() == Some(uid),
                Selector::Labels(selector) => selector_matches(selector, existing.labels()),
            }
    }

    /// The matching pods on one node.
    fn count(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        match &self.selector {
            Selector::Owner(uid) => i64::from(node.owned_by(uid)),
            Selector::Labels(_) => {
                node.pods().iter().filter(|p| self.selects(pod, p)).count() as i64
            }
        }
    }

    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        (!self.honor_affinity || node_affinity::matches(pod, node))
            && (!self.honor_taints || taints::filter(pod, node).is_ok())
    }
}

fn domain<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a str> {
    super::topology_value(node, key)
}

fn explicit(pod: &PodInfo) -> &[TopologySpreadConstraint] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

/// The `DoNotSchedule` constraints' counts, computed once per cycle.
#[derive(Debug, Default)]
pub struct Filter {
    constraints: Vec<Constraint>,
    counts: HashMap<(usize, String), i64>,
    min: Vec<i64>,
}

impl Filter {
    /// Counts matching pods per domain over the eligible nodes (costs
    /// nothing for a pod without `DoNotSchedule` constraints).
    pub fn new(pod: &PodInfo, snapshot: &Snapshot) -> Filter {
        let constraints: Vec<Constraint> = explicit(pod)
            .iter()
            .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
            .map(|c| Constraint::from_spec(c, pod))
            .collect();
        if constraints.is_empty() {
            return Filter::default();
        }
        let mut counts: HashMap<(usize, String), i64> = HashMap::new();
        for node in snapshot.nodes() {
            if constraints.iter().any(|c| domain(node, &c.key).is_none()) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if !c.includes(pod, node) {
                    continue;
                }
                let Some(value) = domain(node, &c.key) else {
                    continue;
                };
                *counts.entry((i, value.to_owned())).or_default() += c.count(pod, node);
            }
        }
        let min = constraints
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let domains: Vec<i64> = counts
                    .iter()
                    .filter(|((j, _), _)| *j == i)
                    .map(|(_, &n)| n)
                    .collect();
                if domains.len() < c.min_domains {
                    0
                } else {
                    domains.into_iter().min().unwrap_or(0)
                }
            })
            .collect();
        Filter {
            constraints,
            counts,
            min,
        }
    }

    /// Fails a node lacking a constraint's label, or where placing the pod
    /// would make a domain exceed the global minimum by more than
    /// `maxSkew`.
    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), &'static str> {
        for (i, c) in self.constraints.iter().enumerate() {
            let Some(value) = domain(node, &c.key) else {
                return Err(MISSING_LABEL);
            };
            let self_match = i64::from(c.selects(pod, pod));
            let matching = self
                .counts
                .get(&(i, value.to_owned()))
                .copied()
                .unwrap_or(0);
            if matching + self_match - self.min[i] > c.max_skew {
                return Err(SKEW);
            }
        }
        Ok(())
    }
}

/// The `ScheduleAnyway` (or default) constraints' counts over the feasible
/// nodes, computed once per cycle.
#[derive(Debug, Default)]
pub struct Score {
    constraints: Vec<Constraint>,
    /// Whether a node lacking a constraint's key is left out of the
    /// ranking (explicit constraints) or just scores nothing for it.
    require_all: bool,
    counts: HashMap<(usize, String), i64>,
    weights: Vec<f64>,
}

impl Score {
    /// Prepares scoring `pod` over the nodes at `feasible` indices.
    pub fn new(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize]) -> Score {
        let spec = explicit(pod);
        let (constraints, require_all) = if spec.is_empty() {
            (Constraint::defaults(pod), false)
        } else {
            (
                spec.iter()
                    .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
                    .map(|c| Constraint::from_spec(c, pod))
                    .collect(),
                true,
            )
        };
        if constraints.is_empty() {
            return Score::default();
        }
        let nodes = snapshot.nodes();
        let mut domains: Vec<HashSet<&str>> = vec![HashSet::new(); constraints.len()];
        for &n in feasible {
            let node = &nodes[n];
            if require_all && constraints.iter().any(|c| domain(node, &c.key).is_none()) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if let Some(value) = domain(node, &c.key) {
                    domains[i].insert(value);
                }
            }
        }
        let weights = domains
            .iter()
            .map(|d| ((d.len() + 2) as f64).ln())
            .collect();
        let mut counts: HashMap<(usize, String), i64> = HashMap::new();
        for (i, c) in constraints.iter().enumerate() {
            if c.key == HOSTNAME {
                continue;
            }
            for node in nodes {
                if let Some(value) = domain(node, &c.key)
                    && domains[i].contains(value)
                    && c.includes(pod, node)
                {
                    *counts.entry((i, value.to_owned())).or_default() += c.count(pod, node);
                }
            }
        }
        Score {
            constraints,
            require_all,
            counts,
            weights,
        }
    }

    /// The node's raw score (lower is better spread), or `None` for a node
    /// left out of the ranking.
    pub fn score(&self, pod: &PodInfo, node: &NodeInfo) -> Option<i64> {
        if self.constraints.is_empty() {
            return Some(0);
        }
        if self.require_all
            && self
                .constraints
                .iter()
                .any(|c| domain(node, &c.key).is_none())
        {
            return None;
        }
        let mut score = 0.0;
        for (i, c) in self.constraints.iter().enumerate() {
            let Some(value) = domain(node, &c.key) else {
                continue;
            };
            let count = if c.key == HOSTNAME {
                c.count(pod, node)
            } else {
                self.counts
                    .get(&(i, value.to_owned()))
                    .copied()
                    .unwrap_or(0)
            };
            score += count as f64 * self.weights[i] + (c.max_skew - 1) as f64;
        }
        Some(score.round() as i64)
    }

    /// kube's normalisation: the least crowded node gets 100, the others
    /// proportionally less; nodes left out get 0.
    pub fn normalize(scores: &[Option<i64>]) -> Vec<i64> {
        let ranked = scores.iter().flatten();
        let min = ranked.clone().copied().min().unwrap_or(0);
        let max = ranked.copied().max().unwrap_or(0);
        scores
            .iter()
            .map(|s| match *s {
                None => 0,
                Some(_) if max == 0 => MAX_NODE_SCORE,
                Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{labelled, map, node, on, pod};
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn constraint(key: &str, max_skew: i32, when: &str) -> TopologySpreadConstraint {
        TopologySpreadConstraint {
            label_selector: Some(LabelSelector {
                match_labels: Some(map(&[("app", "web")])),
                match_expressions: None,
            }),
            max_skew,
            topology_key: key.into(),
            when_unsatisfiable: when.into(),
            ..Default::default()
        }
    }

    fn web(name: &str, constraints: Vec<TopologySpreadConstraint>) -> Pod {
        let mut p = labelled(pod(name, "", ""), &[("app", "web")]);
        p.spec.as_mut().unwrap().topology_spread_constraints = Some(constraints);
        p
    }

    /// n1, n2 in zone a; n3 in zone b; n4 without a zone.
    fn cluster(pods: Vec<Pod>) -> Snapshot {
        let mut s = Snapshot::new();
        for (name, zone) in [
            ("n1", Some("a")),
            ("n2", Some("a")),
            ("n3", Some("b")),
            ("n4", None),
        ] {
            let labels: Vec<(&str, &str)> = zone.map(|z| (ZONE, z)).into_iter().collect();
            s.set_node(node(name, "4", "4Gi", "10", &labels));
        }
        for p in pods {
            s.set_pod(p);
        }
        s
    }

    #[test]
    fn do_not_schedule_filters() {
        let placed = |nodes: &[&str]| -> Vec<Pod> {
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    on(
                        labelled(pod(&format!("e{i}"), "", ""), &[("app", "web")]),
                        n,
                    )
                })
                .collect()
        };
        let cases = [
            (
                "zone skew 1",
                placed(&["n1"]),
                web("p", vec![constraint(ZONE, 1, "DoNotSchedule")]),
                [Err(SKEW), Err(SKEW), Ok(()), Err(MISSING_LABEL)],
            ),
            (
                "zone balanced",
                placed(&["n1", "n3"]),
                web("p", vec![constraint(ZONE, 1, "DoNotSchedule")]),
                [Ok(()), Ok(()), Ok(()), Err(MISSING_LABEL)],
            ),
            (
                "host skew 1",
                placed(&["n1", "n2", "n3"]),
                web("p", vec![constraint(HOSTNAME, 1, "DoNotSchedule")]),
                [Err(SKEW), Err(SKEW), Err(SKEW), Ok(())],
            ),
            (
                "ScheduleAnyway does not filter",
                placed(&["n1", "n1"]),
                web("p", vec![constraint(ZONE, 1, "ScheduleAnyway")]),
                [Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "other pods do not count",
                vec![on(labelled(pod("o", "", ""), &[("app", "db")]), "n1")],
                web("p", vec![constraint(ZONE, 1, "DoNotSchedule")]),
                [Ok(()), Ok(()), Ok(()), Err(MISSING_LABEL)],
            ),
            (
                "minDomains above the domain count makes the minimum 0",
                placed(&["n1", "n3"]),
                web(
                    "p",
                    vec![TopologySpreadConstraint {
                        min_domains: Some(3),
                        ..constraint(ZONE, 1, "DoNotSchedule")
                    }],
                ),
                [Err(SKEW), Err(SKEW), Err(SKEW), Err(MISSING_LABEL)],
            ),
        ];
        for (what, pods, p, want) in cases {
            let s = cluster(pods);
            let info = PodInfo::new(p);
            let f = Filter::new(&info, &s);
            let got: Vec<_> = ["n1", "n2", "n3", "n4"]
                .iter()
                .map(|n| f.filter(&info, s.node(n).unwrap()))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn scores_prefer_emptier_domains() {
        let owned = |name: &str, node: &str| {
            let mut p = on(pod(name, "", ""), node);
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: "rs-1".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            p
        };
        let mut incoming = pod("p", "", "");
        incoming.metadata.owner_references = owned("x", "n1").metadata.owner_references;
        let cases = [
            (
                "default spreading by owner",
                vec![owned("a", "n1"), owned("b", "n1"), owned("c", "n2")],
                incoming.clone(),
                vec![Some(100), Some(100), Some(100), Some(100)],
                "n3 or n4 first",
            ),
            (
                "no owner, no default spreading",
                vec![owned("a", "n1")],
                pod("p", "", ""),
                vec![Some(100), Some(100), Some(100), Some(100)],
                "",
            ),
            (
                "ScheduleAnyway by zone",
                vec![on(labelled(pod("a", "", ""), &[("app", "web")]), "n1")],
                web("p", vec![constraint(ZONE, 1, "ScheduleAnyway")]),
                vec![Some(0), Some(0), Some(100), None],
                "",
            ),
        ];
        for (what, pods, p, want, note) in cases {
            let s = cluster(pods);
            let info = PodInfo::new(p);
            let feasible: Vec<usize> = (0..4).collect();
            let score = Score::new(&info, &s, &feasible);
            let order = ["n1", "n2", "n3", "n4"];
            let raw: Vec<Option<i64>> = order
                .iter()
                .map(|n| score.score(&info, s.node(n).unwrap()))
                .collect();
            let normalized = Score::normalize(&raw);
            if note.is_empty() {
                let want: Vec<i64> = want.iter().map(|w| w.unwrap_or(0)).collect();
                assert_eq!(normalized, want, "{what}");
            } else {
                // n1 holds two of the owner's pods, n2 one, n3 and n4 none;
                // zone a holds three, zone b none, n4 has no zone (and so,
                // as in Kubernetes, the least crowding to count).
                assert!(
                    normalized[0] < normalized[1]
                        && normalized[1] < normalized[2]
                        && normalized[2] <= normalized[3],
                    "{what}: {normalized:?}"
                );
            }
        }
    }
}
