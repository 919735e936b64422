//! The ReplicaSet and Deployment controllers against the real API server.
//!
//! There is no kubelet here: the test plays it ([`Kubelet`]), marking pods
//! Running and Ready, except those whose image it was told is broken, so a
//! rollout to that image never becomes available.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_control::controllers::{Context, deployment, replicaset};
use support::{Cluster, eventually};

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

/// Aborts a spawned task when dropped, so no test leaks one.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn<F>(future: F) -> Task
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    Task(tokio::spawn(future))
}

/// The controllers under test, running on the cluster's admin client.
fn controllers(cluster: &Cluster) -> Vec<Task> {
    let ctx = Context::new(cluster.client.clone());
    let rs = ctx.clone();
    vec![
        spawn(async move {
            if let Err(error) = replicaset::run(rs).await {
                panic!("replicaset controller stopped: {error:#}");
            }
        }),
        spawn(async move {
            if let Err(error) = deployment::run(ctx).await {
                panic!("deployment controller stopped: {error:#}");
            }
        }),
    ]
}

/// Marks pods Running and Ready, like a kubelet whose probes pass, except
/// pods whose first container runs an image in `broken`.
fn kubelet(client: kube::Client, broken: &'static [&'static str]) -> Task {
    spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for pod in list {
                    let image = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    if is_ready(&pod)
                        || broken.contains(&image.as_str())
                        || pod.metadata.deletion_timestamp.is_some()
                    {
                        continue;
                    }
                    let _ = mark_ready(&pods, &pod.name_any()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn mark_ready(pods: &Api<Pod>, name: &str) -> kube::Result<Pod> {
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

async fn pods_of(client: &kube::Client, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items.into_iter().filter(is_live).collect())
        .unwrap_or_default()
}

async fn sets_of(client: &kube::Client, selector: &str) -> Vec<ReplicaSet> {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    sets.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn template(app: &str, image: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    })
}

fn replica_set(name: &str, app: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": template(app, "hello:v1"),
        },
    }))
    .expect("a valid replicaset")
}

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": template(name, image),
        },
    }))
    .expect("a valid deployment")
}

fn rolling(surge: i32, unavailable: i32) -> serde_json::Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

