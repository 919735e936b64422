//! Ingress (`networking.k8s.io/v1`): the routing table every agent keeps
//! from its watches of Ingresses and TLS Secrets, and the HTTP(S) entry
//! point that serves it.
//!
//! [`IngressTable::route`] picks a backend Service for a request's host and
//! path; [`IngressTable::certificate`] picks the certificate for a TLS
//! server name; [`serve`] accepts connections (plain or TLS, choosing the
//! certificate by SNI) and hands each routed request to a `forward`
//! callback, which delivers it to the Service.
//!
//! Routing, as the Ingress spec has it and where it leaves a choice:
//!
//! - The `Host` (port stripped, case-insensitive, a trailing dot ignored)
//!   is matched against rules with a precise host first, then against
//!   wildcard hosts (`*.example.com` matches `a.example.com`, not
//!   `example.com` nor `a.b.example.com`), then rules without a host. The
//!   first of these groups in which some path matches wins; requests no
//!   group takes go to a `defaultBackend`.
//! - Within a group, an `Exact` path equal to the request's path wins; then
//!   the longest `Prefix` matching by path elements (`/foo` matches `/foo`
//!   and `/foo/bar`, not `/foobar`; a trailing slash is ignored).
//!   `ImplementationSpecific` is treated as `Prefix`.
//! - Rules of every served Ingress are merged; on a tie the older Ingress
//!   (by `creationTimestamp`, then namespace/name) wins, and within one
//!   Ingress the rule listed first.
//! - Only Service backends are served: a path whose backend is a
//!   `resource` is ignored.
//! - An Ingress is served when its `ingressClassName` (or, lacking one, its
//!   deprecated `kubernetes.io/ingress.class` annotation) is absent or
//!   equals this table's class (default [`DEFAULT_CLASS`]).
//! - A `spec.tls` entry without `hosts` covers the hosts of its Ingress's
//!   rules. Its Secret, in the Ingress's namespace, must be of type
//!   `kubernetes.io/tls`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::Api;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use skiff_runtime::ResponseBody;
use tokio::task::JoinHandle;

use super::feed::{Change, watch_into};

/// The ingress class served unless another is given to
/// [`IngressTable::new_with_class`].
pub const DEFAULT_CLASS: &str = "skiff";

/// The deprecated annotation that named the class before
/// `ingressClassName`.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The Secret type whose `tls.crt` and `tls.key` serve TLS.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Bounds a stuck TLS handshake, so a client that connects and says
/// nothing holds its task for no longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend Service's port, as the Ingress names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendPort {
    /// The Service's port of this number.
    Number(u16),
    /// The Service's port of this name.
    Name(String),
}

impl fmt::Display for BackendPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendPort::Number(n) => write!(f, "{n}"),
            BackendPort::Name(name) => f.write_str(name),
        }
    }
}

/// Where a routed request goes: a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The Service's namespace (the Ingress's).
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port.
    pub port: BackendPort,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

impl Backend {
    fn from_k8s(namespace: &str, backend: &IngressBackend) -> Option<Backend> {
        let service = backend.service.as_ref()?;
        let port = service.port.as_ref()?;
        let port = match (&port.name, port.number) {
            (Some(name), _) if !name.is_empty() => BackendPort::Name(name.clone()),
            (_, Some(n)) => BackendPort::Number(u16::try_from(n).ok()?),
            _ => return None,
        };
        Some(Backend {
            namespace: namespace.to_owned(),
            service: service.name.clone(),
            port,
        })
    }
}

/// The request handler [`serve`] calls for every routed request: it
/// delivers the request to the backend Service and returns its response.
/// The peer address is the client's.
pub type Forward = Arc<
    dyn Fn(
            Backend,
            hyper::Request<hyper::body::Incoming>,
            SocketAddr,
        ) -> BoxFuture<'static, hyper::Response<ResponseBody>>
        + Send
        + Sync,
>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, kept as `example.com`.
    Wildcard(String),
    Any,
}

