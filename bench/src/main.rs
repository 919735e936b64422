//! `skiff-bench`: Skiff measured against the real alternatives, in one run,
//! with the figures appended to `BENCHMARKS.md`. `bench/run` builds
//! everything in release mode, installs the alternatives and runs it; see
//! `BENCHMARKS.md` for the method.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

mod api;
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// API server creates/s, watch fan-out, control-plane RSS.
    Api,
    /// HTTP serving against `wasmtime serve`.
    Serve,
    /// Scheduler throughput: the algorithm alone and through the API.
    Scheduler,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let parts = if cli.parts.is_empty() {
        vec![Part::Api, Part::Serve, Part::Scheduler]
    } else {
        cli.parts.clone()
    };
    let mut report = report::Report::default();
    println!("machine: {}", proc::machine());
    for part in parts {
        match part {
            Part::Api => api::run(&cli.skiff, &api::Sizes::new(cli.smoke), &mut report).await?,
            Part::Scheduler => {
                scheduler::algorithm(cli.smoke, &mut report)?;
                scheduler::end_to_end(&cli.skiff, cli.smoke, &mut report).await?;
            }
            Part::Serve => {
                let (skiff, hello, smoke) = (cli.skiff.clone(), cli.hello.clone(), cli.smoke);
                // wrk and the servers are processes: run them off the runtime.
                let mut r = report::Report::default();
                let r = tokio::task::spawn_blocking(move || {
                    serve::run(&skiff, &hello, smoke, &mut r).map(|()| r)
                })
                .await??;
                report.merge(r);
            }
        }
    }
    if let Some(out) = &cli.out {
        report.append(out, if cli.smoke { "smoke mode" } else { "full mode" })?;
        println!("appended to {}", out.display());
    }
    Ok(())
}
