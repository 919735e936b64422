//! The Service routing table every agent keeps: from what a guest dials
//! (`http://web`, `web.shop.svc.cluster.local:8080`, a ClusterIP, a pod IP)
//! to one ready endpoint, chosen by least outstanding requests with a
//! rotating tie-break (round robin when idle), with `sessionAffinity:
//! ClientIP` honoured.
//!
//! The table is pure: it is fed Services and EndpointSlices (by the agent's
//! watches) and answers lookups; time comes in as an argument. That keeps
//! every routing rule unit-testable.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// How many `ExternalName` aliases of cluster Services one lookup follows
/// (a loop of them ends as a call to the last name, outside the cluster).
const MAX_ALIASES: usize = 4;

/// Whether `name` is a Service's DNS name in this cluster
/// (`NAME.NS.svc` or `NAME.NS.svc.cluster.local`, a trailing dot allowed).
fn is_service_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let labels = name.split('.').count();
    (labels == 3 && name.ends_with(".svc"))
        || (labels == 3 + CLUSTER_DOMAIN.split('.').count()
            && name.ends_with(&format!(".svc.{CLUSTER_DOMAIN}")))
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10_800);

/// One place a request can go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The pod's (virtual) IP.
    pub ip: IpAddr,
    /// The port on the pod.
    pub port: u16,
    /// The node running it, if known.
    pub node: Option<String>,
    /// `namespace/name` of the pod, if known.
    pub pod: Option<(String, String)>,
}

/// Where a lookup leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A ready endpoint of a Service (or a pod dialled by its IP).
    Endpoint(Endpoint),
    /// An `ExternalName` Service: the caller dials this host itself
    /// (subject to egress rules), on the port it asked for.
    External(String),
    /// Not a cluster name or address: outside traffic (egress rules apply).
    Outside,
}

/// Why a cluster destination cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The Service exists but has no ready endpoint for the port.
    #[error("service {namespace}/{name} has no ready endpoints for port {port}")]
    NoEndpoints {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The port asked for.
        port: u16,
    },
    /// The Service does not expose the port.
    #[error("service {namespace}/{name} has no port {port}")]
    NoSuchPort {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The port asked for.
        port: u16,
    },
    /// A cluster-looking name that names no Service.
    #[error("no service {0} in the cluster")]
    NoSuchService(String),
}

#[derive(Debug, Default)]
struct ServiceEntry {
    cluster_ips: Vec<IpAddr>,
    ports: Vec<PortEntry>,
    external_name: Option<String>,
    /// A `LoadBalancer` Service: its ports open on every node, like k3s's
    /// service load balancer.
    load_balancer: bool,
    affinity: Option<Duration>,
    /// Endpoints by service port name, merged from every slice.
    slices: HashMap<String, SliceEndpoints>,
}

#[derive(Debug, Clone)]
struct PortEntry {
    name: String,
    port: u16,
    node_port: Option<u16>,
}

#[derive(Debug, Default, Clone)]
struct SliceEndpoints {
    /// Per slice name: the ready endpoints it lists for this port name.
    by_slice: HashMap<String, Vec<Endpoint>>,
}