impl HostMatch {
    fn parse(host: Option<&str>) -> HostMatch {
        match host.map(normalize_host) {
            None => HostMatch::Any,
            Some(h) if h.is_empty() => HostMatch::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => HostMatch::Wildcard(suffix.to_owned()),
                None => HostMatch::Exact(h),
            },
        }
    }

    /// How well `host` (normalized) matches: 0 precise, 1 wildcard, 2 any
    /// host; `None` when it does not.
    fn tier(&self, host: Option<&str>) -> Option<u8> {
        match (self, host) {
            (HostMatch::Exact(h), Some(host)) => (h == host).then_some(0),
            (HostMatch::Wildcard(suffix), Some(host)) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                .then_some(1),
            (HostMatch::Any, _) => Some(2),
            (_, None) => None,
        }
    }
}

/// Lowercase, without a port or a trailing dot (`[::1]:80` → `::1`).
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    /// The path's elements.
    Prefix(Vec<String>),
}

fn elements(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|e| !e.is_empty())
}

impl PathMatch {
    fn parse(path: Option<&str>, kind: &str) -> PathMatch {
        let path = path.filter(|p| !p.is_empty()).unwrap_or("/");
        match kind {
            "Exact" => PathMatch::Exact(path.to_owned()),
            // Prefix, and ImplementationSpecific read as Prefix.
            _ => PathMatch::Prefix(elements(path).map(str::to_owned).collect()),
        }
    }

