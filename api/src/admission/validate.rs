//! Validation per kind (`pkg/apis/*/validation` in Kubernetes), on the
//! typed object once defaults are applied; immutability against the old
//! object on update.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::names;
use super::pod::{self, Restart};
use super::rules::{
    immutable, ip, nonneg, port_num, positive, required, required_detail, supported, too_long,
};
use super::{Operation, cron};
use crate::k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, networking::v1 as networking,
};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use crate::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use crate::{Cause, ResourceType};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
/// ConfigMaps and Secrets are capped at 1 MiB, etcd's value size limit.
const MAX_DATA_BYTES: usize = 1024 * 1024;
/// A CronJob's name plus the 11 characters of a job's schedule suffix must
/// fit the 63 characters of a label value.
const CRONJOB_NAME_MAX: usize = 52;

fn de<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// Validates `obj` (and, on update, its changes from `old`), pushing every
/// problem onto `out`. Errors only when `obj` no longer decodes as its type.
pub fn object(
    rt: &ResourceType,
    op: Operation,
    obj: &Value,
    old: Option<&Value>,
    out: &mut Vec<Cause>,
) -> Result<(), String> {
    metadata(rt, obj.get("metadata").unwrap_or(&Value::Null), out);
    let old = old.filter(|_| op == Operation::Update);
    macro_rules! typed {
        ($ty:ty, $f:expr) => {{
            let new: $ty = de(obj)?;
            let old: Option<$ty> = old.and_then(|o| de(o).ok());
            $f(&new, old.as_ref(), obj, out)
        }};
    }
    match rt.kind {
        "Pod" => typed!(core::Pod, pod),
        "Service" => typed!(core::Service, service),
        "Endpoints" => typed!(core::Endpoints, endpoints),
        "ConfigMap" => typed!(core::ConfigMap, config_map),
        "Secret" => typed!(core::Secret, secret),
        "Node" => typed!(core::Node, node),
        "Event" => typed!(core::Event, event),
        "Deployment" => typed!(apps::Deployment, deployment),
        "ReplicaSet" => typed!(apps::ReplicaSet, replica_set),
        "StatefulSet" => typed!(apps::StatefulSet, stateful_set),
        "Job" => typed!(batch::Job, job),
        "CronJob" => typed!(batch::CronJob, cron_job),
        "Lease" => typed!(coordination::Lease, lease),
        "CertificateSigningRequest" => typed!(
            crate::k8s_openapi::api::certificates::v1::CertificateSigningRequest,
            super::csr::certificate_signing_request
        ),
        "EndpointSlice" => typed!(discovery::EndpointSlice, endpoint_slice),
        "Ingress" => typed!(networking::Ingress, ingress),
        "NetworkPolicy" => typed!(networking::NetworkPolicy, network_policy),
        // Namespace and ServiceAccount: metadata only.
        _ => {}
    }
    Ok(())
}

/// How names of a kind are checked.
fn name_rule(kind: &str) -> fn(&str) -> Vec<String> {
    match kind {
        "Namespace" => names::dns1123_label,
        "Service" => names::dns1035_label,
        _ => names::dns1123_subdomain,
    }
}

