//! Image pulls against real OCI registries on loopback: Debian's
//! `docker-registry` (the CNCF distribution registry), started by each test
//! with its own storage, and Skiff's own built-in registry in an in-process
//! API server. Components are pushed with `oci-client` in the wasm artifact
//! layout wasm tooling uses, then pulled through [`Images::pull`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer,
};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;
use skiff_node::images::{
    BuiltinRegistry, ImageConfig, Images, PullError, PullPolicy, WASM_CONFIG, WASM_LAYER,
    WASM_LAYER_LEGACY,
};

/// Bounds every test: a hung registry or pull fails it instead of hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn hello() -> Vec<u8> {
    skiff_guests::bytes(skiff_guests::HELLO)
}

/// A `docker-registry` process serving plain HTTP on a loopback port, with
/// its storage in a temporary directory. Killed (by pid) on drop.
struct DockerRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn find_docker_registry() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("docker-registry"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the docker-registry binary is not installed, and these tests need a real OCI \
                 registry: install it with `sudo apt-get install -y docker-registry` \
                 (scripts/test does)"
            )
        })
}

impl DockerRegistry {
    async fn start() -> DockerRegistry {
        let binary = find_docker_registry();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut registry = DockerRegistry {
            child: Some(child),
            addr,
            dir,
        };
        registry.wait_ready().await;
        registry
    }

    /// Waits until `GET /v2/` answers 200.
    async fn wait_ready(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let request = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let mut answer = Vec::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_end(&mut answer).await.is_ok()
                    && answer.starts_with(b"HTTP/1.1 200")
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "docker-registry did not come up on {} within 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The file the registry keeps blob `digest` in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kills the registry (by its pid) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A pushing client for plain-HTTP loopback registries.
fn http_client() -> Client {
    install_crypto();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// Pushes a one-layer artifact to `reference`; returns the manifest digest.
async fn push(
    client: &Client,
    auth: &RegistryAuth,
    reference: &str,
    config: (&str, &[u8]),
    layer: (&str, &[u8]),
) -> String {
    let reference: Reference = reference.parse().unwrap();
    let layers = vec![ImageLayer::new(layer.1.to_vec(), layer.0.to_owned(), None)];
    let config = Config::new(config.1.to_vec(), config.0.to_owned(), None);
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(&reference, &layers, config, auth, Some(manifest))
        .await
        .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
    client
        .fetch_manifest_digest(&reference, auth)
        .await
        .unwrap_or_else(|e| panic!("resolving {reference}: {e}"))
}

/// Pushes `component` as a wasm artifact, the layout wkg produces.
async fn push_component(
    client: &Client,
    auth: &RegistryAuth,
    reference: &str,
    component: &[u8],
) -> String {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [digest_of(component)],
    }))
    .unwrap();
    push(
        client,
        auth,
        reference,
        (WASM_CONFIG, &config),
        (WASM_LAYER, component),
    )
    .await
}

fn images(cache: &Path) -> Images {
    Images::new(ImageConfig {
        cache_dir: cache.to_path_buf(),
        ..ImageConfig::default()
    })
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_TIMEOUT:?}"))
}

