//! Skiff's scheduler: assigns pending pods to nodes the way kube-scheduler's
//! default profile does, as a plain API client.
//!
//! Start with [`run`] and [`SchedulerOptions`]. The pieces, from the inside
//! out:
//!
//! - [`quantity`]: exact parsing of resource quantities;
//! - [`snapshot`]: the nodes, their pods and running totals, updated event
//!   by event;
//! - [`plugins`]: the filters and scores (resources, node affinity,
//!   taints, host ports, pod affinity, topology spreading);
//! - [`algorithm`]: one pure scheduling cycle, `schedule(pod, snapshot,
//!   start)`;
//! - [`queue`]: pending pods with backoff and retry on cluster changes;
//! - the loop behind [`run`]: watches, assume, bind through
//!   `pods/NAME/binding`, `PodScheduled=False` and events on failure.
//!
//! Not done (yet): preemption, volumes, DRA, extenders, multiple profiles.

pub mod algorithm;
mod driver;
pub mod plugins;
pub use skiff_api::quantity;
pub mod queue;
pub mod snapshot;

pub use algorithm::{FitError, ScheduleResult, schedule, schedule_with};
pub use snapshot::Snapshot;

use crate::informers::Informers;

/// The scheduler name pods get by default (`spec.schedulerName`).
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// How the scheduler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// The `spec.schedulerName` this scheduler serves (pods naming another
    /// are left alone); also the component its events are reported as.
    /// Default: `default-scheduler`.
    pub scheduler_name: String,
    /// The share of nodes (1..=100) to find feasible before scoring, in
    /// clusters of 100 nodes or more; `None` is kube's adaptive default
    /// (`50 - nodes/125`%, at least 5%).
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Default for SchedulerOptions {
    fn default() -> SchedulerOptions {
        SchedulerOptions {
            scheduler_name: DEFAULT_SCHEDULER_NAME.to_owned(),
            percentage_of_nodes_to_score: None,
        }
    }
}

/// Runs the scheduler until the task is aborted (e.g. on losing
/// leadership) or its watches end: watches nodes, pods (all namespaces) and
/// namespaces, schedules every pending pod whose `schedulerName` is
/// `options.scheduler_name`, binds it through `pods/NAME/binding` and
/// records a `Scheduled` event; a pod that fits nowhere gets
/// `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling`
/// event, and is retried when nodes or pods change, or after a backoff.
///
/// Errors only if the watch streams end; API errors are logged and
/// retried.
pub async fn run(client: kube::Client, options: SchedulerOptions) -> anyhow::Result<()> {
    driver::run(client.clone(), Informers::new(client), options).await
}

/// [`run`], taking its node, pod and namespace events from `informers`,
/// the watches it shares with the controllers of its process.
pub async fn run_shared(
    client: kube::Client,
    informers: Informers,
    options: SchedulerOptions,
) -> anyhow::Result<()> {
    driver::run(client, informers, options).await
}
