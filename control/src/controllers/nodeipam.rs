//! Node IPAM: gives every Node a pod CIDR (`spec.podCIDR`, `spec.podCIDRs`)
//! carved from the cluster CIDR, as kube-controller-manager's nodeipam
//! controller does. The node's agent assigns its pods' virtual IPs from it,
//! so pod IPs are unique cluster-wide without the agents coordinating.
//!
//! The allocation is recomputed from the Nodes themselves (no separate
//! state): a range is in use exactly when some Node carries it.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::Event;

pub use skiff_api::cidr::Cidr;

use super::Context;

/// Skiff's default cluster (pod) CIDR, k3s' too.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";

/// The default size of each node's range.
pub const NODE_MASK: u8 = 24;

/// The first `/mask` range of `cluster` that no entry of `used` names.
pub fn next_free(cluster: Cidr, mask: u8, used: &BTreeSet<String>) -> Option<Cidr> {
    (0..)
        .map_while(|i| cluster.subnet(mask, i))
        .find(|c| !used.contains(&c.to_string()))
}

/// Watches Nodes and gives each one without a pod CIDR the next free range.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let cluster = ctx.options.cluster_cidr;
    let mask = ctx.options.node_cidr_mask;
    anyhow::ensure!(
        mask >= cluster.prefix && mask <= 29,
        "the node CIDR mask /{mask} must lie between the cluster CIDR's /{} and /29",
        cluster.prefix
    );
    let api: Api<Node> = Api::all(ctx.client.clone());
    let recorder = ctx.recorder("node-ipam-controller");
    let mut nodes: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut stream = ctx.informers.watch::<Node>();
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
            let Some(cidr) = next_free(cluster, mask, &used) else {
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
