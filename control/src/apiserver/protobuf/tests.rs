//! Objects built with k8s-pb's types, encoded with prost and wrapped the
//! way client-go wraps them; the expected JSON is what
//! `kubectl create ... --dry-run=client -o json` (kubectl 1.32) prints for
//! the same object, less `status` and `creationTimestamp: null`.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message as _;

use super::*;

/// `k8s\0` + `runtime.Unknown`, as client-go's protobuf serializer writes it
/// (Go writes the empty contentEncoding and contentType too).
fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = runtime::Unknown {
        type_meta: Some(runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC, &unknown.encode_to_vec()].concat()
}

fn envelope(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
    wrap(api_version, kind, object.encode_to_vec())
}

/// kubectl's dry-run JSON less what the decoder drops on purpose.
fn kubectl(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, v| !(k == "creationTimestamp" && v.is_null()));
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    v.as_object_mut().unwrap().remove("status");
    strip(&mut v);
    v
}

fn s(v: &str) -> Option<String> {
    Some(v.into())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// ObjectMeta as Go encodes it: every non-pointer field, blank or not.
fn go_meta(name: &str, labels: BTreeMap<String, String>) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        labels,
        ..Default::default()
    })
}

/// A Container as Go encodes it, blanks included.
fn go_container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s(image),
        working_dir: s(""),
        resources: Some(core::ResourceRequirements::default()),
        termination_message_path: s(""),
        termination_message_policy: s(""),
        image_pull_policy: s(""),
        stdin: Some(false),
        stdin_once: Some(false),
        tty: Some(false),
        ..Default::default()
    }
}

fn go_pod_spec(containers: Vec<core::Container>, restart_policy: &str) -> Option<core::PodSpec> {
    Some(core::PodSpec {
        containers,
        restart_policy: s(restart_policy),
        dns_policy: s(""),
        service_account_name: s(""),
        service_account: s(""),
        node_name: s(""),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        hostname: s(""),
        subdomain: s(""),
        scheduler_name: s(""),
        priority_class_name: s(""),
        ..Default::default()
    })
}

fn int_or_string(v: &str) -> Option<IntOrString> {
    Some(match v.parse::<i32>() {
        Ok(i) => IntOrString {
            r#type: Some(0),
            int_val: Some(i),
            str_val: s(""),
        },
        Err(_) => IntOrString {
            r#type: Some(1),
            int_val: Some(0),
            str_val: s(v),
        },
    })
}

#[test]
fn decodes_a_namespace() {
    let ns = core::Namespace {
        metadata: go_meta("dev", BTreeMap::new()),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus {
            phase: s(""),
            conditions: vec![],
        }),
    };
    assert_eq!(
        decode(&envelope("v1", "Namespace", &ns)).unwrap(),
        kubectl(
            json!({"kind":"Namespace","apiVersion":"v1","metadata":{"name":"dev","creationTimestamp":null},"spec":{},"status":{}})
        )
    );
}

#[test]
fn decodes_a_configmap() {
    let cm = core::ConfigMap {
        metadata: go_meta("x", BTreeMap::new()),
        data: labels(&[("a", "b")]),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &cm)).unwrap(),
        kubectl(
            json!({"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","creationTimestamp":null},"data":{"a":"b"}})
        )
    );
    let cm = core::ConfigMap {
        metadata: go_meta("y", BTreeMap::new()),
        binary_data: BTreeMap::from([("bin".to_string(), vec![0, 255, 1])]),
        immutable: Some(false),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &cm)).unwrap(),
        json!({"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"y"},"binaryData":{"bin":"AP8B"},"immutable":false})
    );
}

