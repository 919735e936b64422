//! The Service proxy of one agent: it watches Services and EndpointSlices
//! into a [`ServiceTable`], opens a listener for every NodePort (of
//! `NodePort` and `LoadBalancer` Services) on the node's bind address, and
//! delivers each request to a ready endpoint.
//!
//! Delivery goes through [`Deliver`]: the pods this process runs are
//! reached in-process (no socket). An endpoint this process cannot reach is
//! skipped before the request is sent, and the request is routed to
//! another; with none left the client gets a 503 saying why.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use parking_lot::Mutex;
use skiff_runtime::{Component, Sandbox};
use tokio::task::JoinHandle;

use super::feed::{Change, watch_into};
use super::policy::PolicyTable;
use super::router::Router;
use super::services::{ServiceTable, names};

/// Finds the handler of a pod's port among the pods this process runs.
pub trait Deliver: Send + Sync + 'static {
    /// The component serving `port` of pod `namespace/pod`, with the
    /// sandbox its requests run in, if this process runs it and it is up.
    fn handler(&self, namespace: &str, pod: &str, port: u16) -> Option<(Component, Sandbox)>;
}

/// A running Service proxy; dropping it stops its listeners.
pub struct ServiceProxy {
    table: Arc<Mutex<ServiceTable>>,
    listeners: Arc<Mutex<HashMap<u16, Listener>>>,
    tasks: Vec<JoinHandle<()>>,
}

struct Listener {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for (_, l) in self.listeners.lock().drain() {
            l.task.abort();
        }
    }
}

impl std::fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProxy")
            .field(
                "node_ports",
                &self.listeners.lock().keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Services by (namespace, name) → the host ports they open.
type ExposedPorts = HashMap<(String, String), Vec<u16>>;

/// Settings for [`ServiceProxy::start`].
#[derive(Clone)]
pub struct ProxyConfig {
    /// Where NodePorts listen (loopback in tests, `0.0.0.0` in
    /// production); `None` opens none (the table is still kept for the
    /// pods' own calls).
    pub bind: Option<IpAddr>,
    /// How requests reach pods.
    pub router: Arc<Router>,
}

impl ServiceProxy {
    /// Starts watching and serving.
    pub fn start(client: kube::Client, config: ProxyConfig) -> ServiceProxy {
        let table = config.router.table().clone();
        let listeners: Arc<Mutex<HashMap<u16, Listener>>> = Arc::default();
        let local_policy: Arc<Mutex<HashMap<u16, bool>>> = Arc::default();
        // Services by name → the host ports they open; a change wakes the
        // task that opens and closes listeners to match.
        let exposed: Arc<Mutex<ExposedPorts>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let services = {
            let table = table.clone();
            let exposed = exposed.clone();
            let changed = changed.clone();
            let local_policy = local_policy.clone();
            let recorded = exposed.clone();
            let record = move |svc: &Service| {
                let Some(key) = names(&svc.metadata) else {
                    return;
                };
                let ports = exposed_ports(svc);
                let local = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.external_traffic_policy.as_deref())
                    == Some("Local");
                let mut local_policy = local_policy.lock();
                for p in &ports {
                    local_policy.insert(*p, local);
                }
                recorded.lock().insert(key, ports);
            };
            watch_into(
                Api::<Service>::all(client.clone()),
                "services",
                move |change| {
                    match change {
                        Change::Apply(svc) => {
                            record(&svc);
                            table.lock().upsert_service(&svc);
                        }
                        Change::Delete(svc) => {
                            if let Some((ns, name)) = names(&svc.metadata) {
                                table.lock().remove_service(&ns, &name);
                                exposed.lock().remove(&(ns, name));
                            }
                        }
                        Change::Replace(all) => {
                            exposed.lock().clear();
                            all.iter().for_each(&record);
                            table.lock().replace_services(&all);
                        }
                    }
                    changed.notify_one();
                },
            )
        };
        let listening = {
            let listeners = listeners.clone();
            let config = config.clone();
            let local_policy = local_policy.clone();
            tokio::spawn(async move {
                loop {
                    changed.notified().await;
                    let wanted: Vec<u16> = exposed.lock().values().flatten().copied().collect();
                    sync_listeners(&listeners, &wanted, &config, &local_policy).await;
                }
            })
        };
        let slices = {
            let table = table.clone();
            watch_into(
                Api::<EndpointSlice>::all(client.clone()),
                "endpointslices",
                move |change| {
                    let mut table = table.lock();
                    match change {
                        Change::Apply(slice) => table.upsert_slice(&slice),
                        Change::Delete(slice) => {
                            if let Some((ns, name)) = names(&slice.metadata) {
                                table.remove_slice(&ns, &name);
                            }
                        }
                        Change::Replace(all) => table.replace_slices(&all),
                    }
                },
            )
        };
        let pods = {
            let mut pods = PodFeed {
                table: table.clone(),
                policy: config.router.policy().clone(),
                ips: HashMap::new(),
            };
            watch_into(
                Api::<Pod>::all(client),
                "pods",
                move |change| match change {
                    Change::Apply(pod) => pods.apply(&pod),
                    Change::Delete(pod) => pods.delete(&pod),
                    Change::Replace(all) => pods.replace(&all),
                },
            )
        };
        ServiceProxy {
            table,
            listeners,
            tasks: vec![services, listening, slices, pods],
        }
    }

    /// The address each open NodePort listens on.
    pub fn node_ports(&self) -> Vec<(u16, SocketAddr)> {
        let mut out: Vec<_> = self
            .listeners
            .lock()
            .iter()
            .map(|(p, l)| (*p, l.addr))
            .collect();
        out.sort();
        out
    }

    /// The routing table (for in-process callers such as a guest's
    /// outbound requests).
    pub fn table(&self) -> Arc<Mutex<ServiceTable>> {
        self.table.clone()
    }
}