#[tokio::test]
async fn pulls_a_component_and_serves_it_from_the_cache_offline() {
    bounded("pull, then offline pulls", async {
        let mut registry = DockerRegistry::start().await;
        let component = hello();
        let image = format!("{}/hello:v1", registry.host());
        let manifest_digest =
            push_component(&http_client(), &RegistryAuth::Anonymous, &image, &component).await;
        let cache = tempfile::tempdir().unwrap();
        let images = images(cache.path());

        let pulled = images.pull(&image, PullPolicy::IfNotPresent).await.unwrap();
        assert_eq!(pulled.digest, digest_of(&component));
        assert!(pulled.path.starts_with(cache.path()));
        assert!(std::fs::read(&pulled.path).unwrap() == component);

        // Always asks the registry again and finds the same digest cached:
        // it downloads nothing (the registry's copy, now damaged, would be
        // refused if it did).
        let blob = registry.blob_file(&pulled.digest);
        let mut stored = std::fs::read(&blob).unwrap();
        stored[0] ^= 0xff;
        std::fs::write(&blob, &stored).unwrap();
        let again = images.pull(&image, PullPolicy::Always).await.unwrap();
        assert_eq!(again, pulled);
        // The manifest digest pins the same component.
        let pinned = format!("{}/hello@{manifest_digest}", registry.host());
        assert_eq!(
            images.pull(&pinned, PullPolicy::Always).await.unwrap(),
            pulled
        );

        registry.stop();

        // Offline: IfNotPresent and Never use the cache, also from a new
        // agent over the same cache directory (a node restart).
        for images in [images.clone(), self::images(cache.path())] {
            for policy in [PullPolicy::IfNotPresent, PullPolicy::Never] {
                assert_eq!(images.pull(&image, policy).await.unwrap(), pulled);
                assert_eq!(images.pull(&pinned, policy).await.unwrap(), pulled);
            }
        }
        // Always needs the registry.
        let err = images.pull(&image, PullPolicy::Always).await.unwrap_err();
        assert!(matches!(err, PullError::Failed { .. }), "{err:?}");
        assert_eq!(err.reason(), "ErrImagePull");
        assert!(err.to_string().contains("unreachable"), "{err}");
        // Never with nothing cached.
        let other = format!("{}/other:v1", registry.host());
        let err = images.pull(&other, PullPolicy::Never).await.unwrap_err();
        assert!(matches!(err, PullError::NotPresent { .. }), "{err:?}");
        assert_eq!(err.reason(), "ErrImageNeverPull");
    })
    .await;
}

#[tokio::test]
async fn a_moved_tag_is_followed_by_always_but_not_by_if_not_present() {
    bounded("moving a tag", async {
        let registry = DockerRegistry::start().await;
        let client = http_client();
        let image = format!("{}/app:latest", registry.host());
        let first = hello();
        push_component(&client, &RegistryAuth::Anonymous, &image, &first).await;
        let cache = tempfile::tempdir().unwrap();
        let images = images(cache.path());
        let pulled = images.pull(&image, PullPolicy::Always).await.unwrap();
        assert_eq!(pulled.digest, digest_of(&first));

        let second = skiff_guests::bytes(skiff_guests::PI);
        push_component(&client, &RegistryAuth::Anonymous, &image, &second).await;
        let cached = images.pull(&image, PullPolicy::IfNotPresent).await.unwrap();
        assert_eq!(
            cached.digest,
            digest_of(&first),
            "IfNotPresent keeps the cached one"
        );
        let fresh = images.pull(&image, PullPolicy::Always).await.unwrap();
        assert_eq!(fresh.digest, digest_of(&second), "Always follows the tag");
        assert!(std::fs::read(&fresh.path).unwrap() == second);
    })
    .await;
}

#[tokio::test]
async fn the_legacy_wasm_layer_media_type_is_accepted() {
    bounded("legacy layout", async {
        let registry = DockerRegistry::start().await;
        let component = hello();
        let image = format!("{}/legacy:v1", registry.host());
        push(
            &http_client(),
            &RegistryAuth::Anonymous,
            &image,
            ("application/vnd.wasm.config.v1+json", b"{}"),
            (WASM_LAYER_LEGACY, &component),
        )
        .await;
        let cache = tempfile::tempdir().unwrap();
        let pulled = images(cache.path())
            .pull(&image, PullPolicy::IfNotPresent)
            .await
            .unwrap();
        assert_eq!(pulled.digest, digest_of(&component));
    })
    .await;
}

