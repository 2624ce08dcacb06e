//! Per-region storage and timer limits, and the node's free-disk reserve.
//!
//! A region that fills the disk must hurt only itself: its imports get a
//! storage error past its quota (the plugin decides what to do; the region
//! stays up), and while the node's disk is below the reserve no region may
//! grow its retained storage, so the shared WAL keeps room for the small
//! records (truncations, compactions, hard state) everyone else needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The prefix of region parameters that override the node's limits.
pub const QUOTA_PARAM_PREFIX: &str = "quota.";

/// The largest `staged_bytes` limit. The WAL refuses frames over 256 MiB;
/// shrinking records may stage twice the limit (192 MiB at most), which
/// leaves room for the encoding overhead.
pub const STAGED_BYTES_CEILING: u64 = 96 << 20;

/// What each staged journal record costs beyond its payload: the region
/// name and the record's framing, so a flood of tiny records is bounded too.
pub const RECORD_OVERHEAD_BYTES: u64 = 96;

/// What the host keeps per log entry beyond its payload (the entry's own
/// allocation and its slot in the log), counted against `log_bytes` so a
/// flood of empty entries is bounded too.
pub const LOG_ENTRY_OVERHEAD_BYTES: u64 = 32;

/// What one output (a reply, a message batch) costs the host beyond its
/// payload while it waits for output commit.
pub const OUTPUT_OVERHEAD_BYTES: u64 = 64;

/// Bounds on one region replica's retained storage and armed timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegionLimits {
    /// Payload bytes of the retained log entries, plus
    /// [`LOG_ENTRY_OVERHEAD_BYTES`] per entry.
    pub log_bytes: u64,
    /// Key plus value bytes of the plugin kv area.
    pub kv_bytes: u64,
    /// Keys in the plugin kv area.
    pub kv_keys: u64,
    /// Bytes the region may stage for one WAL entry (one round), counting
    /// [`RECORD_OVERHEAD_BYTES`] per record.
    pub staged_bytes: u64,
    /// Timers armed at once.
    pub timers: u64,
}

impl Default for RegionLimits {
    fn default() -> Self {
        Self {
            log_bytes: 1 << 30,
            kv_bytes: 64 << 20,
            kv_keys: 65_536,
            staged_bytes: 64 << 20,
            timers: 4096,
        }
    }
}

/// A limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "unknown quota parameter {0:?}: use quota.log-bytes, quota.kv-bytes, quota.kv-keys, quota.staged-bytes or quota.timers"
    )]
    Unknown(String),
    #[error("{name} = {value:?} is not a whole number from 1 to {max}")]
    BadValue {
        name: String,
        value: String,
        max: u64,
    },
}

impl RegionLimits {
    /// Checks that every limit is usable; `what` names each limit as its
    /// source spells it.
    pub fn validate(&self, what: impl Fn(&str) -> String) -> Result<(), LimitError> {
        for (name, value, max) in self.fields() {
            if value == 0 || value > max {
                return Err(LimitError::BadValue {
                    name: what(name),
                    value: value.to_string(),
                    max,
                });
            }
        }
        Ok(())
    }

    fn fields(&self) -> [(&'static str, u64, u64); 5] {
        [
            ("log-bytes", self.log_bytes, u64::MAX),
            ("kv-bytes", self.kv_bytes, u64::MAX),
            ("kv-keys", self.kv_keys, u64::MAX),
            ("staged-bytes", self.staged_bytes, STAGED_BYTES_CEILING),
            ("timers", self.timers, 1 << 24),
        ]
    }

    /// These limits with a region's `quota.*` parameters applied. Other
    /// parameters belong to the protocol and are ignored here.
    pub fn with_overrides(&self, params: &[(String, String)]) -> Result<Self, LimitError> {
        let mut limits = self.clone();
        for (name, value) in params {
            let Some(key) = name.strip_prefix(QUOTA_PARAM_PREFIX) else {
                continue;
            };
            let slot = match key {
                "log-bytes" => &mut limits.log_bytes,
                "kv-bytes" => &mut limits.kv_bytes,
                "kv-keys" => &mut limits.kv_keys,
                "staged-bytes" => &mut limits.staged_bytes,
                "timers" => &mut limits.timers,
                _ => return Err(LimitError::Unknown(name.clone())),
            };
            let max = match key {
                "staged-bytes" => STAGED_BYTES_CEILING,
                "timers" => 1 << 24,
                _ => u64::MAX,
            };
            *slot = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| (1..=max).contains(v))
                .ok_or_else(|| LimitError::BadValue {
                    name: name.clone(),
                    value: value.clone(),
                    max,
                })?;
        }
        Ok(limits)
    }
}

/// Where the free space of the data directory comes from: `statvfs` on a
/// real node, anything a test likes (a nearly-full disk without filling one).
#[derive(Clone)]
pub struct FreeSpace(Arc<FreeSpaceFn>);

