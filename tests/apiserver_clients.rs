//! kube-rs and raw HTTP against a real `skiff server`: the client library
//! path, bad input, and durability across SIGKILL.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use support::Server;

async fn connect(server: &Server) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"},
    }))
    .unwrap()
}

#[tokio::test]
async fn kube_rs_creates_lists_watches_and_patches() {
    let server = Server::start();
    within(60, "kube-rs session", async {
        let client = connect(&server).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

        let created = cms.create(&PostParams::default(), &config_map("one", &[("app", "a")])).await.unwrap();
        let meta = &created.metadata;
        assert!(meta.uid.is_some() && meta.resource_version.is_some() && meta.creation_timestamp.is_some());
        cms.create(&PostParams::default(), &config_map("two", &[("app", "b")])).await.unwrap();

        let listed = cms.list(&ListParams::default().labels("app=a")).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0].metadata.name.as_deref(), Some("one"));

        // Paging: one per page, a continue token between.
        let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let token = page.metadata.continue_.clone().expect("a continue token");
        let next = cms.list(&ListParams::default().limit(1).continue_token(&token)).await.unwrap();
        assert_eq!(next.items.len(), 1);
        assert_ne!(next.items[0].metadata.name, page.items[0].metadata.name);

        // Watch from the list's resourceVersion sees exactly later changes.
        let rv = listed.metadata.resource_version.clone().unwrap();
        let mut events = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        cms.create(&PostParams::default(), &config_map("three", &[("app", "a")])).await.unwrap();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("three")),
            other => panic!("expected ADDED, got {other:?}"),
        }

        // The patch types.
        let merge = Patch::Merge(json!({"data": {"extra": "1"}}));
        let patched = cms.patch("one", &PatchParams::default(), &merge).await.unwrap();
        assert_eq!(patched.data.as_ref().unwrap()["extra"], "1");
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("one")),
            other => panic!("expected MODIFIED, got {other:?}"),
        }
        let strategic = Patch::Strategic(json!({"metadata": {"labels": {"tier": "x"}}}));
        let patched = cms.patch("one", &PatchParams::default(), &strategic).await.unwrap();
        assert_eq!(patched.metadata.labels.as_ref().unwrap()["tier"], "x");
        let apply = Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"a": "1"},
        }));
        let applied = cms.patch("applied", &PatchParams::apply("kube-test"), &apply).await.unwrap();
        assert_eq!(applied.data.as_ref().unwrap()["a"], "1");
        let managers: Vec<_> = applied
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
            .collect();
        assert!(managers.contains(&("kube-test".to_string(), "Apply".to_string())), "{managers:?}");

        // Typed objects come back defaulted.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "hello:v1"}]}},
            },
        }))
        .unwrap();
        let created = deployments.create(&PostParams::default(), &deployment).await.unwrap();
        let spec = created.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.revision_history_limit, Some(10));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(created.metadata.generation, Some(1));

        cms.delete("two", &DeleteParams::default()).await.unwrap();
        let err = cms.get("two").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 404), "{err:?}");
    })
    .await;
}

