//! Delivery of cluster requests: from a NodePort, an Ingress or a guest's
//! outbound call to one ready endpoint, in-process when this process runs
//! the pod and over the QUIC mesh ([`Remote`]) when another node does.
//!
//! A request is retried on another endpoint only when nothing of it was
//! sent: the pod is not here and its node cannot be reached, or the peer
//! says it does not run the pod and the request had no body. With no
//! endpoint left the caller gets a 503 naming the Service and the reason.
//!
//! [`PodOutbound`] is a pod's `wasi:http/outgoing-handler` policy: cluster
//! names, ClusterIPs and pod IPs are routed here; `ExternalName` Services
//! and outside hosts go to the network only when the pod's egress
//! annotation ([`EGRESS_ANNOTATION`]) lists them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use skiff_runtime::{AllowList, OutboundResult, ResponseBody};

use super::policy::{PodRef, PolicyTable, Verdict};
use super::proxy::Deliver;
use super::services::{Destination, Endpoint, InFlight, RouteError, ServiceTable};

/// The pod annotation listing the outside hosts a pod may call
/// (comma-separated `host`, `host:port` or `*`); everything else outside
/// the cluster is denied.
pub const EGRESS_ANNOTATION: &str = "skiff.dev/egress";

/// `uri` with its host replaced by `name` (scheme, port, path and query
/// kept).
fn with_host(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let authority = match uri.port_u16() {
        Some(p) => format!("{name}:{p}"),
        None => name.to_owned(),
    };
    http::Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .ok()
}

/// A pod on another node, as the mesh addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The node running the pod.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The port on the pod.
    pub port: u16,
}

/// Why a remote delivery failed.
#[derive(Debug)]
pub struct RemoteError {
    /// What happened, for logs and the 502/503 body.
    pub message: String,
    /// The request, untouched, when nothing of it reached the pod: another
    /// endpoint may take it.
    pub request: Option<http::Request<ResponseBody>>,
}

/// Carries requests to pods on other nodes (the QUIC mesh).
pub trait Remote: Send + Sync + 'static {
    /// Sends `request` to `target` and returns its response, streaming.
    fn send(
        &self,
        target: RemoteTarget,
        request: http::Request<ResponseBody>,
    ) -> BoxFuture<'static, Result<http::Response<ResponseBody>, RemoteError>>;
}

/// Counters of the overlay, exported on the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests delivered to a pod in this process.
    pub delivered_local: AtomicU64,
    /// Requests delivered to a pod on another node.
    pub delivered_remote: AtomicU64,
    /// Endpoints skipped because nothing could be sent to them.
    pub retries: AtomicU64,
    /// Requests answered 503: no ready endpoint could take them.
    pub unavailable: AtomicU64,
    /// Outside calls denied by a pod's egress rules.
    pub egress_denied: AtomicU64,
    /// Calls denied by a NetworkPolicy.
    pub policy_denied: AtomicU64,
}

impl Metrics {
    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 6] = [
            (
                "skiff_overlay_requests_local_total",
                "Requests delivered to a pod in this process.",
                &self.delivered_local,
            ),
            (
                "skiff_overlay_requests_remote_total",
                "Requests delivered to a pod on another node over QUIC.",
                &self.delivered_remote,
            ),
            (
                "skiff_overlay_retries_total",
                "Endpoints skipped because nothing could be sent to them.",
                &self.retries,
            ),
            (
                "skiff_overlay_unavailable_total",
                "Requests answered 503 for want of a ready endpoint.",
                &self.unavailable,
            ),
            (
                "skiff_egress_denied_total",
                "Outbound calls to outside hosts denied by egress rules.",
                &self.egress_denied,
            ),
            (
                "skiff_network_policy_denied_total",
                "Calls denied by a NetworkPolicy.",
                &self.policy_denied,
            ),
        ];
        rows.iter()
            .map(|(name, help, value)| {
                format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                    value.load(Ordering::Relaxed)
                )
            })
            .collect()
    }
}

/// Where a request comes from, for NetworkPolicy.
#[derive(Debug, Clone)]
pub enum Source {
    /// A pod of the cluster.
    Pod(PodRef),
    /// A client outside the cluster (NodePort, LoadBalancer, Ingress).
    External(IpAddr),
}

