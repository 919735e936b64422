//! Density: how many idle `hello` pods one node holds and what each costs
//! in the agent's resident memory. `skiff server` and one `skiff agent`
//! run as separate processes, so the agent's VmRSS is its own. Two
//! measurements, each on a fresh cluster:
//! - pods of one cached component, created in batches until the target,
//!   a refusal, an RSS bound or a time bound;
//! - one pod each of distinct components (the same program with a unique
//!   custom section, so each is pulled and compiled on its own).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use crate::pods::{self, PodWatch};
use crate::proc::{Process, SkiffServer, mib};
use crate::report::{Report, table};
use crate::stats::slope;

const PART: &str = "density";
const RSS_BOUND: u64 = 8 << 30;

struct Sizes {
    /// Pods of the cached component, in batches of `batch`.
    pods: usize,
    batch: usize,
    /// Distinct components, in batches of `distinct_batch`.
    distinct: usize,
    distinct_batch: usize,
    /// Time bound of each measurement.
    time_limit: Duration,
    /// Time a batch may take to become Ready.
    batch_timeout: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                pods: 50,
                batch: 25,
                distinct: 3,
                distinct_batch: 1,
                time_limit: Duration::from_secs(60),
                batch_timeout: Duration::from_secs(60),
            }
        } else {
            Sizes {
                pods: 10_000,
                batch: 500,
                distinct: 100,
                distinct_batch: 10,
                time_limit: Duration::from_secs(360),
                batch_timeout: Duration::from_secs(120),
            }
        }
    }
}

/// A server and one agent that takes (almost) any number of pods.
struct Node {
    agent: Process,
    server: SkiffServer,
    client: kube::Client,
    _agent_dir: tempfile::TempDir,
}

impl Node {
    async fn start(skiff: &Path, max_pods: usize) -> anyhow::Result<Node> {
        // A /18 per node holds 16,381 pod addresses (the default /24: 253).
        let server = SkiffServer::start(
            skiff,
            &[
                "--cluster-cidr",
                "10.32.0.0/11",
                "--node-cidr-mask-size",
                "18",
            ],
        )?;
        let agent_dir = tempfile::tempdir()?;
        let max_pods = (max_pods + 10).to_string();
        let agent = server.agent(
            skiff,
            "bench-node",
            agent_dir.path(),
            &[
                "--max-pods",
                &max_pods,
                "--cpu",
                "1000000",
                "--memory",
                &(1u64 << 40).to_string(),
            ],
        )?;
        let client = server.client().await?;
        Ok(Node {
            agent,
            server,
            client,
            _agent_dir: agent_dir,
        })
    }

    /// The agent's RSS after a second's settling.
    async fn settled_rss(&self) -> u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.agent.rss()
    }
}