#[test]
fn decodes_a_secret_with_binary_data() {
    let secret = core::Secret {
        metadata: go_meta("s", BTreeMap::new()),
        data: BTreeMap::from([("k".to_string(), b"v".to_vec())]),
        r#type: s(""),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "Secret", &secret)).unwrap(),
        kubectl(
            json!({"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","creationTimestamp":null},"data":{"k":"dg=="}})
        )
    );
    let secret = core::Secret {
        metadata: go_meta("tls", labels(&[("a", "b")])),
        data: BTreeMap::from([
            ("bin".to_string(), vec![0, 1, 2, 253, 254, 255]),
            ("empty".to_string(), vec![]),
        ]),
        string_data: labels(&[("plain", "text")]),
        r#type: s("kubernetes.io/tls"),
        immutable: Some(true),
    };
    assert_eq!(
        decode(&envelope("v1", "Secret", &secret)).unwrap(),
        json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": "tls", "labels": {"a": "b"}},
            "data": {"bin": "AAEC/f7/", "empty": ""},
            "stringData": {"plain": "text"},
            "type": "kubernetes.io/tls",
            "immutable": true,
        })
    );
}

#[test]
fn decodes_a_serviceaccount() {
    let sa = core::ServiceAccount {
        metadata: go_meta("sa", BTreeMap::new()),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "ServiceAccount", &sa)).unwrap(),
        kubectl(
            json!({"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"sa","creationTimestamp":null}})
        )
    );
}

#[test]
fn decodes_a_deployment_as_kubectl_create_deployment_sends_it() {
    // kubectl create deployment web --image=nginx --replicas=2 --port=80
    let app = labels(&[("app", "web")]);
    let mut nginx = go_container("nginx", "nginx");
    nginx.ports = vec![core::ContainerPort {
        name: s(""),
        host_port: Some(0),
        container_port: Some(80),
        protocol: s(""),
        host_ip: s(""),
    }];
    let deployment = apps::Deployment {
        metadata: go_meta("web", app.clone()),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: app.clone(),
                match_expressions: vec![],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: go_meta("", app.clone()),
                spec: go_pod_spec(vec![nginx], ""),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s(""),
                rolling_update: None,
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            replicas: Some(0),
            ..Default::default()
        }),
    };
    assert_eq!(
        decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap(),
        kubectl(
            json!({"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx","ports":[{"containerPort":80}],"resources":{}}]}},"strategy":{}},"status":{}})
        )
    );
}

#[test]
fn keeps_set_pointer_fields_even_when_zero() {
    let deployment = apps::Deployment {
        metadata: go_meta("idle", BTreeMap::new()),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: int_or_string("0"),
                    max_surge: int_or_string("25%"),
                }),
            }),
            min_ready_seconds: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap(),
        json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "idle"},
            "spec": {
                "replicas": 0,
                "template": {"metadata": {}, "spec": {}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            },
        })
    );
}

fn service(name: &str, ty: &str, port: i32, target: &str, node_port: i32) -> core::Service {
    let app = labels(&[("app", name)]);
    core::Service {
        metadata: go_meta(name, app.clone()),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: s(&format!("{port}-{target}")),
                protocol: s("TCP"),
                app_protocol: None,
                port: Some(port),
                target_port: int_or_string(target),
                node_port: Some(node_port),
            }],
            selector: app,
            cluster_ip: s(""),
            r#type: s(ty),
            load_balancer_ip: s(""),
            session_affinity: s(""),
            external_name: s(""),
            external_traffic_policy: s(""),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus::default()),
            conditions: vec![],
        }),
    }
}

#[test]
fn decodes_services_with_int_and_string_target_ports() {
    // kubectl create service nodeport web --tcp=80:8080
    assert_eq!(
        decode(&envelope(
            "v1",
            "Service",
            &service("web", "NodePort", 80, "8080", 0)
        ))
        .unwrap(),
        kubectl(
            json!({"kind":"Service","apiVersion":"v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],"selector":{"app":"web"},"type":"NodePort"},"status":{"loadBalancer":{}}})
        )
    );
    // kubectl create service clusterip web --tcp=80:http
    assert_eq!(
        decode(&envelope(
            "v1",
            "Service",
            &service("web", "ClusterIP", 80, "http", 0)
        ))
        .unwrap(),
        kubectl(
            json!({"kind":"Service","apiVersion":"v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"ports":[{"name":"80-http","protocol":"TCP","port":80,"targetPort":"http"}],"selector":{"app":"web"},"type":"ClusterIP"},"status":{"loadBalancer":{}}})
        )
    );
    // A NodePort with the node port chosen.
    let svc = decode(&envelope(
        "v1",
        "Service",
        &service("np", "NodePort", 443, "https", 30443),
    ))
    .unwrap();
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "443-https", "protocol": "TCP", "port": 443, "targetPort": "https", "nodePort": 30443}])
    );
    // kubectl create service externalname ex --external-name=example.com
    let mut ex = service("ex", "ExternalName", 0, "0", 0);
    let spec = ex.spec.as_mut().unwrap();
    spec.ports.clear();
    spec.external_name = s("example.com");
    assert_eq!(
        decode(&envelope("v1", "Service", &ex)).unwrap(),
        kubectl(
            json!({"kind":"Service","apiVersion":"v1","metadata":{"name":"ex","creationTimestamp":null,"labels":{"app":"ex"}},"spec":{"selector":{"app":"ex"},"type":"ExternalName","externalName":"example.com"},"status":{"loadBalancer":{}}})
        )
    );
}