    /// The match's strength: `Some((1, _))` for an exact match, `Some((0,
    /// n))` for a prefix of `n` elements.
    fn score(&self, path: &str) -> Option<(u8, usize)> {
        match self {
            PathMatch::Exact(p) => (p == path).then_some((1, 0)),
            PathMatch::Prefix(prefix) => {
                let mut requested = elements(path);
                prefix
                    .iter()
                    .all(|e| requested.next() == Some(e.as_str()))
                    .then_some((0, prefix.len()))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    host: HostMatch,
    paths: Vec<(PathMatch, Backend)>,
}

#[derive(Debug, Clone)]
struct TlsEntry {
    hosts: Vec<HostMatch>,
    secret: String,
}

#[derive(Debug, Clone)]
struct IngressEntry {
    namespace: String,
    rules: Vec<Rule>,
    default_backend: Option<Backend>,
    tls: Vec<TlsEntry>,
}

/// The precedence of an Ingress among others: older first.
type Order = (jiff::Timestamp, String, String);

/// The Ingress routing table (see the module docs for the rules).
pub struct IngressTable {
    class: String,
    ingresses: BTreeMap<Order, IngressEntry>,
    /// Where each Ingress sits in `ingresses`.
    orders: HashMap<(String, String), Order>,
    /// PEM certificate chain and key of each TLS Secret.
    secrets: HashMap<(String, String), (String, String)>,
}

impl fmt::Debug for IngressTable {
    /// Names what is held, never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressTable")
            .field("class", &self.class)
            .field("ingresses", &self.orders.keys().collect::<Vec<_>>())
            .field("tls_secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for IngressTable {
    fn default() -> IngressTable {
        IngressTable::new()
    }
}

impl IngressTable {
    /// An empty table serving the class [`DEFAULT_CLASS`].
    pub fn new() -> IngressTable {
        IngressTable::new_with_class(DEFAULT_CLASS)
    }

    /// An empty table serving Ingresses of `class` (and those naming none).
    pub fn new_with_class(class: impl Into<String>) -> IngressTable {
        IngressTable {
            class: class.into(),
            ingresses: BTreeMap::new(),
            orders: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// Adds or replaces an Ingress; one of another class is forgotten.
    pub fn upsert(&mut self, ing: &Ingress) {
        let Some(name) = ing.metadata.name.clone() else {
            return;
        };
        let namespace = ing
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        self.remove(&namespace, &name);
        let spec = ing.spec.clone().unwrap_or_default();
        let class = spec.ingress_class_name.clone().or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLASS_ANNOTATION))
                .cloned()
        });
        if class.is_some_and(|c| c != self.class) {
            return;
        }
        let rules: Vec<Rule> = spec
            .rules
            .iter()
            .flatten()
            .map(|rule| Rule {
                host: HostMatch::parse(rule.host.as_deref()),
                paths: rule
                    .http
                    .iter()
                    .flat_map(|http| http.paths.iter())
                    .filter_map(|p| {
                        Some((
                            PathMatch::parse(p.path.as_deref(), &p.path_type),
                            Backend::from_k8s(&namespace, &p.backend)?,
                        ))
                    })
                    .collect(),
            })
            .collect();
        let rule_hosts: Vec<HostMatch> = rules
            .iter()
            .map(|r| r.host.clone())
            .filter(|h| *h != HostMatch::Any)
            .collect();
        let tls = spec
            .tls
            .iter()
            .flatten()
            .filter_map(|t| {
                let hosts = match &t.hosts {
                    Some(hosts) if !hosts.is_empty() => hosts
                        .iter()
                        .map(|h| HostMatch::parse(Some(h)))
                        .filter(|h| *h != HostMatch::Any)
                        .collect(),
                    _ => rule_hosts.clone(),
                };
                Some(TlsEntry {
                    hosts,
                    secret: t.secret_name.clone().filter(|s| !s.is_empty())?,
                })
            })
            .collect();
        let entry = IngressEntry {
            default_backend: spec
                .default_backend
                .as_ref()
                .and_then(|b| Backend::from_k8s(&namespace, b)),
            namespace: namespace.clone(),
            rules,
            tls,
        };
        let created = ing
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(jiff::Timestamp::MAX, |t| t.0);
        let order = (created, namespace.clone(), name.clone());
        self.orders.insert((namespace, name), order.clone());
        self.ingresses.insert(order, entry);
    }

    /// Forgets an Ingress.
    pub fn remove(&mut self, ns: &str, name: &str) {
        if let Some(order) = self.orders.remove(&(ns.to_owned(), name.to_owned())) {
            self.ingresses.remove(&order);
        }
    }

    /// Adds or replaces a Secret: kept when it is a `kubernetes.io/tls`
    /// Secret with a UTF-8 `tls.crt` and `tls.key`, forgotten otherwise.
    pub fn upsert_secret(&mut self, s: &Secret) {
        let Some(name) = s.metadata.name.clone() else {
            return;
        };
        let namespace = s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let field = |key: &str| -> Option<String> {
            if let Some(value) = s.data.as_ref().and_then(|d| d.get(key)) {
                return String::from_utf8(value.0.clone()).ok();
            }
            s.string_data.as_ref().and_then(|d| d.get(key)).cloned()
        };
        let pair = (s.type_.as_deref() == Some(TLS_SECRET_TYPE))
            .then(|| Some((field("tls.crt")?, field("tls.key")?)))
            .flatten();
        match pair {
            Some(pair) => {
                self.secrets.insert((namespace, name), pair);
            }
            None => self.remove_secret(&namespace, &name),
        }
    }

    /// Forgets a Secret.
    pub fn remove_secret(&mut self, ns: &str, name: &str) {
        self.secrets.remove(&(ns.to_owned(), name.to_owned()));
    }

    /// Routes a request by its `Host` (if any) and path (a query string is
    /// ignored): the backend Service, or `None` when no rule and no default
    /// backend takes it.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Backend> {
        let host = host.map(normalize_host).filter(|h| !h.is_empty());
        let path = path.split(['?', '#']).next().unwrap_or(path);
        for tier in 0..=2u8 {
            let mut best: Option<((u8, usize), &Backend)> = None;
            for entry in self.ingresses.values() {
                for rule in &entry.rules {
                    if rule.host.tier(host.as_deref()) != Some(tier) {
                        continue;
                    }
                    for (matcher, backend) in &rule.paths {
                        if let Some(score) = matcher.score(path)
                            && best.is_none_or(|(b, _)| score > b)
                        {
                            best = Some((score, backend));
                        }
                    }
                }
            }
            if let Some((_, backend)) = best {
                return Some(backend.clone());
            }
        }
        self.ingresses
            .values()
            .find_map(|e| e.default_backend.clone())
    }

    /// The certificate chain and key (PEM) to present for the TLS server
    /// name `sni`: from the `spec.tls` entry whose hosts name it (precise
    /// hosts before wildcards, older Ingresses first) and whose Secret is
    /// known. `None` when no entry covers the name.
    pub fn certificate(&self, sni: &str) -> Option<(String, String)> {
        let sni = normalize_host(sni);
        let mut best: Option<(u8, &(String, String))> = None;
        for entry in self.ingresses.values() {
            for tls in &entry.tls {
                let Some(tier) = tls.hosts.iter().filter_map(|h| h.tier(Some(&sni))).min() else {
                    continue;
                };
                let Some(pair) = self
                    .secrets
                    .get(&(entry.namespace.clone(), tls.secret.clone()))
                else {
                    continue;
                };
                if best.is_none_or(|(b, _)| tier < b) {
                    best = Some((tier, pair));
                }
            }
        }
        best.map(|(_, pair)| pair.clone())
    }

    fn replace_ingresses(&mut self, all: &[Ingress]) {
        self.ingresses.clear();
        self.orders.clear();
        for ing in all {
            self.upsert(ing);
        }
    }

    fn replace_secrets(&mut self, all: &[Secret]) {
        self.secrets.clear();
        for s in all {
            self.upsert_secret(s);
        }
    }
}

/// Keeps `table` current from watches of Ingresses and Secrets in every
/// namespace (only TLS Secrets are kept). The handles run until aborted.
pub fn spawn_feed(client: kube::Client, table: Arc<Mutex<IngressTable>>) -> Vec<JoinHandle<()>> {
    let ingresses = {
        let table = table.clone();
        watch_into(
            Api::<Ingress>::all(client.clone()),
            "ingresses",
            move |change| {
                let mut table = table.lock();
                match change {
                    Change::Apply(ing) => table.upsert(&ing),
                    Change::Delete(ing) => {
                        if let Some(name) = &ing.metadata.name {
                            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
                            table.remove(ns, name);
                        }
                    }
                    Change::Replace(all) => table.replace_ingresses(&all),
                }
            },
        )
    };
    let secrets = watch_into(Api::<Secret>::all(client), "secrets", move |change| {
        let mut table = table.lock();
        match change {
            Change::Apply(secret) => table.upsert_secret(&secret),
            Change::Delete(secret) => {
                if let Some(name) = &secret.metadata.name {
                    let ns = secret.metadata.namespace.as_deref().unwrap_or("default");
                    table.remove_secret(ns, name);
                }
            }
            Change::Replace(all) => table.replace_secrets(&all),
        }
    });
    vec![ingresses, secrets]
}

/// Picks the certificate for each TLS handshake by its server name, from
/// the table. No SNI, an unknown name or an unusable Secret fail the
/// handshake.
struct SniResolver {
    table: Arc<Mutex<IngressTable>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            tracing::debug!("TLS client sent no server name; no certificate to offer");
            return None;
        };
        let Some((cert, key)) = self.table.lock().certificate(sni) else {
            tracing::debug!(sni, "no Ingress TLS certificate for this server name");
            return None;
        };
        match certified_key(&cert, &key, &self.provider) {
            Ok(key) => Some(Arc::new(key)),
            Err(error) => {
                tracing::warn!(sni, %error, "unusable Ingress TLS secret");
                None
            }
        }
    }
}