/// Free bytes on the filesystem holding a path.
type FreeSpaceFn = dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync;

impl FreeSpace {
    pub fn new(source: impl Fn(&Path) -> std::io::Result<u64> + Send + Sync + 'static) -> Self {
        Self(Arc::new(source))
    }

    /// A source that reports whatever `bytes` holds (for tests).
    pub fn shared(bytes: Arc<AtomicU64>) -> Self {
        Self::new(move |_| Ok(bytes.load(Ordering::Relaxed)))
    }

    pub fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        (self.0)(path)
    }
}

impl Default for FreeSpace {
    fn default() -> Self {
        Self::new(statvfs_free_bytes)
    }
}

impl std::fmt::Debug for FreeSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FreeSpace(..)")
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn statvfs_free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated string and `stats` a
    // writable, properly sized statvfs that the call fills in.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// How often the reserve looks at the disk: `statvfs` is cheap but not
/// free, and imports run at hundreds of thousands per second.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The node-wide free-disk reserve, shared by every region's core.
pub struct DiskReserve {
    reserve_bytes: u64,
    path: PathBuf,
    source: FreeSpace,
    origin: Instant,
    /// Milliseconds since `origin` of the last look (u64::MAX: never).
    checked_at_ms: AtomicU64,
    free_bytes: AtomicU64,
    low: AtomicBool,
}

impl std::fmt::Debug for DiskReserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReserve")
            .field("reserve_bytes", &self.reserve_bytes)
            .field("path", &self.path)
            .finish()
    }
}

impl DiskReserve {
    pub fn new(path: PathBuf, reserve_bytes: u64, source: FreeSpace) -> Self {
        Self {
            reserve_bytes,
            path,
            source,
            origin: Instant::now(),
            checked_at_ms: AtomicU64::new(u64::MAX),
            free_bytes: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        }
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// The free bytes last seen, when below the reserve; `None` when the
    /// disk has room. Looks at the disk at most every [`DISK_CHECK_INTERVAL`].
    pub fn below_reserve(&self) -> Option<u64> {
        if self.reserve_bytes == 0 {
            return None;
        }
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.checked_at_ms.load(Ordering::Relaxed);
        let interval = DISK_CHECK_INTERVAL.as_millis() as u64;
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= interval;
        if due
            && self
                .checked_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match self.source.free_bytes(&self.path) {
                Ok(free) => {
                    self.free_bytes.store(free, Ordering::Relaxed);
                    let low = free < self.reserve_bytes;
                    if self.low.swap(low, Ordering::Relaxed) != low {
                        if low {
                            tracing::warn!(path = %self.path.display(), free, reserve = self.reserve_bytes, "disk below the reserve: regions may not grow their storage");
                        } else {
                            tracing::info!(path = %self.path.display(), free, reserve = self.reserve_bytes, "disk above the reserve again");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "cannot read the free disk space; the reserve is not enforced")
                }
            }
        }
        self.low
            .load(Ordering::Relaxed)
            .then(|| self.free_bytes.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_validated() {
        let base = RegionLimits::default();
        let params = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let limits = base
            .with_overrides(&params("quota.log-bytes", "1048576"))
            .expect("valid");
        assert_eq!(limits.log_bytes, 1 << 20);
        assert_eq!(
            base.with_overrides(&params("mode", "x")).expect("ignored"),
            base
        );
        for (k, v) in [
            ("quota.log-bytes", "0"),
            ("quota.kv-keys", "-1"),
            ("quota.kv-bytes", "lots"),
            ("quota.staged-bytes", "1000000000"),
        ] {
            let error = base.with_overrides(&params(k, v)).expect_err(k);
            assert!(error.to_string().contains(k), "{error}");
        }
        let error = base
            .with_overrides(&params("quota.disk", "1"))
            .expect_err("unknown");
        assert!(error.to_string().contains("unknown"), "{error}");
    }

    #[test]
    fn the_reserve_looks_at_the_disk_at_most_every_interval() {
        let free = Arc::new(AtomicU64::new(10));
        let reserve = DiskReserve::new(PathBuf::from("."), 100, FreeSpace::shared(free.clone()));
        assert_eq!(reserve.below_reserve(), Some(10));
        free.store(1000, Ordering::Relaxed);
        // Cached until the interval passes.
        assert_eq!(reserve.below_reserve(), Some(10));
        std::thread::sleep(DISK_CHECK_INTERVAL + Duration::from_millis(20));
        assert_eq!(reserve.below_reserve(), None);
    }

    #[test]
    fn statvfs_reports_the_real_disk() {
        let free = statvfs_free_bytes(Path::new(".")).expect("statvfs");
        assert!(free > 0);
    }
}
