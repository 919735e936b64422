//! Pod spec and pod template validation (`ValidatePodSpec`,
//! `ValidatePodTemplateSpec`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::names;
use super::quantity::{self, QUANTITY_MSG};
use super::rules::{between, nonneg, not_found, port_num, required, required_detail, supported};
use crate::Cause;
use crate::k8s_openapi::api::core::v1::{
    Container, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
};
use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Which `restartPolicy` values a pod's owner allows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A bare pod: `Always`, `OnFailure` or `Never`.
    Any,
    /// Deployments, ReplicaSets, StatefulSets: `Always` only.
    Always,
    /// Jobs and CronJobs: `OnFailure` or `Never`, and no default.
    Job,
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// Validates a pod template at `path` (`spec.template`).
pub fn template(t: &PodTemplateSpec, path: &str, restart: Restart, out: &mut Vec<Cause>) {
    if let Some(meta) = &t.metadata {
        names::label_map(
            &format!("{path}.metadata.labels"),
            meta.labels.as_ref(),
            out,
        );
    }
    match &t.spec {
        Some(spec) => pod_spec(spec, &format!("{path}.spec"), restart, out),
        None => out.push(required(format!("{path}.spec.containers"))),
    }
}

/// Validates a pod spec at `path` (`spec`, `spec.template.spec`).
pub fn pod_spec(spec: &PodSpec, path: &str, restart: Restart, out: &mut Vec<Cause>) {
    let mut volumes = BTreeSet::new();
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        if vol.name.is_empty() {
            out.push(required(format!("{vpath}.name")));
        } else {
            names::causes(
                &format!("{vpath}.name"),
                &vol.name,
                names::dns1123_label(&vol.name),
                out,
            );
            if !volumes.insert(vol.name.as_str()) {
                out.push(Cause::duplicate(format!("{vpath}.name"), &json!(vol.name)));
            }
        }
        let sources = serde_json::to_value(vol)
            .ok()
            .and_then(|v| v.as_object().map(|m| m.len() - 1))
            .unwrap_or(0);
        if sources == 0 {
            out.push(required_detail(vpath, "must specify a volume type"));
        } else if sources > 1 {
            out.push(Cause::forbidden(
                vpath,
                "may not specify more than 1 volume type",
            ));
        }
    }

    if spec.containers.is_empty() {
        out.push(required(format!("{path}.containers")));
    }
    let mut container_names = BTreeSet::new();
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", &spec.containers),
    ];
    for (key, list) in lists {
        for (i, c) in list.iter().enumerate() {
            let cpath = format!("{path}.{key}[{i}]");
            if !c.name.is_empty() && !container_names.insert(c.name.as_str()) {
                out.push(Cause::duplicate(format!("{cpath}.name"), &json!(c.name)));
            }
            container(c, &cpath, &volumes, key == "initContainers", out);
        }
    }

    match (restart, spec.restart_policy.as_deref()) {
        (Restart::Any, Some(p)) => supported(
            &format!("{path}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
            out,
        ),
        (Restart::Always, Some(p)) => {
            supported(&format!("{path}.restartPolicy"), p, &["Always"], out)
        }
        (Restart::Job, Some(p)) => supported(
            &format!("{path}.restartPolicy"),
            p,
            &["OnFailure", "Never"],
            out,
        ),
        (Restart::Job, None) => out.push(required_detail(
            format!("{path}.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
        (_, None) => out.push(required(format!("{path}.restartPolicy"))),
    }
    if let Some(p) = &spec.dns_policy {
        supported(
            &format!("{path}.dnsPolicy"),
            p,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            out,
        );
    }
    if let Some(s) = spec.active_deadline_seconds {
        between(
            &format!("{path}.activeDeadlineSeconds"),
            s,
            1,
            i64::from(i32::MAX),
            out,
        );
    }
    nonneg(
        &format!("{path}.terminationGracePeriodSeconds"),
        spec.termination_grace_period_seconds,
        out,
    );
    names::label_map(
        &format!("{path}.nodeSelector"),
        spec.node_selector.as_ref(),
        out,
    );
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let tpath = format!("{path}.tolerations[{i}]");
        if let Some(op) = &t.operator {
            supported(&format!("{tpath}.operator"), op, &["Equal", "Exists"], out);
        }
        if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
            supported(
                &format!("{tpath}.effect"),
                e,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                out,
            );
        }
    }
}

fn container(
    c: &Container,
    path: &str,
    volumes: &BTreeSet<&str>,
    init: bool,
    out: &mut Vec<Cause>,
) {
    if c.name.is_empty() {
        out.push(required(format!("{path}.name")));
    } else {
        names::causes(
            &format!("{path}.name"),
            &c.name,
            names::dns1123_label(&c.name),
            out,
        );
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        out.push(required(format!("{path}.image")));
    }
    if let Some(p) = &c.image_pull_policy {
        supported(
            &format!("{path}.imagePullPolicy"),
            p,
            &["Always", "IfNotPresent", "Never"],
            out,
        );
    }
    if let Some(p) = &c.termination_message_policy {
        supported(
            &format!("{path}.terminationMessagePolicy"),
            p,
            &["File", "FallbackToLogsOnError"],
            out,
        );
    }

    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        port_num(&format!("{ppath}.containerPort"), p.container_port, out);
        if let Some(h) = p.host_port.filter(|&h| h != 0) {
            port_num(&format!("{ppath}.hostPort"), h, out);
        }
        if let Some(proto) = &p.protocol {
            supported(&format!("{ppath}.protocol"), proto, PROTOCOLS, out);
        }
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            names::causes(&format!("{ppath}.name"), name, names::port_name(name), out);
            if !port_names.insert(name) {
                out.push(Cause::duplicate(format!("{ppath}.name"), &json!(name)));
            }
        }
    }

    for (i, e) in c.env.iter().flatten().enumerate() {
        let epath = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            out.push(required(format!("{epath}.name")));
        } else {
            names::causes(
                &format!("{epath}.name"),
                &e.name,
                names::env_var_name(&e.name),
                out,
            );
        }
        if e.value_from.is_some() && e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            out.push(Cause::invalid(
                format!("{epath}.valueFrom"),
                &json!(""),
                "may not be specified when `value` is not empty",
            ));
        }
    }

    if let Some(r) = &c.resources {
        resources(r, &format!("{path}.resources"), out);
    }

    let mut mount_paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mpath = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            out.push(required(format!("{mpath}.name")));
        } else if !volumes.contains(m.name.as_str()) {
            out.push(not_found(format!("{mpath}.name"), &m.name));
        }
        if m.mount_path.is_empty() {
            out.push(required(format!("{mpath}.mountPath")));
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            out.push(Cause::invalid(
                format!("{mpath}.mountPath"),
                &json!(m.mount_path),
                "must be unique",
            ));
        }
    }

    let probes = [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (key, probe) in probes {
        if let Some(p) = probe {
            if init && c.restart_policy.is_none() {
                out.push(Cause::forbidden(
                    format!("{path}.{key}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
            self::probe(p, &format!("{path}.{key}"), key != "readinessProbe", out);
        }
    }
}

fn probe(p: &Probe, path: &str, success_must_be_one: bool, out: &mut Vec<Cause>) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ];
    match handlers.iter().filter(|h| **h).count() {
        0 => out.push(required_detail(
            path.to_owned(),
            "must specify a handler type",
        )),
        1 => {}
        _ => out.push(Cause::forbidden(
            path.to_owned(),
            "may not specify more than 1 handler type",
        )),
    }
    let fields = [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ];
    for (key, v) in fields {
        nonneg(&format!("{path}.{key}"), v.map(i64::from), out);
    }
    if success_must_be_one && p.success_threshold.is_some_and(|s| s != 1) {
        out.push(Cause::invalid(
            format!("{path}.successThreshold"),
            &json!(p.success_threshold),
            "must be 1",
        ));
    }
}

fn resources(r: &ResourceRequirements, path: &str, out: &mut Vec<Cause>) {
    let parse_all = |key: &str, list: Option<&BTreeMap<String, Quantity>>, out: &mut Vec<Cause>| {
        let mut parsed = BTreeMap::new();
        for (name, q) in list.into_iter().flatten() {
            let field = format!("{path}.{key}[{name}]");
            match quantity::parse(&q.0) {
                None => out.push(Cause::invalid(field, &json!(q.0), QUANTITY_MSG)),
                Some(v) if v < 0.0 => out.push(Cause::invalid(
                    field,
                    &json!(q.0),
                    "must be greater than or equal to 0",
                )),
                Some(v) => {
                    parsed.insert(name.clone(), (v, q.0.clone()));
                }
            }
        }
        parsed
    };
    let limits = parse_all("limits", r.limits.as_ref(), out);
    let requests = parse_all("requests", r.requests.as_ref(), out);
    for (name, (request, shown)) in &requests {
        if let Some((limit, limit_shown)) = limits.get(name)
            && request > limit
        {
            out.push(Cause::invalid(
                format!("{path}.requests[{name}]"),
                &Value::String(shown.clone()),
                format!("must be less than or equal to {name} limit of {limit_shown}"),
            ));
        }
    }
}
