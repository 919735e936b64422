//! NetworkPolicy, enforced by the overlay: the table every agent keeps
//! from its watches of NetworkPolicies, Namespaces and Pods, answering
//! "may this connection be made?" for the three kinds of traffic the proxy
//! sees: pod to pod, outside to pod (NodePort, Ingress), and pod to
//! outside.
//!
//! The semantics are Kubernetes' (`networking.k8s.io/v1`):
//!
//! - A policy selects the pods of its namespace that match its
//!   `podSelector` (empty: all of them). A pod selected by no policy of a
//!   direction is open in that direction; once selected, only what some
//!   rule of some selecting policy allows gets through (rules are unions).
//! - `policyTypes`, when absent, is `[Ingress]`, plus `Egress` when the
//!   policy has at least one egress rule, as the API server defaults it.
//! - A peer with `podSelector` alone means pods of the policy's namespace;
//!   with `namespaceSelector` alone, every pod of the matching namespaces;
//!   with both, matching pods in matching namespaces (AND). Separate peers,
//!   and separate rules, are ORed. An empty or absent `from`/`to` matches
//!   every peer; an empty or absent `ports` matches every port.
//! - Every namespace carries `kubernetes.io/metadata.name: <name>`, even
//!   before its Namespace object has been seen.
//! - Ports: the overlay carries TCP only, so a port entry of another
//!   protocol (UDP, SCTP) never matches. A numeric port (with `endPort`, a
//!   range) matches the destination port; a named port matches when the
//!   destination pod has a TCP container port of that name and number.
//!   Outside destinations have no named ports.
//!
//! What this implementation decides where Kubernetes leaves it open:
//!
//! - `ipBlock` matches an in-cluster pod by its pod IP (`status.podIPs`),
//!   an external client by its address, and an outside destination only when
//!   the caller passes it as an IP literal: a host name matches no
//!   `ipBlock` (resolve it first to have it match one). So a pod under an
//!   egress policy reaches outside host names only through a rule with an
//!   empty `to`.
//! - A pod this table has not seen yet (its watch event has not arrived)
//!   cannot be matched by labels; rather than guess, a connection that
//!   needs its labels is refused with [`Verdict::UnknownPod`] while its
//!   namespace has a policy of the direction concerned (fail closed). With
//!   no such policy the pod is open, as it would be anyway.
//! - A selector with an operator this build does not know matches nothing
//!   as a peer (fail closed); as a policy's own `podSelector` it selects
//!   every pod of the namespace (fail closed too). A malformed CIDR matches
//!   nothing.
//!
//! The table is pure (no I/O): [`spawn_feed`] keeps it current.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use skiff_api::selector::LabelSelector;
use tokio::task::JoinHandle;

use super::feed::{Change, watch_into};

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

impl PodRef {
    /// The pod `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PodRef {
        PodRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which side of a connection a policy guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic into the selected pods.
    Ingress,
    /// Traffic out of the selected pods.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The answer to "may this connection be made?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No policy stands in the way.
    Allowed,
    /// Policies select the pod in `direction` and none of their rules
    /// allows the connection; `policy` (`namespace/name`) is the first of
    /// them, to name in the error.
    Denied {
        /// `namespace/name` of a policy that selects the pod.
        policy: String,
        /// Whether the source's egress or the destination's ingress refused.
        direction: Direction,
    },
    /// The pod's labels are not known yet and a policy of `direction` in
    /// its namespace may select it: refused until the pod is seen.
    UnknownPod {
        /// `namespace/name` of the pod.
        pod: String,
        /// The direction whose policies could not be evaluated.
        direction: Direction,
    },
}

impl Verdict {
    /// Whether the connection may be made.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed => f.write_str("allowed"),
            Verdict::Denied { policy, direction } => {
                write!(
                    f,
                    "denied by the {direction} rules of network policy {policy}"
                )
            }
            Verdict::UnknownPod { pod, direction } => write!(
                f,
                "denied: pod {pod} is not known yet and {direction} network policies apply in its namespace"
            ),
        }
    }
}

/// A label selector as the table evaluates it.
#[derive(Debug, Clone)]
enum Selector {
    Labels(LabelSelector),
    /// An expression this build cannot evaluate.
    Invalid,
}

impl Selector {
    fn parse(selector: &K8sSelector) -> Selector {
        serde_json::to_value(selector)
            .ok()
            .and_then(|v| LabelSelector::from_object(&v))
            .map_or(Selector::Invalid, Selector::Labels)
    }

    fn is_empty(&self) -> bool {
        matches!(self, Selector::Labels(s) if s.is_empty())
    }

