//! Pod start latency through a whole cluster (`skiff up --nodes 1`, then
//! `--nodes 3`): from each pod's create request to the instant a watch
//! sees it Ready, for pods of a cached component (`hello`, from the
//! built-in registry); and, for a sample, from the create request to the
//! first 200 through a NodePort Service on 127.0.0.1.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use crate::pods::{self, PodWatch};
use crate::proc::SkiffServer;
use crate::report::{Report, table};
use crate::stats::{Latencies, fmt};

const PART: &str = "podstart";
const IMAGE: &str = "hello:v1";

/// Sizes of one run.
struct Sizes {
    pods: usize,
    wave: usize,
    concurrency: usize,
    http_samples: usize,
    time_limit: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                pods: 20,
                wave: 20,
                concurrency: 4,
                http_samples: 5,
                time_limit: Duration::from_secs(40),
            }
        } else {
            Sizes {
                pods: 1000,
                wave: 100,
                concurrency: 8,
                http_samples: 100,
                time_limit: Duration::from_secs(300),
            }
        }
    }
}

/// Runs the pod start benchmark on 1 and 3 nodes and adds its sections.
pub async fn run(
    skiff: &Path,
    hello: &Path,
    smoke: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let sizes = Sizes::new(smoke);
    let mut ready_rows = Vec::new();
    let mut http_rows = Vec::new();
    for nodes in [1u16, 3] {
        let cluster = SkiffServer::up(skiff, nodes)?;
        cluster.push(skiff, hello, IMAGE)?;
        let client = cluster.client().await?;
        let watch = PodWatch::start(&client, PART).await?;
        let pods_api: Api<Pod> = Api::default_namespaced(client.clone());

        // Warm-up, not measured: every node pulls the image and the
        // runtime compiles it once.
        let warm: Vec<String> = (0..usize::from(nodes) * 2)
            .map(|i| format!("warm-{i}"))
            .collect();
        for name in &warm {
            pods_api
                .create(&PostParams::default(), &pods::pod(name, PART, IMAGE, &[]))
                .await?;
        }
        let missing = watch.wait_ready(&warm, Duration::from_secs(120)).await;
        anyhow::ensure!(
            missing == 0,
            "{missing} warm-up pods not Ready within 2 minutes"
        );
        pods::delete_all(&client, PART).await?;
        watch.wait_gone(Duration::from_secs(60)).await?;

        // One at a time (each create waits for the previous pod to be
        // Ready: the latency of a pod start on an otherwise idle cluster),
        // then in bursts (`concurrency` creates in flight: the latency
        // under load, queueing included).
        for (mode, concurrency) in [("one at a time", 1), ("bursts", sizes.concurrency)] {
            let row = measure(&client, &watch, &sizes, concurrency).await?;
            let mut cells = vec![nodes.to_string(), mode.to_string()];
            cells.extend(row);
            ready_rows.push(cells);
        }
        let started = Instant::now();

        // Create → first 200 through a NodePort, one pod at a time, each
        // behind its own Service (whose NodePort is open before the pod
        // is created, so only the pod's start and its endpoint count).
        let mut http = Vec::new();
        let mut http_failed = 0;
        for i in 0..sizes.http_samples {
            if started.elapsed() > sizes.time_limit {
                break;
            }
            let name = format!("s-{i}");
            let port =
                pods::create_node_port_service(&client, &name, PART, ("sample", &name)).await?;
            wait_listening(port, Duration::from_secs(30)).await?;
            let pod = pods::pod(&name, PART, IMAGE, &[("sample", &name)]);
            let t = Instant::now();
            pods_api.create(&PostParams::default(), &pod).await?;
            match pods::first_ok(port, Duration::from_millis(2), Duration::from_secs(10)).await {
                Some(at) => http.push(at.saturating_duration_since(t)),
                None => http_failed += 1,
            }
            pods::delete_all(&client, PART).await?;
            watch.wait_gone(Duration::from_secs(60)).await?;
        }
        let http = Latencies::new(http);
        http_rows.push(vec![
            nodes.to_string(),
            (http.len() + http_failed).to_string(),
            http.len().to_string(),
            fmt(http.percentile(50.0)),
            fmt(http.percentile(90.0)),
            fmt(http.percentile(99.0)),
            fmt(http.percentile(100.0)),
        ]);
        drop(watch);
        drop(cluster);
    }
    report.section(
        "Pod start: create request to Ready seen by a watch (`skiff up`, cached component `hello`)",
        table(
            &[
                "nodes",
                "creates",
                "pods",
                "seen Ready",
                "p50",
                "p90",
                "p99",
                "max",
                "p50 to bound (seen)",
                "create errors / failed / not Ready in 60 s",
            ],
            &ready_rows,
        ),
    );
    report.section(
        "Pod start: create request to first HTTP 200 through a NodePort (one pod at a time)",
        table(
            &["nodes", "pods", "answered", "p50", "p90", "p99", "max"],
            &http_rows,
        ),
    );
    Ok(())
}

