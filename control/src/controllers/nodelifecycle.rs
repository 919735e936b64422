//! The node-lifecycle controller, with Kubernetes' taint-based eviction:
//! nodes heartbeat through Leases in `kube-node-lease`; a node silent for
//! longer than [`Options::node_monitor_grace`](super::Options) has its
//! Ready condition set Unknown and is tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute), its pods
//! are marked not ready, and after their toleration of the taint (or
//! [`Options::pod_eviction_timeout`](super::Options)) they are evicted.
//! When the Lease is renewed the taints go; the agent sets Ready itself.
//!
//! A node's heartbeat is judged by when this controller saw it change, as
//! Kubernetes does, so clocks that disagree between nodes do not matter;
//! only the first sight of a node trusts the time written in its Lease.

pub mod taints;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::taints::Health;
use super::Context;
use super::events::{Recorder, reference};
use super::gc::informer::{is_status, reflect};

/// The namespace of the nodes' heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How often nodes are examined: an eighth of the grace period, within
/// Kubernetes' `--node-monitor-period` (5 s) at most, so a silent node is
/// noticed within a small fraction of its grace.
/// The least time between two passes woken by changes.
const MIN_PASS_GAP: Duration = Duration::from_millis(100);

fn monitor_period(grace: Duration) -> Duration {
    (grace / 8).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// When a node's heartbeat was last seen to move.
struct Heartbeat {
    /// The last heartbeat value seen (Lease renewTime, or the Ready
    /// condition's lastHeartbeatTime).
    value: Option<Timestamp>,
    /// When (by the controller's clock) the node last counted as alive.
    probe: Timestamp,
}

struct Monitor {
    ctx: Context,
    recorder: Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    heartbeats: HashMap<String, Heartbeat>,
    /// Pods this controller evicted, until they leave the cache.
    evicted: HashSet<String>,
    /// When a NoExecute taint without `timeAdded` was first seen.
    noticed: HashMap<String, Timestamp>,
}

/// The pods of each node, grouped from the shared pod cache on first
/// use in a pass.
struct PodsByNode {
    store: Store<Pod>,
    by_node: Option<HashMap<String, Vec<Arc<Pod>>>>,
}

impl PodsByNode {
    fn new(store: Store<Pod>) -> Self {
        PodsByNode {
            store,
            by_node: None,
        }
    }

    /// The pods bound to `node`.
    fn on(&mut self, node: &str) -> &[Arc<Pod>] {
        let store = &self.store;
        let by_node = self.by_node.get_or_insert_with(|| {
            let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
            for pod in store.state() {
                if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    by_node.entry(node).or_default().push(pod);
                }
            }
            by_node
        });
        by_node.get(node).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Runs the node-lifecycle controller until aborted.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (leases, leases_w) = reflector::store::<Lease>();
    let pods = ctx.informers.store::<Pod>();
    let wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();

    let w = wake.clone();
    let stream = reflect(ctx.informers.watch::<Node>(), nodes_w);
    tasks.spawn(stream.for_each(move |_| {
        w.notify_one();
        std::future::ready(())
    }));
    let w = wake.clone();
    let stream = reflect(
        watcher::watcher(
            Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
            watcher::Config::default(),
        ),
        leases_w,
    );
    tasks.spawn(stream.for_each(move |_| {
        w.notify_one();
        std::future::ready(())
    }));
    let stream = ctx.informers.events::<Pod>();
    tasks.spawn(stream.for_each(|_| std::future::ready(())));

    for ready in [
        nodes.wait_until_ready().await,
        leases.wait_until_ready().await,
        pods.wait_until_ready().await,
    ] {
        ready.context("a watch cache closed before it filled")?;
    }

    let mut monitor = Monitor {
        recorder: ctx.recorder("node-controller"),
        ctx,
        nodes,
        leases,
        pods,
        heartbeats: HashMap::new(),
        evicted: HashSet::new(),
        noticed: HashMap::new(),
    };
    tasks.spawn(async move {
        let period = monitor_period(monitor.ctx.options.node_monitor_grace);
        loop {
            let began = tokio::time::Instant::now();
            monitor.pass().await;
            tokio::select! {
                _ = wake.notified() => {
                    // A pass visits every node and pod: however many
                    // heartbeats arrive, at most one pass per MIN_PASS_GAP.
                    tokio::time::sleep_until(began + MIN_PASS_GAP.min(period)).await;
                }
                _ = tokio::time::sleep(period) => {}
            }
        }
    });

    match tasks.join_next().await {
        Some(Err(error)) => Err(error).context("a node-lifecycle task failed"),
        _ => anyhow::bail!("a node-lifecycle task ended"),
    }
}

impl Monitor {
    /// Examines every node once. Healthy nodes need nothing of their pods,
    /// so the pods are grouped by node only when some node needs them: a
    /// pass over a healthy cluster is O(nodes), not O(pods).
    async fn pass(&mut self) {
        let now = self.ctx.clock.now();
        let nodes = self.nodes.state();
        let mut pods = PodsByNode::new(self.pods.clone());
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.heartbeats.retain(|name, _| names.contains(name));
        if !self.evicted.is_empty() {
            let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.uid()).collect();
            self.evicted.retain(|uid| live.contains(uid));
        }
        self.noticed.retain(|name, _| names.contains(name));

        for node in nodes {
            if let Err(error) = self.examine(&node, &mut pods, now).await {
                tracing::warn!(node = %node.name_any(), error = %format!("{error:#}"), "cannot update the node's health");
            }
        }
    }

    /// The node's last heartbeat: its Lease's renewTime, else its Ready
    /// condition's lastHeartbeatTime.
    fn heartbeat_of(&self, node: &Node) -> Option<Timestamp> {
        let name = node.name_any();
        if let Some(lease) = self
            .leases
            .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE))
            && let Some(renew) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref())
        {
            return Some(renew.0);
        }
        ready_condition(node).and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0))
    }

    /// Whether the node's agent has been silent beyond the grace period.
    fn silent(&mut self, node: &Node, now: Timestamp) -> bool {
        let value = self.heartbeat_of(node);
        let name = node.name_any();
        let probe = match self.heartbeats.get_mut(&name) {
            Some(seen) => {
                if seen.value != value {
                    seen.value = value;
                    seen.probe = now;
                }
                seen.probe
            }
            None => {
                let written = value
                    .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    .unwrap_or(now);
                let probe = written.min(now);
                self.heartbeats.insert(name, Heartbeat { value, probe });
                probe
            }
        };
        let grace = jiff::SignedDuration::try_from(self.ctx.options.node_monitor_grace)
            .unwrap_or(jiff::SignedDuration::MAX);
        now.duration_since(probe) > grace
    }

    async fn examine(
        &mut self,
        node: &Arc<Node>,
        pods: &mut PodsByNode,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let name = node.name_any();
        let silent = self.silent(node, now);
        // Shared until a patch returns a newer one: most nodes are healthy
        // and need nothing written.
        let mut node: Arc<Node> = node.clone();
        let health = if silent {
            Health::Unreachable
        } else if ready_condition(&node).is_some_and(|c| c.status == "False") {
            Health::NotReady
        } else {
            Health::Ready
        };

        if silent {
            let conditions = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if let Some(conditions) = taints::unknown_conditions(&conditions, now) {
                let was_ready = ready_condition(&node).is_some_and(|c| c.status == "True");
                let patch = json!({
                    "metadata": {"resourceVersion": node.resource_version()},
                    "status": {"conditions": conditions},
                });
                node = match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(node) => Arc::new(node),
                    Err(e) if is_status(&e, 409) || is_status(&e, 404) => return Ok(()),
                    Err(e) => return Err(e).context("setting the node's conditions Unknown"),
                };
                tracing::info!(node = %name, "node stopped posting status: marked NotReady");
                if was_ready {
                    let message = format!("Node {name} status is now: NodeNotReady");
                    self.recorder
                        .normal(&reference(node.as_ref()), "NodeNotReady", &message)
                        .await;
                }
            }
            self.mark_pods_not_ready(pods.on(&name), now).await;
        }

        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let taints = match taints::desired_taints(&current, health, now) {
            Some(taints) => {
                let patch = json!({
                    "metadata": {"resourceVersion": node.resource_version()},
                    "spec": {"taints": if taints.is_empty() { json!(null) } else { json!(taints) }},
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 409) || is_status(&e, 404) => return Ok(()),
                    Err(e) => return Err(e).context("updating the node's taints"),
                }
                tracing::info!(node = %name, ?health, "node lifecycle taints updated");
                taints
            }
            None => current,
        };
        if taints.iter().any(|t| t.effect == "NoExecute") {
            self.evict(&name, &taints, pods.on(&name), now).await;
        } else {
            self.noticed.remove(&name);
        }
        Ok(())
    }

    /// Kubernetes' `MarkPodsNotReady`: the pods of a silent node are no
    /// longer Ready (nobody else will say so).
    async fn mark_pods_not_ready(&self, pods: &[Arc<Pod>], now: Timestamp) {
        for pod in pods {
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.as_ref()) else {
                continue;
            };
            if !conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status != "False")
            {
                continue;
            }
            let conditions: Vec<PodCondition> = conditions
                .iter()
                .cloned()
                .map(|mut c| {
                    if c.type_ == "Ready" && c.status != "False" {
                        c.status = "False".to_owned();
                        c.last_transition_time = Some(Time(taints::seconds(now)));
                    }
                    c
                })
                .collect();
            let ns = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            let patch = json!({
                "metadata": {"resourceVersion": pod.resource_version()},
                "status": {"conditions": conditions},
            });
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(updated) => {
                    self.recorder
                        .warning(&reference(&updated), "NodeNotReady", "Node is not ready")
                        .await;
                }
                Err(e) if is_status(&e, 409) || is_status(&e, 404) => {}
                Err(error) => {
                    tracing::warn!(pod = %pod.name_any(), namespace = %ns, %error, "cannot mark the pod not ready");
                }
            }
        }
    }

    /// Taint-based eviction: deletes the node's pods whose toleration of
    /// its NoExecute taints (it has some) has run out.
    async fn evict(
        &mut self,
        node: &str,
        taints: &[k8s_openapi::api::core::v1::Taint],
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) {
        let noticed = *self.noticed.entry(node.to_owned()).or_insert(now);
        for pod in pods {
            let Some(uid) = pod.uid() else { continue };
            if pod.metadata.deletion_timestamp.is_some() || self.evicted.contains(&uid) {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = taints::eviction_due(
                taints,
                &tolerations,
                self.ctx.options.pod_eviction_timeout,
                noticed,
            );
            if due.is_none_or(|due| due > now) {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            // As Kubernetes does: say why in a DisruptionTarget condition,
            // then delete.
            let mut conditions: Vec<PodCondition> = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.type_ != "DisruptionTarget")
                .collect();
            conditions.push(PodCondition {
                type_: "DisruptionTarget".to_owned(),
                status: "True".to_owned(),
                reason: Some("DeletionByTaintManager".to_owned()),
                message: Some("Taint manager: deleting due to NoExecute taint".to_owned()),
                last_transition_time: Some(Time(taints::seconds(now))),
                ..PodCondition::default()
            });
            let patch = json!({"status": {"conditions": conditions}});
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                && !is_status(&error, 404)
            {
                tracing::debug!(pod = %name, namespace = %ns, %error, "cannot add the DisruptionTarget condition");
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(pod = %name, namespace = %ns, node, "evicted a pod from a tainted node");
                    self.evicted.insert(uid);
                    let message = format!("Marking for deletion Pod {ns}/{name}");
                    self.recorder
                        .normal(&reference(pod.as_ref()), "TaintManagerEviction", &message)
                        .await;
                }
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(error) => {
                    tracing::warn!(pod = %name, namespace = %ns, %error, "cannot evict the pod");
                }
            }
        }
    }
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}
