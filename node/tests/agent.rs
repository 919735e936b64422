//! The node agent as a library, against a real API server in this process:
//! init containers, probes, secrets, eviction, admission, and riding out a
//! control-plane outage.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use skiff_control::apiserver::{ApiServer, Config};
use skiff_node::agent::{Agent, AgentConfig};

/// Bound for anything the agent does (a first compile takes seconds).
const WAIT: Duration = Duration::from_secs(120);

struct Cluster {
    server: Option<ApiServer>,
    admin: kube::Client,
    dir: tempfile::TempDir,
    agent_dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = ApiServer::start(Config::new(dir.path(), listen))
            .await
            .unwrap();
        let admin = skiff_control::client::from_kubeconfig(server.kubeconfig())
            .await
            .unwrap();
        Cluster {
            server: Some(server),
            admin,
            dir,
            agent_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn agent_config(&self) -> AgentConfig {
        self.agent_config_via(self.server.as_ref().unwrap().addr())
    }

    /// An agent configuration reaching the API server at `addr`.
    fn agent_config_via(&self, addr: SocketAddr) -> AgentConfig {
        let token = std::fs::read_to_string(self.dir.path().join("node-token")).unwrap();
        let mut config = AgentConfig::new(
            &format!("https://{addr}"),
            &token,
            "n1",
            self.agent_dir.path(),
        );
        config.ca_file = Some(self.dir.path().join("pki").join("ca.crt"));
        config.dev_local_images = true;
        config.restart_backoff = Duration::from_millis(200);
        config.max_restart_backoff = Duration::from_secs(2);
        config.volume_refresh = Duration::from_millis(500);
        // No controllers run here: the node's pod addresses come from its
        // own range, and there is no mesh (one node).
        config.pod_cidr = Some("10.244.7.0/24".to_owned());
        config.mesh_listen = None;
        config
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.admin.clone())
    }

