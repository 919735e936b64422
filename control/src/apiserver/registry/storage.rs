//! The built-in registry's files.
//!
//! Layout under `<data_dir>/registry`:
//! - `blobs/sha256/<hex>`: every blob and manifest, by digest;
//! - `repositories/<name>/_manifests/revisions/sha256/<hex>`: the manifest
//!   `<hex>` belongs to the repository; the file holds its media type;
//! - `repositories/<name>/_manifests/tags/<tag>`: the digest the tag names;
//! - `uploads/<id>`: blob uploads in progress;
//! - `tmp/`: files being written, renamed into place when complete.
//!
//! Repository path components start with a letter or digit, so `_manifests`
//! never collides with a nested repository name. Blobs are shared by all
//! repositories (any authenticated reader can fetch a blob by digest).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

/// The registry's storage.
#[derive(Debug)]
pub(crate) struct Storage {
    root: PathBuf,
    counter: AtomicU64,
}

/// `sha256:<hex>` with 64 lowercase hex digits, as `hex`.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Whether `name` is a repository name the distribution spec allows:
/// path components of lowercase letters and digits separated by `.`, `_`,
/// `__` or runs of `-`.
pub(crate) fn valid_name(name: &str) -> bool {
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|&x| {
                x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
            })
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && !c.contains("..")
            && !c.contains("___")
    };
    name.len() <= 255 && name.split('/').all(component)
}

