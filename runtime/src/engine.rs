//! The one wasmtime `Engine` per process, and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{Error, Result};

/// How often the epoch advances. Every running guest yields to the async
/// executor once per tick and CPU budgets are counted in ticks, so this is
/// the resolution of both: 10 ms keeps the overhead unmeasurable (one atomic
/// increment, one callback per running guest) while a looping guest is
/// stopped within a tick or two of its budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings for the process-wide engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Use the pooling allocator (falls back to on-demand allocation with a
    /// warning when the pool's virtual memory cannot be reserved).
    pub pooling: bool,
    /// Instances the pool holds at once, all components together.
    pub pool_instances: u32,
    /// Largest linear memory one instance may have, in bytes; the default
    /// cap for instances whose [`crate::Limits::memory`] is `None`.
    pub max_memory: u64,
    /// Largest wasm stack one instance may use, in bytes.
    pub max_wasm_stack: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            // Each slot reserves (does not commit) address space for one
            // memory; 1,000 concurrent instances is far more than two cores
            // can keep busy, and the pool grows no further once built.
            pool_instances: 1000,
            max_memory: 256 << 20,
            max_wasm_stack: 512 << 10,
        }
    }
}

/// Which allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// The pooling allocator: instance memory comes from a pre-reserved pool.
    Pooling,
    /// On-demand allocation: the pool could not be reserved, or was disabled.
    OnDemand,
}

/// Builds the engine: component model, async, copy-on-write memory images,
/// epoch interruption, and the pooling allocator when it can be reserved.
pub(crate) fn build(cfg: &EngineConfig) -> Result<(Engine, Allocator)> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(cfg.max_wasm_stack)
        .parallel_compilation(true);
    if cfg.pooling {
        let mut pool = PoolingAllocationConfig::new();
        let n = cfg.pool_instances;
        pool.total_component_instances(n)
            // A Rust wasip2 component holds a handful of core instances
            // (program, adapter shims, fix-ups): budget 8 of each per slot.
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memory_size(usize::try_from(cfg.max_memory).unwrap_or(usize::MAX));
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(err) => tracing::warn!(
                error = %format!("{err:#}"),
                "cannot reserve the pooling allocator's memory; falling back to on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&config).map_err(Error::Engine)?;
    Ok((engine, Allocator::OnDemand))
}

/// The single thread that advances an engine's epoch every [`EPOCH_TICK`].
/// Stopped and joined when dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            // A weak handle: the ticker must not keep the engine alive.
            let engine = engine.weak();
            std::thread::Builder::new()
                .name("skiff-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .expect("spawning a thread only fails when the process is out of resources")
        };
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
