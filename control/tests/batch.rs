//! The Job, CronJob and StatefulSet controllers against the real API server.
//! There is no kubelet: the test plays it by writing pods' status (phase
//! Succeeded/Failed with terminated containers, or Running and Ready), and
//! time is a [`ManualClock`] the test moves.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_control::controllers::{self, Clock, Context, ManualClock, Options};
use support::{Cluster, eventually};

const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "default";

/// The controllers under test, aborted when dropped.
struct Running(Vec<tokio::task::JoinHandle<anyhow::Result<()>>>);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Setup {
    cluster: Cluster,
    clock: Arc<ManualClock>,
    _running: Running,
}

#[derive(Clone, Copy)]
enum Which {
    Job,
    CronJob,
    StatefulSet,
}

/// A short resync: controllers notice the manual clock moving.
const FAST: Duration = Duration::from_millis(200);
/// A resync longer than any test: progress must come from watch events.
const SLOW: Duration = Duration::from_secs(300);

/// A cluster with the given controllers on a manual clock, re-examining
/// every object each `resync`.
async fn setup(which: &[Which], resync: Duration) -> Setup {
    let cluster = Cluster::start().await;
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let ctx = Context {
        client: cluster.client.clone(),
        informers: skiff_control::informers::Informers::new(cluster.client.clone()),
        clock: clock.clone(),
        options: Arc::new(Options {
            resync,
            ..Options::default()
        }),
    };
    let tasks = which
        .iter()
        .map(|w| {
            let ctx = ctx.clone();
            match w {
                Which::Job => tokio::spawn(controllers::job::run(ctx)),
                Which::CronJob => tokio::spawn(controllers::cronjob::run(ctx)),
                Which::StatefulSet => tokio::spawn(controllers::statefulset::run(ctx)),
            }
        })
        .collect();
    Setup {
        cluster,
        clock,
        _running: Running(tasks),
    }
}

fn api<K>(setup: &Setup) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(setup.cluster.client.clone(), NS)
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &typed).await.unwrap()
}

fn job_template(restart: &str) -> Value {
    json!({
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "main", "image": "example.com/work:1"}]
        }
    })
}