/// One node's request router; shared by its NodePorts, Ingress entry
/// point and pods.
pub struct Router {
    node: String,
    table: Arc<Mutex<ServiceTable>>,
    local: Arc<dyn Deliver>,
    remote: OnceLock<Arc<dyn Remote>>,
    policy: Arc<Mutex<PolicyTable>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("node", &self.node)
            .field("remote", &self.remote.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A NetworkPolicy refused the request; the message names the policy.
#[derive(Debug, Clone)]
pub struct Denied(pub String);

impl Denied {
    fn into_response(self) -> http::Response<ResponseBody> {
        skiff_runtime::text_response(http::StatusCode::FORBIDDEN, self.0)
    }
}

/// What a route lookup gave: an endpoint to try, or the final answer.
enum Step {
    Try(Endpoint, Option<InFlight>),
    /// No endpoint: why, for the 503.
    Done(String),
}

impl Router {
    /// A router for node `node` over `table`, delivering in-process
    /// through `local` and enforcing `policy`.
    pub fn new(
        node: &str,
        table: Arc<Mutex<ServiceTable>>,
        local: Arc<dyn Deliver>,
        policy: Arc<Mutex<PolicyTable>>,
    ) -> Router {
        Router {
            node: node.to_owned(),
            table,
            local,
            remote: OnceLock::new(),
            policy,
            metrics: Metrics::default(),
        }
    }

    /// Sets how pods on other nodes are reached (once; later calls are
    /// ignored). Until then only pods in this process are reachable.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// The routing table.
    pub fn table(&self) -> &Arc<Mutex<ServiceTable>> {
        &self.table
    }

    /// The NetworkPolicy table.
    pub fn policy(&self) -> &Arc<Mutex<PolicyTable>> {
        &self.policy
    }

    /// The overlay's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves a request that arrived on NodePort `node_port` from
    /// `client`, over every ready endpoint of its Service (only this
    /// node's with `externalTrafficPolicy: Local`).
    pub async fn node_port<B>(
        &self,
        node_port: u16,
        client: SocketAddr,
        local_only: bool,
        request: http::Request<B>,
    ) -> http::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let local_node = local_only.then_some(self.node.as_str());
        let route = |table: &mut ServiceTable, tried: &[Endpoint]| match table.route_node_port(
            node_port,
            client.ip(),
            local_node,
            tried,
            Instant::now(),
        ) {
            None => Err(format!("no service exposes node port {node_port}")),
            Some(Ok((Destination::Endpoint(e), guard))) => Ok((e, guard)),
            Some(Ok((other, _))) => Err(format!("node port {node_port} leads to {other:?}")),
            Some(Err(error)) => Err(error.to_string()),
        };
        self.to_endpoints(route, Source::External(client.ip()), box_body(request))
            .await
            .unwrap_or_else(Denied::into_response)
    }

    /// Serves a request for Service `namespace/name` on `port` (a number,
    /// or the name of one of the Service's ports), coming from outside the
    /// cluster through the Ingress entry point.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
        port: super::ingress::BackendPort,
        client: SocketAddr,
        request: http::Request<ResponseBody>,
    ) -> http::Response<ResponseBody> {
        let host = format!("{name}.{namespace}.svc.{}", super::services::CLUSTER_DOMAIN);
        let port = match port {
            super::ingress::BackendPort::Number(n) => Some(n),
            super::ingress::BackendPort::Name(n) => {
                self.table.lock().service_port_by_name(namespace, name, &n)
            }
        };
        let Some(port) = port else {
            return unavailable(format!("service {namespace}/{name} has no such port"));
        };
        let route = |table: &mut ServiceTable, tried: &[Endpoint]| match table.route(
            &host,
            port,
            namespace,
            client.ip(),
            tried,
            Instant::now(),
        ) {
            Ok((Destination::Endpoint(e), guard)) => Ok((e, guard)),
            Ok((other, _)) => Err(format!("service {namespace}/{name} leads to {other:?}")),
            Err(error) => Err(error.to_string()),
        };
        self.to_endpoints(route, Source::External(client.ip()), request)
            .await
            .unwrap_or_else(Denied::into_response)
    }

