//! Images: a pod's `image` resolved to a verified wasm component on disk.
//!
//! [`Images::pull`] is the one entry point the agent uses. References are
//! resolved like this:
//! - `file:///abs/path.wasm` (or an absolute path): a local file, only when
//!   [`ImageConfig::allow_local_files`] is set (the agent's development flag);
//! - a reference whose first segment names a registry host
//!   (`registry.example:5000/app:v1`, `localhost:5000/app@sha256:...`): that
//!   OCI registry, wasm artifact layout;
//! - anything else (`hello:v1`, `team/app`): the control plane's built-in
//!   registry, the embedded default.
//!
//! Pulled components are cached on disk by digest, so a node restart or a
//! second pod of the same image reads the cache.

use std::path::PathBuf;

/// How an agent resolves images.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// Where pulled components are cached, by digest.
    pub cache_dir: PathBuf,
    /// Accept `file://` and absolute-path images (development only).
    pub allow_local_files: bool,
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
    config: std::sync::Arc<ImageConfig>,
}

impl Images {
    /// An image store caching under `config.cache_dir`.
    pub fn new(config: ImageConfig) -> Images {
        Images {
            config: std::sync::Arc::new(config),
        }
    }

    /// Resolves `image` to a component on disk, pulling per `policy`.
    pub async fn pull(&self, image: &str, policy: PullPolicy) -> Result<Pulled, PullError> {
        let _ = policy;
        let local = image.strip_prefix("file://").unwrap_or(image);
        if local.starts_with('/') {
            if !self.config.allow_local_files {
                return Err(PullError::InvalidName {
                    image: image.to_owned(),
                    reason: "local file images need the agent's development flag".into(),
                });
            }
            let bytes = tokio::fs::read(local).await.map_err(|e| PullError::NotFound {
                image: image.to_owned(),
                reason: e.to_string(),
            })?;
            use sha2::Digest;
            let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
            return Ok(Pulled {
                digest,
                path: PathBuf::from(local),
            });
        }
        Err(PullError::Failed {
            image: image.to_owned(),
            reason: "registry pulls are not implemented yet".into(),
        })
    }
}
