//! The [`Disk`] abstraction: the few file operations the WAL and snapshot
//! store need, with explicit durability points, so that crash behaviour can be
//! simulated exactly by [`MemDisk`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// File storage rooted in one directory. Paths are relative `/`-separated
/// names; absolute paths and `.`/`..` components are rejected so a caller can
/// never escape the root.
pub trait Disk: Send + Sync + 'static {
    /// File names (not paths) directly in `dir`, sorted; empty if `dir` is missing.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Whole content as the OS currently shows it (synced or not).
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    /// Appends without syncing; creates the file and its parent dirs if missing.
    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable, including a new file's dir entry.
    fn sync(&self, path: &str) -> io::Result<()>;
    /// Cuts the file to `len` bytes and makes that durable.
    fn truncate(&self, path: &str, len: u64) -> io::Result<()>;
    /// Replaces `path` all-or-nothing and durably. Uses `{path}.tmp` as the
    /// staging name, so callers may delete stale `*.tmp` files after a crash.
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// `write_atomic` of the concatenation of `parts`, without building it:
    /// a large image (a snapshot) is not copied once more just to prepend
    /// a header (each copy of megabytes costs page faults).
    fn write_atomic_parts(&self, path: &str, parts: &[&[u8]]) -> io::Result<()> {
        self.write_atomic(path, &parts.concat())
    }
    /// `write_atomic` of whatever `fill` writes, streamed to the file: a
    /// large image (a snapshot encoded on the fly) is never held in memory
    /// whole.
    fn write_atomic_with(
        &self,
        path: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut bytes = Vec::new();
        fill(&mut bytes)?;
        self.write_atomic(path, &bytes)
    }
    /// Deletes the file; a missing file is not an error.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Deletes a file nothing reads any more, possibly later and off the
    /// caller's thread: deleting a large file can take tens of
    /// milliseconds. The caller must cope with finding it after a crash.
    fn remove_superseded(&self, path: &str) -> io::Result<()> {
        self.remove(path)
    }
}

/// Rejects paths that could escape the root or are not plain relative names.
pub fn validate_path(path: &str) -> io::Result<()> {
    // Split by hand: `Path::components` would silently normalise `a/./b` and
    // `a//b`, which MemDisk would then treat as distinct files.
    let ok = !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage path {path:?}"),
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (plain maps), so poison is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Default)]
struct FsState {
    /// Open append handles, so the WAL does not reopen a segment per frame.
    handles: HashMap<String, Arc<File>>,
    /// Files created by `append` whose directory entry is not yet synced.
    unsynced_new: HashSet<String>,
}

/// [`Disk`] on the real file system via `std::fs`.
pub struct FsDisk {
    root: PathBuf,
    state: Mutex<FsState>,
    /// The thread that deletes superseded files, started on first use.
    reaper: Mutex<Option<Reaper>>,
}

struct Reaper {
    queue: std::sync::mpsc::Sender<PathBuf>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for FsDisk {
    /// Waits for pending deletions, so a disk opened next on the same root
    /// never sees a file vanish under it.
    fn drop(&mut self) {
        let reaper = self
            .reaper
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(Reaper { queue, thread }) = reaper {
            drop(queue);
            let _ = thread.join();
        }
    }
}

impl FsDisk {
    /// The root is created lazily on first write.
    pub fn new(root: PathBuf) -> FsDisk {
        FsDisk {
            root,
            state: Mutex::new(FsState::default()),
            reaper: Mutex::new(None),
        }
    }

    /// Hands `path` to the reaper thread; gives it back if there is none.
    fn reap_later(&self, path: PathBuf) -> Result<(), PathBuf> {
        let mut reaper = lock(&self.reaper);
        if reaper.is_none() {
            let (queue, paths) = std::sync::mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new()
                .name("synod-reaper".into())
                .spawn(move || {
                    for path in paths {
                        if let Err(error) = fs::remove_file(&path)
                            && error.kind() != io::ErrorKind::NotFound
                        {
                            tracing::warn!(path = %path.display(), %error, "could not delete a superseded file");
                        }
                    }
                });
            match spawned {
                Ok(thread) => *reaper = Some(Reaper { queue, thread }),
                Err(error) => {
                    tracing::warn!(%error, "no reaper thread; deleting inline");
                    return Err(path);
                }
            }
        }
        match reaper.as_ref() {
            Some(reaper) => reaper.queue.send(path).map_err(|unsent| unsent.0),
            None => Err(path),
        }
    }

    fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        validate_path(path)?;
        Ok(self.root.join(path))
    }

    /// Creates missing parent directories one by one, syncing each new entry,
    /// so a synced file can never sit in a directory that vanishes on crash.
    fn ensure_parents(&self, path: &str) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let mut cur = self.root.clone();
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        for comp in parent.components() {
            let next = cur.join(comp);
            match fs::create_dir(&next) {
                Ok(()) => sync_dir(&cur)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            cur = next;
        }
        Ok(())
    }

