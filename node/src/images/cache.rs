//! The on-disk image cache.
//!
//! Layout under the cache directory:
//! - `components/sha256/<hex>.wasm`: component bytes, named by their digest;
//! - `refs.json`: which component (and manifest) each reference resolved to
//!   when last pulled, so `IfNotPresent` and `Never` work offline;
//! - `tmp/`: downloads in progress, renamed into place once verified.
//!
//! Every file is written to a temporary name and renamed, so a crash leaves
//! either the old file or the new one. A component is hashed before it is
//! first handed out, and again whenever its size or modification time has
//! changed since: a corrupt file is deleted and counts as absent.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

/// What a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Entry {
    /// The manifest digest.
    pub(super) manifest: String,
    /// The component (layer) digest.
    pub(super) component: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Index {
    refs: BTreeMap<String, Entry>,
}

/// Why a download could not be stored.
#[derive(Debug)]
pub(super) enum StoreError {
    /// The bytes hashed to `actual`.
    Mismatch {
        /// Their digest.
        actual: String,
    },
    /// More than the size limit arrived.
    TooLarge,
    /// The download stream failed.
    Stream(std::io::Error),
    /// The disk failed.
    Io(std::io::Error),
}

/// The cache of one agent.
#[derive(Debug)]
pub(super) struct Cache {
    dir: PathBuf,
    /// The index as last read or written; `None` until first used. Held
    /// across the write of `refs.json` so writers do not reorder.
    index: tokio::sync::Mutex<Option<Index>>,
    counter: AtomicU64,
    /// Digests whose file this process has hashed and found intact, with
    /// the file's size and modification time then: a pod start does not
    /// hash megabytes again unless the file has changed since.
    intact: parking_lot::Mutex<HashMap<String, Stamp>>,
}

impl Cache {
    pub(super) fn new(dir: PathBuf) -> Cache {
        Cache {
            dir,
            index: tokio::sync::Mutex::new(None),
            counter: AtomicU64::new(0),
            intact: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    /// Where the component with `digest` (`sha256:<hex>`) lives.
    pub(super) fn component_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join("components")
            .join("sha256")
            .join(format!("{hex}.wasm"))
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }

    async fn load(&self, slot: &mut Option<Index>) {
        if slot.is_some() {
            return;
        }
        let index = match tokio::fs::read(self.index_path()).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %self.index_path().display(), error = %err, "image cache index is corrupt; starting afresh");
                Index::default()
            }),
            Err(err) => {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.index_path().display(), error = %err, "cannot read the image cache index");
                }
                Index::default()
            }
        };
        *slot = Some(index);
    }

    /// What `key` resolved to when last pulled.
    pub(super) async fn lookup(&self, key: &str) -> Option<Entry> {
        let mut guard = self.index.lock().await;
        self.load(&mut guard).await;
        guard
            .as_ref()
            .and_then(|index| index.refs.get(key).cloned())
    }

    /// Remembers that each of `keys` resolved to `entry`, durably.
    pub(super) async fn record(&self, keys: &[String], entry: &Entry) -> std::io::Result<()> {
        let mut guard = self.index.lock().await;
        self.load(&mut guard).await;
        let index = guard.get_or_insert_with(Index::default);
        let mut changed = false;
        for key in keys {
            if index.refs.get(key) != Some(entry) {
                index.refs.insert(key.clone(), entry.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&*index).map_err(std::io::Error::other)?;
        self.write_atomically(&self.index_path(), &bytes).await
    }

    async fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let temp = self.temp_path();
        if let Some(parent) = temp.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
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

    /// The cached component with `digest`, if present and intact. A file
    /// whose bytes do not hash to its name is removed. A file is hashed
    /// once, and again only if its size or modification time changed.
    pub(super) async fn verified(&self, digest: &str) -> std::io::Result<Option<PathBuf>> {
        let path = self.component_path(digest);
        let stamp = match tokio::fs::metadata(&path).await {
            Ok(meta) => Stamp::of(&meta),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.intact.lock().remove(digest);
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        if stamp.is_some() && self.intact.lock().get(digest) == stamp.as_ref() {
            return Ok(Some(path));
        }
        // The stamp is taken before hashing: a change during the hash
        // shows as a different stamp next time.
        let hashed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sha256_file(&path))
                .await
                .map_err(std::io::Error::other)?
        };
        match hashed {
            Ok(actual) if actual == digest => {
                if let Some(stamp) = stamp {
                    self.intact.lock().insert(actual, stamp);
                }
                Ok(Some(path))
            }
            Ok(actual) => {
                self.intact.lock().remove(digest);
                tracing::warn!(path = %path.display(), expected = digest, %actual, "cached component is corrupt; pulling it again");
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(None),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(err) => Err(err),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes `stream` as the component `digest`, verifying its hash and
    /// that it is at most `max` bytes.
    pub(super) async fn store<S>(
        &self,
        digest: &str,
        max: u64,
        mut stream: S,
    ) -> Result<PathBuf, StoreError>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        let path = self.component_path(digest);
        let temp = self.temp_path();
        for dir in [temp.parent(), path.parent()].into_iter().flatten() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(StoreError::Io)?;
        }
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(StoreError::Io)?;
            let mut hasher = sha2::Sha256::new();
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(StoreError::Stream)?;
                written += chunk.len() as u64;
                if written > max {
                    return Err(StoreError::TooLarge);
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(StoreError::Io)?;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != digest {
                return Err(StoreError::Mismatch { actual });
            }
            file.sync_all().await.map_err(StoreError::Io)?;
            drop(file);
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(StoreError::Io)?;
            Ok(path)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }
}

/// What identifies a version of a file without reading it: its size and
/// modification time (`None` where the platform has no mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: std::time::SystemTime,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Option<Stamp> {
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

/// `sha256:<hex>` of a file's bytes.
pub(super) fn sha256_file(path: &Path) -> std::io::Result<String> {
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
}
