//! The agent's side of the overlay: pod addresses from the node's
//! `spec.podCIDR`, and the Node watch that learns it and where every other
//! node's mesh endpoint is.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::Shared;
use crate::overlay::feed::{Change, watch_into};
use crate::overlay::ipam::PodIpam;
use crate::overlay::router::{Peers, Remote, RemoteError, RemoteTarget, Router};

/// The Node annotation carrying the node's QUIC mesh address
/// (`ip:port`).
pub const MESH_ANNOTATION: &str = "skiff.dev/mesh-endpoint";

/// Pod addresses and the routes to other nodes.
pub(crate) struct Network {
    ipam: Mutex<Option<PodIpam>>,
    ready: watch::Sender<bool>,
    pub(crate) router: Arc<Router>,
    pub(crate) peers: Peers,
    /// Where other nodes reach this node's mesh endpoint, once it is up.
    pub(crate) mesh_endpoint: std::sync::OnceLock<SocketAddr>,
}

impl Network {
    pub(crate) fn new(router: Arc<Router>) -> Network {
        Network {
            ipam: Mutex::new(None),
            ready: watch::channel(false).0,
            router,
            peers: Arc::default(),
            mesh_endpoint: std::sync::OnceLock::new(),
        }
    }

    /// Uses `cidr` for pod addresses. A node's podCIDR does not change
    /// while it exists; a different one (the Node was re-created) is
    /// taken for new pods, and running pods keep their addresses.
    pub(crate) fn set_cidr(&self, node: &str, cidr: &str) {
        let mut ipam = self.ipam.lock();
        if ipam.as_ref().is_some_and(|i| i.cidr() == cidr) {
            return;
        }
        match PodIpam::new(cidr) {
            Ok(new) => {
                tracing::info!(%node, %cidr, "pod addresses come from this podCIDR");
                *ipam = Some(new);
                self.ready.send_replace(true);
            }
            Err(error) => tracing::warn!(%node, %error, "unusable podCIDR"),
        }
    }

    /// The address of pod `uid`: the one it had before (`previous`, an
    /// agent restart) when still valid, else a new one. Waits until the
    /// node has a podCIDR. Fails when the range is full.
    pub(crate) async fn address(
        &self,
        uid: &str,
        previous: Option<&str>,
    ) -> Result<Ipv4Addr, String> {
        let mut ready = self.ready.subscribe();
        loop {
            if let Some(ipam) = self.ipam.lock().as_mut() {
                if let Some(ip) = ipam.get(uid) {
                    return Ok(ip);
                }
                if let Some(ip) = previous.and_then(|p| p.parse().ok())
                    && ipam.restore(uid, ip)
                {
                    return Ok(ip);
                }
                return ipam.allocate(uid).ok_or_else(|| {
                    format!("no pod address left in the node's podCIDR {}", ipam.cidr())
                });
            }
            if ready.changed().await.is_err() {
                return Err("the agent is stopping".to_owned());
            }
        }
    }

    /// Whether pod addresses can be handed out yet.
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Frees pod `uid`'s address.
    pub(crate) fn release(&self, uid: &str) {
        if let Some(ipam) = self.ipam.lock().as_mut() {
            ipam.release(uid);
        }
    }
}

/// Watches every Node: this node's podCIDR, and the mesh endpoint of each.
pub(crate) fn watch_nodes(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let api: kube::Api<Node> = kube::Api::all(shared.client.clone());
    watch_into(api, "nodes", move |change| {
        let network = &shared.network;
        match change {
            Change::Apply(node) => note_node(&shared, &node),
            Change::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    network.peers.lock().remove(name);
                }
            }
            Change::Replace(all) => {
                network.peers.lock().clear();
                for node in &all {
                    note_node(&shared, node);
                }
            }
        }
    })
}

/// Takes this node's podCIDR, and any node's mesh endpoint, from `node`.
fn note_node(shared: &Shared, node: &Node) {
    let Some(name) = node.metadata.name.clone() else {
        return;
    };
    if name == shared.config.name
        && let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref())
    {
        shared.network.set_cidr(&name, cidr);
    }
    let endpoint = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MESH_ANNOTATION))
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let mut peers = shared.network.peers.lock();
    match endpoint {
        Some(addr) => {
            peers.insert(name, addr);
        }
        None => {
            peers.remove(&name);
        }
    }
}

