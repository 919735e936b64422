//! The QUIC mesh between nodes, end to end on loopback: real components
//! from `skiff-guests` behind one mesh, requests sent from another, with
//! node certificates made here by a test CA.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use skiff_node::overlay::identity::MeshIdentity;
use skiff_node::overlay::mesh::{CONNECT_TIMEOUT, Mesh, MeshError, Peer, Target};
use skiff_node::overlay::proxy::Deliver;
use skiff_runtime::{Component, Runtime, RuntimeConfig, Sandbox};

/// Fails the test, naming what probably hung, if `test` takes longer than
/// `secs`.
async fn within<T>(secs: u64, what: &str, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

/// Polls `check` until it holds; panics naming `what` after 20 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    within(20, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

// ----- certificates -----

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A node identity as the cluster CA issues it: CN `system:node:NAME`,
    /// DNS SAN `NAME`, server and client auth.
    fn node(&self, name: &str) -> MeshIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        MeshIdentity {
            node: name.to_owned(),
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            ca_pem: self.pem.clone(),
        }
    }
}

// ----- pods -----

struct Guests {
    hello: Component,
    echo: Component,
    http_test: Component,
}

/// The guest components, compiled once for all tests of this binary.
fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let load = |path: &str| runtime.load_file(path).expect("guest loads").0;
        Guests {
            hello: load(skiff_guests::HELLO),
            echo: load(skiff_guests::ECHO),
            http_test: load(skiff_guests::HTTP_TEST),
        }
    })
}

/// The pods of one test node: `(namespace, pod, port)` → handler.
#[derive(Default)]
struct Pods(HashMap<(String, String, u16), (Component, Sandbox)>);

impl Pods {
    fn with(mut self, pod: &str, port: u16, component: &Component) -> Pods {
        let sandbox = Sandbox::default().env("POD_NAME", pod);
        self.0.insert(
            ("default".into(), pod.into(), port),
            (component.clone(), sandbox),
        );
        self
    }

    /// The usual pods of the serving node.
    fn standard() -> Pods {
        let g = guests();
        Pods::default()
            .with("hello-1", 8080, &g.hello)
            .with("echo-1", 8080, &g.echo)
            .with("test-1", 8080, &g.http_test)
    }
}

impl Deliver for Pods {
    fn handler(&self, namespace: &str, pod: &str, port: u16) -> Option<(Component, Sandbox)> {
        self.0
            .get(&(namespace.to_owned(), pod.to_owned(), port))
            .cloned()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(identity: MeshIdentity, pods: Pods) -> Arc<Mesh> {
    Mesh::start(loopback(), identity, Arc::new(pods))
        .await
        .expect("mesh starts")
}

fn peer(mesh: &Mesh, node: &str) -> Peer {
    Peer {
        node: node.into(),
        addr: mesh.local_addr(),
    }
}

fn target(pod: &str) -> Target {
    Target {
        namespace: "default".into(),
        pod: pod.into(),
        port: 8080,
    }
}

fn get(path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(path)
        .header("host", "web.default")
        .body(Empty::new())
        .unwrap()
}

async fn text(response: hyper::Response<skiff_runtime::ResponseBody>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body arrives whole")
        .to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    )
}

/// Two nodes of one cluster: `a` sends, `b` runs the standard pods.
async fn pair() -> (Ca, Arc<Mesh>, Arc<Mesh>) {
    let ca = Ca::new("cluster-ca");
    let a = start(ca.node("node-a"), Pods::default()).await;
    let b = start(ca.node("node-b"), Pods::standard()).await;
    (ca, a, b)
}

#[tokio::test]
async fn requests_cross_the_mesh_and_bodies_stream_both_ways() {
    within(180, "a request across the mesh", async {
        let (_ca, a, b) = pair().await;
        let to_b = peer(&b, "node-b");

        let response = a.send(&to_b, &target("hello-1"), get("/")).await.unwrap();
        assert_eq!(text(response).await, (200, "Hello from hello-1!\n".into()));

        // 8 MiB in 128 chunks, produced as they are sent (never one buffer
        // on the sending side).
        const CHUNK: usize = 64 * 1024;
        let chunk = |i: usize| {
            let byte = b'a' + (i % 26) as u8;
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![byte; CHUNK])))
        };
        let body = StreamBody::new(futures::stream::iter((0..128).map(chunk)));
        let request = hyper::Request::post("/upload?size=8MiB")
            .header("host", "echo.default")
            .header("x-test", "yes")
            .body(body)
            .unwrap();
        let response = a.send(&to_b, &target("echo-1"), request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let (_, json) = text(response).await;
        let json: serde_json::Value = serde_json::from_str(&json).expect("echo answers JSON");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/upload?size=8MiB");
        assert_eq!(json["headers"]["x-test"], "yes");
        let echoed = json["body"].as_str().expect("body echoed");
        let expected: String = (0..128)
            .map(|i| char::from(b'a' + (i % 26) as u8).to_string().repeat(CHUNK))
            .collect();
        assert_eq!(echoed.len(), 8 << 20);
        assert!(echoed == expected, "the 8 MiB body came back altered");

        let (am, bm) = (a.metrics(), b.metrics());
        assert_eq!(am.connections_opened, 1);
        assert_eq!(am.streams_sent, 2);
        assert_eq!(bm.streams_served, 2);
        assert_eq!(bm.connections_opened, 0, "b only served");
    })
    .await;
}

