//! Columns and cells per kind, after kube-apiserver's
//! `pkg/printers/internalversion/printers.go` (always the wide form).

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Column;
use super::duration;
use crate::k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, networking::v1 as networking,
};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use crate::k8s_openapi::jiff::Timestamp;

const NAME: Column = (
    "Name",
    "string",
    "name",
    "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    0,
);
const AGE: Column = (
    "Age",
    "string",
    "",
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    0,
);
const CONTAINERS: Column = (
    "Containers",
    "string",
    "",
    "Names of each container in the template.",
    1,
);
const IMAGES: Column = (
    "Images",
    "string",
    "",
    "Images referenced by each container in the template.",
    1,
);
const SELECTOR: Column = (
    "Selector",
    "string",
    "",
    "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
    1,
);

/// The columns of `kind`'s table.
pub fn columns(kind: &str) -> Vec<Column> {
    let s = |name, description| (name, "string", "", description, 0);
    let i = |name, description| (name, "integer", "", description, 0);
    let wide = |name, description| (name, "string", "", description, 1);
    match kind {
        "Pod" => vec![
            NAME,
            s(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            s(
                "Status",
                "The aggregate status of the containers in this pod.",
            ),
            s(
                "Restarts",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            wide(
                "IP",
                "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            wide(
                "Node",
                "NodeName indicates in which node this pod is scheduled.",
            ),
            wide(
                "Nominated Node",
                "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.",
            ),
            wide(
                "Readiness Gates",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "Deployment" => vec![
            NAME,
            s("Ready", "Number of the pod with ready state"),
            i(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            i(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ReplicaSet" => vec![
            NAME,
            i("Desired", "Replicas is the number of desired replicas."),
            i(
                "Current",
                "Replicas is the most recently observed number of replicas.",
            ),
            i(
                "Ready",
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "StatefulSet" => vec![
            NAME,
            s("Ready", "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        "Service" => vec![
            NAME,
            s("Type", "type determines how the Service is exposed."),
            s(
                "Cluster-IP",
                "clusterIP is the IP address of the service and is usually assigned randomly.",
            ),
            s(
                "External-IP",
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            s(
                "Port(s)",
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            wide(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Node" => vec![
            NAME,
            s("Status", "The status of the node"),
            s("Roles", "The roles of the node"),
            AGE,
            s("Version", "Kubelet Version reported by the node."),
            wide(
                "Internal-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "External-IP",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "OS-Image",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            wide(
                "Kernel-Version",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            wide(
                "Container-Runtime",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "Namespace" => vec![NAME, s("Status", "The status of the namespace"), AGE],
        "Job" => vec![
            NAME,
            s("Status", "Status of the job."),
            s(
                "Completions",
                "The completion status of the job, as succeeded/desired.",
            ),
            s("Duration", "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "CronJob" => vec![
            NAME,
            s(
                "Schedule",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            s(
                "Timezone",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            (
                "Suspend",
                "boolean",
                "",
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
                0,
            ),
            i("Active", "A list of pointers to currently running jobs."),
            s(
                "Last Schedule",
                "Information when was the last time the job was successfully scheduled.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ConfigMap" => vec![
            NAME,
            i("Data", "Data contains the configuration data."),
            AGE,
        ],
        "Secret" => vec![
            NAME,
            s(
                "Type",
                "Used to facilitate programmatic handling of secret data.",
            ),
            i("Data", "Data contains the secret data."),
            AGE,
        ],
        "Event" => vec![
            s(
                "Last Seen",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            s(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            s(
                "Reason",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            s("Object", "The object that this event is about."),
            wide(
                "Subobject",
                "The subobject (field path) that this event is about.",
            ),
            wide("Source", "The component reporting this event."),
            s(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            wide(
                "First Seen",
                "The time at which the event was first recorded.",
            ),
            (
                "Count",
                "integer",
                "",
                "The number of times this event has occurred.",
                1,
            ),
            ("Name", "string", "name", NAME.3, 1),
        ],
        "Endpoints" => vec![NAME, s("Endpoints", "Endpoints of the service"), AGE],
        "EndpointSlice" => vec![
            NAME,
            s(
                "AddressType",
                "Type of address carried by this EndpointSlice",
            ),
            s("Ports", "Ports of the EndpointSlice"),
            s("Endpoints", "Endpoints of the EndpointSlice"),
            AGE,
        ],
        "Lease" => vec![NAME, s("Holder", "The holder of the lease"), AGE],
        "ServiceAccount" => vec![
            NAME,
            i(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ],
        "Ingress" => vec![
            NAME,
            s("Class", "The name of the IngressClass resource."),
            s(
                "Hosts",
                "Hosts that incoming requests are matched against before the ingress rule",
            ),
            s(
                "Address",
                "Address is a list containing ingress points for the load-balancer",
            ),
            s("Ports", "Ports of TLS configurations that open"),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// The reference time for ages, in nanoseconds since the Unix epoch.
pub struct Now(i128);

impl Now {
    /// `now` as the reference time.
    pub fn new(now: SystemTime) -> Now {
        let nanos = match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Now(nanos)
    }

    /// kubectl's `translateTimestampSince`: `<unknown>` for no time.
    fn since(&self, t: Option<&Timestamp>) -> String {
        match t {
            Some(t) => duration::human(self.0 - t.as_nanosecond()),
            None => "<unknown>".into(),
        }
    }

    fn age(&self, meta: &ObjectMeta) -> String {
        self.since(meta.creation_timestamp.as_ref().map(|t| &t.0))
    }
}

fn de<T: DeserializeOwned + Default>(obj: &Value) -> T {
    serde_json::from_value(obj.clone()).unwrap_or_default()
}

fn name(meta: &ObjectMeta) -> Value {
    json!(meta.name.as_deref().unwrap_or(""))
}

fn or_none(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("<none>").to_owned()
}

/// `labels.FormatLabels`: `a=b,c=d`, or `<none>`.
fn format_labels(labels: Option<&std::collections::BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// `metav1.LabelSelectorAsSelector(...).String()`; `<none>` when empty.
fn format_selector(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<(String, String)> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        let text = match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other}", e.key),
        };
        parts.push((e.key.clone(), text));
    }
    parts.sort();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The CONTAINERS and IMAGES cells of a pod template.
fn containers_and_images(t: Option<&core::PodTemplateSpec>) -> [Value; 2] {
    let containers = t
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    [json!(names.join(",")), json!(images.join(","))]
}

/// The cells of one object's row.
pub fn cells(kind: &str, obj: &Value, now: &Now) -> Vec<Value> {
    match kind {
        "Pod" => pod(&de(obj), now),
        "Deployment" => {
            let d: apps::Deployment = de(obj);
            let spec = d.spec.clone().unwrap_or_default();
            let status = d.status.clone().unwrap_or_default();
            let [containers, images] = containers_and_images(Some(&spec.template));
            vec![
                name(&d.metadata),
                json!(format!(
                    "{}/{}",
                    status.ready_replicas.unwrap_or(0),
                    spec.replicas.unwrap_or(1)
                )),
                json!(status.updated_replicas.unwrap_or(0)),
                json!(status.available_replicas.unwrap_or(0)),
                json!(now.age(&d.metadata)),
                containers,
                images,
                json!(format_selector(Some(&spec.selector))),
            ]
        }
        "ReplicaSet" => {
            let r: apps::ReplicaSet = de(obj);
            let spec = r.spec.clone().unwrap_or_default();
            let status = r.status.clone().unwrap_or_default();
            let [containers, images] = containers_and_images(spec.template.as_ref());
            vec![
                name(&r.metadata),
                json!(spec.replicas.unwrap_or(1)),
                json!(status.replicas),
                json!(status.ready_replicas.unwrap_or(0)),
                json!(now.age(&r.metadata)),
                containers,
                images,
                json!(format_selector(Some(&spec.selector))),
            ]
        }
        "StatefulSet" => {
            let s: apps::StatefulSet = de(obj);
            let spec = s.spec.clone().unwrap_or_default();
            let status = s.status.clone().unwrap_or_default();
            let [containers, images] = containers_and_images(Some(&spec.template));
            vec![
                name(&s.metadata),
                json!(format!(
                    "{}/{}",
                    status.ready_replicas.unwrap_or(0),
                    spec.replicas.unwrap_or(1)
                )),
                json!(now.age(&s.metadata)),
                containers,
                images,
            ]
        }
        "Service" => service(&de(obj), now),
        "Node" => node(&de(obj), now),
        "Namespace" => {
            let ns: core::Namespace = de(obj);
            let phase = ns
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            vec![
                name(&ns.metadata),
                json!(phase),
                json!(now.age(&ns.metadata)),
            ]
        }
        "Job" => job(&de(obj), now),
        "CronJob" => {
            let c: batch::CronJob = de(obj);
            let spec = c.spec.clone().unwrap_or_default();
            let status = c.status.clone().unwrap_or_default();
            let job_spec = spec.job_template.spec.clone().unwrap_or_default();
            let [containers, images] = containers_and_images(Some(&job_spec.template));
            vec![
                name(&c.metadata),
                json!(spec.schedule),
                json!(or_none(spec.time_zone.as_deref())),
                json!(match spec.suspend {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "<unset>",
                }),
                json!(status.active.map_or(0, |a| a.len())),
                json!(
                    status
                        .last_schedule_time
                        .as_ref()
                        .map_or("<none>".into(), |t| now.since(Some(&t.0)))
                ),
                json!(now.age(&c.metadata)),
                containers,
                images,
                json!(format_selector(job_spec.selector.as_ref())),
            ]
        }
        "ConfigMap" => {
            let c: core::ConfigMap = de(obj);
            let n = c.data.as_ref().map_or(0, |d| d.len())
                + c.binary_data.as_ref().map_or(0, |d| d.len());
            vec![name(&c.metadata), json!(n), json!(now.age(&c.metadata))]
        }
        "Secret" => {
            let s: core::Secret = de(obj);
            vec![
                name(&s.metadata),
                json!(s.type_.as_deref().unwrap_or("")),
                json!(s.data.as_ref().map_or(0, |d| d.len())),
                json!(now.age(&s.metadata)),
            ]
        }
        "Event" => event(&de(obj), now),
        "Endpoints" => {
            let e: core::Endpoints = de(obj);
            vec![
                name(&e.metadata),
                json!(format_endpoints(&e)),
                json!(now.age(&e.metadata)),
            ]
        }
        "EndpointSlice" => {
            let e: discovery::EndpointSlice = de(obj);
            let ports: Vec<String> = e
                .ports
                .iter()
                .flatten()
                .map(|p| p.port.map_or("<unset>".into(), |p| p.to_string()))
                .collect();
            let addresses: Vec<&str> = e
                .endpoints
                .iter()
                .flat_map(|ep| ep.addresses.iter().map(String::as_str))
                .collect();
            vec![
                name(&e.metadata),
                json!(e.address_type),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                json!(first_three(&addresses, "<unset>")),
                json!(now.age(&e.metadata)),
            ]
        }
        "Lease" => {
            let l: coordination::Lease = de(obj);
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            vec![
                name(&l.metadata),
                json!(holder),
                json!(now.age(&l.metadata)),
            ]
        }
        "ServiceAccount" => {
            let sa: core::ServiceAccount = de(obj);
            vec![
                name(&sa.metadata),
                json!(sa.secrets.as_ref().map_or(0, |s| s.len())),
                json!(now.age(&sa.metadata)),
            ]
        }
        "Ingress" => ingress(&de(obj), now),
        _ => {
            let meta: ObjectMeta = obj.get("metadata").map(de).unwrap_or_default();
            vec![name(&meta), json!(now.age(&meta))]
        }
    }
}

/// Up to three items, then ` + N more...`; `empty` when there are none.
fn first_three(items: &[&str], empty: &str) -> String {
    match items.len() {
        0 => empty.into(),
        n if n <= 3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

fn pod(p: &core::Pod, now: &Now) -> Vec<Value> {
    let spec = p.spec.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let mut reason = status.phase.clone().unwrap_or_else(|| "Pending".into());
    if let Some(r) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        reason = r.to_owned();
    }
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |c: &core::ContainerStatus| {
        restarts += c.restart_count;
        let finished = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref());
        if let Some(t) = finished
            && last_restart.is_none_or(|l| t.0 > l)
        {
            last_restart = Some(t.0);
        }
    };

    let init_specs = spec.init_containers.as_deref().unwrap_or_default();
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let total = spec.containers.len() + init_specs.iter().filter(|c| sidecar(&c.name)).count();
    let mut ready = 0;
    let mut initializing = false;
    for (i, c) in status.init_container_statuses.iter().flatten().enumerate() {
        note_restart(c);
        let state = c.state.clone().unwrap_or_default();
        if sidecar(&c.name) {
            if c.started == Some(true) {
                if c.ready {
                    ready += 1;
                }
                continue;
            }
        } else if state.terminated.as_ref().is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        reason = match (&state.terminated, &state.waiting) {
            (Some(t), _) => match (
                t.reason.as_deref().filter(|r| !r.is_empty()),
                t.signal.filter(|s| *s != 0),
            ) {
                (Some(r), _) => format!("Init:{r}"),
                (None, Some(sig)) => format!("Init:Signal:{sig}"),
                (None, None) => format!("Init:ExitCode:{}", t.exit_code),
            },
            (None, Some(w))
                if w.reason
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && r != "PodInitializing") =>
            {
                format!("Init:{}", w.reason.as_deref().unwrap_or_default())
            }
            _ => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in status.container_statuses.iter().flatten().rev() {
            note_restart(c);
            let state = c.state.clone().unwrap_or_default();
            if let Some(r) = state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.as_deref())
                .filter(|r| !r.is_empty())
            {
                reason = r.to_owned();
            } else if let Some(t) = &state.terminated {
                reason = match (
                    t.reason.as_deref().filter(|r| !r.is_empty()),
                    t.signal.filter(|s| *s != 0),
                ) {
                    (Some(r), _) => r.to_owned(),
                    (None, Some(sig)) => format!("Signal:{sig}"),
                    (None, None) => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && state.running.is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = if status.reason.as_deref() == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", now.since(Some(&t))),
        _ => restarts.to_string(),
    };
    let gates = spec.readiness_gates.as_deref().unwrap_or_default();
    let gates_cell = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = status.conditions.as_deref().unwrap_or_default();
        let met = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .any(|c| c.type_ == g.condition_type && c.status == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(&p.metadata),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        json!(now.age(&p.metadata)),
        json!(or_none(status.pod_ip.as_deref())),
        json!(or_none(spec.node_name.as_deref())),
        json!(or_none(status.nominated_node_name.as_deref())),
        json!(gates_cell),
    ]
}

fn service(s: &core::Service, now: &Now) -> Vec<Value> {
    let spec = s.spec.clone().unwrap_or_default();
    let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let external_ips = spec.external_ips.clone().unwrap_or_default();
    let external = match ty.as_str() {
        "ExternalName" => spec.external_name.clone().unwrap_or_default(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect();
            ips.extend(external_ips);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if external_ips.is_empty() => "<none>".into(),
        _ => external_ips.join(","),
    };
    let ports: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|n| *n > 0) {
                Some(np) => format!("{}:{np}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect();
    vec![
        name(&s.metadata),
        json!(ty),
        json!(or_none(
            spec.cluster_ips
                .as_ref()
                .and_then(|ips| ips.first())
                .or(spec.cluster_ip.as_ref())
                .map(String::as_str)
        )),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(",")
        }),
        json!(now.age(&s.metadata)),
        json!(format_labels(spec.selector.as_ref())),
    ]
}

fn node(n: &core::Node, now: &Now) -> Vec<Value> {
    let status = n.status.clone().unwrap_or_default();
    let mut state: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .map(|c| {
            if c.status == "True" {
                "Ready".into()
            } else {
                "NotReady".into()
            }
        })
        .take(1)
        .collect();
    if state.is_empty() {
        state.push("Unknown".into());
    }
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        state.push("SchedulingDisabled".into());
    }
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let mut roles: Vec<String> = labels
        .iter()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(role.to_owned())
            } else if k == "kubernetes.io/role" {
                Some(v.clone())
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        or_none(
            status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == ty)
                .map(|a| a.address.as_str()),
        )
    };
    let info = status.node_info.clone().unwrap_or_default();
    let unknown = |s: String| {
        if s.is_empty() {
            "<unknown>".to_owned()
        } else {
            s
        }
    };
    vec![
        name(&n.metadata),
        json!(state.join(",")),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(now.age(&n.metadata)),
        json!(info.kubelet_version),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(unknown(info.os_image)),
        json!(unknown(info.kernel_version)),
        json!(unknown(info.container_runtime_version)),
    ]
}

fn job(j: &batch::Job, now: &Now) -> Vec<Value> {
    let spec = j.spec.clone().unwrap_or_default();
    let status = j.status.clone().unwrap_or_default();
    let has = |ty: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == ty && c.status == "True")
    };
    let state = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if j.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let succeeded = status.succeeded.unwrap_or(0);
    let completions = match (spec.completions, spec.parallelism.unwrap_or(1)) {
        (Some(c), _) => format!("{succeeded}/{c}"),
        (None, p) if p > 1 => format!("{succeeded}/1 of {p}"),
        (None, _) => format!("{succeeded}/1"),
    };
    let duration = match (&status.start_time, &status.completion_time) {
        (None, _) => String::new(),
        (Some(start), None) => now.since(Some(&start.0)),
        (Some(start), Some(end)) => {
            duration::human(end.0.as_nanosecond() - start.0.as_nanosecond())
        }
    };
    let [containers, images] = containers_and_images(Some(&spec.template));
    vec![
        name(&j.metadata),
        json!(state),
        json!(completions),
        json!(duration),
        json!(now.age(&j.metadata)),
        containers,
        images,
        json!(format_selector(spec.selector.as_ref())),
    ]
}

fn event(e: &core::Event, now: &Now) -> Vec<Value> {
    let time = |t: Option<&Time>| t.map(|t| t.0);
    let first = time(e.first_timestamp.as_ref()).or_else(|| e.event_time.as_ref().map(|t| t.0));
    let first_seen = now.since(first.as_ref());
    let mut last_seen = match &e.last_timestamp {
        Some(t) => now.since(Some(&t.0)),
        None => first_seen.clone(),
    };
    let mut count = e.count.unwrap_or(0);
    if let Some(series) = &e.series {
        last_seen = now.since(series.last_observed_time.as_ref().map(|t| &t.0));
        count = series.count.unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let kind = e
        .involved_object
        .kind
        .as_deref()
        .unwrap_or("")
        .to_lowercase();
    let target = match e.involved_object.name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let source = e.source.clone().unwrap_or_default();
    let component = source
        .component
        .filter(|c| !c.is_empty())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default();
    let instance = source
        .host
        .filter(|h| !h.is_empty())
        .or_else(|| e.reporting_instance.clone())
        .unwrap_or_default();
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last_seen),
        json!(e.type_.as_deref().unwrap_or("")),
        json!(e.reason.as_deref().unwrap_or("")),
        json!(target),
        json!(e.involved_object.field_path.as_deref().unwrap_or("")),
        json!(source),
        json!(e.message.as_deref().unwrap_or("").trim()),
        json!(first_seen),
        json!(count),
        name(&e.metadata),
    ]
}

/// `formatEndpoints`: up to three `ip:port`, then ` + N more...`.
fn format_endpoints(e: &core::Endpoints) -> String {
    let subsets = e.subsets.as_deref().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut all = Vec::new();
    for s in subsets {
        let addresses = s.addresses.as_deref().unwrap_or_default();
        let ports = s.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            all.extend(addresses.iter().map(|a| a.ip.clone()));
        }
        for p in ports {
            for a in addresses {
                let host = if a.ip.contains(':') {
                    format!("[{}]", a.ip)
                } else {
                    a.ip.clone()
                };
                all.push(format!("{host}:{}", p.port));
            }
        }
    }
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    first_three(&refs, "")
}

fn ingress(i: &networking::Ingress, now: &Now) -> Vec<Value> {
    let spec = i.spec.clone().unwrap_or_default();
    let rules = spec.rules.as_deref().unwrap_or_default();
    let hosts: Vec<&str> = rules
        .iter()
        .filter_map(|r| r.host.as_deref())
        .filter(|h| !h.is_empty())
        .collect();
    let hosts = match hosts.len() {
        0 => "*".to_owned(),
        n if n <= 3 => hosts.join(","),
        _ => format!("{} + {} more...", hosts[..3].join(","), rules.len() - 3),
    };
    let address: Vec<String> = i
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    let ports = if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
        "80, 443"
    } else {
        "80"
    };
    vec![
        name(&i.metadata),
        json!(or_none(spec.ingress_class_name.as_deref())),
        json!(hosts),
        json!(address.join(",")),
        json!(ports),
        json!(now.age(&i.metadata)),
    ]
}
