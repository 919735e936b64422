//! The runtime: engine, linker, cache, and loaded components.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;
use wasmtime::component::{Component as WasmComponent, Linker};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::{DiskCache, Lookup, digest};
use crate::engine::{Allocator, EngineConfig, EpochTicker};
use crate::sandbox::Host;
use crate::{Error, GuestError, Result};

/// Settings for a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// Where compiled components are kept across restarts; `None` keeps them
    /// in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Cap on instances of one component running at once.
    pub max_instances_per_component: usize,
    /// How long a request or run waits for a free instance slot when its
    /// component is at its cap and it has no deadline of its own.
    pub queue_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            engine: EngineConfig::default(),
            cache_dir: None,
            // Two cores cannot run more than a few guests at a time; the rest
            // wait in memory. 100 bounds the memory one component can hold.
            max_instances_per_component: 100,
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Which entry point a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// Exports `wasi:http/incoming-handler`: serves HTTP requests.
    Http,
    /// Exports `wasi:cli/run`: runs to exit, or as a long-running worker.
    Command,
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComponentKind::Http => "HTTP (wasi:http/incoming-handler)",
            ComponentKind::Command => "command (wasi:cli/run)",
        })
    }
}

/// Where a loaded component's compiled code came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Already loaded in this process.
    Memory,
    /// The on-disk cache: no compilation.
    Disk,
    /// Compiled now (and stored in the cache, if there is one).
    Compiled,
    /// Compiled now because the cached artifact was corrupt.
    Recompiled {
        /// What was wrong with the cached artifact.
        reason: String,
    },
}

