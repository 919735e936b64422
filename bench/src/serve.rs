//! HTTP serving: the same component (`examples/hello`) served by
//! `skiff component serve`, by `wasmtime serve`, and by a `skiff up
//! --nodes 2` cluster through a NodePort, both straight to a hello pod and
//! through a `fanout` pod calling a hello Service whose pod is on the other
//! node (so every request crosses the QUIC overlay); all loaded by the same
//! generator (wrk) at several concurrencies, in one run. Ratios come from
//! the same run on the same machine.
//!
//! The servers and wrk share the machine's cores; that is the same for
//! all and is stated with the figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::pods;
use crate::proc::{Process, SkiffServer, free_port};
use crate::report::{Report, table};

const PART: &str = "serve";

/// What wrk measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wrk {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// Runs wrk against `url`.
pub fn wrk(url: &str, connections: usize, seconds: u64) -> anyhow::Result<Wrk> {
    let threads = connections.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{seconds}s"), "--timeout", "5s", url])
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => w.rps = v.parse()?,
            (Some("50%"), Some(v)) => w.p50 = parse_duration(v).context("p50")?,
            (Some("99%"), Some(v)) => w.p99 = parse_duration(v).context("p99")?,
            (Some("Non-2xx"), _) => {
                w.errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
            (Some("Socket"), Some("errors:")) => {
                w.errors += line
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if w.rps == 0.0 {
        bail!("wrk reported no requests:\n{text}");
    }
    Ok(w)
}

/// Where `wasmtime` (the CLI, version 48) is, if installed.
pub fn wasmtime_cli() -> Option<std::path::PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/wasmtime");
    if local.exists() {
        return Some(local);
    }
    let out = Command::new("wasmtime").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .contains("wasmtime 48.")
        .then(|| "wasmtime".into())
}

/// A `skiff up --nodes 2` cluster serving `hello` for wrk, kept running
/// while it is loaded.
pub struct Cluster {
    _server: SkiffServer,
    /// What is measured, and the URL wrk loads.
    pub targets: Vec<(String, String)>,
}

impl Cluster {
    /// Starts the cluster, deploys `hello` (the component given) and
    /// `fanout` (beside it, `fanout.wasm`), and waits until both paths
    /// answer.
    pub async fn start(skiff: &Path, hello: &Path) -> anyhow::Result<Cluster> {
        let server = SkiffServer::up(skiff, 2)?;
        server.push(skiff, hello, "hello:bench")?;
        server.push(skiff, &hello.with_file_name("fanout.wasm"), "fanout:bench")?;
        let client = server.client().await?;
        let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
        for (name, image, node) in [
            ("local", "hello:bench", "skiff-node-1"),
            ("remote", "hello:bench", "skiff-node-2"),
            ("fanout", "fanout:bench", "skiff-node-1"),
        ] {
            let mut deployment = pods::deployment(name, PART, image);
            if let Some(pod) = deployment
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
            {
                pod.node_selector = Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_owned(),
                    node.to_owned(),
                )]));
            }
            deployments
                .create(&PostParams::default(), &deployment)
                .await
                .with_context(|| format!("creating Deployment {name}"))?;
        }
        let remote: Service = serde_json::from_value(json!({
            "metadata": {"name": "remote", "labels": {pods::PART_LABEL: PART}},
            "spec": {"selector": {"app": "remote"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        Api::<Service>::default_namespaced(client.clone())
            .create(&PostParams::default(), &remote)
            .await?;
        let local =
            pods::create_node_port_service(&client, "local", PART, ("app", "local")).await?;
        let fanout =
            pods::create_node_port_service(&client, "fanout", PART, ("app", "fanout")).await?;
        let across = "/?target=http://remote&n=1";
        // Both answer, and the fanout pod's one call got a 200 from the
        // remote pod (fanout itself answers 200 either way).
        wait_for(local, "/", "HTTP/1.1 200").await?;
        wait_for(fanout, across, "\"ok\":1").await?;
        Ok(Cluster {
            _server: server,
            targets: vec![
                (
                    "skiff up: NodePort → hello pod".to_owned(),
                    format!("http://127.0.0.1:{local}/"),
                ),
                (
                    "skiff up: NodePort → fanout pod → Service → hello pod on the other node (QUIC)"
                        .to_owned(),
                    format!("http://127.0.0.1:{fanout}{across}"),
                ),
            ],
        })
    }
}

/// Polls `GET path` on NodePort `port` (every 50 ms, at most 2 minutes)
/// until the response contains `needle`.
async fn wait_for(port: u16, path: &str, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    while Instant::now() < deadline {
        last = pods::get(port, path, Duration::from_secs(5)).await;
        if last.as_deref().is_some_and(|r| r.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("127.0.0.1:{port}{path} never answered with {needle:?}; last: {last:?}")
}

/// Warms `url` up (compile caches, instance pools), then loads it at each
/// concurrency.
fn load(url: &str, levels: &[usize], seconds: u64) -> anyhow::Result<Vec<Wrk>> {
    wrk(url, 4, 1)?;
    levels.iter().map(|&c| wrk(url, c, seconds)).collect()
}

/// Runs the serving benchmark, with the `cluster` targets after the two
/// single servers, and adds its section to `report`.
pub fn run(
    skiff: &Path,
    component: &Path,
    cluster: &[(String, String)],
    smoke: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let seconds = if smoke { 1 } else { 10 };
    let levels: &[usize] = if smoke { &[4] } else { &[1, 16, 64, 256] };
    let mut servers: Vec<(&str, Command)> = Vec::new();
    let skiff_port = free_port()?;
    let mut cmd = Command::new(skiff);
    cmd.args([
        "component",
        "serve",
        "--listen",
        &format!("127.0.0.1:{skiff_port}"),
    ])
    .arg(component)
    .env("RUST_LOG", "error");
    servers.push(("skiff component serve", cmd));
    let wasmtime = wasmtime_cli();
    let wasmtime_port = free_port()?;
    if let Some(bin) = &wasmtime {
        let mut cmd = Command::new(bin);
        // `-Scli`: the component imports wasi:cli (as every Rust guest
        // does), which skiff links too; `wasmtime serve` does not unless
        // asked.
        cmd.args([
            "serve",
            "-Scli",
            "--addr",
            &format!("127.0.0.1:{wasmtime_port}"),
        ])
        .arg(component);
        servers.push(("wasmtime serve 48", cmd));
    } else if !smoke {
        bail!("wasmtime 48 is not installed: bench/run installs it into bench/.tools");
    }
    let mut results: Vec<(&str, Vec<Wrk>)> = Vec::new();
    for ((name, cmd), port) in servers.into_iter().zip([skiff_port, wasmtime_port]) {
        let mut process = Process::spawn(name, cmd)?;
        process.wait_for_port(port, Duration::from_secs(60))?;
        results.push((
            name,
            load(&format!("http://127.0.0.1:{port}/"), levels, seconds)?,
        ));
    }
    for (name, url) in cluster {
        results.push((name, load(url, levels, seconds)?));
    }
    let mut rows = Vec::new();
    for (i, &c) in levels.iter().enumerate() {
        for (name, per_level) in &results {
            let w = per_level[i];
            let mut row = vec![
                c.to_string(),
                (*name).to_owned(),
                format!("{:.0}", w.rps),
                crate::stats::fmt(w.p50),
                crate::stats::fmt(w.p99),
                w.errors.to_string(),
            ];
            if let Some((_, base)) = results.iter().find(|(n, _)| n.starts_with("wasmtime")) {
                let b = base[i];
                row.push(format!("{:.2}×", w.rps / b.rps));
                row.push(format!(
                    "{:.2}×",
                    w.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9)
                ));
            }
            rows.push(row);
        }
    }
    let mut header = vec!["connections", "server", "req/s", "p50", "p99", "errors"];
    if wasmtime.is_some() {
        header.extend(["req/s vs wasmtime", "p99 vs wasmtime"]);
    }
    report.section(
        &format!("HTTP serving: examples/hello, wrk {seconds} s per level"),
        table(&header, &rows),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report() {
        let text = "Running 1s test @ http://127.0.0.1:8080/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   150.00us   20.00us   1.20ms   90.00%
  Latency Distribution
     50%  141.00us
     75%  160.00us
     90%  180.00us
     99%    1.02ms
  25000 requests in 1.00s, 2.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  24990.12
Transfer/sec:      2.00MB
";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.rps, 24990.12);
        assert_eq!(w.p50, Duration::from_micros(141));
        assert_eq!(w.p99, Duration::from_micros(1020));
        assert_eq!(w.errors, 8);
    }
}
