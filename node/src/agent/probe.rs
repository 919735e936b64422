//! Startup, liveness and readiness probes, run in-process: an `httpGet`
//! probe calls the component's own HTTP handler, no socket involved.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::HttpHandle;

/// What probes found out about a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Update {
    /// The startup probe passed (or there is none).
    Started,
    /// The readiness probe's verdict changed (or there is none: ready).
    Ready(bool),
}

fn seconds(value: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(min)).unwrap_or(0))
}

fn threshold(value: Option<i32>, default: i32) -> u32 {
    u32::try_from(value.unwrap_or(default).max(1)).unwrap_or(1)
}

/// One check of `probe` against the container; `Err` says why it failed.
pub(crate) async fn check(probe: &Probe, target: Option<&HttpHandle>) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1, 1);
    if let Some(get) = &probe.http_get {
        let Some(handle) = target else {
            return Err(
                "httpGet probe on a container that does not serve HTTP (a wasi:cli/run component)"
                    .to_owned(),
            );
        };
        let port = match &get.port {
            IntOrString::Int(port) => port.to_string(),
            IntOrString::String(name) => name.clone(),
        };
        let host = get.host.as_deref().unwrap_or("localhost");
        let path = get.path.as_deref().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let url = format!("http://{host}:{port}{path}");
        let mut request = hyper::Request::get(&url).header("user-agent", "kube-probe/1.32");
        for header in get.http_headers.iter().flatten() {
            request = request.header(header.name.as_str(), header.value.as_str());
        }
        let request = request
            .body(skiff_runtime::body(""))
            .map_err(|e| format!("invalid probe request {url}: {e}"))?;
        let mut sandbox = handle.sandbox.clone();
        sandbox.limits.deadline = Some(sandbox.limits.deadline.map_or(timeout, |d| d.min(timeout)));
        return match tokio::time::timeout(
            timeout + Duration::from_millis(100),
            handle.component.handle(request, &sandbox),
        )
        .await
        {
            Ok(Ok(response)) if (200..400).contains(&response.status().as_u16()) => Ok(()),
            Ok(Ok(response)) => Err(format!(
                "HTTP probe failed with statuscode: {}",
                response.status().as_u16()
            )),
            Ok(Err(err)) => Err(format!("Get {url:?}: the component {err}")),
            Err(_) => Err(format!(
                "Get {url:?}: context deadline exceeded (timeout {timeout:?})"
            )),
        };
    }
    if probe.tcp_socket.is_some() {
        // The component's port is "open" exactly when it serves HTTP.
        return match target {
            Some(_) => Ok(()),
            None => Err("tcpSocket probe on a container that serves no port".to_owned()),
        };
    }
    if probe.exec.is_some() {
        return Err(
            "exec probes are not supported: a wasm component has no processes to exec".to_owned(),
        );
    }
    if probe.grpc.is_some() {
        return Err("grpc probes are not supported".to_owned());
    }
    Ok(())
}

/// Runs the container's probes for as long as it runs, reporting through
/// `on`. Returns only when the container must be killed (startup or
/// liveness failed), with the reason.
pub(crate) async fn supervise(
    container: &Container,
    target: Option<&HttpHandle>,
    on: &(dyn Fn(Update) + Send + Sync),
) -> String {
    if let Some(probe) = &container.startup_probe {
        tokio::time::sleep(seconds(probe.initial_delay_seconds, 0, 0)).await;
        let period = seconds(probe.period_seconds, 10, 1);
        let failures_allowed = threshold(probe.failure_threshold, 3);
        let mut failures = 0;
        loop {
            match check(probe, target).await {
                Ok(()) => break,
                Err(message) => {
                    failures += 1;
                    if failures >= failures_allowed {
                        return format!("Startup probe failed: {message}");
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
    on(Update::Started);
    let liveness = async {
        let Some(probe) = &container.liveness_probe else {
            return std::future::pending().await;
        };
        tokio::time::sleep(seconds(probe.initial_delay_seconds, 0, 0)).await;
        let period = seconds(probe.period_seconds, 10, 1);
        let failures_allowed = threshold(probe.failure_threshold, 3);
        let mut failures = 0;
        loop {
            match check(probe, target).await {
                Ok(()) => failures = 0,
                Err(message) => {
                    failures += 1;
                    if failures >= failures_allowed {
                        return format!("Liveness probe failed: {message}");
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    };
    let readiness = async {
        let Some(probe) = &container.readiness_probe else {
            on(Update::Ready(true));
            return std::future::pending::<String>().await;
        };
        tokio::time::sleep(seconds(probe.initial_delay_seconds, 0, 0)).await;
        let period = seconds(probe.period_seconds, 10, 1);
        let (needed_ok, needed_fail) = (
            threshold(probe.success_threshold, 1),
            threshold(probe.failure_threshold, 3),
        );
        let (mut ok, mut failed, mut ready) = (0, 0, false);
        loop {
            match check(probe, target).await {
                Ok(()) => {
                    ok += 1;
                    failed = 0;
                    if !ready && ok >= needed_ok {
                        ready = true;
                        on(Update::Ready(true));
                    }
                }
                Err(message) => {
                    failed += 1;
                    ok = 0;
                    if ready && failed >= needed_fail {
                        tracing::info!(container = %container.name, %message, "readiness probe failed");
                        ready = false;
                        on(Update::Ready(false));
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    };
    tokio::select! {
        killed = liveness => killed,
        never = readiness => never,
    }
}
