//! Cold start: the first request after the first deploy of an image the
//! node has never seen (pull and compile included), then the same after
//! the agent process restarts, for images it compiled before (the
//! compiled component is loaded from the agent's disk cache).
//!
//! `skiff server` and one `skiff agent` run as separate processes so the
//! agent can be killed (by pid) and started again over the same data
//! directory. Each image is `hello` with a unique custom section, so its
//! digest, and its compilation, are new.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;

use crate::pods::{self, PodWatch};
use crate::proc::SkiffServer;
use crate::report::{Report, table};
use crate::stats::{Latencies, fmt};

const PART: &str = "coldstart";

/// Creates a NodePort Service and a one-replica Deployment of `image`
/// and polls the NodePort (every 5 ms, up to 60 s): create request to
/// first 200, or None.
async fn deploy_and_wait(
    client: &kube::Client,
    name: &str,
    image: &str,
) -> anyhow::Result<Option<Duration>> {
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let t = Instant::now();
    let port = pods::create_node_port_service(client, name, PART, ("app", name)).await?;
    deployments
        .create(&PostParams::default(), &pods::deployment(name, PART, image))
        .await?;
    Ok(
        pods::first_ok(port, Duration::from_millis(5), Duration::from_secs(60))
            .await
            .map(|at| at.saturating_duration_since(t)),
    )
}

/// Runs the cold start benchmark and adds its section.
pub async fn run(
    skiff: &Path,
    hello: &Path,
    smoke: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let repeats = if smoke { 1 } else { 10 };
    let time_limit = Duration::from_secs(if smoke { 60 } else { 300 });
    let server = SkiffServer::start(skiff, &[])?;
    let agent_dir = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let client = server.client().await?;
    let watch = PodWatch::start(&client, PART).await?;
    let agent = server.agent(skiff, "bench-node", agent_dir.path(), &[])?;

    let base = std::fs::read(hello)?;
    let started = Instant::now();
    let mut cold = Vec::new();
    let mut cold_failed = 0;
    for i in 0..repeats {
        if started.elapsed() > time_limit {
            break;
        }
        let path = files.path().join(format!("cold-{i}.wasm"));
        std::fs::write(
            &path,
            pods::variant(&base, &format!("cold-{i}-{}", std::process::id())),
        )?;
        server.push(skiff, &path, &format!("cold-{i}:v1"))?;
        match deploy_and_wait(&client, &format!("cold-{i}"), &format!("cold-{i}:v1")).await? {
            Some(d) => cold.push(d),
            None => cold_failed += 1,
        }
    }
    let compiled = cold.len() + cold_failed;
    pods::delete_all(&client, PART).await?;
    watch.wait_gone(Duration::from_secs(60)).await?;

    // Kill the agent (by pid) and start it again over the same data
    // directory: images and compiled components are on disk, none in
    // memory.
    drop(agent);
    let _agent = server.agent(skiff, "bench-node", agent_dir.path(), &[])?;
    let mut warm = Vec::new();
    let mut warm_failed = 0;
    for i in 0..compiled {
        if started.elapsed() > time_limit * 2 {
            break;
        }
        match deploy_and_wait(&client, &format!("again-{i}"), &format!("cold-{i}:v1")).await? {
            Some(d) => warm.push(d),
            None => warm_failed += 1,
        }
    }
    let row = |what: &str, l: &[Duration], failed: usize| {
        let l = Latencies::new(l.to_vec());
        vec![
            what.to_owned(),
            (l.len() + failed).to_string(),
            l.len().to_string(),
            fmt(l.percentile(50.0)),
            fmt(l.percentile(100.0)),
            fmt(l.percentile(0.0)),
        ]
    };
    report.section(
        "Cold start: Deployment + NodePort Service created to first HTTP 200 (`hello` variants, separate `skiff agent`)",
        table(
            &["image", "deploys", "answered", "p50", "max", "min"],
            &[
                row("never seen (pull + compile)", &cold, cold_failed),
                row("compiled before, agent restarted (disk cache)", &warm, warm_failed),
            ],
        ),
    );
    Ok(())
}
