//! The Job controller: runs pods from `spec.template` until
//! `spec.completions` of them succeed, at most `spec.parallelism` at a time,
//! as Kubernetes' job controller does.
//!
//! - Pods are named `<job>-<random>` (`<job>-<index>-<random>` for
//!   `completionMode: Indexed`, which also gets the
//!   `batch.kubernetes.io/job-completion-index` annotation and label, the
//!   `JOB_COMPLETION_INDEX` variable and hostname `<job>-<index>`), labelled
//!   `batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`,
//!   `controller-uid` and `job-name`, and owned by the job (controller).
//! - A failed pod is replaced after an exponential backoff (10 s doubling
//!   per failure since the last success, at most 6 min); more failures than
//!   `backoffLimit` (or, with `restartPolicy: OnFailure`, as many container
//!   restarts) fail the job with `BackoffLimitExceeded`; running longer than
//!   `activeDeadlineSeconds` fails it with `DeadlineExceeded`.
//! - Finishing first sets `SuccessCriteriaMet` / `FailureTarget` and deletes
//!   the remaining pods, then, once none is terminating, `Complete` /
//!   `Failed` with `completionTime` (Kubernetes 1.31+ behaviour).
//! - `suspend` deletes the active pods; resuming restarts the clock for
//!   `activeDeadlineSeconds`.
//! - `ttlSecondsAfterFinished` deletes the finished job (propagation
//!   `Background`), as Kubernetes' TTL-after-finished controller does.
//!
//! Simplifications: counts come from the pods that exist (no
//! `uncountedTerminatedPods` or tracking finalizers), and never decrease,
//! so deleting a finished pod by hand neither loses nor repeats work that
//! was counted; `podFailurePolicy`, `successPolicy` and
//! `backoffLimitPerIndex` are not implemented.
//!
//! Every decision reads "now" from the [`Context`]'s clock; waits (backoff,
//! deadline, TTL) are re-checked at least every resync period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use super::Context;
use super::chain;
use super::events::reference;

/// Label on every pod of a job: the job's uid.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label on every pod of a job: the job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The pre-1.27 spelling of [`CONTROLLER_UID_LABEL`], still set.
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// The pre-1.27 spelling of [`JOB_NAME_LABEL`], still set.
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// Annotation (and label) with an Indexed job's pod's completion index.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable an Indexed job's containers read their index
/// from.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The first wait before replacing a failed pod (Kubernetes'
/// `DefaultJobPodFailureBackOff`); doubles with each further failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait before replacing a failed pod (Kubernetes'
/// `MaxJobPodFailureBackOff`).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The `spec.managedBy` value this controller answers to.
const MANAGED_BY: &str = "kubernetes.io/job-controller";

/// What can fail while reconciling a Job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} for job {namespace}/{name}")]
    Api {
        /// What was being done (`create pod`).
        action: String,
        /// The job's namespace.
        namespace: String,
        /// The job's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

type State = super::Reconciler;

/// Runs the Job controller until the task is aborted; returns an error only
/// if its watches end.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let state = State::new(&ctx, "job-controller");
    Controller::new(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Pod>::all(ctx.client.clone()),
        watcher::Config::default().labels(CONTROLLER_UID_LABEL),
    )
    .run(reconcile, error_policy, state)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(error = %chain(&error), "job reconcile");
        }
    })
    .await;
    anyhow::bail!("the job controller's watches ended")
}

fn error_policy(job: Arc<Job>, error: &Error, _: Arc<State>) -> Action {
    super::retry_after_error("job", &job.name_any(), error, error.api_source())
}

impl Error {
    /// The API error behind this one, if any.
    fn api_source(&self) -> Option<&kube::Error> {
        match self {
            Error::Api { source, .. } => Some(source),
            #[allow(
                unreachable_patterns,
                reason = "only some controllers have other variants"
            )]
            _ => None,
        }
    }
}