    /// Whether labels match; an invalid selector matches nothing.
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        match self {
            Selector::Labels(s) => s.matches(Some(labels)),
            Selector::Invalid => false,
        }
    }
}

/// An IP prefix (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = s.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.bits,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), 128, self.bits)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, width: u8, bits: u8) -> bool {
    if bits == 0 {
        return true;
    }
    let shift = u32::from(width - bits);
    (a >> shift) == (b >> shift)
}

#[derive(Debug, Clone)]
enum Peer {
    /// Pods matched by label: `pods` in the policy's namespace when
    /// `namespaces` is absent, otherwise in every matching namespace.
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Addresses in `cidr` but in none of `except`.
    Block { cidr: Cidr, except: Vec<Cidr> },
    /// A peer that matches nothing (empty, or a malformed CIDR).
    Nothing,
}

impl Peer {
    fn from_k8s(peer: &NetworkPolicyPeer) -> Peer {
        if let Some(block) = &peer.ip_block {
            return Peer::block(block);
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return Peer::Nothing;
        }
        Peer::Pods {
            pods: peer.pod_selector.as_ref().map(Selector::parse),
            namespaces: peer.namespace_selector.as_ref().map(Selector::parse),
        }
    }

    fn block(block: &IPBlock) -> Peer {
        let Some(cidr) = Cidr::parse(&block.cidr) else {
            return Peer::Nothing;
        };
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            match Cidr::parse(e) {
                Some(c) => except.push(c),
                // An exception we cannot read could be the one that
                // mattered: the whole block matches nothing.
                None => return Peer::Nothing,
            }
        }
        Peer::Block { cidr, except }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Peer::Block { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortMatch {
    /// Every TCP port.
    Any,
    /// TCP ports `from..=to`.
    Range(u16, u16),
    /// The destination pod's TCP container port of this name.
    Named(String),
    /// A port of another protocol, or malformed: matches no TCP traffic.
    Never,
}

impl PortMatch {
    fn from_k8s(port: &NetworkPolicyPort) -> PortMatch {
        if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            return PortMatch::Never;
        }
        match &port.port {
            None => PortMatch::Any,
            Some(IntOrString::Int(n)) => {
                let Ok(from) = u16::try_from(*n) else {
                    return PortMatch::Never;
                };
                match port.end_port {
                    None => PortMatch::Range(from, from),
                    Some(end) => match u16::try_from(end) {
                        Ok(to) if to >= from => PortMatch::Range(from, to),
                        _ => PortMatch::Never,
                    },
                }
            }
            Some(IntOrString::String(name)) => PortMatch::Named(name.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    /// Empty: every peer.
    peers: Vec<Peer>,
    /// Empty: every port.
    ports: Vec<PortMatch>,
}

#[derive(Debug, Clone)]
struct Policy {
    namespace: String,
    name: String,
    selector: Selector,
    /// `Some` when the policy's types include Ingress.
    ingress: Option<Vec<Rule>>,
    /// `Some` when the policy's types include Egress.
    egress: Option<Vec<Rule>>,
}

impl Policy {
    fn from_k8s(p: &NetworkPolicy) -> Option<Policy> {
        let namespace = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = p.metadata.name.clone()?;
        let spec = p.spec.clone().unwrap_or_default();
        let selector = spec
            .pod_selector
            .as_ref()
            .map_or(Selector::Labels(LabelSelector::default()), Selector::parse);
        let egress_rules = spec.egress.unwrap_or_default();
        let types = match spec.policy_types {
            Some(types) if !types.is_empty() => types,
            // The API server's defaulting: Ingress always, Egress when
            // there is at least one egress rule.
            _ if !egress_rules.is_empty() => vec!["Ingress".into(), "Egress".into()],
            _ => vec!["Ingress".into()],
        };
        let rule = |peers: Option<&Vec<NetworkPolicyPeer>>,
                    ports: Option<&Vec<NetworkPolicyPort>>| Rule {
            peers: peers.into_iter().flatten().map(Peer::from_k8s).collect(),
            ports: ports
                .into_iter()
                .flatten()
                .map(PortMatch::from_k8s)
                .collect(),
        };
        let ingress = types.iter().any(|t| t == "Ingress").then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| rule(r.from.as_ref(), r.ports.as_ref()))
                .collect()
        });
        let egress = types.iter().any(|t| t == "Egress").then(|| {
            egress_rules
                .iter()
                .map(|r| rule(r.to.as_ref(), r.ports.as_ref()))
                .collect()
        });
        Some(Policy {
            namespace,
            name,
            selector,
            ingress,
            egress,
        })
    }

    fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default)]