/// Creates `sizes.pods` pods in waves of `sizes.wave` (each wave deleted
/// and gone before the next: a `skiff up` node takes 110 pods), with
/// `concurrency` creates in flight; with one, each create also waits for
/// the pod before to be Ready. Returns the table cells from "pods" on.
async fn measure(
    client: &kube::Client,
    watch: &PodWatch,
    sizes: &Sizes,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let pods_api: Api<Pod> = Api::default_namespaced(client.clone());
    let started = Instant::now();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut created = 0;
    let mut errors = 0;
    let mut not_ready = 0;
    let mut first_error = None;
    let prefix = format!("c{concurrency}-");
    while created < sizes.pods && started.elapsed() < sizes.time_limit {
        let count = sizes.wave.min(sizes.pods - created);
        let names: Vec<String> = (created..created + count)
            .map(|i| format!("{prefix}{i}"))
            .collect();
        let times: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
        let (failed, err) = pods::run_all(count, concurrency, |i| {
            let (api, times, name) = (pods_api.clone(), times.clone(), names[i].clone());
            async move {
                let pod = pods::pod(&name, PART, IMAGE, &[]);
                let t = Instant::now();
                times.lock().unwrap_or_else(|e| e.into_inner()).push((i, t));
                api.create(&PostParams::default(), &pod).await?;
                if concurrency == 1 {
                    watch.wait_ready(&[name], Duration::from_secs(30)).await;
                }
                Ok(())
            }
        })
        .await;
        for (i, t) in times.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            sent.insert(names[i].clone(), t);
        }
        errors += failed;
        if first_error.is_none() {
            first_error = err;
        }
        not_ready += watch.wait_ready(&names, Duration::from_secs(60)).await;
        pods::delete_all(client, PART).await?;
        watch.wait_gone(Duration::from_secs(60)).await?;
        created += count;
    }
    if let Some(e) = first_error {
        println!("podstart: {errors} creates failed, the first: {e:#}");
    }
    let seen = watch.seen();
    let since = |at: &dyn Fn(&str) -> Option<Instant>| {
        Latencies::new(
            sent.iter()
                .filter_map(|(name, t)| at(name).map(|at| at.saturating_duration_since(*t)))
                .collect(),
        )
    };
    let ready = since(&|n| seen.ready.get(n).map(|(at, _)| *at));
    let bound = since(&|n| seen.bound.get(n).copied());
    let failed = sent.keys().filter(|n| seen.failed.contains_key(*n)).count();
    Ok(vec![
        created.to_string(),
        ready.len().to_string(),
        fmt(ready.percentile(50.0)),
        fmt(ready.percentile(90.0)),
        fmt(ready.percentile(99.0)),
        fmt(ready.percentile(100.0)),
        fmt(bound.percentile(50.0)),
        format!("{errors} / {failed} / {}", not_ready.saturating_sub(failed)),
    ])
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("nothing listens on 127.0.0.1:{port}"))
                .context(format!("the NodePort did not open within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
