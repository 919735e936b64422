//! The controller manager and the scheduler as one supervised unit, each
//! behind its own leader election (Leases `kube-system/skiff-scheduler` and
//! `kube-system/skiff-controller-manager`, like kube-scheduler and
//! kube-controller-manager), so any number of control-plane processes can
//! run them and exactly one acts.
//!
//! Inside a leader, every controller runs in its own task; one that fails
//! is logged and restarted with backoff, never taking its siblings down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::controllers::{self, Context};
use crate::informers::Informers;
use crate::leader::{self, AbortOnDrop, Election};
use crate::scheduler::{self, SchedulerOptions};

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ManagerConfig {
    /// Controller settings.
    pub controllers: controllers::Options,
    /// Scheduler settings.
    pub scheduler: SchedulerOptions,
    /// Leader election timings; `None` means Kubernetes' defaults.
    pub election: Option<ElectionTimings>,
}

/// Lease timings for both elections.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTimings {
    /// How long a silent leader keeps its Lease.
    pub lease_duration: Duration,
    /// How long a leader acts without renewing.
    pub renew_deadline: Duration,
    /// How often candidates retry and leaders renew.
    pub retry_period: Duration,
}

type Start = fn(Context) -> BoxFuture<'static, anyhow::Result<()>>;

/// Every controller, by the name Kubernetes gives it.
const CONTROLLERS: &[(&str, Start)] = &[
    ("replicaset-controller", |c| {
        Box::pin(controllers::replicaset::run(c))
    }),
    ("deployment-controller", |c| {
        Box::pin(controllers::deployment::run(c))
    }),
    ("statefulset-controller", |c| {
        Box::pin(controllers::statefulset::run(c))
    }),
    ("job-controller", |c| Box::pin(controllers::job::run(c))),
    ("cronjob-controller", |c| {
        Box::pin(controllers::cronjob::run(c))
    }),
    ("endpoint-controller", |c| {
        Box::pin(controllers::endpoints::run(c))
    }),
    ("namespace-controller", |c| {
        Box::pin(controllers::namespace::run(c))
    }),
    ("garbage-collector-controller", |c| {
        Box::pin(controllers::gc::run(c))
    }),
    ("node-lifecycle-controller", |c| {
        Box::pin(controllers::nodelifecycle::run(c))
    }),
    ("node-ipam-controller", |c| {
        Box::pin(controllers::nodeipam::run(c))
    }),
    // Idle unless the options carry the CA signer.
    ("csrsigning-controller", |c| {
        Box::pin(controllers::csrsigning::run(c))
    }),
    ("service-lb-controller", |c| {
        Box::pin(controllers::servicelb::run(c))
    }),
];

/// Runs the scheduler and the controllers (each while it leads) until
/// `shutdown` completes; leaders release their Leases on the way out.
pub async fn run(client: kube::Client, config: ManagerConfig, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let election = |name: &str| {
        let mut e = Election::new("kube-system", name);
        if let Some(t) = config.election {
            e.lease_duration = t.lease_duration;
            e.renew_deadline = t.renew_deadline;
            e.retry_period = t.retry_period;
        }
        e
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // One watch per resource type for the scheduler and every controller
    // (each started while someone in this process leads).
    let informers = Informers::new(client.clone());
    let ctx = Context {
        client: client.clone(),
        clock: Arc::new(controllers::SystemClock),
        options: Arc::new(config.controllers.clone()),
        informers: informers.clone(),
    };
    let controller_manager = leader::run(
        client.clone(),
        election("skiff-controller-manager"),
        move || run_controllers(ctx.clone()),
        stopped(stop_rx.clone()),
    );
    let scheduler_options = config.scheduler.clone();
    let scheduler_client = client.clone();
    let scheduler = leader::run(
        client,
        election("skiff-scheduler"),
        move || {
            supervise("scheduler", {
                let client = scheduler_client.clone();
                let options = scheduler_options.clone();
                let informers = informers.clone();
                move || {
                    Box::pin(scheduler::run_shared(
                        client.clone(),
                        informers.clone(),
                        options.clone(),
                    ))
                }
            })
        },
        stopped(stop_rx),
    );
    let both = async { tokio::join!(controller_manager, scheduler) };
    tokio::pin!(both);
    tokio::select! {
        _ = &mut both => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            both.await;
        }
    }
}

/// Runs every controller under supervision until aborted.
async fn run_controllers(ctx: Context) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (name, start) in CONTROLLERS {
        let ctx = ctx.clone();
        tasks.spawn(supervise(name, move || start(ctx.clone())));
    }
    // Supervised tasks never finish; dropping the set (when leadership is
    // lost and this future is aborted) aborts them all.
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Runs `start()` forever, restarting it with backoff (1 s doubling to
/// 30 s, reset after a minute of health) whenever it returns.
async fn supervise<F>(name: &'static str, start: F) -> anyhow::Result<()>
where
    F: Fn() -> BoxFuture<'static, anyhow::Result<()>>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let began = tokio::time::Instant::now();
        // Spawned to survive a panic; aborted with us when we are aborted.
        let task = tokio::spawn(start());
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(Ok(())) => tracing::warn!(name, "stopped unexpectedly; restarting"),
            Ok(Err(error)) => {
                tracing::error!(name, error = %format!("{error:#}"), "failed; restarting")
            }
            Err(join) => tracing::error!(name, %join, "panicked; restarting"),
        }
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