/// A request in flight to an endpoint; dropping it ends the request for
/// the least-outstanding count.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The routing table.
#[derive(Debug, Default)]
pub struct ServiceTable {
    services: HashMap<(String, String), ServiceEntry>,
    by_ip: HashMap<IpAddr, (String, String)>,
    pods: HashMap<IpAddr, Endpoint>,
    outstanding: HashMap<Endpoint, Arc<AtomicUsize>>,
    affinity: HashMap<(String, String, u16, IpAddr), (Endpoint, Instant)>,
    turn: usize,
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

impl ServiceTable {
    /// An empty table.
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, service: &Service) {
        let Some((namespace, name)) = names(&service.metadata) else {
            return;
        };
        let k = key(&namespace, &name);
        let spec = service.spec.clone().unwrap_or_default();
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.dedup();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(PortEntry {
                    name: p.name.unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                })
            })
            .collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .and_then(|c| c.client_ip?.timeout_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_AFFINITY, Duration::from_secs)
        });
        let external_name = (spec.type_.as_deref() == Some("ExternalName"))
            .then_some(spec.external_name)
            .flatten();
        self.by_ip.retain(|_, v| *v != k);
        for ip in &cluster_ips {
            self.by_ip.insert(*ip, k.clone());
        }
        let entry = self.services.entry(k).or_default();
        entry.cluster_ips = cluster_ips;
        entry.ports = ports;
        entry.affinity = affinity;
        entry.external_name = external_name;
        entry.load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
    }

    /// The number of Service `namespace/name`'s port called `port_name`.
    pub fn service_port_by_name(
        &self,
        namespace: &str,
        name: &str,
        port_name: &str,
    ) -> Option<u16> {
        self.services
            .get(&key(namespace, name))?
            .ports
            .iter()
            .find(|p| p.name == port_name)
            .map(|p| p.port)
    }

    /// Replaces every Service with `all` (a watch's complete relisting):
    /// those not in it go with their slices, the others keep theirs.
    pub fn replace_services(&mut self, all: &[Service]) {
        let keep: std::collections::HashSet<(String, String)> =
            all.iter().filter_map(|s| names(&s.metadata)).collect();
        let gone: Vec<(String, String)> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            self.remove_service(&namespace, &name);
        }
        for service in all {
            self.upsert_service(service);
        }
    }

    /// Replaces every EndpointSlice with `all` (a watch's complete
    /// relisting); Services stay.
    pub fn replace_slices(&mut self, all: &[EndpointSlice]) {
        for entry in self.services.values_mut() {
            entry.slices.clear();
        }
        for slice in all {
            self.upsert_slice(slice);
        }
    }

    /// Forgets a Service (its slices go with it).
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        let k = key(namespace, name);
        self.services.remove(&k);
        self.by_ip.retain(|_, v| *v != k);
        self.affinity
            .retain(|(ns, n, _, _), _| !(ns == namespace && n == name));
    }

    /// Adds or replaces an EndpointSlice (found by its
    /// `kubernetes.io/service-name` label).
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let Some((namespace, slice_name)) = names(&slice.metadata) else {
            return;
        };
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            return;
        };
        self.remove_slice(&namespace, &slice_name);
        let entry = self.services.entry(key(&namespace, service)).or_default();
        for port in slice.ports.iter().flatten() {
            let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let mut ready = Vec::new();
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                // Kubernetes: a nil `ready` means ready.
                if conditions.ready == Some(false) {
                    continue;
                }
                let pod = endpoint.target_ref.as_ref().and_then(|r| {
                    (r.kind.as_deref() == Some("Pod")).then(|| {
                        (
                            r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            r.name.clone().unwrap_or_default(),
                        )
                    })
                });
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse() {
                        ready.push(Endpoint {
                            ip,
                            port: number,
                            node: endpoint.node_name.clone(),
                            pod: pod.clone(),
                        });
                    }
                }
            }
            entry
                .slices
                .entry(port.name.clone().unwrap_or_default())
                .or_default()
                .by_slice
                .insert(slice_name.clone(), ready);
        }
    }

    /// Forgets an EndpointSlice.
    pub fn remove_slice(&mut self, namespace: &str, slice_name: &str) {
        for ((ns, _), entry) in &mut self.services {
            if ns == namespace {
                for by_port in entry.slices.values_mut() {
                    by_port.by_slice.remove(slice_name);
                }
            }
        }
    }

    /// Records a pod's IP so it can be dialled directly.
    pub fn upsert_pod(&mut self, ip: IpAddr, namespace: &str, name: &str, node: Option<&str>) {
        self.pods.insert(
            ip,
            Endpoint {
                ip,
                port: 0,
                node: node.map(str::to_owned),
                pod: Some(key(namespace, name)),
            },
        );
    }

    /// Forgets a pod IP.
    pub fn remove_pod(&mut self, ip: IpAddr) {
        self.pods.remove(&ip);
    }

    /// Which Service a host names, for a caller in `from_namespace`:
    /// `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local` (a trailing
    /// dot allowed) or a ClusterIP. `None` when the host is not a cluster
    /// name.
    fn service_for(
        &self,
        host: &str,
        from_namespace: &str,
    ) -> Option<Result<(String, String), RouteError>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.by_ip.get(&ip).cloned().map(Ok);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let suffix = [&["svc"][..], &CLUSTER_DOMAIN.split('.').collect::<Vec<_>>()].concat();
        // `svc` and `svc.ns` are cluster names only if such a Service
        // exists (`example.com` is not namespace `com`); with the `svc`
        // suffix the name is the cluster's whatever happens.
        let (service, namespace, definitive) = match labels.as_slice() {
            [svc] => (*svc, from_namespace, false),
            [svc, ns] => (*svc, *ns, false),
            [svc, ns, rest @ ..] if suffix.starts_with(rest) => (*svc, *ns, true),
            _ => return None,
        };
        let k = key(namespace, service);
        if self
            .services
            .get(&k)
            .is_some_and(|e| !e.ports.is_empty() || e.external_name.is_some())
        {
            Some(Ok(k))
        } else if definitive {
            Some(Err(RouteError::NoSuchService(format!(
                "{namespace}/{service}"
            ))))
        } else {
            None
        }
    }

    /// Routes a request for `host:port` from a pod in `from_namespace`
    /// whose IP is `client` (for session affinity), avoiding `exclude`
    /// (endpoints that already failed this request). The returned
    /// [`InFlight`] must live as long as the request.
    pub fn route(
        &mut self,
        host: &str,
        port: u16,
        from_namespace: &str,
        client: IpAddr,
        exclude: &[Endpoint],
        now: Instant,
    ) -> Result<(Destination, Option<InFlight>), RouteError> {
        let mut host = host.to_owned();
        let mut aliases = 0;
        let k = loop {
            let k = match self.service_for(&host, from_namespace) {
                Some(found) => found?,
                None => {
                    if let Ok(ip) = host.parse::<IpAddr>()
                        && let Some(pod) = self.pods.get(&ip)
                    {
                        let endpoint = Endpoint {
                            port,
                            ..pod.clone()
                        };
                        let guard = self.begin(&endpoint);
                        return Ok((Destination::Endpoint(endpoint), Some(guard)));
                    }
                    return Ok((Destination::Outside, None));
                }
            };
            let Some(external) = &self.services[&k].external_name else {
                break k;
            };
            // An ExternalName naming a Service of this cluster is an alias
            // of it (Kubernetes' DNS answers with a CNAME).
            if aliases < MAX_ALIASES && is_service_name(external) {
                aliases += 1;
                host = external.clone();
                continue;
            }
            return Ok((Destination::External(external.clone()), None));
        };
        let entry = &self.services[&k];
        let Some(service_port) = entry.ports.iter().find(|p| p.port == port).cloned() else {
            return Err(RouteError::NoSuchPort {
                namespace: k.0,
                name: k.1,
                port,
            });
        };
        self.pick(&k, &service_port, client, exclude, now)
    }

    /// Routes a connection that arrived on a NodePort (or on the port of a
    /// `LoadBalancer` Service, open on every node): to the Service
    /// exposing `node_port`, over all its ready endpoints, or only those on
    /// `local_node` when given (`externalTrafficPolicy: Local`).
    pub fn route_node_port(
        &mut self,
        node_port: u16,
        client: IpAddr,
        local_node: Option<&str>,
        exclude: &[Endpoint],
        now: Instant,
    ) -> Option<Result<(Destination, Option<InFlight>), RouteError>> {
        let find = |lb: bool| {
            self.services.iter().find_map(|(k, e)| {
                e.ports
                    .iter()
                    .find(|p| {
                        if lb {
                            e.load_balancer && p.port == node_port
                        } else {
                            p.node_port == Some(node_port)
                        }
                    })
                    .map(|p| (k.clone(), p.clone()))
            })
        };
        let (k, port) = find(false).or_else(|| find(true))?;
        let mut skip: Vec<Endpoint> = exclude.to_vec();
        if let Some(node) = local_node {
            skip.extend(
                self.ready(&k, &port)
                    .into_iter()
                    .filter(|e| e.node.as_deref() != Some(node)),
            );
        }
        Some(self.pick(&k, &port, client, &skip, now))
    }

    /// The NodePorts of every Service, with their `namespace/name`.
    pub fn node_ports(&self) -> Vec<(u16, String, String)> {
        let mut out: Vec<_> = self
            .services
            .iter()
            .flat_map(|((ns, n), e)| {
                e.ports
                    .iter()
                    .filter_map(|p| Some((p.node_port?, ns.clone(), n.clone())))
            })
            .collect();
        out.sort();
        out
    }

    fn ready(&self, k: &(String, String), port: &PortEntry) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self
            .services
            .get(k)
            .and_then(|e| e.slices.get(&port.name))
            .map(|s| s.by_slice.values().flatten().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(|e| (e.ip, e.port));
        all.dedup();
        all
    }

    fn pick(
        &mut self,
        k: &(String, String),
        port: &PortEntry,
        client: IpAddr,
        exclude: &[Endpoint],
        now: Instant,
    ) -> Result<(Destination, Option<InFlight>), RouteError> {
        let candidates: Vec<Endpoint> = self
            .ready(k, port)
            .into_iter()
            .filter(|e| !exclude.contains(e))
            .collect();
        if candidates.is_empty() {
            return Err(RouteError::NoEndpoints {
                namespace: k.0.clone(),
                name: k.1.clone(),
                port: port.port,
            });
        }
        let affinity = self.services.get(k).and_then(|e| e.affinity);
        let sticky_key = (k.0.clone(), k.1.clone(), port.port, client);
        if let Some(timeout) = affinity
            && let Some((endpoint, last)) = self.affinity.get(&sticky_key)
            && now.saturating_duration_since(*last) < timeout
            && candidates.contains(endpoint)
        {
            let endpoint = endpoint.clone();
            self.affinity.insert(sticky_key, (endpoint.clone(), now));
            let guard = self.begin(&endpoint);
            return Ok((Destination::Endpoint(endpoint), Some(guard)));
        }
        // Least outstanding requests; ties broken by a rotating start so
        // idle endpoints take turns (round robin).
        self.turn = self.turn.wrapping_add(1);
        let n = candidates.len();
        let start = self.turn % n;
        let chosen = (0..n)
            .map(|i| &candidates[(start + i) % n])
            .min_by_key(|e| {
                self.outstanding
                    .get(*e)
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            })
            .cloned()
            .expect("candidates is not empty");
        if affinity.is_some() {
            self.affinity.insert(sticky_key, (chosen.clone(), now));
        }
        let guard = self.begin(&chosen);
        Ok((Destination::Endpoint(chosen), Some(guard)))
    }

    fn begin(&mut self, endpoint: &Endpoint) -> InFlight {
        let counter = self
            .outstanding
            .entry(endpoint.clone())
            .or_default()
            .clone();
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

/// `namespace/name` of an object (namespace `default` when unset).
pub(crate) fn names(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    Some((
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone()?,
    ))
}

/// A Service port's `targetPort` resolved against a container's named
/// ports: a number as is, a name looked up, absent means the port itself.
pub fn target_port(
    target: Option<&IntOrString>,
    port: u16,
    named: &[(String, u16)],
) -> Option<u16> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => named.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn table() -> ServiceTable {
        let mut t = ServiceTable::new();
        t.upsert_service(&service(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "admin", "port": 9000}
            ]}
        })));
        t.upsert_slice(&slice(json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}},
                {"addresses": ["10.42.1.5"], "conditions": {"ready": true}, "nodeName": "n2"},
                {"addresses": ["10.42.2.5"], "conditions": {"ready": false}, "nodeName": "n3"}
            ]
        })));
        t
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dest(t: &mut ServiceTable, host: &str, port: u16) -> Result<Destination, RouteError> {
        t.route(host, port, "shop", ip("10.42.9.9"), &[], Instant::now())
            .map(|(d, _)| d)
    }

    #[test]
    fn every_spelling_of_a_service_name_resolves() {
        let mut t = table();
        for host in [
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
            "web.shop.svc.cluster.local.",
            "WEB.Shop",
            "10.43.0.10",
        ] {
            let d = dest(&mut t, host, 80).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(
                matches!(d, Destination::Endpoint(ref e) if e.port == 8080),
                "{host}: {d:?}"
            );
        }
        assert_eq!(
            dest(&mut t, "example.com", 80).unwrap(),
            Destination::Outside
        );
        assert_eq!(dest(&mut t, "localhost", 80).unwrap(), Destination::Outside);
        assert_eq!(dest(&mut t, "web.other", 80).unwrap(), Destination::Outside);
        assert!(matches!(
            dest(&mut t, "web.other.svc", 80),
            Err(RouteError::NoSuchService(_))
        ));
        assert!(matches!(
            dest(&mut t, "web", 81),
            Err(RouteError::NoSuchPort { .. })
        ));
        assert!(matches!(
            dest(&mut t, "web", 9000),
            Err(RouteError::NoEndpoints { .. })
        ));
    }

    #[test]
    fn spreads_over_ready_endpoints_only_and_retries_elsewhere() {
        let mut t = table();
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..10 {
            if let Destination::Endpoint(e) = dest(&mut t, "web", 80).unwrap() {
                *seen.entry(e.ip.to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            ["10.42.0.5", "10.42.1.5"]
        );
        assert_eq!(
            seen.values().cloned().collect::<Vec<_>>(),
            [5, 5],
            "round robin when idle"
        );
        let (first, _) = t
            .route("web", 80, "shop", ip("10.0.0.1"), &[], Instant::now())
            .unwrap();
        let Destination::Endpoint(first) = first else {
            panic!()
        };
        let (second, _) = t
            .route(
                "web",
                80,
                "shop",
                ip("10.0.0.1"),
                std::slice::from_ref(&first),
                Instant::now(),
            )
            .unwrap();
        assert_ne!(second, Destination::Endpoint(first.clone()));
        let both = [
            first.clone(),
            match second {
                Destination::Endpoint(e) => e,
                _ => panic!(),
            },
        ];
        assert!(matches!(
            t.route("web", 80, "shop", ip("10.0.0.1"), &both, Instant::now()),
            Err(RouteError::NoEndpoints { .. })
        ));
    }

    #[test]
    fn least_outstanding_prefers_the_idle_endpoint() {
        let mut t = table();
        let (busy, _held) = t
            .route("web", 80, "shop", ip("10.0.0.1"), &[], Instant::now())
            .unwrap();
        for _ in 0..4 {
            let (d, _g) = t
                .route("web", 80, "shop", ip("10.0.0.1"), &[], Instant::now())
                .unwrap();
            assert_ne!(d, busy, "the endpoint with a request in flight is avoided");
        }
    }

    #[test]
    fn client_ip_affinity_sticks_until_timeout() {
        let mut t = table();
        t.upsert_service(&service(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.10", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"name": "http", "port": 80}]}
        })));
        let now = Instant::now();
        let client = ip("10.42.7.7");
        let (first, _) = t.route("web", 80, "shop", client, &[], now).unwrap();
        for i in 0..5 {
            let (d, _) = t
                .route("web", 80, "shop", client, &[], now + Duration::from_secs(i))
                .unwrap();
            assert_eq!(d, first);
        }
        let mut moved = false;
        for i in 0..4 {
            let later = now + Duration::from_secs(200 + i);
            let (d, _) = t.route("web", 80, "shop", client, &[], later).unwrap();
            moved |= d != first;
        }
        assert!(moved, "after the timeout the client is balanced again");
    }

    #[test]
    fn node_ports_external_names_and_pod_ips() {
        let mut t = table();
        assert_eq!(t.node_ports(), [(30080, "shop".into(), "web".into())]);
        let local = t
            .route_node_port(30080, ip("127.0.0.1"), Some("n2"), &[], Instant::now())
            .unwrap()
            .unwrap()
            .0;
        assert!(matches!(local, Destination::Endpoint(ref e) if e.node.as_deref() == Some("n2")));
        assert!(
            t.route_node_port(31000, ip("127.0.0.1"), None, &[], Instant::now())
                .is_none()
        );

        t.upsert_service(&service(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "api.example.com"}
        })));
        assert_eq!(
            dest(&mut t, "ext", 443).unwrap(),
            Destination::External("api.example.com".into())
        );
        // Naming a cluster Service, an ExternalName is an alias of it; a
        // loop of aliases ends outside after a few hops.
        for (name, target) in [
            ("alias", "web.shop.svc.cluster.local."),
            ("alias2", "alias.shop.svc"),
            ("loop-a", "loop-b.shop.svc"),
            ("loop-b", "loop-a.shop.svc"),
        ] {
            t.upsert_service(&service(json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": target}
            })));
        }
        for host in ["alias", "alias2.shop"] {
            let d = dest(&mut t, host, 80).unwrap();
            assert!(matches!(d, Destination::Endpoint(_)), "{host}: {d:?}");
        }
        assert!(matches!(
            dest(&mut t, "loop-a", 80).unwrap(),
            Destination::External(name) if name.starts_with("loop-")
        ));
        assert!(is_service_name("web.shop.svc") && is_service_name("web.shop.svc.cluster.local."));
        assert!(!is_service_name("web.svc") && !is_service_name("svc.example.com"));

        t.upsert_pod(ip("10.42.0.5"), "shop", "web-1", Some("n1"));
        let d = dest(&mut t, "10.42.0.5", 8080).unwrap();
        assert!(
            matches!(d, Destination::Endpoint(ref e) if e.port == 8080 && e.pod.as_ref().unwrap().1 == "web-1")
        );

        t.remove_slice("shop", "web-abc");
        assert!(matches!(
            dest(&mut t, "web", 80),
            Err(RouteError::NoEndpoints { .. })
        ));
        t.remove_service("shop", "web");
        assert!(matches!(
            dest(&mut t, "web.shop.svc.cluster.local", 80),
            Err(RouteError::NoSuchService(_))
        ));
        assert_eq!(
            dest(&mut t, "10.43.0.10", 80).unwrap(),
            Destination::Outside
        );
    }

    #[test]
    fn target_ports_resolve_by_number_and_name() {
        let named = [("http".to_owned(), 8080)];
        assert_eq!(target_port(None, 80, &named), Some(80));
        assert_eq!(
            target_port(Some(&IntOrString::Int(9090)), 80, &named),
            Some(9090)
        );
        assert_eq!(
            target_port(Some(&IntOrString::String("http".into())), 80, &named),
            Some(8080)
        );
        assert_eq!(
            target_port(Some(&IntOrString::String("nope".into())), 80, &named),
            None
        );
    }
}
