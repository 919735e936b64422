//! The CronJob controller: creates a Job from `spec.jobTemplate` at every
//! time `spec.schedule` names (in `spec.timeZone`, UTC when unset), as
//! Kubernetes' `cronjob_controllerv2` does.
//!
//! - Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>`
//!   and annotated `batch.kubernetes.io/cronjob-scheduled-timestamp`; the
//!   name doubles as a lock, so a time is never run twice.
//! - Only the most recent missed time is run; more than 100 missed times
//!   also raise a `TooManyMissedTimes` warning. A time later than
//!   `startingDeadlineSeconds` is skipped (`MissSchedule`).
//! - `concurrencyPolicy`: `Allow`, `Forbid` (skip while a job is active) or
//!   `Replace` (delete the active jobs first); `suspend` stops new runs.
//! - Finished jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` are deleted, oldest first.
//! - Status: `active`, `lastScheduleTime`, `lastSuccessfulTime`.
//!
//! Every decision reads "now" from the [`Context`]'s clock; the controller
//! re-examines each CronJob at its next scheduled time (plus 100 ms, as
//! Kubernetes does) or after the resync period, whichever is sooner.

mod schedule;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

pub use schedule::{ParseError, Schedule};

use super::events::reference;
use super::{Context, chain};
use crate::controllers::job::{finished_condition, owned_by};

/// The annotation carrying a job's scheduled time (RFC 3339, in the
/// CronJob's time zone).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Added to the wait for the next scheduled time, so the controller wakes
/// just after it rather than just before (Kubernetes' `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// Missed start times beyond which a warning is raised (only the most
/// recent one is ever run). Kubernetes' threshold.
const TOO_MANY_MISSED: u64 = 100;

/// What can fail while reconciling a CronJob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} for cronjob {namespace}/{name}")]
    Api {
        /// What was being done (`create job web-28000000`).
        action: String,
        /// The CronJob's namespace.
        namespace: String,
        /// The CronJob's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

type State = super::Reconciler;

/// Runs the CronJob controller until the task is aborted; returns an error
/// only if its watches end.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let state = State::new(&ctx, "cronjob-controller");
    Controller::new(
        Api::<CronJob>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, state)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(error = %chain(&error), "cronjob reconcile");
        }
    })
    .await;
    anyhow::bail!("the cronjob controller's watches ended")
}

fn error_policy(cronjob: Arc<CronJob>, error: &Error, _: Arc<State>) -> Action {
    super::retry_after_error("cronjob", &cronjob.name_any(), error, error.api_source())
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

async fn reconcile(cronjob: Arc<CronJob>, state: Arc<State>) -> Result<Action, Error> {
    let namespace = cronjob.namespace().unwrap_or_default();
    let name = cronjob.name_any();
    let api_err = |action: String| {
        let (namespace, name) = (namespace.clone(), name.clone());
        move |source| Error::Api {
            action,
            namespace,
            name,
            source,
        }
    };
    let cronjobs: Api<CronJob> = Api::namespaced(state.client.clone(), &namespace);
    let jobs_api: Api<Job> = Api::namespaced(state.client.clone(), &namespace);
    // Read fresh: the watch cache may lag our own last status write.
    let Some(cronjob) = cronjobs
        .get_opt(&name)
        .await
        .map_err(api_err("get".into()))?
    else {
        return Ok(Action::await_change());
    };
    let uid = cronjob.uid().unwrap_or_default();
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list jobs".into()))?
        .items
        .into_iter()
        .filter(|j| owned_by(&j.metadata, &uid))
        .collect();

    let mut sync = Sync {
        state: &state,
        cronjob: &cronjob,
        jobs_api: &jobs_api,
        status: cronjob.status.clone().unwrap_or_default(),
        changed: false,
    };
    let cleaned = sync.cleanup_finished(&jobs).await;
    let result = sync.sync(&jobs).await;
    if sync.changed || cleaned {
        let mut updated = cronjob.clone();
        let mut status = sync.status;
        if status.active.as_ref().is_some_and(Vec::is_empty) {
            status.active = None;
        }
        updated.status = Some(status);
        cronjobs
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(api_err("update status".into()))?;
    }
    let wait = result?;
    Ok(Action::requeue(
        wait.map_or(state.resync, |w| w.min(state.resync)),
    ))
}

struct Sync<'a> {
    state: &'a State,
    cronjob: &'a CronJob,
    jobs_api: &'a Api<Job>,
    status: CronJobStatus,
    changed: bool,
}