/// Whether `tag` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// An upload id: what [`Storage::start_upload`] makes (32 hex digits).
fn valid_upload(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Storage {
    /// Storage under `root`, creating its directories. Uploads left by a
    /// previous run are discarded.
    pub(crate) fn open(root: PathBuf) -> std::io::Result<Storage> {
        let _ = std::fs::remove_dir_all(root.join("uploads"));
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        for dir in ["blobs/sha256", "repositories", "uploads", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Storage {
            root,
            counter: AtomicU64::new(0),
        })
    }

    /// The file of the blob `digest` (which must be valid).
    pub(crate) fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|hex| self.root.join("blobs/sha256").join(hex))
    }

    fn repository(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn revision_path(&self, name: &str, hex: &str) -> PathBuf {
        self.repository(name)
            .join("_manifests/revisions/sha256")
            .join(hex)
    }

    fn tag_path(&self, name: &str, tag: &str) -> PathBuf {
        self.repository(name).join("_manifests/tags").join(tag)
    }

    /// A fresh temporary file name under `tmp/`.
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", uuid::Uuid::new_v4().simple()))
    }

    /// Whether the repository has ever had a manifest pushed.
    pub(crate) async fn repository_exists(&self, name: &str) -> bool {
        tokio::fs::metadata(self.repository(name).join("_manifests"))
            .await
            .is_ok_and(|m| m.is_dir())
    }

    /// The size of blob `digest`, if stored.
    pub(crate) async fn blob_size(&self, digest: &str) -> Option<u64> {
        let path = self.blob_path(digest)?;
        tokio::fs::metadata(path)
            .await
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Writes `bytes` to `path` through a temporary file and a rename.
    async fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let temp = self.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Moves a complete, verified file into the blob store as `digest`.
    pub(crate) async fn commit_blob(&self, file: &Path, digest: &str) -> std::io::Result<()> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| std::io::Error::other("invalid digest"))?;
        tokio::fs::rename(file, path).await
    }

    /// Starts an upload; returns its id.
    pub(crate) async fn start_upload(&self) -> std::io::Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        tokio::fs::File::create(self.root.join("uploads").join(&id)).await?;
        Ok(id)
    }

    /// The file of upload `id`, if it exists.
    pub(crate) async fn upload_path(&self, id: &str) -> Option<PathBuf> {
        if !valid_upload(id) {
            return None;
        }
        let path = self.root.join("uploads").join(id);
        tokio::fs::metadata(&path).await.ok()?;
        Some(path)
    }

    /// Stores a manifest in repository `name`, and tags it when `tag` is
    /// given.
    pub(crate) async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        digest: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let hex = digest_hex(digest).ok_or_else(|| std::io::Error::other("invalid digest"))?;
        let blob = self.root.join("blobs/sha256").join(hex);
        if tokio::fs::metadata(&blob).await.is_err() {
            self.write_atomically(&blob, bytes).await?;
        }
        self.write_atomically(&self.revision_path(name, hex), media_type.as_bytes())
            .await?;
        if let Some(tag) = tag {
            self.write_atomically(&self.tag_path(name, tag), digest.as_bytes())
                .await?;
        }
        Ok(())
    }

    /// The digest `reference` (a tag or a digest) names in `name`.
    pub(crate) async fn resolve(&self, name: &str, reference: &str) -> Option<String> {
        if let Some(hex) = digest_hex(reference) {
            tokio::fs::metadata(self.revision_path(name, hex))
                .await
                .ok()?;
            return Some(reference.to_owned());
        }
        if !valid_tag(reference) {
            return None;
        }
        let digest = tokio::fs::read_to_string(self.tag_path(name, reference))
            .await
            .ok()?;
        let digest = digest.trim().to_owned();
        digest_hex(&digest)?;
        Some(digest)
    }

    /// The manifest `digest` of `name`: its media type and bytes.
    pub(crate) async fn manifest(&self, name: &str, digest: &str) -> Option<(String, Vec<u8>)> {
        let hex = digest_hex(digest)?;
        let media_type = tokio::fs::read_to_string(self.revision_path(name, hex))
            .await
            .ok()?;
        let bytes = tokio::fs::read(self.root.join("blobs/sha256").join(hex))
            .await
            .ok()?;
        // Blobs are verified before they are stored; a file that no longer
        // hashes to its name is damaged and not served.
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        if actual != hex {
            tracing::warn!(%digest, "stored manifest is corrupt");
            return None;
        }
        Some((media_type.trim().to_owned(), bytes))
    }

    /// Removes manifest `digest` from `name`, with every tag naming it.
    /// Returns whether it was there. The blob itself stays (another
    /// repository may share it).
    pub(crate) async fn delete_manifest(&self, name: &str, digest: &str) -> std::io::Result<bool> {
        let Some(hex) = digest_hex(digest) else {
            return Ok(false);
        };
        match tokio::fs::remove_file(self.revision_path(name, hex)).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        }
        for tag in self.tags(name).await? {
            if self.resolve(name, &tag).await.as_deref() == Some(digest) {
                self.delete_tag(name, &tag).await?;
            }
        }
        Ok(true)
    }

    /// Removes tag `tag` of `name`; returns whether it existed.
    pub(crate) async fn delete_tag(&self, name: &str, tag: &str) -> std::io::Result<bool> {
        if !valid_tag(tag) {
            return Ok(false);
        }
        match tokio::fs::remove_file(self.tag_path(name, tag)).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The tags of `name`, sorted.
    pub(crate) async fn tags(&self, name: &str) -> std::io::Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut dir = match tokio::fs::read_dir(self.repository(name).join("_manifests/tags")).await
        {
            Ok(dir) => dir,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(tags),
            Err(err) => return Err(err),
        };
        while let Some(entry) = dir.next_entry().await? {
            if let Some(tag) = entry.file_name().to_str()
                && valid_tag(tag)
            {
                tags.push(tag.to_owned());
            }
        }
        tags.sort();
        Ok(tags)
    }
}

/// `sha256:<hex>` of a file, read in chunks off the async runtime.
pub(crate) async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(valid_name("hello"));
        assert!(valid_name("team/app-1"));
        assert!(valid_name("a.b_c/d__e"));
        assert!(!valid_name("Hello"));
        assert!(!valid_name("a/_manifests"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("a//b"));
        assert!(valid_tag("v1.0_rc-1"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag("a/b"));
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(digest_hex("sha256:../../x").is_none());
    }
}
