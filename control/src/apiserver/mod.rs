//! The Kubernetes-compatible API server: HTTPS, bearer tokens, and the
//! Kubernetes REST verbs over the [`crate::store`].
//!
//! Begin with [`ApiServer::start`]. Requests flow: TLS → [`auth`] (bearer
//! token, 401 otherwise) → [`routes`] (path to resource type and verb) →
//! [`objects`] (metadata, admission from [`skiff_api::admission`], patches,
//! allocation) → the store. Lists and watches read the store's revisions as
//! resourceVersions; errors are `Status` objects ([`ApiError`]).

mod alloc;
mod auth;
mod discovery;
mod error;
mod metrics;
pub mod nodeproxy;
mod objects;
mod pki;
mod protobuf;
mod registry;
mod routes;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth::Tokens;
pub use error::{ApiError, ApiResult};
pub use pki::Pki;

use crate::store::{SledStore, Store};

/// The largest request body accepted, as in Kubernetes (3 MiB).
pub const MAX_BODY: usize = 3 << 20;

/// The `gitVersion` reported by `/version`. kubectl's dispatcher picks the
/// client build matching the server's minor version, and the machine's
/// kubectl ships a 1.32 client.
pub const GIT_VERSION: &str = "v1.32.4-skiff";

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file in the data directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The API port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason (for example: address already in use).
        #[source]
        source: std::io::Error,
    },
    /// Another process serves this data directory.
    #[error(
        "the data directory {} is in use by another skiff process{}; stop it or choose another --data-dir",
        dir.display(),
        holder.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The pid written by the process holding it, if readable.
        holder: Option<String>,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::Error),
    /// Certificates or TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Settings for [`ApiServer::start`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, certificates, tokens and kubeconfig live.
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on.
    pub listen: SocketAddr,
    /// Extra host names or addresses for the serving certificate (loopback
    /// and `localhost` are always included).
    pub hosts: Vec<String>,
    /// The Service ClusterIP range (an IPv4 CIDR).
    pub service_cidr: String,
    /// The NodePort range.
    pub node_ports: (u16, u16),
    /// How often history is compacted: each tick compacts to the revision
    /// seen at the previous tick, so watches can resume from anything
    /// newer than one interval (Kubernetes compacts every 5 minutes).
    pub compaction_interval: std::time::Duration,
}

impl Config {
    /// Defaults for a data directory and a listen address.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            hosts: Vec::new(),
            service_cidr: "10.43.0.0/16".into(),
            node_ports: (30000, 32767),
            compaction_interval: std::time::Duration::from_secs(300),
        }
    }
}

/// State shared by every request.
pub(crate) struct State {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: Tokens,
    pub(crate) allocator: alloc::Allocator,
    /// The built-in OCI registry's files (`data_dir/registry`).
    pub(crate) registry: registry::Storage,
    /// Open watches, for `/metrics`.
    pub(crate) watchers: Arc<metrics::Watchers>,
}

/// A running API server. Dropping it does not stop it: call
/// [`ApiServer::shutdown`].
pub struct ApiServer {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    /// The data directory's lock, held while the server runs.
    lock: Option<std::fs::File>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
    compactor: JoinHandle<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Opens the store under `data_dir`, loads or creates the CA and tokens,
    /// writes `data_dir/kubeconfig` (admin) and `data_dir/node-token`,
    /// makes sure the default namespaces exist, and starts serving HTTPS.
    pub async fn start(config: Config) -> Result<ApiServer, ServerError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let store: Arc<dyn Store> = Arc::new(SledStore::open(config.data_dir.join("store"))?);
        let mut server = Self::start_with_store(config, store).await?;
        server.lock = Some(lock);
        Ok(server)
    }

    /// Like [`ApiServer::start`] over a store the caller opened.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<ApiServer, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut hosts = vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ];
        if !addr.ip().is_unspecified() && !hosts.contains(&addr.ip().to_string()) {
            hosts.push(addr.ip().to_string());
        }
        hosts.extend(config.hosts.iter().cloned());
        let pki = Pki::load_or_create(&config.data_dir.join("pki"), &hosts)?;
        let tokens = Tokens::load_or_create(&config.data_dir)?;
        let registry_dir = config.data_dir.join("registry");
        let registry =
            registry::Storage::open(registry_dir.clone()).map_err(|source| ServerError::Io {
                path: registry_dir,
                source,
            })?;
        let kubeconfig = config.data_dir.join("kubeconfig");
        let server_url = format!("https://{}", display_addr(addr));
        pki::write_private(
            &kubeconfig,
            &auth::kubeconfig(&server_url, &pki.ca_pem, tokens.admin()),
        )?;
        let allocator = alloc::Allocator::new(&config.service_cidr, config.node_ports)
            .map_err(|e| ServerError::Tls(format!("service CIDR {}: {e}", config.service_cidr)))?;
        let compactor = tokio::spawn(compact_periodically(
            store.clone(),
            config.compaction_interval,
        ));
        let state = Arc::new(State {
            store,
            tokens,
            allocator,
            registry,
            watchers: Arc::default(),
        });
        objects::ensure_default_namespaces(&state).await;
        let tls = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
        let router = routes::router(state);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, tls, router, stopped));
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
        Ok(ApiServer {
            addr,
            kubeconfig,
            lock: None,
            stop: Some(stop),
            task,
            compactor,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin kubeconfig it wrote.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stops accepting connections and waits (up to `grace`) for open
    /// requests (watches included) to finish.
    pub async fn shutdown(mut self, grace: std::time::Duration) {
        self.compactor.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Compacts the store's history every `interval`, to the revision seen one
/// interval earlier.
async fn compact_periodically(store: Arc<dyn Store>, interval: std::time::Duration) {
    let mut previous = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some(revision) = previous
            && let Err(err) = store.compact(revision).await
        {
            tracing::warn!(revision, error = %err, "compaction failed");
        }
        match store.current_revision().await {
            Ok(revision) => previous = Some(revision),
            Err(err) => tracing::warn!(error = %err, "cannot read the store revision"),
        }
    }
}

fn display_addr(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{ip}:{}", addr.port())
}

/// The accept loop: TLS handshake and HTTP per connection in its own task.
async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        // Watch events and chunked lists go out as they are written, not
        // after the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    // Open watches end when their streams notice shutdown or time out; the
    // caller bounds this wait.
    graceful.shutdown().await;
}

/// Takes the exclusive lock of `dir/skiff.lock` (released when the process
/// exits, however it exits) and writes our pid into it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    use std::io::Write;
    let path = dir.join("skiff.lock");
    let io = |source| ServerError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            return Err(ServerError::Locked {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}
