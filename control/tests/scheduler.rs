//! The scheduler against a real in-process API server: fake Nodes (objects
//! only, no agents), real pods, real bindings, conditions and events.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, Event, Node, Pod, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_control::scheduler::{self, SchedulerOptions};
use support::{Cluster, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Aborts the scheduler task when the test ends, however it ends.
struct Running(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start_scheduler(cluster: &Cluster) -> Running {
    Running(tokio::spawn(scheduler::run(
        cluster.client.clone(),
        SchedulerOptions::default(),
    )))
}

async fn add_node(
    client: &kube::Client,
    name: &str,
    cpu: &str,
    memory: &str,
    labels: &[(&str, &str)],
    taints: Vec<Taint>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn gpu_taint() -> Taint {
    Taint {
        key: "gpu".into(),
        value: Some("true".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    let requests: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
        .collect();
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main", "image": "hello.wasm"}]},
    }))
    .unwrap();
    pod.spec.as_mut().unwrap().containers = vec![Container {
        name: "main".into(),
        image: Some("hello.wasm".into()),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..Default::default()
        }),
        ..Default::default()
    }];
    pod
}

async fn create(client: &kube::Client, pod: Pod) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

async fn bound_node(client: &kube::Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, &format!("pod {name} to be bound"), || {
        let pods = pods.clone();
        async move {
            pods.get(name)
                .await
                .ok()?
                .spec?
                .node_name
                .filter(|n| !n.is_empty())
        }
    })
    .await
}

/// Waits for the pod's `PodScheduled=False` condition; returns its message.
async fn unschedulable_message(client: &kube::Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually(
        WAIT,
        &format!("pod {name} to be marked Unschedulable"),
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(name).await.ok()?;
                let condition = pod
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled")?;
                (condition.status == "False"
                    && condition.reason.as_deref() == Some("Unschedulable"))
                .then(|| condition.message.unwrap_or_default())
            }
        },
    )
    .await
}

