//! The node agent: registration, heartbeat, pod lifecycle, status, logs.
//!
//! Start with [`AgentConfig`] and [`run`] (or [`Agent::start`] for a handle
//! that several agents in one process can share the runtime through). The
//! agent is an ordinary API client, like a kubelet:
//!
//! - it registers its Node (capacity, allocatable, labels, addresses,
//!   `nodeInfo`, the log endpoint) and keeps it Ready, renewing its Lease in
//!   `kube-node-lease` every 10 s as its heartbeat;
//! - it watches the pods bound to it (`spec.nodeName=NAME`) and runs one
//!   worker per pod: images pulled, init containers in order, then the app
//!   containers, restarted with exponential backoff per `restartPolicy`,
//!   probed, and stopped gracefully when the pod is deleted;
//! - it writes each pod's status (coalesced, with optimistic concurrency);
//! - it serves container logs over HTTPS (`/containerLogs/...`) to callers
//!   presenting the node token (the API server proxying `pods/log`).
//!
//! Pods keep running when the API server is away; the agent retries with
//! backoff and, once back, re-lists and reconciles without restarting
//! healthy pods.

mod config;
mod logs;
mod network;
mod node;
mod pod;
mod probe;
mod quantity;
mod server;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use skiff_runtime::{Component, Log, Runtime, RuntimeConfig, Sandbox};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::images::{ImageConfig, Images};
use crate::overlay::policy::PolicyTable;
use crate::overlay::proxy::{Deliver, ProxyConfig, ServiceProxy};
use crate::overlay::router::Router;
use crate::overlay::services::ServiceTable;
use logs::LogStore;

/// The kubelet version this agent reports.
pub const KUBELET_VERSION: &str = "v1.32.4-skiff";

/// Settings for one node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The API server's URL (`https://127.0.0.1:6443`).
    pub server: String,
    /// The node token (the API server's `node-token` file).
    pub token: String,
    /// The cluster CA certificate (PEM file) the API server's certificate is
    /// checked against.
    pub ca_file: Option<PathBuf>,
    /// The Node's name.
    pub name: String,
    /// Where the agent keeps images, compiled components, pod volumes and
    /// its serving certificate.
    pub data_dir: PathBuf,
    /// Accept `file://` and absolute-path images (development only).
    pub dev_local_images: bool,
    /// Allow `hostPath` volumes.
    pub allow_host_path: bool,
    /// Pods this node accepts at once.
    pub max_pods: u32,
    /// CPU the node offers, in millicores.
    pub cpu_millis: u64,
    /// Memory the node offers, in bytes.
    pub memory_bytes: u64,
    /// Address of the HTTPS log endpoint; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The first restart backoff; it doubles per restart up to
    /// [`AgentConfig::max_restart_backoff`] (a kubelet uses 10 s and 5 min).
    pub restart_backoff: Duration,
    /// The longest restart backoff.
    pub max_restart_backoff: Duration,
    /// How often every pod worker re-reconciles without a watch event.
    pub resync: Duration,
    /// How often ConfigMap and Secret volumes are refreshed and `emptyDir`
    /// size limits checked.
    pub volume_refresh: Duration,
    /// Optional `node.kubernetes.io/instance-type` label.
    pub instance_type: Option<String>,
    /// The runtime's settings (the compiled-component cache defaults to
    /// `data_dir/components`).
    pub runtime: RuntimeConfig,
    /// Where NodePort Services listen (`0.0.0.0` like kube-proxy; loopback
    /// in tests); `None` opens none.
    pub node_port_address: Option<std::net::IpAddr>,
    /// The agents of this process whose pods a NodePort here may reach
    /// in-process (`skiff up` shares one list between its nodes).
    pub local_pods: crate::overlay::proxy::LocalPods,
    /// The node's address (its `InternalIP`, pods' `hostIP`, and where
    /// the mesh endpoint is advertised when it listens on all addresses).
    pub node_ip: std::net::IpAddr,
    /// Pod addresses to use until the control plane assigns the node a
    /// `spec.podCIDR` (a kubelet's `--pod-cidr`); the Node's own wins.
    pub pod_cidr: Option<String>,
    /// The UDP address of the QUIC mesh endpoint other nodes reach this
    /// node's pods through; `None` runs no mesh (pods on other nodes are
    /// then unreachable from here). Port 0 picks a free port.
    pub mesh_listen: Option<SocketAddr>,
    /// Where this node serves Ingresses over plain HTTP (`None`: not).
    pub ingress_http: Option<SocketAddr>,
    /// Where this node serves Ingresses over TLS, with certificates from
    /// the Ingresses' Secrets chosen by SNI (`None`: not).
    pub ingress_https: Option<SocketAddr>,
}

