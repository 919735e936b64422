//! Leader election through a `coordination.k8s.io/v1` Lease, as
//! Kubernetes' control-plane components do it: several processes may run
//! the scheduler and controllers side by side; only the holder of the Lease
//! acts, and a standby takes over once the holder stops renewing.
//!
//! The rules follow client-go's leader election:
//! - a candidate takes the Lease when it does not exist, when it holds it
//!   already, or when the record has not changed for `lease_duration`
//!   **as observed on the candidate's own clock** (so skewed clocks between
//!   machines do not matter);
//! - every write is a compare-and-swap on `resourceVersion`, so two
//!   candidates can never both win the same round;
//! - the leader renews every `retry_period`; if it cannot renew for
//!   `renew_deadline` it stops its work before anyone else may take over
//!   (`renew_deadline < lease_duration`), then competes again;
//! - on shutdown the leader releases the Lease so a standby takes over at
//!   once instead of waiting out the duration.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{PostParams, Resource};
use tokio::time::Instant;

/// Settings for one election.
#[derive(Debug, Clone)]
pub struct Election {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Name of the Lease (`skiff-controller-manager`).
    pub name: String,
    /// This candidate's identity, unique per process (`host_uuid`).
    pub identity: String,
    /// How long a silent leader keeps the Lease (client-go default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal
    /// (client-go default 10 s); must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often candidates retry and leaders renew (client-go default 2 s).
    pub retry_period: Duration,
}

impl Election {
    /// Kubernetes' default timings for the Lease `namespace/name`, with a
    /// fresh random identity.
    pub fn new(namespace: &str, name: &str) -> Election {
        Election {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: format!("skiff_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the last observed Lease record looked like, and when (on our
/// clock) it last changed.
struct Observed {
    record: Option<(String, Option<MicroTime>)>,
    changed_at: Instant,
}

/// Runs `work` whenever this candidate leads, until `shutdown` completes.
///
/// `work` is started afresh each time leadership is won and aborted when it
/// is lost; if it returns (an error or not) while leading, it is restarted
/// after `retry_period`. On shutdown, a leader releases the Lease.
pub async fn run<W, Fut>(
    client: kube::Client,
    election: Election,
    mut work: W,
    shutdown: impl Future<Output = ()>,
) where
    W: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut observed = Observed {
        record: None,
        changed_at: Instant::now(),
    };
    let mut task: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut _abort: Option<AbortOnDrop> = None;
    let mut last_renewal = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let leading = task.is_some();
        match try_acquire_or_renew(&api, &election, &mut observed).await {
            Ok(true) => {
                last_renewal = Instant::now();
                if !leading {
                    tracing::info!(lease = %election.name, identity = %election.identity, "became the leader");
                    let handle = tokio::spawn(work());
                    _abort = Some(AbortOnDrop(handle.abort_handle()));
                    task = Some(handle);
                }
            }
            Ok(false) => {
                if leading {
                    // Someone else holds it: we lost it while partitioned.
                    stop(&mut task, &election, "another candidate holds the lease").await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, lease = %election.name, "leader election: cannot reach the lease");
                if leading && last_renewal.elapsed() >= election.renew_deadline {
                    stop(
                        &mut task,
                        &election,
                        "could not renew within the renew deadline",
                    )
                    .await;
                }
            }
        }
        if let Some(handle) = &task
            && handle.is_finished()
        {
            let result = task.take().map(|t| t.now_or_never_result());
            if let Some(Some(Err(error))) = result {
                tracing::error!(%error, lease = %election.name, "leader work failed; restarting it");
            }
            let handle = tokio::spawn(work());
            _abort = Some(AbortOnDrop(handle.abort_handle()));
            task = Some(handle);
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(election.retry_period) => {}
        }
    }
    if task.is_some() {
        stop(&mut task, &election, "shutting down").await;
        if let Err(error) = release(&api, &election).await {
            tracing::warn!(%error, lease = %election.name, "could not release the lease");
        }
    }
}

async fn stop(
    task: &mut Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    election: &Election,
    why: &str,
) {
    if let Some(handle) = task.take() {
        tracing::warn!(lease = %election.name, identity = %election.identity, why, "stopped leading");
        handle.abort();
        let _ = handle.await;
    }
}

trait JoinResult {
    fn now_or_never_result(self) -> Option<anyhow::Result<()>>;
}

impl JoinResult for tokio::task::JoinHandle<anyhow::Result<()>> {
    /// The result of a finished task (the caller checked `is_finished`).
    fn now_or_never_result(self) -> Option<anyhow::Result<()>> {
        use futures::FutureExt;
        match self.now_or_never()? {
            Ok(result) => Some(result),
            Err(join) => Some(Err(anyhow::anyhow!("leader work panicked: {join}"))),
        }
    }
}

/// One round of client-go's `tryAcquireOrRenew`: true when we hold the
/// Lease after this round.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    election: &Election,
    observed: &mut Observed,
) -> kube::Result<bool> {
    let now = MicroTime(jiff::Timestamp::now());
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                namespace: Some(election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(held_spec(election, &now, 0, Some(now.clone()))),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = Some((holder.clone(), spec.renew_time.clone()));
    if observed.record != record {
        observed.record = record;
        observed.changed_at = Instant::now();
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(election.lease_duration);
    let ours = holder == election.identity;
    let expired = holder.is_empty() || observed.changed_at.elapsed() >= duration;
    if !ours && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquire_time = if ours {
        spec.acquire_time.clone()
    } else {
        Some(now.clone())
    };
    lease.spec = Some(held_spec(election, &now, transitions, acquire_time));
    let name = lease.meta().name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(written) => {
            let spec = written.spec.unwrap_or_default();
            observed.record = Some((spec.holder_identity.unwrap_or_default(), spec.renew_time));
            observed.changed_at = Instant::now();
            Ok(true)
        }
        // Someone else wrote first: they won this round.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

fn held_spec(
    election: &Election,
    now: &MicroTime,
    transitions: i32,
    acquire_time: Option<MicroTime>,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(election.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        acquire_time,
        renew_time: Some(now.clone()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// Gives the Lease up (client-go's `ReleaseOnCancel`): empty holder and a
/// one-second duration, so a standby takes over at its next retry.
async fn release(api: &Api<Lease>, election: &Election) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        return Ok(());
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(&election.identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    lease.spec = Some(spec);
    api.replace(&election.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

/// Aborts a task when dropped, so work spawned by a future that is itself
/// dropped (a leader killed mid-term) does not live on.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
