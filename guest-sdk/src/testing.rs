//! An in-memory [`Host`] for unit-testing protocols natively: storage is a
//! map, time is a counter you advance, and every effect is recorded for
//! assertions.

use std::collections::{BTreeMap, HashMap};

use crate::host::Host;
use crate::types::*;

/// A recording, in-memory host. The "state machine" is the list of applied
/// commands; `query` returns the payloads of every applied command joined,
/// which is enough to compare replicas in tests.
///
/// Stamped applies (`apply_stamped`) are kept as the set of distinct
/// stamped writes, `stamped`: the key-value rule itself is the host's, and
/// payloads are opaque here, so two replicas converged when they hold the
/// same set. A stamp seen again is a duplicate and is not applied twice;
/// `digest` then covers that set, so it is independent of arrival order.
#[derive(Debug, Default)]
pub struct MemoryHost {
    pub self_id: NodeId,
    /// Retained log entries by position.
    pub log: BTreeMap<u64, Vec<u8>>,
    /// First retained position (entries before it were compacted).
    pub log_first: u64,
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `(request id, payload)` of every applied command, in order.
    pub applied: Vec<(RequestId, Vec<u8>)>,
    pub applied_position: u64,
    /// Messages sent, `(to, payload)`, drained by the test.
    pub sent: Vec<(NodeId, Vec<u8>)>,
    /// Armed timers: id → deadline in nanoseconds.
    pub timers: HashMap<TimerId, u64>,
    pub now_nanos: u64,
    pub completed_reads: Vec<RequestId>,
    pub rejected: Vec<(RequestId, Rejection)>,
    pub snapshots_taken: Vec<u64>,
    /// The `snapshot_async` in flight, `(position, notify timer)`: a test
    /// completes it with [`MemoryHost::finish_snapshot_save`].
    pub snapshot_requested: Option<(u64, TimerId)>,
    /// Distinct stamped writes applied: stamp → (request id, payload).
    pub stamped: BTreeMap<Stamp, (RequestId, Vec<u8>)>,
    /// The highest `compact_tombstones` bound passed.
    pub tombstones_below: u64,
    pub snapshots_sent: Vec<(NodeId, Vec<u8>)>,
    pub log_lines: Vec<(Level, String)>,
    random_state: u64,
}

impl MemoryHost {
    pub fn new(self_id: NodeId) -> Self {
        Self {
            self_id,
            log_first: 1,
            random_state: 0x9E37_79B9_7F4A_7C15 ^ self_id,
            ..Self::default()
        }
    }

    /// Ids of applied commands in order.
    pub fn applied_ids(&self) -> Vec<RequestId> {
        self.applied.iter().map(|(id, _)| *id).collect()
    }

    /// Completes the `snapshot_async` in flight as the host does once the
    /// image is durable: records it as taken and returns the timer to fire
    /// (`on_timers([id])`), or `None` when no save is in flight.
    pub fn finish_snapshot_save(&mut self) -> Option<TimerId> {
        let (position, notify) = self.snapshot_requested.take()?;
        self.snapshots_taken.push(position);
        Some(notify)
    }

    /// Advances the clock and returns the timers that are now due (disarmed).
    pub fn advance(&mut self, nanos: u64) -> Vec<TimerId> {
        self.now_nanos += nanos;
        let now = self.now_nanos;
        let mut due: Vec<(u64, TimerId)> = self
            .timers
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, deadline)| (*deadline, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in &due {
            self.timers.remove(id);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    fn last_position(&self) -> u64 {
        self.log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.log_first - 1)
    }
}

/// Builds a [`Commands`] batch from `(id, payload)` pairs with no conflict keys.
pub fn commands(items: &[(RequestId, &[u8])]) -> Commands {
    let mut commands = Commands::default();
    for (id, payload) in items {
        commands.ids.push(*id);
        commands.payloads.push(payload);
        commands.key_ends.push(commands.keys.len() as u32);
    }
    commands
}

impl Host for MemoryHost {
    fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError> {
        let last = self.last_position();
        if first < self.log_first {
            return Err(StorageError::Compacted(self.log_first));
        }
        if first > last + 1 {
            return Err(StorageError::OutOfRange(format!(
                "append at {first} leaves a gap after {last}"
            )));
        }
        self.log.split_off(&first);
        for (offset, entry) in entries.iter().enumerate() {
            self.log.insert(first + offset as u64, entry.to_vec());
        }
        Ok(())
    }

