//! Node IPAM: gives every Node a pod CIDR (`spec.podCIDR`, `spec.podCIDRs`)
//! carved from the cluster CIDR, as kube-controller-manager's nodeipam
//! controller does. The node's agent assigns its pods' virtual IPs from it,
//! so pod IPs are unique cluster-wide without the agents coordinating.
//!
//! The allocation is recomputed from the Nodes themselves (no separate
//! state): a range is in use exactly when some Node carries it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};

use super::Context;

/// Skiff's default cluster (pod) CIDR, k3s' too.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";

/// The size of each node's range.
pub const NODE_MASK: u8 = 24;

/// A parsed IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub base: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if prefix > 32 {
            return Err(format!("{s:?}: prefix longer than 32"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Cidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Cidr {
    /// The `index`-th subnet of length `prefix` inside this one.
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        let base = u64::from(u32::from(self.base)) + u64::from(index) * step;
        Some(Cidr {
            base: Ipv4Addr::from(u32::try_from(base).ok()?),
            prefix,
        })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

/// The first `/mask` range of `cluster` that no entry of `used` names.
pub fn next_free(cluster: Cidr, mask: u8, used: &BTreeSet<String>) -> Option<Cidr> {
    (0..)
        .map_while(|i| cluster.subnet(mask, i))
        .find(|c| !used.contains(&c.to_string()))
}

/// Watches Nodes and gives each one without a pod CIDR the next free range.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let cluster: Cidr = CLUSTER_CIDR.parse().map_err(anyhow::Error::msg)?;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let recorder = ctx.recorder("node-ipam-controller");
    let mut nodes: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let mut initialised = false;
    while let Some(event) = stream.next().await {
        match event? {
            Event::Init => {
                nodes.clear();
                initialised = false;
            }
            Event::InitApply(node) | Event::Apply(node) => {
                let Some(name) = node.metadata.name.clone() else {
                    continue;
                };
                let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
                nodes.insert(name, cidr);
            }
            Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    nodes.remove(name);
                }
                continue;
            }
            Event::InitDone => initialised = true,
        }
        if !initialised {
            continue;
        }
        let mut used: BTreeSet<String> = nodes.values().flatten().cloned().collect();
        let mut waiting: Vec<String> = nodes
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        waiting.sort();
        for name in waiting {
            let Some(cidr) = next_free(cluster, NODE_MASK, &used) else {
                let node = api.get(&name).await?;
                recorder
                    .warning(
                        &super::events::reference(&node),
                        "CIDRNotAvailable",
                        &format!("Node {name} status is now: CIDRNotAvailable (the cluster CIDR {cluster} is exhausted)"),
                    )
                    .await;
                continue;
            };
            let patch = serde_json::json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, %cidr, "assigned a pod CIDR");
                    used.insert(cidr.to_string());
                    nodes.insert(name, Some(cidr.to_string()));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    nodes.remove(&name);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    anyhow::bail!("the node watch ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_allocation() {
        let cluster: Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(cluster.subnet(24, 0).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(
            cluster.subnet(24, 255).unwrap().to_string(),
            "10.42.255.0/24"
        );
        assert!(cluster.subnet(24, 256).is_none());
        assert!(cluster.subnet(8, 0).is_none());
        let used: BTreeSet<String> = ["10.42.0.0/24".into(), "10.42.2.0/24".into()].into();
        assert_eq!(
            next_free(cluster, 24, &used).unwrap().to_string(),
            "10.42.1.0/24"
        );
        let all: BTreeSet<String> = (0..256).map(|i| format!("10.42.{i}.0/24")).collect();
        assert!(next_free(cluster, 24, &all).is_none());
        let odd: Cidr = "10.42.7.9/24".parse().unwrap();
        assert_eq!(odd.to_string(), "10.42.7.0/24");
        assert!(odd.contains("10.42.7.200".parse().unwrap()));
        assert!(!odd.contains("10.42.8.1".parse().unwrap()));
        assert!("10.42.0.0".parse::<Cidr>().is_err());
        assert!("10.42.0.0/33".parse::<Cidr>().is_err());
    }
}