async fn pods_of(pods: &Api<Pod>, label: &str) -> Vec<Pod> {
    let mut list = pods
        .list(&ListParams::default().labels(label))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|p| p.name_any());
    list
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// Plays kubelet: the pod's one container ran and exited with `code`.
async fn terminate(pods: &Api<Pod>, name: &str, code: i32, at: Timestamp) {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let status = json!({"status": {
        "phase": phase,
        "startTime": at.to_string(),
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at.to_string()}],
        "containerStatuses": [{
            "name": "main",
            "image": "example.com/work:1",
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": at.to_string(),
                "finishedAt": at.to_string(),
            }}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Plays kubelet: the pod is Running and Ready.
async fn make_ready(pods: &Api<Pod>, name: &str) {
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": "main",
            "image": "example.com/work:1",
            "imageID": "",
            "ready": true,
            "restartCount": 0,
            "started": true,
            "state": {"running": {"startedAt": now}}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

async fn get<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap()
}

/// Reasons of the events recorded about the object `name`.
async fn event_reasons(setup: &Setup, name: &str) -> Vec<String> {
    let events: Api<Event> = api(setup);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits until an event with `reason` is recorded about `name`.
async fn event(setup: &Setup, name: &str, reason: &str) {
    eventually(WAIT, &format!("event {reason} on {name}"), || async {
        event_reasons(setup, name)
            .await
            .iter()
            .any(|r| r == reason)
            .then_some(())
    })
    .await;
}

/// Gives the controllers time to (wrongly) act: several fast resync
/// periods, and ample time to react to any watch event.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

// ---- Job -------------------------------------------------------------------

#[tokio::test]
async fn job_runs_completions_with_bounded_parallelism() {
    let s = setup(&[Which::Job], SLOW).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "pi"},
            "spec": {"completions": 3, "parallelism": 2, "template": job_template("Never")}
        }),
    )
    .await;
    let uid = job.uid().unwrap();
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");

    let mut finished = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while finished.len() < 3 {
        let pod = eventually(WAIT, "an active pod", || async {
            let all = pods_of(&pods, &selector).await;
            let active: Vec<Pod> = all.iter().filter(|p| is_active(p)).cloned().collect();
            assert!(
                active.len() <= 2,
                "more than parallelism=2 pods active: {}",
                active.len()
            );
            assert!(all.len() <= 3, "more pods than completions: {}", all.len());
            active.into_iter().next()
        })
        .await;
        let name = pod.name_any();
        seen.insert(name.clone());
        // Labels, owner, template as Kubernetes sets them.
        let labels = pod.labels();
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(labels["controller-uid"], uid);
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert!(name.starts_with("pi-"), "{name}");
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Job", uid.as_str(), Some(true))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        if finished.is_empty() {
            // Both parallel pods start before any finishes.
            eventually(WAIT, "two pods running in parallel", || async {
                let all = pods_of(&pods, &selector).await;
                (all.iter().filter(|p| is_active(p)).count() == 2).then_some(())
            })
            .await;
        }
        terminate(&pods, &name, 0, s.clock.now()).await;
        finished.insert(name);
    }

    let done = eventually(WAIT, "the job to complete", || async {
        let job = get(&jobs, "pi").await?;
        condition(&job, "Complete").map(|_| job.clone())
    })
    .await;
    let status = done.status.unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.failed.unwrap_or(0), 0);
    assert_eq!(status.active.unwrap_or(0), 0);
    assert!(status.start_time.is_some());
    assert!(status.completion_time.is_some());
    let done = get(&jobs, "pi").await.unwrap();
    assert!(condition(&done, "SuccessCriteriaMet").is_some());
    assert_eq!(
        pods_of(&pods, &selector).await.len(),
        3,
        "exactly completions pods ran"
    );
    assert_eq!(seen.len(), 3);
    event(&s, "pi", "Completed").await;
    event(&s, "pi", "SuccessfulCreate").await;
}

#[tokio::test]
async fn job_backs_off_and_fails_past_its_backoff_limit() {
    let s = setup(&[Which::Job], FAST).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "flaky"},
            "spec": {"backoffLimit": 2, "template": job_template("Never")}
        }),
    )
    .await;
    let selector = format!("batch.kubernetes.io/controller-uid={}", job.uid().unwrap());

    for attempt in 1..=3 {
        let pod = eventually(WAIT, &format!("attempt {attempt}'s pod"), || async {
            let all = pods_of(&pods, &selector).await;
            assert!(
                all.iter().filter(|p| is_active(p)).count() <= 1,
                "more than one active pod"
            );
            (all.len() == attempt)
                .then(|| all.into_iter().find(is_active))
                .flatten()
        })
        .await;
        terminate(&pods, &pod.name_any(), 1, s.clock.now()).await;
        if attempt == 1 {
            // 10 s of backoff on the controller's clock: nothing yet.
            settle().await;
            assert_eq!(
                pods_of(&pods, &selector).await.len(),
                1,
                "replaced during backoff"
            );
            s.clock.advance(Duration::from_secs(9));
            settle().await;
            assert_eq!(
                pods_of(&pods, &selector).await.len(),
                1,
                "replaced during backoff"
            );
            s.clock.advance(Duration::from_secs(2));
        } else if attempt == 2 {
            // 20 s now.
            s.clock.advance(Duration::from_secs(15));
            settle().await;
            assert_eq!(
                pods_of(&pods, &selector).await.len(),
                2,
                "replaced during backoff"
            );
            s.clock.advance(Duration::from_secs(6));
        }
    }

    let failed = eventually(WAIT, "the job to fail", || async {
        let job = get(&jobs, "flaky").await?;
        condition(&job, "Failed").map(|c| (job.clone(), c.clone()))
    })
    .await;
    assert_eq!(failed.1.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(failed.0.status.as_ref().unwrap().failed, Some(3));
    assert!(condition(&failed.0, "Complete").is_none());
    settle().await;
    assert_eq!(
        pods_of(&pods, &selector).await.len(),
        3,
        "no pod after failing"
    );
    event(&s, "flaky", "BackoffLimitExceeded").await;
}