    async fn create(&self, kind: &str, object: Value) {
        let (group, version) = match kind {
            "Pod" | "Secret" | "ConfigMap" => ("", "v1"),
            other => panic!("unexpected kind {other}"),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let resource = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> =
            Api::default_namespaced_with(self.admin.clone(), &resource);
        let mut object = object;
        object["apiVersion"] = json!(version);
        object["kind"] = json!(kind);
        let object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
    }

    /// Polls pod `name` every 100 ms until `check` accepts it.
    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pod = self.pods().get_opt(name).await.ok().flatten();
            let value = serde_json::to_value(&pod).unwrap();
            if pod.is_some() && check(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {}",
                value["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn pod_object(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!("n1");
    json!({ "metadata": { "name": name }, "spec": spec })
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn ready(pod: &Value) -> Option<bool> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
}

async fn with_timeout<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .unwrap_or_else(|_| panic!("{what} deadlocked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_first_and_share_volumes() {
    with_timeout("init containers", async {
        let cluster = Cluster::start().await;
        let agent = Agent::start(cluster.agent_config()).await.unwrap();
        let image = skiff_guests::MISBEHAVE;
        cluster
            .create(
                "Pod",
                pod_object(
                    "init",
                    json!({
                        "restartPolicy": "Never",
                        "initContainers": [
                            { "name": "first", "image": image, "args": ["write", "/work/f", "from-init"],
                              "volumeMounts": [{ "name": "work", "mountPath": "/work" }] },
                        ],
                        "containers": [
                            { "name": "main", "image": image, "args": ["cat", "/work/f"],
                              "volumeMounts": [{ "name": "work", "mountPath": "/work", "readOnly": true }] },
                        ],
                        "volumes": [{ "name": "work", "emptyDir": {} }],
                    }),
                ),
            )
            .await;
        let pod = cluster
            .wait_pod("init", "init pod Succeeded", |p| phase(p) == "Succeeded")
            .await;
        let init = &pod["status"]["initContainerStatuses"][0];
        assert_eq!(init["state"]["terminated"]["reason"], "Completed");
        assert_eq!(init["ready"], true);
        let log = agent.logs("default", "init", "main", false).expect("main's log");
        assert_eq!(log.text(), "from-init\n");
        let conditions = pod["status"]["conditions"].as_array().unwrap();
        assert!(conditions.iter().any(|c| c["type"] == "Initialized" && c["status"] == "True"));
        agent.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_readiness_and_restarts() {
    with_timeout("probes", async {
        let cluster = Cluster::start().await;
        let agent = Agent::start(cluster.agent_config()).await.unwrap();
        let image = skiff_guests::HTTP_TEST;
        let probe = |path: &str| json!({ "httpGet": { "path": path, "port": 8080 }, "periodSeconds": 1, "failureThreshold": 1 });
        cluster
            .create(
                "Pod",
                pod_object(
                    "unready",
                    json!({ "containers": [{ "name": "web", "image": image, "readinessProbe": probe("/missing") }] }),
                ),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object(
                    "unlive",
                    json!({ "containers": [{ "name": "web", "image": image,
                        "readinessProbe": probe("/ok"), "livenessProbe": probe("/missing") }] }),
                ),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object(
                    "healthy",
                    json!({ "containers": [{ "name": "web", "image": image,
                        "env": [{ "name": "MODE", "value": "calm" }],
                        "readinessProbe": probe("/ok"), "livenessProbe": probe("/ok") }] }),
                ),
            )
            .await;
        cluster
            .wait_pod("healthy", "healthy Ready", |p| ready(p) == Some(true))
            .await;
        // In-process access to the pod, as the overlay will use it.
        let handle = agent.pod_handle("default", "healthy", "web").expect("a handle");
        let request = hyper::Request::get("http://pod/env?name=MODE")
            .body(skiff_runtime::body(""))
            .unwrap();
        let response = handle.serve(request).await;
        assert_eq!(response.status(), 200);

        let pod = cluster
            .wait_pod("unlive", "unlive restarted by its liveness probe", |p| {
                p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
            })
            .await;
        let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
        assert!(
            last["message"].as_str().unwrap_or_default().contains("Liveness probe failed"),
            "{last}"
        );

        let pod = cluster
            .wait_pod("unready", "unready Running", |p| phase(p) == "Running")
            .await;
        assert_eq!(ready(&pod), Some(false));
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], false);
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
        // The healthy pod was never restarted.
        let pod = cluster.wait_pod("healthy", "healthy", |_| true).await;
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
        agent.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_downward_api_reach_the_guest() {
    with_timeout("secrets", async {
        let cluster = Cluster::start().await;
        let agent = Agent::start(cluster.agent_config()).await.unwrap();
        cluster
            .create(
                "Secret",
                json!({ "metadata": { "name": "creds" }, "stringData": { "password": "hunter2" } }),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object(
                    "secret-env",
                    json!({
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "env", "image": skiff_guests::MISBEHAVE, "args": ["env"],
                            "resources": { "limits": { "memory": "64Mi" } },
                            "env": [
                                { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                                { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                                { "name": "MEM", "valueFrom": { "resourceFieldRef": { "resource": "limits.memory", "divisor": "1Mi" } } },
                                { "name": "BOTH", "value": "$(NODE)-$(PASSWORD)" },
                            ],
                        }],
                    }),
                ),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object(
                    "secret-file",
                    json!({
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "cat", "image": skiff_guests::MISBEHAVE, "args": ["cat", "/secret/pw"],
                            "volumeMounts": [{ "name": "s", "mountPath": "/secret" }],
                        }],
                        "volumes": [{ "name": "s", "secret": { "secretName": "creds", "items": [{ "key": "password", "path": "pw" }] } }],
                    }),
                ),
            )
            .await;
        cluster
            .wait_pod("secret-env", "secret-env Succeeded", |p| phase(p) == "Succeeded")
            .await;
        let text = agent.logs("default", "secret-env", "env", false).unwrap().text();
        for expected in ["PASSWORD=hunter2", "NODE=n1", "MEM=64", "BOTH=n1-hunter2"] {
            assert!(text.lines().any(|l| l == expected), "{expected} missing from {text}");
        }
        cluster
            .wait_pod("secret-file", "secret-file Succeeded", |p| phase(p) == "Succeeded")
            .await;
        let text = agent.logs("default", "secret-file", "cat", false).unwrap().text();
        assert_eq!(text, "hunter2\n");

        // A missing secret keeps the container waiting with the reason.
        cluster
            .create(
                "Pod",
                pod_object(
                    "no-secret",
                    json!({ "containers": [{ "name": "env", "image": skiff_guests::MISBEHAVE, "args": ["env"],
                        "env": [{ "name": "X", "valueFrom": { "secretKeyRef": { "name": "absent", "key": "k" } } }] }] }),
                ),
            )
            .await;
        let pod = cluster
            .wait_pod("no-secret", "no-secret waiting", |p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
            .await;
        assert_eq!(phase(&pod), "Pending");
        agent.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_admission_and_eviction() {
    with_timeout("admission", async {
        let cluster = Cluster::start().await;
        let mut config = cluster.agent_config();
        config.max_pods = 2;
        config.memory_bytes = 256 << 20;
        let agent = Agent::start(config).await.unwrap();
        let image = skiff_guests::MISBEHAVE;
        // Too much memory for the node.
        cluster
            .create(
                "Pod",
                pod_object(
                    "huge",
                    json!({ "containers": [{ "name": "c", "image": image, "args": ["sleep", "60000"],
                        "resources": { "requests": { "memory": "1Gi" } } }] }),
                ),
            )
            .await;
        let pod = cluster
            .wait_pod("huge", "huge rejected", |p| phase(p) == "Failed")
            .await;
        assert_eq!(pod["status"]["reason"], "OutOfmemory");

        // An emptyDir over its sizeLimit gets the pod evicted.
        let big = "x".repeat(4096);
        cluster
            .create(
                "Pod",
                pod_object(
                    "filler",
                    json!({
                        "containers": [{ "name": "c", "image": image, "args": ["write", "/scratch/f", big],
                            "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }] }],
                        "volumes": [{ "name": "scratch", "emptyDir": { "sizeLimit": "1Ki" } }],
                    }),
                ),
            )
            .await;
        let pod = cluster
            .wait_pod("filler", "filler evicted", |p| phase(p) == "Failed")
            .await;
        assert_eq!(pod["status"]["reason"], "Evicted");

        // Two running pods fill the node; a third is refused.
        for name in ["a", "b"] {
            cluster
                .create(
                    "Pod",
                    pod_object(name, json!({ "containers": [{ "name": "c", "image": image, "args": ["sleep", "60000"] }] })),
                )
                .await;
            cluster.wait_pod(name, "running", |p| phase(p) == "Running").await;
        }
        cluster
            .create(
                "Pod",
                pod_object("c", json!({ "containers": [{ "name": "c", "image": image, "args": ["sleep", "60000"] }] })),
            )
            .await;
        let pod = cluster.wait_pod("c", "c rejected", |p| phase(p) == "Failed").await;
        assert_eq!(pod["status"]["reason"], "OutOfpods");
        agent.shutdown().await;
    })
    .await;
}

/// A TCP forwarder on loopback standing between the agent and the API
/// server: cutting it is a control-plane outage (every connection drops
/// and new ones are refused).
struct Proxy {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            addr,
            accept,
            connections,
        }
    }

    /// Drops every connection and stops listening.
    fn cut(self) -> SocketAddr {
        self.accept.abort();
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
        self.addr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_control_plane_outage() {
    with_timeout("outage", async {
        let cluster = Cluster::start().await;
        let server_addr = cluster.server.as_ref().unwrap().addr();
        let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), server_addr).await;
        let agent = Agent::start(cluster.agent_config_via(proxy.addr))
            .await
            .unwrap();
        cluster
            .create(
                "Pod",
                pod_object(
                    "web",
                    json!({ "containers": [{ "name": "web", "image": skiff_guests::HTTP_TEST }] }),
                ),
            )
            .await;
        let before = cluster
            .wait_pod("web", "web Ready", |p| ready(p) == Some(true))
            .await;
        let started =
            before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();

        let proxy_addr = proxy.cut();
        // While the agent cannot reach the API server, a pod is deleted and
        // another created; the running pod keeps serving.
        cluster
            .create(
                "Pod",
                pod_object(
                    "after",
                    json!({ "restartPolicy": "Never",
                    "containers": [{ "name": "pi", "image": skiff_guests::PI, "args": ["5"] }] }),
                ),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object(
                    "doomed",
                    json!({ "restartPolicy": "Never",
                    "containers": [{ "name": "pi", "image": skiff_guests::PI, "args": ["5"] }] }),
                ),
            )
            .await;
        cluster
            .pods()
            .delete(
                "doomed",
                &kube::api::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let handle = agent
            .pod_handle("default", "web", "web")
            .expect("still running");
        let request = hyper::Request::get("http://pod/ok")
            .body(skiff_runtime::body(""))
            .unwrap();
        assert_eq!(handle.serve(request).await.status(), 200);
        assert!(
            agent.logs("default", "after", "pi", false).is_none(),
            "the agent saw a pod while cut off"
        );

        // The API server is reachable again: the agent re-lists, runs the
        // new pod, and leaves the healthy one alone.
        let _proxy = Proxy::start(proxy_addr, server_addr).await;
        cluster
            .wait_pod("after", "a pod created during the outage runs", |p| {
                phase(p) == "Succeeded"
            })
            .await;
        let after = cluster.wait_pod("web", "web", |_| true).await;
        let status = &after["status"]["containerStatuses"][0];
        assert_eq!(status["restartCount"], 0);
        assert_eq!(status["state"]["running"]["startedAt"], started);
        assert!(agent.logs("default", "doomed", "pi", false).is_none());
        agent.shutdown().await;
    })
    .await;
}

/// Accepts any server certificate (the test checks the agent's token
/// check, not its certificate; the API server pins the certificate).
#[derive(Debug)]
struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET path` on the agent's HTTPS port, with `token` as bearer token.
async fn agent_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header("host", "agent");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(
            request
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_endpoint_needs_the_node_token_and_pull_errors_are_reported() {
    with_timeout("logs endpoint", async {
        let cluster = Cluster::start().await;
        let config = cluster.agent_config();
        let token = config.token.clone();
        let agent = Agent::start(config).await.unwrap();
        cluster
            .create(
                "Pod",
                pod_object("lines", json!({ "restartPolicy": "Never",
                    "containers": [{ "name": "log", "image": skiff_guests::MISBEHAVE, "args": ["log", "5"] }] })),
            )
            .await;
        cluster
            .create(
                "Pod",
                pod_object("missing", json!({
                    "containers": [{ "name": "c", "image": "/nonexistent/component.wasm" }] })),
            )
            .await;
        cluster
            .wait_pod("lines", "lines Succeeded", |p| phase(p) == "Succeeded")
            .await;
        let path = "/containerLogs/default/lines/log";
        let (status, _) = agent_get(agent.port(), path, None).await;
        assert_eq!(status, 401);
        let (status, _) = agent_get(agent.port(), path, Some("wrong")).await;
        assert_eq!(status, 401);
        let (status, all) = agent_get(agent.port(), path, Some(&token)).await;
        assert_eq!(status, 200, "{all}");
        assert_eq!(all.lines().count(), 5, "{all}");
        let (_, tail) = agent_get(agent.port(), &format!("{path}?tailLines=2"), Some(&token)).await;
        let expected: Vec<&str> = all.lines().skip(3).collect();
        assert_eq!(tail.lines().collect::<Vec<_>>(), expected);
        let (_, stamped) = agent_get(agent.port(), &format!("{path}?timestamps=true&tailLines=1"), Some(&token)).await;
        assert!(stamped.starts_with("20") && stamped.contains("Z "), "{stamped}");
        let (status, _) = agent_get(agent.port(), "/containerLogs/default/nope/log", Some(&token)).await;
        assert_eq!(status, 400);

        let pod = cluster
            .wait_pod("missing", "missing image reported", |p| {
                let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
                reason == "ErrImagePull" || reason == "ImagePullBackOff"
            })
            .await;
        let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
        assert!(message.contains("nonexistent"), "{message}");
        assert_eq!(phase(&pod), "Pending");
        agent.shutdown().await;
    })
    .await;
}
