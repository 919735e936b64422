//! The lifecycle controllers against the real API server (no node agent:
//! the tests write pod status and node Leases themselves): endpoints and
//! EndpointSlices follow pods; a silent node is marked NotReady, tainted,
//! its pods evicted per their tolerations, and untainted when it
//! heartbeats again; a deleted namespace is emptied then removed; the
//! garbage collector's background, foreground and orphan deletion.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use skiff_control::controllers::{self, Context, ManualClock, Options};
use support::{Cluster, eventually};

/// Generous bound for anything a controller should do promptly.
const WAIT: Duration = Duration::from_secs(30);

/// Controllers running for one test; aborted when dropped.
struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Running {
    fn start<F>(&mut self, name: &'static str, controller: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.0.push(tokio::spawn(async move {
            if let Err(error) = controller.await {
                panic!("{name} stopped: {error:#}");
            }
        }));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), &from(value))
        .await
        .expect("created")
}

/// Gives a pod an IP and a Ready condition, as its node agent would.
async fn set_pod_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status written");
}

fn web_pod(name: &str, port: i32) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "example.com/web:1",
            "ports": [{"name": "http", "containerPort": port}],
        }]},
    })
}

/// (port, ready IPs, not-ready IPs) per subset.
fn subsets(ep: &Endpoints) -> Vec<(i32, Vec<String>, Vec<String>)> {
    ep.subsets
        .iter()
        .flatten()
        .map(|s| {
            let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
                a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
            };
            (
                s.ports
                    .as_ref()
                    .and_then(|p| p.first())
                    .map_or(0, |p| p.port),
                ips(&s.addresses),
                ips(&s.not_ready_addresses),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_the_selected_pods() {
    let cluster = Cluster::start().await;
    let ctx = Context::new(cluster.client.clone());
    let mut running = Running(Vec::new());
    running.start("endpoints", controllers::endpoints::run(ctx.clone()));
    running.start("gc", controllers::gc::run(ctx.clone()));

    let client = cluster.client.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    let svc = create(
        &services,
        json!({
            "metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }),
    )
    .await;
    create(&pods, web_pod("a", 8080)).await;
    create(&pods, web_pod("b", 9090)).await;
    let mut other = web_pod("other", 8080);
    other["metadata"]["labels"] = json!({"app": "other"});
    create(&pods, other).await;
    // A pod without an IP is in no endpoints.
    create(&pods, web_pod("pending", 8080)).await;
    set_pod_status(&pods, "a", "10.1.0.1", true).await;
    set_pod_status(&pods, "b", "10.1.0.2", false).await;
    set_pod_status(&pods, "other", "10.1.0.3", true).await;

    // Named targetPort resolved per pod: one subset per port set.
    let expected = vec![
        (8080, vec!["10.1.0.1".to_owned()], vec![]),
        (9090, vec![], vec!["10.1.0.2".to_owned()]),
    ];
    let ep = eventually(
        WAIT,
        "endpoints listing a ready and b not ready",
        || async {
            let ep = endpoints.get_opt("web").await.ok()??;
            (subsets(&ep) == expected).then_some(ep)
        },
    )
    .await;
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    let address = &ep.subsets.as_ref().unwrap()[0].addresses.as_ref().unwrap()[0];
    assert_eq!(
        address.target_ref.as_ref().unwrap().name.as_deref(),
        Some("a")
    );

    // EndpointSlices: owned by the Service, one per port set.
    let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
    let list = eventually(WAIT, "two endpointslices for web", || async {
        let list = slices.list(&by_service).await.ok()?;
        let total: usize = list.items.iter().map(|s| s.endpoints.len()).sum();
        (list.items.len() == 2 && total == 2).then_some(list)
    })
    .await;
    for slice in &list.items {
        assert_eq!(slice.address_type, "IPv4");
        assert!(slice.name_any().starts_with("web-"), "{}", slice.name_any());
        assert_eq!(
            slice
                .labels()
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        let owner = &slice.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), Some(&owner.uid)),
            ("Service", svc.uid().as_ref())
        );
        let endpoint = &slice.endpoints[0];
        let port = slice.ports.as_ref().unwrap()[0].port;
        let conditions = endpoint.conditions.clone().unwrap();
        match port {
            Some(8080) => {
                assert_eq!(endpoint.addresses, vec!["10.1.0.1"]);
                assert_eq!(conditions.ready, Some(true));
            }
            Some(9090) => {
                assert_eq!(endpoint.addresses, vec!["10.1.0.2"]);
                assert_eq!(
                    (conditions.ready, conditions.serving),
                    (Some(false), Some(false))
                );
            }
            other => panic!("unexpected slice port {other:?}"),
        }
        assert_eq!(conditions.terminating, Some(false));
        assert_eq!(
            endpoint.target_ref.as_ref().and_then(|r| r.kind.as_deref()),
            Some("Pod")
        );
    }

    // b becomes ready; a goes away.
    set_pod_status(&pods, "b", "10.1.0.2", true).await;
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    let expected = vec![(9090, vec!["10.1.0.2".to_owned()], vec![])];
    eventually(
        WAIT,
        "endpoints following b ready and a deleted",
        || async {
            let ep = endpoints.get_opt("web").await.ok()??;
            (subsets(&ep) == expected).then_some(())
        },
    )
    .await;
    eventually(WAIT, "a single slice with b ready", || async {
        let list = slices.list(&by_service).await.ok()?;
        let [slice] = list.items.as_slice() else {
            return None;
        };
        let ready = slice.endpoints.first()?.conditions.as_ref()?.ready;
        (slice.endpoints.len() == 1 && ready == Some(true)).then_some(())
    })
    .await;

    // A Service without a selector keeps the endpoints its user wrote.
    create(
        &services,
        json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    create(
        &endpoints,
        json!({"metadata": {"name": "manual"}, "subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"port": 80}]}]}),
    )
    .await;

    // Deleting the Service deletes its Endpoints (and, through the
    // garbage collector, its slices).
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "web's endpoints and slices gone", || async {
        let ep = endpoints.get_opt("web").await.ok()?;
        let list = slices.list(&by_service).await.ok()?;
        (ep.is_none() && list.items.is_empty()).then_some(())
    })
    .await;
    let manual = endpoints.get("manual").await.unwrap();
    assert_eq!(
        subsets(&manual),
        vec![(80, vec!["10.9.9.9".to_owned()], vec![])]
    );
    let manual_slices = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=manual"))
        .await
        .unwrap();
    assert!(manual_slices.items.is_empty());
}

fn taints(node: &Node) -> Vec<(String, String)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

fn deleting(pod: &Option<Pod>) -> bool {
    pod.as_ref()
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_its_pods_evicted_and_it_recovers() {
    let cluster = Cluster::start().await;
    let client = cluster.client.clone();
    let start = jiff::Timestamp::now();
    let clock = Arc::new(ManualClock::new(start));
    let ctx = Context {
        client: client.clone(),
        informers: skiff_control::informers::Informers::new(client.clone()),
        clock: clock.clone(),
        options: Arc::new(Options {
            node_monitor_grace: Duration::from_secs(2),
            pod_eviction_timeout: Duration::from_secs(2),
            ..Options::default()
        }),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    create(&nodes, json!({"metadata": {"name": "n1"}})).await;
    let stale = start
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(stale),
            }]}})),
        )
        .await
        .unwrap();
    let mut lease = create(
        &leases,
        json!({
            "metadata": {"name": "n1"},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                     "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(stale)},
        }),
    )
    .await;
    let pod = |name: &str, tolerations: Value| {
        json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "n1", "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "example.com/c:1"}]},
        })
    };
    create(&pods, pod("plain", json!([]))).await;
    create(
        &pods,
        pod(
            "patient",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]),
        ),
    )
    .await;
    create(
        &pods,
        pod(
            "forever",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
        ),
    )
    .await;
    for (i, name) in ["plain", "patient", "forever"].iter().enumerate() {
        set_pod_status(&pods, name, &format!("10.2.0.{}", i + 1), true).await;
    }

    let mut running = Running(Vec::new());
    running.start(
        "node-lifecycle",
        controllers::nodelifecycle::run(ctx.clone()),
    );

    let unreachable = vec![
        (
            "node.kubernetes.io/unreachable".to_owned(),
            "NoSchedule".to_owned(),
        ),
        (
            "node.kubernetes.io/unreachable".to_owned(),
            "NoExecute".to_owned(),
        ),
    ];
    let node = eventually(WAIT, "n1 NotReady and tainted unreachable", || async {
        let node = nodes.get("n1").await.ok()?;
        (taints(&node) == unreachable).then_some(node)
    })
    .await;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    assert!(
        node.spec.as_ref().unwrap().taints.as_ref().unwrap()[1]
            .time_added
            .is_some()
    );

    // Its pods are no longer Ready.
    eventually(WAIT, "the node's pods marked not ready", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
            })
            .then_some(())
    })
    .await;

    // The clock stands still: nobody is evicted before the timeout. Past
    // it, the pod without a toleration is; the others tolerate longer.
    clock.advance(Duration::from_secs(3));
    eventually(WAIT, "the untolerating pod evicted", || async {
        deleting(&pods.get_opt("plain").await.ok()?).then_some(())
    })
    .await;
    assert!(!deleting(&pods.get_opt("patient").await.unwrap()));
    assert!(!deleting(&pods.get_opt("forever").await.unwrap()));
    let plain = pods.get_opt("plain").await.unwrap();
    if let Some(plain) = plain {
        let disruption = plain
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget");
        assert_eq!(
            disruption.and_then(|c| c.reason).as_deref(),
            Some("DeletionByTaintManager")
        );
    }

    clock.advance(Duration::from_secs(3600));
    eventually(
        WAIT,
        "the pod tolerating an hour evicted after it",
        || async { deleting(&pods.get_opt("patient").await.ok()?).then_some(()) },
    )
    .await;
    assert!(!deleting(&pods.get_opt("forever").await.unwrap()));

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["NodeNotReady", "TaintManagerEviction"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event in {reasons:?}"
        );
    }

    // The node heartbeats again: the taints go.
    lease.spec.as_mut().unwrap().renew_time = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(clock_now(&clock)),
    );
    lease = leases
        .replace("n1", &PostParams::default(), &lease)
        .await
        .unwrap();
    eventually(WAIT, "n1 untainted after its lease renewed", || async {
        let node = nodes.get("n1").await.ok()?;
        taints(&node).is_empty().then_some(())
    })
    .await;
    let _ = lease;
}

