//! Skiff's WebAssembly runtime: runs components safely and fast.
//!
//! It knows nothing of Kubernetes. The node agent runs pods on it, and any
//! program can embed it as a plugin sandbox. Start with [`Runtime`]:
//!
//! - One [`Runtime`] per process holds the wasmtime engine (pooling
//!   allocator when it can be reserved, copy-on-write memory images, one
//!   epoch-ticker thread), the linker (WASI p2 and `wasi:http`) and the
//!   compiled-component cache (on disk, keyed by content digest and engine).
//! - [`Runtime::load`] gives a [`Component`], compiled once and pre-linked,
//!   so each instance starts in microseconds.
//! - A [`Sandbox`] says what an instance may see: arguments, environment,
//!   preopened directories, a bounded [`Log`] for stdout and stderr, an
//!   [`Outbound`] HTTP policy (deny-all by default) and [`Limits`] on memory,
//!   CPU and wall-clock time. Nothing of the host is visible otherwise.
//! - [`Component::serve`] handles an HTTP request (`wasi:http/incoming-handler`),
//!   [`Component::run`] runs `wasi:cli/run` to exit, and [`Component::spawn`]
//!   starts a long-running worker.
//!
//! A guest that traps, loops, overflows its stack or exhausts its memory is
//! stopped with a [`GuestError`] naming the limit; the host and other guests
//! carry on.
//!
//! # Embedding
//!
//! ```no_run
//! use skiff_runtime::{AllowList, Limits, Runtime, RuntimeConfig, Sandbox};
//! use std::time::Duration;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let runtime = Runtime::new(RuntimeConfig {
//!     cache_dir: Some("/var/cache/my-app/wasm".into()),
//!     ..RuntimeConfig::default()
//! })?;
//! let (plugin, _origin) = runtime.load_file("plugin.wasm")?;
//! let sandbox = Sandbox::default()
//!     .env("MODE", "strict")
//!     .limits(Limits {
//!         memory: Some(64 << 20),
//!         deadline: Some(Duration::from_secs(2)),
//!         ..Limits::default()
//!     })
//!     .outbound(AllowList::new(["api.example.com"]));
//! let request = hyper::Request::get("http://plugin/hello").body(skiff_runtime::body(""))?;
//! let response = plugin.serve(request, &sandbox).await;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! `runtime/examples/embed.rs` is a complete program doing this.

mod cache;
mod component;
mod engine;
mod error;
mod http;
mod limits;
mod log;
mod outbound;
mod run;
mod sandbox;

pub use cache::digest;
pub use component::{Component, ComponentKind, Origin, Runtime, RuntimeConfig};
pub use engine::{Allocator, EPOCH_TICK, EngineConfig};
pub use error::{Error, GuestError, Result};
pub use http::{
    ResponseBody, accept, body, error_response, serve_listener, serve_with, text_response,
};
pub use limits::Limits;
pub use log::{DEFAULT_LOG_CAPACITY, Log, LogLine, LogWriter, Stream};
pub use outbound::{AllowList, BoxFuture, DenyAll, Outbound, OutboundResult};
pub use run::{ExitStatus, Worker};
pub use sandbox::{Preopen, Sandbox};