impl AgentConfig {
    /// Defaults for a node called `name` of the API server at `server`,
    /// keeping its state in `data_dir`: 110 pods, 4 CPUs, 8 GiB, kubelet
    /// backoff (10 s to 5 min).
    pub fn new(server: &str, token: &str, name: &str, data_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            server: server.to_owned(),
            token: token.trim().to_owned(),
            ca_file: None,
            name: name.to_owned(),
            data_dir: data_dir.into(),
            dev_local_images: false,
            allow_host_path: false,
            max_pods: 110,
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            restart_backoff: Duration::from_secs(10),
            max_restart_backoff: Duration::from_secs(300),
            resync: Duration::from_secs(60),
            volume_refresh: Duration::from_secs(2),
            instance_type: None,
            runtime: RuntimeConfig::default(),
            node_port_address: Some(std::net::IpAddr::from([0, 0, 0, 0])),
            local_pods: crate::overlay::proxy::LocalPods::default(),
            node_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            pod_cidr: None,
            mesh_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ingress_http: None,
            ingress_https: None,
        }
    }

    /// A client for the API server authenticating with the node token.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let mut cluster = serde_json::json!({ "server": self.server });
        if let Some(ca) = &self.ca_file {
            cluster["certificate-authority"] = serde_json::json!(ca);
        }
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "skiff", "cluster": cluster }],
            "users": [{ "name": self.name, "user": { "token": self.token } }],
            "contexts": [{ "name": "node", "context": { "cluster": "skiff", "user": self.name } }],
            "current-context": "node",
        });
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig.to_string())
            .context("building the agent's kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("configuring the API client for {}", self.server))?;
        kube::Client::try_from(config).context("building the API client")
    }
}

/// An HTTP container's request handler, for callers in this process
/// (probes, the overlay): the component and the sandbox each request runs in.
#[derive(Clone, Debug)]
pub struct HttpHandle {
    /// The loaded component.
    pub component: Component,
    /// The container's sandbox (env, volumes, limits, log).
    pub sandbox: Sandbox,
}

impl HttpHandle {
    /// Handles one request in a fresh instance (make bodies with
    /// [`skiff_runtime::body`]); failures become 5xx responses naming the
    /// component.
    pub async fn serve(
        &self,
        request: hyper::Request<skiff_runtime::ResponseBody>,
    ) -> hyper::Response<skiff_runtime::ResponseBody> {
        self.component.serve(request, &self.sandbox).await
    }
}

/// State shared by the agent's tasks.
pub(crate) struct Shared {
    pub(crate) config: AgentConfig,
    pub(crate) client: kube::Client,
    pub(crate) runtime: Runtime,
    pub(crate) images: Images,
    pub(crate) logs: LogStore,
    pub(crate) handles: Mutex<HashMap<logs::ContainerKey, HttpHandle>>,
    /// One lock per image digest being loaded: pods of one image starting
    /// together compile it once (compiling takes seconds of CPU).
    pub(crate) loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The HTTPS log endpoint's port.
    pub(crate) port: u16,
    /// The cluster CA (PEM), from `config.ca_file`.
    pub(crate) ca_pem: Option<String>,
    /// Pod addresses, routes and peers.
    pub(crate) network: network::Network,
    pods: Mutex<HashMap<String, PodEntry>>,
    retiring: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

/// A pod this agent runs.
struct PodEntry {
    namespace: String,
    name: String,
    spec: watch::Sender<Pod>,
    task: JoinHandle<()>,
    requests: Requests,
    /// Set by the worker once the pod has finished (its resources are free).
    done: Arc<AtomicBool>,
}

/// What a pod asks of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Requests {
    pub(crate) cpu_millis: u64,
    pub(crate) memory: u64,
}