#[tokio::test]
async fn job_fails_past_its_active_deadline() {
    let s = setup(&[Which::Job], FAST).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "slow"},
            "spec": {"activeDeadlineSeconds": 30, "parallelism": 2, "completions": 4,
                     "template": job_template("OnFailure")}
        }),
    )
    .await;
    let selector = format!("batch.kubernetes.io/controller-uid={}", job.uid().unwrap());
    eventually(WAIT, "two pods", || async {
        (pods_of(&pods, &selector).await.len() == 2).then_some(())
    })
    .await;
    s.clock.advance(Duration::from_secs(20));
    settle().await;
    assert!(condition(&get(&jobs, "slow").await.unwrap(), "Failed").is_none());
    s.clock.advance(Duration::from_secs(11));
    let failed = eventually(WAIT, "the job to fail", || async {
        let job = get(&jobs, "slow").await?;
        condition(&job, "Failed").map(|c| (job.clone(), c.clone()))
    })
    .await;
    assert_eq!(failed.1.reason.as_deref(), Some("DeadlineExceeded"));
    // Its running pods are deleted (and count as failed).
    assert_eq!(pods_of(&pods, &selector).await.len(), 0);
    assert_eq!(failed.0.status.as_ref().unwrap().failed, Some(2));
    assert_eq!(failed.0.status.as_ref().unwrap().active.unwrap_or(0), 0);
    event(&s, "slow", "DeadlineExceeded").await;
}

#[tokio::test]
async fn finished_job_is_deleted_after_its_ttl() {
    let s = setup(&[Which::Job], FAST).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "once"},
            "spec": {"ttlSecondsAfterFinished": 60, "template": job_template("Never")}
        }),
    )
    .await;
    let selector = format!("batch.kubernetes.io/controller-uid={}", job.uid().unwrap());
    let pod = eventually(WAIT, "the pod", || async {
        pods_of(&pods, &selector).await.into_iter().next()
    })
    .await;
    terminate(&pods, &pod.name_any(), 0, s.clock.now()).await;
    eventually(WAIT, "the job to complete", || async {
        condition(&get(&jobs, "once").await?, "Complete").map(|_| ())
    })
    .await;
    s.clock.advance(Duration::from_secs(50));
    settle().await;
    assert!(get(&jobs, "once").await.is_some(), "deleted before its TTL");
    s.clock.advance(Duration::from_secs(11));
    eventually(WAIT, "the job to be deleted", || async {
        get(&jobs, "once").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn indexed_job_gives_each_pod_its_index() {
    let s = setup(&[Which::Job], FAST).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "shards"},
            "spec": {"completions": 3, "parallelism": 3, "completionMode": "Indexed",
                     "template": job_template("Never")}
        }),
    )
    .await;
    let selector = format!("batch.kubernetes.io/controller-uid={}", job.uid().unwrap());
    let all = eventually(WAIT, "three pods", || async {
        let all = pods_of(&pods, &selector).await;
        (all.len() == 3).then_some(all)
    })
    .await;
    let mut indexes = BTreeSet::new();
    for pod in &all {
        let index = pod.annotations()["batch.kubernetes.io/job-completion-index"].clone();
        assert_eq!(
            pod.labels()["batch.kubernetes.io/job-completion-index"],
            index
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("shards-{index}").as_str())
        );
        let env = spec.containers[0].env.as_ref().unwrap();
        let var = env
            .iter()
            .find(|v| v.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        let path = &var
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path;
        assert_eq!(
            path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        assert!(pod.name_any().starts_with(&format!("shards-{index}-")));
        indexes.insert(index);
    }
    assert_eq!(
        indexes,
        BTreeSet::from(["0".into(), "1".into(), "2".into()])
    );
    // Index 1 fails once: it alone is retried, with its index.
    let one = all
        .iter()
        .find(|p| p.annotations()["batch.kubernetes.io/job-completion-index"] == "1")
        .unwrap();
    terminate(&pods, &one.name_any(), 1, s.clock.now()).await;
    s.clock.advance(Duration::from_secs(11));
    let retry = eventually(WAIT, "index 1 to be retried", || async {
        pods_of(&pods, &selector).await.into_iter().find(|p| {
            is_active(p)
                && p.annotations()["batch.kubernetes.io/job-completion-index"] == "1"
                && p.name_any() != one.name_any()
        })
    })
    .await;
    for pod in all
        .iter()
        .filter(|p| p.name_any() != one.name_any())
        .chain([&retry])
    {
        terminate(&pods, &pod.name_any(), 0, s.clock.now()).await;
    }
    let done = eventually(WAIT, "the job to complete", || async {
        let job = get(&jobs, "shards").await?;
        condition(&job, "Complete").map(|_| job.clone())
    })
    .await;
    let status = done.status.unwrap();
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.failed, Some(1));
}

