//! The on-disk cache of compiled components.
//!
//! Compiling a component takes from tens of milliseconds to seconds; loading a
//! compiled artifact takes well under a millisecond. Artifacts are keyed by
//! the sha256 of the component's bytes, in a directory per engine
//! compatibility hash (wasmtime version, target, compiler settings), so a
//! restart or another process on the same node skips compilation, and an
//! upgraded engine never loads an artifact it cannot run.
//!
//! Each entry is `MAGIC`, the sha256 of the artifact, then the artifact. The
//! checksum is verified before the artifact is handed to wasmtime, which
//! trusts precompiled code: a truncated or corrupted entry is detected,
//! removed and rebuilt, never loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"SKIFFCW1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

/// What the cache held for a digest.
pub(crate) enum Lookup {
    /// A verified artifact.
    Hit(Component),
    /// Nothing stored.
    Miss,
    /// An entry that failed verification; it has been removed.
    Corrupt(String),
}

impl DiskCache {
    /// Opens (creating) the cache under `root` for `engine`.
    pub(crate) fn open(root: &Path, engine: &Engine) -> Result<DiskCache> {
        // `DefaultHasher::new()` uses fixed keys, so the hash is stable
        // across processes of the same build, which is all a key needs.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(DiskCache { dir })
    }

    /// The file that holds (or would hold) the artifact for `digest`.
    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// Loads the artifact for `digest`, verifying its checksum first.
    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Result<Lookup> {
        let path = self.path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(source) => return Err(Error::Cache { path, source }),
        };
        let problem = match verify(&bytes) {
            Ok(artifact) => match deserialize(engine, artifact) {
                Ok(component) => return Ok(Lookup::Hit(component)),
                Err(err) => format!("wasmtime rejected it: {err:#}"),
            },
            Err(problem) => problem.to_string(),
        };
        std::fs::remove_file(&path).map_err(|source| Error::Cache {
            path: path.clone(),
            source,
        })?;
        Ok(Lookup::Corrupt(problem))
    }

    /// Stores `artifact` for `digest`: written to a temporary file, synced,
    /// then renamed into place, so readers see a whole entry or none.
    pub(crate) fn put(&self, digest: &str, artifact: &[u8]) -> Result<()> {
        let path = self.path(digest);
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.tmp", std::process::id()));
        let io = |source| Error::Cache {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(MAGIC).map_err(io)?;
        file.write_all(&Sha256::digest(artifact)).map_err(io)?;
        file.write_all(artifact).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// Checks the header and checksum; returns the artifact.
fn verify(bytes: &[u8]) -> Result<&[u8], &'static str> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("bad header (truncated or not a Skiff cache entry)");
    }
    let (sum, artifact) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(artifact).as_slice() != sum {
        return Err("checksum mismatch");
    }
    Ok(artifact)
}

#[expect(
    unsafe_code,
    reason = "wasmtime runs precompiled code as it is; this is the one place it is loaded"
)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was produced by `Engine::precompile_component` on an
    // engine with the same compatibility hash (the cache directory is keyed by
    // it), and its sha256 was verified just now against the checksum written
    // with it, so it is exactly what this process or an earlier one wrote.
    // The cache directory belongs to the node; anyone able to write there can
    // already run code as the node.
    unsafe { Component::deserialize(engine, artifact) }
}

/// The lowercase hex sha256 of `bytes`: a component's content digest.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