#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    within(180, "50 concurrent requests", async {
        let (_ca, a, b) = pair().await;
        let to_b = peer(&b, "node-b");
        let requests = (0..50).map(|i| {
            let a = a.clone();
            let to_b = to_b.clone();
            async move {
                let request = hyper::Request::post(format!("/n/{i}"))
                    .header("host", "echo.default")
                    .body(Full::new(Bytes::from(format!("request {i}"))))
                    .unwrap();
                let response = a.send(&to_b, &target("echo-1"), request).await.unwrap();
                let (status, body) = text(response).await;
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                (status, json["path"].clone(), json["body"].clone(), i)
            }
        });
        for (status, path, body, i) in futures::future::join_all(requests).await {
            assert_eq!(status, 200);
            assert_eq!(path, format!("/n/{i}"));
            assert_eq!(body, format!("request {i}"));
        }
        assert_eq!(a.metrics().connections_opened, 1);
        assert_eq!(a.metrics().streams_sent, 50);
        assert_eq!(b.metrics().streams_served, 50);
    })
    .await;
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    within(120, "handshakes with a foreign CA", async {
        let (_ca, a, b) = pair().await;
        let foreign = Ca::new("another-ca");
        let c = start(foreign.node("node-c"), Pods::standard()).await;

        // A foreign client to a good server.
        let error = c
            .send(&peer(&b, "node-b"), &target("hello-1"), get("/"))
            .await
            .expect_err("b must refuse c's certificate");
        assert!(
            matches!(error, MeshError::Unreachable { .. }),
            "unexpected {error:?}"
        );
        assert!(error.retryable());
        assert_eq!(
            c.metrics().connections_refused,
            1,
            "c counts b's refusal once"
        );
        eventually("b counts the refusal", || {
            b.metrics().connections_refused >= 1
        })
        .await;
        assert_eq!(b.metrics().streams_served, 0);

        // A good client to a foreign server.
        let error = a
            .send(&peer(&c, "node-c"), &target("hello-1"), get("/"))
            .await
            .expect_err("a must refuse c's certificate");
        assert!(
            matches!(error, MeshError::Unreachable { .. }),
            "unexpected {error:?}"
        );
        assert!(a.metrics().connections_refused >= 1);
        assert_eq!(a.metrics().connections_opened, 0);
        assert_eq!(c.metrics().streams_served, 0);

        // A good certificate for the wrong name: b is not node-x.
        let error = a
            .send(&peer(&b, "node-x"), &target("hello-1"), get("/"))
            .await
            .expect_err("a must not accept b as node-x");
        assert!(matches!(error, MeshError::Unreachable { .. }));

        // The good pair still works.
        let response = a
            .send(&peer(&b, "node-b"), &target("hello-1"), get("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn an_unknown_pod_is_no_such_pod_and_a_pods_404_is_a_response() {
    within(120, "unknown pod", async {
        let (_ca, a, b) = pair().await;
        let to_b = peer(&b, "node-b");

        let request = hyper::Request::post("/")
            .header("host", "web.default")
            .body(Full::new(Bytes::from_static(b"keep me")))
            .unwrap();
        let refused = a
            .try_send(&to_b, &target("nobody"), request)
            .await
            .expect_err("b runs no pod called nobody");
        assert!(
            matches!(&refused.error, MeshError::NoSuchPod { node, pod, .. } if node == "node-b" && pod == "nobody"),
            "unexpected {:?}",
            refused.error
        );
        assert!(refused.error.retryable());
        // The request comes back untouched for another endpoint.
        let request = refused.request.expect("request handed back");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "keep me");

        // A known pod on another port is no such pod either.
        let wrong_port = Target {
            port: 9090,
            ..target("hello-1")
        };
        let error = a.send(&to_b, &wrong_port, get("/")).await.unwrap_err();
        assert!(matches!(error, MeshError::NoSuchPod { port: 9090, .. }));
        assert_eq!(b.metrics().streams_served, 0);

        // A pod's own 404 is a response like any other.
        let response = a
            .send(&to_b, &target("test-1"), get("/no/such/path"))
            .await
            .expect("a 404 from the pod is not a mesh error");
        assert_eq!(text(response).await, (404, "not found".into()));
        assert_eq!(b.metrics().streams_served, 1);
    })
    .await;
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    within(120, "reconnecting to a restarted peer", async {
        let (ca, a, b) = pair().await;
        let addr = b.local_addr();
        let to_b = peer(&b, "node-b");
        let response = a.send(&to_b, &target("hello-1"), get("/")).await.unwrap();
        assert_eq!(response.status(), 200);

        b.close();
        b.wait_idle().await;
        drop(b);
        // The port is free once the old endpoint's driver has stopped.
        let b = loop {
            match Mesh::start(addr, ca.node("node-b"), Arc::new(Pods::standard())).await {
                Ok(mesh) => break mesh,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(b.local_addr(), addr);

        let response = a
            .send(&to_b, &target("hello-1"), get("/"))
            .await
            .expect("the next request reaches the restarted node");
        assert_eq!(text(response).await, (200, "Hello from hello-1!\n".into()));
        assert_eq!(a.metrics().connections_opened, 2);
        assert_eq!(b.metrics().streams_served, 1);
    })
    .await;
}

#[tokio::test]
async fn a_dead_peer_is_unreachable_after_the_connect_timeout() {
    // Failure bound: the connect timeout plus slack for a loaded machine.
    let bound = CONNECT_TIMEOUT.as_secs() + 15;
    within(bound, "sending to a dead peer", async {
        let ca = Ca::new("cluster-ca");
        let a = start(ca.node("node-a"), Pods::default()).await;
        // A port nobody listens on.
        let addr = std::net::UdpSocket::bind(loopback())
            .unwrap()
            .local_addr()
            .unwrap();
        let dead = Peer {
            node: "node-d".into(),
            addr,
        };
        // Two requests at once share the one failed attempt.
        let hello = target("hello-1");
        let (one, two) = tokio::join!(
            a.send(&dead, &hello, get("/")),
            a.send(&dead, &hello, get("/")),
        );
        for error in [one.unwrap_err(), two.unwrap_err()] {
            assert!(
                matches!(&error, MeshError::Unreachable { node, .. } if node == "node-d"),
                "unexpected {error:?}"
            );
            assert!(error.retryable());
        }
        assert_eq!(a.metrics().connections_opened, 0);
        assert_eq!(
            a.metrics().connections_refused,
            0,
            "silence is not a refusal"
        );
    })
    .await;
}

#[tokio::test]
async fn a_closed_mesh_sends_nothing() {
    within(60, "a closed mesh", async {
        let (_ca, a, b) = pair().await;
        a.close();
        let error = a
            .send(&peer(&b, "node-b"), &target("hello-1"), get("/"))
            .await
            .unwrap_err();
        assert!(matches!(error, MeshError::Unreachable { .. }));
    })
    .await;
}

// ----- the wire, byte by byte -----

/// A raw QUIC client with `identity`, connected to `server` as `node`.
async fn raw_connection(identity: &MeshIdentity, server: &Mesh, node: &str) -> quinn::Connection {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tls.alpn_protocols = vec![b"skiff-mesh/1".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
        .connect(server.local_addr(), node)
        .unwrap()
        .await
        .expect("handshake")
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Sends `bytes` on a new stream, finishes it, and reads everything back
/// (or the error that ended the stream).
async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    // The server may reset the stream before reading it all.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_documented_wire_format_works_and_garbage_only_breaks_its_stream() {
    within(120, "raw streams", async {
        let (ca, a, b) = pair().await;
        let identity = ca.node("node-raw");
        let connection = raw_connection(&identity, &b, "node-b").await;

        // A request frame written by hand from the module's documentation.
        let mut request = vec![0x01];
        field(&mut request, b"default");
        field(&mut request, b"hello-1");
        request.extend_from_slice(&8080u16.to_be_bytes());
        field(&mut request, b"GET");
        field(&mut request, b"/");
        request.extend_from_slice(&1u16.to_be_bytes());
        field(&mut request, b"host");
        field(&mut request, b"hello.default");
        let reply = exchange(&connection, &frame(&request)).await.unwrap();
        // Verdict: accepted.
        assert_eq!(reply[..5], frame(&[0x02])[..]);
        // Response frame: kind, status 200, headers; then the raw body.
        let len = u32::from_be_bytes(reply[5..9].try_into().unwrap()) as usize;
        let response = &reply[9..9 + len];
        assert_eq!(response[0], 0x04);
        assert_eq!(u16::from_be_bytes([response[1], response[2]]), 200);
        assert_eq!(&reply[9 + len..], b"Hello from hello-1!\n");

        // Garbage: an oversized length, a junk frame, a truncated frame,
        // a response frame where a request belongs, an empty stream.
        let mut truncated = frame(&request);
        truncated.truncate(truncated.len() - 3);
        let mut wrong_kind = request.clone();
        wrong_kind[0] = 0x04;
        for garbage in [
            vec![0xff, 0xff, 0xff, 0xff, 0, 0],
            frame(&[0x01, 0xff, 0xff, 0x00]),
            truncated,
            frame(&wrong_kind),
            Vec::new(),
        ] {
            let result = exchange(&connection, &garbage).await;
            assert!(result.is_err(), "{garbage:?} was answered: {result:?}");
        }
        // ... broke only their own streams: the connection and the
        // endpoint carry on.
        assert!(connection.close_reason().is_none());
        let reply = exchange(&connection, &frame(&request)).await.unwrap();
        assert!(reply.ends_with(b"Hello from hello-1!\n"));
        let response = a
            .send(&peer(&b, "node-b"), &target("hello-1"), get("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(b.metrics().streams_served, 3);
    })
    .await;
}

#[tokio::test]
async fn a_request_body_that_fails_midway_is_not_passed_off_as_complete() {
    within(120, "a failing request body", async {
        let (_ca, a, b) = pair().await;
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"first half, "))),
            Err(std::io::Error::other("the client went away")),
        ];
        let request = hyper::Request::post("/")
            .header("host", "echo.default")
            .body(StreamBody::new(futures::stream::iter(chunks)))
            .unwrap();
        match a
            .send(&peer(&b, "node-b"), &target("echo-1"), request)
            .await
        {
            // The pod saw its body fail and answered with an error.
            Ok(response) => {
                let (status, body) = text(response).await;
                assert!(
                    status >= 500 || !body.contains("first half, "),
                    "a truncated body was echoed as complete: {status} {body}"
                );
            }
            Err(error) => assert!(!error.retryable(), "{error:?}"),
        }
        // The connection survives a broken stream.
        let response = a
            .send(&peer(&b, "node-b"), &target("hello-1"), get("/"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(a.metrics().connections_opened, 1);
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_crashed_and_restarted_is_reconnected() {
    within(60, "reconnecting to a crashed peer", async {
        let ca = Ca::new("cluster-ca");
        let a = start(ca.node("node-a"), Pods::default()).await;
        // b runs on its own runtime, which the "crash" drops: its endpoint
        // vanishes without closing its connections.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
        // The restarted node keeps its identity (cached on disk).
        let identity = ca.node("node-b");
        let restarted = identity.clone();
        let crashed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let b = runtime.block_on(async {
                Mesh::start(loopback(), identity, Arc::new(Pods::standard()))
                    .await
                    .unwrap()
            });
            addr_tx.send(b.local_addr()).unwrap();
            let _ = crash_rx.recv();
            drop(runtime);
            drop(b);
        });
        let addr = tokio::task::spawn_blocking(move || addr_rx.recv().unwrap())
            .await
            .unwrap();
        let to_b = Peer {
            node: "node-b".into(),
            addr,
        };
        let response = a.send(&to_b, &target("hello-1"), get("/")).await.unwrap();
        assert_eq!(response.status(), 200);

        crash_tx.send(()).unwrap();
        tokio::task::spawn_blocking(move || crashed.join().unwrap())
            .await
            .unwrap();
        let b = loop {
            match Mesh::start(addr, restarted.clone(), Arc::new(Pods::standard())).await {
                Ok(mesh) => break mesh,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };

        // a's connection looks alive; the restarted b answers it with a
        // stateless reset that a trusts, and a reconnects at once.
        let response = a
            .send(&to_b, &target("hello-1"), get("/"))
            .await
            .expect("the next request reaches the restarted node");
        assert_eq!(text(response).await, (200, "Hello from hello-1!\n".into()));
        assert_eq!(a.metrics().connections_opened, 2);
        assert_eq!(b.metrics().streams_served, 1);
    })
    .await;
}