    /// Picks endpoints with `route` until one takes the request.
    async fn to_endpoints<R>(
        &self,
        mut route: R,
        source: Source,
        request: http::Request<ResponseBody>,
    ) -> Result<http::Response<ResponseBody>, Denied>
    where
        R: FnMut(&mut ServiceTable, &[Endpoint]) -> Result<(Endpoint, Option<InFlight>), String>,
    {
        let mut tried: Vec<Endpoint> = Vec::new();
        let mut request = Some(request);
        let mut last_error = String::new();
        loop {
            let step = match route(&mut self.table.lock(), &tried) {
                Ok((endpoint, guard)) => Step::Try(endpoint, guard),
                Err(message) => Step::Done(message),
            };
            let (endpoint, guard) = match step {
                Step::Done(message) if tried.is_empty() => {
                    self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                    return Ok(unavailable(message));
                }
                Step::Done(_) => {
                    self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                    return Ok(unavailable(format!(
                        "no ready endpoint could take the request (last: {last_error})"
                    )));
                }
                Step::Try(endpoint, guard) => (endpoint, guard),
            };
            let verdict = self.check_policy(&source, &endpoint);
            if !verdict.is_allowed() {
                self.metrics.policy_denied.fetch_add(1, Ordering::Relaxed);
                return Err(Denied(format!(
                    "{verdict} (calling {})",
                    endpoint_name(&endpoint)
                )));
            }
            let Some(req) = request.take() else {
                return Ok(bad_gateway(format!(
                    "the request could not be retried after {last_error}"
                )));
            };
            match self.deliver(&endpoint, req).await {
                Ok(response) => {
                    drop(guard);
                    return Ok(response);
                }
                Err((again, message)) => {
                    drop(guard);
                    tracing::debug!(endpoint = %endpoint_name(&endpoint), %message, "endpoint skipped");
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    last_error = message;
                    request = again;
                    tried.push(endpoint);
                }
            }
        }
    }

    fn check_policy(&self, source: &Source, endpoint: &Endpoint) -> Verdict {
        let Some((namespace, name)) = &endpoint.pod else {
            return Verdict::Allowed;
        };
        let to = PodRef::new(namespace, name);
        let policy = self.policy.lock();
        match source {
            Source::Pod(from) => policy.allows(from, &to, endpoint.port),
            Source::External(ip) => policy.allows_external(*ip, &to, endpoint.port),
        }
    }

    /// Delivers to one endpoint. On failure, the request comes back when
    /// nothing of it was consumed, so another endpoint can take it.
    async fn deliver(
        &self,
        endpoint: &Endpoint,
        request: http::Request<ResponseBody>,
    ) -> Result<http::Response<ResponseBody>, (Option<http::Request<ResponseBody>>, String)> {
        let Some((namespace, pod)) = endpoint.pod.clone() else {
            return Err((
                Some(request),
                format!("endpoint {} names no pod", endpoint.ip),
            ));
        };
        if let Some((component, sandbox)) = self.local.handler(&namespace, &pod, endpoint.port) {
            self.metrics.delivered_local.fetch_add(1, Ordering::Relaxed);
            return Ok(component.serve(request, &sandbox).await);
        }
        let (Some(node), Some(remote)) = (endpoint.node.clone(), self.remote.get()) else {
            return Err((
                Some(request),
                format!(
                    "pod {namespace}/{pod} is not reachable from node {}",
                    self.node
                ),
            ));
        };
        if node == self.node {
            return Err((
                Some(request),
                format!("pod {namespace}/{pod} is not running on this node"),
            ));
        }
        let target = RemoteTarget {
            node,
            namespace,
            pod,
            port: endpoint.port,
        };
        match remote.send(target, request).await {
            Ok(response) => {
                self.metrics
                    .delivered_remote
                    .fetch_add(1, Ordering::Relaxed);
                Ok(response)
            }
            Err(RemoteError {
                message,
                request: Some(request),
            }) => Err((Some(request), message)),
            Err(RemoteError { message, .. }) => Ok(bad_gateway(message)),
        }
    }
}

fn endpoint_name(endpoint: &Endpoint) -> String {
    match &endpoint.pod {
        Some((ns, pod)) => format!("pod {ns}/{pod} ({}:{})", endpoint.ip, endpoint.port),
        None => format!("{}:{}", endpoint.ip, endpoint.port),
    }
}

/// Boxes any body as the runtime's body type.
pub fn box_body<B>(request: http::Request<B>) -> http::Request<ResponseBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    request.map(|b| {
        b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
            .boxed_unsync()
    })
}

/// A 503 saying why no endpoint could serve.
pub fn unavailable(message: String) -> http::Response<ResponseBody> {
    skiff_runtime::text_response(http::StatusCode::SERVICE_UNAVAILABLE, message)
}

fn bad_gateway(message: String) -> http::Response<ResponseBody> {
    skiff_runtime::text_response(http::StatusCode::BAD_GATEWAY, message)
}

/// A pod's outbound HTTP policy: cluster destinations through the
/// [`Router`], outside hosts only as its egress annotation allows.
pub struct PodOutbound {
    router: Arc<Router>,
    from: PodRef,
    ip: IpAddr,
    egress: AllowList,
}

