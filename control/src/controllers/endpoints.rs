//! The endpoints and endpointslice controllers: for every Service with a
//! selector, an Endpoints object of the same name and EndpointSlices
//! (`discovery.k8s.io/v1`, owned by the Service) listing the selected pods'
//! addresses, ready and not ready, on the ports the Service targets.
//!
//! Services without a selector are left alone: their endpoints are the
//! user's. A deleted Service's Endpoints are deleted here; its slices go
//! with it through the garbage collector (they carry an ownerReference).

mod desired;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::task::JoinSet;

use super::Context;
use super::gc::informer::{is_status, key_of, reflect};
use super::gc::queue::WorkQueue;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value for [`MANAGED_BY_LABEL`], Kubernetes' own.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// The label a headless Service's endpoints carry.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints with this annotation are leader-election records, never a
/// Service's endpoints.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// How many Services are synced at once (Kubernetes' default
/// `--concurrent-endpoint-syncs`).
const WORKERS: usize = 5;
/// After a write conflict, when the Service is synced again even if no
/// watch event brought the newer object.
const CONFLICT_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

type Key = (String, String);

struct State {
    ctx: Context,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
    queue: WorkQueue<Key>,
}

/// Runs the endpoints and endpointslice controllers until aborted.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (services, services_w) = reflector::store::<Service>();
    let pods = ctx.informers.store::<Pod>();
    let (endpoints, endpoints_w) = reflector::store::<Endpoints>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let state = Arc::new(State {
        ctx,
        services,
        pods,
        endpoints,
        slices,
        queue: WorkQueue::default(),
    });
    let mut tasks = JoinSet::new();

    let s = state.clone();
    let stream = reflect(state.ctx.informers.watch::<Service>(), services_w);
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Some(svc) = touched(&event) {
                    s.queue.add(key_of(svc));
                }
                if let watcher::Event::InitDone = event {
                    // After a relist, Services deleted meanwhile left no
                    // Delete event: their Endpoints are found here.
                    s.enqueue_leftover_endpoints();
                }
                std::future::ready(())
            })
            .await;
    });

    let s = state.clone();
    let stream = state.ctx.informers.events::<Pod>();
    tasks.spawn(async move {
        // The labels each pod had when last seen: a relabelled pod leaves
        // the Services that selected it before.
        let mut labels: HashMap<Key, BTreeMap<String, String>> = HashMap::new();
        stream
            .for_each(|event| {
                let deleted = matches!(event, watcher::Event::Delete(_));
                if let Some(pod) = touched(&event) {
                    let key = key_of(pod.as_ref());
                    let old = if deleted {
                        labels.remove(&key)
                    } else {
                        labels.insert(key.clone(), pod.labels().clone())
                    };
                    s.enqueue_services_selecting(&key.0, pod.labels(), old.as_ref());
                }
                if let watcher::Event::InitDone = event {
                    // After a relist, pods deleted meanwhile left no Delete
                    // event: every Service is looked at again.
                    let listed: std::collections::HashSet<Key> =
                        s.pods.state().iter().map(|p| key_of(p.as_ref())).collect();
                    labels.retain(|key, _| listed.contains(key));
                    for svc in s.services.state() {
                        s.queue.add(key_of(svc.as_ref()));
                    }
                }
                std::future::ready(())
            })
            .await;
    });

    let s = state.clone();
    let stream = reflect(state.ctx.informers.watch::<Endpoints>(), endpoints_w);
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Some(ep) = touched(&event) {
                    // Only Endpoints of an existing Service: others are the
                    // user's (or leftovers, handled once at start).
                    let key = key_of(ep);
                    if s.services
                        .get(&ObjectRef::new(&key.1).within(&key.0))
                        .is_some()
                    {
                        s.queue.add(key);
                    }
                }
                std::future::ready(())
            })
            .await;
    });

    let s = state.clone();
    let stream = reflect(
        watcher::watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        ),
        slices_w,
    );
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Some(slice) = touched(&event)
                    && let Some(service) = slice.labels().get(SERVICE_NAME_LABEL)
                {
                    let ns = slice.namespace().unwrap_or_default();
                    s.queue.add((ns, service.clone()));
                }
                std::future::ready(())
            })
            .await;
    });

    for ready in [
        state.services.wait_until_ready().await,
        state.pods.wait_until_ready().await,
        state.endpoints.wait_until_ready().await,
        state.slices.wait_until_ready().await,
    ] {
        ready.context("a watch cache closed before it filled")?;
    }
    state.enqueue_leftover_endpoints();

    for _ in 0..WORKERS {
        let s = state.clone();
        tasks.spawn(async move {
            loop {
                let key = s.queue.next().await;
                match s.sync(&key).await {
                    Ok(()) => s.queue.forget(&key),
                    Err(error) => {
                        // A conflict means our cache was behind our own last
                        // write: expected, and the retry reads the fresh copy.
                        let conflict = error
                            .chain()
                            .filter_map(|e| e.downcast_ref::<kube::Error>())
                            .any(|e| is_status(e, 409));
                        if conflict {
                            // The newer object is on its way through our
                            // watches, and its event queues the Service
                            // again: no backoff to wait out (it would delay
                            // every endpoint change behind a stale cache by
                            // 100 ms). The late retry only guards against
                            // a lost event.
                            tracing::debug!(namespace = %key.0, service = %key.1, "endpoints changed under us; syncing again when the watch catches up");
                            s.queue.forget(&key);
                            s.queue.add_after(key.clone(), CONFLICT_RECHECK);
                        } else {
                            tracing::warn!(namespace = %key.0, service = %key.1, error = %format!("{error:#}"), "cannot sync the service's endpoints; retrying");
                            s.queue.retry(key.clone());
                        }
                    }
                }
                s.queue.done(&key);
            }
        });
    }

    let s = state.clone();
    tasks.spawn(async move {
        let mut tick =
            tokio::time::interval(s.ctx.options.resync.max(std::time::Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tick.tick().await;
            for svc in s.services.state() {
                s.queue.add(key_of(svc.as_ref()));
            }
        }
    });

    match tasks.join_next().await {
        Some(Err(error)) => Err(error).context("an endpoints controller task failed"),
        _ => anyhow::bail!("an endpoints controller task ended"),
    }
}