/// Every pod of the cluster, for two tables: its address in the routing
/// table (so pods can be dialled by IP) and its labels and ports in the
/// NetworkPolicy table.
struct PodFeed {
    table: Arc<Mutex<ServiceTable>>,
    policy: Arc<Mutex<PolicyTable>>,
    /// The address recorded for each pod, to forget it when it changes.
    ips: HashMap<(String, String), IpAddr>,
}

impl PodFeed {
    fn apply(&mut self, pod: &Pod) {
        self.policy.lock().upsert_pod(pod);
        let Some((ns, name)) = names(&pod.metadata) else {
            return;
        };
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(|_| !finished);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let mut table = self.table.lock();
        if let Some(old) = self.ips.remove(&(ns.clone(), name.clone())) {
            table.remove_pod(old);
        }
        if let Some(ip) = ip {
            table.upsert_pod(ip, &ns, &name, node);
            self.ips.insert((ns, name), ip);
        }
    }

    fn delete(&mut self, pod: &Pod) {
        let Some(key) = names(&pod.metadata) else {
            return;
        };
        self.policy.lock().remove_pod(&key.0, &key.1);
        if let Some(old) = self.ips.remove(&key) {
            self.table.lock().remove_pod(old);
        }
    }

    fn replace(&mut self, all: &[Pod]) {
        self.policy.lock().replace_pods(all);
        {
            let mut table = self.table.lock();
            for (_, ip) in self.ips.drain() {
                table.remove_pod(ip);
            }
        }
        for pod in all {
            self.apply(pod);
        }
    }
}

/// The host ports a Service opens on every node: the NodePorts of
/// `NodePort` and `LoadBalancer` Services, and the ports of
/// `LoadBalancer` Services (k3s's service load balancer does the same).
fn exposed_ports(svc: &Service) -> Vec<u16> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind != "NodePort" && kind != "LoadBalancer" {
        return Vec::new();
    }
    let ports = spec.ports.iter().flatten();
    let node_ports = ports
        .clone()
        .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()));
    let lb_ports = ports
        .filter(|_| kind == "LoadBalancer")
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.port).ok());
    node_ports.chain(lb_ports).collect()
}

async fn sync_listeners(
    listeners: &Arc<Mutex<HashMap<u16, Listener>>>,
    wanted: &[u16],
    config: &ProxyConfig,
    local_policy: &Arc<Mutex<HashMap<u16, bool>>>,
) {
    listeners.lock().retain(|port, l| {
        let keep = wanted.contains(port);
        if !keep {
            l.task.abort();
        }
        keep
    });
    for &port in wanted {
        if listeners.lock().contains_key(&port) {
            continue;
        }
        let Some(bind) = config.bind else {
            return;
        };
        let addr = SocketAddr::new(bind, port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%addr, %error, "cannot open a NodePort listener");
                continue;
            }
        };
        let router = config.router.clone();
        let local_policy = local_policy.clone();
        let task = tokio::spawn(async move {
            let serve = skiff_runtime::serve_with(
                listener,
                move |request, peer| {
                    let router = router.clone();
                    let local = local_policy.lock().get(&port).copied().unwrap_or(false);
                    async move { router.node_port(port, peer, local, request).await }
                },
                std::future::pending(),
            );
            if let Err(error) = serve.await {
                tracing::warn!(port, %error, "NodePort listener stopped");
            }
        });
        tracing::info!(%addr, "NodePort open");
        listeners.lock().insert(port, Listener { task, addr });
    }
}

/// Every agent running in this process, as one [`Deliver`]: `skiff up`
/// runs several nodes in one process, and a request for a pod on any of
/// them is delivered in-process. Cheap to clone; clones share the list.
#[derive(Clone, Default)]
pub struct LocalPods(Arc<parking_lot::RwLock<Vec<std::sync::Weak<dyn Deliver>>>>);

impl std::fmt::Debug for LocalPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LocalPods")
            .field(&self.0.read().len())
            .finish()
    }
}

impl LocalPods {
    /// Adds an agent; it is forgotten once dropped.
    pub fn register(&self, agent: &Arc<dyn Deliver>) {
        let mut all = self.0.write();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(agent));
    }
}

impl Deliver for LocalPods {
    fn handler(&self, namespace: &str, pod: &str, port: u16) -> Option<(Component, Sandbox)> {
        self.0
            .read()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find_map(|agent| agent.handler(namespace, pod, port))
    }
}
