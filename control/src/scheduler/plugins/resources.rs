//! Resources (kube's `NodeResourcesFit` and
//! `NodeResourcesBalancedAllocation`): a pod fits where allocatable cpu,
//! memory and pod slots cover it plus the pods already there; among those,
//! the least allocated nodes and those left most balanced score higher.

use super::MAX_NODE_SCORE;
use crate::scheduler::snapshot::{NodeInfo, PodInfo};

/// The reason for a node without room for another pod.
pub const TOO_MANY_PODS: &str = "Too many pods";
/// The reason for a node without enough cpu.
pub const INSUFFICIENT_CPU: &str = "Insufficient cpu";
/// The reason for a node without enough memory.
pub const INSUFFICIENT_MEMORY: &str = "Insufficient memory";

/// The resources the node lacks for the pod (empty when it fits).
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if node.pods().len() as i64 + 1 > node.allowed_pods() {
        reasons.push(TOO_MANY_PODS);
    }
    let free = node.allocatable() - node.requested();
    if pod.requests.milli_cpu > 0 && pod.requests.milli_cpu > free.milli_cpu {
        reasons.push(INSUFFICIENT_CPU);
    }
    if pod.requests.memory > 0 && pod.requests.memory > free.memory {
        reasons.push(INSUFFICIENT_MEMORY);
    }
    reasons
}

/// The `LeastAllocated` score (already `0..=100`): the share of cpu and
/// memory left free once the pod is placed, averaged (equal weights).
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let requested = node.non_zero_requested() + pod.non_zero_requests;
    let allocatable = node.allocatable();
    let least = |requested: i64, capacity: i64| -> i64 {
        if capacity <= 0 || requested > capacity {
            return 0;
        }
        let free = capacity - requested;
        match free.checked_mul(MAX_NODE_SCORE) {
            Some(scaled) => scaled / capacity,
            // Beyond i64 (exabytes of memory): the slow, exact way.
            None => (i128::from(free) * i128::from(MAX_NODE_SCORE) / i128::from(capacity)) as i64,
        }
    };
    (least(requested.milli_cpu, allocatable.milli_cpu)
        + least(requested.memory, allocatable.memory))
        / 2
}

/// The `BalancedAllocation` score (already `0..=100`): high when cpu and
/// memory would be used in the same proportion. Uses real requests; a pod
/// requesting nothing scores every node 0, as in Kubernetes.
pub fn balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    if pod.requests.milli_cpu == 0 && pod.requests.memory == 0 {
        return 0;
    }
    let requested = node.requested() + pod.requests;
    let allocatable = node.allocatable();
    let fraction = |requested: i64, capacity: i64| -> Option<f64> {
        (capacity > 0).then(|| (requested as f64 / capacity as f64).min(1.0))
    };
    let std = match (
        fraction(requested.milli_cpu, allocatable.milli_cpu),
        fraction(requested.memory, allocatable.memory),
    ) {
        (Some(a), Some(b)) => (a - b).abs() / 2.0,
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{node, on, pod};
    use std::sync::Arc;

    fn with_pods(cpu: &str, memory: &str, slots: &str, existing: &[(&str, &str)]) -> NodeInfo {
        let mut info = NodeInfo::new(node("n", cpu, memory, slots, &[]));
        for (i, (c, m)) in existing.iter().enumerate() {
            info.add_pod(Arc::new(PodInfo::new(on(pod(&format!("e{i}"), c, m), "n"))));
        }
        info
    }

    #[test]
    fn fit() {
        let cases = [
            (
                "fits",
                with_pods("2", "2Gi", "10", &[("1", "1Gi")]),
                pod("p", "1", "1Gi"),
                vec![],
            ),
            (
                "cpu",
                with_pods("2", "2Gi", "10", &[("1500m", "1Gi")]),
                pod("p", "600m", "1Gi"),
                vec![INSUFFICIENT_CPU],
            ),
            (
                "memory",
                with_pods("2", "2Gi", "10", &[("1", "1Gi")]),
                pod("p", "1", "1025Mi"),
                vec![INSUFFICIENT_MEMORY],
            ),
            (
                "both",
                with_pods("1", "1Gi", "10", &[]),
                pod("p", "2", "2Gi"),
                vec![INSUFFICIENT_CPU, INSUFFICIENT_MEMORY],
            ),
            (
                "pods",
                with_pods("2", "2Gi", "1", &[("", "")]),
                pod("p", "", ""),
                vec![TOO_MANY_PODS],
            ),
            (
                "no pod room declared",
                with_pods("2", "2Gi", "0", &[]),
                pod("p", "", ""),
                vec![TOO_MANY_PODS],
            ),
            (
                "zero request fits a full node",
                with_pods("1", "1Gi", "10", &[("1", "1Gi")]),
                pod("p", "", ""),
                vec![],
            ),
            (
                "exactly full",
                with_pods("1", "1Gi", "10", &[("500m", "512Mi")]),
                pod("p", "500m", "512Mi"),
                vec![],
            ),
        ];
        for (what, n, p, want) in cases {
            assert_eq!(filter(&PodInfo::new(p), &n), want, "{what}");
        }
    }

    #[test]
    fn least_allocated_scores() {
        let cases = [
            (
                "empty node",
                with_pods("4", "4Gi", "10", &[]),
                pod("p", "1", "1Gi"),
                75,
            ),
            (
                "half used",
                with_pods("4", "4Gi", "10", &[("1", "1Gi")]),
                pod("p", "1", "1Gi"),
                50,
            ),
            (
                "uneven",
                with_pods("4", "4Gi", "10", &[]),
                pod("p", "2", "1Gi"),
                62,
            ),
            (
                "over capacity",
                with_pods("1", "1Gi", "10", &[]),
                pod("p", "2", "2Gi"),
                0,
            ),
            (
                "defaults for no request",
                with_pods("1", "1000Mi", "10", &[]),
                pod("p", "", ""),
                85,
            ),
            (
                "exabytes: the product overflows i64",
                with_pods("4", "4Ei", "10", &[]),
                pod("p", "1", "1Ei"),
                75,
            ),
        ];
        for (what, n, p, want) in cases {
            assert_eq!(least_allocated(&PodInfo::new(p), &n), want, "{what}");
        }
    }

    #[test]
    fn balanced_scores() {
        let cases = [
            (
                "balanced",
                with_pods("4", "4Gi", "10", &[]),
                pod("p", "2", "2Gi"),
                100,
            ),
            (
                "cpu heavy",
                with_pods("4", "4Gi", "10", &[]),
                pod("p", "4", "0"),
                50,
            ),
            (
                "existing pods count",
                with_pods("4", "4Gi", "10", &[("2", "")]),
                pod("p", "", "2Gi"),
                100,
            ),
            (
                "no requests",
                with_pods("4", "4Gi", "10", &[]),
                pod("p", "", ""),
                0,
            ),
        ];
        for (what, n, p, want) in cases {
            assert_eq!(balanced(&PodInfo::new(p), &n), want, "{what}");
        }
    }
}