/// Whether `meta` names the object with `uid` as its controller.
pub(crate) fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// `Complete` or `Failed` if the job has finished.
pub(crate) fn finished_condition(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"].into_iter().find(|t| {
        conditions
            .iter()
            .any(|c| c.type_ == *t && c.status == "True")
    })
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets condition `type_` to `status`; returns whether anything changed.
fn set_condition(
    job_status: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let conditions = job_status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return false;
        }
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.to_owned();
        c.reason = Some(reason.to_owned());
        c.message = Some(message.to_owned());
        c.last_probe_time = Some(Time(now));
        return true;
    }
    conditions.push(JobCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    true
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When a terminated pod finished: its containers' latest finish time, else
/// when it stopped being ready, else when it started, else its creation.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    containers
        .or_else(|| {
            status?
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready" && c.status == "False")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .or_else(|| status?.start_time.as_ref().map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The wait before a new pod may be created: [`BACKOFF_BASE`] doubled for
/// each failure since the last success, at most [`BACKOFF_MAX`], counted
/// from the last failure.
fn backoff_remaining(succeeded: &[&Pod], failed: &[&Pod], now: Timestamp) -> Duration {
    let last_success = succeeded.iter().filter_map(|p| finish_time(p)).max();
    let failures: Vec<Timestamp> = failed
        .iter()
        .filter_map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let Some(last_failure) = failures.iter().max() else {
        return Duration::ZERO;
    };
    let delay = backoff_delay(failures.len());
    let elapsed = Duration::try_from(now.duration_since(*last_failure)).unwrap_or(Duration::ZERO);
    delay.saturating_sub(elapsed)
}

/// The backoff after `failures` consecutive failures.
pub fn backoff_delay(failures: usize) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(failures - 1).unwrap_or(u32::MAX).min(16);
    (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// The completion index of an Indexed job's pod.
fn pod_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX_ANNOTATION)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// Parses `status.completedIndexes` (`1,3-5`), keeping indexes below
/// `completions`.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse(), part.parse()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            out.extend((lo.max(0)..=hi.min(completions - 1)).take(1_000_000));
        }
    }
    out
}

/// Formats indexes as `status.completedIndexes` does (`1,3-5`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

async fn reconcile(job: Arc<Job>, state: Arc<State>) -> Result<Action, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(state.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
    let api_err = |action: &str| {
        let (action, namespace, name) = (action.to_owned(), namespace.clone(), name.clone());
        move |source| Error::Api {
            action,
            namespace,
            name,
            source,
        }
    };
    // Read fresh: the watch cache may lag our own last status write, and
    // pods are listed fresh so a pod we just created is never created
    // twice.
    let Some(job) = jobs.get_opt(&name).await.map_err(api_err("get"))? else {
        return Ok(Action::await_change());
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    if spec.managed_by.as_deref().is_some_and(|m| m != MANAGED_BY) {
        return Ok(Action::await_change());
    }
    let uid = job.uid().unwrap_or_default();
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}")))
        .await
        .map_err(api_err("list pods"))?
        .items
        .into_iter()
        .filter(|p| owned_by(&p.metadata, &uid))
        .collect();
    let mut sync = Sync {
        state: &state,
        job: &job,
        pods_api: &pods_api,
        now: state.clock.now(),
        status: job.status.clone().unwrap_or_default(),
        wait: None,
    };
    let result = sync.sync(&pods).await;
    let new_status = sync.status.clone();
    let wait = sync.wait;
    if Some(&new_status) != job.status.as_ref() {
        let mut updated = job.clone();
        updated.status = Some(new_status);
        jobs.replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(api_err("update status"))?;
    }
    result?;
    if finished_condition(&job).is_some() {
        return ttl(&state, &jobs, &job).await;
    }
    Ok(Action::requeue(wait.map_or(state.resync, |w| {
        w.min(state.resync).max(Duration::from_millis(10))
    })))
}

/// Deletes a finished job once its `ttlSecondsAfterFinished` has passed.
async fn ttl(state: &State, jobs: &Api<Job>, job: &Job) -> Result<Action, Error> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let status = job.status.clone().unwrap_or_default();
    let finished = status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        condition(&status, "Failed")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    });
    let Some(finished) = finished else {
        return Ok(Action::await_change());
    };
    let expires = finished
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .unwrap_or(Timestamp::MAX);
    let now = state.clock.now();
    if now < expires {
        let wait = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
        return Ok(Action::requeue(wait.min(state.resync)));
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match jobs.delete(&job.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), "deleted after ttlSecondsAfterFinished");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(Error::Api {
            action: "delete after ttlSecondsAfterFinished".into(),
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            source,
        }),
    }
}

struct Sync<'a> {
    state: &'a State,
    job: &'a Job,
    pods_api: &'a Api<Pod>,
    now: Timestamp,
    status: JobStatus,
    /// The soonest time this job needs another look without a change.
    wait: Option<Duration>,
}

/// The job's pods by state.
struct Pods<'a> {
    active: Vec<&'a Pod>,
    succeeded: Vec<&'a Pod>,
    failed: Vec<&'a Pod>,
    terminating: usize,
}

