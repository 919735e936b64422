//! Running components that export `wasi:cli/run`.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sandbox::with_deadline;
use crate::{Component, GuestError, Sandbox};

/// How a run ended when the guest itself ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code: 0 for success.
    pub code: i32,
}

impl ExitStatus {
    /// Whether the code is 0.
    pub fn success(self) -> bool {
        self.code == 0
    }
}

impl Component {
    /// Runs the component's `wasi:cli/run` to completion in a fresh instance
    /// under `sandbox`'s limits. Returns the guest's exit status, or the
    /// limit or trap that stopped it.
    pub async fn run(&self, sandbox: &Sandbox) -> Result<ExitStatus, GuestError> {
        let Some(pre) = self.inner.command.clone() else {
            return Err(GuestError::Host {
                reason: self.wrong_kind("run to completion").to_string(),
            });
        };
        let deadline = sandbox.limits.deadline;
        let _permit = self.slot(deadline).await?;
        let runtime = &self.inner.runtime;
        let mut store = sandbox
            .store(runtime.engine(), runtime.max_memory())
            .map_err(|e| GuestError::Host {
                reason: e.to_string(),
            })?;
        let call = async {
            let command = pre
                .instantiate_async(&mut store)
                .await
                .map_err(GuestError::from_wasmtime)?;
            match command.wasi_cli_run().call_run(&mut store).await {
                Ok(Ok(())) => Ok(ExitStatus { code: 0 }),
                Ok(Err(())) => Ok(ExitStatus { code: 1 }),
                Err(err) => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) => Ok(ExitStatus { code: exit.0 }),
                    None => Err(GuestError::from_wasmtime(err)),
                },
            }
        };
        let result = with_deadline(deadline, call).await;
        if let Some(log) = &sandbox.log {
            log.flush();
        }
        if let Err(err) = &result {
            tracing::warn!(component = %self.name(), reason = err.reason(), "guest {err}");
        }
        result
    }

    /// Starts the component as a long-running worker: [`Component::run`] in
    /// its own task, which [`Worker::stop`] ends.
    pub fn spawn(&self, sandbox: Sandbox) -> Worker {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let component = self.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                result = component.run(&sandbox) => result,
                // Dropping the run future tears the instance down, whether
                // the guest is executing (it yields every epoch tick) or
                // waiting on the host.
                _ = stop_rx => {
                    if let Some(log) = &sandbox.log {
                        log.flush();
                    }
                    Err(GuestError::Stopped)
                }
            }
        });
        Worker {
            stop: Some(stop_tx),
            task,
        }
    }
}

/// A running worker instance. Dropping it stops the guest.
#[derive(Debug)]
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<ExitStatus, GuestError>>,
}

impl Worker {
    /// Whether the guest has ended (by itself, by a limit, or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the guest to stop; it is torn down at its next yield (within an
    /// epoch tick if it is computing, at once if it is waiting).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the guest to end and returns how it ended.
    pub async fn wait(mut self) -> Result<ExitStatus, GuestError> {
        let result = (&mut self.task).await;
        result.unwrap_or_else(|join| {
            Err(GuestError::Host {
                reason: format!("worker task failed: {join}"),
            })
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