/// Creates the pods `names[i]` of `images[i]` (32 requests in flight) and
/// waits for them: (create errors, neither Ready nor failed, failed).
async fn batch(
    client: &kube::Client,
    watch: &PodWatch,
    names: &[String],
    image: impl Fn(usize) -> String,
    timeout: Duration,
) -> (usize, usize, usize) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let (errors, err) = pods::run_all(names.len(), 32, |i| {
        let (api, pod) = (api.clone(), pods::pod(&names[i], PART, &image(i), &[]));
        async move {
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await;
    if let Some(e) = err {
        println!("density: {errors} creates failed, the first: {e:#}");
    }
    let missing = watch.wait_ready(names, timeout).await;
    let failed = {
        let seen = watch.seen();
        let reasons: Vec<&String> = names.iter().filter_map(|n| seen.failed.get(n)).collect();
        if let Some(reason) = reasons.first() {
            println!(
                "density: {} pods failed, the first: {reason}",
                reasons.len()
            );
        }
        reasons.len()
    };
    (errors, missing, failed)
}

/// Runs the density benchmark and adds its sections.
pub async fn run(
    skiff: &Path,
    hello: &Path,
    smoke: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let sizes = Sizes::new(smoke);
    cached(skiff, hello, &sizes, report).await?;
    distinct(skiff, hello, &sizes, report).await
}

async fn cached(
    skiff: &Path,
    hello: &Path,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let node = Node::start(skiff, sizes.pods + 1).await?;
    node.server.push(skiff, hello, "hello:v1")?;
    let watch = PodWatch::start(&node.client, PART).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = node.settled_rss().await;
    let idle_server = node.server.process.rss();

    // The first pod pulls and compiles the component: its cost is the
    // component's, not a pod's; the slope starts after it.
    let first = vec!["first".to_owned()];
    let (_, missing, _) = batch(
        &node.client,
        &watch,
        &first,
        |_| "hello:v1".into(),
        Duration::from_secs(120),
    )
    .await;
    anyhow::ensure!(
        missing == 0,
        "the first density pod did not become Ready in 2 minutes"
    );
    let one = node.settled_rss().await;

    let started = Instant::now();
    let mut points = vec![(1.0, one as f64)];
    let mut rows = Vec::new();
    let mut pods_ready = 1;
    let mut created = 0;
    let mut stop = String::from("target reached");
    while created < sizes.pods {
        if started.elapsed() > sizes.time_limit {
            stop = format!("time bound ({:?})", sizes.time_limit);
            break;
        }
        let count = sizes.batch.min(sizes.pods - created);
        let names: Vec<String> = (created..created + count)
            .map(|i| format!("d-{i}"))
            .collect();
        let t = Instant::now();
        let (errors, missing, failed) = batch(
            &node.client,
            &watch,
            &names,
            |_| "hello:v1".into(),
            sizes.batch_timeout,
        )
        .await;
        let took = t.elapsed();
        created += count;
        pods_ready += count - missing - failed;
        let rss = node.settled_rss().await;
        points.push((pods_ready as f64, rss as f64));
        rows.push(vec![
            pods_ready.to_string(),
            mib(rss),
            crate::stats::fmt(took),
            format!("{errors} / {failed} / {missing}"),
        ]);
        if errors + missing + failed > 0 {
            stop = format!(
                "the node refused or did not start pods ({errors} create errors, {failed} failed, {missing} not Ready)"
            );
            break;
        }
        if rss > RSS_BOUND {
            stop = format!("agent RSS above {}", mib(RSS_BOUND));
            break;
        }
    }
    // The slope over the batches: the first pods of a batch also grow
    // the agent's pools (threads, buffers), which the step from one pod
    // to the first batch shows.
    let per_pod = if points.len() > 2 {
        slope(&points[1..])
    } else {
        slope(&points)
    };
    println!("density: stopped: {stop}");
    report.section(
        "Density: idle `hello` pods on one node (separate `skiff agent` process, VmRSS after each batch)",
        table(&["Ready pods", "agent RSS", "batch Ready in", "create errors / failed / not Ready"], &rows),
    );
    report.section(
        "Density: summary (one cached component)",
        table(
            &[
                "idle agent",
                "after the first pod (component compiled)",
                "per additional pod (least squares over the batches)",
                "Ready pods",
                "agent RSS at the end",
                "control plane RSS idle",
                "stopped by",
            ],
            &[vec![
                mib(idle),
                mib(one),
                format!("{:.1} KiB", per_pod / 1024.0),
                pods_ready.to_string(),
                mib(points.last().map_or(one, |p| p.1 as u64)),
                mib(idle_server),
                stop,
            ]],
        ),
    );
    drop(watch);
    Ok(())
}

async fn distinct(
    skiff: &Path,
    hello: &Path,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let node = Node::start(skiff, sizes.distinct).await?;
    let files = tempfile::tempdir()?;
    let base = std::fs::read(hello)?;
    for i in 0..sizes.distinct {
        let path = files.path().join(format!("distinct-{i}.wasm"));
        std::fs::write(
            &path,
            pods::variant(&base, &format!("distinct-{i}-{}", std::process::id())),
        )?;
        node.server
            .push(skiff, &path, &format!("distinct-{i}:v1"))?;
    }
    let watch = PodWatch::start(&node.client, PART).await?;
    let idle = node.settled_rss().await;
    let started = Instant::now();
    let mut points = vec![(0.0, idle as f64)];
    let mut ready = 0;
    let mut created = 0;
    let mut problems = (0, 0, 0);
    while created < sizes.distinct && started.elapsed() < sizes.time_limit {
        let count = sizes.distinct_batch.min(sizes.distinct - created);
        let names: Vec<String> = (created..created + count)
            .map(|i| format!("c-{i}"))
            .collect();
        let offset = created;
        let (errors, missing, failed) = batch(
            &node.client,
            &watch,
            &names,
            |i| format!("distinct-{}:v1", offset + i),
            sizes.batch_timeout,
        )
        .await;
        created += count;
        ready += count - missing - failed;
        problems = (
            problems.0 + errors,
            problems.1 + failed,
            problems.2 + missing,
        );
        points.push((ready as f64, node.settled_rss().await as f64));
        if errors + missing + failed > 0 {
            break;
        }
    }
    let took = started.elapsed();
    report.section(
        "Density: distinct components, one pod each (each pulled and compiled by the agent)",
        table(
            &[
                "components",
                "Ready",
                "agent RSS idle",
                "agent RSS at the end",
                "per distinct component (least squares)",
                "all Ready in",
                "create errors / failed / not Ready",
            ],
            &[vec![
                created.to_string(),
                ready.to_string(),
                mib(idle),
                mib(points.last().map_or(idle, |p| p.1 as u64)),
                format!("{:.1} MiB", slope(&points) / 1024.0 / 1024.0),
                crate::stats::fmt(took),
                format!("{} / {} / {}", problems.0, problems.1, problems.2),
            ]],
        ),
    );
    drop(watch);
    Ok(())
}
