//! Images: a pod's `image` resolved to a verified wasm component on disk.
//!
//! [`Images::pull`] is the one entry point the agent uses. References are
//! resolved like this:
//! - `file:///abs/path.wasm` (or an absolute path): a local file, only when
//!   [`ImageConfig::allow_local_files`] is set (the agent's development flag);
//! - a reference whose first path segment names a registry host, that is
//!   contains a `.` or a `:` or is `localhost` (`registry.example:5000/app:v1`,
//!   `localhost:5000/app@sha256:...`): that OCI registry. Loopback hosts
//!   (`localhost`, `127.0.0.0/8`, `[::1]`) are spoken to in plain HTTP, as
//!   Docker treats them as insecure registries; every other host in HTTPS
//!   with the system's roots. Access is anonymous;
//! - anything else (`hello:v1`, `team/app`): the control plane's built-in
//!   registry ([`ImageConfig::builtin_registry`]: HTTPS trusting the cluster
//!   CA only, bearer token). Without one configured such a reference fails.
//!
//! A reference without tag or digest means `:latest`. `name@sha256:<hex>`
//! pins the manifest: the registry is asked for that digest and the bytes
//! it sends must hash to it. `name:tag@sha256:<hex>` asks for the tag and
//! requires it to resolve to that digest ([`PullError::DigestMismatch`]
//! otherwise).
//!
//! Images are wasm OCI artifacts as wasm tooling pushes them (wkg,
//! wasm-pkg-tools, `oci-wasm`): an OCI image manifest whose config has a
//! `application/vnd.wasm.config.*` media type and whose one layer is
//! `application/wasm` (or `application/vnd.wasm.content.layer.v1+wasm`,
//! from older tooling). Anything else (a container image, an index) is
//! refused with [`PullError::NotAComponent`], naming the media types found.
//!
//! Pulled components are cached on disk by digest (see `cache.rs` for the
//! layout), each layer verified against its sha256 before it is renamed
//! into place, and re-verified when read: a corrupt entry is deleted and
//! pulled again. The cache also remembers what each reference resolved to,
//! so `IfNotPresent` and `Never` work with the registry down, and a node
//! restart or a second pod of the same image reads the cache. `Always`
//! asks the registry for the current manifest every time but downloads the
//! component only if its digest is not cached.

mod cache;
mod reference;
mod remote;

use std::path::PathBuf;
use std::sync::Arc;

use reference::Source;
pub use remote::{OCI_MANIFEST, WASM_CONFIG, WASM_LAYER, WASM_LAYER_LEGACY, push};

/// The control plane's built-in registry, as a node reaches it.
#[derive(Clone, Default)]
pub struct BuiltinRegistry {
    /// `https://HOST:PORT`, the API server's address.
    pub url: String,
    /// The cluster CA (PEM) that signs the API server's certificate; the
    /// only root trusted for this registry.
    pub ca_pem: Vec<u8>,
    /// The bearer token presented (the node token).
    pub token: String,
}

impl std::fmt::Debug for BuiltinRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinRegistry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How an agent resolves images.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// Where pulled components are cached, by digest.
    pub cache_dir: PathBuf,
    /// Accept `file://` and absolute-path images (development only).
    pub allow_local_files: bool,
    /// The control plane's built-in registry, for references that name no
    /// registry host (`hello:v1`); `None` makes those an error.
    pub builtin_registry: Option<BuiltinRegistry>,
}

/// A pod's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry for the current digest.
    Always,
    /// Use a cached copy when one exists.
    IfNotPresent,
    /// Never pull; fail if not cached.
    Never,
}

impl PullPolicy {
    /// The policy Kubernetes applies to `policy` for `image`: explicit
    /// values as given; unset means `Always` for `:latest` or untagged
    /// references, else `IfNotPresent`.
    pub fn for_image(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let name = image.rsplit('/').next().unwrap_or(image);
                if image.contains('@') || (name.contains(':') && !name.ends_with(":latest")) {
                    PullPolicy::IfNotPresent
                } else {
                    PullPolicy::Always
                }
            }
        }
    }
}

/// A component ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `sha256:<hex>` of the component's bytes (the layer digest).
    pub digest: String,
    /// The component file on disk.
    pub path: PathBuf,
}

