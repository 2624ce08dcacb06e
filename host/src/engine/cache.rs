//! The on-disk compile cache. Deserializing precompiled code is `unsafe`:
//! wasmtime trusts the bytes and runs them as machine code, so a damaged
//! or swapped artifact can crash the node or run wrong code.
//!
//! Layout: `<name>.cwasm` is exactly what wasmtime produced (so it can be
//! mapped, not copied: `Component::deserialize_file`), and `<name>.cwasm.sum`
//! is its seal, written atomically after it: `[magic "SYNODCS2"][artifact
//! length u64][sha256 32][crc32 u32][device u64][inode u64][mtime s i64, ns
//! u32][ctime s i64, ns u32][crc32 of the preceding bytes u32]`, all LE.
//!
//! The trust rule. The full sha256 is computed when the node writes the
//! artifact. A later load trusts the file without hashing it again only if
//! the file is still the very file the node wrote: same device, inode,
//! size, mtime and ctime as recorded at write time. Every way to change or
//! replace a file through the file system (write, truncate, rename over it,
//! copy, `touch`, restore from a backup) gives it a new inode or a new
//! ctime, and ctime cannot be set by a user (only by the kernel, to the
//! clock's now), so a swapped file never passes. What metadata cannot see,
//! damage below the file system (bit rot, a torn sector), is caught by the
//! crc32 of the contents, checked on every load (about 20x cheaper than
//! sha256). A file that fails the metadata check is not refused outright:
//! its full sha256 is checked, and if it matches (a restored backup) the
//! seal is rewritten for its new metadata. Anything else (no seal, bad
//! seal, size, crc or sha256 mismatch) deletes both files and the caller
//! recompiles. As with the WAL, this guards against damage and accidental
//! swaps, not against an adversary who can write the data directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"SYNODCS2";
const SEAL_BYTES: usize = 8 + 8 + 32 + 4 + 8 + 8 + 12 + 12 + 4;

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
    /// Hits whose file had been touched since it was written (metadata
    /// changed) and was trusted again after a full sha256 check.
    pub rehashed: AtomicU64,
}

/// A copy of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStatsSnapshot {
    pub hits: u64,
    pub rejected: u64,
    pub writes: u64,
    pub rehashed: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> CacheStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStatsSnapshot {
            hits: get(&self.hits),
            rejected: get(&self.rejected),
            writes: get(&self.writes),
            rehashed: get(&self.rehashed),
        }
    }
}

/// The file-system identity of a file, as recorded in its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt as _;
    let nanos = |n: i64| u32::try_from(n).unwrap_or(0);
    Identity {
        device: meta.dev(),
        inode: meta.ino(),
        mtime: (meta.mtime(), nanos(meta.mtime_nsec())),
        ctime: (meta.ctime(), nanos(meta.ctime_nsec())),
    }
}

/// What a seal records about its artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seal {
    length: u64,
    sha256: [u8; 32],
    crc: u32,
    identity: Identity,
}

impl Seal {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.identity.device.to_le_bytes());
        out.extend_from_slice(&self.identity.inode.to_le_bytes());
        for (seconds, nanos) in [self.identity.mtime, self.identity.ctime] {
            out.extend_from_slice(&seconds.to_le_bytes());
            out.extend_from_slice(&nanos.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Seal, String> {
        if bytes.len() != SEAL_BYTES || &bytes[..8] != MAGIC {
            return Err("no seal (truncated, or written by an older build)".into());
        }
        let (body, crc) = bytes.split_at(SEAL_BYTES - 4);
        let mut at = 8;
        let mut take = |n: usize| {
            let field = &body[at..at + n];
            at += n;
            field
        };
        let u64_of = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or(0);
        let u32_of = |b: &[u8]| b.try_into().map(u32::from_le_bytes).unwrap_or(0);
        let i64_of = |b: &[u8]| b.try_into().map(i64::from_le_bytes).unwrap_or(0);
        let length = u64_of(take(8));
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(take(32));
        let crc_field = u32_of(take(4));
        let device = u64_of(take(8));
        let inode = u64_of(take(8));
        let mtime = (i64_of(take(8)), u32_of(take(4)));
        let ctime = (i64_of(take(8)), u32_of(take(4)));
        if crc32fast::hash(body) != u32_of(crc) {
            return Err("the seal's own checksum does not match".into());
        }
        Ok(Seal {
            length,
            sha256,
            crc: crc_field,
            identity: Identity {
                device,
                inode,
                mtime,
                ctime,
            },
        })
    }
}

/// The seal file of the artifact at `path`.
fn seal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sum");
    PathBuf::from(name)
}

