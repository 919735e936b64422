//! One scheduling cycle, pure: given a pod and a [`Snapshot`], find the
//! node it should go to, or say why none fits. No I/O, no clock, no
//! randomness: the same inputs give the same answer, and the caller
//! rotates `start` between cycles to spread the work (and ties) over the
//! nodes as kube-scheduler does.
//!
//! Steps, as in kube-scheduler's default profile:
//! 1. filter the nodes, from `start` round the ring, until enough feasible
//!    ones are found ([`num_feasible_nodes_to_find`]);
//! 2. score each feasible node with every score plugin, normalise each to
//!    0..=100 and sum them with kube's default weights;
//! 3. take the highest total (the first met from `start` on a tie).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::plugins::{
    default_normalize, interpod, node, node_affinity, ports, resources, spread, taints,
};
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

/// kube-scheduler's default score plugin weights.
mod weights {
    pub const TAINT_TOLERATION: i64 = 3;
    pub const NODE_AFFINITY: i64 = 2;
    pub const POD_TOPOLOGY_SPREAD: i64 = 2;
    pub const INTER_POD_AFFINITY: i64 = 2;
    pub const NODE_RESOURCES_FIT: i64 = 1;
    pub const BALANCED_ALLOCATION: i64 = 1;
}

/// Below this many nodes every node is examined (kube's
/// `minFeasibleNodesToFind`).
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The lowest adaptive percentage (kube's
/// `minFeasibleNodesPercentageToFind`).
pub const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// Where a pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    /// The chosen node.
    pub node: String,
    /// How many nodes were examined (filtered), from `start` on: the caller
    /// starts the next cycle at `(start + evaluated_nodes) % nodes`.
    pub evaluated_nodes: usize,
    /// How many of those fit the pod.
    pub feasible_nodes: usize,
}

/// No node fits the pod. Its [`Display`](std::fmt::Display) is
/// Kubernetes' message: `0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) had untolerated taint {gpu: true}.`
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct FitError {
    /// How many nodes the cluster has.
    pub num_all_nodes: usize,
    /// Each filter reason and on how many nodes it held (a node can count
    /// under several, e.g. both cpu and memory).
    pub reasons: BTreeMap<String, usize>,
}

impl FitError {
    /// The message Kubernetes writes in the `FailedScheduling` event and
    /// the `PodScheduled` condition.
    pub fn message(&self) -> String {
        if self.num_all_nodes == 0 {
            return "no nodes available to schedule pods".to_owned();
        }
        let mut reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        // Kubernetes sorts the formatted strings, counts included.
        reasons.sort();
        let mut message = format!("0/{} nodes are available:", self.num_all_nodes);
        if !reasons.is_empty() {
            message.push(' ');
            message.push_str(&reasons.join(", "));
            message.push('.');
        }
        message
    }
}

