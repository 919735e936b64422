//! `skiff-bench`: Skiff measured against the real alternatives, in one run,
//! with the figures appended to `BENCHMARKS.md`. `bench/run` builds
//! everything in release mode, installs the alternatives and runs it; see
//! `BENCHMARKS.md` for the method.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

mod api;
mod coldstart;
mod density;
mod pods;
mod podstart;
mod proc;
mod report;
mod scheduler;
mod serve;
mod stats;

#[derive(Parser)]
#[command(name = "skiff-bench", about = "Skiff's benchmarks")]
struct Cli {
    /// Which parts to run (all when omitted).
    #[arg(value_enum)]
    parts: Vec<Part>,
    /// Run each part briefly, only to show it still works (CI).
    #[arg(long)]
    smoke: bool,
    /// The `skiff` binary to measure.
    #[arg(long)]
    skiff: PathBuf,
    /// The `examples/hello` component.
    #[arg(long)]
    hello: PathBuf,
    /// Where to append the figures (not written in smoke mode unless given).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// API server creates/s, watch fan-out, control-plane RSS.
    Api,
    /// HTTP serving against `wasmtime serve`: `skiff component serve`, a
    /// NodePort, and a Service call across the QUIC overlay.
    Serve,
    /// Scheduler throughput: the algorithm alone and through the API.
    Scheduler,
    /// Pod start latency (create to Ready, create to first HTTP 200) on
    /// `skiff up` with 1 and 3 nodes.
    Podstart,
    /// Idle pods one node holds and the agent's RSS per pod and per
    /// distinct component.
    Density,
    /// First request after deploying a never-seen image, and after an
    /// agent restart (compiled component on disk).
    Coldstart,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let parts = if cli.parts.is_empty() {
        vec![
            Part::Api,
            Part::Serve,
            Part::Scheduler,
            Part::Podstart,
            Part::Density,
            Part::Coldstart,
        ]
    } else {
        cli.parts.clone()
    };
    let mut report = report::Report::default();
    println!("machine: {}", proc::machine());
    // A part that fails is reported and the others still run: figures
    // already measured are appended either way.
    let mut failed = Vec::new();
    for part in parts {
        if let Err(err) = run_part(&cli, part, &mut report).await {
            eprintln!("bench {part:?} failed: {err:#}");
            report.section(
                &format!("{part:?}: failed"),
                format!("The part did not finish: {err:#}\n"),
            );
            failed.push(format!("{part:?}"));
        }
    }
    if let Some(out) = &cli.out {
        report.append(out, if cli.smoke { "smoke mode" } else { "full mode" })?;
        println!("appended to {}", out.display());
    }
    if !failed.is_empty() {
        anyhow::bail!("parts failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn run_part(cli: &Cli, part: Part, report: &mut report::Report) -> anyhow::Result<()> {
    match part {
        Part::Api => api::run(&cli.skiff, &api::Sizes::new(cli.smoke), report).await?,
        Part::Scheduler => {
            scheduler::algorithm(cli.smoke, report)?;
            scheduler::end_to_end(&cli.skiff, cli.smoke, report).await?;
        }
        Part::Serve => {
            let cluster = serve::Cluster::start(&cli.skiff, &cli.hello).await?;
            let targets = cluster.targets.clone();
            let (skiff, hello, smoke) = (cli.skiff.clone(), cli.hello.clone(), cli.smoke);
            // wrk and the servers are processes: run them off the runtime.
            let mut r = report::Report::default();
            let r = tokio::task::spawn_blocking(move || {
                serve::run(&skiff, &hello, &targets, smoke, &mut r).map(|()| r)
            })
            .await??;
            drop(cluster);
            report.merge(r);
        }
        Part::Podstart => podstart::run(&cli.skiff, &cli.hello, cli.smoke, report).await?,
        Part::Density => density::run(&cli.skiff, &cli.hello, cli.smoke, report).await?,
        Part::Coldstart => coldstart::run(&cli.skiff, &cli.hello, cli.smoke, report).await?,
    }
    Ok(())
}