impl Sync<'_> {
    fn event_ref(&self) -> ObjectReference {
        reference(self.cronjob)
    }

    fn error(&self, action: String) -> impl FnOnce(kube::Error) -> Error {
        let namespace = self.cronjob.namespace().unwrap_or_default();
        let name = self.cronjob.name_any();
        move |source| Error::Api {
            action,
            namespace,
            name,
            source,
        }
    }

    fn active(&mut self) -> &mut Vec<ObjectReference> {
        self.status.active.get_or_insert_with(Vec::new)
    }

    fn remove_active(&mut self, uid: &str) {
        let before = self.active().len();
        self.active().retain(|r| r.uid.as_deref() != Some(uid));
        if self.active().len() != before {
            self.changed = true;
        }
    }

    /// Deletes finished jobs beyond the history limits, oldest first.
    /// Returns whether the status changed.
    async fn cleanup_finished(&mut self, jobs: &[Job]) -> bool {
        let spec = self.cronjob.spec.as_ref();
        let succeeded_limit = spec.and_then(|s| s.successful_jobs_history_limit);
        let failed_limit = spec.and_then(|s| s.failed_jobs_history_limit);
        let mut succeeded = Vec::new();
        let mut failed = Vec::new();
        for job in jobs {
            match finished_condition(job) {
                Some("Complete") => succeeded.push(job),
                Some(_) => failed.push(job),
                None => {}
            }
        }
        let before = self.changed;
        for (limit, mut list) in [(succeeded_limit, succeeded), (failed_limit, failed)] {
            let Some(limit) = limit else { continue };
            let keep = usize::try_from(limit).unwrap_or(0);
            if list.len() <= keep {
                continue;
            }
            // Oldest first by start time (jobs never started count as
            // newest), then by name.
            list.sort_by(|a, b| {
                let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.clone());
                match (start(a), start(b)) {
                    (Some(x), Some(y)) => x.0.cmp(&y.0),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
                .then_with(|| a.name_any().cmp(&b.name_any()))
            });
            let excess = list.len() - keep;
            for job in list.into_iter().take(excess) {
                self.delete_job(job).await;
            }
        }
        self.changed != before
    }

    /// Deletes a job (its pods follow through the garbage collector) and
    /// forgets it; failures are reported as events and retried next time.
    async fn delete_job(&mut self, job: &Job) -> bool {
        let name = job.name_any();
        match self
            .jobs_api
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                self.state
                    .recorder
                    .warning(
                        &self.event_ref(),
                        "FailedDelete",
                        &format!("Deleted job: {error}"),
                    )
                    .await;
                return false;
            }
        }
        self.remove_active(&job.uid().unwrap_or_default());
        self.state
            .recorder
            .normal(
                &self.event_ref(),
                "SuccessfulDelete",
                &format!("Deleted job {name}"),
            )
            .await;
        true
    }

    /// Kubernetes' `syncCronJob`: reconciles `status.active` with the jobs
    /// that exist and starts the job due now, if any. Returns how long to
    /// wait before looking again (`None`: until something changes).
    async fn sync(&mut self, jobs: &[Job]) -> Result<Option<Duration>, Error> {
        let recorder = self.state.recorder.clone();
        let me = self.event_ref();
        let mut children = HashSet::new();
        for job in jobs {
            let uid = job.uid().unwrap_or_default();
            children.insert(uid.clone());
            let in_active = self
                .active()
                .iter()
                .any(|r| r.uid.as_deref() == Some(uid.as_str()));
            let finished = finished_condition(job);
            if !in_active && finished.is_none() {
                recorder
                    .warning(
                        &me,
                        "UnexpectedJob",
                        &format!(
                            "Saw a job that the controller did not create or forgot: {}",
                            job.name_any()
                        ),
                    )
                    .await;
            } else if in_active && let Some(condition) = finished {
                self.remove_active(&uid);
                recorder
                    .normal(
                        &me,
                        "SawCompletedJob",
                        &format!(
                            "Saw completed job: {}, condition: {condition}",
                            job.name_any()
                        ),
                    )
                    .await;
            }
            if finished == Some("Complete")
                && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
                && self
                    .status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| t.0 < done.0)
            {
                self.status.last_successful_time = Some(done);
                self.changed = true;
            }
        }
        let missing: Vec<ObjectReference> = self
            .active()
            .iter()
            .filter(|r| !r.uid.as_ref().is_some_and(|u| children.contains(u)))
            .cloned()
            .collect();
        for gone in missing {
            let name = gone.name.clone().unwrap_or_default();
            let found = self
                .jobs_api
                .get_opt(&name)
                .await
                .map_err(self.error(format!("get job {name}")))?;
            if found.is_none_or(|j| j.uid() != gone.uid) {
                recorder
                    .normal(
                        &me,
                        "MissingJob",
                        &format!("Active job went missing: {name}"),
                    )
                    .await;
                self.remove_active(&gone.uid.clone().unwrap_or_default());
            }
        }

        if self.cronjob.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(spec) = self.cronjob.spec.clone() else {
            return Ok(None);
        };
        let tz = match spec.time_zone.as_deref() {
            None => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(error) => {
                    recorder
                        .warning(
                            &me,
                            "UnknownTimeZone",
                            &format!("invalid timeZone: {name:?}: {error}"),
                        )
                        .await;
                    return Ok(None);
                }
            },
        };
        if spec.suspend == Some(true) {
            return Ok(None);
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(error) => {
                recorder
                    .warning(
                        &me,
                        "UnparseableSchedule",
                        &format!(
                            "unparseable schedule: {:?} : {}",
                            spec.schedule, error.reason
                        ),
                    )
                    .await;
                return Ok(None);
            }
        };
        let now = self.state.clock.now();
        let times = ScheduleTimes {
            schedule: &schedule,
            tz: &tz,
            created: self
                .cronjob
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0),
            last_scheduled: self.status.last_schedule_time.as_ref().map(|t| t.0),
            starting_deadline: spec.starting_deadline_seconds,
        };
        let next_wait = |last: Option<Timestamp>| times.wait_for_next(now, last);
        let due = match times.most_recent(now, true) {
            Err(()) => {
                recorder
                    .warning(
                        &me,
                        "InvalidSchedule",
                        &format!(
                            "invalid schedule: {}: it never fires in the next ten years",
                            spec.schedule
                        ),
                    )
                    .await;
                return Ok(None);
            }
            Ok(None) => return Ok(next_wait(None)),
            Ok(Some(missed)) => {
                if missed.count > TOO_MANY_MISSED {
                    recorder
                        .warning(
                            &me,
                            "TooManyMissedTimes",
                            &format!(
                                "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                                missed.count
                            ),
                        )
                        .await;
                }
                missed.latest
            }
        };
        if let Some(deadline) = spec.starting_deadline_seconds
            && due
                .checked_add(jiff::SignedDuration::from_secs(deadline))
                .is_ok_and(|late| late < now)
        {
            recorder
                .warning(
                    &me,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        due.to_zoned(TimeZone::UTC)
                            .strftime("%a, %d %b %Y %H:%M:%S %z")
                    ),
                )
                .await;
            return Ok(next_wait(Some(due)));
        }
        let job_name = job_name(&self.cronjob.name_any(), due);
        let already = self
            .active()
            .iter()
            .any(|r| r.name.as_deref() == Some(job_name.as_str()))
            || self.status.last_schedule_time.as_ref().map(|t| t.0) == Some(due);
        if already {
            return Ok(next_wait(Some(due)));
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !self.active().is_empty() => {
                recorder
                    .normal(
                        &me,
                        "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid",
                    )
                    .await;
                return Ok(next_wait(Some(due)));
            }
            Some("Replace") => {
                let active = self.active().clone();
                for r in active {
                    let name = r.name.clone().unwrap_or_default();
                    let job = self
                        .jobs_api
                        .get_opt(&name)
                        .await
                        .map_err(self.error(format!("get job {name}")))?;
                    match job {
                        Some(job) if job.uid() == r.uid => {
                            if !self.delete_job(&job).await {
                                // Reported as an event; try again soon.
                                return Ok(Some(Duration::from_secs(1)));
                            }
                        }
                        _ => self.remove_active(&r.uid.clone().unwrap_or_default()),
                    }
                }
            }
            _ => {}
        }

        let job = job_from_template(self.cronjob, &job_name, due, &tz);
        let created = match self.jobs_api.create(&PostParams::default(), &job).await {
            Ok(job) => {
                recorder
                    .normal(&me, "SuccessfulCreate", &format!("Created job {job_name}"))
                    .await;
                job
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Created by an earlier pass whose status update was lost.
                let existing = self
                    .jobs_api
                    .get(&job_name)
                    .await
                    .map_err(self.error(format!("get job {job_name}")))?;
                if !owned_by(&existing.metadata, &self.cronjob.uid().unwrap_or_default()) {
                    recorder
                        .warning(
                            &me,
                            "FailedCreate",
                            &format!(
                                "Error creating job: job {job_name} already exists and is not ours"
                            ),
                        )
                        .await;
                    return Ok(next_wait(Some(due)));
                }
                existing
            }
            Err(error) => {
                recorder
                    .warning(&me, "FailedCreate", &format!("Error creating job: {error}"))
                    .await;
                return Err(self.error(format!("create job {job_name}"))(error));
            }
        };
        if finished_condition(&created).is_none() {
            self.active().push(job_reference(&created));
        }
        self.status.last_schedule_time = Some(Time(due));
        self.changed = true;
        Ok(next_wait(Some(due)))
    }
}

