//! The scheduler's I/O: watches nodes, pods and namespaces into a
//! [`Snapshot`] kept up to date event by event, feeds pending pods through
//! the [`Queue`] to the pure [`algorithm`], and writes the outcome back
//! (bindings, `PodScheduled` conditions, events) from tasks so that the
//! loop never waits on the API server.
//!
//! One task owns all the state, so a cycle reads the snapshot without
//! copying or locking it. A pod is *assumed* onto its node in the snapshot
//! as soon as it is chosen, before the binding is even sent: the next cycle
//! already counts it, and it is forgotten again only if the binding fails.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::task::JoinSet;

use super::SchedulerOptions;
use super::algorithm::{self, FitError};
use super::queue::Queue;
use super::snapshot::{PodInfo, Snapshot};
use crate::controllers::SystemClock;
use crate::controllers::events::{Recorder, reference};
use crate::informers::Informers;

/// Bindings and failure reports in flight at once; past this the loop
/// stops taking pods until some finish (it keeps applying watch events).
const MAX_IN_FLIGHT: usize = 256;

/// How many watch events in a row may be handled while pods wait to be
/// scheduled: events first keeps the snapshot fresh, this bound keeps a
/// busy cluster's event stream from starving scheduling.
const EVENT_STREAK: usize = 64;

/// What a finished write task reports back.
enum Outcome {
    /// A binding was attempted.
    Bound {
        uid: String,
        node: String,
        result: Result<(), kube::Error>,
    },
    /// A failure was reported (condition and event); nothing to do.
    Reported,
}

struct Scheduler {
    client: kube::Client,
    options: SchedulerOptions,
    recorder: Recorder,
    snapshot: Snapshot,
    queue: Queue,
    /// Pods chosen for a node whose binding the watch has not shown yet.
    assumed: HashMap<String, String>,
    next_start: usize,
    tasks: JoinSet<Outcome>,
    nodes_synced: bool,
    pods_synced: bool,
    /// Keys seen since each watch's last (re)list began.
    relisting_nodes: Option<HashSet<String>>,
    relisting_pods: Option<HashSet<String>>,
    relisting_namespaces: Option<HashSet<String>>,
}

