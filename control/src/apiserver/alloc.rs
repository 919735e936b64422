//! ClusterIP and NodePort allocation for Services.
//!
//! Free values are found by scanning the Services in the store under one
//! lock, so two creates in this server never get the same address. (Several
//! API servers on one etcd need a store-level allocation map; that comes
//! with high availability.)

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::Value;
use tokio::sync::Mutex;

/// Hands out ClusterIPs from the service CIDR and NodePorts from the range.
pub(crate) struct Allocator {
    network: u32,
    size: u32,
    node_ports: (u16, u16),
    /// Held from choosing a value until the Service is stored.
    pub(crate) lock: Mutex<()>,
}

impl Allocator {
    pub(crate) fn new(cidr: &str, node_ports: (u16, u16)) -> Result<Allocator, String> {
        let (ip, bits) = cidr.split_once('/').ok_or("expected ADDRESS/BITS")?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("{e}"))?;
        if !(8..=30).contains(&bits) {
            return Err("prefix length must be between 8 and 30".into());
        }
        let mask = u32::MAX << (32 - bits);
        Ok(Allocator {
            network: u32::from(ip) & mask,
            size: 1 << (32 - bits),
            node_ports,
            lock: Mutex::new(()),
        })
    }

    /// Whether `ip` is inside the service CIDR (and not its network or
    /// broadcast address).
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(self.network);
        offset > 0 && offset < self.size - 1
    }

    /// A free ClusterIP, given the Services that exist. The first address
    /// after the network one is kept for the `kubernetes` Service, as in
    /// Kubernetes.
    pub(crate) fn cluster_ip(&self, services: &[Value]) -> Option<Ipv4Addr> {
        let used: HashSet<u32> = services
            .iter()
            .filter_map(|s| {
                s.pointer("/spec/clusterIP")?
                    .as_str()?
                    .parse::<Ipv4Addr>()
                    .ok()
            })
            .map(u32::from)
            .collect();
        (2..self.size - 1)
            .map(|offset| self.network + offset)
            .find(|ip| !used.contains(ip))
            .map(Ipv4Addr::from)
    }

    /// The NodePorts in use.
    pub(crate) fn used_node_ports(services: &[Value]) -> HashSet<u16> {
        services
            .iter()
            .filter_map(|s| s.pointer("/spec/ports")?.as_array())
            .flatten()
            .filter_map(|p| p.get("nodePort")?.as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    }

    /// The NodePort range.
    pub(crate) fn node_port_range(&self) -> (u16, u16) {
        self.node_ports
    }

    /// A free NodePort not in `used`.
    pub(crate) fn node_port(&self, used: &HashSet<u16>) -> Option<u16> {
        (self.node_ports.0..=self.node_ports.1).find(|p| !used.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn allocates_unused_addresses_and_ports() {
        let a = Allocator::new("10.43.0.0/16", (30000, 30002)).unwrap();
        let services = vec![
            json!({"spec": {"clusterIP": "10.43.0.2", "ports": [{"nodePort": 30000}]}}),
            json!({"spec": {"clusterIP": "None"}}),
        ];
        assert_eq!(a.cluster_ip(&services), Some(Ipv4Addr::new(10, 43, 0, 3)));
        let used = Allocator::used_node_ports(&services);
        assert_eq!(a.node_port(&used), Some(30001));
        let full: HashSet<u16> = [30000, 30001, 30002].into();
        assert_eq!(a.node_port(&full), None);
        assert!(a.contains(Ipv4Addr::new(10, 43, 200, 1)));
        assert!(!a.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(Allocator::new("10.0.0.0/33", (1, 2)).is_err());
    }
}
