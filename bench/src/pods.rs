//! What the node benchmarks (`podstart`, `density`, `coldstart`) share:
//! the pods and Services they create, a watch recording when each pod is
//! first seen Ready, HTTP probing through a NodePort on 127.0.0.1, and
//! distinct variants of a component.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The label every object of a benchmark carries (`bench=<part>`).
pub const PART_LABEL: &str = "bench";

/// A pod of one container running `image` (pulled if not present), with
/// no resource requests, labelled `bench=<part>` plus `extra` labels.
pub fn pod(name: &str, part: &str, image: &str, extra: &[(&str, &str)]) -> Pod {
    let mut labels = serde_json::Map::new();
    labels.insert(PART_LABEL.into(), part.into());
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "hello",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "name": "http"}]
            }]
        }
    }))
    .expect("a valid Pod")
}

/// A NodePort Service on `node_port` selecting `selector`.
pub fn node_port_service(
    name: &str,
    part: &str,
    selector: (&str, &str),
    node_port: u16,
) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {PART_LABEL: part}},
        "spec": {
            "type": "NodePort",
            "selector": {selector.0: selector.1},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": node_port}]
        }
    }))
    .expect("a valid Service")
}

/// A Deployment of one replica of `image`, its pods labelled `app=<name>`.
pub fn deployment(name: &str, part: &str, image: &str) -> Deployment {
    let template = pod(name, part, image, &[("app", name)]);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {PART_LABEL: part}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": template.metadata.labels},
                "spec": template.spec
            }
        }
    }))
    .expect("a valid Deployment")
}

/// Creates a NodePort Service selecting `selector` on a NodePort free on
/// 127.0.0.1 (the cluster's range is 30000-32767; a port taken by
/// something else on this machine, or already allocated, is skipped),
/// returning the port.
pub async fn create_node_port_service(
    client: &kube::Client,
    name: &str,
    part: &str,
    selector: (&str, &str),
) -> anyhow::Result<u16> {
    let api: Api<Service> = Api::default_namespaced(client.clone());
    let mut last = None;
    for _ in 0..20 {
        let port = random_node_port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        match api
            .create(
                &PostParams::default(),
                &node_port_service(name, part, selector, port),
            )
            .await
        {
            Ok(_) => return Ok(port),
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no free NodePort for Service {name} after 20 tries (last: {last:?})")
}

fn random_node_port() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    30000 + (h.finish() % 2768) as u16
}

/// One GET / to `127.0.0.1:port`: true on a 200 response. Bounded by
/// `timeout`; any failure (refused, reset, other status) is false.
pub async fn get_ok(port: u16, timeout: Duration) -> bool {
    get(port, "/", timeout)
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

/// One `GET path` to `127.0.0.1:port` (connection closed after it): the
/// whole response, at most 64 KiB of it. Bounded by `timeout`; None on any
/// failure.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(64 * 1024)
            .read_to_end(&mut response)
            .await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(timeout, attempt).await.ok()?.ok()
}

/// Polls `127.0.0.1:port` every `interval` until a 200, for at most
/// `timeout` (and so at most `timeout / interval` attempts): the instant
/// of the first 200, or None.
pub async fn first_ok(port: u16, interval: Duration, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let attempts = (timeout.as_millis() / interval.as_millis().max(1)) as usize + 1;
    for _ in 0..attempts {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if get_ok(port, left.min(Duration::from_secs(1))).await {
            return Some(Instant::now());
        }
        tokio::time::sleep(interval).await;
    }
    None
}

/// What a watch saw of the benchmark's pods.
#[derive(Default)]
pub struct Seen {
    /// When the watch first saw each pod Ready, with the Ready condition's
    /// lastTransitionTime as the agent wrote it.
    pub ready: HashMap<String, (Instant, Option<jiff::Timestamp>)>,
    /// When the watch first saw each pod bound to a node.
    pub bound: HashMap<String, Instant>,
    /// Pods that exist now.
    pub live: HashSet<String>,
    /// Pods the node failed (phase Failed): name and reason.
    pub failed: HashMap<String, String>,
}

/// A watch on the pods labelled `bench=<part>` in the default namespace,
/// recording the instant each is first seen Ready.
pub struct PodWatch {
    seen: Arc<Mutex<Seen>>,
    /// Woken after every event, so waits end as soon as they can.
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    /// Starts watching and returns once the initial list is done.
    pub async fn start(client: &kube::Client, part: &str) -> anyhow::Result<PodWatch> {
        let api: Api<Pod> = Api::default_namespaced(client.clone());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (init_tx, init_rx) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().labels(&format!("{PART_LABEL}={part}"));
        let task = {
            let (seen, changed) = (seen.clone(), changed.clone());
            tokio::spawn(async move {
                let mut init = Some(init_tx);
                let mut stream = watcher(api, config).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    let Ok(event) = event else { continue };
                    match event {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                            record(&mut lock(&seen), &p);
                        }
                        watcher::Event::Delete(p) => {
                            let name = p.metadata.name.unwrap_or_default();
                            lock(&seen).live.remove(&name);
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = init.take() {
                                let _ = tx.send(());
                            }
                        }
                        watcher::Event::Init => {}
                    }
                    changed.notify_waiters();
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(60), init_rx)
            .await
            .context("the pod watch did not list within a minute")??;
        Ok(PodWatch {
            seen,
            changed,
            task,
        })
    }

    /// What was seen so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// Waits until every pod in `names` is Ready or failed, or `timeout`
    /// passes; returns how many are neither.
    pub async fn wait_ready(&self, names: &[String], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let missing = {
                let seen = self.seen();
                names
                    .iter()
                    .filter(|n| !seen.ready.contains_key(*n) && !seen.failed.contains_key(*n))
                    .count()
            };
            if missing == 0 || Instant::now() > deadline {
                return missing;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), changed).await;
        }
    }

    /// Waits until no pod of the part exists, up to `timeout`.
    pub async fn wait_gone(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.seen().live.len();
            if live == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{live} pods still exist {timeout:?} after their deletion");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(seen: &mut Seen, pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_none() {
        seen.live.insert(name.clone());
    }
    if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
        seen.bound.entry(name.clone()).or_insert_with(Instant::now);
    }
    let Some(status) = &pod.status else { return };
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.clone().unwrap_or_else(|| "Failed".into());
        seen.failed.entry(name.clone()).or_insert(reason);
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True");
    if let Some(c) = ready {
        let at = c.last_transition_time.as_ref().map(|t| t.0);
        seen.ready.entry(name).or_insert((Instant::now(), at));
    }
}

