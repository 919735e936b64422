//! Embedding Skiff's runtime as a plugin sandbox.
//!
//! ```text
//! cargo run -p skiff-runtime --example embed -- PLUGIN.wasm [PATH]
//! ```
//!
//! Loads a component (compiled once, cached under the system temp dir),
//! then either sends it one HTTP request for PATH (components exporting
//! `wasi:http/incoming-handler`) or runs it to exit (`wasi:cli/run`), in a
//! sandbox with 64 MiB of memory, a 2 s deadline, one environment variable,
//! and no network. Prints what the guest answered or wrote.

use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use skiff_runtime::{ComponentKind, Limits, Log, Runtime, RuntimeConfig, Sandbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let file = args.next().context("usage: embed PLUGIN.wasm [PATH]")?;
    let path = args.next().unwrap_or_else(|| "/".to_string());

    // One runtime per process: engine, epoch ticker, linker and cache.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(std::env::temp_dir().join("skiff-embed-cache")),
        ..RuntimeConfig::default()
    })?;
    let (plugin, origin) = runtime.load_file(&file)?;
    eprintln!("{} ({}): {origin:?}", plugin.name(), plugin.kind());

    // What the plugin may see and use; nothing else of the host is visible.
    let log = Log::default();
    let sandbox = Sandbox::default()
        .env("POD_NAME", "embedded")
        .log(log.clone())
        .limits(Limits {
            memory: Some(64 << 20),
            deadline: Some(Duration::from_secs(2)),
            ..Limits::default()
        });

    match plugin.kind() {
        ComponentKind::Http => {
            let request = hyper::Request::get(format!("http://plugin{path}"))
                .body(skiff_runtime::body(""))?;
            let response = plugin.handle(request, &sandbox).await?;
            println!("{}", response.status());
            let body = response.into_body().collect().await?.to_bytes();
            print!("{}", String::from_utf8_lossy(&body));
        }
        ComponentKind::Command => {
            let status = plugin.run(&sandbox.args(["plugin"])).await?;
            print!("{}", log.text());
            println!("exit status {}", status.code);
        }
    }
    Ok(())
}
