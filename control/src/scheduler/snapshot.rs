//! What the scheduling algorithm sees of the cluster: the nodes, the pods
//! bound to each, and the namespaces' labels (for pod affinity's
//! `namespaceSelector`). Built incrementally from watch events by the
//! scheduler loop and read, never written, by [`super::algorithm`].
//!
//! Per node it keeps the sums the filters need on every cycle (requested
//! resources, pod count, pods per controller), so a cycle never re-adds the
//! pods of thousands of nodes.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Add, AddAssign, Sub};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, Pod, PodAffinityTerm, Taint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity;

/// The requests Kubernetes assumes for a container that names none, when
/// scoring (not when filtering): 100 millicores.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory assumed for a container that requests none, when scoring:
/// 200 MiB.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// CPU and memory, as the scheduler counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_add(other.milli_cpu),
            memory: self.memory.saturating_add(other.memory),
        }
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_sub(other.milli_cpu),
            memory: self.memory.saturating_sub(other.memory),
        }
    }
}

impl Resources {
    /// Reads `cpu` and `memory` from a resource list; missing or malformed
    /// entries count as zero.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let list = match list {
            Some(list) => list,
            None => return Resources::default(),
        };
        Resources {
            milli_cpu: list
                .get("cpu")
                .and_then(|q| quantity::parse_milli(&q.0))
                .unwrap_or(0)
                .max(0),
            memory: list
                .get("memory")
                .and_then(|q| quantity::parse_units(&q.0))
                .unwrap_or(0)
                .max(0),
        }
    }

    fn max(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
        }
    }
}

/// A port on the node's address that a pod takes (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The host address; `0.0.0.0` for all of them.
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these ports could not share a node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        const ANY: &str = "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == ANY || other.ip == ANY)
    }
}

/// A pod with what the scheduler derives from it, computed once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod (shared with the watch's cache and the queue).
    pub pod: Arc<Pod>,
    /// `metadata.uid` (or `namespace/name` for an object without one).
    pub uid: String,
    /// `metadata.namespace` (`default` when unset).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Effective requests, as Kubernetes computes them: the containers'
    /// sum, at least the largest init container (sidecars counted along),
    /// plus the pod overhead.
    pub requests: Resources,
    /// The same with Kubernetes' defaults for containers that request
    /// nothing, used by the resource scores.
    pub non_zero_requests: Resources,
    /// The host ports the pod takes.
    pub host_ports: Vec<HostPort>,
    /// The uid of the controller owning the pod (ReplicaSet, Job, ...), if
    /// any: the group the default spreading keeps apart.
    pub owner: Option<String>,
    /// Whether the pod is being deleted.
    pub terminating: bool,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl PodInfo {
    /// Derives what the scheduler needs from `pod`.
    pub fn new(pod: impl Into<Arc<Pod>>) -> PodInfo {
        let pod: Arc<Pod> = pod.into();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod
            .metadata
            .uid
            .clone()
            .filter(|uid| !uid.is_empty())
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        let (requests, non_zero_requests) = pod_requests(&pod);
        let host_ports = host_ports(&pod);
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let terminating = pod.metadata.deletion_timestamp.is_some();
        PodInfo {
            pod,
            uid,
            namespace,
            name,
            requests,
            non_zero_requests,
            host_ports,
            owner,
            terminating,
        }
    }

    /// The pod's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// `requiredDuringSchedulingIgnoredDuringExecution` pod affinity terms.
    pub fn required_affinity(&self) -> &[PodAffinityTerm] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    }

    /// `requiredDuringSchedulingIgnoredDuringExecution` pod anti-affinity
    /// terms.
    pub fn required_anti_affinity(&self) -> &[PodAffinityTerm] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    }

    /// Preferred pod affinity terms.
    pub fn preferred_affinity(&self) -> &[WeightedPodAffinityTerm] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    }

    /// Preferred pod anti-affinity terms.
    pub fn preferred_anti_affinity(&self) -> &[WeightedPodAffinityTerm] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default()
    }

    /// Whether the pod has any pod (anti-)affinity term, required or
    /// preferred.
    pub fn has_pod_affinity(&self) -> bool {
        !(self.required_affinity().is_empty()
            && self.required_anti_affinity().is_empty()
            && self.preferred_affinity().is_empty()
            && self.preferred_anti_affinity().is_empty())
    }
}

