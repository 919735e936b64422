//! One worker per pod: volumes, init containers, app containers with
//! restarts and probes, graceful termination, and the pod's status.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use parking_lot::Mutex;
use skiff_runtime::{Component, ComponentKind, ExitStatus, GuestError, Limits, Sandbox};

use crate::overlay::router::PodOutbound;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::{self, Downward, Sources, VolumeDir, VolumeRoots};
use super::probe::{self, Update};
use super::{HttpHandle, Shared, quantity};
use crate::images::PullPolicy;

/// Status changes within this window are written together: a pod whose
/// containers all start at once costs one write, not one per container.
const STATUS_COALESCE: Duration = Duration::from_millis(100);

/// How often an unwritten status (the API server was unreachable) is
/// retried.
const STATUS_RETRY: Duration = Duration::from_secs(3);

/// CPU time one HTTP request may use per core of `limits.cpu`. The
/// runtime's CPU limit is a budget per request or run, not a rate: a
/// request burning this much is a runaway, and is stopped.
const CPU_SECONDS_PER_CORE: u64 = 10;

/// The grace period when none is given.
const DEFAULT_GRACE: i64 = 30;

/// Asked of a pod's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Keep running.
    Run,
    /// Stop; in-flight work may finish until the deadline.
    Graceful(Instant),
    /// Stop now.
    Now,
}

/// Init or app container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    App,
}

/// How a container loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Exited 0 and is not restarted.
    Completed,
    /// Failed and is not restarted.
    Failed,
    /// The pod is stopping.
    Stopped,
}

/// One container's reported status.
struct Slot {
    status: ContainerStatus,
    /// Terminated and not going to restart.
    finished: bool,
    /// Has run at least once.
    ever_started: bool,
}

#[derive(Default)]
struct PodState {
    start_time: Option<Time>,
    init: Vec<Slot>,
    app: Vec<Slot>,
    initialized: bool,
    /// The pod failed as a whole: `(reason, message)` (eviction, a failed
    /// init container that is not restarted).
    failed: Option<(String, String)>,
    /// Each condition's status and when it last changed.
    conditions: HashMap<&'static str, (bool, Time)>,
}

impl PodState {
    fn phase(&self) -> &'static str {
        if self.failed.is_some() {
            return "Failed";
        }
        if !self.initialized {
            return "Pending";
        }
        if !self.app.is_empty() && self.app.iter().all(|s| s.finished) {
            let ok = self.app.iter().all(|s| {
                s.status
                    .state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            });
            return if ok { "Succeeded" } else { "Failed" };
        }
        if self.app.iter().any(|s| s.ever_started) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn slot(&mut self, kind: Kind, index: usize) -> &mut Slot {
        match kind {
            Kind::Init => &mut self.init[index],
            Kind::App => &mut self.app[index],
        }
    }
}

/// A pod's worker state, shared by its container tasks.
struct PodCtx {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    spec: PodSpec,
    pod: watch::Receiver<Pod>,
    state: Mutex<PodState>,
    changed: Notify,
    /// The pod as our last status write left it.
    written: Mutex<Option<Pod>>,
    stop: watch::Sender<Stop>,
    volumes: Mutex<HashMap<String, VolumeDir>>,
    /// The pod's address in the overlay, once assigned.
    ip: Mutex<Option<std::net::Ipv4Addr>>,
    /// The address the pod had before this worker (an agent restart).
    previous_ip: Option<String>,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

impl PodCtx {
    fn new(shared: Arc<Shared>, pod: Pod, rx: watch::Receiver<Pod>) -> PodCtx {
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone().unwrap_or_default();
        let slot = |c: &Container, prior: &Option<Vec<ContainerStatus>>, reason: &str| {
            let prior = prior.iter().flatten().find(|s| s.name == c.name);
            Slot {
                status: ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    ready: false,
                    started: Some(false),
                    // A restarted agent keeps counting where it left off.
                    restart_count: prior.map_or(0, |p| p.restart_count),
                    last_state: prior.and_then(|p| p.last_state.clone()),
                    state: Some(waiting(reason, None)),
                    ..ContainerStatus::default()
                },
                finished: false,
                ever_started: false,
            }
        };
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let app_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let state = PodState {
            start_time: previous.start_time.clone().or_else(|| Some(now())),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| slot(c, &previous.init_container_statuses, "PodInitializing"))
                .collect(),
            app: spec
                .containers
                .iter()
                .map(|c| slot(c, &previous.container_statuses, app_reason))
                .collect(),
            initialized: !has_init,
            ..PodState::default()
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        PodCtx {
            dir: shared.config.data_dir.join("pods").join(&uid),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid,
            spec,
            pod: rx,
            state: Mutex::new(state),
            changed: Notify::new(),
            written: Mutex::new(None),
            stop: watch::channel(Stop::Run).0,
            volumes: Mutex::new(HashMap::new()),
            ip: Mutex::new(None),
            previous_ip: previous.pod_ip.clone(),
            shared,
        }
    }

