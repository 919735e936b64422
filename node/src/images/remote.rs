//! Talking to OCI registries with `oci-client`: resolve a reference to a
//! manifest, check that it is a wasm component artifact, stream its layer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::cache::{Cache, StoreError};
use super::reference::Remote;
use super::{BuiltinRegistry, PullError};

/// The OCI image manifest, which wasm artifacts use.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of wasm artifacts (wkg, wasm-pkg-tools).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a wasm component.
pub const WASM_LAYER: &str = "application/wasm";
/// The layer media type older wasm tooling (wasm-to-oci) used.
pub const WASM_LAYER_LEGACY: &str = "application/vnd.wasm.content.layer.v1+wasm";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest component pulled. Components are compiled in memory
/// afterwards, so anything bigger is a mistake, not an image.
pub(super) const MAX_COMPONENT: u64 = 256 << 20;

/// Bounds for registry requests: a dead registry fails the pull instead of
/// hanging the pod in `ContainerCreating`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a reference resolved to.
#[derive(Debug)]
pub(super) struct Resolved {
    /// `sha256:<hex>` of the manifest.
    pub(super) manifest_digest: String,
    /// The component layer.
    pub(super) layer: OciDescriptor,
}

/// Registry clients, built on first use: plain HTTP for loopback
/// registries, HTTPS with the system roots for the rest, and HTTPS trusting
/// only the cluster CA for the built-in registry.
pub(super) struct Registries {
    builtin: Option<BuiltinRegistry>,
    plain: OnceLock<Result<Arc<Client>, String>>,
    public: OnceLock<Result<Arc<Client>, String>>,
    cluster: OnceLock<Result<Arc<Client>, String>>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries")
            .field("builtin", &self.builtin.as_ref().map(|b| b.url.as_str()))
            .finish_non_exhaustive()
    }
}

fn build_client(protocol: ClientProtocol, roots: Vec<Certificate>) -> Result<Arc<Client>, String> {
    // reqwest builds its TLS configuration from the process-wide rustls
    // provider; install ring (the workspace's provider) unless one is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol,
        tls_certs_only: roots,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("skiff-node/", env!("CARGO_PKG_VERSION")),
        // Components are single-platform artifacts; an index is refused.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map(Arc::new)
        .map_err(|e| format!("cannot create the registry client: {e}"))
}

impl Registries {
    pub(super) fn new(builtin: Option<BuiltinRegistry>) -> Registries {
        Registries {
            builtin,
            plain: OnceLock::new(),
            public: OnceLock::new(),
            cluster: OnceLock::new(),
        }
    }

    /// The client, registry host, and credentials for `remote`.
    fn endpoint(
        &self,
        image: &str,
        remote: &Remote,
    ) -> Result<(Arc<Client>, String, RegistryAuth), PullError> {
        let failed = |reason: String| PullError::Failed {
            image: image.to_owned(),
            reason,
        };
        match &remote.host {
            Some(host) => {
                let slot = if remote.is_loopback() {
                    self.plain
                        .get_or_init(|| build_client(ClientProtocol::Http, Vec::new()))
                } else {
                    self.public
                        .get_or_init(|| build_client(ClientProtocol::Https, Vec::new()))
                };
                let client = slot.clone().map_err(failed)?;
                Ok((client, host.clone(), RegistryAuth::Anonymous))
            }
            None => {
                let builtin = self.builtin.as_ref().ok_or_else(|| {
                    failed(format!(
                        "{image:?} names the control plane's built-in registry (no registry host in it), but this node has no built-in registry configured"
                    ))
                })?;
                let host = builtin_host(&builtin.url).map_err(failed)?;
                let client = self
                    .cluster
                    .get_or_init(|| {
                        build_client(
                            ClientProtocol::Https,
                            vec![Certificate {
                                encoding: CertificateEncoding::Pem,
                                data: builtin.ca_pem.clone(),
                            }],
                        )
                    })
                    .clone()
                    .map_err(failed)?;
                Ok((client, host, RegistryAuth::Bearer(builtin.token.clone())))
            }
        }
    }

