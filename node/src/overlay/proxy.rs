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

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use skiff_runtime::{Component, Sandbox};
use tokio::task::JoinHandle;

use super::router::Router;
use super::services::ServiceTable;

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
        let services = {
            let table = table.clone();
            let listeners = listeners.clone();
            let config = config.clone();
            let local_policy = local_policy.clone();
            let api: Api<Service> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut known: HashMap<(String, String), Vec<u16>> = HashMap::new();
                let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
                let mut pending: Vec<Service> = Vec::new();
                while let Some(event) = stream.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(error) => {
                            tracing::debug!(%error, "service watch interrupted; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    match event {
                        Event::Apply(svc) | Event::InitApply(svc) => pending.push(svc),
                        Event::Delete(svc) => {
                            if let (Some(ns), Some(name)) =
                                (&svc.metadata.namespace, &svc.metadata.name)
                            {
                                table.lock().remove_service(ns, name);
                                known.remove(&(ns.clone(), name.clone()));
                            }
                        }
                        Event::Init => {
                            known.clear();
                            table.lock().clear_services();
                        }
                        Event::InitDone => {}
                    }
                    for svc in pending.drain(..) {
                        let Some((ns, name)) = event_kind(&svc) else {
                            continue;
                        };
                        let ports = exposed_ports(&svc);
                        let local = svc
                            .spec
                            .as_ref()
                            .and_then(|s| s.external_traffic_policy.as_deref())
                            == Some("Local");
                        for p in &ports {
                            local_policy.lock().insert(*p, local);
                        }
                        known.insert((ns, name), ports);
                        table.lock().upsert_service(&svc);
                    }
                    let wanted: Vec<u16> = known.values().flatten().copied().collect();
                    sync_listeners(&listeners, &wanted, &config, &local_policy).await;
                }
            })
        };
        let slices = {
            let table = table.clone();
            let api: Api<EndpointSlice> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(Event::Apply(s) | Event::InitApply(s)) => table.lock().upsert_slice(&s),
                        Ok(Event::Delete(s)) => {
                            if let (Some(ns), Some(name)) =
                                (&s.metadata.namespace, &s.metadata.name)
                            {
                                table.lock().remove_slice(ns, name);
                            }
                        }
                        Ok(Event::Init | Event::InitDone) => {}
                        Err(error) => {
                            tracing::debug!(%error, "endpointslice watch interrupted; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        let pods = {
            let table = table.clone();
            let api: Api<Pod> = Api::all(client);
            tokio::spawn(async move {
                let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
                let mut ips: HashMap<(String, String), IpAddr> = HashMap::new();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                            let Some((ns, name)) = names_of(&pod.metadata) else {
                                continue;
                            };
                            let status = pod.status.as_ref();
                            let ip = status
                                .and_then(|s| s.pod_ip.as_deref())
                                .and_then(|ip| ip.parse::<IpAddr>().ok())
                                .filter(|_| {
                                    !matches!(
                                        status.and_then(|s| s.phase.as_deref()),
                                        Some("Succeeded" | "Failed")
                                    )
                                });
                            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                            let mut table = table.lock();
                            if let Some(old) = ips.remove(&(ns.clone(), name.clone())) {
                                table.remove_pod(old);
                            }
                            if let Some(ip) = ip {
                                table.upsert_pod(ip, &ns, &name, node);
                                ips.insert((ns, name), ip);
                            }
                        }
                        Ok(Event::Delete(pod)) => {
                            if let Some(key) = names_of(&pod.metadata)
                                && let Some(old) = ips.remove(&key)
                            {
                                table.lock().remove_pod(old);
                            }
                        }
                        Ok(Event::Init) => {
                            let mut table = table.lock();
                            for (_, ip) in ips.drain() {
                                table.remove_pod(ip);
                            }
                        }
                        Ok(Event::InitDone) => {}
                        Err(error) => {
                            tracing::debug!(%error, "pod watch interrupted; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        ServiceProxy {
            table,
            listeners,
            tasks: vec![services, slices, pods],
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

fn event_kind(svc: &Service) -> Option<(String, String)> {
    names_of(&svc.metadata)
}

fn names_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
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