/// The schedule's view of one CronJob: which times are due.
struct ScheduleTimes<'a> {
    schedule: &'a Schedule,
    tz: &'a TimeZone,
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    starting_deadline: Option<i64>,
}

/// The unmet start times up to now.
struct Missed {
    /// The most recent one (the only one that is run).
    latest: Timestamp,
    /// How many there are (exact up to 101; estimated beyond).
    count: u64,
}

impl ScheduleTimes<'_> {
    /// The earliest time after which start times count as unmet: the last
    /// scheduled time, or creation; with `with_deadline`, no earlier than
    /// `now - startingDeadlineSeconds`.
    fn earliest(&self, now: Timestamp, with_deadline: bool) -> Timestamp {
        let mut earliest = self.last_scheduled.unwrap_or(self.created);
        if with_deadline
            && let Some(deadline) = self.starting_deadline
            && let Ok(cutoff) = now.checked_sub(jiff::SignedDuration::from_secs(deadline))
            && cutoff > earliest
        {
            earliest = cutoff;
        }
        earliest
    }

    /// Kubernetes' `mostRecentScheduleTime`, exact rather than estimated:
    /// `Err` when the schedule never fires.
    fn most_recent(&self, now: Timestamp, with_deadline: bool) -> Result<Option<Missed>, ()> {
        let earliest = self.earliest(now, with_deadline);
        let first = self.schedule.next_after(earliest, self.tz).ok_or(())?;
        if first > now {
            return Ok(None);
        }
        let latest = self
            .schedule
            .latest_at_or_before(now, self.tz)
            .unwrap_or(first);
        let mut count = 1;
        let mut t = first;
        while count <= TOO_MANY_MISSED {
            match self.schedule.next_after(t, self.tz) {
                Some(n) if n <= now => {
                    count += 1;
                    t = n;
                }
                _ => return Ok(Some(Missed { latest, count })),
            }
        }
        // Too many to count one by one: estimate from the interval between
        // the first two, as Kubernetes does.
        if let Some(second) = self.schedule.next_after(first, self.tz) {
            let step = second.duration_since(first).as_secs().max(1);
            let elapsed = now.duration_since(first).as_secs().max(0);
            count = count.max(u64::try_from(elapsed / step).unwrap_or(0) + 1);
        }
        Ok(Some(Missed { latest, count }))
    }

    /// How long until the schedule's first time after both `now` and the
    /// last scheduled time (or `after`), plus [`NEXT_SCHEDULE_DELTA`].
    fn wait_for_next(&self, now: Timestamp, after: Option<Timestamp>) -> Option<Duration> {
        let base = self.earliest(now, false).max(after.unwrap_or(now)).max(now);
        let next = self.schedule.next_after(base, self.tz)?;
        let wait = next.duration_since(now);
        Some(Duration::try_from(wait).unwrap_or(Duration::ZERO) + NEXT_SCHEDULE_DELTA)
    }
}