    fn pod_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn update(&self, f: impl FnOnce(&mut PodState)) {
        f(&mut self.state.lock());
        self.changed.notify_one();
    }

    fn update_slot(&self, kind: Kind, index: usize, f: impl FnOnce(&mut Slot)) {
        self.update(|state| f(state.slot(kind, index)));
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() != Stop::Run
    }

    /// Asks the containers to stop; a later request may only hurry it.
    fn begin_stop(&self, stop: Stop) {
        self.stop.send_if_modified(|current| {
            let hurry = match (*current, stop) {
                (Stop::Run, _) => true,
                (Stop::Graceful(a), Stop::Graceful(b)) => b < a,
                (Stop::Graceful(_), Stop::Now) => true,
                _ => false,
            };
            if hurry {
                *current = stop;
            }
            hurry
        });
    }

    /// Resolves once the pod is asked to stop.
    async fn stopped(&self) -> Stop {
        let mut rx = self.stop.subscribe();
        match rx.wait_for(|s| *s != Stop::Run).await {
            Ok(stop) => *stop,
            Err(_) => Stop::Now,
        }
    }

    /// Sleeps `delay`; `false` if the pod was asked to stop meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => !self.stopping(),
            _ = self.stopped() => false,
        }
    }

    fn container(&self, kind: Kind, index: usize) -> &Container {
        match kind {
            Kind::Init => &self.spec.init_containers.as_ref().expect("init containers")[index],
            Kind::App => &self.spec.containers[index],
        }
    }

    fn key(&self, container: &str) -> super::logs::ContainerKey {
        (
            self.namespace.clone(),
            self.name.clone(),
            container.to_owned(),
        )
    }

    /// Pulls and loads the container's image: the component and its digest,
    /// or the waiting reason and message.
    async fn load(&self, container: &Container) -> Result<(Component, String), (String, String)> {
        let image = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_image(container.image_pull_policy.as_deref(), &image);
        let pulled = self
            .shared
            .images
            .pull(&image, policy)
            .await
            .map_err(|e| (e.reason().to_owned(), e.to_string()))?;
        let lock = self
            .shared
            .loading
            .lock()
            .entry(pulled.digest.clone())
            .or_default()
            .clone();
        let _loading = lock.lock().await;
        // Loaded already (by an earlier pod, or another while this one
        // waited): no file to read and hash.
        if let Some(component) = self.shared.runtime.loaded(&pulled.digest) {
            return Ok((component, pulled.digest));
        }
        let runtime = self.shared.runtime.clone();
        let path = pulled.path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read the pulled component {}: {e}", path.display()))?;
            runtime.load(&image, &bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?
        .map_err(|message| ("CreateContainerError".to_owned(), message))?;
        Ok((loaded.0, pulled.digest))
    }

    /// The container's sandbox: arguments, environment, volumes, limits.
    async fn sandbox(&self, container: &Container) -> Result<Sandbox, String> {
        let pod = self.pod.borrow().clone();
        let mut sources = Sources::new(self.shared.client.clone(), &self.namespace);
        let ip = (*self.ip.lock()).ok_or("the pod has no address yet")?;
        let (pod_ip, host_ip) = (ip.to_string(), self.shared.config.node_ip.to_string());
        let downward = Downward {
            pod: &pod,
            pod_ip: &pod_ip,
            host_ip: &host_ip,
            node_cpu_millis: self.shared.config.cpu_millis,
            node_memory: self.shared.config.memory_bytes,
        };
        let env = config::environment(&mut sources, container, &downward).await?;
        let dirs = config::mounts(container, &self.volumes.lock())?;
        let expand = |s: &String| config::expand(s, &env);
        let mut args: Vec<String> = match &container.command {
            Some(command) if !command.is_empty() => command.iter().map(expand).collect(),
            _ => vec![container.name.clone()],
        };
        args.extend(container.args.iter().flatten().map(expand));
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
        let limit = |name: &str| limits.and_then(|l| l.get(name)).map(|q| q.0.as_str());
        let memory = limit("memory").and_then(quantity::units);
        let cpu = limit("cpu")
            .and_then(quantity::milli)
            .map(|millis| Duration::from_millis(millis.saturating_mul(CPU_SECONDS_PER_CORE)));
        let mut sandbox = Sandbox::default().args(args).limits(Limits {
            memory,
            cpu,
            deadline: None,
        });
        sandbox.env = env;
        sandbox.dirs = dirs;
        sandbox.outbound = Arc::new(PodOutbound::new(
            self.shared.network.router.clone(),
            &self.namespace,
            &self.name,
            ip.into(),
            pod.metadata.annotations.as_ref(),
        ));
        Ok(sandbox)
    }

    /// The status to report now.
    fn build_status(&self) -> PodStatus {
        let current = self.pod.borrow().status.clone().unwrap_or_default();
        let mut state = self.state.lock();
        let phase = state.phase();
        let time = now();
        let all_ready = state.app.iter().all(|s| s.status.ready);
        let unready: Vec<&str> = state
            .app
            .iter()
            .filter(|s| !s.status.ready)
            .map(|s| s.status.name.as_str())
            .collect();
        let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
        let unfinished_init: Vec<&str> = state
            .init
            .iter()
            .filter(|s| !s.finished)
            .map(|s| s.status.name.as_str())
            .collect();
        let init_message = format!(
            "containers with incomplete status: [{}]",
            unfinished_init.join(" ")
        );
        let completed = phase == "Succeeded" || phase == "Failed";
        let mine: Vec<(&'static str, bool, Option<&str>, Option<String>)> = vec![
            ("PodReadyToStartContainers", true, None, None),
            (
                "Initialized",
                state.initialized,
                (!state.initialized).then_some("ContainersNotInitialized"),
                (!state.initialized).then(|| init_message.clone()),
            ),
            (
                "Ready",
                all_ready && !completed,
                if completed {
                    Some("PodCompleted")
                } else {
                    (!all_ready).then_some("ContainersNotReady")
                },
                (!all_ready && !completed).then(|| not_ready_message.clone()),
            ),
            (
                "ContainersReady",
                all_ready && !completed,
                if completed {
                    Some("PodCompleted")
                } else {
                    (!all_ready).then_some("ContainersNotReady")
                },
                (!all_ready && !completed).then(|| not_ready_message.clone()),
            ),
            ("PodScheduled", true, None, None),
        ];
        let mut conditions: Vec<PodCondition> = Vec::new();
        for (kind, status, reason, message) in mine {
            let since = match state.conditions.get(kind) {
                Some((was, since)) if *was == status => since.clone(),
                _ => {
                    // Keep a transition time already reported by someone
                    // else (the scheduler's PodScheduled) when it agrees.
                    let reported = current
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == kind && (c.status == "True") == status)
                        .and_then(|c| c.last_transition_time.clone());
                    let since = reported.unwrap_or_else(|| time.clone());
                    state.conditions.insert(kind, (status, since.clone()));
                    since
                }
            };
            conditions.push(PodCondition {
                type_: kind.to_owned(),
                status: if status { "True" } else { "False" }.to_owned(),
                reason: reason.map(str::to_owned),
                message,
                last_transition_time: Some(since),
                ..PodCondition::default()
            });
        }
        // Conditions of other writers (readiness gates, disruption) stay.
        for other in current.conditions.iter().flatten() {
            if !conditions.iter().any(|c| c.type_ == other.type_) {
                conditions.push(other.clone());
            }
        }
        let host_ip = self.shared.config.node_ip.to_string();
        let pod_ip = self
            .ip
            .lock()
            .map(|ip| ip.to_string())
            .or_else(|| current.pod_ip.clone());
        let (reason, message) = match &state.failed {
            Some((reason, message)) => (Some(reason.clone()), Some(message.clone())),
            None => (None, None),
        };
        PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: pod_ip.clone(),
            pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
            start_time: state.start_time.clone(),
            container_statuses: Some(state.app.iter().map(|s| s.status.clone()).collect()),
            init_container_statuses: (!state.init.is_empty())
                .then(|| state.init.iter().map(|s| s.status.clone()).collect()),
            reason,
            message,
            ..current
        }
    }

    /// Writes `status` to `pods/NAME/status`, re-reading the pod and
    /// retrying on a conflict. A pod that is gone is not an error.
    async fn write_status(&self, status: &PodStatus) -> Result<(), kube::Error> {
        // Our own last write may be newer than what the watch delivered
        // so far: start from it then, rather than from a stale copy that
        // would cost a conflict and a read.
        let watched = self.pod.borrow().clone();
        let pod = match self.written.lock().clone() {
            Some(ours) if newer(&ours, &watched) => ours,
            _ => watched,
        };
        let written = replace_status(&self.shared.client, pod, &self.uid, status.clone()).await?;
        *self.written.lock() = written;
        Ok(())
    }

    /// Whether the watch has not yet delivered our own last status write.
    /// Once it has, our copy of the pod is dropped (the watched one is as
    /// new): a node of 10,000 idle pods would otherwise hold each twice.
    fn watch_behind(&self) -> bool {
        let mut written = self.written.lock();
        let behind = written
            .as_ref()
            .is_some_and(|ours| newer(ours, &self.pod.borrow()));
        if !behind {
            *written = None;
        }
        behind
    }

    /// Refreshes ConfigMap and Secret volumes; evicts the pod if an
    /// `emptyDir` outgrew its `sizeLimit`.
    async fn housekeeping(&self) {
        let mut volumes = self.volumes.lock().clone();
        let mut sources = Sources::new(self.shared.client.clone(), &self.namespace);
        for (name, volume) in volumes.iter_mut() {
            if let Some(projected) = &mut volume.projected {
                match config::refresh(&mut sources, projected, &volume.host, name).await {
                    Ok(true) => {
                        tracing::debug!(pod = %self.pod_name(), volume = %name, "volume updated")
                    }
                    Ok(false) => {}
                    Err(message) => {
                        tracing::warn!(pod = %self.pod_name(), %message, "cannot refresh a volume")
                    }
                }
            }
        }
        *self.volumes.lock() = volumes.clone();
        for (name, volume) in volumes {
            let Some(limit) = volume.size_limit else {
                continue;
            };
            let dir = volume.host.clone();
            let used = tokio::task::spawn_blocking(move || config::disk_usage(&dir))
                .await
                .unwrap_or(0);
            if used > limit {
                let message =
                    format!("Usage of EmptyDir volume \"{name}\" exceeds the limit \"{limit}\".");
                tracing::warn!(pod = %self.pod_name(), %message, "evicting the pod");
                self.update(|state| state.failed = Some(("Evicted".to_owned(), message)));
                self.begin_stop(Stop::Now);
                return;
            }
        }
    }
}