#[tokio::test]
async fn a_wrong_pinned_digest_is_a_mismatch() {
    bounded("pinned digests", async {
        let registry = DockerRegistry::start().await;
        let image = format!("{}/hello:v1", registry.host());
        let manifest_digest =
            push_component(&http_client(), &RegistryAuth::Anonymous, &image, &hello()).await;
        let cache = tempfile::tempdir().unwrap();
        let images = images(cache.path());
        let wrong = digest_of(b"not the manifest");

        let err = images
            .pull(&format!("{image}@{wrong}"), PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        match &err {
            PullError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &manifest_digest);
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        assert_eq!(err.reason(), "ErrImagePull");
        // The right pin with the tag is fine.
        images
            .pull(
                &format!("{image}@{manifest_digest}"),
                PullPolicy::IfNotPresent,
            )
            .await
            .unwrap();
        // A digest alone that the registry does not have is not found.
        let err = images
            .pull(
                &format!("{}/hello@{wrong}", registry.host()),
                PullPolicy::IfNotPresent,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_layer_from_the_registry_is_refused() {
    bounded("corrupt layer", async {
        let registry = DockerRegistry::start().await;
        let component = hello();
        let image = format!("{}/hello:v1", registry.host());
        push_component(&http_client(), &RegistryAuth::Anonymous, &image, &component).await;
        // The registry serves what its disk holds: flip one byte of it.
        let blob = registry.blob_file(&digest_of(&component));
        let mut stored = std::fs::read(&blob).unwrap();
        let middle = stored.len() / 2;
        stored[middle] ^= 0xff;
        std::fs::write(&blob, &stored).unwrap();

        let cache = tempfile::tempdir().unwrap();
        let err = images(cache.path())
            .pull(&image, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::DigestMismatch { .. }), "{err:?}");
        let cached = cache.path().join(format!(
            "components/sha256/{}.wasm",
            digest_of(&component).trim_start_matches("sha256:")
        ));
        assert!(!cached.exists(), "a corrupt download must not be cached");
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_pulled_again() {
    bounded("corrupt cache", async {
        let registry = DockerRegistry::start().await;
        let component = hello();
        let image = format!("{}/hello:v1", registry.host());
        push_component(&http_client(), &RegistryAuth::Anonymous, &image, &component).await;
        let cache = tempfile::tempdir().unwrap();
        let images = images(cache.path());
        let pulled = images.pull(&image, PullPolicy::IfNotPresent).await.unwrap();
        // Hashed once and found intact: the next pull trusts the unchanged
        // file, but not one changed since.
        let cached = images.pull(&image, PullPolicy::Never).await.unwrap();
        assert_eq!(cached.path, pulled.path);
        let cached = images.pull(&image, PullPolicy::Never).await.unwrap();
        assert_eq!(cached.path, pulled.path);
        std::fs::write(&pulled.path, b"garbage").unwrap();

        let again = images.pull(&image, PullPolicy::IfNotPresent).await.unwrap();
        assert_eq!(again.digest, digest_of(&component));
        assert!(std::fs::read(&again.path).unwrap() == component);

        // With the registry gone, a corrupt entry is no longer "present".
        drop(registry);
        std::fs::write(&pulled.path, b"garbage").unwrap();
        let err = images.pull(&image, PullPolicy::Never).await.unwrap_err();
        assert!(matches!(err, PullError::NotPresent { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn missing_images_and_tags_are_not_found() {
    bounded("missing images", async {
        let registry = DockerRegistry::start().await;
        let image = format!("{}/hello:v1", registry.host());
        push_component(&http_client(), &RegistryAuth::Anonymous, &image, &hello()).await;
        let cache = tempfile::tempdir().unwrap();
        let images = images(cache.path());
        for missing in [
            format!("{}/hello:v9", registry.host()),
            format!("{}/nothing:v1", registry.host()),
        ] {
            let err = images
                .pull(&missing, PullPolicy::IfNotPresent)
                .await
                .unwrap_err();
            assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
            assert_eq!(err.reason(), "ErrImagePull");
            let message = err.to_string();
            assert!(message.contains(&missing), "{message}");
            assert!(
                message.contains("UNKNOWN"),
                "names what the registry said: {message}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn container_images_are_refused_naming_their_media_types() {
    bounded("container image", async {
        let registry = DockerRegistry::start().await;
        let image = format!("{}/nginx:1", registry.host());
        push(
            &http_client(),
            &RegistryAuth::Anonymous,
            &image,
            ("application/vnd.oci.image.config.v1+json", b"{}"),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                b"not really a tarball",
            ),
        )
        .await;
        let cache = tempfile::tempdir().unwrap();
        let err = images(cache.path())
            .pull(&image, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NotAComponent { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("application/vnd.oci.image.config.v1+json")
                && message.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
            "{message}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_registry_fails_the_pull() {
    bounded("unreachable registry", async {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cache = tempfile::tempdir().unwrap();
        let image = format!("127.0.0.1:{port}/hello:v1");
        let err = images(cache.path())
            .pull(&image, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::Failed { .. }), "{err:?}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn invalid_references_and_unconfigured_builtin_registry() {
    let cache = tempfile::tempdir().unwrap();
    let images = images(cache.path());
    let err = images
        .pull("Hello:v1", PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidImageName", "{err}");
    let err = images
        .pull("hello:v1", PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("no built-in registry"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_the_built_in_registry() {
    bounded("built-in registry", async {
        let data = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = skiff_control::apiserver::ApiServer::start(
            skiff_control::apiserver::Config::new(data.path(), listen),
        )
        .await
        .unwrap();
        let read = |name: &str| {
            std::fs::read_to_string(data.path().join(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        let (admin, node) = (read("admin-token"), read("node-token"));
        let ca_pem = std::fs::read(data.path().join("pki/ca.crt")).unwrap();

        // The admin pushes over the registry API, trusting the cluster CA,
        // logging in with the admin token as a password (the token flow
        // that password-only clients use).
        install_crypto();
        let pusher = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            tls_certs_only: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: ca_pem.clone(),
            }],
            ..ClientConfig::default()
        });
        let component = hello();
        let host = server.addr().to_string();
        push_component(
            &pusher,
            &RegistryAuth::Basic("admin".into(), admin),
            &format!("{host}/team/hello:v1"),
            &component,
        )
        .await;

        // A node pulls by the short name.
        let cache = tempfile::tempdir().unwrap();
        let builtin = |token: &str| BuiltinRegistry {
            url: format!("https://{host}"),
            ca_pem: ca_pem.clone(),
            token: token.to_owned(),
        };
        let images = Images::new(ImageConfig {
            cache_dir: cache.path().to_path_buf(),
            builtin_registry: Some(builtin(&node)),
            ..ImageConfig::default()
        });
        let pulled = images
            .pull("team/hello:v1", PullPolicy::Always)
            .await
            .unwrap();
        assert_eq!(pulled.digest, digest_of(&component));
        assert!(std::fs::read(&pulled.path).unwrap() == component);
        let err = images
            .pull("team/hello:v2", PullPolicy::Always)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");

        // A wrong token is refused.
        let stranger_cache = tempfile::tempdir().unwrap();
        let stranger = Images::new(ImageConfig {
            cache_dir: stranger_cache.path().to_path_buf(),
            builtin_registry: Some(builtin("not-a-token")),
            ..ImageConfig::default()
        });
        let err = stranger
            .pull("team/hello:v1", PullPolicy::Always)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::Failed { .. }), "{err:?}");
        assert!(err.to_string().contains("401"), "{err}");

        server.shutdown(Duration::from_secs(5)).await;
        // Offline from the built-in registry too.
        assert_eq!(
            images
                .pull("team/hello:v1", PullPolicy::IfNotPresent)
                .await
                .unwrap(),
            pulled
        );
    })
    .await;
}