/// The objects a watch event is about.
fn touched<K>(event: &watcher::Event<K>) -> Option<&K> {
    match event {
        watcher::Event::Apply(obj)
        | watcher::Event::InitApply(obj)
        | watcher::Event::Delete(obj) => Some(obj),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

impl State {
    fn enqueue_services_selecting(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        old: Option<&BTreeMap<String, String>>,
    ) {
        let matches = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        for svc in self.services.state() {
            if svc.namespace().as_deref() != Some(namespace) {
                continue;
            }
            let Some(selector) = desired::managed_selector(&svc) else {
                continue;
            };
            if matches(selector, labels) || old.is_some_and(|old| matches(selector, old)) {
                self.queue.add(key_of(svc.as_ref()));
            }
        }
    }

    /// Endpoints whose Service went while no controller ran are deleted,
    /// as Kubernetes' endpoints controller does when it starts.
    fn enqueue_leftover_endpoints(&self) {
        for ep in self.endpoints.state() {
            let key = key_of(ep.as_ref());
            let orphan = self
                .services
                .get(&ObjectRef::new(&key.1).within(&key.0))
                .is_none();
            if orphan && !ep.annotations().contains_key(LEADER_ANNOTATION) {
                self.queue.add(key);
            }
        }
    }

    async fn sync(&self, key: &Key) -> anyhow::Result<()> {
        let (ns, name) = key;
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            return self.delete_endpoints(ns, name).await;
        };
        if svc.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(selector) = desired::managed_selector(&svc) else {
            return Ok(());
        };
        let pods: Vec<Arc<Pod>> = self.pods.state_filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(ns.as_str())
                && desired::selects(selector, pod)
        });
        let pods: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
        self.sync_endpoints(&svc, &pods).await?;
        self.sync_slices(&svc, &pods).await
    }

    async fn delete_endpoints(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let Some(ep) = self.endpoints.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(());
        };
        if ep.annotations().contains_key(LEADER_ANNOTATION) {
            return Ok(());
        }
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: ep.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::debug!(
                    namespace = ns,
                    name,
                    "deleted the endpoints of a deleted service"
                );
                Ok(())
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting endpoints {ns}/{name}")),
        }
    }

    async fn sync_endpoints(&self, svc: &Service, pods: &[&Pod]) -> anyhow::Result<()> {
        let (ns, name) = key_of(svc);
        let subsets = desired::endpoints_subsets(svc, pods);
        let mut labels = svc.labels().clone();
        labels.remove(HEADLESS_LABEL);
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert(HEADLESS_LABEL.to_owned(), String::new());
        }
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), &ns);
        let current = self.endpoints.get(&ObjectRef::new(&name).within(&ns));
        let result = match current {
            Some(current) => {
                if desired::normalize_subsets(current.subsets.as_ref()) == subsets
                    && current.labels() == &labels
                {
                    return Ok(());
                }
                let mut updated = (*current).clone();
                updated.metadata.labels = Some(labels);
                updated.subsets = Some(subsets);
                api.replace(&name, &PostParams::default(), &updated).await
            }
            None => {
                let created = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    subsets: Some(subsets),
                };
                api.create(&PostParams::default(), &created).await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if terminating_namespace(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("writing endpoints {ns}/{name}")),
        }
    }

    async fn sync_slices(&self, svc: &Service, pods: &[&Pod]) -> anyhow::Result<()> {
        let (ns, name) = key_of(svc);
        let uid = svc.uid().unwrap_or_default();
        let wanted = desired::slices(svc, pods);
        let mut labels: BTreeMap<String, String> = svc
            .labels()
            .iter()
            .filter(|(k, _)| {
                ![SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert(HEADLESS_LABEL.to_owned(), String::new());
        }
        let owner = OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Service".to_owned(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut existing: Vec<Arc<EndpointSlice>> = self.slices.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        });
        existing.sort_by_key(|s| s.name_any());
        let owned_here = |s: &EndpointSlice| {
            s.owner_references()
                .iter()
                .any(|o| o.uid == uid && o.kind == "Service")
        };
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), &ns);

        // Slices already right stay untouched; then slices with the right
        // ports are rewritten; what is left is created or deleted.
        let mut unused: Vec<Option<Arc<EndpointSlice>>> = existing
            .into_iter()
            .filter(|s| s.address_type == "IPv4")
            .map(Some)
            .collect();
        let mut todo: Vec<&desired::SliceContent> = Vec::new();
        for content in &wanted {
            let exact = unused.iter_mut().find(|s| {
                s.as_ref().is_some_and(|s| {
                    owned_here(s)
                        && s.labels() == &labels
                        && &desired::normalize_slice(s) == content
                })
            });
            match exact {
                Some(slot) => *slot = None,
                None => todo.push(content),
            }
        }
        for content in todo {
            let reuse = unused.iter_mut().find(|s| {
                s.as_ref().is_some_and(|s| {
                    owned_here(s) && desired::normalize_slice(s).ports == content.ports
                })
            });
            let result = match reuse.and_then(Option::take) {
                Some(current) => {
                    let mut updated = (*current).clone();
                    updated.metadata.labels = Some(labels.clone());
                    updated.endpoints = content.endpoints.clone();
                    updated.ports = Some(content.ports.clone());
                    api.replace(&current.name_any(), &PostParams::default(), &updated)
                        .await
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{name}-")),
                            namespace: Some(ns.clone()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..ObjectMeta::default()
                        },
                        address_type: "IPv4".to_owned(),
                        endpoints: content.endpoints.clone(),
                        ports: Some(content.ports.clone()),
                    };
                    api.create(&PostParams::default(), &slice).await
                }
            };
            match result {
                Ok(_) => {}
                Err(e) if terminating_namespace(&e) => return Ok(()),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("writing an endpointslice of {ns}/{name}"));
                }
            }
        }
        for stale in unused.into_iter().flatten() {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: stale.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&stale.name_any(), &params).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("deleting endpointslice {ns}/{}", stale.name_any())
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a write failed because the namespace is being deleted (nothing
/// new may be created there, and nothing needs to be).
fn terminating_namespace(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}
