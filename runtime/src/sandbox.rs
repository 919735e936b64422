//! The sandbox one instance runs in: WASI context, limits, log, egress.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::EPOCH_TICK;
use crate::limits::MemoryLimiter;
use crate::log::{Log, Stream};
use crate::outbound::{DenyAll, Hooks, Outbound};
use crate::{Error, GuestError, Limits, Result};

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (`/data`, `.`).
    pub guest: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Everything a guest may see and use: its arguments, environment,
/// directories, log, egress policy and limits. Nothing else of the host is
/// visible: no host environment, files, sockets or network.
///
/// One `Sandbox` describes many instances (one per HTTP request, or one per
/// run); it is cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    /// Arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// Where stdout and stderr go; `None` discards them.
    pub log: Option<Log>,
    /// Limits for each request or run.
    pub limits: Limits,
    /// Policy for outbound HTTP.
    pub outbound: Arc<dyn Outbound>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dirs", &self.dirs)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            log: None,
            limits: Limits::default(),
            outbound: Arc::new(DenyAll),
        }
    }
}

impl Sandbox {
    /// Sets the arguments (`argv[0]` included).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Preopens a host directory at `guest` inside the sandbox.
    pub fn dir(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<String>,
        read_only: bool,
    ) -> Self {
        self.dirs.push(Preopen {
            host: host.into(),
            guest: guest.into(),
            read_only,
        });
        self
    }

    /// Sends stdout and stderr to `log`.
    pub fn log(mut self, log: Log) -> Self {
        self.log = Some(log);
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the outbound HTTP policy.
    pub fn outbound(mut self, outbound: impl Outbound) -> Self {
        self.outbound = Arc::new(outbound);
        self
    }

    /// Creates a store holding a fresh instance's host state, with the
    /// memory cap and the epoch callback (yield every tick, count CPU) in
    /// place.
    pub(crate) fn store(&self, engine: &Engine, max_memory: u64) -> Result<Store<Host>> {
        let mut wasi = WasiCtx::builder();
        wasi.args(&self.args)
            .envs(&self.env)
            .allow_tcp(false)
            .allow_udp(false);
        if let Some(log) = &self.log {
            wasi.stdout(log.writer(Stream::Stdout))
                .stderr(log.writer(Stream::Stderr));
        }
        for dir in &self.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|source| Error::Preopen {
                    path: dir.host.clone(),
                    source,
                })?;
        }
        let cpu_budget = self.limits.cpu.map(|cpu| {
            let ticks = cpu.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
            (cpu, u64::try_from(ticks).unwrap_or(u64::MAX))
        });
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Hooks(self.outbound.clone()),
            limiter: MemoryLimiter {
                limit: self.limits.memory.unwrap_or(max_memory).min(max_memory),
            },
            ticks: 0,
        };
        let mut store = Store::new(engine, host);
        store.limiter(|host| &mut host.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let host = ctx.data_mut();
            host.ticks += 1;
            if let Some((limit, ticks)) = cpu_budget
                && host.ticks > ticks
            {
                return Err(wasmtime::Error::new(GuestError::CpuLimit { limit }));
            }
            // Give the executor back every tick: a busy guest shares its
            // thread with other guests and the host.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }
}

/// Host state of one instance: one `*View` impl per WASI interface offered.
pub(crate) struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Hooks,
    limiter: MemoryLimiter,
    ticks: u64,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Runs `call` under the sandbox's wall-clock deadline.
pub(crate) async fn with_deadline<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<T, GuestError>>,
) -> Result<T, GuestError> {
    match deadline {
        Some(limit) => tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(GuestError::Deadline { limit })),
        None => call.await,
    }
}
