//! Admission tests: defaults, every validation rule, unknown fields, bad
//! types and immutability.

use serde_json::{Value, json};

use super::{AdmitError, Operation, admit};
use crate::resources::by_kind;
use crate::{Cause, ResourceType};

fn rt(kind: &str) -> &'static ResourceType {
    crate::resources::RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect(kind)
}

fn create(kind: &str, mut obj: Value) -> Result<Value, AdmitError> {
    admit(rt(kind), Operation::Create, &mut obj, None, true).map(|_| obj)
}

fn causes(kind: &str, obj: Value) -> Vec<Cause> {
    match create(kind, obj) {
        Err(AdmitError::Invalid(inv)) => inv.causes,
        other => panic!("expected Invalid for {kind}, got {other:?}"),
    }
}

fn pod_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "nginx:1.25"}]})
}

fn deployment(spec_patch: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()},
        },
    });
    merge(&mut d["spec"], spec_patch);
    d
}

/// RFC 7386 merge, to write each case as a small change to a valid object.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(&k);
                } else {
                    merge(
                        target
                            .as_object_mut()
                            .unwrap()
                            .entry(k)
                            .or_insert(Value::Null),
                        v,
                    );
                }
            }
        }
        other => *target = other,
    }
}

/// A PEM certificate request as `spec.request` carries it (base64).
fn csr_request() -> Value {
    let mut params = rcgen::CertificateParams::new(vec!["node-1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:node-1");
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    serde_json::to_value(crate::k8s_openapi::ByteString(pem.into_bytes())).unwrap()
}

/// A valid object of every kind, as a user would write it.
fn valid(kind: &str) -> Value {
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec()});
    let job_template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "busybox"}]}});
    let (api_version, body) = match kind {
        "Namespace" => ("v1", json!({})),
        "Pod" => ("v1", json!({"spec": pod_spec()})),
        "Service" => (
            "v1",
            json!({"spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}),
        ),
        "Endpoints" => (
            "v1",
            json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
        ),
        "ConfigMap" => ("v1", json!({"data": {"a.txt": "x", "B_KEY": "y"}})),
        "Secret" => ("v1", json!({"stringData": {"password": "hunter2"}})),
        "Node" => (
            "v1",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        "Event" => (
            "v1",
            json!({"involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "reason": "Started", "type": "Normal"}),
        ),
        "ServiceAccount" => ("v1", json!({})),
        "Deployment" | "ReplicaSet" | "StatefulSet" => (
            "apps/v1",
            json!({"spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}),
        ),
        "Job" => ("batch/v1", json!({"spec": {"template": job_template}})),
        "CronJob" => (
            "batch/v1",
            json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job_template}}}}),
        ),
        "Lease" => (
            "coordination.k8s.io/v1",
            json!({"spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}),
        ),
        "EndpointSlice" => (
            "discovery.k8s.io/v1",
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}]}),
        ),
        "Ingress" => (
            "networking.k8s.io/v1",
            json!({"spec": {"rules": [{"host": "example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        ),
        "NetworkPolicy" => (
            "networking.k8s.io/v1",
            json!({"spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 80, "protocol": "TCP"}]}]}}),
        ),
        "CertificateSigningRequest" => (
            "certificates.k8s.io/v1",
            json!({"spec": {
                "request": csr_request(),
                "signerName": "skiff.dev/node-mesh",
                "usages": ["digital signature", "client auth"],
            }}),
        ),
        other => panic!("no sample for {other}"),
    };
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "labels": {"app": "x"}}});
    if rt(kind).namespaced() {
        obj["metadata"]["namespace"] = json!("default");
    }
    merge(&mut obj, body);
    obj
}

#[test]
fn every_kind_admits_a_valid_object() {
    for r in crate::resources::RESOURCES {
        let obj = valid(r.kind);
        let admitted = admit(r, Operation::Create, &mut obj.clone(), None, true);
        assert_eq!(admitted, Ok(Default::default()), "{}", r.kind);
        // Admitting twice changes nothing more: defaults are idempotent.
        let once = create(r.kind, obj).unwrap();
        assert_eq!(create(r.kind, once.clone()).unwrap(), once, "{}", r.kind);
        // An update to the same object is allowed.
        let mut again = once.clone();
        assert!(
            admit(r, Operation::Update, &mut again, Some(&once), true).is_ok(),
            "{} update",
            r.kind
        );
    }
}

#[test]
fn a_minimal_deployment_gets_every_default() {
    let mut d = deployment(json!({}));
    d["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
    d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
        json!({"httpGet": {"path": "/", "port": 80}});
    d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox"}));
    let d = create("Deployment", d).unwrap();
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["schedulerName"], "default-scheduler");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["securityContext"], json!({}));
    assert_eq!(pod["enableServiceLinks"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["resources"], json!({}));
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"path": "/", "port": 80, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(
        pod["containers"][1]["imagePullPolicy"], "Always",
        "an untagged image is pulled always"
    );
}

#[test]
fn defaults_per_kind() {
    // (kind, pointer, expected value) on the defaulted `valid(kind)`.
    let cases: &[(&str, &str, Value)] = &[
        ("ReplicaSet", "/spec/replicas", json!(1)),
        (
            "ReplicaSet",
            "/spec/template/spec/restartPolicy",
            json!("Always"),
        ),
        ("StatefulSet", "/spec/replicas", json!(1)),
        (
            "StatefulSet",
            "/spec/podManagementPolicy",
            json!("OrderedReady"),
        ),
        (
            "StatefulSet",
            "/spec/updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
        ),
        ("StatefulSet", "/spec/revisionHistoryLimit", json!(10)),
        ("Job", "/spec/completions", json!(1)),
        ("Job", "/spec/parallelism", json!(1)),
        ("Job", "/spec/backoffLimit", json!(6)),
        ("Job", "/spec/completionMode", json!("NonIndexed")),
        ("Job", "/spec/suspend", json!(false)),
        (
            "Job",
            "/spec/template/spec/dnsPolicy",
            json!("ClusterFirst"),
        ),
        ("CronJob", "/spec/concurrencyPolicy", json!("Allow")),
        ("CronJob", "/spec/suspend", json!(false)),
        ("CronJob", "/spec/successfulJobsHistoryLimit", json!(3)),
        ("CronJob", "/spec/failedJobsHistoryLimit", json!(1)),
        (
            "CronJob",
            "/spec/jobTemplate/spec/template/spec/schedulerName",
            json!("default-scheduler"),
        ),
        ("Service", "/spec/type", json!("ClusterIP")),
        ("Service", "/spec/sessionAffinity", json!("None")),
        ("Service", "/spec/ports/0/protocol", json!("TCP")),
        ("Service", "/spec/ports/0/targetPort", json!(80)),
        ("Service", "/spec/internalTrafficPolicy", json!("Cluster")),
        ("Service", "/spec/ipFamilies", json!(["IPv4"])),
        ("Service", "/spec/ipFamilyPolicy", json!("SingleStack")),
        ("Namespace", "/spec/finalizers", json!(["kubernetes"])),
        ("Namespace", "/status/phase", json!("Active")),
        (
            "Namespace",
            "/metadata/labels/kubernetes.io~1metadata.name",
            json!("x"),
        ),
        ("Secret", "/type", json!("Opaque")),
        ("Secret", "/data/password", json!("aHVudGVyMg==")),
        ("Pod", "/spec/restartPolicy", json!("Always")),
        ("Pod", "/status/phase", json!("Pending")),
        ("Pod", "/status/qosClass", json!("BestEffort")),
        ("EndpointSlice", "/ports/0/protocol", json!("TCP")),
        ("Endpoints", "/subsets/0/ports/0/protocol", json!("TCP")),
    ];
    for (kind, pointer, want) in cases {
        let obj = create(kind, valid(kind)).unwrap();
        assert_eq!(
            obj.pointer(pointer),
            Some(want),
            "{kind} {pointer}: {obj:#}"
        );
    }
    let secret = create("Secret", valid("Secret")).unwrap();
    assert!(
        secret.get("stringData").is_none(),
        "stringData is merged into data"
    );
    let job = create("Job", valid("Job")).unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["restartPolicy"], "Never",
        "kept as given"
    );
    let cron = create("CronJob", valid("CronJob")).unwrap();
    assert!(
        cron["spec"]["jobTemplate"]["spec"]
            .get("backoffLimit")
            .is_none(),
        "Job defaults are for Jobs only"
    );
}

#[test]
fn defaults_never_override() {
    let d = create(
        "Deployment",
        deployment(json!({"replicas": 3, "strategy": {"type": "Recreate"}})),
    )
    .unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    let mut s = valid("Service");
    s["spec"]["ports"] = json!([{"port": 80, "targetPort": "http", "protocol": "UDP"}]);
    s["spec"]["type"] = json!("NodePort");
    let s = create("Service", s).unwrap();
    assert_eq!(
        s["spec"]["ports"][0],
        json!({"port": 80, "targetPort": "http", "protocol": "UDP"})
    );
    assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
}

#[test]
fn pod_requests_default_to_limits_and_qos() {
    let mut p = valid("Pod");
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "500m", "memory": "128Mi"}});
    let p = create("Pod", p).unwrap();
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"],
        json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    let mut p = valid("Pod");
    p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "100m"}});
    assert_eq!(create("Pod", p).unwrap()["status"]["qosClass"], "Burstable");
}

