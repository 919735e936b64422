//! A real API server in this process, on loopback, over a fresh data
//! directory, with an admin client: what controller and scheduler tests
//! run against.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use skiff_control::apiserver::{ApiServer, Config};

/// A running API server, its data directory and an admin client.
pub struct Cluster {
    /// The server; shut down on drop of the test's runtime.
    pub server: ApiServer,
    /// An admin client.
    pub client: kube::Client,
    /// The data directory (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts an API server on a free loopback port.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = ApiServer::start(Config::new(dir.path(), listen))
            .await
            .unwrap();
        let client = skiff_control::client::from_kubeconfig(server.kubeconfig())
            .await
            .unwrap();
        Cluster {
            server,
            client,
            dir,
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