// ---- CronJob ---------------------------------------------------------------

fn cronjob(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "schedule": "* * * * *",
        "jobTemplate": {"metadata": {"labels": {"app": name}}, "spec": {"template": job_template("Never")}}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

/// The first whole minute after the object was created: the first time
/// `* * * * *` is due.
fn first_minute(cj: &CronJob) -> Timestamp {
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_second();
    Timestamp::from_second((created.div_euclid(60) + 1) * 60).unwrap()
}

/// Moves the clock to just after `at`.
fn advance_to(clock: &ManualClock, at: Timestamp) {
    let wait = at.duration_since(clock.now()) + jiff::SignedDuration::from_secs(1);
    if let Ok(d) = Duration::try_from(wait) {
        clock.advance(d);
    }
}

fn job_name(cj: &str, at: Timestamp) -> String {
    format!("{cj}-{}", at.as_second() / 60)
}

async fn cron_jobs(jobs: &Api<Job>, app: &str) -> Vec<String> {
    let mut names: Vec<String> = jobs
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    names.sort();
    names
}

/// Plays the Job controller: marks a job finished.
async fn finish_job(jobs: &Api<Job>, name: &str, ok: bool, started: Timestamp, at: Timestamp) {
    let condition = if ok { "Complete" } else { "Failed" };
    let mut status = json!({"status": {
        "startTime": started.to_string(),
        "conditions": [{"type": condition, "status": "True", "lastTransitionTime": at.to_string()}]
    }});
    if ok {
        status["status"]["completionTime"] = json!(at.to_string());
        status["status"]["succeeded"] = json!(1);
    } else {
        status["status"]["failed"] = json!(1);
    }
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test]
async fn cronjob_runs_on_schedule_forbids_overlap_and_keeps_history() {
    let s = setup(&[Which::CronJob], FAST).await;
    let cronjobs: Api<CronJob> = api(&s);
    let jobs: Api<Job> = api(&s);
    let cj = create(
        &cronjobs,
        cronjob(
            "tick",
            json!({"concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
        ),
    )
    .await;
    let t1 = first_minute(&cj);
    settle().await;
    assert!(
        cron_jobs(&jobs, "tick").await.is_empty(),
        "ran before its time"
    );

    advance_to(&s.clock, t1);
    let first = job_name("tick", t1);
    let job = eventually(WAIT, "the first job", || async { get(&jobs, &first).await }).await;
    assert_eq!(
        job.annotations()["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        t1.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    assert_eq!(owner.uid, cj.uid().unwrap());
    assert_eq!(
        job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .restart_policy
            .as_deref(),
        Some("Never")
    );
    let status = eventually(WAIT, "active and lastScheduleTime", || async {
        let status = get(&cronjobs, "tick").await?.status?;
        (status.active.as_ref()?.len() == 1).then_some(status)
    })
    .await;
    assert_eq!(status.last_schedule_time.unwrap().0, t1);
    assert_eq!(
        status.active.unwrap()[0].name.as_deref(),
        Some(first.as_str())
    );
    event(&s, "tick", "SuccessfulCreate").await;

    // Forbid: the next minute comes while the first job still runs.
    let t2 = t1 + jiff::SignedDuration::from_mins(1);
    advance_to(&s.clock, t2);
    event(&s, "tick", "JobAlreadyActive").await;
    assert_eq!(cron_jobs(&jobs, "tick").await, vec![first.clone()]);

    // Once it finishes, the missed run starts.
    finish_job(&jobs, &first, true, t1, t2).await;
    let second = job_name("tick", t2);
    eventually(WAIT, "the second job", || async {
        get(&jobs, &second).await
    })
    .await;
    let status = eventually(WAIT, "lastSuccessfulTime", || async {
        get(&cronjobs, "tick").await?.status?.last_successful_time
    })
    .await;
    assert_eq!(status.0, t2);

    // A third success: only the newest success is kept.
    let t3 = t2 + jiff::SignedDuration::from_mins(1);
    finish_job(&jobs, &second, true, t2, t3).await;
    advance_to(&s.clock, t3);
    let third = job_name("tick", t3);
    eventually(WAIT, "the third job", || async { get(&jobs, &third).await }).await;
    finish_job(&jobs, &third, true, t3, t3).await;
    eventually(WAIT, "old successful jobs to be pruned", || async {
        (cron_jobs(&jobs, "tick").await == vec![third.clone()]).then_some(())
    })
    .await;
    event(&s, "tick", "SuccessfulDelete").await;
    event(&s, "tick", "SawCompletedJob").await;
}

#[tokio::test]
async fn cronjob_replace_replaces_the_running_job() {
    let s = setup(&[Which::CronJob], FAST).await;
    let cronjobs: Api<CronJob> = api(&s);
    let jobs: Api<Job> = api(&s);
    let cj = create(
        &cronjobs,
        cronjob(
            "swap",
            json!({"concurrencyPolicy": "Replace", "timeZone": "Asia/Kolkata"}),
        ),
    )
    .await;
    let t1 = first_minute(&cj);
    advance_to(&s.clock, t1);
    let first = job_name("swap", t1);
    let job = eventually(WAIT, "the first job", || async { get(&jobs, &first).await }).await;
    // The scheduled time is written in the CronJob's zone.
    let local = t1.to_zoned(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap());
    assert_eq!(
        job.annotations()["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        local.strftime("%Y-%m-%dT%H:%M:%S+05:30").to_string()
    );
    let t2 = t1 + jiff::SignedDuration::from_mins(1);
    advance_to(&s.clock, t2);
    let second = job_name("swap", t2);
    eventually(WAIT, "the first job replaced by the second", || async {
        (cron_jobs(&jobs, "swap").await == vec![second.clone()]).then_some(())
    })
    .await;
    let status = eventually(WAIT, "active to name the second job", || async {
        let status = get(&cronjobs, "swap").await?.status?;
        let active = status.active.clone()?;
        (active.len() == 1 && active[0].name.as_deref() == Some(second.as_str())).then_some(status)
    })
    .await;
    assert_eq!(status.last_schedule_time.unwrap().0, t2);
}

#[tokio::test]
async fn suspended_cronjob_waits_then_runs_only_the_latest_missed_time() {
    let s = setup(&[Which::CronJob], FAST).await;
    let cronjobs: Api<CronJob> = api(&s);
    let jobs: Api<Job> = api(&s);
    let cj = create(&cronjobs, cronjob("nap", json!({"suspend": true}))).await;
    let t1 = first_minute(&cj);
    advance_to(&s.clock, t1);
    settle().await;
    assert!(
        cron_jobs(&jobs, "nap").await.is_empty(),
        "a suspended cronjob ran"
    );

    // Three hours (180 runs) missed; resuming runs the latest only.
    s.clock.advance(Duration::from_secs(3 * 3600));
    let latest = t1 + jiff::SignedDuration::from_mins(180);
    cronjobs
        .patch(
            "nap",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    let name = job_name("nap", latest);
    eventually(WAIT, "the latest missed run", || async {
        get(&jobs, &name).await
    })
    .await;
    event(&s, "nap", "TooManyMissedTimes").await;
    settle().await;
    assert_eq!(cron_jobs(&jobs, "nap").await, vec![name]);
}

// ---- StatefulSet -------------------------------------------------------------

fn statefulset(name: &str, replicas: i32, policy: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "example.com/db:1"}]}
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }]
        }
    })
}

