//! Shared watches against a real in-process API server: every subscriber
//! sees what a watch of its own would, and the server sees one watch.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use serde_json::json;
use skiff_control::informers::{Informers, Subscription};
use support::{Cluster, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn create(api: &Api<ConfigMap>, name: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

/// The next event, or a panic naming what was awaited.
async fn next(sub: &mut Subscription<ConfigMap>, what: &str) -> Event<Arc<ConfigMap>> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no event while waiting for {what}"))
        .expect("a subscription does not end")
}

/// Reads the initial list: `Init`, the names listed, `InitDone`.
async fn initial(sub: &mut Subscription<ConfigMap>) -> BTreeSet<String> {
    assert!(matches!(next(sub, "Init").await, Event::Init));
    let mut names = BTreeSet::new();
    loop {
        match next(sub, "the initial list").await {
            Event::InitApply(cm) => {
                names.insert(cm.metadata.name.clone().unwrap());
            }
            Event::InitDone => return names,
            other => panic!("unexpected {other:?} in the initial list"),
        }
    }
}

/// Skips to the first `Apply` or `Delete` of `name`.
async fn change_of(sub: &mut Subscription<ConfigMap>, name: &str) -> Event<Arc<ConfigMap>> {
    loop {
        let event = next(sub, name).await;
        if let Event::Apply(cm) | Event::Delete(cm) = &event
            && cm.metadata.name.as_deref() == Some(name)
        {
            return event;
        }
    }
}

/// The server's `apiserver_registered_watchers` for ConfigMaps.
async fn configmap_watches(client: &kube::Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("apiserver_registered_watchers{") && l.contains("kind=\"ConfigMap\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn subscribers_share_one_watch_and_each_sees_everything() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    create(&api, "before").await;
    let informers = Informers::new(cluster.client.clone());

    let mut first = informers.events::<ConfigMap>();
    let listed = initial(&mut first).await;
    assert!(listed.contains("before"), "{listed:?}");

    create(&api, "during").await;
    assert!(matches!(
        change_of(&mut first, "during").await,
        Event::Apply(_)
    ));
    // The shared cache has a change before any subscriber hears of it.
    let store = informers.store::<ConfigMap>();
    let key = |name: &str| ObjectRef::<ConfigMap>::new(name).within("default");
    assert!(store.get(&key("during")).is_some());

    // A late subscriber starts from the shared state, not a new list.
    let mut second = informers.events::<ConfigMap>();
    let listed = initial(&mut second).await;
    assert!(
        listed.contains("before") && listed.contains("during"),
        "{listed:?}"
    );
    let mut third = informers.events::<ConfigMap>();
    initial(&mut third).await;
    assert_eq!(configmap_watches(&cluster.client).await, 1);

    // Applied, so that the server records managedFields.
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}, "data": {"k": "v"}});
    api.patch(
        "after",
        &PatchParams::apply("test"),
        &Patch::Apply(&applied),
    )
    .await
    .unwrap();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    for sub in [&mut first, &mut second, &mut third] {
        let Event::Apply(after) = change_of(sub, "after").await else {
            panic!("no Apply for \"after\"");
        };
        seen.push(after);
        assert!(matches!(change_of(sub, "before").await, Event::Delete(_)));
    }
    // One object for all the subscribers, not a copy each; without the
    // managedFields the server keeps.
    assert!(seen.iter().all(|cm| Arc::ptr_eq(cm, &seen[0])));
    assert!(seen[0].metadata.managed_fields.is_none());
    let stored = api.get("after").await.unwrap();
    assert!(
        stored
            .metadata
            .managed_fields
            .is_some_and(|m| !m.is_empty()),
        "the server records managedFields for an apply"
    );
    assert!(store.get(&key("after")).is_some() && store.get(&key("before")).is_none());

    // The last subscriber gone, the watch stops; a new one starts afresh.
    drop((first, second, third));
    eventually(WAIT, "the shared watch to stop", || async {
        (configmap_watches(&cluster.client).await == 0).then_some(())
    })
    .await;
    let mut again = informers.events::<ConfigMap>();
    let fresh = informers.store::<ConfigMap>();
    let listed = initial(&mut again).await;
    fresh.wait_until_ready().await.unwrap();
    assert!(fresh.get(&key("after")).is_some() && fresh.get(&key("before")).is_none());
    assert!(
        listed.contains("after") && listed.contains("during") && !listed.contains("before"),
        "{listed:?}"
    );
    assert_eq!(configmap_watches(&cluster.client).await, 1);
}