/// Each case: a change to a valid object, and the (field, reason) pairs it
/// must produce, in order, and nothing else.
#[test]
fn validation_rules() {
    type Case = (
        &'static str,
        &'static str,
        Value,
        &'static [(&'static str, &'static str)],
    );
    const INVALID: &str = "FieldValueInvalid";
    const REQUIRED: &str = "FieldValueRequired";
    const UNSUPPORTED: &str = "FieldValueNotSupported";
    const DUPLICATE: &str = "FieldValueDuplicate";
    const FORBIDDEN: &str = "FieldValueForbidden";
    let cases: Vec<Case> = vec![
        // metadata
        (
            "no name",
            "ConfigMap",
            json!({"metadata": {"name": null}}),
            &[("metadata.name", REQUIRED)],
        ),
        (
            "generateName instead",
            "ConfigMap",
            json!({"metadata": {"name": null, "generateName": "cfg-"}}),
            &[],
        ),
        (
            "bad generateName",
            "ConfigMap",
            json!({"metadata": {"name": null, "generateName": "Cfg-"}}),
            &[("metadata.generateName", INVALID)],
        ),
        (
            "subdomain name",
            "ConfigMap",
            json!({"metadata": {"name": "a.b-c"}}),
            &[],
        ),
        (
            "uppercase name",
            "ConfigMap",
            json!({"metadata": {"name": "Web"}}),
            &[("metadata.name", INVALID)],
        ),
        (
            "namespace is a label",
            "Namespace",
            json!({"metadata": {"name": "a.b"}}),
            &[("metadata.name", INVALID)],
        ),
        (
            "service is a DNS-1035 label",
            "Service",
            json!({"metadata": {"name": "1web"}}),
            &[("metadata.name", INVALID)],
        ),
        (
            "bad namespace",
            "ConfigMap",
            json!({"metadata": {"namespace": "Default"}}),
            &[("metadata.namespace", INVALID)],
        ),
        (
            "bad label key and value",
            "ConfigMap",
            json!({"metadata": {"labels": {"-x": "ok", "y": "bad value"}}}),
            &[("metadata.labels", INVALID), ("metadata.labels", INVALID)],
        ),
        (
            "label value too long",
            "ConfigMap",
            json!({"metadata": {"labels": {"y": "a".repeat(64)}}}),
            &[("metadata.labels", INVALID)],
        ),
        (
            "prefixed label key",
            "ConfigMap",
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}),
            &[],
        ),
        (
            "bad annotation key",
            "ConfigMap",
            json!({"metadata": {"annotations": {"a/b/c": "x"}}}),
            &[("metadata.annotations", INVALID)],
        ),
        (
            "long cronjob name",
            "CronJob",
            json!({"metadata": {"name": "c".repeat(53)}}),
            &[("metadata.name", INVALID)],
        ),
        // pod spec
        (
            "no containers",
            "Pod",
            json!({"spec": {"containers": []}}),
            &[("spec.containers", REQUIRED)],
        ),
        (
            "no image",
            "Pod",
            json!({"spec": {"containers": [{"name": "app"}]}}),
            &[("spec.containers[0].image", REQUIRED)],
        ),
        (
            "bad container name",
            "Pod",
            json!({"spec": {"containers": [{"name": "App_1", "image": "x"}]}}),
            &[("spec.containers[0].name", INVALID)],
        ),
        (
            "duplicate container names across init",
            "Pod",
            json!({"spec": {"initContainers": [{"name": "app", "image": "x"}]}}),
            &[("spec.containers[0].name", DUPLICATE)],
        ),
        (
            "port range and protocol",
            "Pod",
            json!({"spec": {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 0}, {"containerPort": 70000, "protocol": "HTTP"}]}]}}),
            &[
                ("spec.containers[0].ports[0].containerPort", INVALID),
                ("spec.containers[0].ports[1].containerPort", INVALID),
                ("spec.containers[0].ports[1].protocol", UNSUPPORTED),
            ],
        ),
        (
            "restart policy",
            "Pod",
            json!({"spec": {"restartPolicy": "Sometimes"}}),
            &[("spec.restartPolicy", UNSUPPORTED)],
        ),
        (
            "requests above limits",
            "Pod",
            json!({"spec": {"containers": [{"name": "app", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "2Gi"}}}]}}),
            &[("spec.containers[0].resources.requests[cpu]", INVALID)],
        ),
        (
            "unparsable quantity",
            "Pod",
            json!({"spec": {"containers": [{"name": "app", "image": "x", "resources": {"limits": {"memory": "lots"}}}]}}),
            // The request defaulted from the limit is just as unparsable.
            &[
                ("spec.containers[0].resources.limits[memory]", INVALID),
                ("spec.containers[0].resources.requests[memory]", INVALID),
            ],
        ),
        (
            "env names",
            "Pod",
            json!({"spec": {"containers": [{"name": "app", "image": "x", "env": [{"name": ""}, {"name": "A=B"}, {"name": "OK.name-1"}]}]}}),
            &[
                ("spec.containers[0].env[0].name", REQUIRED),
                ("spec.containers[0].env[1].name", INVALID),
            ],
        ),
        (
            "volumes and mounts",
            "Pod",
            json!({"spec": {
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}, {"name": "empty"}],
                "containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": "nope", "mountPath": "/n"}]}],
            }}),
            &[
                ("spec.volumes[1].name", DUPLICATE),
                ("spec.volumes[2]", REQUIRED),
                (
                    "spec.containers[0].volumeMounts[1].name",
                    "FieldValueNotFound",
                ),
            ],
        ),
        // workloads
        (
            "selector required",
            "Deployment",
            json!({"spec": {"selector": null}}),
            &[("spec.selector", REQUIRED)],
        ),
        (
            "empty selector",
            "Deployment",
            json!({"spec": {"selector": {"matchLabels": null}}}),
            &[("spec.selector", INVALID)],
        ),
        (
            "selector mismatch",
            "Deployment",
            json!({"spec": {"selector": {"matchLabels": {"app": "y"}}}}),
            &[("spec.template.metadata.labels", INVALID)],
        ),
        (
            "bad selector expression",
            "ReplicaSet",
            json!({"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}}),
            &[("spec.selector.matchExpressions[0].values", REQUIRED)],
        ),
        (
            "negative replicas",
            "Deployment",
            json!({"spec": {"replicas": -1}}),
            &[("spec.replicas", INVALID)],
        ),
        (
            "surge and unavailable both zero",
            "Deployment",
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}}),
            &[("spec.strategy.rollingUpdate.maxUnavailable", INVALID)],
        ),
        (
            "deployments restart always",
            "Deployment",
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
            &[("spec.template.spec.restartPolicy", UNSUPPORTED)],
        ),
        (
            "statefulset policy",
            "StatefulSet",
            json!({"spec": {"podManagementPolicy": "Random"}}),
            &[("spec.podManagementPolicy", UNSUPPORTED)],
        ),
        (
            "job restart required",
            "Job",
            json!({"spec": {"template": {"spec": {"restartPolicy": null}}}}),
            &[("spec.template.spec.restartPolicy", REQUIRED)],
        ),
        (
            "job restart always",
            "Job",
            json!({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}),
            &[("spec.template.spec.restartPolicy", UNSUPPORTED)],
        ),
        (
            "job negative backoff",
            "Job",
            json!({"spec": {"backoffLimit": -1}}),
            &[("spec.backoffLimit", INVALID)],
        ),
        (
            "cron schedule required",
            "CronJob",
            json!({"spec": {"schedule": ""}}),
            &[("spec.schedule", REQUIRED)],
        ),
        (
            "cron schedule invalid",
            "CronJob",
            json!({"spec": {"schedule": "* * *"}}),
            &[("spec.schedule", INVALID)],
        ),
        (
            "cron schedule out of range",
            "CronJob",
            json!({"spec": {"schedule": "0 25 * * *"}}),
            &[("spec.schedule", INVALID)],
        ),
        (
            "cron descriptor",
            "CronJob",
            json!({"spec": {"schedule": "@hourly"}}),
            &[],
        ),
        (
            "cron job template restart",
            "CronJob",
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}}}),
            &[(
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                UNSUPPORTED,
            )],
        ),
        // services
        (
            "ports required",
            "Service",
            json!({"spec": {"ports": []}}),
            &[("spec.ports", REQUIRED)],
        ),
        (
            "headless needs no ports",
            "Service",
            json!({"spec": {"ports": [], "clusterIP": "None"}}),
            &[],
        ),
        (
            "external name",
            "Service",
            json!({"spec": {"type": "ExternalName", "ports": [], "externalName": "db.example.com"}}),
            &[],
        ),
        (
            "external name required",
            "Service",
            json!({"spec": {"type": "ExternalName", "ports": []}}),
            &[("spec.externalName", REQUIRED)],
        ),
        (
            "service type",
            "Service",
            json!({"spec": {"type": "Magic"}}),
            &[("spec.type", UNSUPPORTED)],
        ),
        (
            "service ports",
            "Service",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "name": "http"}, {"port": 0}, {"port": 81, "name": "http", "nodePort": 80}]}}),
            &[
                ("spec.ports[1].name", REQUIRED),
                ("spec.ports[1].port", INVALID),
                ("spec.ports[1].targetPort", INVALID),
                ("spec.ports[2].name", DUPLICATE),
                ("spec.ports[2].nodePort", INVALID),
            ],
        ),
        (
            "nodePort on ClusterIP",
            "Service",
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}]}}),
            &[("spec.ports[0].nodePort", FORBIDDEN)],
        ),
        // config
        (
            "config keys",
            "ConfigMap",
            json!({"data": {"bad key": "x", "..": "y"}}),
            &[("data[..]", INVALID), ("data[bad key]", INVALID)],
        ),
        (
            "secret keys",
            "Secret",
            json!({"stringData": {"a/b": "x"}}),
            &[("data[a/b]", INVALID)],
        ),
        (
            "tls secret",
            "Secret",
            json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}}),
            &[("data[tls.key]", REQUIRED)],
        ),
        // the rest
        (
            "lease duration",
            "Lease",
            json!({"spec": {"leaseDurationSeconds": 0}}),
            &[("spec.leaseDurationSeconds", INVALID)],
        ),
        (
            "endpoint ip",
            "Endpoints",
            json!({"subsets": [{"addresses": [{"ip": "nope"}], "ports": [{"port": 80}]}]}),
            &[("subsets[0].addresses[0].ip", INVALID)],
        ),
        (
            "slice address type",
            "EndpointSlice",
            json!({"addressType": "IPX"}),
            &[("addressType", UNSUPPORTED)],
        ),
        (
            "slice addresses",
            "EndpointSlice",
            json!({"endpoints": [{"addresses": ["::1"]}]}),
            &[("endpoints[0].addresses[0]", INVALID)],
        ),
        (
            "taint effect",
            "Node",
            json!({"spec": {"taints": [{"key": "k", "effect": "Maybe"}]}}),
            &[("spec.taints[0].effect", UNSUPPORTED)],
        ),
        (
            "event namespace",
            "Event",
            json!({"involvedObject": {"namespace": "other"}}),
            &[("involvedObject.namespace", INVALID)],
        ),
        (
            "ingress pathType required",
            "Ingress",
            json!({"spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
            &[("spec.rules[0].http.paths[0].pathType", REQUIRED)],
        ),
        (
            "ingress backend",
            "Ingress",
            json!({"spec": {"rules": [{"host": "*.example.com", "http": {"paths": [{"path": "x", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}}]}}]}}),
            &[
                ("spec.rules[0].http.paths[0].path", INVALID),
                ("spec.rules[0].http.paths[0].backend.service.port", REQUIRED),
            ],
        ),
        (
            "ingress needs rules",
            "Ingress",
            json!({"spec": {"rules": null}}),
            &[("spec", INVALID)],
        ),
        (
            "network policy fields",
            "NetworkPolicy",
            json!({"spec": {"policyTypes": ["Sideways"], "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}], "ports": [{"protocol": "ICMP"}]}]}}),
            &[
                ("spec.policyTypes[0]", UNSUPPORTED),
                ("spec.ingress[0].ports[0].protocol", UNSUPPORTED),
                ("spec.ingress[0].from[0].ipBlock.cidr", INVALID),
            ],
        ),
    ];
    for (what, kind, change, want) in cases {
        let mut obj = valid(kind);
        merge(&mut obj, change);
        let got: Vec<(String, &str)> = match create(kind, obj) {
            Ok(_) => Vec::new(),
            Err(AdmitError::Invalid(inv)) => inv
                .causes
                .iter()
                .map(|c| (c.field.clone(), c.reason))
                .collect(),
            Err(e) => panic!("{what}: {e}"),
        };
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn messages_are_kubernetes_own() {
    let mut cm = valid("ConfigMap");
    cm["metadata"]["name"] = json!("Bad_Name");
    cm["metadata"]["labels"] = json!({"app": "-x"});
    let found = causes("ConfigMap", cm);
    assert_eq!(
        found[0].message,
        "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    assert_eq!(
        found[1].message,
        "Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
    );
    let d = deployment(json!({"selector": {"matchLabels": {"app": "other"}}}));
    let found = causes("Deployment", d);
    assert_eq!(
        found[0].message,
        "Invalid value: {\"app\":\"web\"}: `selector` does not match template `labels`"
    );
    let mut p = valid("Pod");
    p["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}});
    assert_eq!(
        causes("Pod", p)[0].message,
        "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
    );
}

#[test]
fn all_errors_are_reported_together() {
    let d = deployment(json!({
        "replicas": -2,
        "selector": {"matchLabels": {"app": "other"}},
        "template": {"spec": {"containers": [{"name": "Bad", "ports": [{"containerPort": 99999}]}, {"name": "Bad", "image": "x"}]}},
    }));
    let mut d = d;
    d["metadata"]["name"] = json!("Web");
    d["spec"]["replicasx"] = json!(3);
    let fields: Vec<String> = causes("Deployment", d)
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.replicasx",
            "metadata.name",
            "spec.replicas",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].name",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[0].ports[0].containerPort",
            "spec.template.spec.containers[1].name",
            "spec.template.spec.containers[1].name",
        ]
    );
}

#[test]
fn unknown_fields_strict_and_not() {
    let mut d = deployment(json!({"replicasx": 3}));
    d["spec"]["template"]["spec"]["containers"][0]["imagex"] = json!("x");
    d["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 80, "portx": 1}]);
    d["metadata"]["labelz"] = json!({"a": "b"});
    d["statux"] = json!({});
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"any.key/at-all": "fine"});
    d["spec"]["paused"] = Value::Null;

    let unknown = [
        "metadata.labelz",
        "spec.replicasx",
        "spec.template.spec.containers[0].imagex",
        "spec.template.spec.containers[0].ports[0].portx",
        "statux",
    ];
    let strict = causes("Deployment", d.clone());
    let got: Vec<&str> = strict.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(got, unknown);
    assert_eq!(strict[1].message, "unknown field \"spec.replicasx\"");
    assert!(strict.iter().all(|c| c.reason == "FieldValueInvalid"));

    let mut lax = d;
    let admitted = admit(rt("Deployment"), Operation::Create, &mut lax, None, false).unwrap();
    let warnings: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect();
    assert_eq!(admitted.warnings, warnings);
    assert!(lax["spec"].get("replicasx").is_none());
    assert!(lax.get("statux").is_none());
    assert!(
        lax["spec"].get("paused").is_none(),
        "nulls are dropped silently"
    );
    assert!(
        lax["spec"]["template"]["spec"]["containers"][0]
            .get("imagex")
            .is_none()
    );
    assert_eq!(
        lax["spec"]["template"]["spec"]["containers"][0]["ports"][0],
        json!({"containerPort": 80, "protocol": "TCP"})
    );
    assert_eq!(
        lax["spec"]["template"]["spec"]["nodeSelector"],
        json!({"any.key/at-all": "fine"}),
        "map keys are data, not fields"
    );
}

#[test]
fn server_metadata_round_trips() {
    let mut cm = valid("ConfigMap");
    cm["metadata"] = json!({
        "name": "x", "namespace": "default", "uid": "0b4a0c0e-0000-4000-8000-000000000000",
        "resourceVersion": "12", "generation": 2, "creationTimestamp": "2024-01-02T03:04:05Z",
        "deletionTimestamp": "2024-01-02T03:04:06Z", "deletionGracePeriodSeconds": 0,
        "finalizers": ["a/b"], "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u", "controller": true}],
        "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": "2024-01-02T03:04:05Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}],
    });
    let before = cm.clone();
    assert_eq!(create("ConfigMap", cm).unwrap(), before);
}