async fn pod_names(pods: &Api<Pod>, app: &str) -> Vec<String> {
    pods_of(pods, &format!("app={app}"))
        .await
        .iter()
        .map(|p| p.name_any())
        .collect()
}

/// Plays a node that holds pods while they terminate (a finalizer), so the
/// order of deletions can be seen.
async fn hold(pods: &Api<Pod>, name: &str, held: bool) {
    let finalizers = if held {
        json!(["test.skiff.dev/hold"])
    } else {
        json!(null)
    };
    pods.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .unwrap();
}

fn deleting(pod: &Option<Pod>) -> bool {
    pod.as_ref()
        .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
}

#[tokio::test]
async fn statefulset_creates_in_order_and_removes_in_reverse() {
    let s = setup(&[Which::StatefulSet], SLOW).await;
    let sets: Api<StatefulSet> = api(&s);
    let pods: Api<Pod> = api(&s);
    let set = create(&sets, statefulset("web", 3, "OrderedReady")).await;

    let web0 = eventually(WAIT, "web-0", || async { get(&pods, "web-0").await }).await;
    let labels = web0.labels();
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-0");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "0");
    assert!(labels["controller-revision-hash"].starts_with("web-"));
    let spec = web0.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-web-0"
    );
    let owner = &web0.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("StatefulSet", set.uid().unwrap().as_str(), Some(true))
    );

    // web-1 waits for web-0 to be Running and Ready.
    settle().await;
    assert_eq!(pod_names(&pods, "web").await, ["web-0"]);
    make_ready(&pods, "web-0").await;
    let web1 = eventually(WAIT, "web-1", || async { get(&pods, "web-1").await }).await;
    assert_eq!(
        web1.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-web-1"
    );
    settle().await;
    assert_eq!(pod_names(&pods, "web").await, ["web-0", "web-1"]);
    make_ready(&pods, "web-1").await;
    eventually(WAIT, "web-2", || async { get(&pods, "web-2").await }).await;
    make_ready(&pods, "web-2").await;
    let status = eventually(WAIT, "three ready replicas", || async {
        let status = get(&sets, "web").await?.status?;
        (status.ready_replicas == Some(3) && status.current_replicas == Some(3)).then_some(status)
    })
    .await;
    assert_eq!(status.replicas, 3);
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.available_replicas, Some(3));
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(
        status.observed_generation,
        get(&sets, "web").await.unwrap().metadata.generation
    );

    // Scale to 1: web-2 goes first, and web-1 only once web-2 is gone.
    hold(&pods, "web-1", true).await;
    hold(&pods, "web-2", true).await;
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "web-2 to be deleted", || async {
        deleting(&get(&pods, "web-2").await).then_some(())
    })
    .await;
    settle().await;
    assert!(
        !deleting(&get(&pods, "web-1").await),
        "web-1 deleted before web-2 was gone"
    );
    hold(&pods, "web-2", false).await;
    eventually(WAIT, "web-1 to be deleted", || async {
        deleting(&get(&pods, "web-1").await).then_some(())
    })
    .await;
    hold(&pods, "web-1", false).await;
    eventually(WAIT, "only web-0 left", || async {
        (pod_names(&pods, "web").await == ["web-0"]).then_some(())
    })
    .await;
    eventually(WAIT, "status.replicas = 1", || async {
        (get(&sets, "web").await?.status?.replicas == 1).then_some(())
    })
    .await;
    event(&s, "web", "SuccessfulDelete").await;
}