/// How a cache entry checked out.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The file the node wrote, unchanged (metadata and crc32 match).
    Unchanged,
    /// Touched since (metadata differ) but its sha256 matches the seal:
    /// the seal was rewritten for the file as it is now.
    Rehashed,
}

/// Checks the artifact at `path` against its seal (see the module doc).
/// `Ok(None)`: no entry. `Err`: refused, with the reason.
fn check(path: &Path) -> Result<Option<Verified>, String> {
    let seal_bytes = match std::fs::read(seal_path(path)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match std::fs::metadata(path) {
                Ok(_) => Err("no seal (truncated, or written by an older build)".into()),
                Err(_) => Ok(None),
            };
        }
        Err(e) => return Err(format!("seal unreadable: {e}")),
    };
    let seal = Seal::decode(&seal_bytes)?;
    let file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("a seal without its artifact".into());
        }
        Err(e) => return Err(format!("artifact unreadable: {e}")),
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("artifact unreadable: {e}"))?;
    if file.len() as u64 != seal.length || meta.len() != seal.length {
        return Err(format!(
            "artifact is {} bytes, its seal says {}",
            file.len(),
            seal.length
        ));
    }
    if crc32fast::hash(&file) != seal.crc {
        return Err("crc32 mismatch".into());
    }
    if identity(&meta) == seal.identity {
        return Ok(Some(Verified::Unchanged));
    }
    if Sha256::digest(&file).as_slice() != seal.sha256 {
        return Err("the file changed since it was written (sha256 mismatch)".into());
    }
    let renewed = Seal {
        identity: identity(&meta),
        ..seal
    };
    write_atomic(&seal_path(path), &renewed.encode())
        .map_err(|e| format!("rewriting the seal: {e}"))?;
    Ok(Some(Verified::Rehashed))
}

/// Whether the artifact at `path` may be deserialized: `true` after it
/// passed the trust rule (counted as a rehash if it needed the full
/// sha256). A refused entry is deleted, logged and counted.
pub fn verified(path: &Path, stats: &CacheStats) -> bool {
    match check(path) {
        Ok(None) => false,
        Ok(Some(outcome)) => {
            if outcome == Verified::Rehashed {
                stats.rehashed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "compile cache entry changed since written; its sha256 matches, trusted again");
            }
            true
        }
        Err(reason) => {
            reject(path, &reason, stats);
            false
        }
    }
}

/// Logs, counts and deletes a cache entry (and its seal) that must not be
/// used.
pub fn reject(path: &Path, reason: &str, stats: &CacheStats) {
    stats.rejected.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(path = %path.display(), %reason, "damaged compile cache entry: deleting it and recompiling");
    for file in [seal_path(path), path.to_path_buf()] {
        if let Err(error) = std::fs::remove_file(&file)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %file.display(), %error, "could not delete a damaged compile cache entry");
        }
    }
}

/// Deletes temporary files a crash left in the cache directory.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.to_str().is_some_and(|p| p.ends_with(".tmp"))
            && let Err(error) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), %error, "could not delete a stale compile cache file");
        }
    }
}