struct PodInfo {
    labels: Map<String, Value>,
    ips: Vec<IpAddr>,
    /// Named TCP container ports.
    named_ports: Vec<(String, u16)>,
}

impl PodInfo {
    fn from_k8s(pod: &Pod) -> PodInfo {
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(status) = &pod.status {
            for ip in status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref())
            {
                if let Ok(ip) = ip.parse::<IpAddr>()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        let named_ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        PodInfo {
            labels,
            ips,
            named_ports,
        }
    }
}

/// What a connection's other end is, as a rule sees it.
#[derive(Clone, Copy)]
enum Remote<'a> {
    /// A pod of the cluster (known to the table).
    Pod {
        namespace: &'a str,
        info: &'a PodInfo,
    },
    /// An address outside the cluster.
    Ip(IpAddr),
    /// A host name outside the cluster.
    Name,
}

/// The NetworkPolicy table (see the module docs for the semantics).
#[derive(Debug, Default)]
pub struct PolicyTable {
    /// Sorted, so the policy named in a denial is deterministic.
    policies: BTreeMap<(String, String), Policy>,
    /// Namespace labels, the name label included.
    namespaces: HashMap<String, Map<String, Value>>,
    pods: HashMap<(String, String), PodInfo>,
}

impl PolicyTable {
    /// An empty table: everything is allowed.
    pub fn new() -> PolicyTable {
        PolicyTable::default()
    }

    /// Adds or replaces a NetworkPolicy.
    pub fn upsert_policy(&mut self, p: &NetworkPolicy) {
        if let Some(policy) = Policy::from_k8s(p) {
            self.policies
                .insert((policy.namespace.clone(), policy.name.clone()), policy);
        }
    }

    /// Forgets a NetworkPolicy.
    pub fn remove_policy(&mut self, ns: &str, name: &str) {
        self.policies.remove(&(ns.to_owned(), name.to_owned()));
    }

    /// Adds or replaces a Namespace's labels.
    pub fn upsert_namespace(&mut self, ns: &Namespace) {
        let Some(name) = &ns.metadata.name else {
            return;
        };
        let mut labels: Map<String, Value> = ns
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        labels.insert(NAMESPACE_NAME_LABEL.into(), Value::String(name.clone()));
        self.namespaces.insert(name.clone(), labels);
    }