/// Why an image could not be pulled; [`PullError::reason`] is the
/// container status reason the agent reports.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference could not be parsed.
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidName {
        /// The image as written in the pod.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image (or tag) does not exist.
    #[error("image {image:?} not found: {reason}")]
    NotFound {
        /// The image as written in the pod.
        image: String,
        /// What the registry or file system said.
        reason: String,
    },
    /// The bytes did not match the digest asked for or announced.
    #[error("image {image:?}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image as written in the pod.
        image: String,
        /// The digest the reference or manifest named.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// `imagePullPolicy: Never` and the image is not cached.
    #[error("image {image:?} is not present on the node and imagePullPolicy is Never")]
    NotPresent {
        /// The image as written in the pod.
        image: String,
    },
    /// The reference names something that is not a wasm component (a
    /// container image, an image index).
    #[error("image {image:?} is not a wasm component: found {found}")]
    NotAComponent {
        /// The image as written in the pod.
        image: String,
        /// The media types found.
        found: String,
    },
    /// Any other failure (network, registry error, disk).
    #[error("pulling image {image:?}: {reason}")]
    Failed {
        /// The image as written in the pod.
        image: String,
        /// What failed.
        reason: String,
    },
}

impl PullError {
    /// The container status reason: `InvalidImageName`,
    /// `ErrImageNeverPull` or `ErrImagePull`.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::InvalidName { .. } => "InvalidImageName",
            PullError::NotPresent { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// Resolves and caches images for one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Images {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    allow_local_files: bool,
    cache: cache::Cache,
    registries: remote::Registries,
}

impl Images {
    /// An image store caching under `config.cache_dir` (created on first
    /// pull).
    pub fn new(config: ImageConfig) -> Images {
        Images {
            inner: Arc::new(Inner {
                allow_local_files: config.allow_local_files,
                cache: cache::Cache::new(config.cache_dir),
                registries: remote::Registries::new(config.builtin_registry),
            }),
        }
    }

    /// Resolves `image` to a component on disk, pulling per `policy`.
    ///
    /// Local files ignore `policy`. For registry images: `Never` and
    /// `IfNotPresent` use what the reference last resolved to when that
    /// component is cached and intact; `Never` fails with
    /// [`PullError::NotPresent`] otherwise; `Always` (and a cache miss)
    /// asks the registry for the manifest, then downloads the component
    /// unless its digest is cached.
    pub async fn pull(&self, image: &str, policy: PullPolicy) -> Result<Pulled, PullError> {
        let source = reference::parse(image).map_err(|reason| PullError::InvalidName {
            image: image.to_owned(),
            reason,
        })?;
        match source {
            Source::Local(path) => self.local(image, path).await,
            Source::Registry(remote) => self.remote(image, &remote, policy).await,
        }
    }

    async fn local(&self, image: &str, path: PathBuf) -> Result<Pulled, PullError> {
        if !self.inner.allow_local_files {
            return Err(PullError::InvalidName {
                image: image.to_owned(),
                reason: "local file images need the agent's development flag".into(),
            });
        }
        let hashed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || cache::sha256_file(&path)).await
        };
        match hashed {
            Ok(Ok(digest)) => Ok(Pulled { digest, path }),
            Ok(Err(err)) => Err(PullError::NotFound {
                image: image.to_owned(),
                reason: format!("{}: {err}", path.display()),
            }),
            Err(err) => Err(PullError::Failed {
                image: image.to_owned(),
                reason: err.to_string(),
            }),
        }
    }

    async fn remote(
        &self,
        image: &str,
        remote: &reference::Remote,
        policy: PullPolicy,
    ) -> Result<Pulled, PullError> {
        let cache = &self.inner.cache;
        let disk = |err: std::io::Error| PullError::Failed {
            image: image.to_owned(),
            reason: format!("reading the image cache: {err}"),
        };
        let key = remote.cache_key();
        if policy != PullPolicy::Always {
            if let Some(entry) = cache.lookup(&key).await
                && let Some(path) = cache.verified(&entry.component).await.map_err(disk)?
            {
                return Ok(Pulled {
                    digest: entry.component,
                    path,
                });
            }
            if policy == PullPolicy::Never {
                return Err(PullError::NotPresent {
                    image: image.to_owned(),
                });
            }
        }
        let resolved = self.inner.registries.resolve(image, remote).await?;
        let digest = resolved.layer.digest.clone();
        let path = match cache.verified(&digest).await.map_err(disk)? {
            Some(path) => path,
            None => {
                let path = self
                    .inner
                    .registries
                    .download(image, remote, &resolved.layer, cache)
                    .await?;
                tracing::info!(image, %digest, "pulled image");
                path
            }
        };
        let entry = cache::Entry {
            manifest: resolved.manifest_digest.clone(),
            component: digest.clone(),
        };
        let keys = [key, remote.digest_key(&resolved.manifest_digest)];
        if let Err(err) = cache.record(&keys, &entry).await {
            // The component is in place; only offline reuse is lost.
            tracing::warn!(image, error = %err, "cannot record the image in the cache index");
        }
        Ok(Pulled { digest, path })
    }
}
