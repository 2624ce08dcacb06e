//! The effects a protocol may have: one method per host import.

use crate::types::{
    Applies, Batch, Level, LogBounds, NodeId, Rejection, RequestId, Stamp, StorageError, TimerId,
};

/// Everything a protocol can ask of the host. Inside a Wasm component each
/// method is one import call; in native mode the host implements it
/// directly; in unit tests [`crate::testing::MemoryHost`] records it.
///
/// The host's duty (see `wit/synod.wit`): sends, snapshot shipments and
/// client answers made during a callback leave the node only once every
/// storage write up to that callback is durable, so a protocol may treat
/// every storage write as synchronous.
pub trait Host {
    /// Writes `entries` at `first..`, replacing every entry at or after `first`.
    fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError>;
    /// Entries `first..=last`, at most `max_bytes` (but at least one entry).
    fn log_read(&mut self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError>;
    fn log_bounds(&mut self) -> LogBounds;
    /// Removes every entry at or after `from`.
    fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError>;
    /// Discards every entry at or before `through`.
    fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError>;

    fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    fn kv_delete(&mut self, key: &[u8]);

    /// Sends each item of `messages` to `to` (unreliable).
    fn send(&mut self, to: NodeId, messages: &Batch);

    /// Sends without waiting for this callback's storage writes to be
    /// durable; see the WIT `send-eager` for when that is safe. Hosts that
    /// cannot tell the difference treat it as [`Host::send`].
    fn send_eager(&mut self, to: NodeId, messages: &Batch) {
        self.send(to, messages)
    }

    /// Monotonic nanoseconds.
    fn now(&mut self) -> u64;
    fn set_timer(&mut self, id: TimerId, after_nanos: u64);
    fn cancel_timer(&mut self, id: TimerId);
    /// Seeded randomness.
    fn random(&mut self) -> u64;

    /// Executes commands in order; `position` must increase.
    fn apply(&mut self, commands: &Applies, position: u64);
    /// Executes commands by last-writer-wins per key: `stamps[i]` versions
    /// command `i`, and a write takes effect only over an older stamp
    /// (WIT `apply-stamped`, contract 0.1.1). `position` must increase.
    fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64);
    /// Drops tombstones whose stamp time is below `below`; only safe once
    /// every replica holds every write stamped below it.
    fn compact_tombstones(&mut self, below: u64);
    fn query(&mut self, query: &[u8]) -> Vec<u8>;
    /// Durably snapshots the state; returns the position it covers.
    fn snapshot(&mut self) -> Result<u64, StorageError>;
    /// Asks for a snapshot of the state as of the returned position, made
    /// durable off the region's pipeline; the host then fires
    /// `on_timers([notify])` on this instance, and only then may the log be
    /// compacted through the position (WIT `snapshot-async`, contract
    /// 0.1.2). `Err` while a save is in flight or a swap holds the region.
    fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError>;
    fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]);
    fn digest(&mut self) -> Vec<u8>;

    /// Answers reads from the state as it stands after this callback's applies.
    fn complete_reads(&mut self, ids: &[RequestId]);
    fn reject(&mut self, ids: &[RequestId], reason: &Rejection);

    fn log(&mut self, level: Level, message: &str);
}
