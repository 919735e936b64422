//! What a Service's Endpoints and EndpointSlices should hold, computed from
//! the Service and its selected pods without any I/O, as Kubernetes'
//! endpoints and endpointslice controllers compute them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Most endpoints in one EndpointSlice (Kubernetes' default
/// `--max-endpoints-per-slice`).
pub(crate) const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether `pods` carry labels `selector` selects (every pair present).
pub(crate) fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The Service's selector when it manages endpoints: `None` for Services
/// without one (their endpoints are the user's) and for ExternalName.
pub(crate) fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's IPv4 address, if it has one.
fn ipv4(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let mut candidates = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip));
    candidates
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .cloned()
}

/// Kubernetes' `ShouldPodBeInEndpoints`: not finished, has an address,
/// and not terminating unless terminating pods are wanted.
fn in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    !terminal(pod) && (include_terminating || !terminating(pod))
}

fn protocol(sp: &ServicePort) -> String {
    sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())
}

/// Kubernetes' `FindPort`: the pod port a Service port targets, a number
/// as is, a name looked up among the pod's container ports of the same
/// protocol (sidecar init containers included).
pub(crate) fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol(sp)
                })
                .map(|p| p.container_port)
        }
    }
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The pod's hostname in the Service's DNS, when the pod asks for one under
/// this Service (`hostname` set and `subdomain` naming the Service).
fn hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref().is_some_and(|s| !s.is_empty())
        && spec.subdomain == svc.metadata.name
        && svc.metadata.namespace == pod.metadata.namespace)
        .then(|| hostname.to_owned())
}

/// A port as a sortable key: name, port, protocol, appProtocol.
type PortKey = (String, i32, String, String);

/// The subsets of the Service's Endpoints: one per distinct set of
/// resolved ports, each with its ready and not-ready addresses, sorted.
pub(crate) fn endpoints_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(svc);
    let ports = service_ports(svc);
    // address (ip, pod uid) -> (address, ready, ports)
    let mut addresses: BTreeMap<(String, String), (EndpointAddress, bool, BTreeSet<PortKey>)> =
        BTreeMap::new();
    for pod in pods {
        if !in_endpoints(pod, publish) {
            continue;
        }
        let Some(ip) = ipv4(pod) else { continue };
        let address = EndpointAddress {
            ip: ip.clone(),
            hostname: hostname(pod, svc),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
        };
        let ready = publish || pod_ready(pod);
        let mut resolved = BTreeSet::new();
        for sp in ports {
            if let Some(port) = find_port(pod, sp) {
                resolved.insert((
                    sp.name.clone().unwrap_or_default(),
                    port,
                    protocol(sp),
                    sp.app_protocol.clone().unwrap_or_default(),
                ));
            }
        }
        // A pod none of whose ports resolve serves nothing; only a headless
        // Service without ports lists bare addresses.
        if resolved.is_empty() && !(ports.is_empty() && headless(svc)) {
            continue;
        }
        let key = (ip, pod.metadata.uid.clone().unwrap_or_default());
        addresses.insert(key, (address, ready, resolved));
    }
    let mut by_ports: BTreeMap<BTreeSet<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for (address, ready, ports) in addresses.into_values() {
        let entry = by_ports.entry(ports).or_default();
        if ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    by_ports
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: nonempty(ready),
            not_ready_addresses: nonempty(not_ready),
            ports: nonempty(
                ports
                    .into_iter()
                    .map(|(name, port, protocol, app)| EndpointPort {
                        name: Some(name).filter(|n| !n.is_empty()),
                        port,
                        protocol: Some(protocol),
                        app_protocol: Some(app).filter(|a| !a.is_empty()),
                    })
                    .collect(),
            ),
        })
        .collect()
}

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Normalizes subsets read back from the server to the form
/// [`endpoints_subsets`] produces (empty lists absent, protocol explicit),
/// so the two compare equal when they mean the same.
pub(crate) fn normalize_subsets(subsets: Option<&Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    subsets
        .into_iter()
        .flatten()
        .map(|s| EndpointSubset {
            addresses: s.addresses.clone().and_then(nonempty),
            not_ready_addresses: s.not_ready_addresses.clone().and_then(nonempty),
            ports: s.ports.clone().and_then(nonempty).map(|ports| {
                ports
                    .into_iter()
                    .map(|mut p| {
                        p.protocol.get_or_insert_with(|| "TCP".to_owned());
                        p.name = p.name.filter(|n| !n.is_empty());
                        p.app_protocol = p.app_protocol.filter(|a| !a.is_empty());
                        p
                    })
                    .collect()
            }),
        })
        .collect()
}

/// One slice's worth of content: its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SliceContent {
    /// The ports every endpoint in the slice serves.
    pub(crate) ports: Vec<discovery::EndpointPort>,
    /// The endpoints, sorted by address.
    pub(crate) endpoints: Vec<discovery::Endpoint>,
}