#[tokio::test]
async fn statefulset_rolls_out_a_new_template_from_the_highest_ordinal() {
    let s = setup(&[Which::StatefulSet], SLOW).await;
    let sets: Api<StatefulSet> = api(&s);
    let pods: Api<Pod> = api(&s);
    create(&sets, statefulset("db", 2, "Parallel")).await;
    // Parallel: both at once, without waiting for readiness.
    eventually(WAIT, "db-0 and db-1", || async {
        (pod_names(&pods, "db").await == ["db-0", "db-1"]).then_some(())
    })
    .await;
    make_ready(&pods, "db-0").await;
    make_ready(&pods, "db-1").await;
    let old = eventually(WAIT, "the first revision to be current", || async {
        let status = get(&sets, "db").await?.status?;
        (status.ready_replicas == Some(2)).then_some(status.current_revision?)
    })
    .await;

    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "example.com/db:2"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&image))
        .await
        .unwrap();
    let revision = |pod: &Pod| pod.labels()["controller-revision-hash"].clone();
    let new_db1 = eventually(WAIT, "db-1 at the new revision", || async {
        let pod = get(&pods, "db-1").await?;
        (revision(&pod) != old).then_some(pod)
    })
    .await;
    assert_eq!(
        new_db1.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("example.com/db:2")
    );
    // db-0 waits for the new db-1 to be ready.
    settle().await;
    assert_eq!(revision(&get(&pods, "db-0").await.unwrap()), old);
    make_ready(&pods, "db-1").await;
    eventually(WAIT, "db-0 at the new revision", || async {
        let pod = get(&pods, "db-0").await?;
        (revision(&pod) != old).then_some(())
    })
    .await;
    make_ready(&pods, "db-0").await;
    let status = eventually(WAIT, "the rollout to finish", || async {
        let status = get(&sets, "db").await?.status?;
        (status.current_revision != Some(old.clone()) && status.ready_replicas == Some(2))
            .then_some(status)
    })
    .await;
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.current_replicas, Some(2));
    let second = status.current_revision.unwrap();

    // With partition 1, only ordinals from 1 up move to the next template.
    let partitioned = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [{"name": "main", "image": "example.com/db:3"}]}}
    }});
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Strategic(&partitioned),
    )
    .await
    .unwrap();
    eventually(WAIT, "db-1 at the third revision", || async {
        let pod = get(&pods, "db-1").await?;
        (revision(&pod) != second).then_some(())
    })
    .await;
    make_ready(&pods, "db-1").await;
    let status = eventually(WAIT, "one updated replica", || async {
        let status = get(&sets, "db").await?.status?;
        (status.updated_replicas == Some(1) && status.ready_replicas == Some(2)).then_some(status)
    })
    .await;
    settle().await;
    assert_eq!(
        revision(&get(&pods, "db-0").await.unwrap()),
        second,
        "db-0 is below the partition"
    );
    assert_eq!(status.current_revision, Some(second));
    assert_eq!(status.current_replicas, Some(1));
}