impl Sync<'_> {
    fn wait_at_most(&mut self, wait: Duration) {
        self.wait = Some(self.wait.map_or(wait, |w| w.min(wait)));
    }

    fn error(&self, action: String) -> impl FnOnce(kube::Error) -> Error {
        let namespace = self.job.namespace().unwrap_or_default();
        let name = self.job.name_any();
        move |source| Error::Api {
            action,
            namespace,
            name,
            source,
        }
    }

    async fn sync(&mut self, all: &[Pod]) -> Result<(), Error> {
        let spec = self.job.spec.clone().unwrap_or_default();
        let me = reference(self.job);
        let recorder = self.state.recorder.clone();
        let mut pods = Pods {
            active: Vec::new(),
            succeeded: Vec::new(),
            failed: Vec::new(),
            terminating: 0,
        };
        for pod in all {
            match (phase(pod), pod.metadata.deletion_timestamp.is_some()) {
                ("Succeeded", _) => pods.succeeded.push(pod),
                ("Failed", _) => pods.failed.push(pod),
                (_, true) => pods.terminating += 1,
                (_, false) => pods.active.push(pod),
            }
        }

        if finished_condition(self.job).is_some() {
            // Finished: only leftovers to clean up.
            let active = std::mem::take(&mut pods.active);
            self.delete_pods(&active).await?;
            return Ok(());
        }

        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions;
        let mut completed = BTreeSet::new();
        let succeeded = if indexed {
            let total = completions.unwrap_or(0);
            completed = parse_indexes(
                self.status.completed_indexes.as_deref().unwrap_or_default(),
                total,
            );
            completed.extend(
                pods.succeeded
                    .iter()
                    .filter_map(|p| pod_index(p))
                    .filter(|i| *i < total),
            );
            self.status.completed_indexes = Some(format_indexes(&completed));
            i32::try_from(completed.len()).unwrap_or(i32::MAX)
        } else {
            let counted = i32::try_from(pods.succeeded.len()).unwrap_or(i32::MAX);
            counted.max(self.status.succeeded.unwrap_or(0))
        };
        let mut failed = i32::try_from(pods.failed.len())
            .unwrap_or(i32::MAX)
            .max(self.status.failed.unwrap_or(0));

        let suspended = spec.suspend == Some(true);
        if self.status.start_time.is_none() && !suspended {
            self.status.start_time = Some(Time(self.now));
        }

        // Failure: decided once (FailureTarget), then carried out.
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let failure = if let Some(c) = condition(&self.status, "FailureTarget") {
            Some((
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ))
        } else if failed > backoff_limit
            || (on_failure && past_backoff_limit_on_failure(&pods.active, backoff_limit))
        {
            Some((
                "BackoffLimitExceeded".to_owned(),
                "Job has reached the specified backoff limit".to_owned(),
            ))
        } else if !suspended && let Some(remaining) = self.deadline_remaining(&spec) {
            if remaining.is_zero() {
                Some((
                    "DeadlineExceeded".to_owned(),
                    "Job was active longer than specified deadline".to_owned(),
                ))
            } else {
                self.wait_at_most(remaining);
                None
            }
        } else {
            None
        };

        let mut active = i32::try_from(pods.active.len()).unwrap_or(i32::MAX);
        if let Some((reason, message)) = failure {
            set_condition(
                &mut self.status,
                "FailureTarget",
                "True",
                &reason,
                &message,
                self.now,
            );
            let remaining = self.delete_pods(&pods.active).await?;
            failed = failed.saturating_add(active);
            active = 0;
            self.finish_counts(active, succeeded, failed, &pods);
            if remaining + pods.terminating == 0 {
                set_condition(
                    &mut self.status,
                    "Failed",
                    "True",
                    &reason,
                    &message,
                    self.now,
                );
                recorder.warning(&me, &reason, &message).await;
            }
            return Ok(());
        }

        let complete = match completions {
            None => succeeded > 0 && active == 0,
            Some(c) => succeeded >= c,
        } || condition(&self.status, "SuccessCriteriaMet").is_some();
        if !complete {
            if suspended {
                let terminating = self.delete_pods(&pods.active).await?;
                active = 0;
                pods.terminating += terminating;
                if set_condition(
                    &mut self.status,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    self.now,
                ) {
                    recorder.normal(&me, "Suspended", "Job suspended").await;
                }
            } else {
                if condition(&self.status, "Suspended").is_some() {
                    set_condition(
                        &mut self.status,
                        "Suspended",
                        "False",
                        "JobResumed",
                        "Job resumed",
                        self.now,
                    );
                    // The deadline counts from the resumption.
                    self.status.start_time = Some(Time(self.now));
                    recorder.normal(&me, "Resumed", "Job resumed").await;
                }
                active = if indexed {
                    self.manage_indexed(&spec, &pods, &completed).await?
                } else {
                    self.manage(&spec, &pods, succeeded).await?
                };
            }
            self.finish_counts(active, succeeded, failed, &pods);
            // A work queue (no completions) is done once one pod succeeded
            // and none runs any more.
            let drained = completions.is_none() && succeeded > 0 && active == 0;
            if suspended || !drained {
                return Ok(());
            }
        }

        let message = "Reached expected number of succeeded pods";
        set_condition(
            &mut self.status,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            message,
            self.now,
        );
        let remaining = self.delete_pods(&pods.active).await?;
        self.finish_counts(0, succeeded, failed, &pods);
        if remaining + pods.terminating == 0 {
            set_condition(
                &mut self.status,
                "Complete",
                "True",
                "CompletionsReached",
                message,
                self.now,
            );
            self.status.completion_time = Some(Time(self.now));
            recorder.normal(&me, "Completed", "Job completed").await;
        }
        Ok(())
    }

    fn finish_counts(&mut self, active: i32, succeeded: i32, failed: i32, pods: &Pods<'_>) {
        let some = |n: i32| (n > 0).then_some(n);
        self.status.active = some(active);
        self.status.succeeded = some(succeeded);
        self.status.failed = some(failed);
        let ready = pods.active.iter().filter(|p| is_ready(p)).count();
        self.status.ready = Some(i32::try_from(ready).unwrap_or(i32::MAX).min(active));
        self.status.terminating = Some(i32::try_from(pods.terminating).unwrap_or(i32::MAX));
    }

    /// How long until `activeDeadlineSeconds` passes (zero if it has);
    /// `None` without a deadline.
    fn deadline_remaining(&self, spec: &k8s_openapi::api::batch::v1::JobSpec) -> Option<Duration> {
        let seconds = spec.active_deadline_seconds?;
        let start = self.status.start_time.as_ref()?.0;
        let end = start
            .checked_add(SignedDuration::from_secs(seconds))
            .unwrap_or(Timestamp::MAX);
        Some(Duration::try_from(end.duration_since(self.now)).unwrap_or(Duration::ZERO))
    }

    /// NonIndexed: keep `min(completions - succeeded, parallelism)` pods
    /// running. Returns how many are active now.
    async fn manage(
        &mut self,
        spec: &k8s_openapi::api::batch::v1::JobSpec,
        pods: &Pods<'_>,
        succeeded: i32,
    ) -> Result<i32, Error> {
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let active = i32::try_from(pods.active.len()).unwrap_or(i32::MAX);
        let want = match spec.completions {
            // A work queue: once one succeeded, start no more.
            None if succeeded > 0 => active.min(parallelism),
            None => parallelism,
            Some(c) => (c - succeeded).clamp(0, parallelism),
        };
        if active > want {
            let mut victims = pods.active.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            let excess = usize::try_from(active - want).unwrap_or(0);
            self.delete_pods(&victims[..excess]).await?;
            return Ok(want);
        }
        if active < want {
            let backoff = backoff_remaining(&pods.succeeded, &pods.failed, self.now);
            if !backoff.is_zero() {
                self.wait_at_most(backoff);
                return Ok(active);
            }
            let mut created = 0;
            for _ in active..want {
                if self.create_pod(None).await? {
                    created += 1;
                }
            }
            return Ok(active + created);
        }
        Ok(active)
    }

    /// Indexed: one pod per index not yet completed, lowest first, at most
    /// `parallelism` at a time; duplicates and out-of-range pods go.
    async fn manage_indexed(
        &mut self,
        spec: &k8s_openapi::api::batch::v1::JobSpec,
        pods: &Pods<'_>,
        completed: &BTreeSet<i32>,
    ) -> Result<i32, Error> {
        let completions = spec.completions.unwrap_or(0);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let mut running: BTreeMap<i32, &Pod> = BTreeMap::new();
        let mut surplus = Vec::new();
        let mut active = pods.active.clone();
        active.sort_by_key(|p| std::cmp::Reverse(deletion_rank(p)));
        for pod in active {
            match pod_index(pod) {
                Some(i)
                    if i < completions && !completed.contains(&i) && !running.contains_key(&i) =>
                {
                    running.insert(i, pod);
                }
                _ => surplus.push(pod),
            }
        }
        // Beyond parallelism: drop the highest indexes.
        while running.len() > usize::try_from(parallelism).unwrap_or(0) {
            if let Some((_, pod)) = running.pop_last() {
                surplus.push(pod);
            }
        }
        self.delete_pods(&surplus).await?;
        let mut count = i32::try_from(running.len()).unwrap_or(i32::MAX);
        let want = (completions - i32::try_from(completed.len()).unwrap_or(i32::MAX))
            .clamp(0, parallelism);
        if count < want {
            let backoff = backoff_remaining(&pods.succeeded, &pods.failed, self.now);
            if !backoff.is_zero() {
                self.wait_at_most(backoff);
                return Ok(count);
            }
            let missing: Vec<i32> = (0..completions)
                .filter(|i| !completed.contains(i) && !running.contains_key(i))
                .take(usize::try_from(want - count).unwrap_or(0))
                .collect();
            for index in missing {
                if self.create_pod(Some(index)).await? {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Creates one pod; `Ok(false)` if the API refused it for a reason the
    /// user must fix (reported as a `FailedCreate` event).
    async fn create_pod(&mut self, index: Option<i32>) -> Result<bool, Error> {
        let pod = pod_for(self.job, index);
        let me = reference(self.job);
        match self.pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                self.state
                    .recorder
                    .normal(
                        &me,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", created.name_any()),
                    )
                    .await;
                Ok(true)
            }
            Err(kube::Error::Api(s))
                if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 =>
            {
                self.state
                    .recorder
                    .warning(
                        &me,
                        "FailedCreate",
                        &format!("Error creating: {}", s.message),
                    )
                    .await;
                Ok(false)
            }
            Err(error) => Err(self.error("create pod".into())(error)),
        }
    }

    /// Deletes pods; returns how many are still terminating (bound pods
    /// wait for their node).
    async fn delete_pods(&mut self, pods: &[&Pod]) -> Result<usize, Error> {
        let mut terminating = 0;
        for pod in pods {
            let name = pod.name_any();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.pods_api.delete(&name, &params).await {
                Ok(either) => {
                    if either.is_left() {
                        terminating += 1;
                    }
                    self.state
                        .recorder
                        .normal(
                            &reference(self.job),
                            "SuccessfulDelete",
                            &format!("Deleted pod: {name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(error) => return Err(self.error(format!("delete pod {name}"))(error)),
            }
        }
        Ok(terminating)
    }
}

/// With `restartPolicy: OnFailure`, container restarts count as failures.
fn past_backoff_limit_on_failure(active: &[&Pod], limit: i32) -> bool {
    let restarts: i64 = active
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= i64::from(limit)
    }
}

/// Which pods to delete first when there are too many: unscheduled, then
/// pending, then not ready, then ready (Kubernetes' `ActivePods` order).
fn deletion_rank(pod: &Pod) -> (u8, u8, u8) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    (u8::from(scheduled), phase, u8::from(is_ready(pod)))
}

/// The pod a job runs (Kubernetes' `GetPodFromTemplate` plus the job's
/// labels, and for Indexed jobs the completion index).
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let template: PodTemplateSpec = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for (key, value) in [
        (CONTROLLER_UID_LABEL, &uid),
        (JOB_NAME_LABEL, &name),
        (LEGACY_CONTROLLER_UID_LABEL, &uid),
        (LEGACY_JOB_NAME_LABEL, &name),
    ] {
        labels.insert(key.to_owned(), value.clone());
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(index) = index {
        labels.insert(COMPLETION_INDEX_ANNOTATION.to_owned(), index.to_string());
        annotations.insert(COMPLETION_INDEX_ANNOTATION.to_owned(), index.to_string());
        generate_name = format!("{name}-{index}-");
        let hostname = format!("{name}-{index}");
        if hostname.len() <= 63 {
            spec.hostname = Some(hostname);
        }
        let env = EnvVar {
            name: COMPLETION_INDEX_ENV.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for container in containers {
            let vars = container.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                vars.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: Job::api_version(&()).into_owned(),
                kind: Job::kind(&()).into_owned(),
                name,
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip() {
        let set = parse_indexes("0,2-4,7", 10);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&set), "0,2-4,7");
        // Out of range and garbage are dropped.
        assert_eq!(format_indexes(&parse_indexes("1-3,x,9", 3)), "1-2");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_delay(0), Duration::ZERO);
        assert_eq!(backoff_delay(1), Duration::from_secs(10));
        assert_eq!(backoff_delay(2), Duration::from_secs(20));
        assert_eq!(backoff_delay(6), Duration::from_secs(320));
        assert_eq!(backoff_delay(7), BACKOFF_MAX);
        assert_eq!(backoff_delay(1000), BACKOFF_MAX);
    }
}