    /// Asks the registry what `remote` names now, and checks that it is a
    /// wasm component.
    pub(super) async fn resolve(
        &self,
        image: &str,
        remote: &Remote,
    ) -> Result<Resolved, PullError> {
        let (client, host, auth) = self.endpoint(image, remote)?;
        // With a tag and a digest, the tag is fetched and must match the
        // digest: `app:v1@sha256:...` asserts what v1 is.
        let reference = match (&remote.tag, &remote.digest) {
            (Some(tag), _) => {
                Reference::with_tag(host.clone(), remote.repository.clone(), tag.clone())
            }
            (None, Some(digest)) => {
                Reference::with_digest(host.clone(), remote.repository.clone(), digest.clone())
            }
            (None, None) => {
                Reference::with_tag(host.clone(), remote.repository.clone(), "latest".into())
            }
        };
        let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let (body, _) = client
            .pull_manifest_raw(&reference, &auth, &accepted)
            .await
            .map_err(|err| classify(image, &host, err))?;
        let manifest_digest = {
            use sha2::Digest as _;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)))
        };
        if let Some(expected) = &remote.digest
            && *expected != manifest_digest
        {
            return Err(PullError::DigestMismatch {
                image: image.to_owned(),
                expected: expected.clone(),
                actual: manifest_digest,
            });
        }
        let layer = wasm_layer(image, &body)?;
        Ok(Resolved {
            manifest_digest,
            layer,
        })
    }

    /// Streams `layer` into the cache, verifying its digest.
    pub(super) async fn download(
        &self,
        image: &str,
        remote: &Remote,
        layer: &OciDescriptor,
        cache: &Cache,
    ) -> Result<std::path::PathBuf, PullError> {
        let (client, host, auth) = self.endpoint(image, remote)?;
        let reference = Reference::with_digest(
            host.clone(),
            remote.repository.clone(),
            layer.digest.clone(),
        );
        // The manifest was fetched with `auth`; blob requests reuse it.
        client.store_auth_if_needed(&host, &auth).await;
        let stream = client
            .pull_blob_stream(&reference, layer)
            .await
            .map_err(|err| classify(image, &host, err))?;
        cache
            .store(&layer.digest, MAX_COMPONENT, stream.stream)
            .await
            .map_err(|err| match err {
                StoreError::Mismatch { actual } => PullError::DigestMismatch {
                    image: image.to_owned(),
                    expected: layer.digest.clone(),
                    actual,
                },
                StoreError::TooLarge => PullError::Failed {
                    image: image.to_owned(),
                    reason: format!(
                        "the component is larger than the {} MiB limit",
                        MAX_COMPONENT >> 20
                    ),
                },
                // The verifying stream reports a digest mismatch as an I/O
                // error at its end; the cache's own hash gives the digest.
                StoreError::Stream(err) if err.to_string().contains("igest") => {
                    PullError::DigestMismatch {
                        image: image.to_owned(),
                        expected: layer.digest.clone(),
                        actual: format!("other bytes ({err})"),
                    }
                }
                StoreError::Stream(err) => PullError::Failed {
                    image: image.to_owned(),
                    reason: format!("downloading {} from {host}: {err}", layer.digest),
                },
                StoreError::Io(err) => PullError::Failed {
                    image: image.to_owned(),
                    reason: format!("writing the image cache: {err}"),
                },
            })
    }
}

/// `host:port` of the built-in registry's URL (`https://127.0.0.1:6443`).
fn builtin_host(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("the built-in registry URL {url:?} must start with https://"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "the built-in registry URL {url:?} must be https://HOST[:PORT]"
        ));
    }
    Ok(host.to_owned())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
}

/// The component layer of a wasm artifact manifest, or why `body` is not
/// one (naming the media types found).
fn wasm_layer(image: &str, body: &[u8]) -> Result<OciDescriptor, PullError> {
    let not_wasm = |found: String| PullError::NotAComponent {
        image: image.to_owned(),
        found,
    };
    let manifest: Manifest = serde_json::from_slice(body).map_err(|e| PullError::Failed {
        image: image.to_owned(),
        reason: format!("the registry sent a manifest that is not valid JSON: {e}"),
    })?;
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| "(none)".into());
    if !manifest.manifests.is_empty() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
        let entries: Vec<&str> = manifest
            .manifests
            .iter()
            .map(|m| m.media_type.as_str())
            .collect();
        return Err(not_wasm(format!(
            "an image index ({media_type}) of [{}]",
            entries.join(", ")
        )));
    }
    let config_type = manifest
        .config
        .as_ref()
        .map(|c| c.media_type.as_str())
        .unwrap_or("(none)");
    let layer_types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    let describe = || {
        format!(
            "manifest {media_type}, config {config_type}, layers [{}]",
            layer_types.join(", ")
        )
    };
    let wasm_config = config_type.starts_with("application/vnd.wasm.config.")
        || config_type == "application/vnd.oci.empty.v1+json";
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_wasm(describe()));
    };
    if !wasm_config || !matches!(layer.media_type.as_str(), WASM_LAYER | WASM_LAYER_LEGACY) {
        return Err(not_wasm(describe()));
    }
    if !layer.digest.starts_with("sha256:") {
        return Err(PullError::Failed {
            image: image.to_owned(),
            reason: format!(
                "the component layer's digest {:?} is not sha256",
                layer.digest
            ),
        });
    }
    if u64::try_from(layer.size).is_ok_and(|size| size > MAX_COMPONENT) {
        return Err(PullError::Failed {
            image: image.to_owned(),
            reason: format!(
                "the component is {} bytes, more than the {} MiB limit",
                layer.size,
                MAX_COMPONENT >> 20
            ),
        });
    }
    Ok(OciDescriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        ..OciDescriptor::default()
    })
}

