//! What a guest can and cannot see: environment, files, network.

mod common;

use std::time::Duration;

use common::{get, load, runtime, within};
use http_body_util::Full;
use hyper::body::Bytes;
use skiff_runtime::{AllowList, Log, Sandbox};

async fn run_misbehave(args: &[&str], sandbox: Sandbox) -> (i32, String) {
    let runtime = runtime();
    let guest = load(&runtime, skiff_guests::MISBEHAVE);
    let log = Log::default();
    let args: Vec<&str> = std::iter::once("misbehave")
        .chain(args.iter().copied())
        .collect();
    let status = guest
        .run(&sandbox.args(args).log(log.clone()))
        .await
        .expect("runs");
    (status.code, log.text())
}

#[tokio::test]
async fn the_guest_sees_only_the_environment_it_is_given() {
    within(60, "env", async {
        // The host has variables (PATH, HOME, ...) the guest must not see.
        assert!(std::env::var("PATH").is_ok());
        let (code, out) = run_misbehave(&["env"], Sandbox::default().env("ONLY", "this")).await;
        assert_eq!((code, out.as_str()), (0, "ONLY=this\n"));
        let (_, out) = run_misbehave(&["args", "a b", "c"], Sandbox::default()).await;
        assert_eq!(out, "misbehave\nargs\na b\nc\n");
    })
    .await;
}

#[tokio::test]
async fn no_host_files_without_a_preopen() {
    within(60, "no ambient files", async {
        let (code, out) = run_misbehave(&["ls", "/"], Sandbox::default()).await;
        assert_eq!(code, 1, "{out}");
        let (code, out) = run_misbehave(&["cat", "/etc/passwd"], Sandbox::default()).await;
        assert_eq!(code, 1, "{out}");
        assert!(!out.contains("root:"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn preopened_directories_are_read_only_or_writable_as_granted() {
    within(60, "preopens", async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.txt"), "from the host").unwrap();

        let ro = Sandbox::default().dir(dir.path(), "/data", true);
        let (code, out) = run_misbehave(&["cat", "/data/config.txt"], ro.clone()).await;
        assert_eq!((code, out.as_str()), (0, "from the host\n"));
        let (code, _) = run_misbehave(&["ls", "/data"], ro.clone()).await;
        assert_eq!(code, 0);
        let (code, out) = run_misbehave(&["write", "/data/new.txt", "x"], ro).await;
        assert_eq!(code, 1, "a read-only preopen refuses writes: {out}");
        assert!(!dir.path().join("new.txt").exists());

        let rw = Sandbox::default().dir(dir.path(), "/data", false);
        let (code, out) = run_misbehave(
            &["write", "/data/new.txt", "written by the guest"],
            rw.clone(),
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("new.txt")).unwrap(),
            "written by the guest"
        );
        // `..` does not escape the preopen.
        let (code, _) = run_misbehave(&["cat", "/data/../etc/passwd"], rw).await;
        assert_eq!(code, 1);
    })
    .await;
}

/// A one-route HTTP server on loopback for outbound tests; returns its port.
async fn upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        // Bounded: this server answers at most 16 connections.
        for _ in 0..16 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        "upstream says hi",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allow_listed() {
    within(60, "outbound", async {
        let (port, server) = upstream().await;
        let runtime = runtime();
        let guest = load(&runtime, skiff_guests::HTTP_TEST);
        let path = format!("/fetch?url=http%3A%2F%2F127.0.0.1%3A{port}%2Fhello");

        let (status, body) = get(&guest, &path, &Sandbox::default()).await.unwrap();
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("denied"), "the guest reads why: {body}");

        let other_port = Sandbox::default().outbound(AllowList::new([format!(
            "127.0.0.1:{}",
            port.wrapping_add(1)
        )]));
        let (status, body) = get(&guest, &path, &other_port).await.unwrap();
        assert_eq!(status, 502, "{body}");

        let allowed = Sandbox::default().outbound(AllowList::new([format!("127.0.0.1:{port}")]));
        let (status, body) = get(&guest, &path, &allowed).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "upstream 200: upstream says hi")
        );
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn outbound_to_a_closed_port_is_an_error_not_a_hang() {
    within(60, "outbound refused", async {
        // Bind and drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let runtime = runtime();
        let guest = load(&runtime, skiff_guests::HTTP_TEST);
        let sandbox = Sandbox::default()
            .outbound(AllowList::new([format!("127.0.0.1:{port}")]))
            .limits(skiff_runtime::Limits {
                deadline: Some(Duration::from_secs(20)),
                ..Default::default()
            });
        let (status, body) = get(
            &guest,
            &format!("/fetch?url=http://127.0.0.1:{port}/"),
            &sandbox,
        )
        .await
        .unwrap();
        assert_eq!(status, 502, "{body}");
    })
    .await;
}

#[tokio::test]
async fn an_http_guest_reads_its_environment_and_logs_per_request() {
    within(60, "http env and log", async {
        let runtime = runtime();
        let guest = load(&runtime, skiff_guests::HTTP_TEST);
        let log = Log::default();
        let sandbox = Sandbox::default().env("COLOUR", "teal").log(log.clone());
        assert_eq!(
            get(&guest, "/env?name=COLOUR", &sandbox).await.unwrap(),
            (200, "teal".to_string())
        );
        assert_eq!(
            get(&guest, "/env?name=HOME", &sandbox).await.unwrap().0,
            404
        );
        assert_eq!(
            get(&guest, "/log?lines=3", &sandbox).await.unwrap(),
            (200, "logged 3 lines".to_string())
        );
        assert_eq!(
            log.text(),
            "request line 0\nrequest line 1\nrequest line 2\n"
        );
    })
    .await;
}