/// The name Kubernetes gives the job for `scheduled`:
/// `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// `scheduled` as Go's RFC 3339 in `tz` (`Z` for a zero offset).
fn rfc3339(scheduled: Timestamp, tz: &TimeZone) -> String {
    let zoned = scheduled.to_zoned(tz.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job a CronJob starts for `scheduled` (Kubernetes'
/// `getJobFromTemplate2`).
fn job_from_template(cronjob: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_owned(),
        rfc3339(scheduled, tz),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cronjob.namespace(),
            labels: template_meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cronjob)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn controller_ref(cronjob: &CronJob) -> OwnerReference {
    OwnerReference {
        api_version: CronJob::api_version(&()).into_owned(),
        kind: CronJob::kind(&()).into_owned(),
        name: cronjob.name_any(),
        uid: cronjob.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::api_version(&()).into_owned()),
        kind: Some(Job::kind(&()).into_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_and_timestamps() {
        let t: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        assert_eq!(job_name("hello", t), "hello-28575960");
        assert_eq!(rfc3339(t, &TimeZone::UTC), "2024-05-01T10:00:00Z");
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(rfc3339(t, &berlin), "2024-05-01T12:00:00+02:00");
    }

    #[test]
    fn missed_times() {
        let schedule = Schedule::parse("*/10 * * * *").unwrap();
        let created: Timestamp = "2024-05-01T10:01:00Z".parse().unwrap();
        let times = ScheduleTimes {
            schedule: &schedule,
            tz: &TimeZone::UTC,
            created,
            last_scheduled: None,
            starting_deadline: None,
        };
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(
            times
                .most_recent(at("2024-05-01T10:09:59Z"), true)
                .unwrap()
                .is_none()
        );
        let m = times
            .most_recent(at("2024-05-01T10:35:00Z"), true)
            .unwrap()
            .unwrap();
        assert_eq!((m.latest, m.count), (at("2024-05-01T10:30:00Z"), 3));
        // Two days of ten-minute slots: too many, only the latest runs.
        let m = times
            .most_recent(at("2024-05-03T10:05:00Z"), true)
            .unwrap()
            .unwrap();
        assert_eq!(m.latest, at("2024-05-03T10:00:00Z"));
        assert!(m.count > TOO_MANY_MISSED, "{}", m.count);
        // A starting deadline hides what is too old to start.
        let late = ScheduleTimes {
            starting_deadline: Some(60),
            ..times
        };
        assert!(
            late.most_recent(at("2024-05-01T10:35:00Z"), true)
                .unwrap()
                .is_none()
        );
        let m = late
            .most_recent(at("2024-05-01T10:30:30Z"), true)
            .unwrap()
            .unwrap();
        assert_eq!((m.latest, m.count), (at("2024-05-01T10:30:00Z"), 1));
        // The wait ends 100 ms after the next time.
        assert_eq!(
            late.wait_for_next(at("2024-05-01T10:35:00Z"), Some(at("2024-05-01T10:30:00Z"))),
            Some(Duration::from_secs(300) + NEXT_SCHEDULE_DELTA)
        );
    }
}
