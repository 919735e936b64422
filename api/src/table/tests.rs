//! Table tests: realistic objects, the cells kubectl would print.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{IncludeObject, table};
use crate::resources::{RESOURCES, ResourceType};

/// 2024-05-01T12:00:00Z, the "now" of every test.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

fn rt(kind: &str) -> &'static ResourceType {
    RESOURCES.iter().find(|r| r.kind == kind).expect(kind)
}

/// The one row's cells for `obj`.
fn cells(kind: &str, obj: Value) -> Vec<Value> {
    let t = table(rt(kind), &[obj], IncludeObject::None, now(), json!({}));
    t["rows"][0]["cells"].as_array().unwrap().clone()
}

fn column_names(kind: &str) -> Vec<String> {
    let t = table(rt(kind), &[], IncludeObject::None, now(), json!({}));
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn table_shape_and_include_object() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"a": "b"}}, "spec": {"containers": []}});
    let list_meta = json!({"resourceVersion": "42", "continue": ""});
    let t = table(
        rt("Pod"),
        std::slice::from_ref(&pod),
        IncludeObject::default(),
        now(),
        list_meta.clone(),
    );
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"], list_meta);
    assert_eq!(
        t["columnDefinitions"][0],
        json!({"name": "Name", "type": "string", "format": "name", "description": t["columnDefinitions"][0]["description"], "priority": 0})
    );
    assert_eq!(t["columnDefinitions"][5]["name"], "IP");
    assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    assert_eq!(
        t["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"]})
    );
    let full = table(
        rt("Pod"),
        std::slice::from_ref(&pod),
        IncludeObject::Object,
        now(),
        json!({}),
    );
    assert_eq!(full["rows"][0]["object"], pod);
    let none = table(rt("Pod"), &[pod], IncludeObject::None, now(), json!({}));
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
    assert_eq!(IncludeObject::parse("All"), None);
}

#[test]
fn every_kind_has_a_cell_per_column() {
    for r in RESOURCES {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2024-05-01T11:00:00Z"}});
        let t = table(r, &[obj], IncludeObject::None, now(), json!({}));
        let columns = t["columnDefinitions"].as_array().unwrap().len();
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(cells.len(), columns, "{}", r.kind);
        let names = column_names(r.kind);
        let name_at = names.iter().position(|n| n == "Name").unwrap();
        assert_eq!(cells[name_at], "x", "{}", r.kind);
        if let Some(age) = names.iter().position(|n| n == "Age") {
            assert_eq!(cells[age], "60m", "{}", r.kind);
        }
    }
}

#[test]
fn running_pod() {
    let pod = json!({
        "metadata": {"name": "web-7d4b9c-x2x9z", "creationTimestamp": "2024-05-01T11:56:40Z"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.1.5",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "web", "ready": true, "restartCount": 0, "image": "nginx", "imageID": "", "state": {"running": {"startedAt": "2024-05-01T11:56:45Z"}}},
                {"name": "log", "ready": true, "restartCount": 0, "image": "busybox", "imageID": "", "state": {"running": {"startedAt": "2024-05-01T11:56:45Z"}}},
            ],
        },
    });
    assert_eq!(
        cells("Pod", pod),
        json!([
            "web-7d4b9c-x2x9z",
            "2/2",
            "Running",
            "0",
            "3m20s",
            "10.244.1.5",
            "node-1",
            "<none>",
            "<none>"
        ])
        .as_array()
        .unwrap()
        .clone()
    );
}

#[test]
fn crash_looping_pod() {
    let pod = json!({
        "metadata": {"name": "bad", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"containers": [{"name": "app", "image": "app:v2"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 5, "image": "app:v2", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-05-01T11:55:00Z"}},
            }],
        },
    });
    let c = cells("Pod", pod);
    assert_eq!(c[1], "0/1");
    assert_eq!(c[2], "CrashLoopBackOff");
    assert_eq!(c[3], "5 (5m ago)");
    assert_eq!(c[4], "120m", "under three hours, ages are in minutes");
    assert_eq!(c[5], "<none>");
}