    /// Forgets a Namespace's labels (its name label stays implied).
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Adds or replaces a pod: its labels, IPs and named TCP ports.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let Some(name) = &pod.metadata.name else {
            return;
        };
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        self.pods.insert((ns, name.clone()), PodInfo::from_k8s(pod));
    }

    /// Forgets a pod.
    pub fn remove_pod(&mut self, ns: &str, name: &str) {
        self.pods.remove(&(ns.to_owned(), name.to_owned()));
    }

    /// Whether a connection from pod `from` to pod `to` on `port` (the
    /// port on `to`) is allowed by both the egress policies selecting
    /// `from` and the ingress policies selecting `to`. A pod selected by no
    /// policy of a direction is open in that direction (the Kubernetes
    /// default). Egress is checked first, so a denial names the source's
    /// policy when both sides refuse.
    pub fn allows(&self, from: &PodRef, to: &PodRef, port: u16) -> Verdict {
        let from_info = self.pod(from);
        let to_info = self.pod(to);
        let to_remote = to_info.map(|info| Remote::Pod {
            namespace: &to.namespace,
            info,
        });
        let from_remote = from_info.map(|info| Remote::Pod {
            namespace: &from.namespace,
            info,
        });
        // Egress of the source, about the destination.
        let verdict = self.check(from, from_info, Direction::Egress, to_remote, to, port);
        if !verdict.is_allowed() {
            return verdict;
        }
        self.check(to, to_info, Direction::Ingress, from_remote, from, port)
    }

    /// For traffic arriving from outside the cluster (NodePort, Ingress):
    /// only the destination's ingress policies apply, and the source is
    /// the external address `client` (matched by `ipBlock` peers only).
    pub fn allows_external(&self, client: IpAddr, to: &PodRef, port: u16) -> Verdict {
        let to_info = self.pod(to);
        let Some(info) = to_info else {
            return self.unknown(to, Direction::Ingress);
        };
        // A named port is the destination's: the pod itself.
        self.decide(
            to,
            info,
            Direction::Ingress,
            Remote::Ip(client),
            Some(info),
            port,
        )
    }

    /// Egress from pod `from` to a destination outside the cluster: `host`
    /// is an IP literal (matched against `ipBlock` peers) or a name (which
    /// matches only rules with an empty `to`). Allowed when no egress
    /// policy selects `from`, or when a rule of one allows it.
    pub fn allows_egress_outside(&self, from: &PodRef, host: &str, port: u16) -> Verdict {
        let Some(info) = self.pod(from) else {
            return self.unknown(from, Direction::Egress);
        };
        let host = host.trim_end_matches('.');
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let remote = match host.parse::<IpAddr>() {
            Ok(ip) => Remote::Ip(ip),
            Err(_) => Remote::Name,
        };
        self.decide(from, info, Direction::Egress, remote, None, port)
    }

    fn pod(&self, pod: &PodRef) -> Option<&PodInfo> {
        self.pods.get(&(pod.namespace.clone(), pod.name.clone()))
    }

    /// Checks `subject`'s policies of `direction` against a pod on the
    /// other end (`remote` is `None` when that pod is unknown).
    fn check(
        &self,
        subject: &PodRef,
        info: Option<&PodInfo>,
        direction: Direction,
        remote: Option<Remote<'_>>,
        remote_ref: &PodRef,
        port: u16,
    ) -> Verdict {
        let Some(info) = info else {
            return self.unknown(subject, direction);
        };
        let Some(remote) = remote else {
            // The other end's labels are unknown: fine only if no policy
            // of this direction selects the subject.
            return match self.selecting(subject, info, direction).next() {
                None => Verdict::Allowed,
                Some(_) => Verdict::UnknownPod {
                    pod: remote_ref.to_string(),
                    direction,
                },
            };
        };
        // A named port is the destination pod's.
        let destination = match (direction, remote) {
            (Direction::Ingress, _) => Some(info),
            (Direction::Egress, Remote::Pod { info, .. }) => Some(info),
            (Direction::Egress, _) => None,
        };
        self.decide(subject, info, direction, remote, destination, port)
    }

    /// Refusal for a pod whose labels are not known, unless its namespace
    /// has no policy of `direction` (then nothing could select it).
    fn unknown(&self, pod: &PodRef, direction: Direction) -> Verdict {
        let any = self
            .policies
            .values()
            .any(|p| p.namespace == pod.namespace && p.rules(direction).is_some());
        if any {
            Verdict::UnknownPod {
                pod: pod.to_string(),
                direction,
            }
        } else {
            Verdict::Allowed
        }
    }

    fn selecting<'a>(
        &'a self,
        subject: &'a PodRef,
        info: &'a PodInfo,
        direction: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.values().filter(move |p| {
            p.namespace == subject.namespace
                && p.rules(direction).is_some()
                && match &p.selector {
                    // Fail closed: an unreadable selector selects all.
                    Selector::Invalid => true,
                    s => s.matches(&info.labels),
                }
        })
    }

    /// The union of the rules of `subject`'s policies of `direction`.
    fn decide(
        &self,
        subject: &PodRef,
        info: &PodInfo,
        direction: Direction,
        remote: Remote<'_>,
        destination: Option<&PodInfo>,
        port: u16,
    ) -> Verdict {
        let mut first = None;
        for policy in self.selecting(subject, info, direction) {
            first.get_or_insert(policy);
            let rules = policy.rules(direction).unwrap_or_default();
            if rules
                .iter()
                .any(|rule| self.rule_matches(rule, &policy.namespace, remote, destination, port))
            {
                return Verdict::Allowed;
            }
        }
        match first {
            None => Verdict::Allowed,
            Some(policy) => Verdict::Denied {
                policy: policy.id(),
                direction,
            },
        }
    }

    fn rule_matches(
        &self,
        rule: &Rule,
        policy_namespace: &str,
        remote: Remote<'_>,
        destination: Option<&PodInfo>,
        port: u16,
    ) -> bool {
        let port_ok = rule.ports.is_empty()
            || rule.ports.iter().any(|p| match p {
                PortMatch::Any => true,
                PortMatch::Range(a, b) => (*a..=*b).contains(&port),
                PortMatch::Named(name) => destination.is_some_and(|d| {
                    d.named_ports
                        .iter()
                        .any(|(n, number)| n == name && *number == port)
                }),
                PortMatch::Never => false,
            });
        port_ok
            && (rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|peer| self.peer_matches(peer, policy_namespace, remote)))
    }

    fn peer_matches(&self, peer: &Peer, policy_namespace: &str, remote: Remote<'_>) -> bool {
        match (peer, remote) {
            (Peer::Nothing, _) => false,
            (Peer::Block { .. }, Remote::Ip(ip)) => peer.matches_ip(ip),
            (Peer::Block { .. }, Remote::Pod { info, .. }) => {
                info.ips.iter().any(|ip| peer.matches_ip(*ip))
            }
            (Peer::Block { .. }, Remote::Name) => false,
            (Peer::Pods { .. }, Remote::Ip(_) | Remote::Name) => false,
            (Peer::Pods { pods, namespaces }, Remote::Pod { namespace, info }) => {
                let namespace_ok = match namespaces {
                    None => namespace == policy_namespace,
                    Some(selector) => self.namespace_matches(selector, namespace),
                };
                namespace_ok && pods.as_ref().is_none_or(|s| s.matches(&info.labels))
            }
        }
    }

    fn namespace_matches(&self, selector: &Selector, namespace: &str) -> bool {
        if selector.is_empty() {
            return true;
        }
        match self.namespaces.get(namespace) {
            Some(labels) => selector.matches(labels),
            None => {
                let mut labels = Map::new();
                labels.insert(NAMESPACE_NAME_LABEL.into(), Value::String(namespace.into()));
                selector.matches(&labels)
            }
        }
    }

    fn replace_policies(&mut self, all: &[NetworkPolicy]) {
        self.policies.clear();
        for p in all {
            self.upsert_policy(p);
        }
    }

    fn replace_namespaces(&mut self, all: &[Namespace]) {
        self.namespaces.clear();
        for ns in all {
            self.upsert_namespace(ns);
        }
    }

    /// Replaces every pod with `all` (a watch's complete relisting).
    pub fn replace_pods(&mut self, all: &[Pod]) {
        self.pods.clear();
        for pod in all {
            self.upsert_pod(pod);
        }
    }
}

