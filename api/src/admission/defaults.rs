//! Defaulting, as Kubernetes' `SetDefaults_*` functions (and, where noted,
//! the registry strategies) do it. Works on JSON that has already decoded
//! as its type, so every value written here has the right shape.

use serde_json::{Map, Value, json};

use super::Operation;

type Obj = Map<String, Value>;

fn set(m: &mut Obj, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.into(), value);
    }
}

fn child<'a>(m: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

fn child_or_new<'a>(m: &'a mut Obj, key: &str) -> &'a mut Obj {
    set(m, key, json!({}));
    m.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("just set to an object")
}

fn each<'a>(m: &'a mut Obj, key: &str) -> impl Iterator<Item = &'a mut Obj> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Whether a pod template's owner gives `restartPolicy` a default: Jobs and
/// CronJobs must choose `Never` or `OnFailure` themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    Default,
    NoDefault,
}

/// Applies the defaults for `kind` to `obj`.
pub fn apply(kind: &str, op: Operation, obj: &mut Value, old: Option<&Value>) {
    let Some(o) = obj.as_object_mut() else { return };
    match kind {
        "Namespace" => namespace(o, op),
        "Pod" => pod(o, op),
        "Service" => service(o, old),
        "Endpoints" => {
            for subset in each(o, "subsets") {
                for port in each(subset, "ports") {
                    set(port, "protocol", json!("TCP"));
                }
            }
        }
        "EndpointSlice" => {
            for port in each(o, "ports") {
                set(port, "name", json!(""));
                set(port, "protocol", json!("TCP"));
            }
        }
        "Secret" => secret(o),
        "Deployment" => deployment(o),
        "ReplicaSet" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "replicas", json!(1));
                template(spec, Restart::Default);
            }
        }
        "StatefulSet" => statefulset(o),
        "Job" => {
            if let Some(spec) = child(o, "spec") {
                job_spec(spec);
            }
        }
        "CronJob" => {
            if let Some(spec) = child(o, "spec") {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job) = child(spec, "jobTemplate").and_then(|t| child(t, "spec")) {
                    template(job, Restart::NoDefault);
                }
            }
        }
        _ => {}
    }
}

fn namespace(o: &mut Obj, op: Operation) {
    let name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(name) = name {
        let labels = child_or_new(child_or_new(o, "metadata"), "labels");
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if op == Operation::Create {
        set(child_or_new(o, "spec"), "finalizers", json!(["kubernetes"]));
    }
    set(child_or_new(o, "status"), "phase", json!("Active"));
}

fn pod(o: &mut Obj, op: Operation) {
    if let Some(spec) = child(o, "spec") {
        pod_spec(spec, Restart::Default);
        // SetDefaults_Pod (not templates): a limit without a request
        // requests the limit.
        for key in ["containers", "initContainers"] {
            for c in each(spec, key) {
                let Some(res) = child(c, "resources") else {
                    continue;
                };
                let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
                    continue;
                };
                let requests = child_or_new(res, "requests");
                for (name, q) in limits {
                    set(requests, &name, q);
                }
            }
        }
    }
    if op == Operation::Create {
        // The pod strategy's PrepareForCreate: a new pod is Pending.
        let qos = o.get("spec").map_or("BestEffort", qos_class);
        let status = child_or_new(o, "status");
        set(status, "phase", json!("Pending"));
        set(status, "qosClass", json!(qos));
    }
}

/// The QoS class of a pod spec (after requests were defaulted from limits).
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource));
            if limit.is_none() || request.is_some_and(|r| Some(r) != limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn template(spec: &mut Obj, restart: Restart) {
    if let Some(pod) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod_spec(pod, restart);
    }
}

fn pod_spec(spec: &mut Obj, restart: Restart) {
    if restart == Restart::Default {
        set(spec, "restartPolicy", json!("Always"));
    }
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        for c in each(spec, key) {
            container(c);
        }
    }
}