/// Maps a client error to what the agent reports.
fn classify(image: &str, host: &str, err: OciDistributionError) -> PullError {
    let image = image.to_owned();
    match err {
        OciDistributionError::ImageManifestNotFoundError(reason) => {
            PullError::NotFound { image, reason }
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let unknown = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            });
            let said: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    // The wire name (`MANIFEST_UNKNOWN`), as registries document it.
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("{:?}", e.code));
                    format!("{code}: {}", e.message)
                })
                .collect();
            let reason = format!("registry {host} answered {url}: {}", said.join("; "));
            if unknown {
                PullError::NotFound { image, reason }
            } else {
                PullError::Failed { image, reason }
            }
        }
        OciDistributionError::ServerError {
            code: 404,
            url,
            message,
        } => PullError::NotFound {
            image,
            reason: format!("registry {host} answered 404 for {url}: {message}"),
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => PullError::DigestMismatch {
            image,
            expected,
            actual,
        },
        OciDistributionError::UnauthorizedError { url } => PullError::Failed {
            image,
            reason: format!("registry {host} refused the credentials (401 for {url})"),
        },
        OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
            PullError::Failed {
                image,
                reason: format!("registry {host} is unreachable: {}", error_chain(&err)),
            }
        }
        other => PullError::Failed {
            image,
            reason: format!("registry {host}: {}", error_chain(&other)),
        },
    }
}

/// An error and its sources, `a: b: c`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Pushes `component` to the built-in registry as `name:tag` (or `name`,
/// meaning `latest`), in the wasm artifact layout wasm tooling uses (one
/// `application/wasm` layer, a `application/vnd.wasm.config.v0+json`
/// config). Returns the manifest digest.
pub async fn push(
    registry: &BuiltinRegistry,
    name: &str,
    component: &[u8],
) -> Result<String, String> {
    use oci_client::client::{Config, ImageLayer};
    use oci_client::manifest::OciImageManifest;
    use sha2::Digest;
    if !component.starts_with(b"\0asm") {
        return Err("not a WebAssembly file (no \\0asm header)".into());
    }
    if name.contains("://") {
        return Err(format!(
            "{name:?}: name the image without a scheme (NAME:TAG)"
        ));
    }
    let host = builtin_host(&registry.url)?;
    let reference: Reference = format!("{host}/{name}")
        .parse()
        .map_err(|e| format!("invalid image name {name:?}: {e}"))?;
    let client = build_client(
        ClientProtocol::Https,
        vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: registry.ca_pem.clone(),
        }],
    )?;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(component)));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [digest],
    }))
    .map_err(|e| e.to_string())?;
    let layers = vec![ImageLayer::new(
        component.to_vec(),
        WASM_LAYER.to_owned(),
        None,
    )];
    let config = Config::new(config, WASM_CONFIG.to_owned(), None);
    let manifest = OciImageManifest::build(&layers, &config, None);
    let auth = RegistryAuth::Bearer(registry.token.clone());
    client
        .push(&reference, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| format!("pushing {name}: {e}"))?;
    client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .map_err(|e| format!("pushed {name}, but cannot read it back: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_wasm_artifacts() {
        for layer in [WASM_LAYER, WASM_LAYER_LEGACY] {
            let digest = format!("sha256:{}", "1".repeat(64));
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": WASM_CONFIG, "digest": format!("sha256:{}", "2".repeat(64)), "size": 2},
                "layers": [{"mediaType": layer, "digest": digest, "size": 10}],
            });
            let found = wasm_layer("x", body.to_string().as_bytes()).expect("a wasm artifact");
            assert_eq!(found.digest, digest);
            assert_eq!(found.media_type, layer);
        }
    }

    #[test]
    fn refuses_container_images_naming_media_types() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00", "size": 2},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:01", "size": 10}],
        });
        let err = wasm_layer("nginx:1", body.to_string().as_bytes()).expect_err("not wasm");
        let text = err.to_string();
        assert!(matches!(err, PullError::NotAComponent { .. }), "{err:?}");
        assert!(text.contains(DOCKER_MANIFEST), "{text}");
        assert!(
            text.contains("application/vnd.docker.container.image.v1+json"),
            "{text}"
        );
        assert!(text.contains("rootfs.diff.tar.gzip"), "{text}");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:00", "size": 2}],
        });
        let err = wasm_layer("multi", index.to_string().as_bytes()).expect_err("an index");
        assert!(err.to_string().contains("image index"), "{err}");
    }

    #[test]
    fn builtin_url() {
        assert_eq!(
            builtin_host("https://127.0.0.1:6443/").as_deref(),
            Ok("127.0.0.1:6443")
        );
        assert!(builtin_host("http://127.0.0.1:6443").is_err());
        assert!(builtin_host("https://127.0.0.1:6443/v2").is_err());
    }
}