fn clock_now(clock: &ManualClock) -> jiff::Timestamp {
    use skiff_control::controllers::Clock;
    clock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_its_content_then_itself() {
    let cluster = Cluster::start().await;
    let client = cluster.client.clone();
    let mut running = Running(Vec::new());
    running.start(
        "namespace",
        controllers::namespace::run(Context::new(client.clone())),
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"metadata": {"name": "doomed"}})).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "doomed");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    create(
        &configmaps,
        json!({"metadata": {"name": "plain"}, "data": {"a": "b"}}),
    )
    .await;
    create(
        &configmaps,
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .await;
    create(
        &secrets,
        json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
    )
    .await;
    create(
        &pods,
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "example.com/c:1"}]}}),
    )
    .await;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    // Everything goes but the object a finalizer holds, which holds the
    // namespace in Terminating.
    eventually(WAIT, "the namespace's content deleted", || async {
        let cms = configmaps.list(&ListParams::default()).await.ok()?;
        let secrets = secrets.list(&ListParams::default()).await.ok()?;
        let pods = pods.list(&ListParams::default()).await.ok()?;
        let held = cms
            .items
            .iter()
            .all(|c| c.name_any() == "held" && c.metadata.deletion_timestamp.is_some());
        (cms.items.len() == 1 && held && secrets.items.is_empty() && pods.items.is_empty())
            .then_some(())
    })
    .await;
    let ns = namespaces.get("doomed").await.unwrap();
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );

    configmaps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "the namespace gone", || async {
        namespaces
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

fn owned_by(owner: &ConfigMap, block: bool) -> Value {
    json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
        "uid": owner.uid().unwrap(), "blockOwnerDeletion": block,
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_deletes_dependents_of_deleted_owners() {
    let cluster = Cluster::start().await;
    let client = cluster.client.clone();
    let mut running = Running(Vec::new());
    running.start("gc", controllers::gc::run(Context::new(client.clone())));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");

    // Background: the owner goes at once, its dependents after.
    let owner = create(&configmaps, json!({"metadata": {"name": "bg-owner"}})).await;
    create(
        &secrets,
        json!({"metadata": {"name": "bg-dep", "ownerReferences": owned_by(&owner, false)}}),
    )
    .await;
    configmaps
        .delete("bg-owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually(WAIT, "the background dependent collected", || async {
        secrets
            .get_opt("bg-dep")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // An owner that never existed.
    create(
        &secrets,
        json!({"metadata": {"name": "ghost-dep", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
            "uid": "00000000-0000-0000-0000-000000000000",
        }]}}),
    )
    .await;
    eventually(
        WAIT,
        "the dependent of a never-existing owner collected",
        || async {
            secrets
                .get_opt("ghost-dep")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Foreground: the owner stays until its blocking dependent is gone
    // (here held by a finalizer until the test lets it go).
    let owner = create(&configmaps, json!({"metadata": {"name": "fg-owner"}})).await;
    create(
        &configmaps,
        json!({"metadata": {"name": "fg-dep", "finalizers": ["example.com/hold"],
                            "ownerReferences": owned_by(&owner, true)}}),
    )
    .await;
    configmaps
        .delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(WAIT, "the foreground dependent being deleted", || async {
        let dep = configmaps.get_opt("fg-dep").await.ok()??;
        dep.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    let waiting = configmaps.get("fg-owner").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .finalizers()
            .iter()
            .any(|f| f == "foregroundDeletion")
    );
    configmaps
        .patch(
            "fg-dep",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(
        WAIT,
        "the foreground owner gone after its dependent",
        || async {
            let owner = configmaps.get_opt("fg-owner").await.ok()?;
            let dep = configmaps.get_opt("fg-dep").await.ok()?;
            (owner.is_none() && dep.is_none()).then_some(())
        },
    )
    .await;

    // Orphan: the owner goes, its dependents stay without the reference.
    let owner = create(&configmaps, json!({"metadata": {"name": "or-owner"}})).await;
    create(
        &secrets,
        json!({"metadata": {"name": "or-dep", "ownerReferences": owned_by(&owner, true)}}),
    )
    .await;
    configmaps
        .delete("or-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(WAIT, "the orphaning owner gone", || async {
        configmaps
            .get_opt("or-owner")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let dep = secrets.get("or-dep").await.unwrap();
    assert!(
        dep.owner_references().is_empty(),
        "{:?}",
        dep.owner_references()
    );
    assert!(dep.metadata.deletion_timestamp.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_in_the_foreground_waits_for_its_content_too() {
    let cluster = Cluster::start().await;
    let client = cluster.client.clone();
    let ctx = Context::new(client.clone());
    let mut running = Running(Vec::new());
    running.start("namespace", controllers::namespace::run(ctx.clone()));
    running.start("gc", controllers::gc::run(ctx));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"metadata": {"name": "fg"}})).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "fg");
    create(
        &configmaps,
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .await;
    namespaces
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(WAIT, "the held content being deleted", || async {
        let held = configmaps.get_opt("held").await.ok()??;
        held.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    // The garbage collector has nothing to wait for, but the namespace
    // stays until its content is gone.
    let ns = namespaces.get("fg").await.unwrap();
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    configmaps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "the namespace gone", || async {
        namespaces.get_opt("fg").await.ok()?.is_none().then_some(())
    })
    .await;
}
