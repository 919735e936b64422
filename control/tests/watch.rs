//! Watches with selectors against a real in-process API server: an object
//! that starts matching is ADDED, one that stops matching is DELETED, one
//! that never matches is never sent, and every object sent carries its
//! resourceVersion.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::Cluster;

const WAIT: Duration = Duration::from_secs(30);

async fn create(api: &Api<ConfigMap>, name: &str, app: &str, data: &str) -> String {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "data": {"k": data},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &cm).await.unwrap();
    created.metadata.resource_version.unwrap()
}

async fn relabel(api: &Api<ConfigMap>, name: &str, app: &str) -> String {
    patch(api, name, json!({"metadata": {"labels": {"app": app}}})).await
}

async fn patch(api: &Api<ConfigMap>, name: &str, patch: serde_json::Value) -> String {
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    patched.metadata.resource_version.unwrap()
}

/// Type, name and resourceVersion of each event.
fn summary(event: WatchEvent<ConfigMap>) -> (&'static str, String, String) {
    let (kind, cm) = match event {
        WatchEvent::Added(cm) => ("ADDED", cm),
        WatchEvent::Modified(cm) => ("MODIFIED", cm),
        WatchEvent::Deleted(cm) => ("DELETED", cm),
        other => panic!("unexpected {other:?}"),
    };
    (
        kind,
        cm.metadata.name.unwrap(),
        cm.metadata.resource_version.unwrap(),
    )
}

/// The next event of `watch`, summarized.
async fn next<S>(watch: &mut S, what: &str) -> (&'static str, String, String)
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    let event = tokio::time::timeout(WAIT, watch.try_next())
        .await
        .unwrap_or_else(|_| panic!("{what} went quiet"))
        .unwrap()
        .expect("the watch ended");
    summary(event)
}

#[tokio::test]
async fn selected_watches_see_objects_enter_and_leave_the_selection() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let start = create(&api, "before", "web", "0").await;
    let params = WatchParams::default()
        .labels("app=web")
        .fields("metadata.name!=ignored");
    let mut selected = api.watch(&params, &start).await.unwrap().boxed();
    let mut everything = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();

    let mut want = Vec::new();
    let mut all = Vec::new();
    let rv = create(&api, "a", "web", "1").await;
    want.push(("ADDED", "a".to_owned(), rv.clone()));
    all.push(("ADDED", "a".to_owned(), rv));
    let rv = create(&api, "other", "db", "1").await;
    all.push(("ADDED", "other".to_owned(), rv));
    let rv = create(&api, "ignored", "web", "1").await;
    all.push(("ADDED", "ignored".to_owned(), rv));
    let rv = relabel(&api, "a", "db").await;
    want.push(("DELETED", "a".to_owned(), rv.clone()));
    all.push(("MODIFIED", "a".to_owned(), rv));
    let rv = relabel(&api, "other", "web").await;
    want.push(("ADDED", "other".to_owned(), rv.clone()));
    all.push(("MODIFIED", "other".to_owned(), rv));
    let rv = patch(&api, "other", json!({"data": {"k": "2"}})).await;
    want.push(("MODIFIED", "other".to_owned(), rv.clone()));
    all.push(("MODIFIED", "other".to_owned(), rv));
    api.delete("other", &DeleteParams::default()).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let last = create(&api, "last", "web", "1").await;

    let mut got = Vec::new();
    while got.last().map(|(_, _, rv): &(_, _, String)| rv) != Some(&last) {
        got.push(next(&mut selected, "the selected watch").await);
    }
    // Deletions carry the revision of the delete, unknown to the client.
    let deleted = got.remove(got.len() - 2);
    assert_eq!((deleted.0, deleted.1.as_str()), ("DELETED", "other"));
    assert!(deleted.2.parse::<u64>().unwrap() > want.last().unwrap().2.parse().unwrap());
    want.push(("ADDED", "last".to_owned(), last.clone()));
    assert_eq!(got, want);

    let mut seen = Vec::new();
    while seen.len() < all.len() {
        seen.push(next(&mut everything, "the unselected watch").await);
    }
    assert_eq!(seen, all);
}