fn ns_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(&str, &str)> {
    Some((
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref()?,
    ))
}

/// Keeps `table`'s NetworkPolicies and Namespaces current from watches
/// across the cluster. The handles run until aborted. Pods come from the
/// Service proxy's pod watch ([`super::proxy`]), which keeps pod
/// addresses too: one watch of every pod per node, not two.
pub fn spawn_feed(client: kube::Client, table: Arc<Mutex<PolicyTable>>) -> Vec<JoinHandle<()>> {
    let policies = {
        let table = table.clone();
        watch_into(
            Api::<NetworkPolicy>::all(client.clone()),
            "networkpolicies",
            move |change| {
                let mut table = table.lock();
                match change {
                    Change::Apply(p) => table.upsert_policy(&p),
                    Change::Delete(p) => {
                        if let Some((ns, name)) = ns_name(&p.metadata) {
                            table.remove_policy(ns, name);
                        }
                    }
                    Change::Replace(all) => table.replace_policies(&all),
                }
            },
        )
    };
    let namespaces = {
        let table = table.clone();
        watch_into(
            Api::<Namespace>::all(client.clone()),
            "namespaces",
            move |change| {
                let mut table = table.lock();
                match change {
                    Change::Apply(ns) => table.upsert_namespace(&ns),
                    Change::Delete(ns) => {
                        if let Some(name) = &ns.metadata.name {
                            table.remove_namespace(name);
                        }
                    }
                    Change::Replace(all) => table.replace_namespaces(&all),
                }
            },
        )
    };
    vec![policies, namespaces]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "metrics", "containerPort": 9090},
                {"name": "dns", "containerPort": 5353, "protocol": "UDP"}
            ]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn namespace(name: &str, labels: Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn r(ns: &str, name: &str) -> PodRef {
        PodRef::new(ns, name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Pods: shop/web (app=web), shop/db (app=db), shop/batch (app=batch),
    /// other/client (app=client), other/web (app=web); namespace `other`
    /// is labelled team=blue.
    fn table() -> PolicyTable {
        let mut t = PolicyTable::new();
        t.upsert_namespace(&namespace("shop", json!({"team": "red"})));
        t.upsert_namespace(&namespace("other", json!({"team": "blue"})));
        t.upsert_pod(&pod("shop", "web", json!({"app": "web"}), "10.42.0.1"));
        t.upsert_pod(&pod("shop", "db", json!({"app": "db"}), "10.42.0.2"));
        t.upsert_pod(&pod("shop", "batch", json!({"app": "batch"}), "10.42.0.3"));
        t.upsert_pod(&pod(
            "other",
            "client",
            json!({"app": "client"}),
            "10.42.1.1",
        ));
        t.upsert_pod(&pod("other", "web", json!({"app": "web"}), "10.42.1.2"));
        t
    }

    fn denied(policy: &str, direction: Direction) -> Verdict {
        Verdict::Denied {
            policy: policy.into(),
            direction,
        }
    }

    #[test]
    fn without_policies_everything_is_open() {
        let t = table();
        assert_eq!(
            t.allows(&r("shop", "web"), &r("other", "web"), 80),
            Verdict::Allowed
        );
        assert_eq!(
            t.allows_external(ip("203.0.113.9"), &r("shop", "db"), 5432),
            Verdict::Allowed
        );
        assert_eq!(
            t.allows_egress_outside(&r("shop", "web"), "example.com", 443),
            Verdict::Allowed
        );
        // Unknown pods are open too while no policy could apply.
        assert_eq!(t.allows(&r("x", "a"), &r("y", "b"), 80), Verdict::Allowed);
    }

    #[test]
    fn empty_ingress_policy_seals_the_namespace() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "deny-all", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        })));
        let sealed = denied("shop/deny-all", Direction::Ingress);
        assert_eq!(t.allows(&r("shop", "web"), &r("shop", "db"), 5432), sealed);
        assert_eq!(
            t.allows(&r("other", "web"), &r("shop", "web"), 8080),
            sealed
        );
        assert_eq!(
            t.allows_external(ip("203.0.113.9"), &r("shop", "web"), 8080),
            sealed
        );
        assert_eq!(
            sealed.to_string(),
            "denied by the ingress rules of network policy shop/deny-all"
        );
        // Only ingress: the sealed pods still reach out, other namespaces are untouched.
        assert!(
            t.allows(&r("shop", "web"), &r("other", "web"), 8080)
                .is_allowed()
        );
        assert!(
            t.allows_egress_outside(&r("shop", "web"), "example.com", 443)
                .is_allowed()
        );
        assert!(
            t.allows(&r("other", "web"), &r("other", "client"), 1)
                .is_allowed()
        );
        t.remove_policy("shop", "deny-all");
        assert!(
            t.allows(&r("other", "web"), &r("shop", "web"), 8080)
                .is_allowed()
        );
    }

    #[test]
    fn same_namespace_only_blocks_other_namespaces() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "same-ns", "namespace": "shop"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
        })));
        assert!(
            t.allows(&r("shop", "web"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert_eq!(
            t.allows(&r("other", "client"), &r("shop", "db"), 5432),
            denied("shop/same-ns", Direction::Ingress)
        );
        // podSelector peers never match outside clients.
        assert!(
            !t.allows_external(ip("10.42.0.1"), &r("shop", "db"), 5432)
                .is_allowed()
        );
    }

    #[test]
    fn namespace_selector_by_name_label_and_custom_labels() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "from-other", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}
            ]}]}
        })));
        assert!(
            t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert_eq!(
            t.allows(&r("shop", "web"), &r("shop", "db"), 5432),
            denied("shop/from-other", Direction::Ingress),
            "a namespaceSelector alone does not include the policy's own namespace"
        );
        assert!(
            t.allows(&r("other", "client"), &r("shop", "web"), 8080)
                .is_allowed(),
            "web is not selected by the policy"
        );

        // The name label holds before the Namespace object is seen, and
        // after it is gone.
        t.upsert_pod(&pod("fresh", "p", json!({}), "10.42.5.5"));
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "from-other", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["fresh"]}
                ]}}
            ]}]}
        })));
        assert!(
            t.allows(&r("fresh", "p"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            !t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );

        // Custom labels follow the Namespace object.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "from-other", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "blue"}}}
            ]}]}
        })));
        assert!(
            t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        t.upsert_namespace(&namespace("other", json!({"team": "green"})));
        assert!(
            !t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        t.upsert_namespace(&namespace("other", json!({"team": "blue"})));
        t.remove_namespace("other");
        assert!(
            !t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
    }

    #[test]
    fn pod_and_namespace_selectors_in_one_peer_are_and_in_two_peers_or() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "and", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "blue"}},
                 "podSelector": {"matchLabels": {"app": "client"}}}
            ]}]}
        })));
        assert!(
            t.allows(&r("other", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            !t.allows(&r("other", "web"), &r("shop", "db"), 5432)
                .is_allowed(),
            "right namespace, wrong pod"
        );
        t.upsert_pod(&pod(
            "shop",
            "client",
            json!({"app": "client"}),
            "10.42.0.9",
        ));
        assert!(
            !t.allows(&r("shop", "client"), &r("shop", "db"), 5432)
                .is_allowed(),
            "right pod, wrong namespace"
        );

        t.upsert_policy(&policy(json!({
            "metadata": {"name": "and", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "blue"}}},
                {"podSelector": {"matchLabels": {"app": "client"}}}
            ]}]}
        })));
        assert!(
            t.allows(&r("other", "web"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            t.allows(&r("shop", "client"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            !t.allows(&r("shop", "web"), &r("shop", "db"), 5432)
                .is_allowed(),
            "neither peer matches"
        );
    }

    #[test]
    fn policies_and_rules_are_unions() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
        })));
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "b", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "batch"}}}]}]}
        })));
        assert!(
            t.allows(&r("shop", "web"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            t.allows(&r("shop", "batch"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert_eq!(
            t.allows(&r("other", "web"), &r("shop", "db"), 5432),
            denied("shop/a", Direction::Ingress),
            "the first selecting policy is named"
        );
    }

    #[test]
    fn ports_numeric_ranges_named_and_other_protocols() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "ports", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
                {"port": 8080},
                {"port": "metrics"},
                {"port": 7000, "endPort": 7002},
                {"protocol": "UDP", "port": 53},
                {"protocol": "SCTP"}
            ]}]}
        })));
        let web = r("shop", "web");
        let client = r("other", "client");
        for (port, ok) in [
            (8080, true),
            (9090, true),
            (7000, true),
            (7002, true),
            (7003, false),
            (53, false),
            (80, false),
        ] {
            assert_eq!(
                t.allows(&client, &web, port).is_allowed(),
                ok,
                "port {port}"
            );
        }
        assert!(
            t.allows_external(ip("203.0.113.9"), &web, 9090)
                .is_allowed()
        );
        assert!(
            !t.allows_external(ip("203.0.113.9"), &web, 9091)
                .is_allowed()
        );

        // A named port resolves on the destination pod: `http` is 8080 on
        // every pod here, so 80 never matches it.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "ports", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"ports": [{"port": "http"}, {"port": "dns"}]}]}
        })));
        assert!(t.allows(&client, &web, 8080).is_allowed());
        assert!(!t.allows(&client, &web, 80).is_allowed());
        assert!(
            !t.allows(&client, &web, 5353).is_allowed(),
            "dns is a UDP port"
        );
    }

    #[test]
    fn egress_deny_all_blocks_pods_and_outside_hosts() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "no-egress", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "batch"}}, "policyTypes": ["Egress"]}
        })));
        let batch = r("shop", "batch");
        let denial = denied("shop/no-egress", Direction::Egress);
        assert_eq!(t.allows(&batch, &r("shop", "web"), 8080), denial);
        assert_eq!(t.allows(&batch, &r("other", "web"), 8080), denial);
        assert_eq!(t.allows_egress_outside(&batch, "example.com", 443), denial);
        assert_eq!(t.allows_egress_outside(&batch, "203.0.113.9", 443), denial);
        // Egress only: the pod still accepts connections.
        assert!(t.allows(&r("shop", "web"), &batch, 8080).is_allowed());
        assert!(
            t.allows_egress_outside(&r("shop", "web"), "example.com", 443)
                .is_allowed()
        );
    }

    #[test]
    fn egress_rules_by_peer_ip_block_and_port() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "egress", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 8080}]},
                {"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]},
                {"to": [{"ipBlock": {"cidr": "10.42.1.0/24"}}], "ports": [{"port": "metrics"}]},
                {"ports": [{"port": 443}]}
            ]}
        })));
        let web = r("shop", "web");
        let d = Direction::Egress;
        assert!(t.allows(&web, &r("shop", "db"), 8080).is_allowed());
        assert_eq!(
            t.allows(&web, &r("shop", "db"), 9),
            denied("shop/egress", d)
        );
        assert_eq!(
            t.allows(&web, &r("shop", "batch"), 8080),
            denied("shop/egress", d)
        );
        // ipBlock matches in-cluster pods by pod IP; named ports resolve
        // on the destination pod.
        assert!(t.allows(&web, &r("other", "client"), 9090).is_allowed());
        assert!(!t.allows(&web, &r("other", "client"), 8080).is_allowed());
        // Outside: by IP within the block, not its exception; names only
        // through the rule with an empty `to` (port 443).
        assert!(
            t.allows_egress_outside(&web, "203.0.113.9", 25)
                .is_allowed()
        );
        assert!(
            !t.allows_egress_outside(&web, "203.0.113.200", 25)
                .is_allowed()
        );
        assert!(
            !t.allows_egress_outside(&web, "198.51.100.1", 25)
                .is_allowed()
        );
        assert!(
            t.allows_egress_outside(&web, "example.com", 443)
                .is_allowed()
        );
        assert!(
            !t.allows_egress_outside(&web, "example.com", 80)
                .is_allowed()
        );
        assert!(
            !t.allows_egress_outside(&web, "10.42.1.9", 9090)
                .is_allowed(),
            "no named ports outside"
        );
        // An egress policy and an ingress policy must both allow.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "db-closed", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []}
        })));
        assert_eq!(
            t.allows(&web, &r("shop", "db"), 8080),
            denied("shop/db-closed", Direction::Ingress)
        );
    }

    #[test]
    fn external_clients_match_ip_blocks_only() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "lan", "namespace": "shop"},
            "spec": {"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}, {"namespaceSelector": {}}]}
            ]}
        })));
        let web = r("shop", "web");
        assert!(t.allows_external(ip("192.0.2.7"), &web, 8080).is_allowed());
        assert!(
            t.allows_external(ip("::ffff:192.0.2.7"), &web, 8080)
                .is_allowed()
        );
        assert!(
            !t.allows_external(ip("198.51.100.7"), &web, 8080)
                .is_allowed()
        );
        assert!(
            t.allows(&r("other", "web"), &web, 8080).is_allowed(),
            "namespaceSelector {{}}: every namespace"
        );
    }

    #[test]
    fn policy_types_default_like_kubernetes() {
        let mut t = table();
        // No policyTypes, no rules at all: Ingress only (deny all in).
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
        })));
        let web = r("shop", "web");
        assert!(!t.allows(&r("shop", "db"), &web, 8080).is_allowed());
        assert!(
            t.allows_egress_outside(&web, "example.com", 443)
                .is_allowed()
        );
        // `egress: []` is no egress rule: still Ingress only.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "egress": []}
        })));
        assert!(
            t.allows_egress_outside(&web, "example.com", 443)
                .is_allowed()
        );
        assert!(!t.allows(&r("shop", "db"), &web, 8080).is_allowed());
        // Egress rules present: Ingress and Egress.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "egress": [{"ports": [{"port": 53}]}]}
        })));
        assert!(
            !t.allows(&r("shop", "db"), &web, 8080).is_allowed(),
            "ingress still sealed"
        );
        assert!(
            t.allows_egress_outside(&web, "dns.example", 53)
                .is_allowed()
        );
        assert_eq!(
            t.allows_egress_outside(&web, "example.com", 443),
            denied("shop/p", Direction::Egress)
        );
        // Explicit Egress only: ingress rules are ignored, ingress is open.
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "nope"}}}]}]}
        })));
        assert!(t.allows(&r("shop", "db"), &web, 8080).is_allowed());
        assert!(
            !t.allows_egress_outside(&web, "example.com", 443)
                .is_allowed()
        );
    }

    #[test]
    fn unknown_pods_fail_closed_only_where_policies_apply() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
        })));
        let unknown = r("shop", "new");
        let v = t.allows(&r("shop", "web"), &unknown, 8080);
        assert_eq!(
            v,
            Verdict::UnknownPod {
                pod: "shop/new".into(),
                direction: Direction::Ingress
            }
        );
        assert!(v.to_string().contains("shop/new"));
        assert!(
            !t.allows(&r("other", "ghost"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        assert!(
            t.allows(&r("other", "ghost"), &r("shop", "web"), 8080)
                .is_allowed()
        );
        assert!(
            t.allows(&r("other", "ghost"), &r("other", "web"), 8080)
                .is_allowed()
        );
        t.upsert_pod(&pod("shop", "new", json!({"app": "web"}), "10.42.0.7"));
        assert!(
            t.allows(&r("shop", "new"), &r("shop", "db"), 5432)
                .is_allowed()
        );
        t.remove_pod("shop", "new");
        assert!(
            !t.allows(&r("shop", "new"), &r("shop", "db"), 5432)
                .is_allowed()
        );
    }

    #[test]
    fn relisting_replaces_everything_of_a_kind() {
        let mut t = table();
        t.upsert_policy(&policy(json!({
            "metadata": {"name": "old", "namespace": "shop"},
            "spec": {"podSelector": {}}
        })));
        assert!(
            !t.allows(&r("shop", "web"), &r("shop", "db"), 1)
                .is_allowed()
        );
        t.replace_policies(&[policy(json!({
            "metadata": {"name": "new", "namespace": "other"},
            "spec": {"podSelector": {}}
        }))]);
        assert!(
            t.allows(&r("shop", "web"), &r("shop", "db"), 1)
                .is_allowed()
        );
        assert_eq!(
            t.allows(&r("shop", "web"), &r("other", "web"), 1),
            denied("other/new", Direction::Ingress)
        );
        t.replace_pods(&[pod("shop", "web", json!({"app": "web"}), "10.42.0.1")]);
        assert!(matches!(
            t.allows(&r("shop", "web"), &r("other", "web"), 1),
            Verdict::UnknownPod { .. }
        ));
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.42.0.0/16").unwrap();
        assert!(c.contains(ip("10.42.255.1")));
        assert!(!c.contains(ip("10.43.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8:1::1"))
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }
}
