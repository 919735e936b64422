//! Per-instance limits and the resource limiter that enforces the memory cap.

use std::time::Duration;

use crate::GuestError;

/// The limits one instance runs under: a memory cap, a CPU budget and a
/// wall-clock deadline for one request (HTTP) or one run (`wasi:cli/run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the instance's linear memory, in bytes. `None` means the
    /// engine's per-instance maximum ([`crate::EngineConfig::max_memory`]).
    pub memory: Option<u64>,
    /// CPU time the guest may use for one request or run, measured in epoch
    /// ticks while it executes (so time spent waiting on the host is free).
    pub cpu: Option<Duration>,
    /// Wall-clock deadline for one request or run.
    pub deadline: Option<Duration>,
}

/// Enforces the memory cap and remembers it for a typed error.
///
/// Returning an error from `memory_growing` makes the guest trap with that
/// error, so the caller sees [`GuestError::MemoryLimit`] rather than a
/// generic trap from the guest's allocator giving up.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: u64,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            return Err(wasmtime::Error::new(GuestError::MemoryLimit {
                limit: self.limit,
                requested: desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references: a million entries is far beyond
        // any real program and bounds a table-growing guest's host memory.
        Ok(desired <= 1_000_000)
    }
}
