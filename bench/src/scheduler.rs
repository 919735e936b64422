//! Scheduler throughput, two ways:
//! - the algorithm alone (`skiff_control::scheduler::schedule` over a
//!   snapshot of N nodes, each placed pod added before the next decision):
//!   decisions per second and per-decision latency;
//! - end to end, as kwok does it: N Nodes created through the API with no
//!   agent (status Ready written by the harness), M pods created while no
//!   scheduler runs, then `skiff controllers` started: pods bound per second
//!   from the first binding to the last, as seen by a watch. M is 10,000,
//!   so the rate is the steady one, not the start-up (lists, connections).

use std::borrow::Cow;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skiff_control::scheduler::{Snapshot, schedule};

use crate::proc::{Process, SkiffServer};
use crate::report::{Report, table};
use crate::stats::{Latencies, fmt};

/// What the harness reads of a pod: its name and node. The rest of each
/// object is skipped while decoding, so that measuring takes little of the
/// CPU the scheduler and the API server share.
#[derive(Clone, Debug, serde::Deserialize)]
struct Placed {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PlacedSpec,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct PlacedSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

impl kube::Resource for Placed {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .expect("a valid Node")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("p-{i}"), "namespace": "default", "uid": format!("uid-{i}"),
            "labels": {"app": "bench"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench",
                                 "uid": "rs-uid", "controller": true}]
        },
        "spec": {"containers": [{"name": "c", "image": "hello:v1",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))
    .expect("a valid Pod")
}

/// The algorithm alone.
pub fn algorithm(smoke: bool, report: &mut Report) -> anyhow::Result<()> {
    let sizes: &[(usize, usize)] = if smoke {
        &[(100, 200)]
    } else {
        &[(1000, 20_000), (5000, 20_000)]
    };
    let mut rows = Vec::new();
    for &(nodes, pods) in sizes {
        let mut snapshot = Snapshot::new();
        for i in 0..nodes {
            snapshot.set_node(node(&format!("node-{i}")));
        }
        let mut latencies = Vec::with_capacity(pods);
        let started = Instant::now();
        let mut placed = 0usize;
        for i in 0..pods {
            let mut p = pod(i);
            let t = Instant::now();
            let result = schedule(&p, &snapshot, i);
            latencies.push(t.elapsed());
            if let Ok(result) = result {
                p.spec.as_mut().expect("spec").node_name = Some(result.node);
                snapshot.set_pod(p);
                placed += 1;
            }
        }
        let elapsed = started.elapsed();
        let l = Latencies::new(latencies);
        rows.push(vec![
            nodes.to_string(),
            pods.to_string(),
            placed.to_string(),
            format!("{:.0}", pods as f64 / elapsed.as_secs_f64()),
            fmt(l.percentile(50.0)),
            fmt(l.percentile(99.0)),
        ]);
    }
    report.section(
        "Scheduler: the algorithm alone (in process, adaptive node sampling)",
        table(
            &["nodes", "pods", "placed", "decisions/s", "p50", "p99"],
            &rows,
        ),
    );
    Ok(())
}

/// Through the API, with fake nodes.
pub async fn end_to_end(skiff: &Path, smoke: bool, report: &mut Report) -> anyhow::Result<()> {
    let sizes: &[(usize, usize)] = if smoke {
        &[(20, 50)]
    } else {
        &[(1000, 10_000), (5000, 10_000)]
    };
    let mut rows = Vec::new();
    for &(nodes, pods) in sizes {
        let server = SkiffServer::start(skiff, &["--disable-controllers"])?;
        let client = server.client().await?;
        let node_api: Api<Node> = Api::all(client.clone());
        create_all(nodes, 32, |i| {
            let api = node_api.clone();
            async move {
                let n = node(&format!("node-{i}"));
                api.create(&PostParams::default(), &n).await?;
                let status = json!({"status": n.status});
                api.patch_status(
                    &format!("node-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
                Ok(())
            }
        })
        .await?;
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
        create_all(pods, 32, |i| {
            let api = pod_api.clone();
            async move {
                let mut p = pod(i);
                p.metadata.uid = None;
                p.metadata.owner_references = None;
                api.create(&PostParams::default(), &p).await?;
                Ok(())
            }
        })
        .await?;

        // Watch bindings, then start the scheduler.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let placed: Api<Placed> = Api::namespaced(client.clone(), "default");
        let watch = tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut stream = watcher::watcher(placed, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event
                    && p.spec.node_name.is_some()
                    && seen.insert(p.metadata.name.clone().unwrap_or_default())
                {
                    let _ = tx.send(Instant::now());
                }
            }
        });
        let mut command = Command::new(skiff);
        command
            .args(["controllers", "--kubeconfig"])
            .arg(server.kubeconfig())
            .env("RUST_LOG", "error");
        let controllers = Process::spawn("skiff controllers", command)?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(if smoke { 60 } else { 300 });
        let mut times = Vec::with_capacity(pods);
        while times.len() < pods {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(t)) => times.push(t),
                _ => break,
            }
        }
        watch.abort();
        let events = scheduled_events(&client).await;
        drop(controllers);
        let bound = times.len();
        let span = match (times.first(), times.last()) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a),
            _ => Duration::ZERO,
        };
        rows.push(vec![
            nodes.to_string(),
            pods.to_string(),
            bound.to_string(),
            fmt(span),
            format!("{:.0}", bound as f64 / span.as_secs_f64().max(1e-3)),
            events.to_string(),
        ]);
    }
    report.section(
        "Scheduler: end to end through the API (fake nodes, kwok-style; pods bound per second from first to last binding; `Scheduled` events written, the rest dropped by the recorder's bounded queue as client-go's are)",
        table(
            &["nodes", "pods", "bound", "first to last binding", "pods bound/s", "Scheduled events"],
            &rows,
        ),
    );
    Ok(())
}

/// How many `Scheduled` Events exist once their number stops growing
/// (the recorder writes them in the background), waiting at most 20 s.
async fn scheduled_events(client: &kube::Client) -> usize {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    loop {
        let count = api
            .list(&kube::api::ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("Scheduled"))
                    .count()
            })
            .unwrap_or(0);
        if last == Some(count) || Instant::now() >= deadline {
            return count;
        }
        last = Some(count);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `make(i)` for `0..count` with `concurrency` in flight; fails
/// with the first error.
async fn create_all<F, Fut>(count: usize, concurrency: usize, make: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    match crate::pods::run_all(count, concurrency, make).await {
        (_, Some(err)) => Err(err),
        (_, None) => Ok(()),
    }
}
