//! The built-in OCI registry, driven over HTTPS with a plain HTTP client
//! the way registry clients speak to it: push a real component (blobs,
//! chunked and monolithic uploads, a manifest by tag), pull it back, and
//! the errors a client must be able to tell apart.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Digest as _;
use skiff_control::apiserver::{ApiServer, Config};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// A response: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The first OCI error code of the body.
    fn error_code(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        value["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no OCI error code in {value}"))
            .to_owned()
    }
}

/// An HTTPS client for one server, trusting the cluster CA.
struct Registry {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Registry {
    fn new(addr: SocketAddr, data_dir: &std::path::Path) -> Registry {
        let ca = std::fs::read(data_dir.join("pki/ca.crt")).expect("the CA certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
            roots.add(cert.expect("a PEM certificate")).expect("a CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Registry {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let stream = self.tls.connect(name, tcp).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            let driver = tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", self.addr.to_string());
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::from(body))).unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            driver.abort();
            Answer {
                status,
                headers,
                body: body.to_vec(),
            }
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 60 s"))
    }
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn admin_token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn node_token(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("node-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The path part of a `Location` header (absolute or relative).
fn location_path(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => panic!("unexpected Location {location:?}"),
    }
}

/// A wasm artifact manifest for `component` and `config`.
fn manifest(config: &[u8], component: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": digest_of(component), "size": component.len()}],
    }))
    .unwrap()
}