pub(super) async fn run(
    client: kube::Client,
    informers: Informers,
    options: SchedulerOptions,
) -> anyhow::Result<()> {
    let mut nodes = informers.watch::<Node>();
    let mut namespaces = informers.watch::<Namespace>();
    let mut pods = informers.events::<Pod>();
    let recorder = Recorder::new(
        client.clone(),
        &options.scheduler_name,
        Arc::new(SystemClock),
    );
    let mut s = Scheduler {
        client,
        options,
        recorder,
        snapshot: Snapshot::new(),
        queue: Queue::new(),
        assumed: HashMap::new(),
        next_start: 0,
        tasks: JoinSet::new(),
        nodes_synced: false,
        pods_synced: false,
        relisting_nodes: None,
        relisting_pods: None,
        relisting_namespaces: None,
    };
    tracing::info!(scheduler = %s.options.scheduler_name, "scheduler started");
    let mut streak = 0usize;
    loop {
        let timer = s.queue.next_timer();
        let ready = s.nodes_synced
            && s.pods_synced
            && s.queue.has_active()
            && s.tasks.len() < MAX_IN_FLIGHT;
        // Watch events first: the snapshot should be as fresh as possible
        // before the next cycle reads it; but a steady stream of events
        // must not starve scheduling, so every EVENT_STREAK events one
        // cycle goes first.
        let schedule_first = ready && streak >= EVENT_STREAK;
        if !schedule_first {
            streak += 1;
        }
        tokio::select! {
            biased;
            () = std::future::ready(()), if schedule_first => {
                streak = 0;
                s.schedule_one();
            }
            Some(event) = nodes.next() => match event {
                Ok(event) => s.node_event(event),
                Err(error) => tracing::warn!(%error, "node watch failed; retrying"),
            },
            Some(event) = pods.next() => s.pod_event(event),
            Some(event) = namespaces.next() => match event {
                Ok(event) => s.namespace_event(event),
                Err(error) => tracing::warn!(%error, "namespace watch failed; retrying"),
            },
            Some(done) = s.tasks.join_next(), if !s.tasks.is_empty() => match done {
                Ok(outcome) => s.task_done(outcome),
                Err(error) => tracing::error!(%error, "scheduler task failed"),
            },
            () = sleep_until(timer), if timer.is_some() => s.queue.flush(Instant::now()),
            () = std::future::ready(()), if ready => {
                streak = 0;
                s.schedule_one();
            }
            else => anyhow::bail!("the scheduler's watches ended"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

fn uid_of(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone().filter(|u| !u.is_empty())
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl Scheduler {
    fn node_event(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.relisting_nodes = Some(HashSet::new()),
            watcher::Event::InitApply(node) => {
                if let (Some(seen), Some(name)) =
                    (self.relisting_nodes.as_mut(), node.metadata.name.clone())
                {
                    seen.insert(name);
                }
                self.apply_node(node);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_nodes.take() {
                    let gone: Vec<String> = self
                        .snapshot
                        .node_names()
                        .filter(|n| !seen.contains(*n))
                        .map(str::to_owned)
                        .collect();
                    for name in gone {
                        self.snapshot.remove_node(&name);
                    }
                }
                self.nodes_synced = true;
                self.queue.move_all(Instant::now());
            }
            watcher::Event::Apply(node) => self.apply_node(node),
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.snapshot.remove_node(name);
                }
            }
        }
    }

    fn apply_node(&mut self, node: Node) {
        if self.snapshot.set_node(node) {
            self.queue.move_all(Instant::now());
        }
    }

    fn namespace_event(&mut self, event: watcher::Event<Namespace>) {
        match event {
            watcher::Event::Init => self.relisting_namespaces = Some(HashSet::new()),
            watcher::Event::InitApply(ns) | watcher::Event::Apply(ns) => {
                let Some(name) = ns.metadata.name.clone() else {
                    return;
                };
                if let Some(seen) = self.relisting_namespaces.as_mut() {
                    seen.insert(name.clone());
                }
                let labels = ns.metadata.labels.unwrap_or_default();
                if self.snapshot.namespace_labels(&name) != Some(&labels) {
                    self.snapshot.set_namespace(&name, labels);
                    self.queue.move_all(Instant::now());
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_namespaces.take() {
                    let gone: Vec<String> = self
                        .snapshot
                        .namespace_names()
                        .filter(|n| !seen.contains(*n))
                        .map(str::to_owned)
                        .collect();
                    for name in gone {
                        self.snapshot.remove_namespace(&name);
                    }
                }
            }
            watcher::Event::Delete(ns) => {
                if let Some(name) = ns.metadata.name.as_deref() {
                    self.snapshot.remove_namespace(name);
                }
            }
        }
    }

    fn pod_event(&mut self, event: watcher::Event<Arc<Pod>>) {
        match event {
            watcher::Event::Init => self.relisting_pods = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (self.relisting_pods.as_mut(), uid_of(&pod)) {
                    seen.insert(uid);
                }
                self.apply_pod(pod);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting_pods.take() {
                    let gone: HashSet<String> = self
                        .snapshot
                        .pod_uids()
                        .chain(self.queue.uids())
                        .filter(|uid| !seen.contains(*uid))
                        .map(str::to_owned)
                        .collect();
                    for uid in gone {
                        self.forget_pod(&uid);
                    }
                }
                self.pods_synced = true;
            }
            watcher::Event::Apply(pod) => self.apply_pod(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = uid_of(&pod) {
                    self.forget_pod(&uid);
                }
            }
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        self.queue.remove(uid);
        self.assumed.remove(uid);
        if self.snapshot.remove_pod(uid).is_some() {
            self.queue.move_all(Instant::now());
        }
    }

    fn is_ours(&self, pod: &Pod) -> bool {
        let spec = pod.spec.as_ref();
        let name = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or(super::DEFAULT_SCHEDULER_NAME);
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        name == self.options.scheduler_name
            && !gated
            && !finished
            && pod.metadata.deletion_timestamp.is_none()
    }

    fn apply_pod(&mut self, pod: Arc<Pod>) {
        let Some(uid) = uid_of(&pod) else {
            return;
        };
        let now = Instant::now();
        if node_name(&pod).is_some() {
            // Bound: it takes room on its node from now on.
            self.assumed.remove(&uid);
            self.queue.remove(&uid);
            let before = self.snapshot.pod(&uid).map(|p| {
                (
                    p.labels().clone(),
                    self.snapshot.pod_node(&uid).map(str::to_owned),
                )
            });
            self.snapshot.set_pod(pod);
            let after = self.snapshot.pod(&uid).map(|p| {
                (
                    p.labels().clone(),
                    self.snapshot.pod_node(&uid).map(str::to_owned),
                )
            });
            // Our own binding confirmed, or a status update: nothing new
            // for the unschedulable pods.
            if before != after {
                self.queue.move_all(now);
            }
            return;
        }
        if self.assumed.contains_key(&uid) {
            // An older, unbound version while our binding is under way.
            if self.queue.contains(&uid) {
                self.queue.add_or_update(&uid, pod, now);
            }
            return;
        }
        if self.snapshot.remove_pod(&uid).is_some() {
            self.queue.move_all(now);
        }
        if self.is_ours(&pod) {
            self.queue.add_or_update(&uid, pod, now);
        } else {
            self.queue.remove(&uid);
        }
    }

    fn schedule_one(&mut self) {
        let Some((uid, pod)) = self.queue.pop() else {
            return;
        };
        let started = Instant::now();
        let info = PodInfo::new(pod.clone());
        let outcome = algorithm::schedule_with(
            &info,
            &self.snapshot,
            self.next_start,
            self.options.percentage_of_nodes_to_score,
        );
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        match outcome {
            Ok(result) => {
                let nodes = self.snapshot.nodes().len().max(1);
                self.next_start = (self.next_start + result.evaluated_nodes) % nodes;
                tracing::debug!(
                    pod = %name,
                    node = %result.node,
                    evaluated = result.evaluated_nodes,
                    feasible = result.feasible_nodes,
                    elapsed = ?started.elapsed(),
                    "scheduled"
                );
                self.snapshot.assume(info, result.node.clone());
                self.assumed.insert(uid.clone(), result.node.clone());
                let client = self.client.clone();
                let recorder = self.recorder.clone();
                self.tasks
                    .spawn(bind(client, recorder, pod, uid, result.node, name));
            }
            Err(error) => {
                tracing::debug!(pod = %name, %error, "unschedulable");
                self.queue.unschedulable(&uid, started);
                let client = self.client.clone();
                let recorder = self.recorder.clone();
                self.tasks
                    .spawn(report_unschedulable(client, recorder, pod, error));
            }
        }
    }

    fn task_done(&mut self, outcome: Outcome) {
        let Outcome::Bound { uid, node, result } = outcome else {
            return;
        };
        let Err(error) = result else {
            self.queue.remove(&uid);
            return;
        };
        // Forget the assumption, unless the watch already showed the truth.
        if self.assumed.get(&uid) == Some(&node) {
            self.assumed.remove(&uid);
            if self.snapshot.pod_node(&uid) == Some(node.as_str()) {
                self.snapshot.remove_pod(&uid);
            }
            self.queue.move_all(Instant::now());
        }
        match &error {
            kube::Error::Api(status) if status.code == 404 || status.code == 409 => {
                // Gone, or bound by someone else: the watch tells the rest.
                tracing::debug!(%uid, %error, "binding refused");
                self.queue.remove(&uid);
            }
            _ => {
                tracing::warn!(%uid, %node, %error, "binding failed; retrying");
                self.queue.error(&uid, Instant::now());
            }
        }
    }
}

/// POSTs the Binding and records `Scheduled`.
async fn bind(
    client: kube::Client,
    recorder: Recorder,
    pod: Arc<Pod>,
    uid: String,
    node: String,
    name: String,
) -> Outcome {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod_name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.clone()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let result = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod_name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map(drop);
    if result.is_ok() {
        tracing::info!(pod = %name, %node, "bound");
        recorder
            .normal(
                &reference(pod.as_ref()),
                "Scheduled",
                &format!("Successfully assigned {name} to {node}"),
            )
            .await;
    }
    Outcome::Bound { uid, node, result }
}

/// Sets `PodScheduled=False` (reason `Unschedulable`) when it is not
/// already saying the same, and records `FailedScheduling`.
async fn report_unschedulable(
    client: kube::Client,
    recorder: Recorder,
    pod: Arc<Pod>,
    error: FitError,
) -> Outcome {
    let message = error.to_string();
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let same = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message.as_str())
    });
    if !same {
        let since = current
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0)
            .unwrap_or_else(jiff::Timestamp::now);
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": Time(since),
        }]}});
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client, &namespace);
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!(pod = %name, %error, "could not set PodScheduled=False");
        }
    }
    recorder
        .warning(&reference(pod.as_ref()), "FailedScheduling", &message)
        .await;
    Outcome::Reported
}