/// Obtains the node's mesh certificate from the cluster CA, starts the
/// QUIC endpoint on `bind`, routes requests for other nodes' pods through
/// it and advertises it on the Node. Retries with backoff while the
/// signer is unavailable; returns when the agent stops.
pub(crate) async fn run_mesh(shared: Arc<Shared>, bind: SocketAddr) {
    let mut stop = shared.stop.subscribe();
    let config = &shared.config;
    let Some(ca_pem) = &shared.ca_pem else {
        tracing::warn!(node = %config.name, "no cluster CA given (--ca-file): the QUIC mesh is off and pods on other nodes are unreachable from here");
        return;
    };
    let dir = config.data_dir.join("pki");
    let mut delay = std::time::Duration::from_secs(1);
    let mesh = loop {
        let started = async {
            let identity = crate::overlay::identity::mesh_identity(
                shared.client.clone(),
                &config.name,
                &dir,
                ca_pem,
                std::time::Duration::from_secs(60),
            )
            .await?;
            crate::overlay::mesh::Mesh::start(bind, identity, Arc::new(config.local_pods.clone()))
                .await
        };
        let result = tokio::select! {
            result = started => result,
            _ = stop.changed() => return,
        };
        match result {
            Ok(mesh) => break mesh,
            Err(error) => {
                tracing::warn!(node = %config.name, error = %format!("{error:#}"), "cannot start the QUIC mesh; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    };
    let local = mesh.local_addr();
    let advertised = if local.ip().is_unspecified() {
        SocketAddr::new(config.node_ip, local.port())
    } else {
        local
    };
    shared.network.router.set_remote(Arc::new(MeshRemote {
        mesh: mesh.clone(),
        peers: shared.network.peers.clone(),
    }));
    let _ = shared.network.mesh_endpoint.set(advertised);
    tracing::info!(node = %config.name, endpoint = %advertised, "QUIC mesh endpoint up");
    let api: kube::Api<Node> = kube::Api::all(shared.client.clone());
    let patch = serde_json::json!({ "metadata": { "annotations": { MESH_ANNOTATION: advertised.to_string() } } });
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match api
            .patch(
                &config.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => break,
            Err(error) => {
                tracing::debug!(%error, "cannot advertise the mesh endpoint; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
    let _ = stop.changed().await;
    mesh.close();
}

/// The mesh as the router's way to other nodes: the peer's address comes
/// from its Node object.
struct MeshRemote {
    mesh: Arc<crate::overlay::mesh::Mesh>,
    peers: Peers,
}

impl Remote for MeshRemote {
    fn send(
        &self,
        target: RemoteTarget,
        request: http::Request<skiff_runtime::ResponseBody>,
    ) -> futures::future::BoxFuture<
        'static,
        Result<http::Response<skiff_runtime::ResponseBody>, RemoteError>,
    > {
        let mesh = self.mesh.clone();
        let addr = self.peers.lock().get(&target.node).copied();
        Box::pin(async move {
            let Some(addr) = addr else {
                return Err(RemoteError {
                    message: format!("node {} has no mesh endpoint", target.node),
                    request: Some(request),
                });
            };
            let peer = crate::overlay::mesh::Peer {
                node: target.node.clone(),
                addr,
            };
            let to = crate::overlay::mesh::Target {
                namespace: target.namespace,
                pod: target.pod,
                port: target.port,
            };
            mesh.try_send(&peer, &to, request)
                .await
                .map_err(|failed| RemoteError {
                    message: failed.error.to_string(),
                    request: failed.request,
                })
        })
    }
}

/// [`run_mesh`] when the agent has a mesh address.
pub(crate) async fn run_mesh_if_configured(shared: Arc<Shared>) {
    if let Some(bind) = shared.config.mesh_listen {
        run_mesh(shared, bind).await;
    }
}

/// Opens the Ingress entry points this node serves (plain HTTP and TLS),
/// routing by the cluster's Ingresses to their backend Services. A port
/// that cannot be opened is an error naming it.
pub(crate) async fn start_ingress(
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use crate::overlay::ingress::{self, Forward, IngressTable};
    use anyhow::Context as _;
    let config = &shared.config;
    let entries: Vec<(SocketAddr, bool)> =
        [(config.ingress_http, false), (config.ingress_https, true)]
            .into_iter()
            .filter_map(|(addr, tls)| addr.map(|a| (a, tls)))
            .collect();
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let table = Arc::new(Mutex::new(IngressTable::new()));
    let router = shared.network.router.clone();
    let forward: Forward = Arc::new(move |backend, request, peer| {
        let router = router.clone();
        Box::pin(async move {
            router
                .service(
                    &backend.namespace,
                    &backend.service,
                    backend.port,
                    peer,
                    crate::overlay::router::box_body(request),
                )
                .await
        })
    });
    let mut listeners = Vec::new();
    for (addr, tls) in entries {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot open the Ingress entry point on {addr} (is the port in use?)")
        })?;
        listeners.push((listener, addr, tls));
    }
    let mut tasks = Vec::new();
    for (listener, addr, tls) in listeners {
        let (table, forward) = (table.clone(), forward.clone());
        tracing::info!(%addr, tls, "Ingress entry point open");
        tasks.push(tokio::spawn(async move {
            if let Err(error) = ingress::serve(listener, tls, table, forward).await {
                tracing::warn!(%addr, %error, "the Ingress entry point stopped");
            }
        }));
    }
    tasks.extend(ingress::spawn_feed(shared.client.clone(), table));
    Ok(tasks)
}