/// How many feasible nodes to look for among `all` before scoring (kube's
/// `numFeasibleNodesToFind`): everything below 100 nodes; otherwise
/// `percentage`% (when given, 1..=100), or adaptively `50 - all/125`%
/// but at least 5%; never fewer than 100.
pub fn num_feasible_nodes_to_find(percentage: Option<u32>, all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = match percentage {
        Some(p) if p >= 100 => return all,
        Some(p) if p > 0 => p as usize,
        _ => 50usize
            .saturating_sub(all / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE),
    };
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Schedules `pod` with the adaptive node sampling (see
/// [`schedule_with`]).
pub fn schedule(pod: &Pod, snapshot: &Snapshot, start: usize) -> Result<ScheduleResult, FitError> {
    schedule_with(&PodInfo::new(pod.clone()), snapshot, start, None)
}

/// Schedules `pod` onto one of `snapshot`'s nodes, examining nodes from
/// index `start` (modulo their number) and stopping once
/// [`num_feasible_nodes_to_find`]`(percentage_of_nodes_to_score, n)`
/// feasible nodes are found. Errors with every filter's reasons when no
/// node fits.
pub fn schedule_with(
    pod: &PodInfo,
    snapshot: &Snapshot,
    start: usize,
    percentage_of_nodes_to_score: Option<u32>,
) -> Result<ScheduleResult, FitError> {
    let nodes = snapshot.nodes();
    let all = nodes.len();
    if all == 0 {
        return Err(FitError {
            num_all_nodes: 0,
            reasons: BTreeMap::new(),
        });
    }
    let wanted = num_feasible_nodes_to_find(percentage_of_nodes_to_score, all);
    let affinity = interpod::State::new(pod, snapshot);
    let spreading = spread::Filter::new(pod, snapshot);
    let mut feasible = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut evaluated = 0;
    for k in 0..all {
        let i = (start % all + k) % all;
        evaluated += 1;
        match filter(pod, snapshot, i, &affinity, &spreading) {
            Ok(()) => feasible.push(i),
            Err(failed) => {
                for reason in failed {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
        if feasible.len() >= wanted {
            break;
        }
    }
    let Some(&first) = feasible.first() else {
        return Err(FitError {
            num_all_nodes: all,
            reasons,
        });
    };
    let best = if feasible.len() == 1 {
        first
    } else {
        let totals = score(pod, snapshot, &feasible);
        let mut best = 0;
        for (k, &total) in totals.iter().enumerate() {
            if total > totals[best] {
                best = k;
            }
        }
        feasible[best]
    };
    Ok(ScheduleResult {
        node: nodes[best].name().to_owned(),
        evaluated_nodes: evaluated,
        feasible_nodes: feasible.len(),
    })
}

/// Runs every filter on node `i`, in kube's order, stopping at the first
/// that fails (resource fit reports all its reasons).
fn filter(
    pod: &PodInfo,
    snapshot: &Snapshot,
    i: usize,
    affinity: &interpod::State,
    spreading: &spread::Filter,
) -> Result<(), Vec<String>> {
    let node = &snapshot.nodes()[i];
    let one = |reason: &str| vec![reason.to_owned()];
    node::filter(pod, node).map_err(one)?;
    taints::filter(pod, node).map_err(|r| vec![r])?;
    node_affinity::filter(pod, node).map_err(one)?;
    ports::filter(pod, node).map_err(one)?;
    let lacking = resources::filter(pod, node);
    if !lacking.is_empty() {
        return Err(lacking.into_iter().map(str::to_owned).collect());
    }
    spreading.filter(pod, node).map_err(one)?;
    affinity.filter(pod, node, snapshot).map_err(one)?;
    Ok(())
}

/// The weighted total score of each feasible node.
fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize]) -> Vec<i64> {
    let nodes = snapshot.nodes();
    let each = |f: &dyn Fn(&PodInfo, &NodeInfo) -> i64| -> Vec<i64> {
        feasible.iter().map(|&i| f(pod, &nodes[i])).collect()
    };
    let mut totals = vec![0i64; feasible.len()];
    let mut add = |scores: Vec<i64>, weight: i64| {
        for (total, score) in totals.iter_mut().zip(scores) {
            *total += score * weight;
        }
    };

    let mut taint = each(&|p, n| taints::score(p, n));
    default_normalize(&mut taint, true);
    add(taint, weights::TAINT_TOLERATION);

    let mut affinity = each(&|p, n| node_affinity::score(p, n));
    default_normalize(&mut affinity, false);
    add(affinity, weights::NODE_AFFINITY);

    add(
        each(&|p, n| resources::least_allocated(p, n)),
        weights::NODE_RESOURCES_FIT,
    );
    add(
        each(&|p, n| resources::balanced(p, n)),
        weights::BALANCED_ALLOCATION,
    );

    let spreading = spread::Score::new(pod, snapshot, feasible);
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .map(|&i| spreading.score(pod, &nodes[i]))
        .collect();
    add(spread::Score::normalize(&raw), weights::POD_TOPOLOGY_SPREAD);

    let pod_affinity = interpod::Scores::new(pod, snapshot);
    let mut raw: Vec<i64> = feasible
        .iter()
        .map(|&i| pod_affinity.score(&nodes[i]))
        .collect();
    interpod::Scores::normalize(&mut raw);
    add(raw, weights::INTER_POD_AFFINITY);

    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{node, on, pod};
    use k8s_openapi::api::core::v1::Taint;

    #[test]
    fn sampling_follows_kubernetes() {
        let cases = [
            (None, 0, 0),
            (None, 50, 50),
            (None, 99, 99),
            (None, 100, 100),
            (None, 1000, 420),
            (None, 5000, 500),
            (None, 6000, 300),
            (Some(10), 5000, 500),
            (Some(10), 500, 100),
            (Some(100), 5000, 5000),
            (Some(0), 1000, 420),
        ];
        for (percentage, all, want) in cases {
            assert_eq!(
                num_feasible_nodes_to_find(percentage, all),
                want,
                "{percentage:?} of {all}"
            );
        }
    }

    #[test]
    fn fit_error_message_has_kubernetes_format() {
        let error = FitError {
            num_all_nodes: 3,
            reasons: [
                ("Insufficient memory".to_owned(), 2),
                ("node(s) had untolerated taint {gpu: true}".to_owned(), 1),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            error.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: true}, 2 Insufficient memory."
        );
        let none = FitError {
            num_all_nodes: 0,
            reasons: BTreeMap::new(),
        };
        assert_eq!(none.to_string(), "no nodes available to schedule pods");
    }

    fn snapshot(nodes: &[(&str, &str, &str)]) -> Snapshot {
        let mut s = Snapshot::new();
        for (name, cpu, memory) in nodes {
            s.set_node(node(name, cpu, memory, "110", &[]));
        }
        s
    }

    #[test]
    fn picks_the_least_allocated_fitting_node() {
        let mut s = snapshot(&[
            ("small", "1", "1Gi"),
            ("big", "8", "8Gi"),
            ("busy", "8", "8Gi"),
        ]);
        s.set_pod(on(pod("e", "6", "6Gi"), "busy"));
        let result = schedule(&pod("p", "2", "1Gi"), &s, 0).unwrap();
        assert_eq!(result.node, "big");
        assert_eq!(result.evaluated_nodes, 3);
        assert_eq!(result.feasible_nodes, 2);
    }

    #[test]
    fn reports_every_filter_reason() {
        let mut s = snapshot(&[("n1", "1", "1Gi"), ("n2", "4", "512Mi")]);
        let mut tainted = node("n3", "8", "8Gi", "110", &[]);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "gpu".into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        s.set_node(tainted);
        let error = schedule(&pod("p", "2", "1Gi"), &s, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, \
             1 node(s) had untolerated taint {gpu: true}."
        );
    }

    #[test]
    fn ties_go_to_the_first_node_from_start() {
        let s = snapshot(&[("a", "1", "1Gi"), ("b", "1", "1Gi"), ("c", "1", "1Gi")]);
        let p = pod("p", "100m", "100Mi");
        for (start, want) in [(0, "a"), (1, "b"), (2, "c"), (4, "b")] {
            assert_eq!(schedule(&p, &s, start).unwrap().node, want, "start {start}");
        }
    }

    #[test]
    fn samples_large_clusters_from_start() {
        let names: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        let mut s = Snapshot::new();
        for name in &names {
            s.set_node(node(name, "1", "1Gi", "110", &[]));
        }
        let result = schedule(&pod("p", "100m", "100Mi"), &s, 990).unwrap();
        assert_eq!(result.evaluated_nodes, 420);
        assert_eq!(result.feasible_nodes, 420);
        // All equal: the first examined wins.
        assert_eq!(result.node, "n0990");
        let all =
            schedule_with(&PodInfo::new(pod("p", "100m", "100Mi")), &s, 990, Some(100)).unwrap();
        assert_eq!(all.evaluated_nodes, 1000);
    }

    mod overcommit {
        use super::*;
        use proptest::prelude::*;

        fn node_spec() -> impl Strategy<Value = (u32, u32, u32)> {
            // cpu millicores, memory MiB, pod slots
            (100u32..4000, 64u32..4096, 1u32..12)
        }

        fn pod_spec() -> impl Strategy<Value = (u32, u32)> {
            (0u32..1500, 0u32..1500)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Placing pods one after another, each added to the snapshot
            /// as the scheduler's assume step does, never puts more on a
            /// node than it has.
            #[test]
            fn never_overcommits(
                nodes in prop::collection::vec(node_spec(), 1..8),
                pods in prop::collection::vec(pod_spec(), 1..60),
                start in 0usize..16,
            ) {
                let mut s = Snapshot::new();
                for (i, (cpu, memory, slots)) in nodes.iter().enumerate() {
                    s.set_node(node(
                        &format!("n{i}"),
                        &format!("{cpu}m"),
                        &format!("{memory}Mi"),
                        &slots.to_string(),
                        &[],
                    ));
                }
                let mut start = start;
                let mut placed = 0;
                for (k, (cpu, memory)) in pods.iter().enumerate() {
                    let cpu = if *cpu == 0 { String::new() } else { format!("{cpu}m") };
                    let memory = if *memory == 0 { String::new() } else { format!("{memory}Mi") };
                    let p = pod(&format!("p{k}"), &cpu, &memory);
                    match schedule(&p, &s, start) {
                        Ok(result) => {
                            start = (start + result.evaluated_nodes) % s.nodes().len();
                            s.set_pod(on(p, &result.node));
                            placed += 1;
                        }
                        Err(error) => prop_assert!(error.num_all_nodes == nodes.len()),
                    }
                }
                let mut counted = 0;
                for (i, (cpu, memory, slots)) in nodes.iter().enumerate() {
                    let info = s.node(&format!("n{i}")).unwrap();
                    let mut used_cpu = 0i64;
                    let mut used_memory = 0i64;
                    for p in info.pods() {
                        used_cpu += p.requests.milli_cpu;
                        used_memory += p.requests.memory;
                    }
                    counted += info.pods().len();
                    prop_assert!(used_cpu <= i64::from(*cpu), "cpu on n{}", i);
                    prop_assert!(used_memory <= i64::from(*memory) << 20, "memory on n{}", i);
                    prop_assert!(info.pods().len() <= *slots as usize, "pods on n{}", i);
                }
                prop_assert_eq!(counted, placed);
            }
        }
    }
}