/// The EndpointSlices' contents: endpoints grouped by their resolved port
/// set, at most [`MAX_ENDPOINTS_PER_SLICE`] a slice; a single empty
/// placeholder when no pod is selected, as Kubernetes keeps one.
pub(crate) fn slices(svc: &Service, pods: &[&Pod]) -> Vec<SliceContent> {
    let publish = publish_not_ready(svc);
    let ports = service_ports(svc);
    let mut groups: BTreeMap<BTreeSet<PortKey>, Vec<(String, discovery::Endpoint)>> =
        BTreeMap::new();
    for pod in pods {
        if !in_endpoints(pod, true) {
            continue;
        }
        let Some(ip) = ipv4(pod) else { continue };
        let serving = pod_ready(pod);
        let terminating = terminating(pod);
        let endpoint = discovery::Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname(pod, svc),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
            ..discovery::Endpoint::default()
        };
        let resolved: BTreeSet<PortKey> = ports
            .iter()
            .filter_map(|sp| {
                find_port(pod, sp).map(|port| {
                    (
                        sp.name.clone().unwrap_or_default(),
                        port,
                        protocol(sp),
                        sp.app_protocol.clone().unwrap_or_default(),
                    )
                })
            })
            .collect();
        let order = format!("{ip}/{}", pod.metadata.uid.as_deref().unwrap_or_default());
        groups.entry(resolved).or_default().push((order, endpoint));
    }
    if groups.is_empty() {
        return vec![SliceContent {
            ports: Vec::new(),
            endpoints: Vec::new(),
        }];
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let ports: Vec<discovery::EndpointPort> = ports
            .into_iter()
            .map(|(name, port, protocol, app)| discovery::EndpointPort {
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: Some(app).filter(|a| !a.is_empty()),
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(SliceContent {
                ports: ports.clone(),
                endpoints: chunk.iter().map(|(_, e)| e.clone()).collect(),
            });
        }
    }
    out
}

/// A slice read back from the server in the form [`slices`] produces.
pub(crate) fn normalize_slice(slice: &discovery::EndpointSlice) -> SliceContent {
    SliceContent {
        ports: slice
            .ports
            .iter()
            .flatten()
            .map(|p| discovery::EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: p.port,
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: p.app_protocol.clone().filter(|a| !a.is_empty()),
            })
            .collect(),
        endpoints: slice.endpoints.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, ports: serde_json::Value) -> Pod {
        let mut status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        });
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn named_target_ports_split_pods_into_subsets_by_port_set() {
        let s = svc(json!({
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        }));
        let a = pod(
            "a",
            Some("10.0.0.1"),
            true,
            json!([{"name": "http", "containerPort": 8080}]),
        );
        let b = pod(
            "b",
            Some("10.0.0.2"),
            false,
            json!([{"name": "http", "containerPort": 9090}]),
        );
        let c = pod(
            "c",
            Some("10.0.0.3"),
            true,
            json!([{"name": "other", "containerPort": 1}]),
        );
        let d = pod(
            "d",
            None,
            true,
            json!([{"name": "http", "containerPort": 8080}]),
        );
        let subsets = endpoints_subsets(&s, &[&a, &b, &c, &d]);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
        assert!(subsets[0].not_ready_addresses.is_none());
        assert_eq!(subsets[1].ports.as_ref().unwrap()[0].port, 9090);
        assert_eq!(
            subsets[1].not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.2"
        );

        let slices = slices(&s, &[&a, &b, &c, &d]);
        // c resolves no port: its own slice with no ports.
        assert_eq!(slices.len(), 3, "{slices:?}");
        let ports: Vec<Vec<i32>> = slices
            .iter()
            .map(|s| s.ports.iter().filter_map(|p| p.port).collect())
            .collect();
        assert_eq!(ports, vec![vec![], vec![8080], vec![9090]]);
        let b_conditions = slices[2].endpoints[0].conditions.clone().unwrap();
        assert_eq!(b_conditions.ready, Some(false));
        assert_eq!(b_conditions.serving, Some(false));
    }

    #[test]
    fn terminating_pods_leave_endpoints_but_stay_in_slices_as_terminating() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let mut a = pod("a", Some("10.0.0.1"), true, json!([]));
        a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(endpoints_subsets(&s, &[&a]).is_empty());
        let slices = slices(&s, &[&a]);
        let c = slices[0].endpoints[0].conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
    }

    #[test]
    fn publish_not_ready_addresses_lists_everyone_as_ready() {
        let s = svc(
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}),
        );
        let a = pod("a", Some("10.0.0.1"), false, json!([]));
        let subsets = endpoints_subsets(&s, &[&a]);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 1);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 80);
    }

    #[test]
    fn no_pods_leaves_one_empty_placeholder_slice() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        assert_eq!(
            slices(&s, &[]),
            vec![SliceContent {
                ports: vec![],
                endpoints: vec![]
            }]
        );
    }
}