fn go_job_spec(template: core::PodTemplateSpec) -> Option<batch::JobSpec> {
    Some(batch::JobSpec {
        template: Some(template),
        ..Default::default()
    })
}

#[test]
fn decodes_a_job_and_a_cronjob() {
    // kubectl create job j --image=busybox -- echo hi
    let mut busybox = go_container("j", "busybox");
    busybox.command = vec!["echo".into(), "hi".into()];
    let job = batch::Job {
        metadata: go_meta("j", BTreeMap::new()),
        spec: go_job_spec(core::PodTemplateSpec {
            metadata: go_meta("", BTreeMap::new()),
            spec: go_pod_spec(vec![busybox], "Never"),
        }),
        status: Some(batch::JobStatus::default()),
    };
    assert_eq!(
        decode(&envelope("batch/v1", "Job", &job)).unwrap(),
        kubectl(
            json!({"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"j","image":"busybox","command":["echo","hi"],"resources":{}}],"restartPolicy":"Never"}}},"status":{}})
        )
    );

    // kubectl create cronjob cj --image=busybox --schedule='*/5 * * * *' -- date
    let mut busybox = go_container("cj", "busybox");
    busybox.command = vec!["date".into()];
    let cronjob = batch::CronJob {
        metadata: go_meta("cj", BTreeMap::new()),
        spec: Some(batch::CronJobSpec {
            schedule: s("*/5 * * * *"),
            concurrency_policy: s(""),
            job_template: Some(batch::JobTemplateSpec {
                metadata: go_meta("cj", BTreeMap::new()),
                spec: go_job_spec(core::PodTemplateSpec {
                    metadata: go_meta("", BTreeMap::new()),
                    spec: go_pod_spec(vec![busybox], "OnFailure"),
                }),
            }),
            ..Default::default()
        }),
        status: Some(batch::CronJobStatus::default()),
    };
    assert_eq!(
        decode(&envelope("batch/v1", "CronJob", &cronjob)).unwrap(),
        kubectl(
            json!({"kind":"CronJob","apiVersion":"batch/v1","metadata":{"name":"cj","creationTimestamp":null},"spec":{"schedule":"*/5 * * * *","jobTemplate":{"metadata":{"name":"cj","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"cj","image":"busybox","command":["date"],"resources":{}}],"restartPolicy":"OnFailure"}}}}},"status":{}})
        )
    );

    // The optional knobs, set explicitly (pointers: kept even when zero).
    let cronjob = batch::CronJob {
        metadata: go_meta("knobs", BTreeMap::new()),
        spec: Some(batch::CronJobSpec {
            schedule: s("@hourly"),
            time_zone: s("Etc/UTC"),
            starting_deadline_seconds: Some(30),
            concurrency_policy: s("Forbid"),
            suspend: Some(false),
            successful_jobs_history_limit: Some(0),
            failed_jobs_history_limit: Some(5),
            job_template: Some(batch::JobTemplateSpec {
                metadata: None,
                spec: Some(batch::JobSpec {
                    parallelism: Some(2),
                    completions: Some(4),
                    active_deadline_seconds: Some(600),
                    backoff_limit: Some(0),
                    manual_selector: Some(true),
                    selector: Some(meta::LabelSelector {
                        match_labels: BTreeMap::new(),
                        match_expressions: vec![meta::LabelSelectorRequirement {
                            key: s("tier"),
                            operator: s("In"),
                            values: vec!["a".into(), "b".into()],
                        }],
                    }),
                    ttl_seconds_after_finished: Some(100),
                    completion_mode: s("Indexed"),
                    suspend: Some(true),
                    ..Default::default()
                }),
            }),
        }),
        status: None,
    };
    assert_eq!(
        decode(&envelope("batch/v1", "CronJob", &cronjob)).unwrap(),
        json!({
            "kind": "CronJob", "apiVersion": "batch/v1",
            "metadata": {"name": "knobs"},
            "spec": {
                "schedule": "@hourly",
                "timeZone": "Etc/UTC",
                "startingDeadlineSeconds": 30,
                "concurrencyPolicy": "Forbid",
                "suspend": false,
                "successfulJobsHistoryLimit": 0,
                "failedJobsHistoryLimit": 5,
                "jobTemplate": {
                    "metadata": {},
                    "spec": {
                        "parallelism": 2,
                        "completions": 4,
                        "activeDeadlineSeconds": 600,
                        "backoffLimit": 0,
                        "manualSelector": true,
                        "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                        "template": {"metadata": {}, "spec": {}},
                        "ttlSecondsAfterFinished": 100,
                        "completionMode": "Indexed",
                        "suspend": true,
                    },
                },
            },
        })
    );
}

#[test]
fn decodes_a_pod_with_probes_env_volumes_and_resources() {
    let mut app = go_container("app", "registry.example/app:1");
    app.args = vec!["--verbose".into()];
    app.image_pull_policy = s("IfNotPresent");
    app.env = vec![
        core::EnvVar {
            name: s("PLAIN"),
            value: s("1"),
            value_from: None,
        },
        core::EnvVar {
            name: s("TOKEN"),
            value: s(""),
            value_from: Some(core::EnvVarSource {
                secret_key_ref: Some(core::SecretKeySelector {
                    local_object_reference: Some(core::LocalObjectReference { name: s("creds") }),
                    key: s("token"),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        },
        core::EnvVar {
            name: s("NODE"),
            value: s(""),
            value_from: Some(core::EnvVarSource {
                field_ref: Some(core::ObjectFieldSelector {
                    api_version: s("v1"),
                    field_path: s("spec.nodeName"),
                }),
                ..Default::default()
            }),
        },
    ];
    app.env_from = vec![core::EnvFromSource {
        prefix: s(""),
        config_map_ref: Some(core::ConfigMapEnvSource {
            local_object_reference: Some(core::LocalObjectReference {
                name: s("settings"),
            }),
            optional: None,
        }),
        secret_ref: None,
    }];
    app.resources = Some(core::ResourceRequirements {
        limits: BTreeMap::from([("memory".to_string(), Quantity { string: s("128Mi") })]),
        requests: BTreeMap::from([("cpu".to_string(), Quantity { string: s("100m") })]),
        claims: vec![],
    });
    app.volume_mounts = vec![core::VolumeMount {
        name: s("scratch"),
        read_only: Some(false),
        mount_path: s("/tmp"),
        sub_path: s(""),
        ..Default::default()
    }];
    app.liveness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            http_get: Some(core::HttpGetAction {
                path: s("/healthz"),
                port: int_or_string("http"),
                host: s(""),
                scheme: s("HTTP"),
                http_headers: vec![],
            }),
            ..Default::default()
        }),
        initial_delay_seconds: Some(5),
        timeout_seconds: Some(0),
        period_seconds: Some(10),
        success_threshold: Some(0),
        failure_threshold: Some(3),
        termination_grace_period_seconds: None,
    });
    app.readiness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            tcp_socket: Some(core::TcpSocketAction {
                port: int_or_string("8080"),
                host: s(""),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    app.startup_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            exec: Some(core::ExecAction {
                command: vec!["true".into()],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    app.ports = vec![core::ContainerPort {
        name: s("http"),
        host_port: Some(0),
        container_port: Some(8080),
        protocol: s("TCP"),
        host_ip: s(""),
    }];
    app.tty = Some(true);
    app.security_context = Some(core::SecurityContext::default());
    let mut spec = go_pod_spec(vec![app], "Always").unwrap();
    spec.init_containers = vec![go_container("init", "busybox")];
    spec.termination_grace_period_seconds = Some(0);
    spec.node_selector = labels(&[("disk", "ssd")]);
    spec.service_account_name = s("runner");
    spec.priority = Some(7);
    spec.security_context = Some(core::PodSecurityContext::default());
    spec.tolerations = vec![core::Toleration {
        key: s("dedicated"),
        operator: s("Equal"),
        value: s("batch"),
        effect: s("NoSchedule"),
        toleration_seconds: None,
    }];
    spec.volumes = vec![
        core::Volume {
            name: s("scratch"),
            volume_source: Some(core::VolumeSource {
                empty_dir: Some(core::EmptyDirVolumeSource {
                    medium: s(""),
                    size_limit: None,
                }),
                ..Default::default()
            }),
        },
        core::Volume {
            name: s("conf"),
            volume_source: Some(core::VolumeSource {
                config_map: Some(core::ConfigMapVolumeSource {
                    local_object_reference: Some(core::LocalObjectReference {
                        name: s("settings"),
                    }),
                    items: vec![core::KeyToPath {
                        key: s("a"),
                        path: s("a.conf"),
                        mode: None,
                    }],
                    default_mode: Some(0o644),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
        core::Volume {
            name: s("certs"),
            volume_source: Some(core::VolumeSource {
                secret: Some(core::SecretVolumeSource {
                    secret_name: s("tls"),
                    items: vec![],
                    default_mode: None,
                    optional: Some(true),
                }),
                ..Default::default()
            }),
        },
    ];
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            generate_name: s("app-"),
            namespace: s("prod"),
            annotations: labels(&[("note", "x")]),
            finalizers: vec!["example.com/keep".into()],
            owner_references: vec![meta::OwnerReference {
                api_version: s("apps/v1"),
                kind: s("ReplicaSet"),
                name: s("app-1"),
                uid: s("u-1"),
                controller: Some(true),
                block_owner_deletion: None,
            }],
            uid: s("ignored"),
            ..go_meta("", BTreeMap::new()).unwrap()
        }),
        spec: Some(spec),
        status: Some(core::PodStatus {
            phase: s("Running"),
            ..Default::default()
        }),
    };
    assert_eq!(
        decode(&envelope("v1", "Pod", &pod)).unwrap(),
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "generateName": "app-",
                "namespace": "prod",
                "annotations": {"note": "x"},
                "finalizers": ["example.com/keep"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-1", "uid": "u-1", "controller": true}],
            },
            "spec": {
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a.conf"}], "defaultMode": 420}},
                    {"name": "certs", "secret": {"secretName": "tls", "optional": true}},
                ],
                "initContainers": [{"name": "init", "image": "busybox", "resources": {}}],
                "containers": [{
                    "name": "app",
                    "image": "registry.example/app:1",
                    "args": ["--verbose"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "envFrom": [{"configMapRef": {"name": "settings"}}],
                    "env": [
                        {"name": "PLAIN", "value": "1"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token", "optional": false}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
                    ],
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                        "initialDelaySeconds": 5,
                        "periodSeconds": 10,
                        "failureThreshold": 3,
                    },
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                    "startupProbe": {"exec": {"command": ["true"]}},
                    "imagePullPolicy": "IfNotPresent",
                    "securityContext": {},
                    "tty": true,
                }],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 0,
                "nodeSelector": {"disk": "ssd"},
                "serviceAccountName": "runner",
                "securityContext": {},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
                "priority": 7,
            },
        })
    );
}

#[test]
fn formats_times() {
    let lease = coordination::Lease {
        metadata: go_meta("leader", BTreeMap::new()),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("me"),
            lease_duration_seconds: Some(15),
            acquire_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(123_456_789),
            }),
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_010),
                nanos: Some(0),
            }),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    assert_eq!(
        decode(&envelope("coordination.k8s.io/v1", "Lease", &lease)).unwrap()["spec"],
        json!({
            "holderIdentity": "me",
            "leaseDurationSeconds": 15,
            "acquireTime": "2023-11-14T22:13:20.123456Z",
            "renewTime": "2023-11-14T22:13:30.000000Z",
            "leaseTransitions": 0,
        })
    );
    let event = core::Event {
        metadata: go_meta("e", BTreeMap::new()),
        first_timestamp: Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(0),
        }),
        last_timestamp: Some(meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        ..Default::default()
    };
    let event = decode(&envelope("v1", "Event", &event)).unwrap();
    assert_eq!(event["firstTimestamp"], json!("2023-11-14T22:13:20Z"));
    assert!(event.get("lastTimestamp").is_none());
}

/// The configmap test's object, with one more (unknown) field appended.
fn configmap_with(extra: &[u8]) -> Vec<u8> {
    let cm = core::ConfigMap {
        metadata: go_meta("x", BTreeMap::new()),
        ..Default::default()
    };
    wrap(
        "v1",
        "ConfigMap",
        [cm.encode_to_vec(), extra.to_vec()].concat(),
    )
}

#[test]
fn refuses_unknown_fields_unless_blank() {
    // Field 99, a non-empty string: 415, naming the message and the tag.
    let err = decode(&configmap_with(b"\x9a\x06\x01x")).unwrap_err();
    assert_eq!(err.code, 415);
    assert!(
        err.message.contains("field 99 of ConfigMap"),
        "{}",
        err.message
    );
    // Deep inside: an unknown field of a Container.
    let mut c = go_container("c", "i").encode_to_vec();
    c.extend_from_slice(b"\xf8\x06\x07"); // field 111, varint 7
    let spec = [b"\x12".as_slice(), &[u8::try_from(c.len()).unwrap()], &c].concat(); // PodSpec.containers = 2
    let pod = [
        b"\x12".as_slice(),
        &[u8::try_from(spec.len()).unwrap()],
        &spec,
    ]
    .concat(); // Pod.spec = 2
    let err = decode(&wrap("v1", "Pod", pod)).unwrap_err();
    assert_eq!(err.code, 415);
    assert!(
        err.message.contains("field 111 of Container"),
        "{}",
        err.message
    );
    // Blank unknown fields are ignored: an empty string, a zero varint.
    let decoded = decode(&configmap_with(b"\x9a\x06\x00\xa0\x06\x00")).unwrap();
    assert_eq!(
        decoded,
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}})
    );
}

#[test]
fn deeply_nested_unknown_fields_are_refused_not_recursed() {
    // Field 99 holding field 1 holding field 1 ... 5000 deep, blank at the end.
    let mut nested = Vec::new();
    for _ in 0..5_000 {
        let mut outer = vec![0x0a];
        let mut len = nested.len();
        while len >= 0x80 {
            outer.push(u8::try_from(len & 0x7f).unwrap() | 0x80);
            len >>= 7;
        }
        outer.push(u8::try_from(len).unwrap());
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    let err = decode(&configmap_with(
        &[b"\x9a\x06".as_slice(), &nested[1..]].concat(),
    ))
    .unwrap_err();
    assert_eq!(err.code, 415);
}

#[test]
fn other_kinds_get_metadata_only() {
    let meta = go_meta("r", labels(&[("a", "b")])).unwrap().encode_to_vec();
    let object = [
        b"\x0a".as_slice(),
        &[u8::try_from(meta.len()).unwrap()],
        &meta,
        b"\x12\x00",
    ]
    .concat();
    assert_eq!(
        decode(&wrap(
            "rbac.authorization.k8s.io/v1",
            "Role",
            object.clone()
        ))
        .unwrap(),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "labels": {"a": "b"}}})
    );
    let with_rules = [object, b"\x12\x03\x0a\x01x".to_vec()].concat();
    let err = decode(&wrap("rbac.authorization.k8s.io/v1", "Role", with_rules)).unwrap_err();
    assert_eq!(err.code, 415);
}

#[test]
fn refuses_malformed_bodies() {
    assert_eq!(decode(b"{}").unwrap_err().code, 400);
    assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
    let cm = core::ConfigMap {
        metadata: go_meta("x", BTreeMap::new()),
        data: labels(&[("a", "b")]),
        ..Default::default()
    };
    let body = envelope("v1", "ConfigMap", &cm);
    // Cut inside contentType's length, then inside raw (the last four bytes
    // are the empty contentEncoding and contentType).
    assert!(body.ends_with(b"\x1a\x00\x22\x00"));
    for cut in [1, 5, 9] {
        assert_eq!(
            decode(&body[..body.len() - cut]).unwrap_err().code,
            400,
            "cut {cut}"
        );
    }
    // The raw object truncated inside a correct envelope.
    let raw = cm.encode_to_vec();
    let err = decode(&wrap("v1", "ConfigMap", raw[..raw.len() - 2].to_vec())).unwrap_err();
    assert_eq!(err.code, 400);
    // A string field sent as a varint.
    assert_eq!(
        decode(&wrap("v1", "ConfigMap", b"\x0a\x02\x08\x01".to_vec()))
            .unwrap_err()
            .code,
        400
    );
}

#[test]
fn schema_tags_are_unique() {
    fn check(msg: &Message, seen: &mut Vec<&'static str>) {
        if seen.contains(&msg.name) {
            return;
        }
        seen.push(msg.name);
        let mut tags: Vec<u32> = msg.fields.iter().map(|f| f.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), msg.fields.len(), "{}", msg.name);
        for field in msg.fields {
            if let Ty::Msg(sub) | Ty::Inline(sub) = field.ty {
                check(sub, seen);
            }
        }
    }
    let mut seen = Vec::new();
    for (_, _, msg) in schema::KINDS {
        check(msg, &mut seen);
    }
    assert!(seen.len() > 150, "{}", seen.len());
}