impl Requests {
    /// The pod's effective requests: the larger of the sum over app
    /// containers and the largest init container (requests default to
    /// limits).
    pub(crate) fn of(pod: &Pod) -> Requests {
        let Some(spec) = &pod.spec else {
            return Requests::default();
        };
        let one = |c: &k8s_openapi::api::core::v1::Container| {
            let r = c.resources.as_ref();
            let get = |name: &str| {
                r.and_then(|r| r.requests.as_ref())
                    .and_then(|m| m.get(name))
                    .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(name)))
                    .map(|q| q.0.clone())
            };
            Requests {
                cpu_millis: get("cpu").and_then(|q| quantity::milli(&q)).unwrap_or(0),
                memory: get("memory").and_then(|q| quantity::units(&q)).unwrap_or(0),
            }
        };
        let mut sum = Requests::default();
        for c in &spec.containers {
            let r = one(c);
            sum.cpu_millis += r.cpu_millis;
            sum.memory += r.memory;
        }
        for c in spec.init_containers.iter().flatten() {
            let r = one(c);
            sum.cpu_millis = sum.cpu_millis.max(r.cpu_millis);
            sum.memory = sum.memory.max(r.memory);
        }
        sum
    }
}

/// A running node agent. Dropping it without [`Agent::shutdown`] aborts
/// its tasks (pods stop at once).
pub struct Agent {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Watches and listeners that run until aborted (the NetworkPolicy
    /// feed, the Ingress entry points): stopped first on shutdown.
    feeds: Vec<JoinHandle<()>>,
    proxy: ServiceProxy,
    /// Keeps this agent in `local_pods` while it lives.
    _deliver: Arc<dyn Deliver>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.shared.config.name)
            .field("port", &self.shared.port)
            .finish_non_exhaustive()
    }
}

/// Runs an agent until `shutdown` resolves, then stops its pods gracefully
/// (the Node object stays).
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let agent = Agent::start(config).await?;
    shutdown.await;
    agent.shutdown().await;
    Ok(())
}