    fn log_read(&mut self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError> {
        if first < self.log_first {
            return Err(StorageError::Compacted(self.log_first));
        }
        if last > self.last_position() || first > last + 1 {
            return Err(StorageError::OutOfRange(format!("read {first}..={last}")));
        }
        let mut batch = Batch::new();
        for (_, entry) in self.log.range(first..=last) {
            if !batch.is_empty() && batch.byte_len() + entry.len() > max_bytes as usize {
                break;
            }
            batch.push(entry);
        }
        Ok(batch)
    }

    fn log_bounds(&mut self) -> LogBounds {
        LogBounds {
            first: self.log_first,
            last: self.last_position(),
        }
    }

    fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        if from < self.log_first {
            return Err(StorageError::Compacted(self.log_first));
        }
        self.log.split_off(&from);
        Ok(())
    }

    fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError> {
        if through >= self.log_first {
            self.log = self.log.split_off(&(through + 1));
            self.log_first = through + 1;
        }
        Ok(())
    }

    fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }

    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.kv.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn kv_delete(&mut self, key: &[u8]) {
        self.kv.remove(key);
    }

    fn send(&mut self, to: NodeId, messages: &Batch) {
        for message in messages.iter() {
            self.sent.push((to, message.to_vec()));
        }
    }

    fn now(&mut self) -> u64 {
        self.now_nanos
    }

    fn set_timer(&mut self, id: TimerId, after_nanos: u64) {
        self.timers
            .insert(id, self.now_nanos.saturating_add(after_nanos));
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.timers.remove(&id);
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: deterministic and good enough for tests.
        let mut x = self.random_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random_state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn apply(&mut self, commands: &Applies, position: u64) {
        assert!(
            position > self.applied_position || commands.is_empty(),
            "apply position must increase: {} after {}",
            position,
            self.applied_position
        );
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            self.applied.push((*id, payload.to_vec()));
        }
        self.applied_position = self.applied_position.max(position);
    }

    fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64) {
        assert_eq!(
            commands.len(),
            stamps.len(),
            "apply-stamped needs one stamp per command"
        );
        assert!(
            position > self.applied_position || commands.is_empty(),
            "apply position must increase: {} after {}",
            position,
            self.applied_position
        );
        for ((id, payload), stamp) in commands
            .ids
            .iter()
            .zip(commands.payloads.iter())
            .zip(stamps)
        {
            if !self.stamped.contains_key(stamp) {
                self.stamped.insert(*stamp, (*id, payload.to_vec()));
                self.applied.push((*id, payload.to_vec()));
            }
        }
        self.applied_position = self.applied_position.max(position);
    }

    fn compact_tombstones(&mut self, below: u64) {
        self.tombstones_below = self.tombstones_below.max(below);
    }

    fn query(&mut self, _query: &[u8]) -> Vec<u8> {
        self.applied.iter().flat_map(|(_, p)| p.clone()).collect()
    }

    fn snapshot(&mut self) -> Result<u64, StorageError> {
        self.snapshots_taken.push(self.applied_position);
        Ok(self.applied_position)
    }

    fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError> {
        if self.snapshot_requested.is_some() {
            return Err(StorageError::Failed("a snapshot save is in flight".into()));
        }
        self.snapshot_requested = Some((self.applied_position, notify));
        Ok(self.applied_position)
    }

    fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]) {
        self.snapshots_sent.push((to, metadata.to_vec()));
    }

    fn digest(&mut self) -> Vec<u8> {
        // FNV-1a over applied payloads (stamped ones in stamp order).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let payloads: Vec<&Vec<u8>> = if self.stamped.is_empty() {
            self.applied.iter().map(|(_, p)| p).collect()
        } else {
            self.stamped.values().map(|(_, p)| p).collect()
        };
        for payload in payloads {
            for byte in payload {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash.to_le_bytes().to_vec()
    }

    fn complete_reads(&mut self, ids: &[RequestId]) {
        self.completed_reads.extend_from_slice(ids);
    }

    fn reject(&mut self, ids: &[RequestId], reason: &Rejection) {
        for id in ids {
            self.rejected.push((*id, reason.clone()));
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        self.log_lines.push((level, message.to_string()));
    }
}