/// Bodies real kubectl 1.32 sent (captured from `kubectl create ...`
/// against a stub server), with `kubectl create ... --dry-run=client -o json`
/// for the same command.
const KUBECTL: &[(&str, &[u8], &str)] = &[
    (
        "kubectl create namespace dev",
        b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1b\x0a\x13\x0a\x03dev\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"dev","creationTimestamp":null},"spec":{},"status":{}}"#,
    ),
    (
        "kubectl create configmap x --from-literal=a=b",
        b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x1b\x0a\x11\x0a\x01x\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12\x06\x0a\x01a\x12\x01b\x1a\x00\x22\x00",
        r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","creationTimestamp":null},"data":{"a":"b"}}"#,
    ),
    (
        "kubectl create secret generic s --from-literal=k=v",
        b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret\x12\x1d\x0a\x11\x0a\x01s\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12\x06\x0a\x01k\x12\x01v\x1a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","creationTimestamp":null},"data":{"k":"dg=="}}"#,
    ),
    (
        "kubectl create serviceaccount sa",
        b"k8s\x00\x0a\x14\x0a\x02v1\x12\x0eServiceAccount\x12\x14\x0a\x12\x0a\x02sa\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x1a\x00\x22\x00",
        r#"{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"sa","creationTimestamp":null}}"#,
    ),
    (
        "kubectl create deployment web --image=nginx --replicas=2 --port=80",
        b"k8s\x00\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment\x12\xb8\x01\x0a\x1f\x0a\x03web\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12\x86\x01\x08\x02\x12\x0c\x0a\x0a\x0a\x03app\x12\x03web\x1al\x0a\x1c\x0a\x00\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12L\x12.\x0a\x05nginx\x12\x05nginx*\x002\x0a\x0a\x00\x10\x00\x18P\x22\x00*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\x22\x02\x0a\x00(\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00 \x00(\x008\x00\x1a\x00\x22\x00",
        r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx","ports":[{"containerPort":80}],"resources":{}}]}},"strategy":{}},"status":{}}"#,
    ),
    (
        "kubectl create service nodeport web --tcp=80:8080",
        b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12h\x0a\x1f\x0a\x03web\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12A\x0a\x1b\x0a\x0780-8080\x12\x03TCP\x18P\x22\x07\x08\x00\x10\x90?\x1a\x00(\x00\x12\x0a\x0a\x03app\x12\x03web\x1a\x00\x22\x08NodePort:\x00B\x00R\x00Z\x00`\x00h\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],"selector":{"app":"web"},"type":"NodePort"},"status":{"loadBalancer":{}}}"#,
    ),
    (
        "kubectl create service clusterip web --tcp=80:http",
        b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12l\x0a\x1f\x0a\x03web\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12E\x0a\x1e\x0a\x0780-http\x12\x03TCP\x18P\x22\x0a\x08\x01\x10\x00\x1a\x04http(\x00\x12\x0a\x0a\x03app\x12\x03web\x1a\x00\x22\x09ClusterIP:\x00B\x00R\x00Z\x00`\x00h\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"ports":[{"name":"80-http","protocol":"TCP","port":80,"targetPort":"http"}],"selector":{"app":"web"},"type":"ClusterIP"},"status":{"loadBalancer":{}}}"#,
    ),
    (
        "kubectl create service loadbalancer lb --tcp=443:8443",
        b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12k\x0a\x1d\x0a\x02lb\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x09\x0a\x03app\x12\x02lb\x12F\x0a\x1d\x0a\x08443-8443\x12\x03TCP\x18\xbb\x03\x22\x07\x08\x00\x10\xfbA\x1a\x00(\x00\x12\x09\x0a\x03app\x12\x02lb\x1a\x00\x22\x0cLoadBalancer:\x00B\x00R\x00Z\x00`\x00h\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"lb","creationTimestamp":null,"labels":{"app":"lb"}},"spec":{"ports":[{"name":"443-8443","protocol":"TCP","port":443,"targetPort":8443}],"selector":{"app":"lb"},"type":"LoadBalancer"},"status":{"loadBalancer":{}}}"#,
    ),
    (
        "kubectl create service externalname ex --external-name=example.com",
        b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12W\x0a\x1d\x0a\x02ex\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x09\x0a\x03app\x12\x02ex\x122\x12\x09\x0a\x03app\x12\x02ex\x1a\x00\x22\x0cExternalName:\x00B\x00R\x0bexample.comZ\x00`\x00h\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00",
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"ex","creationTimestamp":null,"labels":{"app":"ex"}},"spec":{"selector":{"app":"ex"},"type":"ExternalName","externalName":"example.com"},"status":{"loadBalancer":{}}}"#,
    ),
    (
        "kubectl create job j --image=busybox -- echo hi",
        b"k8s\x00\x0a\x0f\x0a\x08batch/v1\x12\x03Job\x12\x82\x01\x0a\x11\x0a\x01j\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12c2a\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12M\x12*\x0a\x01j\x12\x07busybox\x1a\x04echo\x1a\x02hi*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x05Never2\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\x1a\x08 \x00(\x000\x00:\x00\x1a\x00\x22\x00",
        r#"{"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"j","image":"busybox","command":["echo","hi"],"resources":{}}],"restartPolicy":"Never"}}},"status":{}}"#,
    ),
    (
        "kubectl create cronjob cj --image=busybox --schedule='*/5 * * * *' -- date",
        b"k8s\x00\x0a\x13\x0a\x08batch/v1\x12\x07CronJob\x12\xa4\x01\x0a\x12\x0a\x02cj\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12\x8b\x01\x0a\x0b*/5 * * * *\x1a\x00*z\x0a\x12\x0a\x02cj\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12d2b\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12N\x12'\x0a\x02cj\x12\x07busybox\x1a\x04date*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x09OnFailure2\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\x1a\x00\x1a\x00\x22\x00",
        r#"{"kind":"CronJob","apiVersion":"batch/v1","metadata":{"name":"cj","creationTimestamp":null},"spec":{"schedule":"*/5 * * * *","jobTemplate":{"metadata":{"name":"cj","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"cj","image":"busybox","command":["date"],"resources":{}}],"restartPolicy":"OnFailure"}}}}},"status":{}}"#,
    ),
];

#[test]
fn decodes_what_kubectl_sends() {
    for (command, body, dry_run) in KUBECTL {
        let expected = kubectl(serde_json::from_str(dry_run).unwrap());
        assert_eq!(decode(body).unwrap(), expected, "{command}");
    }
}