/// Whether `a` is a later version of the object than `b`, by their
/// resourceVersions (decimal revisions here, as etcd's are); `false` when
/// either is not a number.
fn newer(a: &Pod, b: &Pod) -> bool {
    let revision = |p: &Pod| p.metadata.resource_version.as_deref()?.parse::<u64>().ok();
    matches!((revision(a), revision(b)), (Some(a), Some(b)) if a > b)
}

/// Replaces a pod's status with optimistic concurrency: on a conflict the
/// pod is read again and the write retried (a few times). Returns the pod
/// as written (`None` when it is gone or another pod took its name).
async fn replace_status(
    client: &kube::Client,
    mut pod: Pod,
    uid: &str,
    status: PodStatus,
) -> Result<Option<Pod>, kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut attempts = 0;
    loop {
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Ok(None);
        }
        pod.status = Some(status.clone());
        match api
            .replace_status(&name, &PostParams::default(), &pod)
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => {
                attempts += 1;
                match api.get_opt(&name).await? {
                    Some(fresh) => pod = fresh,
                    None => return Ok(None),
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Marks a pod the node cannot take as Failed (node-side admission).
pub(crate) async fn reject(shared: &Shared, pod: &Pod, reason: &str, message: &str) {
    let status = PodStatus {
        phase: Some("Failed".to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        start_time: Some(now()),
        ..pod.status.clone().unwrap_or_default()
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Err(err) = replace_status(&shared.client, pod.clone(), &uid, status).await {
        tracing::warn!(error = %err, "cannot report a rejected pod");
    }
}

/// The pod's worker: runs it until it is deleted (or gone, or the agent
/// stops).
pub(crate) async fn run(shared: Arc<Shared>, mut rx: watch::Receiver<Pod>, done: Arc<AtomicBool>) {
    let pod = rx.borrow_and_update().clone();
    let ctx = Arc::new(PodCtx::new(shared, pod.clone(), rx.clone()));
    tracing::info!(pod = %ctx.pod_name(), "starting pod");
    let writer = AbortOnDrop(tokio::spawn(status_writer(ctx.clone())));
    let mut agent_stop = ctx.shared.stop.subscribe();
    let containers = run_containers(ctx.clone());
    tokio::pin!(containers);
    let (mut containers_done, mut gone, mut deleting, mut shutting_down) =
        (false, false, false, *agent_stop.borrow());
    let grace = |pod: &Pod| {
        let seconds = pod
            .metadata
            .deletion_grace_period_seconds
            .or(ctx.spec.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE)
            .max(0);
        Instant::now() + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    };
    if pod.metadata.deletion_timestamp.is_some() {
        deleting = true;
        ctx.begin_stop(Stop::Graceful(grace(&pod)));
    }
    if shutting_down {
        ctx.begin_stop(Stop::Now);
    }
    let mut tick = tokio::time::interval(ctx.shared.config.volume_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if containers_done && (gone || deleting || shutting_down) {
            break;
        }
        tokio::select! {
            () = &mut containers, if !containers_done => {
                containers_done = true;
                if matches!(ctx.state.lock().phase(), "Succeeded" | "Failed") {
                    done.store(true, Ordering::Relaxed);
                    tracing::info!(pod = %ctx.pod_name(), phase = ctx.state.lock().phase(), "pod finished");
                }
            }
            changed = rx.changed(), if !gone => match changed {
                Err(_) => {
                    gone = true;
                    ctx.begin_stop(Stop::Now);
                }
                Ok(()) => {
                    let pod = rx.borrow_and_update().clone();
                    if !deleting && pod.metadata.deletion_timestamp.is_some() {
                        deleting = true;
                        tracing::info!(pod = %ctx.pod_name(), "pod deleted; stopping it");
                        ctx.begin_stop(Stop::Graceful(grace(&pod)));
                    }
                    ctx.changed.notify_one();
                }
            },
            _ = agent_stop.changed(), if !shutting_down => {
                shutting_down = true;
                let deadline = grace(&pod).min(Instant::now() + Duration::from_secs(30));
                ctx.begin_stop(Stop::Graceful(deadline));
            }
            _ = tick.tick(), if !containers_done => ctx.housekeeping().await,
        }
    }
    if deleting && !gone && !shutting_down {
        // Report how the containers ended, then finish the deletion the
        // API server is waiting for.
        if let Err(err) = ctx.write_status(&ctx.build_status()).await {
            tracing::debug!(pod = %ctx.pod_name(), error = %err, "cannot write the final status");
        }
        drop(writer);
        delete_for_good(&ctx, &mut agent_stop).await;
    } else {
        drop(writer);
    }
    if !shutting_down || gone {
        cleanup(&ctx).await;
    }
    done.store(true, Ordering::Relaxed);
    tracing::info!(pod = %ctx.pod_name(), "pod worker ended");
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes the pod with grace 0 (and its uid as precondition), retrying
/// while the API server is unreachable.
async fn delete_for_good(ctx: &PodCtx, agent_stop: &mut watch::Receiver<bool>) {
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ctx.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(ctx.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match api.delete(&ctx.name, &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(err) => {
                tracing::warn!(pod = %ctx.pod_name(), error = %err, "cannot delete the pod; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = agent_stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Forgets the pod: handles, logs, its directory (emptyDirs, ConfigMap and
/// Secret files).
async fn cleanup(ctx: &PodCtx) {
    ctx.shared.network.release(&ctx.uid);
    ctx.shared
        .handles
        .lock()
        .retain(|(ns, pod, _), _| !(ns == &ctx.namespace && pod == &ctx.name));
    ctx.shared.logs.remove_pod(&ctx.namespace, &ctx.name);
    let dir = ctx.dir.clone();
    if let Err(err) = tokio::fs::remove_dir_all(&dir).await
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the pod's directory");
    }
}

/// Writes the status whenever it changed. A change of phase or of the
/// Ready condition (what clients and the endpoints controller wait for) is
/// written at once; other changes are coalesced for `STATUS_COALESCE`.
async fn status_writer(ctx: Arc<PodCtx>) {
    let mut written: Option<serde_json::Value> = None;
    let mut written_milestone = None;
    let mut retry = tokio::time::interval(STATUS_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.changed.notified() => {}
            _ = retry.tick() => {}
        }
        let mut status = ctx.build_status();
        if written_milestone.as_ref() == Some(&milestone(&status)) {
            // Coalesce minor changes, but a milestone reached meanwhile
            // (the container that was starting is now Ready) ends the
            // wait at once.
            let deadline = tokio::time::Instant::now() + STATUS_COALESCE;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = ctx.changed.notified() => {}
                }
                if written_milestone.as_ref() != Some(&milestone(&ctx.build_status())) {
                    break;
                }
            }
            status = ctx.build_status();
        }
        let value = serde_json::to_value(&status).unwrap_or_default();
        // Someone else may have changed what the API holds since our last
        // write (the node lifecycle controller marks a silent node's pods
        // not Ready): rewrite then, even if our own view did not change.
        // (A watch still behind our own write is not someone else's.)
        let held = ctx.pod.borrow().status.as_ref().map(milestone);
        let behind = ctx.watch_behind();
        let overridden = written_milestone.is_some() && held != written_milestone && !behind;
        if written.as_ref() == Some(&value) && !overridden {
            continue;
        }
        match ctx.write_status(&status).await {
            Ok(()) => {
                written = Some(value);
                written_milestone = Some(milestone(&status));
            }
            Err(err) => {
                tracing::debug!(pod = %ctx.pod_name(), error = %err, "cannot write the pod's status; will retry");
            }
        }
    }
}

/// The part of a status whose change is written without delay: the phase
/// and whether the pod is Ready.
fn milestone(status: &PodStatus) -> (Option<String>, bool) {
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (status.phase.clone(), ready)
}

/// Volumes, then init containers in order, then the app containers
/// together. Returns when every container has finished for good or the
/// pod is stopping.
async fn run_containers(ctx: Arc<PodCtx>) {
    let roots = VolumeRoots {
        pod_dir: &ctx.dir,
        data_dir: &ctx.shared.config.data_dir,
        allow_host_path: ctx.shared.config.allow_host_path,
    };
    if !assign_address(&ctx).await {
        return;
    }
    tracing::debug!(pod = %ctx.pod_name(), "address assigned");
    loop {
        let mut sources = Sources::new(ctx.shared.client.clone(), &ctx.namespace);
        let volumes = ctx.spec.volumes.clone().unwrap_or_default();
        match config::prepare_volumes(&mut sources, &ctx.namespace, &volumes, &roots).await {
            Ok(volumes) => {
                *ctx.volumes.lock() = volumes;
                tracing::debug!(pod = %ctx.pod_name(), "volumes ready");
                break;
            }
            Err(message) => {
                tracing::warn!(pod = %ctx.pod_name(), %message, "cannot mount the pod's volumes");
                set_waiting_message(&ctx, &format!("MountVolume failed: {message}"));
                if !ctx.pause(ctx.shared.config.volume_refresh).await {
                    return;
                }
            }
        }
    }
    let init_count = ctx.spec.init_containers.as_ref().map_or(0, Vec::len);
    for index in 0..init_count {
        match container_loop(&ctx, Kind::Init, index).await {
            Outcome::Completed => {}
            Outcome::Failed => {
                let name = ctx.container(Kind::Init, index).name.clone();
                ctx.update(|state| {
                    state.failed = Some((
                        "InitContainerFailed".to_owned(),
                        format!("init container {name:?} failed"),
                    ));
                });
                return;
            }
            Outcome::Stopped => return,
        }
    }
    ctx.update(|state| {
        state.initialized = true;
        for slot in &mut state.app {
            slot.status.state = Some(waiting("ContainerCreating", None));
        }
    });
    let app = (0..ctx.spec.containers.len()).map(|index| container_loop(&ctx, Kind::App, index));
    futures::future::join_all(app).await;
}

/// Gives the pod its overlay address, waiting (with the reason in the
/// containers' status) while the node has no podCIDR. False when the pod
/// stops first.
async fn assign_address(ctx: &Arc<PodCtx>) -> bool {
    let network = &ctx.shared.network;
    if !network.is_ready() {
        set_waiting_message(
            ctx,
            "network not ready: the node has no podCIDR yet (is the node-ipam controller running?)",
        );
    }
    let mut stop = ctx.stop.subscribe();
    let assigned = tokio::select! {
        assigned = network.address(&ctx.uid, ctx.previous_ip.as_deref()) => assigned,
        _ = stop.wait_for(|s| !matches!(s, Stop::Run)) => return false,
    };
    match assigned {
        Ok(ip) => {
            *ctx.ip.lock() = Some(ip);
            set_waiting_message(ctx, "");
            true
        }
        Err(message) => {
            tracing::warn!(pod = %ctx.pod_name(), %message, "cannot give the pod an address");
            ctx.update(|state| state.failed = Some(("NetworkUnavailable".to_owned(), message)));
            false
        }
    }
}

/// Sets (or with "" clears) the message of every waiting container.
fn set_waiting_message(ctx: &PodCtx, message: &str) {
    ctx.update(|state| {
        for slot in state.init.iter_mut().chain(state.app.iter_mut()) {
            let reason = slot
                .status
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .unwrap_or_else(|| "ContainerCreating".to_owned());
            let message = (!message.is_empty()).then(|| message.to_owned());
            slot.status.state = Some(waiting(&reason, message));
        }
    });
}

/// How one instance ended.
struct Exit {
    code: i32,
    reason: String,
    message: Option<String>,
}

impl Exit {
    fn of(result: Result<ExitStatus, GuestError>) -> Exit {
        match result {
            Ok(status) => Exit {
                code: status.code,
                reason: if status.success() {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned(),
                message: None,
            },
            Err(err) => Exit {
                // 137 is what a kubelet reports for a killed container
                // (128 + SIGKILL).
                code: if matches!(
                    err,
                    GuestError::MemoryLimit { .. }
                        | GuestError::CpuLimit { .. }
                        | GuestError::Deadline { .. }
                        | GuestError::Stopped
                ) {
                    137
                } else {
                    1
                },
                reason: err.reason().to_owned(),
                message: err.to_string().lines().next().map(str::to_owned),
            },
        }
    }
}

/// Runs one container for as long as its pod wants it: pull, start,
/// supervise, restart with backoff per the restart policy.
async fn container_loop(ctx: &Arc<PodCtx>, kind: Kind, index: usize) -> Outcome {
    let container = ctx.container(kind, index).clone();
    let policy = ctx.spec.restart_policy.as_deref().unwrap_or("Always");
    let config = &ctx.shared.config;
    let mut backoff = config.restart_backoff;
    let mut pull_backoff = config.restart_backoff;
    loop {
        if ctx.stopping() {
            return Outcome::Stopped;
        }
        let (component, digest) = match ctx.load(&container).await {
            Ok(loaded) => {
                pull_backoff = config.restart_backoff;
                loaded
            }
            Err((reason, message)) => {
                tracing::warn!(pod = %ctx.pod_name(), container = %container.name, %reason, %message, "cannot start container");
                ctx.update_slot(kind, index, |slot| {
                    slot.status.state = Some(waiting(&reason, Some(message.clone())));
                });
                // Show the error for a moment, then the backoff, as a
                // kubelet alternates ErrImagePull and ImagePullBackOff.
                if !ctx.pause(pull_backoff.min(Duration::from_secs(1))).await {
                    return Outcome::Stopped;
                }
                if reason == "ErrImagePull" {
                    let image = container.image.clone().unwrap_or_default();
                    ctx.update_slot(kind, index, |slot| {
                        slot.status.state = Some(waiting(
                            "ImagePullBackOff",
                            Some(format!("Back-off pulling image {image:?}: {message}")),
                        ));
                    });
                }
                if !ctx.pause(pull_backoff).await {
                    return Outcome::Stopped;
                }
                pull_backoff = (pull_backoff * 2).min(config.max_restart_backoff);
                continue;
            }
        };
        tracing::debug!(pod = %ctx.pod_name(), container = %container.name, "component loaded");
        let sandbox = match ctx.sandbox(&container).await {
            Ok(sandbox) => sandbox,
            Err(message) => {
                tracing::warn!(pod = %ctx.pod_name(), container = %container.name, %message, "cannot configure container");
                ctx.update_slot(kind, index, |slot| {
                    slot.status.state = Some(waiting("CreateContainerConfigError", Some(message)));
                });
                if !ctx.pause(backoff).await {
                    return Outcome::Stopped;
                }
                backoff = (backoff * 2).min(config.max_restart_backoff);
                continue;
            }
        };
        let instance = ctx.shared.logs.start_instance(ctx.key(&container.name));
        let sandbox = sandbox.log(instance.log.clone());
        let started_at = now();
        let started = Instant::now();
        ctx.update_slot(kind, index, |slot| {
            let status = &mut slot.status;
            status.image_id = digest.clone();
            status.container_id = Some(format!(
                "skiff://{}/{}/{}",
                ctx.uid, container.name, status.restart_count
            ));
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..ContainerState::default()
            });
            status.started = Some(kind == Kind::Init);
            status.ready = false;
            slot.ever_started = true;
        });
        tracing::info!(pod = %ctx.pod_name(), container = %container.name, kind = %component.kind(), "container started");
        let exit = match (kind, component.kind()) {
            (Kind::App, ComponentKind::Http) => {
                run_http(ctx, index, &container, component, sandbox).await
            }
            (_, ComponentKind::Command) => {
                run_command(ctx, kind, index, &container, component, sandbox).await
            }
            (Kind::Init, ComponentKind::Http) => Exit {
                code: 1,
                reason: "Error".to_owned(),
                message: Some(
                    "an init container must be a wasi:cli/run component; this one serves HTTP"
                        .to_owned(),
                ),
            },
        };
        instance.end();
        tracing::info!(pod = %ctx.pod_name(), container = %container.name, code = exit.code, reason = %exit.reason, "container ended");
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit.code,
                reason: Some(exit.reason.clone()),
                message: exit.message.clone(),
                started_at: Some(started_at),
                finished_at: Some(now()),
                container_id: None,
                signal: None,
            }),
            ..ContainerState::default()
        };
        let restart = !ctx.stopping()
            && match (kind, policy) {
                (_, "Never") => false,
                (Kind::Init, _) | (Kind::App, "OnFailure") => exit.code != 0,
                _ => true,
            };
        if !restart {
            ctx.update_slot(kind, index, |slot| {
                slot.status.state = Some(terminated);
                slot.status.ready = kind == Kind::Init && exit.code == 0;
                slot.status.started = Some(false);
                slot.finished = true;
            });
            return if ctx.stopping() {
                Outcome::Stopped
            } else if exit.code == 0 {
                Outcome::Completed
            } else {
                Outcome::Failed
            };
        }
        // A container that ran well for a while starts its backoff afresh.
        if started.elapsed() > config.max_restart_backoff * 2 {
            backoff = config.restart_backoff;
        }
        let message = format!(
            "back-off {backoff:?} restarting failed container={} pod={}_{}({})",
            container.name, ctx.name, ctx.namespace, ctx.uid
        );
        ctx.update_slot(kind, index, |slot| {
            slot.status.last_state = Some(terminated);
            slot.status.state = Some(waiting("CrashLoopBackOff", Some(message)));
            slot.status.ready = false;
            slot.status.started = Some(false);
        });
        if !ctx.pause(backoff).await {
            return Outcome::Stopped;
        }
        backoff = (backoff * 2).min(config.max_restart_backoff);
        ctx.update_slot(kind, index, |slot| slot.status.restart_count += 1);
    }
}

fn on_probe(ctx: &Arc<PodCtx>, kind: Kind, index: usize) -> impl Fn(Update) + Send + Sync {
    let ctx = ctx.clone();
    move |update| {
        ctx.update_slot(kind, index, |slot| match update {
            Update::Started => slot.status.started = Some(true),
            Update::Ready(ready) => slot.status.ready = ready,
        });
    }
}

/// A `wasi:cli/run` container: runs until it exits, its liveness probe
/// fails, or the pod stops (a guest cannot be signalled, so stopping is
/// immediate).
async fn run_command(
    ctx: &Arc<PodCtx>,
    kind: Kind,
    index: usize,
    container: &Container,
    component: Component,
    sandbox: Sandbox,
) -> Exit {
    let task = tokio::spawn(async move { component.run(&sandbox).await });
    let mut task = AbortOnDrop(task);
    if kind == Kind::Init {
        // Init containers are not probed; they run to completion.
        return tokio::select! {
            result = &mut task.0 => Exit::of(result.unwrap_or_else(|e| Err(GuestError::Host { reason: e.to_string() }))),
            _ = ctx.stopped() => Exit::of(Err(GuestError::Stopped)),
        };
    }
    let on = on_probe(ctx, kind, index);
    tokio::select! {
        result = &mut task.0 => Exit::of(result.unwrap_or_else(|e| Err(GuestError::Host { reason: e.to_string() }))),
        killed = probe::supervise(container, None, &on) => Exit {
            code: 137,
            reason: "Error".to_owned(),
            message: Some(killed),
        },
        _ = ctx.stopped() => Exit::of(Err(GuestError::Stopped)),
    }
}

/// An HTTP container: serves in-process (its handle registered for the
/// overlay and probes) and on `127.0.0.1:hostPort` for each port with a
/// `hostPort`, until its liveness probe fails or the pod stops; in-flight
/// requests then finish within the grace period.
async fn run_http(
    ctx: &Arc<PodCtx>,
    index: usize,
    container: &Container,
    component: Component,
    sandbox: Sandbox,
) -> Exit {
    let key = ctx.key(&container.name);
    let handle = HttpHandle {
        component: component.clone(),
        sandbox: sandbox.clone(),
    };
    let (shutdown, _) = watch::channel(false);
    let mut servers = Vec::new();
    for port in container.ports.iter().flatten() {
        let Some(host_port) = port.host_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        // Loopback unless a hostIP is asked for: a pod is not exposed beyond
        // this machine by default.
        let ip = port
            .host_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, host_port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let mut stop = shutdown.subscribe();
                servers.push(AbortOnDrop(tokio::spawn(skiff_runtime::serve_listener(
                    listener,
                    component.clone(),
                    sandbox.clone(),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ))));
            }
            Err(err) => {
                return Exit {
                    code: 1,
                    reason: "Error".to_owned(),
                    message: Some(format!("cannot listen on hostPort {addr}: {err}")),
                };
            }
        }
    }
    ctx.shared
        .handles
        .lock()
        .insert(key.clone(), handle.clone());
    let on = on_probe(ctx, Kind::App, index);
    let (exit, deadline) = tokio::select! {
        killed = probe::supervise(container, Some(&handle), &on) => (
            Exit { code: 137, reason: "Error".to_owned(), message: Some(killed) },
            Instant::now(),
        ),
        stop = ctx.stopped() => (
            Exit { code: 0, reason: "Completed".to_owned(), message: None },
            match stop {
                Stop::Graceful(deadline) => deadline,
                _ => Instant::now(),
            },
        ),
    };
    ctx.shared.handles.lock().remove(&key);
    shutdown.send_replace(true);
    for server in &mut servers {
        if tokio::time::timeout_at(deadline, &mut server.0)
            .await
            .is_err()
        {
            server.0.abort();
        }
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(state: ContainerState, finished: bool, ever_started: bool) -> Slot {
        Slot {
            status: ContainerStatus {
                state: Some(state),
                ..ContainerStatus::default()
            },
            finished,
            ever_started,
        }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn phase_follows_the_containers() {
        let mut state = PodState {
            initialized: false,
            app: vec![slot(waiting("PodInitializing", None), false, false)],
            ..PodState::default()
        };
        assert_eq!(state.phase(), "Pending");
        state.initialized = true;
        assert_eq!(state.phase(), "Pending");
        state.app[0] = slot(waiting("CrashLoopBackOff", None), false, true);
        assert_eq!(state.phase(), "Running", "restarting counts as running");
        state.app = vec![
            slot(terminated(0), true, true),
            slot(terminated(0), true, true),
        ];
        assert_eq!(state.phase(), "Succeeded");
        state.app[1] = slot(terminated(3), true, true);
        assert_eq!(state.phase(), "Failed");
        state.app[1] = slot(terminated(3), false, true);
        assert_eq!(state.phase(), "Running", "one container still to restart");
        state.failed = Some(("Evicted".into(), "too big".into()));
        assert_eq!(state.phase(), "Failed");
    }

    #[test]
    fn newer_compares_revisions_as_numbers() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let at = |rv: Option<&str>| Pod {
            metadata: ObjectMeta {
                resource_version: rv.map(str::to_owned),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert!(
            newer(&at(Some("10")), &at(Some("9"))),
            "not compared as text"
        );
        assert!(!newer(&at(Some("9")), &at(Some("10"))));
        assert!(!newer(&at(Some("7")), &at(Some("7"))));
        assert!(!newer(&at(Some("opaque")), &at(Some("7"))));
        assert!(!newer(&at(None), &at(Some("7"))));
        assert!(!newer(&at(Some("7")), &at(None)));
    }
}