fn container(c: &mut Obj) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let policy = if image_tag(image).is_none_or(|t| t == "latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set(c, "imagePullPolicy", json!(policy));
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    for port in each(c, "ports") {
        set(port, "protocol", json!("TCP"));
    }
    for env in each(c, "env") {
        if let Some(field_ref) = child(env, "valueFrom").and_then(|v| child(v, "fieldRef")) {
            set(field_ref, "apiVersion", json!("v1"));
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = child(c, key) {
            set(probe, "periodSeconds", json!(10));
            set(probe, "timeoutSeconds", json!(1));
            set(probe, "successThreshold", json!(1));
            set(probe, "failureThreshold", json!(3));
            if let Some(http) = child(probe, "httpGet") {
                set(http, "scheme", json!("HTTP"));
            }
        }
    }
}

/// The tag of an image reference (`nginx:1.25` → `1.25`); `None` when the
/// reference has none (a digest counts as a tag: it is not `latest`).
fn image_tag(image: &str) -> Option<&str> {
    if let Some((_, digest)) = image.split_once('@') {
        return Some(digest);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, tag)| tag)
}

fn service(o: &mut Obj, old: Option<&Value>) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        let config = child_or_new(spec, "sessionAffinityConfig");
        set(
            child_or_new(config, "clientIP"),
            "timeoutSeconds",
            json!(10800),
        );
    }
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    for port in each(spec, "ports") {
        set(port, "protocol", json!("TCP"));
        if let Some(p) = port.get("port").cloned() {
            set(port, "targetPort", p);
        }
    }
    if ty == "ExternalName" {
        return;
    }
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    // The service registry keeps what it allocated when an update leaves
    // it out (`kubectl replace` of a manifest without a clusterIP).
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == "");
        if unset(spec.get("clusterIP")) {
            for key in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old_spec.get(key) {
                    spec.insert(key.into(), v.clone());
                }
            }
        }
        let old_ports = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for port in each(spec, "ports") {
            if port.get("nodePort").is_some_and(|v| !v.is_null()) {
                continue;
            }
            let same = old_ports.iter().find(|p| {
                p.get("port") == port.get("port") && p.get("protocol") == port.get("protocol")
            });
            if let Some(node_port) = same.and_then(|p| p.get("nodePort")) {
                port.insert("nodePort".into(), node_port.clone());
            }
        }
    }
    set(spec, "ipFamilies", json!(["IPv4"]));
    set(spec, "ipFamilyPolicy", json!("SingleStack"));
}

fn secret(o: &mut Obj) {
    set(o, "type", json!("Opaque"));
    // Decoding merges the write-only `stringData` into `data`.
    if let Some(Value::Object(strings)) = o.remove("stringData") {
        let data = child_or_new(o, "data");
        for (k, v) in strings {
            if let Some(s) = v.as_str() {
                data.insert(k, json!(base64(s.as_bytes())));
            }
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn deployment(o: &mut Obj) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "replicas", json!(1));
    let strategy = child_or_new(spec, "strategy");
    set(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let rolling = child_or_new(strategy, "rollingUpdate");
        set(rolling, "maxUnavailable", json!("25%"));
        set(rolling, "maxSurge", json!("25%"));
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    template(spec, Restart::Default);
}

fn statefulset(o: &mut Obj) {
    let Some(spec) = child(o, "spec") else { return };
    set(spec, "replicas", json!(1));
    set(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = child_or_new(spec, "updateStrategy");
    set(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        set(
            child_or_new(strategy, "rollingUpdate"),
            "partition",
            json!(0),
        );
    }
    set(spec, "revisionHistoryLimit", json!(10));
    let retention = child_or_new(spec, "persistentVolumeClaimRetentionPolicy");
    set(retention, "whenDeleted", json!("Retain"));
    set(retention, "whenScaled", json!("Retain"));
    template(spec, Restart::Default);
}

fn job_spec(spec: &mut Obj) {
    let unset = |spec: &Obj, k: &str| spec.get(k).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    let replacement = if unset(spec, "podFailurePolicy") {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set(spec, "podReplacementPolicy", json!(replacement));
    template(spec, Restart::NoDefault);
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn image_tags() {
        assert_eq!(super::image_tag("nginx"), None);
        assert_eq!(super::image_tag("nginx:1.25"), Some("1.25"));
        assert_eq!(super::image_tag("localhost:5000/app"), None);
        assert_eq!(super::image_tag("localhost:5000/app:v1"), Some("v1"));
    }
}