    fn append_handle(&self, path: &str) -> io::Result<Arc<File>> {
        let mut st = lock(&self.state);
        if let Some(f) = st.handles.get(path) {
            return Ok(f.clone());
        }
        let full = self.resolve(path)?;
        self.ensure_parents(path)?;
        let file = match OpenOptions::new().append(true).create_new(true).open(&full) {
            Ok(f) => {
                st.unsynced_new.insert(path.to_string());
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().append(true).open(&full)?
            }
            Err(e) => return Err(e),
        };
        let file = Arc::new(file);
        st.handles.insert(path.to_string(), file.clone());
        Ok(file)
    }

    fn parent_of(&self, full: &Path) -> PathBuf {
        full.parent().unwrap_or(&self.root).to_path_buf()
    }

    fn forget(&self, path: &str) {
        let mut st = lock(&self.state);
        st.handles.remove(path);
        st.unsynced_new.remove(path);
    }
}

/// Write buffer of a streamed atomic write: large enough that syscalls
/// are few, small enough to cost nothing per region.
const STREAM_BUFFER_BYTES: usize = 256 * 1024;

impl Disk for FsDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let full = if dir.is_empty() {
            self.root.clone()
        } else {
            self.resolve(dir)?
        };
        let rd = match fs::read_dir(&full) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent?;
            if ent.file_type()?.is_file()
                && let Ok(name) = ent.file_name().into_string()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(self.resolve(path)?)
    }

    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let file = self.append_handle(path)?;
        (&*file).write_all(bytes)
    }

    fn sync(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        let cached = lock(&self.state).handles.get(path).cloned();
        match cached {
            Some(f) => f.sync_data()?,
            None => File::open(&full)?.sync_data()?,
        }
        let was_new = lock(&self.state).unsynced_new.remove(path);
        if was_new && let Err(e) = sync_dir(&self.parent_of(&full)) {
            lock(&self.state).unsynced_new.insert(path.to_string());
            return Err(e);
        }
        Ok(())
    }

    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        let full = self.resolve(path)?;
        let cached = lock(&self.state).handles.get(path).cloned();
        let file = match cached {
            Some(f) => f,
            None => Arc::new(OpenOptions::new().write(true).open(&full)?),
        };
        file.set_len(len)?;
        file.sync_all()
    }

    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_atomic_parts(path, &[bytes])
    }

    fn write_atomic_parts(&self, path: &str, parts: &[&[u8]]) -> io::Result<()> {
        self.write_atomic_with(path, &mut |out| {
            for part in parts {
                out.write_all(part)?;
            }
            Ok(())
        })
    }

    fn write_atomic_with(
        &self,
        path: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let full = self.resolve(path)?;
        let tmp = self.resolve(&format!("{path}.tmp"))?;
        self.ensure_parents(path)?;
        {
            let mut out = io::BufWriter::with_capacity(STREAM_BUFFER_BYTES, File::create(&tmp)?);
            fill(&mut out)?;
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &full)?;
        // A cached handle would point at the replaced inode.
        self.forget(path);
        sync_dir(&self.parent_of(&full))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        self.forget(path);
        match fs::remove_file(&full) {
            Ok(()) => sync_dir(&self.parent_of(&full)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn remove_superseded(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        self.forget(path);
        match self.reap_later(full) {
            Ok(()) => Ok(()),
            Err(full) => match fs::remove_file(&full) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }
}

#[derive(Default)]
struct MemFile {
    durable: Vec<u8>,
    /// Appended but not yet synced; what a crash may lose or tear.
    tail: Vec<u8>,
}

#[derive(Default)]
struct MemState {
    files: BTreeMap<String, MemFile>,
    fail_sync: bool,
}

/// In-memory [`Disk`] that models durability: each file has a synced part and
/// an unsynced tail that [`MemDisk::crash`] drops. Clones share state, so a
/// test can crash one handle and reopen through another. Directories are
/// implicit and `remove` is durable immediately.
#[derive(Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<MemState>>,
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Power loss: every unsynced byte is lost (files stay, possibly empty).
    pub fn crash(&self) {
        self.crash_with_torn_tail(0);
    }

    /// Power loss mid-write: the first `keep_bytes` of each unsynced tail
    /// reached the platter, the rest did not.
    pub fn crash_with_torn_tail(&self, keep_bytes: usize) {
        let mut st = lock(&self.state);
        for f in st.files.values_mut() {
            let keep = keep_bytes.min(f.tail.len());
            let tail = std::mem::take(&mut f.tail);
            f.durable.extend_from_slice(&tail[..keep]);
        }
    }

    /// Bit rot: XORs the byte at `offset` of the current content with `xor`.
    pub fn corrupt(&self, path: &str, offset: u64, xor: u8) -> io::Result<()> {
        let mut st = lock(&self.state);
        let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        let byte = if off < f.durable.len() {
            f.durable.get_mut(off)
        } else {
            f.tail.get_mut(off - f.durable.len())
        };
        match byte {
            Some(b) => {
                *b ^= xor;
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: offset {offset} past end"),
            )),
        }
    }

    /// Makes every fsync-like operation fail, to exercise error paths.
    pub fn set_fail_sync(&self, fail: bool) {
        lock(&self.state).fail_sync = fail;
    }

    fn check_sync(st: &MemState) -> io::Result<()> {
        if st.fail_sync {
            Err(io::Error::other("injected fsync failure"))
        } else {
            Ok(())
        }
    }
}

impl Disk for MemDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        if !dir.is_empty() {
            validate_path(dir)?;
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        let st = lock(&self.state);
        let mut names: Vec<String> = st
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        validate_path(path)?;
        let st = lock(&self.state);
        let f = st.files.get(path).ok_or_else(|| not_found(path))?;
        let mut out = f.durable.clone();
        out.extend_from_slice(&f.tail);
        Ok(out)
    }

    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        validate_path(path)?;
        let mut st = lock(&self.state);
        let f = st.files.entry(path.to_string()).or_default();
        f.tail.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&self, path: &str) -> io::Result<()> {
        validate_path(path)?;
        let mut st = lock(&self.state);
        Self::check_sync(&st)?;
        let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let tail = std::mem::take(&mut f.tail);
        f.durable.extend_from_slice(&tail);
        Ok(())
    }

    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        validate_path(path)?;
        let mut st = lock(&self.state);
        Self::check_sync(&st)?;
        let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let tail = std::mem::take(&mut f.tail);
        f.durable.extend_from_slice(&tail);
        f.durable
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        Ok(())
    }

    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        validate_path(path)?;
        let mut st = lock(&self.state);
        Self::check_sync(&st)?;
        st.files.insert(
            path.to_string(),
            MemFile {
                durable: bytes.to_vec(),
                tail: Vec::new(),
            },
        );
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        validate_path(path)?;
        lock(&self.state).files.remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_paths() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "./a",
            "a/./b",
            "a//b",
            "a/",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_path("wal/00000000000000000001.seg").is_ok());
        let d = MemDisk::new();
        assert!(d.append("../x", b"1").is_err());
    }

    #[test]
    fn memdisk_crash_semantics() -> io::Result<()> {
        let d = MemDisk::new();
        d.append("a/f", b"hello")?;
        d.sync("a/f")?;
        d.append("a/f", b" world")?;
        d.append("a/g", b"never synced")?;
        let other = d.clone();
        other.crash_with_torn_tail(3);
        assert_eq!(d.read("a/f")?, b"hello wo");
        assert_eq!(d.read("a/g")?, b"nev");
        d.append("a/f", b"XYZ")?;
        d.crash();
        assert_eq!(d.read("a/f")?, b"hello wo");
        assert_eq!(d.list("a")?, vec!["f".to_string(), "g".to_string()]);
        assert!(d.list("missing")?.is_empty());
        d.corrupt("a/f", 0, 0x20)?;
        assert_eq!(d.read("a/f")?, b"Hello wo");
        d.truncate("a/f", 2)?;
        assert_eq!(d.read("a/f")?, b"He");
        d.remove("a/f")?;
        d.remove("a/f")?;
        assert_eq!(
            d.read("a/f").map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        Ok(())
    }

    #[test]
    fn superseded_files_are_gone_once_the_disk_is_dropped() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let d = FsDisk::new(root.clone());
        for name in ["wal/1.seg", "wal/2.seg", "wal/3.seg"] {
            d.append(name, &[7; 4096])?;
            d.sync(name)?;
        }
        d.remove_superseded("wal/1.seg")?;
        d.remove_superseded("wal/2.seg")?;
        d.remove_superseded("wal/missing.seg")?;
        assert!(d.remove_superseded("../escape").is_err());
        drop(d);
        let d = FsDisk::new(root);
        assert_eq!(d.list("wal")?, vec!["3.seg".to_string()]);
        Ok(())
    }

    #[test]
    fn fsdisk_smoke() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = FsDisk::new(tmp.path().join("root"));
        assert!(d.list("wal")?.is_empty());
        d.append("wal/b.seg", b"abc")?;
        d.append("wal/b.seg", b"def")?;
        d.sync("wal/b.seg")?;
        d.append("wal/a.seg", b"x")?;
        assert_eq!(
            d.list("wal")?,
            vec!["a.seg".to_string(), "b.seg".to_string()]
        );
        assert_eq!(d.read("wal/b.seg")?, b"abcdef");
        d.truncate("wal/b.seg", 4)?;
        d.append("wal/b.seg", b"!")?;
        assert_eq!(d.read("wal/b.seg")?, b"abcd!");
        d.write_atomic("wal/b.seg", b"new")?;
        d.append("wal/b.seg", b"+")?;
        d.sync("wal/b.seg")?;
        assert_eq!(d.read("wal/b.seg")?, b"new+");
        d.remove("wal/a.seg")?;
        d.remove("wal/a.seg")?;
        assert_eq!(d.list("wal")?, vec!["b.seg".to_string()]);
        assert!(d.read("/etc/hostname").is_err());
        Ok(())
    }
}
