//! The service load balancer, as k3s's ServiceLB does it: every node opens
//! the ports of `LoadBalancer` Services (the agents' Service proxy does
//! that), and this controller writes the Ready nodes' addresses into each
//! such Service's `status.loadBalancer.ingress`, so `kubectl get svc`
//! shows an EXTERNAL-IP and clients know where to connect.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::Event;

use super::Context;

/// The addresses a LoadBalancer Service is reachable at: the InternalIP
/// (else ExternalIP) of every Ready node that is not cordoned, sorted.
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for node in nodes {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let cordoned = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !ready || cordoned {
            continue;
        }
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .cloned()
            .unwrap_or_default();
        let pick = |kind: &str| {
            addresses
                .iter()
                .find(|a| a.type_ == kind)
                .map(|a| a.address.clone())
        };
        if let Some(address) = pick("InternalIP").or_else(|| pick("ExternalIP")) {
            out.insert(address);
        }
    }
    out.into_iter().collect()
}

/// The `status.loadBalancer.ingress` a Service should have: the node
/// addresses for a `LoadBalancer` Service, nothing for any other.
fn wanted(service: &Service, addresses: &[String]) -> Vec<serde_json::Value> {
    if !is_load_balancer(service) {
        return Vec::new();
    }
    let spec = service.spec.as_ref();
    let ports: Vec<serde_json::Value> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| serde_json::json!({ "port": p.port, "protocol": p.protocol.as_deref().unwrap_or("TCP") }))
        .collect();
    addresses
        .iter()
        .map(|ip| serde_json::json!({ "ip": ip, "ipMode": "VIP", "ports": ports }))
        .collect()
}

/// The `status.loadBalancer.ingress` a Service has.
fn current(service: &Service) -> Vec<serde_json::Value> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect()
}

enum Change {
    Service(Box<Service>),
    ServiceGone(String, String),
    Node(Box<Node>),
    NodeGone(String),
    Resync,
}

/// Watches Services and Nodes and keeps LoadBalancer statuses current.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let svc_events = ctx.informers.watch::<Service>().map(|e| {
        e.map(|e| match e {
            Event::Apply(s) | Event::InitApply(s) => Change::Service(Box::new(s)),
            Event::Delete(s) => Change::ServiceGone(
                s.metadata.namespace.unwrap_or_default(),
                s.metadata.name.unwrap_or_default(),
            ),
            Event::Init | Event::InitDone => Change::Resync,
        })
    });
    let node_events = ctx.informers.watch::<Node>().map(|e| {
        e.map(|e| match e {
            Event::Apply(n) | Event::InitApply(n) => Change::Node(Box::new(n)),
            Event::Delete(n) => Change::NodeGone(n.metadata.name.unwrap_or_default()),
            Event::Init | Event::InitDone => Change::Resync,
        })
    });
    let mut events = futures::stream::select(svc_events.boxed(), node_events.boxed());
    let mut services: Services = BTreeMap::new();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    while let Some(first) = events.next().await {
        // Take every change already waiting (a list of thousands of nodes
        // arrives at once), then look at the Services once.
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
        }
        for event in batch {
            apply(event?, &mut services, &mut nodes);
        }
        if !services
            .values()
            .any(|s| is_load_balancer(s) || !current(s).is_empty())
        {
            continue;
        }
        let addresses = node_addresses(nodes.values());
        for ((ns, name), service) in &mut services {
            let want = wanted(service, &addresses);
            if current(service) == want {
                continue;
            }
            let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
            // A merge patch replaces the whole ingress list.
            let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": want } } });
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    tracing::info!(service = %format!("{ns}/{name}"), addresses = ?addresses, "load balancer status updated");
                    // The watch brings it too; until then, do not write again.
                    *service = updated;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    anyhow::bail!("the service or node watch ended")
}

type Services = BTreeMap<(String, String), Service>;

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Applies one change to the controller's view.
fn apply(change: Change, services: &mut Services, nodes: &mut BTreeMap<String, Node>) {
    match change {
        Change::Service(s) => {
            let key = (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            services.insert(key, *s);
        }
        Change::ServiceGone(ns, name) => {
            services.remove(&(ns, name));
        }
        Change::Node(n) => {
            nodes.insert(n.metadata.name.clone().unwrap_or_default(), *n);
        }
        Change::NodeGone(name) => {
            nodes.remove(&name);
        }
        Change::Resync => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: bool, cordoned: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": { "unschedulable": cordoned },
            "status": {
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                "addresses": [{ "type": "Hostname", "address": name }, { "type": "InternalIP", "address": ip }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn ready_uncordoned_nodes_give_their_internal_ips() {
        let nodes = [
            node("c", "10.0.0.3", true, false),
            node("a", "10.0.0.1", true, false),
            node("b", "10.0.0.2", false, false),
            node("d", "10.0.0.4", true, true),
        ];
        assert_eq!(node_addresses(&nodes), ["10.0.0.1", "10.0.0.3"]);
    }

    #[test]
    fn only_load_balancers_get_ingress() {
        let lb: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80 }] },
        }))
        .unwrap();
        let want = wanted(&lb, &["10.0.0.1".to_owned()]);
        assert_eq!(want[0]["ip"], "10.0.0.1");
        assert_eq!(want[0]["ports"][0]["port"], 80);
        assert!(wanted(&lb, &[]).is_empty());
        let cluster_ip: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "db", "namespace": "default" },
            "spec": { "ports": [{ "port": 5432 }] },
        }))
        .unwrap();
        assert!(wanted(&cluster_ip, &["10.0.0.1".to_owned()]).is_empty());
    }
}