fn certified_key(cert: &str, key: &str, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("tls.key: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())
}

/// Serves Ingress traffic on `listener` until the returned future is
/// dropped: plain HTTP (`tls` false) or TLS with the certificate chosen by
/// SNI from `table`; HTTP/1.1 and HTTP/2 either way (over TLS, HTTP/2 is
/// offered by ALPN). Each request is routed by `table` and handed to
/// `forward` with `X-Forwarded-For`, `-Proto` and `-Host` set; a request
/// no rule takes gets a 404 naming its host and path.
///
/// Errors only when the TLS configuration cannot be built; failed accepts
/// and broken connections are logged and the accept loop goes on.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: bool,
    table: Arc<Mutex<IngressTable>>,
    forward: Forward,
) -> std::io::Result<()> {
    let handler = {
        let table = table.clone();
        move |request, peer| handle(&table, &forward, request, peer, tls)
    };
    if !tls {
        return skiff_runtime::serve_with(listener, handler, std::future::pending()).await;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { table, provider }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let handler = Arc::new(handler);
    // Connections die with the server: dropping this future drops the set.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = skiff_runtime::accept(&listener).await;
        while connections.try_join_next().is_some() {}
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "ingress TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "ingress TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request, peer);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "ingress connection ended with an error");
            }
        });
    }
}