fn metadata(rt: &ResourceType, meta: &Value, out: &mut Vec<Cause>) {
    let rule = name_rule(rt.kind);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !name.is_empty() {
        names::causes("metadata.name", name, rule(name), out);
        if rt.kind == "CronJob" && name.len() > CRONJOB_NAME_MAX {
            out.push(Cause::invalid(
                "metadata.name",
                &json!(name),
                format!("must be no more than {CRONJOB_NAME_MAX} characters"),
            ));
        }
    } else if generate.is_empty() {
        out.push(required_detail(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    if !generate.is_empty() {
        // A prefix may end in '-': check it as if it ended in a letter.
        let masked = match generate.strip_suffix('-') {
            Some(head) if !head.is_empty() => format!("{head}a"),
            _ => generate.to_owned(),
        };
        names::causes("metadata.generateName", generate, rule(&masked), out);
    }
    if let Some(ns) = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        && rt.namespaced()
    {
        names::causes("metadata.namespace", ns, names::dns1123_label(ns), out);
    }
    names::labels(
        "metadata.labels",
        meta.get("labels").and_then(Value::as_object),
        out,
    );
    names::annotations(
        "metadata.annotations",
        meta.get("annotations").and_then(Value::as_object),
        out,
    );
}

// ---- selectors -------------------------------------------------------------

fn selector(sel: &LabelSelector, path: &str, out: &mut Vec<Cause>) {
    names::label_map(
        &format!("{path}.matchLabels"),
        sel.match_labels.as_ref(),
        out,
    );
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let epath = format!("{path}.matchExpressions[{i}]");
        names::causes(
            &format!("{epath}.key"),
            &e.key,
            names::qualified_name(&e.key),
            out,
        );
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                out.push(required_detail(
                    format!("{epath}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                out.push(Cause::forbidden(
                    format!("{epath}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => supported(
                &format!("{epath}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
                out,
            ),
        }
    }
}

fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// Whether `sel` selects an object with `labels`.
fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// A workload's selector and template: the selector is required (when
/// `required`), non-empty and valid, and must select the template's labels.
fn selector_and_template(
    kind: &str,
    sel: Option<&LabelSelector>,
    sel_present: bool,
    template: &core::PodTemplateSpec,
    path: &str,
    restart: Restart,
    out: &mut Vec<Cause>,
) {
    let sel_path = format!("{path}.selector");
    match sel {
        _ if !sel_present => out.push(required(sel_path)),
        Some(sel) if selector_is_empty(sel) => {
            out.push(Cause::invalid(
                &sel_path,
                &json!(sel),
                format!("empty selector is invalid for {kind}"),
            ));
        }
        Some(sel) => {
            let before = out.len();
            selector(sel, &sel_path, out);
            let labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if out.len() == before && !matches(sel, &labels) {
                out.push(Cause::invalid(
                    format!("{path}.template.metadata.labels"),
                    &json!(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        None => {}
    }
    pod::template(template, &format!("{path}.template"), restart, out);
}

fn has(obj: &Value, pointer: &str) -> bool {
    obj.pointer(pointer).is_some_and(|v| !v.is_null())
}

// ---- core ------------------------------------------------------------------

fn pod(new: &core::Pod, old: Option<&core::Pod>, _: &Value, out: &mut Vec<Cause>) {
    let Some(spec) = &new.spec else {
        out.push(required("spec.containers"));
        return;
    };
    pod::pod_spec(spec, "spec", Restart::Any, out);
    let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) else {
        return;
    };
    // Only images, activeDeadlineSeconds, tolerations and the grace period
    // may change (and nodeName be set once, which Skiff's scheduler does by
    // update rather than through `binding`).
    let mut comparable = spec.clone();
    let pairs = comparable.containers.iter_mut().zip(&old_spec.containers);
    for (c, o) in pairs {
        c.image.clone_from(&o.image);
    }
    if let (Some(new_init), Some(old_init)) =
        (&mut comparable.init_containers, &old_spec.init_containers)
    {
        for (c, o) in new_init.iter_mut().zip(old_init) {
            c.image.clone_from(&o.image);
        }
    }
    comparable.active_deadline_seconds = old_spec.active_deadline_seconds;
    comparable.tolerations.clone_from(&old_spec.tolerations);
    comparable.termination_grace_period_seconds = old_spec.termination_grace_period_seconds;
    if old_spec.node_name.as_deref().is_none_or(str::is_empty) {
        comparable.node_name.clone_from(&old_spec.node_name);
    }
    if &comparable != old_spec {
        out.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn service(new: &core::Service, old: Option<&core::Service>, _: &Value, out: &mut Vec<Cause>) {
    let spec = new.spec.clone().unwrap_or_default();
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    supported(
        "spec.type",
        ty,
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        out,
    );
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    if !cluster_ip.is_empty() && !headless {
        ip("spec.clusterIP", cluster_ip, out);
    }
    if ty == "ExternalName" {
        match spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
        {
            None | Some("") => out.push(required("spec.externalName")),
            Some(n) => names::causes("spec.externalName", n, names::dns1123_subdomain(n), out),
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        out.push(required("spec.ports"));
    }
    let mut seen_names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    let mut seen_node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match p.name.as_deref().unwrap_or("") {
            "" if ports.len() > 1 => out.push(required(format!("{path}.name"))),
            "" => {}
            name => {
                names::causes(
                    &format!("{path}.name"),
                    name,
                    names::dns1123_label(name),
                    out,
                );
                if !seen_names.insert(name) {
                    out.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
                }
            }
        }
        port_num(&format!("{path}.port"), p.port, out);
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        supported(&format!("{path}.protocol"), protocol, PROTOCOLS, out);
        if !seen_ports.insert((p.port, protocol)) {
            out.push(Cause::duplicate(
                path.clone(),
                &json!({"port": p.port, "protocol": protocol}),
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port_num(&format!("{path}.targetPort"), *t, out),
            Some(IntOrString::String(t)) => {
                names::causes(&format!("{path}.targetPort"), t, names::port_name(t), out)
            }
            None => {}
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            let np_path = format!("{path}.nodePort");
            if ty == "ClusterIP" || ty == "ExternalName" {
                out.push(Cause::forbidden(
                    np_path,
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !(30000..=32767).contains(&np) {
                out.push(Cause::invalid(
                    np_path,
                    &json!(np),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            } else if !seen_node_ports.insert((np, protocol)) {
                out.push(Cause::duplicate(np_path, &json!(np)));
            }
        }
    }
    if let Some(a) = &spec.session_affinity {
        supported("spec.sessionAffinity", a, &["ClientIP", "None"], out);
    }
    if let Some(p) = &spec.internal_traffic_policy {
        supported("spec.internalTrafficPolicy", p, &["Cluster", "Local"], out);
    }
    if let Some(p) = &spec.external_traffic_policy {
        if ty == "ClusterIP" || ty == "ExternalName" {
            out.push(Cause::forbidden(
                "spec.externalTrafficPolicy",
                "may only be set for externally-accessible services",
            ));
        } else {
            supported("spec.externalTrafficPolicy", p, &["Cluster", "Local"], out);
        }
    }
    if let Some(p) = &spec.ip_family_policy {
        supported(
            "spec.ipFamilyPolicy",
            p,
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
            out,
        );
    }
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        supported(&format!("spec.ipFamilies[{i}]"), f, &["IPv4", "IPv6"], out);
    }
    names::label_map("spec.selector", spec.selector.as_ref(), out);

    if let Some(old_ip) = old
        .and_then(|o| o.spec.as_ref())
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        && ty != "ExternalName"
    {
        immutable("spec.clusterIP", &cluster_ip, &old_ip, out);
    }
}

fn endpoints(new: &core::Endpoints, _: Option<&core::Endpoints>, _: &Value, out: &mut Vec<Cause>) {
    for (i, s) in new.subsets.iter().flatten().enumerate() {
        let path = format!("subsets[{i}]");
        let lists = [
            ("addresses", &s.addresses),
            ("notReadyAddresses", &s.not_ready_addresses),
        ];
        for (key, list) in lists {
            for (j, a) in list.iter().flatten().enumerate() {
                let apath = format!("{path}.{key}[{j}].ip");
                if a.ip.is_empty() {
                    out.push(required(apath));
                } else {
                    ip(&apath, &a.ip, out);
                }
            }
        }
        let ports = s.ports.as_deref().unwrap_or_default();
        for (j, p) in ports.iter().enumerate() {
            let ppath = format!("{path}.ports[{j}]");
            match p.name.as_deref().unwrap_or("") {
                "" if ports.len() > 1 => out.push(required(format!("{ppath}.name"))),
                "" => {}
                name => names::causes(
                    &format!("{ppath}.name"),
                    name,
                    names::dns1123_label(name),
                    out,
                ),
            }
            port_num(&format!("{ppath}.port"), p.port, out);
            if let Some(proto) = &p.protocol {
                supported(&format!("{ppath}.protocol"), proto, PROTOCOLS, out);
            }
        }
    }
}

fn data_keys<'a>(field: &str, keys: impl Iterator<Item = &'a String>, out: &mut Vec<Cause>) {
    for k in keys {
        names::causes(&format!("{field}[{k}]"), k, names::config_key(k), out);
    }
}

/// `immutable: true` on ConfigMaps and Secrets: the flag and the data stay.
fn frozen(
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    data_changed: &[(&str, bool)],
    out: &mut Vec<Cause>,
) {
    if old_immutable != Some(true) {
        return;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if new_immutable != Some(true) {
        out.push(Cause::forbidden("immutable", MSG));
    }
    for (field, changed) in data_changed {
        if *changed {
            out.push(Cause::forbidden(*field, MSG));
        }
    }
}

fn config_map(
    new: &core::ConfigMap,
    old: Option<&core::ConfigMap>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    data_keys("data", new.data.iter().flat_map(BTreeMap::keys), out);
    data_keys(
        "binaryData",
        new.binary_data.iter().flat_map(BTreeMap::keys),
        out,
    );
    let mut size = 0;
    for (k, v) in new.data.iter().flatten() {
        size += k.len() + v.len();
        if new.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
            out.push(Cause::invalid(
                format!("data[{k}]"),
                &json!(k),
                "duplicate of key present in binaryData",
            ));
        }
    }
    size += new
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len())
        .sum::<usize>();
    if size > MAX_DATA_BYTES {
        out.push(too_long("", MAX_DATA_BYTES));
    }
    if let Some(old) = old {
        frozen(
            old.immutable,
            new.immutable,
            &[
                ("data", new.data != old.data),
                ("binaryData", new.binary_data != old.binary_data),
            ],
            out,
        );
    }
}

fn secret(new: &core::Secret, old: Option<&core::Secret>, obj: &Value, out: &mut Vec<Cause>) {
    let data = new.data.clone().unwrap_or_default();
    data_keys("data", data.keys(), out);
    if data.iter().map(|(k, v)| k.len() + v.0.len()).sum::<usize>() > MAX_DATA_BYTES {
        out.push(too_long("data", MAX_DATA_BYTES));
    }
    let ty = new.type_.as_deref().unwrap_or("Opaque");
    let need = |key: &str, out: &mut Vec<Cause>| {
        if !data.contains_key(key) {
            out.push(required(format!("data[{key}]")));
        }
    };
    match ty {
        "kubernetes.io/tls" => {
            need("tls.crt", out);
            need("tls.key", out);
        }
        "kubernetes.io/dockerconfigjson" => need(".dockerconfigjson", out),
        "kubernetes.io/dockercfg" => need(".dockercfg", out),
        "kubernetes.io/ssh-auth" => need("ssh-privatekey", out),
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            out.push(required("data[username]"));
            out.push(required("data[password]"));
        }
        "kubernetes.io/service-account-token"
            if !has(
                obj,
                "/metadata/annotations/kubernetes.io~1service-account.name",
            ) =>
        {
            out.push(required(
                "metadata.annotations[kubernetes.io/service-account.name]",
            ));
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable("type", &new.type_, &old.type_, out);
        frozen(
            old.immutable,
            new.immutable,
            &[("data", new.data != old.data)],
            out,
        );
    }
}

fn node(new: &core::Node, _: Option<&core::Node>, _: &Value, out: &mut Vec<Cause>) {
    let spec = new.spec.clone().unwrap_or_default();
    for (i, t) in spec.taints.iter().flatten().enumerate() {
        let path = format!("spec.taints[{i}]");
        names::causes(
            &format!("{path}.key"),
            &t.key,
            names::qualified_name(&t.key),
            out,
        );
        if let Some(v) = &t.value {
            names::causes(&format!("{path}.value"), v, names::label_value(v), out);
        }
        supported(
            &format!("{path}.effect"),
            &t.effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            out,
        );
    }
    if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
        let valid = cidr.split_once('/').is_some_and(|(addr, bits)| {
            addr.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        });
        if !valid {
            out.push(Cause::invalid(
                "spec.podCIDR",
                &json!(cidr),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
}

fn event(new: &core::Event, _: Option<&core::Event>, _: &Value, out: &mut Vec<Cause>) {
    let ns = new.metadata.namespace.as_deref().unwrap_or("");
    if let Some(obj_ns) = new
        .involved_object
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        && !ns.is_empty()
        && obj_ns != ns
    {
        out.push(Cause::invalid(
            "involvedObject.namespace",
            &json!(obj_ns),
            "does not match event.namespace",
        ));
    }
    if let Some(t) = new.type_.as_deref().filter(|t| !t.is_empty()) {
        supported("type", t, &["Normal", "Warning"], out);
    }
}

// ---- apps ------------------------------------------------------------------

fn replicas(path: &str, n: Option<i32>, out: &mut Vec<Cause>) {
    nonneg(path, n.map(i64::from), out);
}

/// A RollingUpdate's maxSurge/maxUnavailable: non-negative, a percentage
/// at most 100%.
fn int_or_percent(path: &str, v: Option<&IntOrString>, out: &mut Vec<Cause>) -> Option<i64> {
    match v? {
        IntOrString::Int(i) => {
            nonneg(path, Some(i64::from(*i)), out);
            Some(i64::from(*i))
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(p) if p < 0 => {
                out.push(Cause::invalid(
                    path,
                    &json!(s),
                    "must be greater than or equal to 0",
                ));
                None
            }
            Some(p) if p > 100 && path.ends_with("maxUnavailable") => {
                out.push(Cause::invalid(
                    path,
                    &json!(s),
                    "must not be greater than 100%",
                ));
                None
            }
            Some(p) => Some(p),
            None => {
                out.push(Cause::invalid(path, &json!(s), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
    }
}

fn deployment(
    new: &apps::Deployment,
    old: Option<&apps::Deployment>,
    obj: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    replicas("spec.replicas", spec.replicas, out);
    selector_and_template(
        "deployment",
        Some(&spec.selector),
        has(obj, "/spec/selector"),
        &spec.template,
        "spec",
        Restart::Always,
        out,
    );
    let strategy = spec.strategy.clone().unwrap_or_default();
    let ty = strategy.type_.as_deref().unwrap_or("RollingUpdate");
    supported(
        "spec.strategy.type",
        ty,
        &["Recreate", "RollingUpdate"],
        out,
    );
    match (&strategy.rolling_update, ty) {
        (Some(_), "Recreate") => out.push(Cause::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        )),
        (Some(ru), _) => {
            let unavailable = int_or_percent(
                "spec.strategy.rollingUpdate.maxUnavailable",
                ru.max_unavailable.as_ref(),
                out,
            );
            let surge = int_or_percent(
                "spec.strategy.rollingUpdate.maxSurge",
                ru.max_surge.as_ref(),
                out,
            );
            if unavailable == Some(0) && surge == Some(0) {
                out.push(Cause::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &json!(ru.max_unavailable),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        _ => {}
    }
    nonneg(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        out,
    );
    nonneg(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit.map(i64::from),
        out,
    );
    if let Some(p) = spec.progress_deadline_seconds {
        nonneg("spec.progressDeadlineSeconds", Some(i64::from(p)), out);
        if p <= spec.min_ready_seconds.unwrap_or(0) {
            out.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &json!(p),
                "must be greater than minReadySeconds",
            ));
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable("spec.selector", &spec.selector, &old_spec.selector, out);
    }
}

fn replica_set(
    new: &apps::ReplicaSet,
    old: Option<&apps::ReplicaSet>,
    obj: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    replicas("spec.replicas", spec.replicas, out);
    nonneg(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        out,
    );
    let template = spec.template.clone().unwrap_or_default();
    selector_and_template(
        "replicaset",
        Some(&spec.selector),
        has(obj, "/spec/selector"),
        &template,
        "spec",
        Restart::Always,
        out,
    );
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable("spec.selector", &spec.selector, &old_spec.selector, out);
    }
}

fn stateful_set(
    new: &apps::StatefulSet,
    old: Option<&apps::StatefulSet>,
    obj: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    replicas("spec.replicas", spec.replicas, out);
    selector_and_template(
        "statefulset",
        Some(&spec.selector),
        has(obj, "/spec/selector"),
        &spec.template,
        "spec",
        Restart::Always,
        out,
    );
    if let Some(p) = &spec.pod_management_policy {
        supported(
            "spec.podManagementPolicy",
            p,
            &["OrderedReady", "Parallel"],
            out,
        );
    }
    if let Some(s) = &spec.update_strategy {
        let ty = s.type_.as_deref().unwrap_or("RollingUpdate");
        supported(
            "spec.updateStrategy.type",
            ty,
            &["OnDelete", "RollingUpdate"],
            out,
        );
        if let Some(ru) = &s.rolling_update {
            if ty == "OnDelete" {
                out.push(Cause::forbidden(
                    "spec.updateStrategy.rollingUpdate",
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
            nonneg(
                "spec.updateStrategy.rollingUpdate.partition",
                ru.partition.map(i64::from),
                out,
            );
        }
    }
    nonneg(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit.map(i64::from),
        out,
    );
    nonneg(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        out,
    );
    if let Some(n) = spec.service_name.as_deref().filter(|n| !n.is_empty()) {
        names::causes("spec.serviceName", n, names::dns1123_label(n), out);
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        let mut comparable = spec.clone();
        comparable.replicas = old_spec.replicas;
        comparable.ordinals.clone_from(&old_spec.ordinals);
        comparable.template.clone_from(&old_spec.template);
        comparable
            .update_strategy
            .clone_from(&old_spec.update_strategy);
        comparable.revision_history_limit = old_spec.revision_history_limit;
        comparable
            .persistent_volume_claim_retention_policy
            .clone_from(&old_spec.persistent_volume_claim_retention_policy);
        comparable.min_ready_seconds = old_spec.min_ready_seconds;
        if &comparable != old_spec {
            out.push(Cause::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

// ---- batch -----------------------------------------------------------------

fn job_spec(spec: &batch::JobSpec, path: &str, out: &mut Vec<Cause>) {
    for (key, v) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
    ] {
        nonneg(&format!("{path}.{key}"), v.map(i64::from), out);
    }
    positive(
        &format!("{path}.activeDeadlineSeconds"),
        spec.active_deadline_seconds,
        out,
    );
    nonneg(
        &format!("{path}.ttlSecondsAfterFinished"),
        spec.ttl_seconds_after_finished.map(i64::from),
        out,
    );
    if let Some(mode) = &spec.completion_mode {
        supported(
            &format!("{path}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
            out,
        );
        if mode == "Indexed" && spec.completions.is_none() {
            out.push(required_detail(
                format!("{path}.completions"),
                "when completion mode is Indexed",
            ));
        }
    }
    // Skiff, like Kubernetes, generates the selector from the job's uid when
    // none is given; so it is optional here, but must match if set.
    selector_and_template(
        "job",
        spec.selector.as_ref(),
        true,
        &spec.template,
        path,
        Restart::Job,
        out,
    );
}

fn job(new: &batch::Job, old: Option<&batch::Job>, _: &Value, out: &mut Vec<Cause>) {
    let spec = new.spec.clone().unwrap_or_default();
    job_spec(&spec, "spec", out);
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable("spec.selector", &spec.selector, &old_spec.selector, out);
        immutable("spec.template", &spec.template, &old_spec.template, out);
        immutable(
            "spec.completionMode",
            &spec.completion_mode,
            &old_spec.completion_mode,
            out,
        );
        if spec.completion_mode.as_deref() != Some("Indexed") {
            immutable(
                "spec.completions",
                &spec.completions,
                &old_spec.completions,
                out,
            );
        }
    }
}

fn cron_job(new: &batch::CronJob, _: Option<&batch::CronJob>, _: &Value, out: &mut Vec<Cause>) {
    let spec = new.spec.clone().unwrap_or_default();
    if spec.schedule.trim().is_empty() {
        out.push(required("spec.schedule"));
    } else if spec.schedule.contains("TZ") {
        out.push(Cause::invalid(
            "spec.schedule",
            &json!(spec.schedule),
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
    } else if let Err(e) = cron::check(&spec.schedule) {
        out.push(Cause::invalid("spec.schedule", &json!(spec.schedule), e));
    }
    if let Some(tz) = &spec.time_zone
        && let Err(e) = time_zone(tz)
    {
        out.push(Cause::invalid("spec.timeZone", &json!(tz), e));
    }
    if let Some(p) = &spec.concurrency_policy {
        supported(
            "spec.concurrencyPolicy",
            p,
            &["Allow", "Forbid", "Replace"],
            out,
        );
    }
    nonneg(
        "spec.startingDeadlineSeconds",
        spec.starting_deadline_seconds,
        out,
    );
    nonneg(
        "spec.successfulJobsHistoryLimit",
        spec.successful_jobs_history_limit.map(i64::from),
        out,
    );
    nonneg(
        "spec.failedJobsHistoryLimit",
        spec.failed_jobs_history_limit.map(i64::from),
        out,
    );
    let job = spec.job_template.spec.clone().unwrap_or_default();
    job_spec(&job, "spec.jobTemplate.spec", out);
}

/// A CronJob's `timeZone`, checked for form as Kubernetes does before it
/// loads the zone (Skiff carries no zone database to load it from).
fn time_zone(tz: &str) -> Result<(), String> {
    if tz.is_empty() {
        return Err("timeZone must be nil or non-empty string".into());
    }
    let part_ok = |p: &str| {
        (1..=14).contains(&p.len())
            && p != "."
            && p != ".."
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    };
    if !tz.split('/').all(part_ok) {
        return Err(format!("unknown time zone {tz}"));
    }
    if tz.eq_ignore_ascii_case("Local") {
        return Err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        );
    }
    Ok(())
}

// ---- the rest --------------------------------------------------------------

fn lease(
    new: &coordination::Lease,
    _: Option<&coordination::Lease>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    positive(
        "spec.leaseDurationSeconds",
        spec.lease_duration_seconds.map(i64::from),
        out,
    );
    nonneg(
        "spec.leaseTransitions",
        spec.lease_transitions.map(i64::from),
        out,
    );
}

fn endpoint_slice(
    new: &discovery::EndpointSlice,
    _: Option<&discovery::EndpointSlice>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    let ty = new.address_type.as_str();
    if ty.is_empty() {
        out.push(required("addressType"));
    } else {
        supported("addressType", ty, &["IPv4", "IPv6", "FQDN"], out);
    }
    for (i, e) in new.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}].addresses");
        if e.addresses.is_empty() || e.addresses.len() > 100 {
            out.push(Cause::invalid(
                &path,
                &json!(e.addresses.len()),
                "must have at least 1 and no more than 100 addresses",
            ));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            let apath = format!("{path}[{j}]");
            match ty {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => {
                    out.push(Cause::invalid(
                        apath,
                        &json!(a),
                        "must be a valid IPv4 address",
                    ));
                }
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => {
                    out.push(Cause::invalid(
                        apath,
                        &json!(a),
                        "must be a valid IPv6 address",
                    ));
                }
                "FQDN" => names::causes(&apath, a, names::dns1123_subdomain(a), out),
                _ => {}
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, p) in new.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            names::causes(
                &format!("{path}.name"),
                name,
                names::dns1123_label(name),
                out,
            );
        }
        if !seen.insert(name) {
            out.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
        if let Some(port) = p.port {
            port_num(&format!("{path}.port"), port, out);
        }
        if let Some(proto) = &p.protocol {
            supported(&format!("{path}.protocol"), proto, PROTOCOLS, out);
        }
    }
}

fn ingress_backend(b: &networking::IngressBackend, path: &str, out: &mut Vec<Cause>) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => out.push(Cause::invalid(
            path,
            &json!(b),
            "cannot set both resource and service backends",
        )),
        (None, None) => out.push(required_detail(
            path.to_owned(),
            "one of `resource` or `service` must be specified",
        )),
        (None, Some(r)) => {
            if r.kind.is_empty() {
                out.push(required(format!("{path}.resource.kind")));
            }
            if r.name.is_empty() {
                out.push(required(format!("{path}.resource.name")));
            }
        }
        (Some(s), None) => {
            let spath = format!("{path}.service");
            if s.name.is_empty() {
                out.push(required(format!("{spath}.name")));
            } else {
                names::causes(
                    &format!("{spath}.name"),
                    &s.name,
                    names::dns1035_label(&s.name),
                    out,
                );
            }
            let port = s.port.clone().unwrap_or_default();
            let ppath = format!("{spath}.port");
            match (
                port.name.as_deref().filter(|n| !n.is_empty()),
                port.number.filter(|n| *n != 0),
            ) {
                (Some(_), Some(_)) => out.push(Cause::invalid(
                    &ppath,
                    &json!(port),
                    "cannot set both port name & port number",
                )),
                (None, None) => out.push(required_detail(ppath, "port name or number is required")),
                (Some(name), None) => {
                    names::causes(&format!("{ppath}.name"), name, names::port_name(name), out)
                }
                (None, Some(n)) => port_num(&format!("{ppath}.number"), n, out),
            }
        }
    }
}

fn network_policy(
    new: &networking::NetworkPolicy,
    _: Option<&networking::NetworkPolicy>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    for (i, kind) in spec.policy_types.iter().flatten().enumerate() {
        super::rules::supported(
            &format!("spec.policyTypes[{i}]"),
            kind,
            &["Ingress", "Egress"],
            out,
        );
    }
    let ports = |path: &str, ports: &[networking::NetworkPolicyPort], out: &mut Vec<Cause>| {
        for (i, p) in ports.iter().enumerate() {
            if let Some(protocol) = &p.protocol {
                super::rules::supported(
                    &format!("{path}[{i}].protocol"),
                    protocol,
                    &["TCP", "UDP", "SCTP"],
                    out,
                );
            }
        }
    };
    let peers = |path: &str, peers: &[networking::NetworkPolicyPeer], out: &mut Vec<Cause>| {
        for (i, peer) in peers.iter().enumerate() {
            let Some(block) = &peer.ip_block else {
                continue;
            };
            let field = format!("{path}[{i}].ipBlock");
            let valid = |c: &str| {
                c.parse::<crate::cidr::Cidr>().is_ok() || (c.contains(':') && c.contains('/'))
            };
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                out.push(Cause::invalid(
                    &field,
                    &json!(block),
                    "may not be specified with podSelector or namespaceSelector",
                ));
            }
            if !valid(&block.cidr) {
                out.push(Cause::invalid(
                    format!("{field}.cidr"),
                    &json!(block.cidr),
                    "must be a valid CIDR",
                ));
            }
            for (j, except) in block.except.iter().flatten().enumerate() {
                if !valid(except) {
                    out.push(Cause::invalid(
                        format!("{field}.except[{j}]"),
                        &json!(except),
                        "must be a valid CIDR",
                    ));
                }
            }
        }
    };
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        ports(
            &format!("spec.ingress[{i}].ports"),
            rule.ports.as_deref().unwrap_or_default(),
            out,
        );
        peers(
            &format!("spec.ingress[{i}].from"),
            rule.from.as_deref().unwrap_or_default(),
            out,
        );
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        ports(
            &format!("spec.egress[{i}].ports"),
            rule.ports.as_deref().unwrap_or_default(),
            out,
        );
        peers(
            &format!("spec.egress[{i}].to"),
            rule.to.as_deref().unwrap_or_default(),
            out,
        );
    }
}

fn ingress(
    new: &networking::Ingress,
    _: Option<&networking::Ingress>,
    _: &Value,
    out: &mut Vec<Cause>,
) {
    let spec = new.spec.clone().unwrap_or_default();
    let rules = spec.rules.as_deref().unwrap_or_default();
    if spec.default_backend.is_none() && rules.is_empty() {
        out.push(Cause::invalid(
            "spec",
            &json!(rules),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = &spec.default_backend {
        ingress_backend(b, "spec.defaultBackend", out);
    }
    if let Some(class) = &spec.ingress_class_name {
        names::causes(
            "spec.ingressClassName",
            class,
            names::dns1123_subdomain(class),
            out,
        );
    }
    let host_ok = |host: &str| names::dns1123_subdomain(host.strip_prefix("*.").unwrap_or(host));
    for (i, r) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if let Some(host) = r.host.as_deref().filter(|h| !h.is_empty()) {
            names::causes(&format!("{path}.host"), host, host_ok(host), out);
        }
        let Some(http) = &r.http else { continue };
        if http.paths.is_empty() {
            out.push(required(format!("{path}.http.paths")));
        }
        for (j, p) in http.paths.iter().enumerate() {
            let ppath = format!("{path}.http.paths[{j}]");
            match p.path_type.as_str() {
                "" => out.push(required_detail(
                    format!("{ppath}.pathType"),
                    "pathType must be specified",
                )),
                t => supported(
                    &format!("{ppath}.pathType"),
                    t,
                    &["Exact", "ImplementationSpecific", "Prefix"],
                    out,
                ),
            }
            let path_value = p.path.as_deref().unwrap_or("");
            if p.path_type != "ImplementationSpecific" && !path_value.starts_with('/') {
                out.push(Cause::invalid(
                    format!("{ppath}.path"),
                    &json!(path_value),
                    "must be an absolute path",
                ));
            }
            ingress_backend(&p.backend, &format!("{ppath}.backend"), out);
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        for (j, host) in tls.hosts.iter().flatten().enumerate() {
            names::causes(
                &format!("spec.tls[{i}].hosts[{j}]"),
                host,
                host_ok(host),
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matching() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches(&sel, &labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "back")])));
        assert!(!matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "edge"), ("canary", "1")])
        ));
        assert!(!matches(&sel, &labels(&[("tier", "edge")])));
    }
}