/// Temporary file, fsync, rename, directory fsync.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `artifact` and then its seal (its sha256, crc32 and the
/// identity the written file has), each atomically. A crash between the
/// two leaves an artifact without a seal, which is refused and rebuilt.
pub fn write(path: &Path, artifact: &[u8], stats: &CacheStats) -> std::io::Result<()> {
    write_atomic(path, artifact)?;
    let meta = std::fs::metadata(path)?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&Sha256::digest(artifact));
    let seal = Seal {
        length: artifact.len() as u64,
        sha256,
        crc: crc32fast::hash(artifact),
        identity: identity(&meta),
    };
    write_atomic(&seal_path(path), &seal.encode())?;
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

    fn counts(stats: CacheStatsSnapshot) -> (u64, u64, u64, u64) {
        (stats.hits, stats.rejected, stats.writes, stats.rehashed)
    }

    /// Re-records `path`'s current identity in its seal, keeping the
    /// checksums: what bit rot below the file system looks like (the
    /// contents changed, the metadata did not).
    fn forge_identity(path: &Path) -> std::io::Result<()> {
        let seal = Seal::decode(&std::fs::read(seal_path(path))?).map_err(std::io::Error::other)?;
        let forged = Seal {
            identity: identity(&std::fs::metadata(path)?),
            ..seal
        };
        std::fs::write(seal_path(path), forged.encode())
    }

    /// Goal: a damaged entry is never deserialized. Every byte flip is
    /// caught (by the metadata and sha256 after a write, by the crc32 when
    /// the metadata were kept, as bit rot would), as are truncation, a
    /// missing or damaged seal and the old single-file layout; each is
    /// deleted and rebuilt.
    #[test]
    fn damaged_cache_entries_are_verified_deleted_and_rebuilt()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let first = load_fresh(dir)?;
        assert_eq!(counts(first), (0, 0, 1, 0));
        let path = cache_file(dir)?;
        let good = std::fs::read(&path)?;
        assert_eq!(check(&path), Ok(Some(Verified::Unchanged)));
        assert_eq!(counts(load_fresh(dir)?), (1, 0, 0, 0));

        let len = good.len();
        for offset in [0, 9, 20, 100, len / 3, len / 2, len - 1] {
            for keep_identity in [false, true] {
                let mut bad = good.clone();
                bad[offset] ^= 0x5a;
                std::fs::write(&path, &bad)?;
                if keep_identity {
                    forge_identity(&path)?;
                }
                let stats = load_fresh(dir)?;
                assert_eq!(counts(stats), (0, 1, 1, 0), "offset {offset}");
                assert_eq!(
                    check(&path),
                    Ok(Some(Verified::Unchanged)),
                    "rewritten after offset {offset}"
                );
            }
        }
        // Truncated; an empty file; a seal that is damaged or missing; the
        // old layout (a header before the artifact, no seal).
        let seal = std::fs::read(seal_path(&path))?;
        let mut damaged_seal = seal.clone();
        damaged_seal[30] ^= 1;
        let mut old_layout = b"SYNODCW1".to_vec();
        old_layout.extend_from_slice(&(len as u64).to_le_bytes());
        old_layout.extend_from_slice(&Sha256::digest(&good));
        old_layout.extend_from_slice(&good);
        for (artifact, seal) in [
            (good[..len / 2].to_vec(), Some(seal.clone())),
            (Vec::new(), Some(seal.clone())),
            (good.clone(), Some(damaged_seal)),
            (good.clone(), None),
            (old_layout, None),
        ] {
            std::fs::write(&path, &artifact)?;
            match seal {
                Some(seal) => std::fs::write(seal_path(&path), seal)?,
                None => std::fs::remove_file(seal_path(&path))?,
            }
            assert_eq!(counts(load_fresh(dir)?), (0, 1, 1, 0));
        }
        assert_eq!(std::fs::read(&path)?, good);
        // A temporary file from an interrupted write is cleaned up.
        let stale = path.with_extension("cwasm.tmp");
        std::fs::write(&stale, b"partial")?;
        load_fresh(dir)?;
        assert!(!stale.exists());
        Ok(())
    }

    /// Goal: a file the node wrote is trusted without a sha256 pass only
    /// while it is the same file; a copy of it (a restored backup: same
    /// bytes, new inode and ctime) is hashed once, trusted, and its seal
    /// renewed, so the next load is fast again.
    #[test]
    fn an_intact_copy_is_hashed_once_and_trusted_again() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        load_fresh(dir)?;
        let path = cache_file(dir)?;
        let bytes = std::fs::read(&path)?;
        let copy = path.with_extension("copy");
        std::fs::write(&copy, &bytes)?;
        std::fs::rename(&copy, &path)?;
        assert_eq!(counts(load_fresh(dir)?), (1, 0, 0, 1));
        assert_eq!(check(&path), Ok(Some(Verified::Unchanged)));
        assert_eq!(counts(load_fresh(dir)?), (1, 0, 0, 0));
        Ok(())
    }
}
