//! The event recorder against a real API server: publishing only queues,
//! the same event is counted rather than repeated (its bump never
//! overtaking its creation), and a server that does not answer makes the
//! recorder drop events, never wait.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, ListParams};
use skiff_control::controllers::SystemClock;
use skiff_control::controllers::events::Recorder;
use support::{Cluster, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some(format!("uid-{name}")),
        ..ObjectReference::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_counted_in_order() {
    let cluster = Cluster::start().await;
    let recorder = Recorder::new(cluster.client.clone(), "test", Arc::new(SystemClock));
    // Back to back: the bump is queued before the creation is written.
    for _ in 0..3 {
        recorder
            .normal(&pod("a"), "Pulled", "pulled the image")
            .await;
    }
    recorder.warning(&pod("b"), "Failed", "no room").await;
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let listed = eventually(WAIT, "both events, a's counted 3 times", || {
        let events = events.clone();
        async move {
            let items = events.list(&ListParams::default()).await.ok()?.items;
            let counted = items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Pulled") && e.count == Some(3));
            (counted && items.len() == 2).then_some(items)
        }
    })
    .await;
    let failed = listed
        .iter()
        .find(|e| e.involved_object.name.as_deref() == Some("b"))
        .expect("b's event");
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed.source.as_ref().unwrap().component.as_deref(),
        Some("test")
    );
    assert_eq!(recorder.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_makes_events_drop_not_wait() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let recorder = Recorder::new(client, "test", Arc::new(SystemClock));
    let published = 5_000;
    tokio::time::timeout(WAIT, async {
        for i in 0..published {
            recorder
                .normal(&pod(&format!("p{i}")), "Scheduled", "assigned")
                .await;
        }
    })
    .await
    .expect("publishing does not wait for the server");
    // At most 8 writers' queues (and the write each has in flight) hold
    // events; the rest are dropped.
    let dropped = recorder.dropped();
    assert!(
        dropped >= published - 8 * 129 && dropped < published,
        "dropped {dropped} of {published}"
    );
    held.abort();
}