#[test]
fn bad_types_are_bad_requests() {
    let cases: &[(&str, Value, &str)] = &[
        (
            "Deployment",
            deployment(json!({"replicas": "three"})),
            "spec.replicas: invalid type: string \"three\", expected i32",
        ),
        (
            "Deployment",
            deployment(
                json!({"template": {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": "80"}]}]}}}),
            ),
            "spec.template.spec.containers[0].ports[0].containerPort:",
        ),
        (
            "ConfigMap",
            json!({"metadata": {"name": "x", "labels": {"a": 1}}, "data": {}}),
            "metadata.labels.a:",
        ),
        (
            "ConfigMap",
            json!({"metadata": {"name": "x"}, "data": ["a"]}),
            "data:",
        ),
        (
            "Pod",
            json!({"apiVersion": "v2", "metadata": {"name": "x"}}),
            "apiVersion:",
        ),
    ];
    for (kind, obj, want) in cases {
        match create(kind, obj.clone()) {
            Err(AdmitError::BadRequest(msg)) => {
                let prefix = format!("{kind} in version \"v1\" cannot be handled as a {kind}: ");
                assert!(
                    msg.starts_with(&prefix) && msg[prefix.len()..].starts_with(want),
                    "{msg}"
                );
            }
            other => panic!("{kind}: expected BadRequest, got {other:?}"),
        }
    }
    assert!(matches!(
        admit(rt("Pod"), Operation::Create, &mut json!("pod"), None, true),
        Err(AdmitError::BadRequest(_))
    ));
}

fn update(kind: &str, old: &Value, change: Value) -> Vec<(String, String)> {
    let old = create(kind, old.clone()).unwrap();
    let mut new = old.clone();
    merge(&mut new, change);
    let r = by_kind(old["apiVersion"].as_str().unwrap(), kind).unwrap();
    match admit(r, Operation::Update, &mut new, Some(&old), true) {
        Ok(_) => Vec::new(),
        Err(AdmitError::Invalid(inv)) => inv
            .causes
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn immutable_fields_on_update() {
    let fields =
        |causes: Vec<(String, String)>| causes.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
    let job = valid("Job");
    let changed_template = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}}});
    let got = update("Job", &job, changed_template);
    assert_eq!(fields(got.clone()), ["spec.template"]);
    assert!(got[0].1.ends_with(": field is immutable"), "{}", got[0].1);
    assert_eq!(
        fields(update(
            "Job",
            &job,
            json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}})
        )),
        ["spec.selector"]
    );
    assert_eq!(
        fields(update(
            "Job",
            &job,
            json!({"spec": {"activeDeadlineSeconds": 60}})
        )),
        Vec::<String>::new()
    );

    let d = valid("Deployment");
    let moved = json!({"spec": {"selector": {"matchLabels": {"app": "x", "v": "2"}}, "template": {"metadata": {"labels": {"app": "x", "v": "2"}}}}});
    assert_eq!(fields(update("Deployment", &d, moved)), ["spec.selector"]);
    assert_eq!(
        fields(update("Deployment", &d, json!({"spec": {"replicas": 5}}))),
        Vec::<String>::new()
    );

    let sts = valid("StatefulSet");
    assert_eq!(
        fields(update(
            "StatefulSet",
            &sts,
            json!({"spec": {"serviceName": "other"}})
        )),
        ["spec"]
    );
    assert_eq!(
        fields(update(
            "StatefulSet",
            &sts,
            json!({"spec": {"replicas": 3}})
        )),
        Vec::<String>::new()
    );

    let mut svc = valid("Service");
    svc["spec"]["clusterIP"] = json!("10.96.0.10");
    assert_eq!(
        fields(update(
            "Service",
            &svc,
            json!({"spec": {"clusterIP": "10.96.0.11"}})
        )),
        ["spec.clusterIP"]
    );
    assert_eq!(
        fields(update(
            "Service",
            &svc,
            json!({"spec": {"clusterIP": null, "clusterIPs": null}})
        )),
        Vec::<String>::new(),
        "an omitted clusterIP is kept"
    );

    let mut cm = valid("ConfigMap");
    cm["immutable"] = json!(true);
    assert_eq!(
        fields(update(
            "ConfigMap",
            &cm,
            json!({"data": {"a.txt": "changed"}})
        )),
        ["data"]
    );
    assert_eq!(
        fields(update("ConfigMap", &cm, json!({"immutable": false}))),
        ["immutable"]
    );
    assert_eq!(
        fields(update(
            "ConfigMap",
            &cm,
            json!({"metadata": {"labels": {"new": "label"}}})
        )),
        Vec::<String>::new()
    );
    let mut secret = valid("Secret");
    secret["immutable"] = json!(true);
    assert_eq!(
        fields(update(
            "Secret",
            &secret,
            json!({"data": {"password": "eA=="}})
        )),
        ["data"]
    );

    let pod = valid("Pod");
    assert_eq!(
        fields(update(
            "Pod",
            &pod,
            json!({"spec": {"containers": [{"name": "app", "image": "nginx:1.26"}]}})
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        fields(update("Pod", &pod, json!({"spec": {"nodeName": "node-1"}}))),
        Vec::<String>::new(),
        "binding sets nodeName once"
    );
    assert_eq!(
        fields(update(
            "Pod",
            &pod,
            json!({"spec": {"dnsPolicy": "Default"}})
        )),
        ["spec"]
    );
}

#[test]
fn service_update_keeps_allocated_node_ports() {
    let mut svc = valid("Service");
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["clusterIP"] = json!("10.96.0.10");
    svc["spec"]["ports"] = json!([{"port": 80, "nodePort": 30080}]);
    let old = create("Service", svc).unwrap();
    let mut new = valid("Service");
    new["spec"]["type"] = json!("NodePort");
    admit(rt("Service"), Operation::Update, &mut new, Some(&old), true).unwrap();
    assert_eq!(new["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
}