#[tokio::test]
async fn suspended_job_runs_nothing_until_resumed() {
    let s = setup(&[Which::Job], FAST).await;
    let jobs: Api<Job> = api(&s);
    let pods: Api<Pod> = api(&s);
    let job = create(
        &jobs,
        json!({
            "metadata": {"name": "later"},
            "spec": {"suspend": true, "parallelism": 2, "completions": 2, "template": job_template("Never")}
        }),
    )
    .await;
    let selector = format!("batch.kubernetes.io/controller-uid={}", job.uid().unwrap());
    eventually(WAIT, "the Suspended condition", || async {
        condition(&get(&jobs, "later").await?, "Suspended").map(|_| ())
    })
    .await;
    settle().await;
    assert!(
        pods_of(&pods, &selector).await.is_empty(),
        "a suspended job ran pods"
    );
    assert!(
        get(&jobs, "later")
            .await
            .unwrap()
            .status
            .unwrap()
            .start_time
            .is_none()
    );
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "two pods after resuming", || async {
        (pods_of(&pods, &selector).await.len() == 2).then_some(())
    })
    .await;
    let resumed = get(&jobs, "later").await.unwrap();
    assert!(condition(&resumed, "Suspended").is_none());
    assert!(resumed.status.unwrap().start_time.is_some());
    // Suspending again deletes the running pods.
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "the pods to be deleted", || async {
        pods_of(&pods, &selector).await.is_empty().then_some(())
    })
    .await;
    event(&s, "later", "Resumed").await;
    event(&s, "later", "Suspended").await;
}
