//! Host ports (kube's `NodePorts`): two pods cannot take the same host
//! port, protocol and address on one node.

use crate::scheduler::snapshot::{NodeInfo, PodInfo};

/// The reason for a node whose host ports are taken.
pub const PORTS_TAKEN: &str = "node(s) didn't have free ports for the requested pod ports";

/// Fails a node where a pod already holds one of the pod's host ports.
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), &'static str> {
    if pod.host_ports.is_empty() {
        return Ok(());
    }
    let taken = node
        .pods()
        .iter()
        .flat_map(|p| p.host_ports.iter())
        .any(|used| pod.host_ports.iter().any(|want| want.conflicts(used)));
    if taken { Err(PORTS_TAKEN) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{node, on, pod};
    use k8s_openapi::api::core::v1::{ContainerPort, Pod};

    fn with_port(name: &str, port: i32, protocol: &str, ip: Option<&str>) -> Pod {
        let mut p = pod(name, "", "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            protocol: Some(protocol.into()),
            host_ip: ip.map(Into::into),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn host_ports() {
        let cases = [
            (
                "no ports",
                pod("p", "", ""),
                Some(with_port("e", 80, "TCP", None)),
                Ok(()),
            ),
            ("free node", with_port("p", 80, "TCP", None), None, Ok(())),
            (
                "same port",
                with_port("p", 80, "TCP", None),
                Some(with_port("e", 80, "TCP", None)),
                Err(PORTS_TAKEN),
            ),
            (
                "other protocol",
                with_port("p", 80, "UDP", None),
                Some(with_port("e", 80, "TCP", None)),
                Ok(()),
            ),
            (
                "other address",
                with_port("p", 80, "TCP", Some("10.0.0.1")),
                Some(with_port("e", 80, "TCP", Some("10.0.0.2"))),
                Ok(()),
            ),
            (
                "wildcard address",
                with_port("p", 80, "TCP", Some("10.0.0.1")),
                Some(with_port("e", 80, "TCP", None)),
                Err(PORTS_TAKEN),
            ),
        ];
        for (what, p, existing, want) in cases {
            let mut info = NodeInfo::new(node("n", "1", "1Gi", "10", &[]));
            if let Some(e) = existing {
                info.add_pod(std::sync::Arc::new(PodInfo::new(on(e, "n"))));
            }
            assert_eq!(filter(&PodInfo::new(p), &info), want, "{what}");
        }
    }
}