/// Requests of one container, and the same with the scoring defaults.
fn container_requests(c: &Container) -> (Resources, Resources) {
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let r = Resources::from_list(requests);
    let has = |name: &str| requests.is_some_and(|l| l.contains_key(name));
    let non_zero = Resources {
        milli_cpu: if has("cpu") {
            r.milli_cpu
        } else {
            DEFAULT_MILLI_CPU_REQUEST
        },
        memory: if has("memory") {
            r.memory
        } else {
            DEFAULT_MEMORY_REQUEST
        },
    };
    (r, non_zero)
}

/// Kubernetes' `PodRequests`: regular containers add up; init containers
/// run one at a time, each next to the restartable (sidecar) init
/// containers started before it, and sidecars also run alongside the
/// regular containers; the pod needs the larger of the two phases, plus its
/// overhead. Pod-level `spec.resources.requests`, where given, win.
fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = pod.spec.as_ref() else {
        return Default::default();
    };
    let mut reqs = (Resources::default(), Resources::default());
    for c in &spec.containers {
        let (r, n) = container_requests(c);
        reqs.0 += r;
        reqs.1 += n;
    }
    let mut sidecars = (Resources::default(), Resources::default());
    let mut init = (Resources::default(), Resources::default());
    for c in spec.init_containers.iter().flatten() {
        let (mut r, mut n) = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.0 += r;
            reqs.1 += n;
            sidecars.0 += r;
            sidecars.1 += n;
            r = sidecars.0;
            n = sidecars.1;
        } else {
            r += sidecars.0;
            n += sidecars.1;
        }
        init.0 = init.0.max(r);
        init.1 = init.1.max(n);
    }
    let mut requests = reqs.0.max(init.0);
    let mut non_zero = reqs.1.max(init.1);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let level = Resources::from_list(Some(pod_level));
        if pod_level.contains_key("cpu") {
            requests.milli_cpu = level.milli_cpu;
            non_zero.milli_cpu = level.milli_cpu;
        }
        if pod_level.contains_key("memory") {
            requests.memory = level.memory;
            non_zero.memory = level.memory;
        }
    }
    let overhead = Resources::from_list(spec.overhead.as_ref());
    (requests + overhead, non_zero + overhead)
}

/// The host ports of the pod's containers (and sidecars).
fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&port| port > 0)?;
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".to_owned()),
                port,
            })
        })
        .collect()
}

/// A node and the pods bound to it, with running totals.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    node: Arc<Node>,
    name: String,
    allocatable: Resources,
    allowed_pods: i64,
    ready: bool,
    pods: Vec<Arc<PodInfo>>,
    requested: Resources,
    non_zero_requested: Resources,
    owners: HashMap<String, u32>,
    anti_affinity_pods: usize,
    affinity_pods: usize,
}

impl NodeInfo {
    /// A node with no pods.
    pub fn new(node: Node) -> NodeInfo {
        let mut info = NodeInfo {
            node: Arc::new(Node::default()),
            name: String::new(),
            allocatable: Resources::default(),
            allowed_pods: 0,
            ready: false,
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            owners: HashMap::new(),
            anti_affinity_pods: 0,
            affinity_pods: 0,
        };
        info.set_node(node);
        info
    }

    fn set_node(&mut self, node: Node) {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        self.allocatable = Resources::from_list(allocatable);
        self.allowed_pods = allocatable
            .and_then(|a| a.get("pods"))
            .and_then(|q| quantity::parse_units(&q.0))
            .unwrap_or(0)
            .max(0);
        self.ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.node = Arc::new(node);
    }