#[test]
fn pod_status_reasons() {
    let status = |statuses: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running", "containerStatuses": statuses}});
    let one = |state: Value| json!([{"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": state}]);
    let cases: &[(Value, &str)] = &[
        (
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
            "Pending",
        ),
        (
            status(one(json!({"waiting": {"reason": "ErrImagePull"}}))),
            "ErrImagePull",
        ),
        (
            status(one(
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            )),
            "OOMKilled",
        ),
        (
            status(one(
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
            )),
            "Completed",
        ),
        (
            status(one(json!({"terminated": {"exitCode": 2}}))),
            "ExitCode:2",
        ),
        (
            json!({"metadata": {"name": "p", "deletionTimestamp": "2024-05-01T11:59:00Z"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running"}}),
            "Terminating",
        ),
        (
            json!({"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}}]}}),
            "Init:0/1",
        ),
    ];
    for (pod, want) in cases {
        assert_eq!(cells("Pod", pod.clone())[2], *want, "{pod}");
    }
}

#[test]
fn deployment_mid_rollout() {
    let d = json!({
        "metadata": {"name": "web", "creationTimestamp": "2024-04-28T08:00:00Z"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.26"}, {"name": "log", "image": "busybox"}]}},
        },
        "status": {"replicas": 4, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3},
    });
    assert_eq!(
        Value::Array(cells("Deployment", d)),
        json!([
            "web",
            "3/3",
            1,
            3,
            "3d4h",
            "web,log",
            "nginx:1.26,busybox",
            "app=web,tier in (edge,front)"
        ])
    );
    assert_eq!(
        column_names("Deployment"),
        [
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
}

#[test]
fn replica_set_and_stateful_set() {
    let rs = json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2, "readyReplicas": 1}});
    assert_eq!(
        Value::Array(cells("ReplicaSet", rs)),
        json!(["web-1", 2, 2, 1, "<unknown>", "", "", "app=web"])
    );
    let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "selector": {}, "template": {"spec": {"containers": [{"name": "pg", "image": "postgres"}]}}}, "status": {"replicas": 3, "readyReplicas": 2}});
    assert_eq!(
        Value::Array(cells("StatefulSet", sts)),
        json!(["db", "2/3", "<unknown>", "pg", "postgres"])
    );
}

#[test]
fn services() {
    let node_port = json!({
        "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:59:55Z"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.12.7", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]},
    });
    assert_eq!(
        Value::Array(cells("Service", node_port)),
        json!([
            "web",
            "NodePort",
            "10.96.12.7",
            "<none>",
            "80:30080/TCP,53/UDP",
            "5s",
            "app=web"
        ])
    );
    let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.2", "ports": [{"port": 443}]}});
    assert_eq!(cells("Service", lb.clone())[3], "<pending>");
    let mut lb_ready = lb;
    lb_ready["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
    assert_eq!(cells("Service", lb_ready)[3], "203.0.113.9");
    let ext = json!({"metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
    assert_eq!(
        Value::Array(cells("Service", ext)),
        json!([
            "db",
            "ExternalName",
            "<none>",
            "db.example.com",
            "<none>",
            "<unknown>",
            "<none>"
        ])
    );
}

#[test]
fn nodes() {
    let ready = json!({
        "metadata": {"name": "node-1", "creationTimestamp": "2024-03-01T12:00:00Z",
            "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "", "kubernetes.io/hostname": "node-1"}},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "192.168.1.10"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0-skiff", "osImage": "Skiff", "kernelVersion": "6.8.0", "containerRuntimeVersion": "wasmtime://48.0.8",
                "architecture": "amd64", "bootID": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux", "systemUUID": ""},
        },
    });
    assert_eq!(
        Value::Array(cells("Node", ready)),
        json!([
            "node-1",
            "Ready",
            "control-plane,worker",
            "61d",
            "v1.32.0-skiff",
            "192.168.1.10",
            "<none>",
            "Skiff",
            "6.8.0",
            "wasmtime://48.0.8"
        ])
    );
    let cordoned = json!({"metadata": {"name": "n2"}, "spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
    let c = cells("Node", cordoned);
    assert_eq!(c[1], "NotReady,SchedulingDisabled");
    assert_eq!(c[2], "<none>");
    assert_eq!(c[7], "<unknown>");
    assert_eq!(
        cells("Node", json!({"metadata": {"name": "n3"}}))[1],
        "Unknown"
    );
}

#[test]
fn jobs_and_cron_jobs() {
    let done = json!({
        "metadata": {"name": "pi", "creationTimestamp": "2024-05-01T11:00:00Z"},
        "spec": {"completions": 1, "template": {"spec": {"containers": [{"name": "pi", "image": "pi:1"}]}}},
        "status": {"succeeded": 1, "startTime": "2024-05-01T11:00:00Z", "completionTime": "2024-05-01T11:00:42Z",
            "conditions": [{"type": "Complete", "status": "True"}]},
    });
    assert_eq!(
        Value::Array(cells("Job", done)),
        json!([
            "pi", "Complete", "1/1", "42s", "60m", "pi", "pi:1", "<none>"
        ])
    );
    let running = json!({"metadata": {"name": "j"}, "spec": {"parallelism": 2}, "status": {"startTime": "2024-05-01T11:58:00Z"}});
    let c = cells("Job", running);
    assert_eq!(
        (c[1].as_str(), c[2].as_str(), c[3].as_str()),
        (Some("Running"), Some("0/1 of 2"), Some("2m"))
    );
    let suspended = json!({"metadata": {"name": "j"}, "spec": {"completions": 3}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
    assert_eq!(cells("Job", suspended)[1], "Suspended");
    let failed = json!({"metadata": {"name": "j"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
    assert_eq!(cells("Job", failed)[1], "Failed");

    let cron = json!({
        "metadata": {"name": "tick", "creationTimestamp": "2024-05-01T09:00:00Z"},
        "spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "tick"}]}}}}},
        "status": {"active": [{"name": "tick-1"}], "lastScheduleTime": "2024-05-01T11:55:00Z"},
    });
    assert_eq!(
        Value::Array(cells("CronJob", cron)),
        json!([
            "tick",
            "*/5 * * * *",
            "<none>",
            "False",
            1,
            "5m",
            "3h",
            "t",
            "tick",
            "<none>"
        ])
    );
}

#[test]
fn config_and_the_rest() {
    let at = "2024-05-01T11:59:00Z";
    let cases: &[(&str, Value, Value)] = &[
        (
            "Namespace",
            json!({"metadata": {"name": "default", "creationTimestamp": at}, "status": {"phase": "Active"}}),
            json!(["default", "Active", "60s"]),
        ),
        (
            "ConfigMap",
            json!({"metadata": {"name": "cfg", "creationTimestamp": at}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
            json!(["cfg", 3, "60s"]),
        ),
        (
            "Secret",
            json!({"metadata": {"name": "s", "creationTimestamp": at}, "type": "Opaque", "data": {"p": "eA=="}}),
            json!(["s", "Opaque", 1, "60s"]),
        ),
        (
            "ServiceAccount",
            json!({"metadata": {"name": "default", "creationTimestamp": at}}),
            json!(["default", 0, "60s"]),
        ),
        (
            "Lease",
            json!({"metadata": {"name": "node-1", "creationTimestamp": at}, "spec": {"holderIdentity": "node-1"}}),
            json!(["node-1", "node-1", "60s"]),
        ),
        (
            "Endpoints",
            json!({"metadata": {"name": "web", "creationTimestamp": at}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}], "ports": [{"port": 80}]}]}),
            json!([
                "web",
                "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...",
                "60s"
            ]),
        ),
        (
            "Endpoints",
            json!({"metadata": {"name": "none"}}),
            json!(["none", "<none>", "<unknown>"]),
        ),
        (
            "EndpointSlice",
            json!({"metadata": {"name": "web-abc", "creationTimestamp": at}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}], "ports": [{"port": 80}, {"port": 443}]}),
            json!(["web-abc", "IPv4", "80,443", "10.0.0.1,10.0.0.2", "60s"]),
        ),
        (
            "Ingress",
            json!({"metadata": {"name": "ing", "creationTimestamp": at}, "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example.com"]}], "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}}),
            json!([
                "ing",
                "nginx",
                "a.example.com,b.example.com",
                "203.0.113.1",
                "80, 443",
                "60s"
            ]),
        ),
        (
            "Ingress",
            json!({"metadata": {"name": "any"}, "spec": {"defaultBackend": {}}}),
            json!(["any", "<none>", "*", "", "80", "<unknown>"]),
        ),
    ];
    for (kind, obj, want) in cases {
        assert_eq!(&Value::Array(cells(kind, obj.clone())), want, "{kind}");
    }
}

#[test]
fn events() {
    let e = json!({
        "metadata": {"name": "web.17c", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{web}"},
        "reason": "BackOff", "message": "Back-off restarting failed container\n", "type": "Warning",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2024-05-01T11:00:00Z", "lastTimestamp": "2024-05-01T11:59:30Z", "count": 12,
    });
    assert_eq!(
        Value::Array(cells("Event", e)),
        json!([
            "30s",
            "Warning",
            "BackOff",
            "pod/web",
            "spec.containers{web}",
            "kubelet, node-1",
            "Back-off restarting failed container",
            "60m",
            12,
            "web.17c"
        ])
    );
    assert_eq!(
        column_names("Event")[..4],
        ["Last Seen", "Type", "Reason", "Object"]
    );
}