impl std::fmt::Debug for PodOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodOutbound")
            .field("from", &self.from)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl PodOutbound {
    /// The policy of pod `namespace/name` at `ip`, with `annotations`
    /// (for [`EGRESS_ANNOTATION`]).
    pub fn new(
        router: Arc<Router>,
        namespace: &str,
        name: &str,
        ip: IpAddr,
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> PodOutbound {
        let egress = annotations
            .and_then(|a| a.get(EGRESS_ANNOTATION))
            .map(|list| {
                AllowList::new(
                    list.split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(str::to_owned),
                )
            })
            .unwrap_or_default();
        PodOutbound {
            router,
            from: PodRef::new(namespace, name),
            ip,
            egress,
        }
    }

    async fn send_inner(
        router: Arc<Router>,
        from: PodRef,
        ip: IpAddr,
        egress: AllowList,
        request: http::Request<ResponseBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> OutboundResult {
        let uri = request.uri().clone();
        let Some(host) = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        else {
            return Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid);
        };
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let found = router
            .table
            .lock()
            .route(host, port, &from.namespace, ip, &[], Instant::now());
        match found {
            Err(RouteError::NoSuchService(name)) => {
                tracing::debug!(pod = %from, service = %name, "outbound call to a missing service");
                Err(wasmtime_wasi_http::Error::DestinationNotFound)
            }
            Err(error) => {
                router.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                Ok((unavailable(error.to_string()), done()))
            }
            Ok((Destination::Endpoint(first), guard)) => {
                if https {
                    // Overlay traffic is carried inside mutual-TLS QUIC
                    // between nodes; a pod speaks plain HTTP to a Service.
                    return Err(wasmtime_wasi_http::Error::TlsProtocolError);
                }
                // The first pick is this lookup's; later ones (retries)
                // exclude the endpoints already tried.
                let mut first = Some((first, guard));
                let route_host = host.to_owned();
                let namespace = from.namespace.clone();
                let route = move |table: &mut ServiceTable, tried: &[Endpoint]| {
                    if let Some(first) = first.take() {
                        return Ok(first);
                    }
                    match table.route(&route_host, port, &namespace, ip, tried, Instant::now()) {
                        Ok((Destination::Endpoint(e), guard)) => Ok((e, guard)),
                        Ok((other, _)) => Err(format!("{route_host} leads to {other:?}")),
                        Err(error) => Err(error.to_string()),
                    }
                };
                match router.to_endpoints(route, Source::Pod(from), request).await {
                    Ok(response) => Ok((response, done())),
                    // A policy refusal reads as a denial in the guest.
                    Err(Denied(_)) => Err(wasmtime_wasi_http::Error::HttpRequestDenied),
                }
            }
            Ok((Destination::External(name), _)) => {
                let Some(target) = with_host(&uri, &name) else {
                    return Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid);
                };
                let (mut parts, body) = request.into_parts();
                parts.uri = target;
                Self::outside(
                    &router,
                    &from,
                    &egress,
                    http::Request::from_parts(parts, body),
                    options,
                )
                .await
            }
            Ok((Destination::Outside, _)) => {
                Self::outside(&router, &from, &egress, request, options).await
            }
        }
    }

    async fn outside(
        router: &Router,
        from: &PodRef,
        egress: &AllowList,
        request: http::Request<ResponseBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> OutboundResult {
        let host = request.uri().host().unwrap_or_default().to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        if !egress.allows(request.uri()) {
            router.metrics.egress_denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pod = %from, uri = %request.uri(), "outbound call denied: the host is not in the pod's {EGRESS_ANNOTATION} annotation");
            return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
        }
        let verdict = router
            .policy
            .lock()
            .allows_egress_outside(from, &host, port);
        if !verdict.is_allowed() {
            router.metrics.policy_denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(pod = %from, uri = %request.uri(), %verdict, "outbound call denied by NetworkPolicy");
            return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
        }
        let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
        Ok((
            response.map(BodyExt::boxed_unsync),
            Box::pin(io) as skiff_runtime::BoxFuture<_>,
        ))
    }
}

fn done() -> skiff_runtime::BoxFuture<Result<(), wasmtime_wasi_http::Error>> {
    Box::pin(async { Ok(()) })
}

impl skiff_runtime::Outbound for PodOutbound {
    fn send(
        &self,
        request: http::Request<ResponseBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> skiff_runtime::BoxFuture<OutboundResult> {
        Box::pin(Self::send_inner(
            self.router.clone(),
            self.from.clone(),
            self.ip,
            self.egress.clone(),
            request,
            options,
        ))
    }
}

/// Node name → mesh address of every node, from the Nodes' annotation.
pub type Peers = Arc<Mutex<HashMap<String, SocketAddr>>>;
