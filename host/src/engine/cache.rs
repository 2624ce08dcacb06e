//! The on-disk compile cache. Deserializing precompiled code is `unsafe`:
//! wasmtime trusts the bytes and runs them as machine code, so a damaged
//! artifact can crash the node or run wrong code. Each artifact is therefore
//! stored with its sha256, written atomically, and verified before it is
//! deserialized; a file that fails the check is logged, deleted and
//! rebuilt by the caller.
//!
//! File layout: `[magic "SYNODCW1"][artifact length u64 LE][sha256 32 bytes][artifact]`.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"SYNODCW1";
const HEADER_BYTES: usize = 8 + 8 + 32;

/// Counters of cache outcomes since the engine started.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Verified artifacts that deserialized.
    pub hits: AtomicU64,
    /// Entries refused (bad checksum, truncated, old layout, or refused by
    /// wasmtime after verification) and deleted.
    pub rejected: AtomicU64,
    /// Artifacts written.
    pub writes: AtomicU64,
}

/// A copy of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStatsSnapshot {
    pub hits: u64,
    pub rejected: u64,
    pub writes: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> CacheStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStatsSnapshot {
            hits: get(&self.hits),
            rejected: get(&self.rejected),
            writes: get(&self.writes),
        }
    }
}

/// Why a cache file was refused.
fn verify(file: &[u8]) -> Result<&[u8], String> {
    if file.len() < HEADER_BYTES || &file[..8] != MAGIC {
        return Err("no checksum header (truncated, or written by an older build)".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&file[8..16]);
    let len = u64::from_le_bytes(len);
    let artifact = &file[HEADER_BYTES..];
    if artifact.len() as u64 != len {
        return Err(format!(
            "artifact is {} bytes, its header says {len}",
            artifact.len()
        ));
    }
    if Sha256::digest(artifact).as_slice() != &file[16..HEADER_BYTES] {
        return Err("sha256 mismatch".into());
    }
    Ok(artifact)
}

/// The verified artifact at `path`, or `None` (missing, or refused: then
/// the file is deleted and the refusal logged and counted).
pub fn read_verified(path: &Path, stats: &CacheStats) -> Option<Vec<u8>> {
    let mut file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "compile cache entry unreadable; recompiling");
            return None;
        }
    };
    match verify(&file) {
        Ok(_) => {
            file.drain(..HEADER_BYTES);
            Some(file)
        }
        Err(reason) => {
            reject(path, &reason, stats);
            None
        }
    }
}

/// Logs, counts and deletes a cache entry that must not be used.
pub fn reject(path: &Path, reason: &str, stats: &CacheStats) {
    stats.rejected.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(path = %path.display(), %reason, "damaged compile cache entry: deleting it and recompiling");
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not delete a damaged compile cache entry");
    }
}

/// Deletes temporary files a crash left in the cache directory.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.to_str().is_some_and(|p| p.ends_with(".cwasm.tmp"))
            && let Err(error) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), %error, "could not delete a stale compile cache file");
        }
    }
}

/// Writes `artifact` with its checksum atomically: temporary file, fsync,
/// rename, directory fsync.
pub fn write(path: &Path, artifact: &[u8], stats: &CacheStats) -> std::io::Result<()> {
    let tmp = path.with_extension("cwasm.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(artifact.len() as u64).to_le_bytes())?;
        f.write_all(&Sha256::digest(artifact))?;
        f.write_all(artifact)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    stats.writes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{PluginEngine, SandboxLimits};
    use super::*;

    fn cache_file(dir: &Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .ok_or_else(|| std::io::Error::other("no cache file"))
    }

    /// A fresh engine (empty in-memory cache) loads the component and it works.
    fn load_fresh(dir: &Path) -> Result<CacheStatsSnapshot, Box<dyn std::error::Error>> {
        let engine = PluginEngine::new(SandboxLimits::default(), Some(dir.to_path_buf()))?;
        let loaded = engine.load(synod_plugin_artifacts::STANDALONE_WASM)?;
        assert_eq!(loaded.info.name, "standalone");
        let mut instance = engine.instantiate(&loaded)?;
        assert_eq!(instance.info()?.name, "standalone");
        Ok(engine.cache_stats())
    }

    #[test]
    fn damaged_cache_entries_are_verified_deleted_and_rebuilt()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let first = load_fresh(dir)?;
        assert_eq!((first.hits, first.rejected, first.writes), (0, 0, 1));
        let path = cache_file(dir)?;
        let good = std::fs::read(&path)?;
        assert!(verify(&good).is_ok());
        let hit = load_fresh(dir)?;
        assert_eq!((hit.hits, hit.rejected, hit.writes), (1, 0, 0));

        let len = good.len();
        for offset in [
            0,
            9,
            20,
            HEADER_BYTES,
            HEADER_BYTES + 100,
            len / 3,
            len / 2,
            len - 1,
        ] {
            let mut bad = good.clone();
            bad[offset] ^= 0x5a;
            std::fs::write(&path, &bad)?;
            let stats = load_fresh(dir)?;
            assert_eq!(
                (stats.hits, stats.rejected, stats.writes),
                (0, 1, 1),
                "offset {offset}"
            );
            assert!(
                verify(&std::fs::read(&path)?).is_ok(),
                "rewritten after offset {offset}"
            );
        }
        // Truncated, and the old layout without a checksum.
        for bad in [
            good[..len / 2].to_vec(),
            good[HEADER_BYTES..].to_vec(),
            Vec::new(),
        ] {
            std::fs::write(&path, &bad)?;
            let stats = load_fresh(dir)?;
            assert_eq!((stats.hits, stats.rejected, stats.writes), (0, 1, 1));
        }
        assert_eq!(std::fs::read(&path)?.len(), len);
        // A temporary file from an interrupted write is cleaned up.
        let stale = path.with_extension("cwasm.tmp");
        std::fs::write(&stale, b"partial")?;
        load_fresh(dir)?;
        assert!(!stale.exists());
        Ok(())
    }
}