/// Waits for an event with `reason` about pod `name`; returns it.
async fn event(client: &kube::Client, name: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, &format!("a {reason} event for {name}"), || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some(reason)
                })
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_pods_where_they_fit_and_reports_those_that_do_not() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        add_node(&client, "small", "1", "1Gi", &[], vec![]).await;
        add_node(&client, "big", "4", "8Gi", &[], vec![]).await;
        add_node(
            &client,
            "gpu",
            "8",
            "16Gi",
            &[("accel", "gpu")],
            vec![gpu_taint()],
        )
        .await;

        // Created before the scheduler starts, so it is seen first.
        let mut foreign = pod("foreign", "100m", "64Mi");
        foreign.spec.as_mut().unwrap().scheduler_name = Some("someone-else".into());
        create(&client, foreign).await;

        let _scheduler = start_scheduler(&cluster);

        create(&client, pod("needs-memory", "500m", "4Gi")).await;
        let mut wants_gpu = pod("wants-gpu", "1", "1Gi");
        {
            let spec = wants_gpu.spec.as_mut().unwrap();
            spec.node_selector = Some([("accel".to_owned(), "gpu".to_owned())].into());
            spec.tolerations = Some(vec![Toleration {
                key: Some("gpu".into()),
                operator: Some("Equal".into()),
                value: Some("true".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
        }
        create(&client, wants_gpu).await;
        let mut intolerant = pod("gpu-no-toleration", "100m", "64Mi");
        intolerant.spec.as_mut().unwrap().node_selector =
            Some([("accel".to_owned(), "gpu".to_owned())].into());
        create(&client, intolerant).await;

        assert_eq!(bound_node(&client, "needs-memory").await, "big");
        assert_eq!(bound_node(&client, "wants-gpu").await, "gpu");
        let scheduled = event(&client, "needs-memory", "Scheduled").await;
        assert_eq!(
            scheduled.message.as_deref(),
            Some("Successfully assigned default/needs-memory to big")
        );
        assert_eq!(scheduled.type_.as_deref(), Some("Normal"));

        let want = "0/3 nodes are available: 1 node(s) had untolerated taint {gpu: true}, \
                    2 node(s) didn't match Pod's node affinity/selector.";
        assert_eq!(
            unschedulable_message(&client, "gpu-no-toleration").await,
            want
        );
        let failed = event(&client, "gpu-no-toleration", "FailedScheduling").await;
        assert_eq!(failed.message.as_deref(), Some(want));
        assert_eq!(failed.type_.as_deref(), Some("Warning"));
        assert_eq!(
            failed.source.and_then(|s| s.component).as_deref(),
            Some("default-scheduler")
        );

        // A fitting node arrives: the pending pod goes there.
        add_node(&client, "gpu-open", "2", "2Gi", &[("accel", "gpu")], vec![]).await;
        assert_eq!(bound_node(&client, "gpu-no-toleration").await, "gpu-open");

        // The pod for another scheduler was queued before all the others
        // and is still untouched.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let foreign = pods.get("foreign").await.unwrap();
        assert_eq!(foreign.spec.unwrap().node_name, None);
        let conditions = foreign
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        assert!(
            conditions.iter().all(|c| c.type_ != "PodScheduled"),
            "{conditions:?}"
        );
    })
    .await
    .expect("the scheduler did not bind or report in time (deadlocked watch or queue?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_overcommits_and_retries_when_room_frees_up() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        add_node(&client, "only", "2", "4Gi", &[], vec![]).await;
        let _scheduler = start_scheduler(&cluster);

        // Five pods of 500m on 2 cpu, created back to back: the scheduler
        // places them faster than the watch confirms the bindings, so only
        // its assumed pods stop a fifth from landing.
        for i in 0..5 {
            create(&client, pod(&format!("p{i}"), "500m", "100Mi")).await;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pending = eventually(WAIT, "four pods bound and one unschedulable", || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?.items;
                let bound = list
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                    .count();
                let unschedulable: Vec<String> = list
                    .iter()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .into_iter()
                            .flatten()
                            .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                    })
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                (bound == 4 && unschedulable.len() == 1).then(|| unschedulable[0].clone())
            }
        })
        .await;
        assert_eq!(
            unschedulable_message(&client, &pending).await,
            "0/1 nodes are available: 1 Insufficient cpu."
        );

        // Room frees up when a bound pod goes away.
        let victim = if pending == "p0" { "p1" } else { "p0" };
        pods.delete(victim, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        assert_eq!(bound_node(&client, &pending).await, "only");
    })
    .await
    .expect("the scheduler did not bind or retry in time (deadlocked watch or queue?)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_anti_affine_pods_apart() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        add_node(&client, "a", "4", "4Gi", &[], vec![]).await;
        add_node(&client, "b", "4", "4Gi", &[], vec![]).await;
        let _scheduler = start_scheduler(&cluster);

        // One web pod per host: the third has nowhere to go.
        let web = |name: &str| -> Pod {
            let mut p = pod(name, "100m", "64Mi");
            p.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
            p.spec.as_mut().unwrap().affinity = Some(
                serde_json::from_value(json!({"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "web"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }],
                }}))
                .unwrap(),
            );
            p
        };
        for name in ["web-0", "web-1", "web-2"] {
            create(&client, web(name)).await;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let (hosts, pending) = eventually(WAIT, "two web pods bound and one pending", || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?.items;
                let mut hosts = Vec::new();
                let mut pending = Vec::new();
                for p in list {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    match p.spec.and_then(|s| s.node_name) {
                        Some(node) => hosts.push(node),
                        None => pending.push(name),
                    }
                }
                hosts.sort();
                (hosts.len() == 2 && pending.len() == 1).then_some((hosts, pending))
            }
        })
        .await;
        assert_eq!(hosts, ["a", "b"]);
        // The hostname domain is the node name where the label is missing.
        assert_eq!(
            unschedulable_message(&client, &pending[0]).await,
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
        );
    })
    .await
    .expect("the scheduler did not place or report the web pods in time");
}