impl Agent {
    /// Starts an agent talking to `config.server` with the node token.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        let client = config.client().await?;
        Agent::start_with_client(config, client).await
    }

    /// Starts an agent with its own runtime over `client` (which may reach
    /// the API server in-process).
    pub async fn start_with_client(
        config: AgentConfig,
        client: kube::Client,
    ) -> anyhow::Result<Agent> {
        let mut runtime_config = config.runtime.clone();
        if runtime_config.cache_dir.is_none() {
            runtime_config.cache_dir = Some(config.data_dir.join("components"));
        }
        let runtime = Runtime::new(runtime_config).context("starting the wasm runtime")?;
        Agent::start_with_runtime(config, client, runtime).await
    }

    /// Starts an agent sharing `runtime` (several agents in one process
    /// share one engine).
    pub async fn start_with_runtime(
        config: AgentConfig,
        client: kube::Client,
        runtime: Runtime,
    ) -> anyhow::Result<Agent> {
        anyhow::ensure!(!config.name.is_empty(), "the node needs a name");
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        // Short names (`hello:v1`) come from the control plane's registry,
        // reached like the API itself: same URL, same CA, the node token.
        let ca_pem = match &config.ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the cluster CA {}", path.display()))?,
            ),
            None => None,
        };
        let images = Images::new(ImageConfig {
            cache_dir: config.data_dir.join("images"),
            allow_local_files: config.dev_local_images,
            builtin_registry: Some(crate::images::BuiltinRegistry {
                url: config.server.clone(),
                ca_pem: ca_pem.clone().unwrap_or_default().into_bytes(),
                token: config.token.clone(),
            }),
        });
        let identity =
            server::Identity::load_or_create(&config.data_dir.join("pki"), &config.name)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} for logs", config.listen))?;
        let port = listener.local_addr()?.port();
        let (stop, _) = watch::channel(false);
        let router = Arc::new(Router::new(
            &config.name,
            Arc::new(Mutex::new(ServiceTable::new())),
            Arc::new(config.local_pods.clone()),
            Arc::new(Mutex::new(PolicyTable::new())),
        ));
        let network = network::Network::new(router);
        if let Some(cidr) = &config.pod_cidr {
            network.set_cidr(&config.name, cidr);
        }
        let shared = Arc::new(Shared {
            config,
            client,
            runtime,
            images,
            logs: LogStore::default(),
            handles: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            port,
            ca_pem,
            network,
            pods: Mutex::new(HashMap::new()),
            retiring: Mutex::new(Vec::new()),
            stop,
        });
        let ingress = network::start_ingress(&shared).await?;
        let registration = node::Registration::new(shared.clone(), identity.cert_sha256());
        registration
            .register_until_ok(shared.stop.subscribe())
            .await;
        let tasks = vec![
            tokio::spawn(server::serve(
                listener,
                identity,
                shared.clone(),
                shared.stop.subscribe(),
            )),
            tokio::spawn(registration.heartbeat(shared.stop.subscribe())),
            tokio::spawn(network::run_mesh_if_configured(shared.clone())),
            tokio::spawn(watch_pods(shared.clone())),
        ];
        let mut feeds = ingress;
        feeds.push(network::watch_nodes(shared.clone()));
        feeds.extend(crate::overlay::policy::spawn_feed(
            shared.client.clone(),
            shared.network.router.policy().clone(),
        ));
        let deliver: Arc<dyn Deliver> = Arc::new(PodsHere(shared.clone()));
        shared.config.local_pods.register(&deliver);
        let proxy = ServiceProxy::start(
            shared.client.clone(),
            ProxyConfig {
                bind: shared.config.node_port_address,
                router: shared.network.router.clone(),
            },
        );
        tracing::info!(node = %shared.config.name, port, "node agent started");
        Ok(Agent {
            shared,
            tasks,
            feeds,
            proxy,
            _deliver: deliver,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The port of the HTTPS log endpoint.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// A container's log: the running (or last) instance's, or with
    /// `previous` the one before it.
    pub fn logs(&self, namespace: &str, pod: &str, container: &str, previous: bool) -> Option<Log> {
        let key = (namespace.to_owned(), pod.to_owned(), container.to_owned());
        self.shared.logs.get(&key, previous).map(|i| i.log)
    }

    /// The request handler of a running HTTP container, for in-process
    /// callers (the overlay routes Service traffic through it).
    pub fn pod_handle(&self, namespace: &str, pod: &str, container: &str) -> Option<HttpHandle> {
        let key = (namespace.to_owned(), pod.to_owned(), container.to_owned());
        self.shared.handles.lock().get(&key).cloned()
    }

    /// The NodePorts this node serves and where each listens.
    pub fn node_ports(&self) -> Vec<(u16, std::net::SocketAddr)> {
        self.proxy.node_ports()
    }

    /// Every running HTTP container of a pod, by container name.
    pub fn pod_handles(&self, namespace: &str, pod: &str) -> Vec<(String, HttpHandle)> {
        self.shared
            .handles
            .lock()
            .iter()
            .filter(|((ns, name, _), _)| ns == namespace && name == pod)
            .map(|((_, _, c), h)| (c.clone(), h.clone()))
            .collect()
    }

    /// Stops the agent: no more watching or heartbeats; pods are stopped
    /// gracefully (within their grace period, at most 30 s) and left in
    /// the API as they are, as is the Node.
    pub async fn shutdown(mut self) {
        self.shared.stop.send_replace(true);
        for feed in self.feeds.drain(..) {
            feed.abort();
        }
        let workers: Vec<JoinHandle<()>> = {
            let mut pods = self.shared.pods.lock();
            let mut handles: Vec<_> = pods.drain().map(|(_, e)| e.task).collect();
            handles.append(&mut self.shared.retiring.lock());
            handles
        };
        for task in workers {
            let _ = task.await;
        }
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!(node = %self.shared.config.name, "node agent stopped");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        for task in self.tasks.iter().chain(&self.feeds) {
            task.abort();
        }
        for (_, entry) in self.shared.pods.lock().drain() {
            entry.task.abort();
        }
    }
}

/// Watches the pods bound to this node and keeps one worker per pod.
async fn watch_pods(shared: Arc<Shared>) {
    let api: kube::Api<Pod> = kube::Api::all(shared.client.clone());
    let selector = format!("spec.nodeName={}", shared.config.name);
    let mut events = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut stop = shared.stop.subscribe();
    let mut resync = tokio::time::interval(shared.config.resync);
    resync.tick().await;
    // Pods listed since the last (re)connect: once the list is complete,
    // workers of pods not in it are stopped (deleted while we were away).
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitApply(pod))) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        listed.insert(uid);
                    }
                    upsert(&shared, pod).await;
                }
                Some(Ok(Event::InitDone)) => {
                    let gone: Vec<String> = shared
                        .pods
                        .lock()
                        .keys()
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        remove(&shared, &uid);
                    }
                    remove_orphans(&shared);
                }
                Some(Ok(Event::Apply(pod))) => upsert(&shared, pod).await,
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(uid) = &pod.metadata.uid {
                        remove(&shared, uid);
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "watching this node's pods failed; retrying");
                }
                None => break,
            },
            _ = resync.tick() => {
                // Wake every worker so it re-reconciles with what it has.
                for entry in shared.pods.lock().values() {
                    entry.spec.send_modify(|_| {});
                }
                shared.retiring.lock().retain(|t| !t.is_finished());
            }
            _ = stop.changed() => break,
        }
    }
}