/// Deletes everything labelled `bench=<part>` (Deployments, ReplicaSets,
/// Services, pods; pods without grace) in the default namespace.
pub async fn delete_all(client: &kube::Client, part: &str) -> anyhow::Result<()> {
    let lp = ListParams::default().labels(&format!("{PART_LABEL}={part}"));
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let dp = DeleteParams::default();
    Api::<Deployment>::default_namespaced(client.clone())
        .delete_collection(&dp, &lp)
        .await?;
    Api::<ReplicaSet>::default_namespaced(client.clone())
        .delete_collection(&dp, &lp)
        .await?;
    Api::<Service>::default_namespaced(client.clone())
        .delete_collection(&dp, &lp)
        .await?;
    Api::<Pod>::default_namespaced(client.clone())
        .delete_collection(&now, &lp)
        .await?;
    Ok(())
}

/// `component` with a custom section named `skiff-bench` holding `tag`
/// appended: a distinct image (another digest, another compile) of the
/// same program. A section appended at the end of a component is valid.
pub fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    let name = b"skiff-bench";
    let mut body = leb128(name.len() as u64);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    out.extend(leb128(body.len() as u64));
    out.extend(body);
    out
}

fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Runs `make(i)` for `0..count` with `concurrency` in flight, returning
/// how many failed (and the first error).
pub async fn run_all<F, Fut>(
    count: usize,
    concurrency: usize,
    make: F,
) -> (usize, Option<anyhow::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut failed = 0;
    let mut first = None;
    for r in results {
        if let Err(e) = r {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    (failed, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes_unsigned() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
        assert_eq!(leb128(624_485), [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn a_variant_ends_with_a_custom_section() {
        let base = b"\0asm\x0d\0\x01\0".to_vec();
        let v = variant(&base, "x1");
        assert_eq!(&v[..base.len()], &base[..]);
        // id 0, size 14 = 1 (name length) + 11 (name) + 2 (payload)
        assert_eq!(&v[base.len()..base.len() + 3], &[0, 14, 11]);
        assert!(v.ends_with(b"skiff-benchx1"));
        assert_ne!(variant(&base, "x2"), v);
    }
}
