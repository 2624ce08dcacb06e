//! Named, checksummed snapshot files, replaced atomically so a crash leaves
//! either the old or the new snapshot, never a mix.
//!
//! Layout: `b"SYNODSNP"`, version u32 LE, payload len u64 LE, crc32 u32 LE,
//! payload.

use std::io;
use std::sync::Arc;

use thiserror::Error;
use tracing::{debug, warn};

use super::disk::Disk;

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"SYNODSNP";
pub const SNAPSHOT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot {path} corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("invalid snapshot name {0:?} (want [A-Za-z0-9_-]{{1,64}})")]
    BadName(String),
}

/// Counts and checksums what is written to it, keeping nothing.
#[derive(Default)]
struct Measure {
    length: u64,
    crc: crc32fast::Hasher,
}

impl io::Write for Measure {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.length += buf.len() as u64;
        self.crc.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes writes through, counting them.
struct Counted<'a> {
    inner: &'a mut dyn io::Write,
    length: u64,
}

impl io::Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.length += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: String,
}

fn check_name(name: &str) -> Result<(), SnapshotError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadName(name.to_string()))
    }
}

fn decode(path: &str, data: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    let corrupt = |reason: String| {
        warn!(path, %reason, "snapshot: corrupt");
        SnapshotError::Corrupt {
            path: path.to_string(),
            reason,
        }
    };
    let Some((header, payload)) = data.split_at_checked(HEADER_BYTES) else {
        return Err(corrupt(format!(
            "{} bytes is shorter than header",
            data.len()
        )));
    };
    let (magic, rest) = header.split_at(8);
    let (version, rest) = rest.split_at(4);
    let (len, crc) = rest.split_at(8);
    if magic != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let le32 = |b: &[u8]| b.try_into().map(u32::from_le_bytes).unwrap_or(0);
    let version = le32(version);
    if version != SNAPSHOT_VERSION {
        return Err(corrupt(format!("unsupported version {version}")));
    }
    let len = len.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX);
    if len != payload.len() as u64 {
        return Err(corrupt(format!(
            "header says {len} payload bytes, file has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != le32(crc) {
        return Err(corrupt("crc mismatch".into()));
    }
    Ok(payload.to_vec())
}

impl SnapshotStore {
    pub fn new(disk: Arc<dyn Disk>, dir: impl Into<String>) -> SnapshotStore {
        SnapshotStore {
            disk,
            dir: dir.into(),
        }
    }

    fn path(&self, name: &str) -> Result<String, SnapshotError> {
        check_name(name)?;
        Ok(if self.dir.is_empty() {
            format!("{name}.snap")
        } else {
            format!("{}/{name}.snap", self.dir)
        })
    }

    /// Durably replaces snapshot `name` with `payload`.
    pub fn save(&self, name: &str, payload: &[u8]) -> Result<(), SnapshotError> {
        let path = self.path(name)?;
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(SNAPSHOT_MAGIC);
        header.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.disk.write_atomic_parts(&path, &[&header, payload])?;
        debug!(path, bytes = payload.len(), "snapshot: saved");
        Ok(())
    }

    /// Durably replaces snapshot `name` with the payload `encode` writes,
    /// without holding it in memory: one pass counts and checksums it for
    /// the header, a second streams it to the file. `encode` must write the
    /// same bytes both times (it encodes an unchanging state).
    pub fn save_encoded(
        &self,
        name: &str,
        encode: &dyn Fn(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<u64, SnapshotError> {
        let path = self.path(name)?;
        let mut measure = Measure::default();
        encode(&mut measure)?;
        let (length, crc) = (measure.length, measure.crc.finalize());
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(SNAPSHOT_MAGIC);
        header.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        header.extend_from_slice(&length.to_le_bytes());
        header.extend_from_slice(&crc.to_le_bytes());
        self.disk.write_atomic_with(&path, &mut |out| {
            out.write_all(&header)?;
            let mut counted = Counted { inner: out, length: 0 };
            encode(&mut counted)?;
            if counted.length != length {
                return Err(io::Error::other(format!(
                    "snapshot encoder wrote {} bytes, then {length}: the state changed while saving",
                    counted.length
                )));
            }
            Ok(())
        })?;
        debug!(path, bytes = length, "snapshot: saved (streamed)");
        Ok(length)
    }

    /// `None` if absent; damage is an error, never treated as absence.
    pub fn load(&self, name: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        let path = self.path(name)?;
        match self.disk.read(&path) {
            Ok(data) => decode(&path, &data).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn remove(&self, name: &str) -> Result<(), SnapshotError> {
        let path = self.path(name)?;
        Ok(self.disk.remove(&path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::{FsDisk, MemDisk};

    #[test]
    fn save_load_remove() -> Result<(), SnapshotError> {
        let disk = MemDisk::new();
        let store = SnapshotStore::new(Arc::new(disk.clone()), "snapshots");
        assert_eq!(store.load("r1")?, None);
        store.save("r1", b"state one")?;
        store.save("r1", b"state two")?;
        disk.crash(); // write_atomic is durable
        assert_eq!(store.load("r1")?.as_deref(), Some(&b"state two"[..]));
        store.save("empty", b"")?;
        assert_eq!(store.load("empty")?, Some(Vec::new()));
        store.remove("r1")?;
        store.remove("r1")?;
        assert_eq!(store.load("r1")?, None);
        Ok(())
    }

    /// A streamed save reads back exactly as a buffered one, on both disks.
    #[test]
    fn a_streamed_save_equals_a_buffered_one() -> Result<(), SnapshotError> {
        let dir = tempfile::tempdir()?;
        let disks: [Arc<dyn Disk>; 2] = [
            Arc::new(MemDisk::new()),
            Arc::new(FsDisk::new(dir.path().to_path_buf())),
        ];
        let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for disk in disks {
            let store = SnapshotStore::new(disk.clone(), "snapshots");
            store.save("buffered", &payload)?;
            let written = store.save_encoded("streamed", &|out| {
                for chunk in payload.chunks(9_973) {
                    out.write_all(chunk)?;
                }
                Ok(())
            })?;
            assert_eq!(written, payload.len() as u64);
            assert_eq!(
                disk.read("snapshots/streamed.snap")?,
                disk.read("snapshots/buffered.snap")?
            );
            assert_eq!(store.load("streamed")?.as_deref(), Some(&payload[..]));
        }
        Ok(())
    }

    /// An encoder that writes differently the second time (its state
    /// changed) fails the save and leaves the previous snapshot.
    #[test]
    fn an_encoder_that_changes_between_passes_fails_the_save() -> Result<(), SnapshotError> {
        let disk = MemDisk::new();
        let store = SnapshotStore::new(Arc::new(disk.clone()), "snapshots");
        store.save("r1", b"previous")?;
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let result = store.save_encoded("r1", &|out| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            out.write_all(&vec![1u8; 10 + n])
        });
        assert!(
            matches!(&result, Err(SnapshotError::Io(e)) if e.to_string().contains("state changed")),
            "{result:?}"
        );
        assert_eq!(store.load("r1")?.as_deref(), Some(&b"previous"[..]));
        Ok(())
    }

    #[test]
    fn corruption_is_reported() -> Result<(), SnapshotError> {
        let disk = MemDisk::new();
        let store = SnapshotStore::new(Arc::new(disk.clone()), "snapshots");
        let path = "snapshots/r1.snap";
        // (offset to flip, expected reason fragment)
        for (offset, reason) in [
            (0, "magic"),
            (9, "version"),
            (13, "payload bytes"),
            (30, "crc"),
        ] {
            store.save("r1", b"some payload bytes")?;
            disk.corrupt(path, offset, 0x04)?;
            match store.load("r1") {
                Err(SnapshotError::Corrupt { path: p, reason: r }) => {
                    assert_eq!(p, path);
                    assert!(r.contains(reason), "{r:?} lacks {reason:?}");
                }
                other => panic!("offset {offset}: expected Corrupt, got {other:?}"),
            }
        }
        disk.write_atomic(path, b"SYNODSNP")?;
        assert!(matches!(
            store.load("r1"),
            Err(SnapshotError::Corrupt { .. })
        ));
        Ok(())
    }

    #[test]
    fn bad_names_are_rejected() {
        let store = SnapshotStore::new(Arc::new(MemDisk::new()), "snapshots");
        let long = "x".repeat(65);
        for bad in ["", "../x", "a/b", "a.b", "sp ace", long.as_str()] {
            assert!(matches!(
                store.save(bad, b"x"),
                Err(SnapshotError::BadName(_))
            ));
            assert!(matches!(store.load(bad), Err(SnapshotError::BadName(_))));
        }
        assert!(store.save(&"y".repeat(64), b"x").is_ok());
    }

    #[test]
    fn fsdisk_smoke() -> Result<(), SnapshotError> {
        let tmp = tempfile::tempdir()?;
        let store = SnapshotStore::new(Arc::new(FsDisk::new(tmp.path().to_path_buf())), "snaps");
        store.save("r_1-a", b"hello")?;
        assert_eq!(store.load("r_1-a")?.as_deref(), Some(&b"hello"[..]));
        assert_eq!(store.load("missing")?, None);
        Ok(())
    }
}
