//! What can go wrong when loading or running a component.

use std::path::PathBuf;
use std::time::Duration;

/// Result of loading a component or preparing the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A component could not be loaded, or the runtime could not be set up.
///
/// Every variant names the component (`name`: the image or file it came
/// from) so the message can be shown to a user as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not WebAssembly at all.
    #[error("{name}: not a WebAssembly component: {reason}")]
    NotWasm {
        /// The image or file the bytes came from.
        name: String,
        /// What is wrong with the bytes.
        reason: String,
    },
    /// The bytes are a core WebAssembly module where a component is needed.
    #[error(
        "{name}: is a core WebAssembly module, not a component; build it for \
         wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// The image or file the bytes came from.
        name: String,
    },
    /// The component exports neither entry point Skiff knows how to run.
    #[error(
        "{name}: exports neither wasi:http/incoming-handler nor wasi:cli/run \
         (it exports: {})",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
    )]
    NoEntryPoint {
        /// The image or file the bytes came from.
        name: String,
        /// The names the component does export.
        exports: Vec<String>,
    },
    /// Validation or compilation of the component failed.
    #[error("{name}: invalid component: {source:#}")]
    Compile {
        /// The image or file the bytes came from.
        name: String,
        /// The compiler's reason.
        #[source]
        source: wasmtime::Error,
    },
    /// The component imports something the sandbox does not provide.
    #[error("{name}: cannot be linked: {source:#}")]
    Link {
        /// The image or file the bytes came from.
        name: String,
        /// The linker's reason, naming the missing import.
        #[source]
        source: wasmtime::Error,
    },
    /// The component is of the wrong kind for the request made of it.
    #[error("{name}: is a {actual} component, cannot {wanted}")]
    WrongKind {
        /// The component's name.
        name: String,
        /// What the component is.
        actual: crate::ComponentKind,
        /// What was asked of it.
        wanted: &'static str,
    },
    /// The on-disk compiled-component cache could not be used.
    #[error("compiled-component cache at {}: {source}", path.display())]
    Cache {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A preopened directory could not be opened.
    #[error("cannot open directory {} for the guest: {source:#}", path.display())]
    Preopen {
        /// The host directory.
        path: PathBuf,
        /// The reason.
        #[source]
        source: wasmtime::Error,
    },
    /// The wasmtime engine could not be created.
    #[error("cannot create the wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
}

/// Why a guest stopped before finishing its work.
///
/// These are the limits of [`crate::Limits`] and the traps a guest can hit;
/// the host and other guests are unaffected by any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// The guest tried to grow its memory past its cap.
    #[error("exceeded its memory limit of {limit} bytes (asked for {requested})")]
    MemoryLimit {
        /// The cap, in bytes.
        limit: u64,
        /// The size the guest asked to grow to.
        requested: u64,
    },
    /// The guest used more CPU time than its budget for one request or run.
    #[error("exceeded its CPU budget of {limit:?}")]
    CpuLimit {
        /// The budget.
        limit: Duration,
    },
    /// The request or run took longer than its wall-clock deadline.
    #[error("ran past its deadline of {limit:?}")]
    Deadline {
        /// The deadline.
        limit: Duration,
    },
    /// The guest overflowed its stack.
    #[error("overflowed its stack")]
    StackOverflow,
    /// The guest trapped (for example a Rust panic, or `unreachable`).
    #[error("trapped: {reason}")]
    Trap {
        /// The trap and its wasm backtrace where available.
        reason: String,
    },
    /// Too many instances of the component were already running, and none
    /// freed up before the deadline.
    #[error("has {limit} instances running already (its concurrency limit)")]
    Busy {
        /// The cap on concurrent instances.
        limit: usize,
    },
    /// The host stopped the guest (a worker asked to stop).
    #[error("was stopped")]
    Stopped,
    /// An HTTP guest returned without setting a response.
    #[error("returned without sending a response")]
    NoResponse,
    /// The host could not set up the instance (resource table, body, ...).
    #[error("could not be started: {reason}")]
    Host {
        /// What failed.
        reason: String,
    },
}

impl GuestError {
    /// A short machine-readable reason, as Kubernetes status reasons are
    /// written (`OOMKilled`, `DeadlineExceeded`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            GuestError::MemoryLimit { .. } => "OOMKilled",
            GuestError::CpuLimit { .. } | GuestError::Deadline { .. } => "DeadlineExceeded",
            GuestError::StackOverflow => "StackOverflow",
            GuestError::Trap { .. } => "Error",
            GuestError::Busy { .. } => "Busy",
            GuestError::Stopped => "Stopped",
            GuestError::NoResponse => "NoResponse",
            GuestError::Host { .. } => "HostError",
        }
    }

    /// Turns an error out of wasmtime into the limit or trap it stands for.
    pub(crate) fn from_wasmtime(err: wasmtime::Error) -> GuestError {
        if let Some(hit) = err.downcast_ref::<GuestError>() {
            return hit.clone();
        }
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::StackOverflow) => GuestError::StackOverflow,
            _ => GuestError::Trap {
                reason: format!("{err:?}"),
            },
        }
    }
}