/// Pushes `component` to `name:tag` (config monolithic, component in two
/// chunks) and returns the manifest's digest.
async fn push(registry: &Registry, token: &str, name: &str, tag: &str, component: &[u8]) -> String {
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec();
    let config_digest = digest_of(&config);
    let answer = registry
        .send(
            Method::POST,
            &format!("/v2/{name}/blobs/uploads/?digest={config_digest}"),
            Some(token),
            &[("content-type", "application/octet-stream")],
            config.clone(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "monolithic upload");
    assert_eq!(answer.header("docker-content-digest"), config_digest);

    let start = registry
        .send(
            Method::POST,
            &format!("/v2/{name}/blobs/uploads/"),
            Some(token),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(start.status, StatusCode::ACCEPTED, "upload session");
    let mut location = location_path(start.header("location"));
    let half = component.len() / 2;
    for (offset, chunk) in [(0, &component[..half]), (half, &component[half..])] {
        let range = format!("{offset}-{}", offset + chunk.len() - 1);
        let patch = registry
            .send(
                Method::PATCH,
                &location,
                Some(token),
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-range", &range),
                ],
                chunk.to_vec(),
            )
            .await;
        assert_eq!(patch.status, StatusCode::ACCEPTED, "chunk at {offset}");
        assert_eq!(
            patch.header("range"),
            format!("0-{}", offset + chunk.len() - 1)
        );
        location = location_path(patch.header("location"));
    }
    let digest = digest_of(component);
    let finish = registry
        .send(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            Some(token),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(finish.status, StatusCode::CREATED, "finishing the upload");
    assert_eq!(finish.header("docker-content-digest"), digest);

    let manifest = manifest(&config, component);
    let put = registry
        .send(
            Method::PUT,
            &format!("/v2/{name}/manifests/{tag}"),
            Some(token),
            &[("content-type", OCI_MANIFEST)],
            manifest.clone(),
        )
        .await;
    assert_eq!(
        put.status,
        StatusCode::CREATED,
        "manifest push: {}",
        String::from_utf8_lossy(&put.body)
    );
    assert_eq!(put.header("docker-content-digest"), digest_of(&manifest));
    digest_of(&manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_a_component_and_pull_it_back() {
    let cluster = support::Cluster::start().await;
    let dir = cluster.dir.path();
    let registry = Registry::new(cluster.server.addr(), dir);
    let admin = admin_token(dir);
    let node = node_token(dir);
    let component = skiff_guests::bytes(skiff_guests::HELLO);

    let base = registry
        .send(Method::GET, "/v2/", Some(&node), &[], Vec::new())
        .await;
    assert_eq!(base.status, StatusCode::OK);
    assert_eq!(base.body, b"{}");

    let manifest_digest = push(&registry, &admin, "team/hello", "v1", &component).await;

    // A node pulls: the manifest by tag and by digest, then the layer.
    for reference in ["v1", manifest_digest.as_str()] {
        let got = registry
            .send(
                Method::GET,
                &format!("/v2/team/hello/manifests/{reference}"),
                Some(&node),
                &[("accept", OCI_MANIFEST)],
                Vec::new(),
            )
            .await;
        assert_eq!(got.status, StatusCode::OK, "manifest {reference}");
        assert_eq!(got.header("content-type"), OCI_MANIFEST);
        assert_eq!(got.header("docker-content-digest"), manifest_digest);
        assert_eq!(digest_of(&got.body), manifest_digest);
        let head = registry
            .send(
                Method::HEAD,
                &format!("/v2/team/hello/manifests/{reference}"),
                Some(&node),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("docker-content-digest"), manifest_digest);
        assert_eq!(head.header("content-length"), got.body.len().to_string());
    }
    let layer_digest = digest_of(&component);
    let head = registry
        .send(
            Method::HEAD,
            &format!("/v2/team/hello/blobs/{layer_digest}"),
            Some(&node),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), component.len().to_string());
    let blob = registry
        .send(
            Method::GET,
            &format!("/v2/team/hello/blobs/{layer_digest}"),
            Some(&node),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.header("docker-content-digest"), layer_digest);
    assert!(
        blob.body == component,
        "the pulled component differs from the pushed one"
    );

    let tags = registry
        .send(
            Method::GET,
            "/v2/team/hello/tags/list",
            Some(&node),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(tags.status, StatusCode::OK);
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"name": "team/hello", "tags": ["v1"]})
    );

    // Nodes pull; they do not push.
    let denied = registry
        .send(
            Method::POST,
            "/v2/team/hello/blobs/uploads/",
            Some(&node),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.error_code(), "DENIED");

    // Deleting the manifest removes its tag.
    let deleted = registry
        .send(
            Method::DELETE,
            &format!("/v2/team/hello/manifests/{manifest_digest}"),
            Some(&admin),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    let gone = registry
        .send(
            Method::GET,
            "/v2/team/hello/manifests/v1",
            Some(&node),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_the_wrong_digest_is_rejected() {
    let cluster = support::Cluster::start().await;
    let dir = cluster.dir.path();
    let registry = Registry::new(cluster.server.addr(), dir);
    let admin = admin_token(dir);
    let component = skiff_guests::bytes(skiff_guests::HELLO);
    let wrong = digest_of(b"something else");

    // Monolithic.
    let answer = registry
        .send(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={wrong}"),
            Some(&admin),
            &[],
            component.clone(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "DIGEST_INVALID");

    // Session: PATCH then PUT with a digest that does not match.
    let start = registry
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            Some(&admin),
            &[],
            Vec::new(),
        )
        .await;
    let location = location_path(start.header("location"));
    let patch = registry
        .send(
            Method::PATCH,
            &location,
            Some(&admin),
            &[],
            component.clone(),
        )
        .await;
    assert_eq!(patch.status, StatusCode::ACCEPTED);
    let finish = registry
        .send(
            Method::PUT,
            &format!("{location}?digest={wrong}"),
            Some(&admin),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(finish.status, StatusCode::BAD_REQUEST);
    assert_eq!(finish.error_code(), "DIGEST_INVALID");

    // Neither digest was stored.
    for digest in [wrong, digest_of(&component)] {
        let head = registry
            .send(
                Method::GET,
                &format!("/v2/app/blobs/{digest}"),
                Some(&admin),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(head.status, StatusCode::NOT_FOUND, "{digest}");
        assert_eq!(head.error_code(), "BLOB_UNKNOWN");
    }

    // A manifest naming a blob that was never pushed is refused.
    let manifest = manifest(b"{}", &component);
    let put = registry
        .send(
            Method::PUT,
            "/v2/app/manifests/v1",
            Some(&admin),
            &[("content-type", OCI_MANIFEST)],
            manifest,
        )
        .await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    assert_eq!(put.error_code(), "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401() {
    let cluster = support::Cluster::start().await;
    let registry = Registry::new(cluster.server.addr(), cluster.dir.path());
    for token in [None, Some("not-a-token")] {
        for (method, path) in [
            (Method::GET, "/v2/"),
            (Method::GET, "/v2/app/manifests/v1"),
            (Method::POST, "/v2/app/blobs/uploads/"),
        ] {
            let answer = registry
                .send(method.clone(), path, token, &[], Vec::new())
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(answer.error_code(), "UNAUTHORIZED");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_clients_log_in_through_the_token_endpoint() {
    use base64::Engine;
    let cluster = support::Cluster::start().await;
    let dir = cluster.dir.path();
    let registry = Registry::new(cluster.server.addr(), dir);
    let admin = admin_token(dir);

    let challenge = registry
        .send(Method::GET, "/v2/", None, &[], Vec::new())
        .await;
    assert_eq!(challenge.status, StatusCode::UNAUTHORIZED);
    let realm = format!("https://{}/v2/token", cluster.server.addr());
    assert!(
        challenge
            .header("www-authenticate")
            .starts_with(&format!("Bearer realm=\"{realm}\"")),
        "{:?}",
        challenge.header("www-authenticate")
    );

    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("skiff:{password}"))
        )
    };
    let login = registry
        .send(
            Method::GET,
            "/v2/token?service=skiff&scope=repository:hello:pull,push",
            None,
            &[("authorization", &basic(&admin))],
            Vec::new(),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&login.body).unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    let base = registry
        .send(Method::GET, "/v2/", Some(&token), &[], Vec::new())
        .await;
    assert_eq!(base.status, StatusCode::OK);

    for authorization in [basic("wrong"), String::new()] {
        let headers: Vec<(&str, &str)> = if authorization.is_empty() {
            Vec::new()
        } else {
            vec![("authorization", authorization.as_str())]
        };
        let refused = registry
            .send(Method::GET, "/v2/token", None, &headers, Vec::new())
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.error_code(), "UNAUTHORIZED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_manifests_and_blobs_are_404_with_oci_codes() {
    let cluster = support::Cluster::start().await;
    let dir = cluster.dir.path();
    let registry = Registry::new(cluster.server.addr(), dir);
    let admin = admin_token(dir);
    let component = skiff_guests::bytes(skiff_guests::HELLO);
    push(&registry, &admin, "hello", "v1", &component).await;

    let cases = [
        ("/v2/hello/manifests/v2".to_owned(), "MANIFEST_UNKNOWN"),
        (
            format!("/v2/hello/manifests/{}", digest_of(b"nothing")),
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/nothing/manifests/v1".to_owned(), "NAME_UNKNOWN"),
        ("/v2/nothing/tags/list".to_owned(), "NAME_UNKNOWN"),
        (
            format!("/v2/hello/blobs/{}", digest_of(b"nothing")),
            "BLOB_UNKNOWN",
        ),
    ];
    for (path, code) in cases {
        let answer = registry
            .send(Method::GET, &path, Some(&admin), &[], Vec::new())
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.error_code(), code, "{path}");
    }
    // The Kubernetes API beside it is untouched.
    let version = registry
        .send(Method::GET, "/version", None, &[], Vec::new())
        .await;
    assert_eq!(version.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let component = skiff_guests::bytes(skiff_guests::HELLO);
    let server = ApiServer::start(Config::new(dir.path(), listen))
        .await
        .unwrap();
    let admin = admin_token(dir.path());
    let digest = push(
        &Registry::new(server.addr(), dir.path()),
        &admin,
        "hello",
        "v1",
        &component,
    )
    .await;
    server.shutdown(Duration::from_secs(5)).await;

    let server = ApiServer::start(Config::new(dir.path(), listen))
        .await
        .unwrap();
    let registry = Registry::new(server.addr(), dir.path());
    let got = registry
        .send(
            Method::GET,
            "/v2/hello/manifests/v1",
            Some(&admin),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("docker-content-digest"), digest);
    assert!(
        dir.path()
            .join("registry/blobs/sha256")
            .join(digest_of(&component).trim_start_matches("sha256:"))
            .is_file(),
        "blobs are stored by digest under the data directory"
    );
    server.shutdown(Duration::from_secs(5)).await;
}
