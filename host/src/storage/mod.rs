//! Durable storage for Synod: a pluggable [`Disk`], a segmented write-ahead
//! log, a group-commit thread on top of it, and checksummed snapshots.
//!
//! Everything goes through [`Disk`] so tests (and a future deterministic
//! simulator) can use [`MemDisk`] to inject crashes, torn writes and bit rot.

pub mod commit;
pub mod datadir;
pub mod disk;
pub mod repair;
pub mod snapshot;
pub mod wal;

pub use commit::{CommitError, CommitStats, CommitStatsSnapshot, GroupCommit};
pub use disk::{Disk, FsDisk, MemDisk};
pub use snapshot::{SnapshotError, SnapshotStore};
pub use wal::{Replay, Wal, WalError, WalOptions};