/// Runs components: one per process (or per node), shared by every pod.
///
/// Cloning is cheap; all clones share the engine, cache and components.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    allocator: Allocator,
    linker: Linker<Host>,
    cache: Option<DiskCache>,
    loaded: Mutex<HashMap<String, Component>>,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("allocator", &self.inner.allocator)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Creates the engine, its epoch ticker, the linker with WASI p2 and
    /// `wasi:http`, and opens the cache.
    pub fn new(config: RuntimeConfig) -> Result<Runtime> {
        let (engine, allocator) = crate::engine::build(&config.engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::Engine)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(Error::Engine)?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(DiskCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(&engine);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                allocator,
                linker,
                cache,
                loaded: Mutex::new(HashMap::new()),
                config,
                _ticker: ticker,
            }),
        })
    }

    /// The allocator the engine ended up with.
    pub fn allocator(&self) -> Allocator {
        self.inner.allocator
    }

    /// Reads and loads a component file; `name` in errors is the path.
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<(Component, Origin)> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|err| Error::NotWasm {
            name: path.display().to_string(),
            reason: format!("cannot read the file: {err}"),
        })?;
        self.load(&path.display().to_string(), &bytes)
    }

    /// Loads a component: from memory if this process has it, else from the
    /// disk cache, else compiled (and cached). `name` says where the bytes
    /// came from (an image reference, a path) and appears in every error.
    ///
    /// Compilation takes up to seconds of CPU: call this from a blocking
    /// context (`tokio::task::spawn_blocking`) in async code.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<(Component, Origin)> {
        let digest = digest(bytes);
        if let Some(component) = self.inner.loaded.lock().get(&digest) {
            return Ok((component.clone(), Origin::Memory));
        }
        check_header(name, bytes)?;
        let (wasm, origin) = self.compiled(name, &digest, bytes)?;
        let component = self.prepare(name, digest.clone(), &wasm)?;
        // Two threads loading the same bytes at once both get a valid
        // component; the first one stored is kept.
        let component = self
            .inner
            .loaded
            .lock()
            .entry(digest)
            .or_insert(component)
            .clone();
        Ok((component, origin))
    }

    /// The component whose bytes hash to `digest` (SHA-256, hex, with or
    /// without a `sha256:` prefix), if this process has it loaded: no
    /// bytes to read or hash.
    pub fn loaded(&self, digest: &str) -> Option<Component> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.inner.loaded.lock().get(hex).cloned()
    }

    /// Forgets a loaded component (its compiled artifact stays on disk).
    pub fn unload(&self, digest: &str) {
        self.inner.loaded.lock().remove(digest);
    }

    fn compiled(&self, name: &str, digest: &str, bytes: &[u8]) -> Result<(WasmComponent, Origin)> {
        let engine = &self.inner.engine;
        let mut origin = Origin::Compiled;
        if let Some(cache) = &self.inner.cache {
            match cache.get(engine, digest)? {
                Lookup::Hit(component) => {
                    tracing::debug!(
                        component = name,
                        digest,
                        "loaded compiled component from the cache"
                    );
                    return Ok((component, Origin::Disk));
                }
                Lookup::Miss => {}
                Lookup::Corrupt(reason) => {
                    tracing::warn!(
                        component = name,
                        path = %cache.path(digest).display(),
                        %reason,
                        "corrupt compiled-component cache entry removed; recompiling"
                    );
                    origin = Origin::Recompiled { reason };
                }
            }
        }
        let started = Instant::now();
        let component = WasmComponent::new(engine, bytes).map_err(|source| Error::Compile {
            name: name.to_string(),
            source,
        })?;
        tracing::info!(component = name, digest, elapsed = ?started.elapsed(), "compiled component");
        if let Some(cache) = &self.inner.cache {
            let artifact = component.serialize().map_err(|source| Error::Compile {
                name: name.to_string(),
                source,
            })?;
            if let Err(err) = cache.put(digest, &artifact) {
                // A cache that cannot be written costs a recompile next
                // time, nothing more.
                tracing::warn!(component = name, error = %err, "cannot store compiled component");
            }
        }
        Ok((component, origin))
    }

    fn prepare(&self, name: &str, digest: String, wasm: &WasmComponent) -> Result<Component> {
        let engine = &self.inner.engine;
        let exports: Vec<String> = wasm
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports_interface = |iface: &str| {
            exports
                .iter()
                .any(|e| e.split_once('@').map_or(e.as_str(), |(n, _)| n) == iface)
        };
        let (has_http, has_run) = (
            exports_interface("wasi:http/incoming-handler"),
            exports_interface("wasi:cli/run"),
        );
        if !has_http && !has_run {
            return Err(Error::NoEntryPoint {
                name: name.to_string(),
                exports,
            });
        }
        let link = |source| Error::Link {
            name: name.to_string(),
            source,
        };
        let pre = self.inner.linker.instantiate_pre(wasm).map_err(link)?;
        let http = if has_http {
            Some(ProxyPre::new(pre.clone()).map_err(link)?)
        } else {
            None
        };
        let command = if has_run {
            Some(CommandPre::new(pre).map_err(link)?)
        } else {
            None
        };
        let limit = self.inner.config.max_instances_per_component;
        Ok(Component {
            inner: Arc::new(ComponentInner {
                name: name.to_string(),
                digest,
                http,
                command,
                instances: Arc::new(Semaphore::new(limit)),
                instance_limit: limit,
                runtime: self.clone(),
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn max_memory(&self) -> u64 {
        self.inner.config.engine.max_memory
    }
}

/// Rejects what is not a component before the compiler sees it, with a
/// reason a user can act on.
fn check_header(name: &str, bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(b"\0asm") {
        return Err(Error::NotWasm {
            name: name.to_string(),
            reason: if bytes.is_empty() {
                "the file is empty".to_string()
            } else {
                "it does not start with the WebAssembly magic number `\\0asm`".to_string()
            },
        });
    }
    // After the magic: a 16-bit version and a 16-bit layer, little-endian.
    // Core modules are version 1, layer 0; components are layer 1.
    match bytes.get(4..8) {
        Some([1, 0, 0, 0]) => {
            return Err(Error::CoreModule {
                name: name.to_string(),
            });
        }
        Some([_, _, 1, 0]) => {}
        _ => {
            return Err(Error::NotWasm {
                name: name.to_string(),
                reason: "unsupported WebAssembly version or layer".to_string(),
            });
        }
    }
    Ok(())
}

/// A loaded, linked component, ready to instantiate in microseconds.
///
/// Cloning is cheap. Instances are capped per component
/// ([`RuntimeConfig::max_instances_per_component`]).
#[derive(Clone)]
pub struct Component {
    pub(crate) inner: Arc<ComponentInner>,
}

pub(crate) struct ComponentInner {
    pub(crate) name: String,
    pub(crate) digest: String,
    pub(crate) http: Option<ProxyPre<Host>>,
    pub(crate) command: Option<CommandPre<Host>>,
    instances: Arc<Semaphore>,
    instance_limit: usize,
    pub(crate) runtime: Runtime,
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("name", &self.inner.name)
            .field("digest", &self.inner.digest)
            .field("kind", &self.kind())
            .finish()
    }
}

impl Component {
    /// The name it was loaded under (image reference or path).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The sha256 of its bytes, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Its entry point: HTTP when it exports the HTTP handler (even if it
    /// also exports `run`), else command.
    pub fn kind(&self) -> ComponentKind {
        if self.inner.http.is_some() {
            ComponentKind::Http
        } else {
            ComponentKind::Command
        }
    }

    /// Instances running now.
    pub fn running(&self) -> usize {
        self.inner.instance_limit - self.inner.instances.available_permits()
    }

    /// Takes an instance slot, waiting at most `wait`.
    pub(crate) async fn slot(
        &self,
        deadline: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, GuestError> {
        let wait = deadline.unwrap_or(self.inner.runtime.inner.config.queue_timeout);
        let busy = GuestError::Busy {
            limit: self.inner.instance_limit,
        };
        match tokio::time::timeout(wait, self.inner.instances.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy),
        }
    }

    pub(crate) fn wrong_kind(&self, wanted: &'static str) -> Error {
        Error::WrongKind {
            name: self.inner.name.clone(),
            actual: self.kind(),
            wanted,
        }
    }
}