    /// The node object.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// The node's taints.
    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    /// Whether `spec.unschedulable` is set (cordoned).
    pub fn unschedulable(&self) -> bool {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    /// Whether the node's `Ready` condition is `True`.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Allocatable CPU and memory (capacity where allocatable is unset).
    pub fn allocatable(&self) -> Resources {
        self.allocatable
    }

    /// How many pods the node takes (`allocatable.pods`; 0 when unset).
    pub fn allowed_pods(&self) -> i64 {
        self.allowed_pods
    }

    /// The pods bound to the node that still run or may run.
    pub fn pods(&self) -> &[Arc<PodInfo>] {
        &self.pods
    }

    /// The sum of the pods' requests.
    pub fn requested(&self) -> Resources {
        self.requested
    }

    /// The sum of the pods' requests with the scoring defaults.
    pub fn non_zero_requested(&self) -> Resources {
        self.non_zero_requested
    }

    /// How many pods on the node the controller with this uid owns.
    pub fn owned_by(&self, owner: &str) -> u32 {
        self.owners.get(owner).copied().unwrap_or(0)
    }

    /// How many pods on the node have required anti-affinity terms.
    pub fn anti_affinity_pods(&self) -> usize {
        self.anti_affinity_pods
    }

    /// How many pods on the node have any pod (anti-)affinity term.
    pub fn affinity_pods(&self) -> usize {
        self.affinity_pods
    }

    /// Adds a pod bound to this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested += pod.requests;
        self.non_zero_requested += pod.non_zero_requests;
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
        if !pod.required_anti_affinity().is_empty() {
            self.anti_affinity_pods += 1;
        }
        if pod.has_pod_affinity() {
            self.affinity_pods += 1;
        }
        self.pods.push(pod);
    }

    /// Removes the pod with this uid, if bound here.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let at = self.pods.iter().position(|p| p.uid == uid)?;
        let pod = self.pods.swap_remove(at);
        self.requested = self.requested - pod.requests;
        self.non_zero_requested = self.non_zero_requested - pod.non_zero_requests;
        if let Some(owner) = &pod.owner
            && let Some(count) = self.owners.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(owner);
            }
        }
        if !pod.required_anti_affinity().is_empty() {
            self.anti_affinity_pods -= 1;
        }
        if pod.has_pod_affinity() {
            self.affinity_pods -= 1;
        }
        Some(pod)
    }
}

/// The cluster as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Where each pod is bound, by uid.
    pod_nodes: HashMap<String, String>,
    /// Pods bound to nodes the snapshot does not know (yet), by node name.
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    anti_affinity_pods: usize,
}

impl Snapshot {
    /// An empty cluster.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// The nodes, in a stable order (changed only by removals).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// The node the pod with this uid is bound to.
    pub fn pod_node(&self, uid: &str) -> Option<&str> {
        self.pod_nodes.get(uid).map(String::as_str)
    }

    /// How many pods anywhere have required anti-affinity terms.
    pub fn anti_affinity_pods(&self) -> usize {
        self.anti_affinity_pods
    }