/// A pod was added or changed: hand it to its worker, or admit it and start
/// one.
async fn upsert(shared: &Arc<Shared>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    {
        let pods = shared.pods.lock();
        if let Some(entry) = pods.get(&uid) {
            entry.spec.send_replace(pod);
            return;
        }
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // Finished before this agent (re)started: nothing to run. A
        // finished pod being deleted is removed by the API server itself.
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let requests = Requests::of(&pod);
    if pod.metadata.deletion_timestamp.is_none()
        && let Err((reason, message)) = admit(shared, &requests)
    {
        tracing::warn!(pod = %format!("{namespace}/{name}"), reason, message, "pod rejected");
        pod::reject(shared, &pod, reason, &message).await;
        return;
    }
    let (spec, rx) = watch::channel(pod);
    let done = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(pod::run(shared.clone(), rx, done.clone()));
    shared.pods.lock().insert(
        uid,
        PodEntry {
            namespace,
            name,
            spec,
            task,
            requests,
            done,
        },
    );
}

/// Node-side admission: the pod fits in what the admitted pods leave.
fn admit(shared: &Shared, requests: &Requests) -> Result<(), (&'static str, String)> {
    let config = &shared.config;
    let pods = shared.pods.lock();
    let active: Vec<&PodEntry> = pods
        .values()
        .filter(|e| !e.done.load(Ordering::Relaxed))
        .collect();
    if active.len() as u64 >= u64::from(config.max_pods) {
        return Err((
            "OutOfpods",
            format!(
                "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                active.len(),
                config.max_pods
            ),
        ));
    }
    let used_cpu: u64 = active.iter().map(|e| e.requests.cpu_millis).sum();
    let used_memory: u64 = active.iter().map(|e| e.requests.memory).sum();
    if used_cpu + requests.cpu_millis > config.cpu_millis {
        return Err((
            "OutOfcpu",
            format!(
                "Pod was rejected: Node didn't have enough resource: cpu, requested: {}, used: {used_cpu}, capacity: {}",
                requests.cpu_millis, config.cpu_millis
            ),
        ));
    }
    if used_memory + requests.memory > config.memory_bytes {
        return Err((
            "OutOfmemory",
            format!(
                "Pod was rejected: Node didn't have enough resource: memory, requested: {}, used: {used_memory}, capacity: {}",
                requests.memory, config.memory_bytes
            ),
        ));
    }
    Ok(())
}

/// Removes the directories of pods this agent no longer runs (deleted
/// while the agent was down).
///
/// Runs inline in the watch loop, on purpose: no worker can start (and
/// create its directory) while the scan runs. Re-lists are rare.
fn remove_orphans(shared: &Shared) {
    let known: HashSet<String> = shared.pods.lock().keys().cloned().collect();
    let retiring_dirs = shared.config.data_dir.join("pods");
    let Ok(entries) = std::fs::read_dir(&retiring_dirs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            tracing::info!(pod_uid = %name, "removing the directory of a pod no longer on this node");
            if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %err, "cannot remove");
            }
        }
    }
}

/// The pod is gone from the API: its worker stops it at once and cleans up.
fn remove(shared: &Shared, uid: &str) {
    if let Some(entry) = shared.pods.lock().remove(uid) {
        tracing::debug!(pod = %format!("{}/{}", entry.namespace, entry.name), "pod removed");
        // Dropping the sender tells the worker the pod is gone.
        drop(entry.spec);
        shared.retiring.lock().push(entry.task);
    }
}

/// The pods of one agent, for the Service proxy: the HTTP container that
/// declares the port (or the pod's only HTTP container when none declares
/// it: a wasm component has one handler whatever the port).
struct PodsHere(Arc<Shared>);

impl Deliver for PodsHere {
    fn handler(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Option<(skiff_runtime::Component, Sandbox)> {
        let declared: Option<String> = self.0.pods.lock().values().find_map(|entry| {
            if entry.namespace != namespace || entry.name != pod {
                return None;
            }
            let spec = entry.spec.borrow();
            spec.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .any(|p| i64::from(p.container_port) == i64::from(port))
                    .then(|| c.name.clone())
            })
        });
        let handles = self.0.handles.lock();
        let mut here = handles
            .iter()
            .filter(|((ns, name, _), _)| ns == namespace && name == pod);
        let found = match declared {
            Some(container) => here.find(|((_, _, c), _)| *c == container),
            None => {
                let first = here.next();
                if here.next().is_some() { None } else { first }
            }
        };
        found.map(|(_, h)| (h.component.clone(), h.sandbox.clone()))
    }
}