/// Routes one request and forwards it, or answers 404.
fn handle(
    table: &Mutex<IngressTable>,
    forward: &Forward,
    mut request: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    https: bool,
) -> BoxFuture<'static, hyper::Response<ResponseBody>> {
    // HTTP/2 carries the host as `:authority` (in the URI); HTTP/1.1 in
    // the Host header.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let path = request.uri().path().to_owned();
    let routed = table.lock().route(host.as_deref(), &path);
    let Some(backend) = routed else {
        let shown = host.as_deref().unwrap_or("(no host)");
        tracing::debug!(host = shown, path, "no ingress rule");
        return Box::pin(std::future::ready(not_found(shown, &path)));
    };
    let headers = request.headers_mut();
    // Set from what this proxy saw, not appended to: a client could send
    // anything in these.
    if let Ok(v) = http::HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        http::HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(v) = host.and_then(|h| http::HeaderValue::from_str(&h).ok()) {
        headers.insert("x-forwarded-host", v);
    }
    forward(backend, request, peer)
}

fn not_found(host: &str, path: &str) -> hyper::Response<ResponseBody> {
    skiff_runtime::text_response(
        http::StatusCode::NOT_FOUND,
        format_args!("no ingress rule for host {host} path {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ingress(v: Value) -> Ingress {
        serde_json::from_value(v).unwrap()
    }

    fn path(p: &str, kind: &str, service: &str, port: Value) -> Value {
        let port = if port.is_string() {
            json!({"name": port})
        } else {
            json!({"number": port})
        };
        json!({"path": p, "pathType": kind, "backend": {"service": {"name": service, "port": port}}})
    }

    fn backend(ns: &str, service: &str, port: u16) -> Option<Backend> {
        Some(Backend {
            namespace: ns.into(),
            service: service.into(),
            port: BackendPort::Number(port),
        })
    }

    fn svc(b: Option<Backend>) -> Option<String> {
        b.map(|b| b.service)
    }

    fn shop() -> IngressTable {
        let mut t = IngressTable::new();
        t.upsert(&ingress(json!({
            "metadata": {"name": "shop", "namespace": "web"},
            "spec": {
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "rules": [
                    {"host": "shop.example.com", "http": {"paths": [
                        path("/", "Prefix", "root", json!(80)),
                        path("/api", "Prefix", "api", json!(8080)),
                        path("/api/v2/", "Prefix", "api-v2", json!(8080)),
                        path("/api/login", "Exact", "login", json!("http")),
                        path("/static", "ImplementationSpecific", "static", json!(80))
                    ]}},
                    {"host": "*.example.com", "http": {"paths": [
                        path("/", "Prefix", "wild", json!(80))
                    ]}},
                    {"http": {"paths": [
                        path("/health", "Exact", "health", json!(80))
                    ]}}
                ]
            }
        })));
        t
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let t = shop();
        let h = Some("shop.example.com");
        assert_eq!(t.route(h, "/api"), backend("web", "api", 8080));
        assert_eq!(t.route(h, "/api/"), backend("web", "api", 8080));
        assert_eq!(t.route(h, "/api/orders?id=1"), backend("web", "api", 8080));
        assert_eq!(
            svc(t.route(h, "/api/v2")),
            Some("api-v2".into()),
            "trailing slash ignored"
        );
        assert_eq!(svc(t.route(h, "/api/v2/x")), Some("api-v2".into()));
        assert_eq!(
            svc(t.route(h, "/api/v20")),
            Some("api".into()),
            "by elements"
        );
        assert_eq!(
            svc(t.route(h, "/apix")),
            Some("root".into()),
            "/api does not match /apix"
        );
        assert_eq!(
            t.route(h, "/api/login"),
            Some(Backend {
                namespace: "web".into(),
                service: "login".into(),
                port: BackendPort::Name("http".into())
            })
        );
        assert_eq!(
            svc(t.route(h, "/api/login/x")),
            Some("api".into()),
            "Exact is exact"
        );
        assert_eq!(svc(t.route(h, "/static/app.js")), Some("static".into()));
        assert_eq!(svc(t.route(h, "/")), Some("root".into()));
    }

    #[test]
    fn hosts_match_exactly_then_by_wildcard_then_any() {
        let t = shop();
        for host in [
            "shop.example.com",
            "SHOP.Example.com:8443",
            "shop.example.com.",
        ] {
            assert_eq!(svc(t.route(Some(host), "/")), Some("root".into()), "{host}");
        }
        assert_eq!(
            svc(t.route(Some("blog.example.com"), "/x")),
            Some("wild".into())
        );
        assert_eq!(
            svc(t.route(Some("a.b.example.com"), "/x")),
            Some("fallback".into()),
            "a wildcard covers one label"
        );
        assert_eq!(
            svc(t.route(Some("example.com"), "/x")),
            Some("fallback".into())
        );
        // A host-less rule takes any host, behind host-specific rules.
        assert_eq!(
            svc(t.route(Some("other.org"), "/health")),
            Some("health".into())
        );
        assert_eq!(svc(t.route(None, "/health")), Some("health".into()));
        assert_eq!(
            svc(t.route(Some("shop.example.com"), "/health")),
            Some("root".into()),
            "the precise host's / prefix comes first"
        );
        assert_eq!(svc(t.route(None, "/")), Some("fallback".into()));
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
    }

    #[test]
    fn ingresses_merge_older_wins_ties_and_removal_works() {
        let mut t = IngressTable::new();
        t.upsert(&ingress(json!({
            "metadata": {"name": "new", "namespace": "a", "creationTimestamp": "2026-02-01T00:00:00Z"},
            "spec": {"rules": [{"host": "x.test", "http": {"paths": [
                path("/", "Prefix", "new-root", json!(80)),
                path("/deep/er", "Prefix", "new-deep", json!(80))
            ]}}]}
        })));
        t.upsert(&ingress(json!({
            "metadata": {"name": "old", "namespace": "b", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"rules": [{"host": "x.test", "http": {"paths": [
                path("/", "Prefix", "old-root", json!(80))
            ]}}]}
        })));
        assert_eq!(t.route(Some("x.test"), "/"), backend("b", "old-root", 80));
        assert_eq!(
            t.route(Some("x.test"), "/deep/er/est"),
            backend("a", "new-deep", 80)
        );
        t.remove("b", "old");
        assert_eq!(t.route(Some("x.test"), "/"), backend("a", "new-root", 80));
        t.remove("a", "new");
        assert_eq!(t.route(Some("x.test"), "/"), None);
        // Upserting replaces, also when the timestamp is the same.
        t.upsert(&ingress(json!({
            "metadata": {"name": "n", "namespace": "a"},
            "spec": {"rules": [{"http": {"paths": [path("/", "Prefix", "one", json!(80))]}}]}
        })));
        t.upsert(&ingress(json!({
            "metadata": {"name": "n", "namespace": "a"},
            "spec": {"rules": [{"http": {"paths": [path("/", "Prefix", "two", json!(80))]}}]}
        })));
        assert_eq!(svc(t.route(Some("y"), "/")), Some("two".into()));
        t.replace_ingresses(&[]);
        assert_eq!(t.route(Some("y"), "/"), None);
    }

    #[test]
    fn only_the_configured_class_is_served() {
        let make = |name: &str, class: Option<&str>, annotation: Option<&str>| {
            let mut v = json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"rules": [{"host": format!("{name}.test"), "http": {"paths": [
                    path("/", "Prefix", name, json!(80))
                ]}}]}
            });
            if let Some(c) = class {
                v["spec"]["ingressClassName"] = json!(c);
            }
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": a});
            }
            ingress(v)
        };
        let mut t = IngressTable::new();
        t.upsert(&make("none", None, None));
        t.upsert(&make("skiff", Some("skiff"), None));
        t.upsert(&make("nginx", Some("nginx"), None));
        t.upsert(&make("legacy", None, Some("nginx")));
        t.upsert(&make("legacyok", None, Some("skiff")));
        assert!(t.route(Some("none.test"), "/").is_some());
        assert!(t.route(Some("skiff.test"), "/").is_some());
        assert!(t.route(Some("nginx.test"), "/").is_none());
        assert!(t.route(Some("legacy.test"), "/").is_none());
        assert!(t.route(Some("legacyok.test"), "/").is_some());
        // Changing class away stops serving it.
        t.upsert(&make("skiff", Some("other"), None));
        assert!(t.route(Some("skiff.test"), "/").is_none());

        let mut other = IngressTable::new_with_class("nginx");
        other.upsert(&make("nginx", Some("nginx"), None));
        other.upsert(&make("skiff", Some("skiff"), None));
        assert!(other.route(Some("nginx.test"), "/").is_some());
        assert!(other.route(Some("skiff.test"), "/").is_none());
    }

    fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Secret {
        use k8s_openapi::ByteString;
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec())),
                ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn certificates_by_server_name() {
        let mut t = IngressTable::new();
        t.upsert(&ingress(json!({
            "metadata": {"name": "i", "namespace": "web"},
            "spec": {
                "tls": [
                    {"hosts": ["*.example.com"], "secretName": "wild"},
                    {"hosts": ["shop.example.com"], "secretName": "shop"},
                    {"secretName": "implied"},
                    {"hosts": ["missing.example.org"], "secretName": "missing"}
                ],
                "rules": [{"host": "rules.example.net"}]
            }
        })));
        assert_eq!(
            t.certificate("shop.example.com"),
            None,
            "secrets not seen yet"
        );
        t.upsert_secret(&tls_secret("web", "wild", "WILD-CERT", "WILD-KEY"));
        t.upsert_secret(&tls_secret("web", "shop", "SHOP-CERT", "SHOP-KEY"));
        t.upsert_secret(&tls_secret("web", "implied", "IMPLIED-CERT", "IMPLIED-KEY"));
        t.upsert_secret(&tls_secret("other", "missing", "X", "Y"));
        let cert = |t: &IngressTable, sni: &str| t.certificate(sni).map(|(c, _)| c);
        assert_eq!(
            t.certificate("SHOP.example.com"),
            Some(("SHOP-CERT".into(), "SHOP-KEY".into())),
            "precise before wildcard"
        );
        assert_eq!(cert(&t, "blog.example.com").as_deref(), Some("WILD-CERT"));
        assert_eq!(cert(&t, "a.b.example.com"), None);
        assert_eq!(
            cert(&t, "rules.example.net").as_deref(),
            Some("IMPLIED-CERT")
        );
        assert_eq!(
            cert(&t, "missing.example.org"),
            None,
            "the secret is in another namespace"
        );
        assert_eq!(cert(&t, "unknown.test"), None);
        // A Secret of another type is not a certificate.
        let mut opaque = tls_secret("web", "shop", "SHOP-CERT", "SHOP-KEY");
        opaque.type_ = Some("Opaque".into());
        t.upsert_secret(&opaque);
        assert_eq!(cert(&t, "shop.example.com").as_deref(), Some("WILD-CERT"));
        t.remove_secret("web", "wild");
        assert_eq!(cert(&t, "shop.example.com"), None);
        assert!(
            !format!("{t:?}").contains("KEY"),
            "Debug shows no key material"
        );
    }

    mod serving {
        use super::*;
        use bytes::Bytes;
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::net::{TcpListener, TcpStream};

        const LIMIT: Duration = Duration::from_secs(30);

        /// A forward callback that answers with what it was given.
        fn echo_forward() -> Forward {
            Arc::new(
                |backend: Backend, request: hyper::Request<hyper::body::Incoming>, _peer| {
                    let text = format!(
                        "{backend} {} proto={} for={}",
                        request.uri().path(),
                        request
                            .headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-"),
                        request
                            .headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-"),
                    );
                    Box::pin(async move { hyper::Response::new(skiff_runtime::body(text)) })
                },
            )
        }

        async fn start(tls: bool, table: IngressTable) -> (SocketAddr, JoinHandle<()>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let table = Arc::new(Mutex::new(table));
            let task = tokio::spawn(async move {
                serve(listener, tls, table, echo_forward()).await.unwrap();
            });
            (addr, task)
        }

        async fn get_http1<S>(io: S, host: &str, path: &str) -> (u16, String)
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(connection);
            let request = hyper::Request::get(path)
                .header("host", host)
                .header("x-forwarded-for", "6.6.6.6")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        fn demo_table() -> IngressTable {
            let mut t = IngressTable::new();
            t.upsert(&ingress(json!({
                "metadata": {"name": "demo", "namespace": "apps"},
                "spec": {
                    "tls": [{"hosts": ["demo.test"], "secretName": "demo-tls"}],
                    "rules": [{"host": "demo.test", "http": {"paths": [
                        path("/", "Prefix", "demo", json!(80)),
                        path("/api", "Prefix", "api", json!("grpc"))
                    ]}}]
                }
            })));
            t
        }

        #[tokio::test]
        async fn plain_http_routes_and_404s() {
            tokio::time::timeout(LIMIT, async {
                let (addr, server) = start(false, demo_table()).await;
                let io = TcpStream::connect(addr).await.unwrap();
                let (status, body) = get_http1(io, "demo.test:8080", "/api/v1").await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body, "apps/api:grpc /api/v1 proto=http for=127.0.0.1");
                let io = TcpStream::connect(addr).await.unwrap();
                let (status, body) = get_http1(io, "nope.test", "/x/y").await;
                assert_eq!(status, 404);
                assert_eq!(body, "no ingress rule for host nope.test path /x/y\n");
                server.abort();
            })
            .await
            .expect("the plain ingress server or its client hung");
        }

        fn client_config(trusted: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }

        #[tokio::test]
        async fn tls_picks_the_certificate_by_sni() {
            tokio::time::timeout(LIMIT, async {
                let certified =
                    rcgen::generate_simple_self_signed(vec!["demo.test".into()]).unwrap();
                let cert_pem = certified.cert.pem();
                let mut table = demo_table();
                table.upsert_secret(&tls_secret(
                    "apps",
                    "demo-tls",
                    &cert_pem,
                    &certified.signing_key.serialize_pem(),
                ));
                let (addr, server) = start(true, table).await;

                // HTTP/1.1.
                let connector =
                    tokio_rustls::TlsConnector::from(client_config(&cert_pem, &[b"http/1.1"]));
                let name = rustls::pki_types::ServerName::try_from("demo.test").unwrap();
                let tcp = TcpStream::connect(addr).await.unwrap();
                let tls = connector.connect(name.clone(), tcp).await.unwrap();
                let (status, body) = get_http1(tls, "demo.test", "/index.html").await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body, "apps/demo:80 /index.html proto=https for=127.0.0.1");

                // HTTP/2, negotiated by ALPN; the host travels as :authority.
                let connector =
                    tokio_rustls::TlsConnector::from(client_config(&cert_pem, &[b"h2"]));
                let tcp = TcpStream::connect(addr).await.unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let request = hyper::Request::get("https://demo.test/api/x")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"apps/api:grpc /api/x proto=https for=127.0.0.1");

                // A server name with no certificate fails the handshake,
                // and the server goes on serving.
                let connector = tokio_rustls::TlsConnector::from(client_config(&cert_pem, &[]));
                let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
                let tcp = TcpStream::connect(addr).await.unwrap();
                assert!(connector.connect(other, tcp).await.is_err());
                let name = rustls::pki_types::ServerName::try_from("demo.test").unwrap();
                let tcp = TcpStream::connect(addr).await.unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                let (status, _) = get_http1(tls, "demo.test", "/").await;
                assert_eq!(status, 200);
                assert!(!server.is_finished());
                server.abort();
            })
            .await
            .expect("the TLS ingress server or its client hung");
        }
    }
}