    /// The labels of namespace `name`, if known.
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }

    /// Adds or replaces a node, keeping its pods. Returns whether anything
    /// the filters or scores read changed (a new node; labels, taints,
    /// cordon, readiness or allocatable), so that a status heartbeat does
    /// not count as a cluster change.
    pub fn set_node(&mut self, node: Node) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let info = &mut self.nodes[i];
            let before = (
                info.labels().clone(),
                info.taints().to_vec(),
                info.unschedulable(),
                info.ready,
                info.allocatable,
                info.allowed_pods,
            );
            info.set_node(node);
            let after = (
                info.labels().clone(),
                info.taints().to_vec(),
                info.unschedulable(),
                info.ready,
                info.allocatable,
                info.allowed_pods,
            );
            return before != after;
        }
        let mut info = NodeInfo::new(node);
        for pod in self.orphans.remove(&name).into_iter().flatten() {
            info.add_pod(pod);
        }
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
        true
    }

    /// The bound pod with this uid.
    pub fn pod(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        let node = self.pod_nodes.get(uid)?;
        let pods = match self.index.get(node) {
            Some(&i) => &self.nodes[i].pods,
            None => self.orphans.get(node)?,
        };
        pods.iter().find(|p| p.uid == uid)
    }

    /// Removes a node. Its pods stay remembered, and count again if a node
    /// of that name comes back.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        if !info.pods.is_empty() {
            self.orphans.insert(name.to_owned(), info.pods);
        }
    }

    /// Adds or replaces a pod bound to a node (`spec.nodeName`). A pod
    /// without a node, or one that has finished (Succeeded or Failed), is
    /// removed instead: it takes no room.
    pub fn set_pod(&mut self, pod: impl Into<Arc<Pod>>) {
        let info = PodInfo::new(pod);
        let node = info
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let finished = matches!(
            info.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        self.remove_pod(&info.uid);
        if let Some(node) = node.filter(|_| !finished) {
            self.place(info, node);
        }
    }

    /// Counts `pod` on `node` before its binding is written (the scheduler's
    /// assumption), replacing whatever the snapshot had of it.
    pub fn assume(&mut self, pod: PodInfo, node: String) {
        self.remove_pod(&pod.uid);
        self.place(pod, node);
    }

    fn place(&mut self, info: PodInfo, node: String) {
        let info = Arc::new(info);
        if !info.required_anti_affinity().is_empty() {
            self.anti_affinity_pods += 1;
        }
        self.pod_nodes.insert(info.uid.clone(), node.clone());
        match self.index.get(&node) {
            Some(&i) => self.nodes[i].add_pod(info),
            None => self.orphans.entry(node).or_default().push(info),
        }
    }

    /// Removes the pod with this uid wherever it is bound.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let node = self.pod_nodes.remove(uid)?;
        let removed = match self.index.get(&node) {
            Some(&i) => self.nodes[i].remove_pod(uid),
            None => {
                let orphans = self.orphans.get_mut(&node)?;
                let at = orphans.iter().position(|p| p.uid == uid)?;
                let pod = orphans.swap_remove(at);
                if orphans.is_empty() {
                    self.orphans.remove(&node);
                }
                Some(pod)
            }
        };
        if let Some(pod) = &removed
            && !pod.required_anti_affinity().is_empty()
        {
            self.anti_affinity_pods -= 1;
        }
        removed
    }

    /// Records a namespace's labels.
    pub fn set_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        self.namespaces.insert(name.to_owned(), labels);
    }

    /// Forgets a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// The names of all known nodes.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The uids of all pods bound to nodes (known or not).
    pub fn pod_uids(&self) -> impl Iterator<Item = &str> {
        self.pod_nodes.keys().map(String::as_str)
    }

    /// The names of all known namespaces.
    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn container(cpu: Option<&str>, memory: Option<&str>, sidecar: bool) -> Container {
        let mut requests = BTreeMap::new();
        if let Some(cpu) = cpu {
            requests.insert("cpu".to_owned(), Quantity(cpu.to_owned()));
        }
        if let Some(memory) = memory {
            requests.insert("memory".to_owned(), Quantity(memory.to_owned()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            restart_policy: sidecar.then(|| "Always".to_owned()),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_follow_kubernetes() {
        let mi = 1 << 20;
        let cases = [
            (
                "containers add up",
                pod(
                    vec![
                        container(Some("100m"), Some("64Mi"), false),
                        container(Some("250m"), Some("64Mi"), false),
                    ],
                    vec![],
                ),
                (350, 128 * mi),
                (350, 128 * mi),
            ),
            (
                "a larger init container wins",
                pod(
                    vec![container(Some("100m"), Some("64Mi"), false)],
                    vec![
                        container(Some("1"), Some("32Mi"), false),
                        container(Some("200m"), Some("16Mi"), false),
                    ],
                ),
                (1000, 64 * mi),
                (1000, 64 * mi),
            ),
            (
                "sidecars run next to containers and later init containers",
                pod(
                    vec![container(Some("100m"), Some("10Mi"), false)],
                    vec![
                        container(Some("50m"), Some("10Mi"), true),
                        container(Some("500m"), Some("10Mi"), false),
                    ],
                ),
                (550, 20 * mi),
                (550, 20 * mi),
            ),
            (
                "no requests: zero to fit, defaults to score",
                pod(vec![container(None, None, false)], vec![]),
                (0, 0),
                (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST),
            ),
        ];
        for (what, pod, want, want_non_zero) in cases {
            let info = PodInfo::new(pod);
            assert_eq!(
                (info.requests.milli_cpu, info.requests.memory),
                want,
                "{what}"
            );
            assert_eq!(
                (
                    info.non_zero_requests.milli_cpu,
                    info.non_zero_requests.memory
                ),
                want_non_zero,
                "{what}"
            );
        }
    }

    #[test]
    fn host_ports_default_and_conflict() {
        let mut p = pod(vec![container(None, None, false)], vec![]);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
            ContainerPort {
                container_port: 80,
                host_port: Some(8080),
                ..Default::default()
            },
            ContainerPort {
                container_port: 81,
                ..Default::default()
            },
        ]);
        let info = PodInfo::new(p);
        assert_eq!(
            info.host_ports,
            vec![HostPort {
                protocol: "TCP".into(),
                ip: "0.0.0.0".into(),
                port: 8080
            }]
        );
        let at = |ip: &str, protocol: &str, port| HostPort {
            protocol: protocol.into(),
            ip: ip.into(),
            port,
        };
        assert!(at("0.0.0.0", "TCP", 1).conflicts(&at("10.0.0.1", "TCP", 1)));
        assert!(at("10.0.0.1", "TCP", 1).conflicts(&at("10.0.0.1", "TCP", 1)));
        assert!(!at("10.0.0.1", "TCP", 1).conflicts(&at("10.0.0.2", "TCP", 1)));
        assert!(!at("0.0.0.0", "TCP", 1).conflicts(&at("0.0.0.0", "UDP", 1)));
        assert!(!at("0.0.0.0", "TCP", 1).conflicts(&at("0.0.0.0", "TCP", 2)));
    }

    #[test]
    fn snapshot_tracks_pods_across_node_changes() {
        let node = |name: &str| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let bound = |uid: &str, node: &str, phase: Option<&str>| {
            let mut p = pod(vec![container(Some("1"), Some("1Mi"), false)], vec![]);
            p.metadata.uid = Some(uid.into());
            p.spec.as_mut().unwrap().node_name = Some(node.into());
            p.status = phase.map(|phase| k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            });
            p
        };
        let mut s = Snapshot::new();
        s.set_pod(bound("a", "n1", None));
        s.set_node(node("n1"));
        s.set_node(node("n2"));
        assert_eq!(s.node("n1").unwrap().requested().milli_cpu, 1000);
        s.set_pod(bound("b", "n1", Some("Running")));
        assert_eq!(s.node("n1").unwrap().requested().milli_cpu, 2000);
        s.set_pod(bound("b", "n2", Some("Running")));
        assert_eq!(s.node("n1").unwrap().requested().milli_cpu, 1000);
        assert_eq!(s.node("n2").unwrap().requested().milli_cpu, 1000);
        s.set_pod(bound("b", "n2", Some("Succeeded")));
        assert_eq!(s.node("n2").unwrap().requested().milli_cpu, 0);
        s.remove_node("n1");
        assert_eq!(s.nodes().len(), 1);
        assert_eq!(s.node("n2").unwrap().name(), "n2");
        s.set_node(node("n1"));
        assert_eq!(s.node("n1").unwrap().pods().len(), 1);
        assert!(s.remove_pod("a").is_some());
        assert_eq!(s.node("n1").unwrap().requested(), Resources::default());
        assert!(s.remove_pod("a").is_none());
    }
}
