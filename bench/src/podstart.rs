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

        // Pods created in waves (at most `wave` exist at once: a `skiff
        // up` node takes 110), `concurrency` create requests in flight.
        let started = Instant::now();
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut created = 0;
        let mut errors = 0;
        let mut not_ready = 0;
        let mut first_error = None;
        while created < sizes.pods && started.elapsed() < sizes.time_limit {
            let count = sizes.wave.min(sizes.pods - created);
            let names: Vec<String> = (created..created + count)
                .map(|i| format!("p-{i}"))
                .collect();
            let (failed, err) = pods::run_all(count, sizes.concurrency, |i| {
                let (api, sent, name) = (pods_api.clone(), sent.clone(), names[i].clone());
                async move {
                    let pod = pods::pod(&name, PART, IMAGE, &[]);
                    let t = Instant::now();
                    sent.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, t);
                    api.create(&PostParams::default(), &pod).await?;
                    Ok(())
                }
            })
            .await;
            errors += failed;
            if first_error.is_none() {
                first_error = err;
            }
            not_ready += watch.wait_ready(&names, Duration::from_secs(60)).await;
            pods::delete_all(&client, PART).await?;
            watch.wait_gone(Duration::from_secs(60)).await?;
            created += count;
        }
        if let Some(e) = first_error {
            println!("podstart: {errors} creates failed, the first: {e:#}");
        }
        let (latencies, to_bound, failed) = {
            let seen = watch.seen();
            let sent = sent.lock().unwrap_or_else(|e| e.into_inner());
            let since = |at: &HashMap<String, Instant>| {
                Latencies::new(
                    sent.iter()
                        .filter_map(|(name, t)| {
                            at.get(name).map(|at| at.saturating_duration_since(*t))
                        })
                        .collect(),
                )
            };
            let ready: HashMap<String, Instant> = seen
                .ready
                .iter()
                .map(|(n, (at, _))| (n.clone(), *at))
                .collect();
            let failed = sent.keys().filter(|n| seen.failed.contains_key(*n)).count();
            (since(&ready), since(&seen.bound), failed)
        };
        ready_rows.push(vec![
            nodes.to_string(),
            created.to_string(),
            latencies.len().to_string(),
            fmt(latencies.percentile(50.0)),
            fmt(latencies.percentile(90.0)),
            fmt(latencies.percentile(99.0)),
            fmt(latencies.percentile(100.0)),
            fmt(to_bound.percentile(50.0)),
            format!("{errors} / {failed} / {}", not_ready.saturating_sub(failed)),
        ]);

        // Create → first 200 through a NodePort, one pod at a time, each
        // behind its own Service (whose NodePort is open before the pod
        // is created, so only the pod's start and its endpoint count).
        let mut http = Vec::new();
        let mut http_failed = 0;
        for i in 0..sizes.http_samples {
            if started.elapsed() > sizes.time_limit * 2 {
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