/// Sends a raw request; returns status and the parsed body.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = http_body_util_collect(response.into_body()).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn http_body_util_collect(body: kube::client::Body) -> Vec<u8> {
    use http_body_util::BodyExt;
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_never_breaks_the_server() {
    let server = Server::start();
    within(120, "bad input", async {
        let client = connect(&server).await;
        let cms = "/api/v1/namespaces/default/configmaps";
        let check = |(status, body): (u16, Value), code: u16, reason: &str| {
            assert_eq!(status, code, "{body}");
            assert_eq!(body["kind"], "Status", "{body}");
            assert_eq!(body["reason"], reason, "{body}");
            assert_eq!(body["code"], code, "{body}");
            body
        };
        check(raw(&client, "POST", cms, "application/json", b"{not json".to_vec()).await, 400, "BadRequest");
        check(raw(&client, "POST", cms, "application/yaml", b"a: [unclosed".to_vec()).await, 400, "BadRequest");
        check(raw(&client, "POST", cms, "application/vnd.kubernetes.protobuf", b"k8s\0\xff\xff".to_vec()).await, 400, "BadRequest");
        check(raw(&client, "POST", cms, "application/json", b"[1, 2]".to_vec()).await, 400, "BadRequest");
        check(raw(&client, "POST", cms, "text/html", b"<p>".to_vec()).await, 415, "UnsupportedMediaType");
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
        let body = check(raw(&client, "POST", cms, "application/json", wrong_kind.to_string().into_bytes()).await, 400, "BadRequest");
        assert!(body["message"].as_str().unwrap().contains("kind"), "{body}");

        let unknown = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "dta": {"a": "b"}});
        let strict = format!("{cms}?fieldValidation=Strict");
        let body = check(raw(&client, "POST", &strict, "application/json", unknown.to_string().into_bytes()).await, 400, "BadRequest");
        assert!(body["message"].as_str().unwrap().contains(r#"unknown field "dta""#), "{body}");

        let bad_name = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "labels": {"a/b/c": "x"}}});
        let body = check(raw(&client, "POST", cms, "application/json", bad_name.to_string().into_bytes()).await, 422, "Invalid");
        let fields: Vec<&str> = body["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&"metadata.name"), "{body}");
        assert!(fields.iter().any(|f| f.starts_with("metadata.labels")), "{body}");

        let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"a": "x".repeat(4 << 20)}});
        check(raw(&client, "POST", cms, "application/json", huge.to_string().into_bytes()).await, 413, "RequestEntityTooLarge");

        check(raw(&client, "GET", "/api/v1/namespaces/default/nothings", "application/json", vec![]).await, 404, "NotFound");
        check(raw(&client, "GET", &format!("{cms}/absent"), "application/json", vec![]).await, 404, "NotFound");
        check(raw(&client, "GET", &format!("{cms}?labelSelector=a%20in%20b"), "application/json", vec![]).await, 400, "BadRequest");
        check(raw(&client, "GET", &format!("{cms}?continue=garbage"), "application/json", vec![]).await, 400, "BadRequest");

        // Junk of every kind: always an answer, never a crash. Bounded.
        let content_types = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf", "application/merge-patch+json", ""];
        for i in 0..200u32 {
            let junk: Vec<u8> = (0..(i * 7 % 300)).map(|j| (j.wrapping_mul(31).wrapping_add(i * 17) % 256) as u8).collect();
            let ct = content_types[i as usize % content_types.len()];
            let (status, _) = raw(&client, if i % 2 == 0 { "POST" } else { "PUT" }, &format!("{cms}/junk"), ct, junk).await;
            assert!((400..500).contains(&status), "request {i} got {status}");
        }
        let (status, _) = raw(&client, "GET", "/healthz", "", vec![]).await;
        assert_eq!(status, 200);
    })
    .await;

    // A bad token.
    let out = server.kubectl(&["get", "configmaps", "--token", "not-the-token"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized")
            || String::from_utf8_lossy(&out.stderr).contains("credentials")
    );
}

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill() {
    let server = Server::start();
    let client = within(30, "client", connect(&server)).await;
    let acked = Arc::new(parking_lot_free::Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let cms: Api<ConfigMap> = Api::namespaced(client, "default");
            // Bounded: at most 500 writes per writer.
            for i in 0..500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("w{w}-{i}");
                match cms
                    .create(&PostParams::default(), &config_map(&name, &[]))
                    .await
                {
                    Ok(_) => acked.push(name),
                    Err(_) => break,
                }
            }
        }));
    }
    within(60, "200 acknowledged writes", async {
        while acked.len() < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let dir = server.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.take();
    let server = Server::start_in(dir);
    let client = within(30, "client after restart", connect(&server)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let present: std::collections::HashSet<String> =
        within(30, "list after restart", cms.list(&ListParams::default()))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|cm| cm.metadata.name)
            .collect();
    let missing: Vec<_> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {missing:?}",
        missing.len(),
        acked.len()
    );
}

/// A tiny shared list of acknowledged names.
mod parking_lot_free {
    #[derive(Default)]
    pub struct Acks(std::sync::Mutex<Vec<String>>);

    impl Acks {
        pub fn push(&self, name: String) {
            self.0.lock().unwrap().push(name);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }
}

#[tokio::test]
async fn watch_from_a_compacted_revision_gets_410() {
    let server = Server::start_with_args(&["--compaction-interval-secs", "1"]);
    within(60, "410", async {
        let client = connect(&server).await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        for i in 0..5 {
            cms.create(&PostParams::default(), &config_map(&format!("c{i}"), &[]))
                .await
                .unwrap();
        }
        // Two compaction ticks: the first records the revision, the second
        // compacts to it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut events = cms
            .watch(&WatchParams::default(), "1")
            .await
            .unwrap()
            .boxed();
        match events.next().await {
            Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
            Some(Err(kube::Error::Api(s))) => assert_eq!(s.code, 410, "{s:?}"),
            other => panic!("expected a 410 error event, got {other:?}"),
        }
    })
    .await;
}