async fn set_image(client: &kube::Client, name: &str, image: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("image changed");
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// `kubectl rollout status`'s test: the current generation fully rolled
/// out and available, and not timed out.
fn rolled_out(d: &Deployment) -> bool {
    let Some(status) = d.status.as_ref() else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.metadata.generation <= status.observed_generation
        && status.updated_replicas == Some(want)
        && status.replicas == Some(want)
        && status.available_replicas.unwrap_or(0) >= want
        && condition(d, "Progressing").is_some_and(|(_, r)| r != "ProgressDeadlineExceeded")
}

async fn wait_rolled_out(client: &kube::Client, name: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    eventually(WAIT, &format!("deployment {name} to roll out"), || async {
        api.get(name).await.ok().filter(rolled_out)
    })
    .await
}

async fn events_for(client: &kube::Client, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Samples the pods of `app` continuously: the fewest ready and the most
/// live pods seen, and whether pods of two templates were ever live
/// together.
struct Sampler {
    min_ready: Arc<AtomicI64>,
    max_live: Arc<AtomicI64>,
    mixed: Arc<AtomicBool>,
    _task: Task,
}

impl Sampler {
    fn start(client: kube::Client, app: &'static str) -> Sampler {
        let min_ready = Arc::new(AtomicI64::new(i64::MAX));
        let max_live = Arc::new(AtomicI64::new(0));
        let mixed = Arc::new(AtomicBool::new(false));
        let (lo, hi, mix) = (min_ready.clone(), max_live.clone(), mixed.clone());
        let task = spawn(async move {
            loop {
                let pods = pods_of(&client, &format!("app={app}")).await;
                let ready = pods.iter().filter(|p| is_ready(p)).count() as i64;
                lo.fetch_min(ready, Ordering::SeqCst);
                hi.fetch_max(pods.len() as i64, Ordering::SeqCst);
                let hashes: HashSet<_> = pods
                    .iter()
                    .filter_map(|p| p.labels().get("pod-template-hash").cloned())
                    .collect();
                if hashes.len() > 1 {
                    mix.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Sampler {
            min_ready,
            max_live,
            mixed,
            _task: task,
        }
    }
}

async fn timeout<F: std::future::Future<Output = ()>>(what: &str, test: F) {
    if tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .is_err()
    {
        panic!("test timed out: probably stuck {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_scales_up_and_deletes_the_least_useful_pods_first() {
    timeout("scaling a replicaset", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let rs = sets
            .create(&PostParams::default(), &replica_set("web", "web", 3))
            .await
            .unwrap();

        let created = eventually(WAIT, "3 pods", || async {
            let p = pods_of(&client, "app=web").await;
            (p.len() == 3).then_some(p)
        })
        .await;
        for pod in &created {
            assert!(pod.name_any().starts_with("web-"), "{}", pod.name_any());
            let owner = &pod.owner_references()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
                ("ReplicaSet", "web", rs.metadata.uid.as_ref())
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.block_owner_deletion, Some(true));
            assert_eq!(pod.labels().get("app").map(String::as_str), Some("web"));
        }

        // One ready pod, one running but not ready, one pending.
        let names: Vec<String> = created.iter().map(|p| p.name_any()).collect();
        mark_ready(&pods, &names[0]).await.unwrap();
        let running = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "False"}]}});
        pods.patch_status(&names[1], &PatchParams::default(), &Patch::Merge(&running))
            .await
            .unwrap();
        eventually(WAIT, "status counting one ready pod", || async {
            let s = sets.get("web").await.ok()?.status?;
            (s.replicas == 3
                && s.ready_replicas == Some(1)
                && s.available_replicas == Some(1)
                && s.fully_labeled_replicas == Some(3))
            .then_some(())
        })
        .await;
        // Scale up to 5, then down to 1: the ready pod is the one kept.
        sets.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
        eventually(WAIT, "5 pods", || async {
            (pods_of(&client, "app=web").await.len() == 5).then_some(())
        })
        .await;
        sets.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
        let left = eventually(WAIT, "1 pod", || async {
            let p = pods_of(&client, "app=web").await;
            (p.len() == 1).then_some(p)
        })
        .await;
        assert_eq!(left[0].name_any(), names[0], "the ready pod survives");
        let rs = eventually(WAIT, "status after scaling down", || async {
            let rs = sets.get("web").await.ok()?;
            let s = rs.status.clone()?;
            (s.replicas == 1
                && s.ready_replicas == Some(1)
                && s.observed_generation == rs.metadata.generation)
                .then_some(rs)
        })
        .await;
        assert_eq!(rs.status.unwrap().available_replicas, Some(1));
        // Nothing more is created once the count is right.
        assert_eq!(pods_of(&client, "app=web").await.len(), 1);
        let events = events_for(&client, "web").await;
        assert!(
            events
                .iter()
                .any(|(r, m)| r == "SuccessfulCreate" && m.starts_with("Created pod: web-"))
        );
        assert!(
            events
                .iter()
                .any(|(r, m)| r == "SuccessfulDelete" && m.starts_with("Deleted pod: web-"))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_orphans_and_releases_pods_that_stop_matching() {
    timeout("adopting pods", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        for name in ["orphan-a", "orphan-b"] {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "adopt"}},
                "spec": {"containers": [{"name": "app", "image": "hello:v1"}]},
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let _controllers = controllers(&cluster);
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let rs = sets
            .create(&PostParams::default(), &replica_set("adopter", "adopt", 2))
            .await
            .unwrap();
        eventually(WAIT, "both orphans adopted", || async {
            let p = pods_of(&client, "app=adopt").await;
            let adopted = p.iter().all(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == rs.metadata.uid.as_ref())
            });
            (adopted && p.len() == 2).then_some(())
        })
        .await;
        let names: HashSet<String> = pods_of(&client, "app=adopt")
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(
            names,
            HashSet::from(["orphan-a".into(), "orphan-b".into()]),
            "no pod created"
        );

        // Relabelled out of the selector: released, and replaced.
        pods.patch(
            "orphan-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "elsewhere"}}})),
        )
        .await
        .unwrap();
        eventually(WAIT, "the relabelled pod released and replaced", || async {
            let released = pods
                .get("orphan-a")
                .await
                .ok()?
                .owner_references()
                .is_empty();
            let p = pods_of(&client, "app=adopt").await;
            (released && p.len() == 2 && p.iter().any(|p| p.name_any().starts_with("adopter-")))
                .then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_creates_a_replicaset_and_becomes_available() {
    timeout("rolling out a deployment", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &[]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("web", 3, "hello:v1", json!({"type": "RollingUpdate"})),
        )
        .await
        .unwrap();
        let d = wait_rolled_out(&client, "web").await;
        let status = d.status.clone().unwrap();
        assert_eq!(status.ready_replicas, Some(3));
        assert_eq!(status.unavailable_replicas, Some(0));
        assert_eq!(
            condition(&d, "Available"),
            Some(("True".into(), "MinimumReplicasAvailable".into()))
        );
        assert_eq!(
            condition(&d, "Progressing"),
            Some(("True".into(), "NewReplicaSetAvailable".into()))
        );
        assert_eq!(
            annotation(&d.metadata, "deployment.kubernetes.io/revision"),
            Some("1")
        );

        let sets = sets_of(&client, "app=web").await;
        assert_eq!(sets.len(), 1);
        let rs = &sets[0];
        let hash = rs
            .labels()
            .get("pod-template-hash")
            .cloned()
            .expect("hash label");
        assert!(
            hash.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{hash}"
        );
        assert_eq!(rs.name_any(), format!("web-{hash}"));
        let spec = rs.spec.clone().unwrap();
        assert_eq!(
            spec.selector.match_labels.unwrap().get("pod-template-hash"),
            Some(&hash)
        );
        let template_labels = spec.template.unwrap().metadata.unwrap().labels.unwrap();
        assert_eq!(template_labels.get("pod-template-hash"), Some(&hash));
        assert_eq!(
            annotation(&rs.metadata, "deployment.kubernetes.io/revision"),
            Some("1")
        );
        assert_eq!(
            annotation(&rs.metadata, "deployment.kubernetes.io/desired-replicas"),
            Some("3")
        );
        // 25% of 3, rounded up.
        assert_eq!(
            annotation(&rs.metadata, "deployment.kubernetes.io/max-replicas"),
            Some("4")
        );
        let owner = &rs.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Deployment", Some(true))
        );
        for pod in pods_of(&client, "app=web").await {
            assert_eq!(pod.labels().get("pod-template-hash"), Some(&hash));
        }
        let events = events_for(&client, "web").await;
        assert!(
            events.iter().any(|(r, m)| r == "ScalingReplicaSet"
                && m == &format!("Scaled up replica set web-{hash} to 3")),
            "{events:?}"
        );

        // Scaling is a scaling event, not a rollout.
        api.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
        let d = wait_rolled_out(&client, "web").await;
        assert_eq!(d.status.unwrap().available_replicas, Some(5));
        assert_eq!(sets_of(&client, "app=web").await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_availability_and_stays_within_the_surge() {
    timeout("a rolling update", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &[]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("roll", 4, "hello:v1", rolling(1, 1)),
        )
        .await
        .unwrap();
        wait_rolled_out(&client, "roll").await;

        let sampler = Sampler::start(client.clone(), "roll");
        // Let it take a first sample of the settled state.
        eventually(WAIT, "a first sample", || async {
            (sampler.max_live.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await;
        set_image(&client, "roll", "hello:v2").await;
        let d = wait_rolled_out(&client, "roll").await;
        let min_ready = sampler.min_ready.load(Ordering::SeqCst);
        let max_live = sampler.max_live.load(Ordering::SeqCst);
        assert!(
            min_ready >= 3,
            "ready pods dropped to {min_ready} (replicas 4, maxUnavailable 1)"
        );
        assert!(
            max_live <= 5,
            "{max_live} pods at once (replicas 4, maxSurge 1)"
        );
        assert!(
            sampler.mixed.load(Ordering::SeqCst),
            "old and new pods overlapped while rolling"
        );
        assert_eq!(
            annotation(&d.metadata, "deployment.kubernetes.io/revision"),
            Some("2")
        );

        let sets = sets_of(&client, "app=roll").await;
        assert_eq!(sets.len(), 2);
        let by_revision: BTreeMap<String, i32> = sets
            .iter()
            .map(|rs| {
                (
                    annotation(&rs.metadata, "deployment.kubernetes.io/revision")
                        .unwrap_or_default()
                        .to_owned(),
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(
            by_revision,
            BTreeMap::from([("1".into(), 0), ("2".into(), 4)])
        );
        let pods = pods_of(&client, "app=roll").await;
        assert_eq!(pods.len(), 4);
        for pod in pods {
            let image = pod.spec.unwrap().containers[0].image.clone();
            assert_eq!(image.as_deref(), Some("hello:v2"));
        }
        let events = events_for(&client, "roll").await;
        assert!(events.iter().any(
            |(r, m)| r == "ScalingReplicaSet" && m.starts_with("Scaled down replica set roll-")
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_every_old_pod_before_starting_new_ones() {
    timeout("a recreate rollout", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &[]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("again", 3, "hello:v1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
        wait_rolled_out(&client, "again").await;
        let sampler = Sampler::start(client.clone(), "again");
        eventually(WAIT, "a first sample", || async {
            (sampler.max_live.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await;
        set_image(&client, "again", "hello:v2").await;
        let d = wait_rolled_out(&client, "again").await;
        assert!(
            !sampler.mixed.load(Ordering::SeqCst),
            "old and new pods ran together"
        );
        assert_eq!(
            sampler.min_ready.load(Ordering::SeqCst),
            0,
            "all old pods went first"
        );
        assert!(sampler.max_live.load(Ordering::SeqCst) <= 3);
        assert_eq!(
            annotation(&d.metadata, "deployment.kubernetes.io/revision"),
            Some("2")
        );
        let sets = sets_of(&client, "app=again").await;
        assert_eq!(sets.len(), 2);
        let images: HashSet<Option<String>> = pods_of(&client, "app=again")
            .await
            .into_iter()
            .map(|p| p.spec.unwrap().containers[0].image.clone())
            .collect();
        assert_eq!(images, HashSet::from([Some("hello:v2".to_owned())]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_undo_reuses_the_old_replicaset_with_a_new_revision() {
    timeout("rolling back", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &[]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("undo", 2, "hello:v1", rolling(1, 0)),
        )
        .await
        .unwrap();
        wait_rolled_out(&client, "undo").await;
        set_image(&client, "undo", "hello:v2").await;
        wait_rolled_out(&client, "undo").await;
        let sets = sets_of(&client, "app=undo").await;
        assert_eq!(sets.len(), 2);
        let first = sets
            .iter()
            .find(|rs| annotation(&rs.metadata, "deployment.kubernetes.io/revision") == Some("1"))
            .expect("revision 1")
            .clone();

        // What `kubectl rollout undo` sends: revision 1's template without
        // its hash label, as a JSON patch of /spec/template.
        let mut template =
            serde_json::to_value(first.spec.clone().unwrap().template.unwrap()).unwrap();
        template["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("pod-template-hash");
        let patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/template", "value": template}
        ]))
        .expect("a valid json patch");
        api.patch("undo", &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .unwrap();

        let d = wait_rolled_out(&client, "undo").await;
        let d = if annotation(&d.metadata, "deployment.kubernetes.io/revision") == Some("3") {
            d
        } else {
            eventually(WAIT, "revision 3", || async {
                api.get("undo")
                    .await
                    .ok()
                    .filter(|d| {
                        annotation(&d.metadata, "deployment.kubernetes.io/revision") == Some("3")
                    })
                    .filter(rolled_out)
            })
            .await
        };
        let sets = sets_of(&client, "app=undo").await;
        assert_eq!(sets.len(), 2, "no new replicaset for an old template");
        let reused = sets
            .iter()
            .find(|rs| rs.uid() == first.uid())
            .expect("the first RS");
        assert_eq!(
            annotation(&reused.metadata, "deployment.kubernetes.io/revision"),
            Some("3")
        );
        assert_eq!(
            annotation(
                &reused.metadata,
                "deployment.kubernetes.io/revision-history"
            ),
            Some("1")
        );
        assert_eq!(reused.spec.as_ref().and_then(|s| s.replicas), Some(2));
        assert_eq!(d.status.unwrap().updated_replicas, Some(2));
        let images: HashSet<Option<String>> = pods_of(&client, "app=undo")
            .await
            .into_iter()
            .map(|p| p.spec.unwrap().containers[0].image.clone())
            .collect();
        assert_eq!(images, HashSet::from([Some("hello:v1".to_owned())]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_never_becomes_ready_exceeds_its_progress_deadline() {
    timeout("waiting for a progress deadline", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &["broken:v2"]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let mut d = deployment("stuck", 3, "hello:v1", rolling(1, 1));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(2);
        api.create(&PostParams::default(), &d).await.unwrap();
        wait_rolled_out(&client, "stuck").await;
        set_image(&client, "stuck", "broken:v2").await;
        let d = eventually(WAIT, "ProgressDeadlineExceeded", || async {
            api.get("stuck").await.ok().filter(|d| {
                condition(d, "Progressing")
                    == Some(("False".into(), "ProgressDeadlineExceeded".into()))
            })
        })
        .await;
        assert!(!rolled_out(&d));
        // The old pods keep the service up: at most maxUnavailable lost.
        let status = d.status.unwrap();
        assert!(status.available_replicas.unwrap_or(0) >= 2, "{status:?}");
        assert_eq!(
            condition(&api.get("stuck").await.unwrap(), "Available").map(|c| c.0),
            Some("True".into())
        );
        let ready = pods_of(&client, "app=stuck")
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count();
        assert!(ready >= 2, "{ready} ready pods");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_scales_but_does_not_roll() {
    timeout("a paused deployment", async {
        let cluster = Cluster::start().await;
        let client = cluster.client.clone();
        let _controllers = controllers(&cluster);
        let _kubelet = kubelet(client.clone(), &[]);
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.create(
            &PostParams::default(),
            &deployment("still", 2, "hello:v1", rolling(1, 0)),
        )
        .await
        .unwrap();
        wait_rolled_out(&client, "still").await;
        api.patch(
            "still",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
        set_image(&client, "still", "hello:v2").await;
        api.patch_scale(
            "still",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
        // Once the controller has seen the last change, it has scaled and
        // not rolled.
        eventually(
            WAIT,
            "the paused deployment observed and scaled",
            || async {
                let d = api.get("still").await.ok()?;
                let s = d.status.clone()?;
                (s.observed_generation == d.metadata.generation
                    && s.available_replicas == Some(3)
                    && condition(&d, "Progressing").map(|c| c.1) == Some("DeploymentPaused".into()))
                .then_some(())
            },
        )
        .await;
        assert_eq!(
            sets_of(&client, "app=still").await.len(),
            1,
            "no rollout while paused"
        );
        let images: HashSet<Option<String>> = pods_of(&client, "app=still")
            .await
            .into_iter()
            .map(|p| p.spec.unwrap().containers[0].image.clone())
            .collect();
        assert_eq!(images, HashSet::from([Some("hello:v1".to_owned())]));

        api.patch(
            "still",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
        let d = eventually(WAIT, "the resumed rollout", || async {
            api.get("still")
                .await
                .ok()
                .filter(|d| {
                    annotation(&d.metadata, "deployment.kubernetes.io/revision") == Some("2")
                })
                .filter(rolled_out)
        })
        .await;
        assert_eq!(d.status.unwrap().updated_replicas, Some(3));
        assert_eq!(sets_of(&client, "app=still").await.len(), 2);
    })
    .await;
}
