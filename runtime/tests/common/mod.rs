//! Helpers shared by the runtime's integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt;
use skiff_runtime::{Component, GuestError, Runtime, RuntimeConfig, Sandbox};

/// A runtime with no disk cache; logs go to the test's output.
pub fn runtime() -> Runtime {
    runtime_with(RuntimeConfig::default())
}

pub fn runtime_with(config: RuntimeConfig) -> Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Runtime::new(config).expect("runtime")
}

/// Loads one of the guests built by `skiff-guests`.
pub fn load(runtime: &Runtime, path: &str) -> Component {
    runtime.load_file(path).expect("guest loads").0
}

/// Sends a request; returns status and body, or the guest error.
pub async fn request(
    component: &Component,
    method: &str,
    path: &str,
    body: &str,
    sandbox: &Sandbox,
) -> Result<(u16, String), GuestError> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://test.local{path}"))
        .header("x-test", "yes")
        .body(skiff_runtime::body(body.to_string()))
        .expect("request");
    let response = component.handle(request, sandbox).await?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

pub async fn get(
    component: &Component,
    path: &str,
    sandbox: &Sandbox,
) -> Result<(u16, String), GuestError> {
    request(component, "GET", path, "", sandbox).await
}

/// Fails the test, naming what probably hung, if `fut` takes over `secs`.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}
