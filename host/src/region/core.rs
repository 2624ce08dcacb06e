//! What a plugin's host calls do to one region replica.
//!
//! Every effect of a callback applies to the in-memory view at once, so
//! later calls in the same callback see it, and is recorded twice: as an
//! [`Undo`] (a trapped callback is rolled back completely) and as staged
//! output — journal records for the WAL, client replies and messages held
//! until those records are durable (output commit).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_bytes::ByteBuf;
use synod_guest_sdk::{
    Applies, Batch, Host, Level, LogBounds, NodeId, Rejection, RequestId, Stamp, StorageError,
    TimerId,
};

use crate::clock::{Clock, SystemClock};
use crate::journal::JournalRecord;
use crate::region::pending::is_read_id;
use crate::region::quota::{
    DiskReserve, LOG_ENTRY_OVERHEAD_BYTES, OUTPUT_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES,
    RegionLimits,
};
use crate::region::{LogUndo, POSITION_MAX, RegionLog, RegionName};
use crate::state_machine::{self, KvOutcome, KvStateMachine};

/// Why `snapshot-async` is refused while a save is in flight.
pub const SAVE_IN_FLIGHT: &str = "a snapshot save is in flight";

/// Bounds on the plugin KV area: hard state and metadata, not user data.
pub const META_KEY_BYTES_MAX: usize = 1024;
pub const META_VALUE_BYTES_MAX: usize = 1 << 20;

/// An answer or message released once the callback's storage is durable.
#[derive(Debug)]
pub enum Output {
    Reply {
        id: RequestId,
        reply: Reply,
    },
    Send {
        to: NodeId,
        messages: Batch,
    },
    /// Leaves as soon as the callback succeeds, durable or not.
    SendEager {
        to: NodeId,
        messages: Batch,
    },
    /// Ships a snapshot image with the plugin's metadata. The image is
    /// pinned when the callback is staged, so the bytes shipped are the
    /// snapshot the metadata describes even if a newer one is saved before
    /// the output is released.
    SendSnapshot {
        to: NodeId,
        metadata: Vec<u8>,
        image: PinnedImage,
    },
}

/// Which snapshot image a `send-snapshot` ships.
#[derive(Debug, Clone)]
pub enum PinnedImage {
    /// These bytes: the snapshot this same callback took before the call,
    /// or the saved one once the driver has read it.
    Pinned(Arc<Vec<u8>>),
    /// The region's saved snapshot as of the callback: the driver reads it
    /// when it stages the callback, before saving any newer one.
    LatestSaved,
}

/// The plugin's answer to one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Outcome(KvOutcome),
    Rejected(Rejection),
}

/// A timer change requested by a callback; `deadline` is clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerChange {
    Set { id: TimerId, deadline_nanos: u64 },
    Cancel { id: TimerId },
}

/// A snapshot taken during a callback, written after the records staged
/// before it are durable (so the snapshot never runs ahead of the log).
#[derive(Debug)]
pub struct StagedSnapshot {
    pub position: u64,
    /// Shared with any `send-snapshot` of the same callback that pinned it.
    pub image: Arc<Vec<u8>>,
    /// How many of the callback's records precede the snapshot.
    pub records_before: usize,
}

/// A `snapshot-async` request (contract 0.1.2): the image captured in the
/// callback, saved off the pipeline once the records up to and including
/// the callback are durable; `notify` is fired on the instance afterwards.
#[derive(Debug)]
pub struct SnapshotRequest {
    pub position: u64,
    pub image: Arc<Vec<u8>>,
    pub notify: TimerId,
    /// How long capturing the image took (on the pipeline).
    pub capture: std::time::Duration,
}

/// The staged effects of one successful callback.
#[derive(Debug, Default)]
pub struct Effects {
    pub records: Vec<JournalRecord>,
    pub outputs: Vec<Output>,
    pub timers: Vec<TimerChange>,
    pub snapshot: Option<StagedSnapshot>,
    pub snapshot_request: Option<SnapshotRequest>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.outputs.is_empty()
            && self.timers.is_empty()
            && self.snapshot.is_none()
            && self.snapshot_request.is_none()
    }
}

#[derive(Debug)]
enum Undo {
    Log(LogUndo),
    Meta {
        key: Vec<u8>,
        previous: Option<Vec<u8>>,
    },
    State(state_machine::Undo),
    Tombstones(state_machine::TombstoneUndo),
    StateReplaced(Box<KvStateMachine>),
    /// A timer id the callback armed (it was not armed before).
    TimerArmed(TimerId),
    /// A timer id the callback cancelled (it was armed before).
    TimerDisarmed(TimerId),
}

/// How long a quota refusal keeps the region's health at `quota`.
pub const QUOTA_RECENT: Duration = Duration::from_secs(10);

/// A region's storage use against its limits, for the status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuotaUsage {
    pub log_bytes: u64,
    pub kv_bytes: u64,
    pub kv_keys: u64,
    pub timers: u64,
    pub limits: RegionLimits,
    /// A limit (or the node's disk reserve) refused an import within the
    /// last 10 s.
    pub exceeded: bool,
    pub refusals_total: u64,
    /// The newest refusal, as the plugin was told.
    pub last_refusal: Option<String>,
}

/// One region replica's storage view, state machine and staged effects.
/// Plugin log lines the simulator's tap keeps between two drains.
const LOG_TAP_LINES_MAX: usize = 1024;
/// Characters kept of one tapped log line.
const LOG_TAP_LINE_CHARS_MAX: usize = 512;

pub struct RegionCore {
    name: RegionName,
    self_id: NodeId,
    log: RegionLog,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    state: KvStateMachine,
    /// Queries of reads handed to the plugin and not yet answered.
    reads: HashMap<RequestId, Vec<u8>>,
    clock: Arc<dyn Clock>,
    rng: ChaCha8Rng,
    staged: Effects,
    /// Where each timer id's change sits in `staged.timers`: only the last
    /// change of an id matters, so re-arming in a loop stages one change.
    staged_timer_slots: HashMap<TimerId, usize>,
    /// Reads the plugin completed in this callback, answered at its end so
    /// they see every apply of the callback (as the contract promises).
    completed_reads: Vec<RequestId>,
    /// The random generator as the callback found it (restored on rollback,
    /// so a trapped callback does not shift the seeded sequence).
    rng_at_start: Option<ChaCha8Rng>,
    undo: Vec<Undo>,
    /// Set when the plugin broke the contract; the callback then fails.
    violation: Option<String>,
    /// The last panic message the plugin logged (why it trapped).
    last_panic: Option<String>,
    /// Plugin log lines kept for the simulator's trace (off elsewhere).
    log_tap: Option<Vec<(Level, String)>>,
    limits: RegionLimits,
    /// The node's free-disk reserve (absent under the simulator).
    reserve: Option<Arc<DiskReserve>>,
    /// Key plus value bytes of `meta`, kept incrementally.
    meta_bytes: u64,
    /// Timer ids armed (mirrors the driver's timers, which it tells us
    /// about when they fire or die with a failed instance).
    armed_timers: HashSet<TimerId>,
    /// Record bytes staged since the driver last submitted to the WAL,
    /// by callbacks that succeeded.
    staged_bytes: u64,
    /// Record bytes the current callback staged.
    callback_staged_bytes: u64,
    /// Host memory the current callback's outputs (messages, replies) take.
    callback_output_bytes: u64,
    /// When the newest quota refusal happened (clock time) and what it said.
    last_refusal: Option<(Duration, String)>,
    refusals_total: u64,
    /// Why `snapshot-async` is refused now (a save in flight, a swap's
    /// hold), set by the driver before each callback.
    snapshot_refusal: Option<&'static str>,
}

impl Default for RegionCore {
    /// An empty stand-in, held by a Wasm store while no real core is lent to it.
    fn default() -> Self {
        Self::new(
            RegionName::new("unlent").unwrap_or_else(|_| unreachable!()),
            0,
            RegionLog::default(),
            BTreeMap::new(),
            KvStateMachine::default(),
            Arc::new(SystemClock::new()),
            0,
        )
    }
}

impl RegionCore {
    pub fn new(
        name: RegionName,
        self_id: NodeId,
        log: RegionLog,
        meta: BTreeMap<Vec<u8>, Vec<u8>>,
        state: KvStateMachine,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Self {
        let meta_bytes = meta.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Self {
            name,
            self_id,
            log,
            meta,
            state,
            reads: HashMap::new(),
            clock,
            rng: ChaCha8Rng::seed_from_u64(seed),
            staged: Effects::default(),
            completed_reads: Vec::new(),
            staged_timer_slots: HashMap::new(),
            rng_at_start: None,
            undo: Vec::new(),
            violation: None,
            last_panic: None,
            log_tap: None,
            limits: RegionLimits::default(),
            reserve: None,
            meta_bytes,
            armed_timers: HashSet::new(),
            staged_bytes: 0,
            callback_staged_bytes: 0,
            callback_output_bytes: 0,
            last_refusal: None,
            refusals_total: 0,
            snapshot_refusal: None,
        }
    }

    /// Sets the region's limits and the node's disk reserve.
    pub fn set_limits(&mut self, limits: RegionLimits, reserve: Option<Arc<DiskReserve>>) {
        self.limits = limits;
        self.reserve = reserve;
    }

    pub fn limits(&self) -> &RegionLimits {
        &self.limits
    }

    /// Storage use against the limits.
    pub fn quota_usage(&self) -> QuotaUsage {
        let now = self.clock.now();
        QuotaUsage {
            log_bytes: self.log_charge(),
            kv_bytes: self.meta_bytes,
            kv_keys: self.meta.len() as u64,
            timers: self.armed_timers.len() as u64,
            limits: self.limits.clone(),
            exceeded: self.quota_exceeded_recently(now),
            refusals_total: self.refusals_total,
            last_refusal: self.last_refusal.as_ref().map(|(_, why)| why.clone()),
        }
    }

    fn quota_exceeded_recently(&self, now: Duration) -> bool {
        self.last_refusal
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_sub(*at) < QUOTA_RECENT)
    }

    /// The newest refusal, if it happened within [`QUOTA_RECENT`].
    pub fn recent_refusal(&self) -> Option<&str> {
        let now = self.clock.now();
        self.last_refusal
            .as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) < QUOTA_RECENT)
            .map(|(_, why)| why.as_str())
    }

    /// What the log counts against `log_bytes`: its payload plus
    /// [`LOG_ENTRY_OVERHEAD_BYTES`] per entry.
    fn log_charge(&self) -> u64 {
        self.log.byte_len() as u64 + LOG_ENTRY_OVERHEAD_BYTES * self.log.len() as u64
    }

    /// Sets why `snapshot-async` is refused (`None`: it is allowed). While
    /// set, `send-snapshot` of the saved file ships nothing either: a save
    /// in flight may replace the file at any moment.
    pub fn set_snapshot_refusal(&mut self, why: Option<&'static str>) {
        self.snapshot_refusal = why;
    }

    /// The driver submitted every record staged so far as one WAL entry.
    pub fn records_submitted(&mut self) {
        self.staged_bytes = 0;
    }

    /// Timers the driver fired: they are no longer armed.
    pub fn timers_fired(&mut self, ids: &[TimerId]) {
        for id in ids {
            self.armed_timers.remove(id);
        }
    }

    /// The instance died (or is replaced) and its timers with it.
    pub fn clear_timers(&mut self) {
        self.armed_timers.clear();
    }

    /// Refuses an import over a limit: the plugin gets a storage error, and
    /// the status shows the refusal.
    fn refuse(&mut self, why: String) -> StorageError {
        tracing::debug!(region = %self.name, %why, "import refused");
        self.last_refusal = Some((self.clock.now(), why.clone()));
        self.refusals_total += 1;
        StorageError::Failed(why)
    }

    /// Charges `payload` bytes of one journal record against the bytes the
    /// region may stage for one WAL entry. Records that shrink storage
    /// (truncate, compact) may use twice the limit, so a plugin that hit it
    /// can still free space in the same round.
    fn charge_record(&mut self, what: &str, payload: usize) -> Result<(), StorageError> {
        let cost = payload as u64 + RECORD_OVERHEAD_BYTES;
        let total = self.staged_bytes + self.callback_staged_bytes + cost;
        let limit = if payload == 0 {
            self.limits.staged_bytes.saturating_mul(2)
        } else {
            self.limits.staged_bytes
        };
        if total > limit {
            return Err(self.refuse(format!(
                "quota exceeded: region {} {what} would stage {total} bytes for one WAL entry > limit {} (quota.staged-bytes)",
                self.name, self.limits.staged_bytes
            )));
        }
        self.callback_staged_bytes += cost;
        Ok(())
    }

    /// Charges `bytes` of host memory for outputs of the callback. Outputs
    /// are held until the callback's records are durable; past the
    /// `staged_bytes` limit in one callback, the plugin is flooding the host
    /// (e.g. a reject or send per id in a loop) and the callback fails.
    fn charge_output(&mut self, what: &str, bytes: usize) -> bool {
        self.callback_output_bytes += bytes as u64 + OUTPUT_OVERHEAD_BYTES;
        if self.callback_output_bytes > self.limits.staged_bytes {
            self.violate(format!(
                "{what}: the callback's messages and replies take more than {} bytes (quota.staged-bytes)",
                self.limits.staged_bytes
            ));
            return false;
        }
        true
    }

    /// Refuses growth while the node's disk is below its reserve.
    fn check_reserve(&mut self, what: &str) -> Result<(), StorageError> {
        let free = self
            .reserve
            .as_ref()
            .and_then(|r| r.below_reserve().map(|free| (free, r.reserve_bytes())));
        match free {
            Some((free, reserve)) => Err(self.refuse(format!(
                "disk reserve: {free} bytes free on the node's disk < reserve {reserve} (disk_reserve_bytes); region {} may not grow its {what}",
                self.name
            ))),
            None => Ok(()),
        }
    }

    fn meta_insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        let added = (key.len() + value.len()) as u64;
        let klen = key.len() as u64;
        let previous = self.meta.insert(key, value);
        self.meta_bytes += added;
        if let Some(previous) = &previous {
            self.meta_bytes -= klen + previous.len() as u64;
        }
        previous
    }

    fn meta_remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let previous = self.meta.remove(key)?;
        self.meta_bytes -= (key.len() + previous.len()) as u64;
        Some(previous)
    }

    pub fn name(&self) -> &RegionName {
        &self.name
    }

    pub fn state(&self) -> &KvStateMachine {
        &self.state
    }

    pub fn log_view(&self) -> &RegionLog {
        &self.log
    }

    pub fn pending_reads(&self) -> usize {
        self.reads.len()
    }

    /// Registers the query of a read about to be handed to the plugin.
    pub fn register_read(&mut self, id: RequestId, query: Vec<u8>) {
        self.reads.insert(id, query);
    }

    /// Forgets a read that will not be answered by the plugin.
    pub fn forget_read(&mut self, id: RequestId) {
        self.reads.remove(&id);
    }

    /// Marks a contract violation; the current callback will fail with it.
    pub fn violate(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(why);
        }
    }

    pub fn take_violation(&mut self) -> Option<String> {
        self.violation.take()
    }

    /// Keeps the plugin's log lines (with their level) until drained: the
    /// simulator stamps them with virtual time and the node id.
    pub fn enable_log_tap(&mut self) {
        self.log_tap.get_or_insert_with(Vec::new);
    }

    /// The plugin log lines kept since the last call.
    pub fn drain_logs(&mut self) -> Vec<(Level, String)> {
        self.log_tap
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn take_last_panic(&mut self) -> Option<String> {
        self.last_panic.take()
    }

    /// Keeps the callback's effects: the undo log is dropped and the staged
    /// effects handed to the driver.
    pub fn commit_callback(&mut self) -> Effects {
        self.undo.clear();
        self.callback_output_bytes = 0;
        self.staged_timer_slots.clear();
        self.staged_bytes += std::mem::take(&mut self.callback_staged_bytes);
        self.violation = None;
        self.rng_at_start = None;
        for id in std::mem::take(&mut self.completed_reads) {
            // Removing the query answers each read once, even if listed twice.
            if let Some(query) = self.reads.remove(&id) {
                let outcome = self.state.query(&query);
                self.staged.outputs.push(Output::Reply {
                    id,
                    reply: Reply::Outcome(outcome),
                });
            }
        }
        let effects = std::mem::take(&mut self.staged);
        for output in &effects.outputs {
            if let Output::Reply { id, .. } = output {
                self.reads.remove(id);
            }
        }
        effects
    }

    /// Reverses every effect of the callback, newest first.
    pub fn rollback_callback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Log(undo) => self.log.undo(undo),
                Undo::Meta { key, previous } => match previous {
                    Some(value) => {
                        self.meta_insert(key, value);
                    }
                    None => {
                        self.meta_remove(&key);
                    }
                },
                Undo::State(undo) => self.state.undo(undo),
                Undo::Tombstones(undo) => self.state.undo_compaction(undo),
                Undo::StateReplaced(previous) => self.state = *previous,
                Undo::TimerArmed(id) => {
                    self.armed_timers.remove(&id);
                }
                Undo::TimerDisarmed(id) => {
                    self.armed_timers.insert(id);
                }
            }
        }
        self.callback_staged_bytes = 0;
        self.callback_output_bytes = 0;
        self.staged = Effects::default();
        self.staged_timer_slots.clear();
        self.completed_reads.clear();
        self.violation = None;
        if let Some(rng) = self.rng_at_start.take() {
            self.rng = rng;
        }
    }

    /// Starts a new epoch's storage (live swap): the next protocol gets an
    /// empty log and kv area and never sees the previous protocol's, while
    /// the state machine, limits and random generator carry over. Called
    /// outside any callback.
    pub fn reset_storage(&mut self) {
        self.log = RegionLog::default();
        self.meta.clear();
        self.meta_bytes = 0;
        self.reads.clear();
        self.staged = Effects::default();
        self.staged_timer_slots.clear();
        self.completed_reads.clear();
        self.rng_at_start = None;
        self.undo.clear();
        self.violation = None;
        self.armed_timers.clear();
        self.staged_bytes = 0;
        self.callback_staged_bytes = 0;
        self.callback_output_bytes = 0;
    }

    /// Replaces the state machine outside any callback (a shipped snapshot
    /// the plugin accepted and the host saved).
    pub fn replace_state(&mut self, state: KvStateMachine) {
        self.state = state;
    }

    /// Replaces the state machine with a shipped snapshot image (after the
    /// plugin accepted the offer).
    pub fn install_snapshot(&mut self, image: &[u8]) -> Result<(), String> {
        let state = KvStateMachine::restore(image).map_err(|e| e.to_string())?;
        let previous = std::mem::replace(&mut self.state, state);
        self.undo.push(Undo::StateReplaced(Box::new(previous)));
        Ok(())
    }

    fn stage_timer(&mut self, id: TimerId, change: TimerChange) {
        match self
            .staged_timer_slots
            .get(&id)
            .and_then(|&slot| self.staged.timers.get_mut(slot))
        {
            Some(staged) => *staged = change,
            None => {
                self.staged_timer_slots.insert(id, self.staged.timers.len());
                self.staged.timers.push(change);
            }
        }
    }

    fn region(&self) -> String {
        self.name.as_str().to_string()
    }

    fn check_batch(&mut self, what: &str, batch: &Batch) -> bool {
        if batch.is_well_formed() {
            true
        } else {
            self.violate(format!("{what}: batch offsets are not within its data"));
            false
        }
    }
}

impl RegionCore {
    /// The checks both apply imports make: a well-formed batch and an
    /// advancing position; charges the replies. False: nothing to apply
    /// (empty, or a violation was recorded).
    fn check_apply(&mut self, import: &str, commands: &Applies, position: u64) -> bool {
        if !self.check_batch(import, &commands.payloads) {
            return false;
        }
        if commands.ids.len() != commands.payloads.len() {
            self.violate(format!(
                "{import}: {} ids for {} payloads",
                commands.ids.len(),
                commands.payloads.len()
            ));
            return false;
        }
        if commands.is_empty() {
            return false;
        }
        let applied = self.state.applied_position();
        if position == u64::MAX {
            self.violate(format!(
                "{import} at position {position}: no position could follow it, so the region could never apply again"
            ));
            return false;
        }
        if position <= applied {
            self.violate(format!(
                "{import}: position {position} does not advance past {applied}"
            ));
            return false;
        }
        // Each command leaves a reply (its payload is not kept).
        self.charge_output(import, OUTPUT_OVERHEAD_BYTES as usize * commands.len())
    }
}

impl Host for RegionCore {
    fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError> {
        if !self.check_batch("log.append", entries) {
            return Err(StorageError::OutOfRange("malformed batch".into()));
        }
        if first == 0 {
            self.violate("log.append at position 0: positions start at 1".into());
            return Err(StorageError::OutOfRange("position 0".into()));
        }
        let count = entries.len() as u64;
        if count > 0
            && first
                .checked_add(count - 1)
                .is_none_or(|last| last > POSITION_MAX)
        {
            self.violate(format!(
                "log.append of {count} entries at {first} passes the last usable position {POSITION_MAX}"
            ));
            return Err(StorageError::OutOfRange("position overflow".into()));
        }
        let charged = entries.byte_len() as u64 + LOG_ENTRY_OVERHEAD_BYTES * count;
        if charged > self.limits.log_bytes {
            return Err(self.refuse(format!(
                "quota exceeded: region {} log bytes {charged} in one append > limit {} (quota.log-bytes)",
                self.name, self.limits.log_bytes
            )));
        }
        // The WAL record holds the payload and a u32 end per entry.
        let staged = entries.byte_len() + 4 * entries.len();
        self.charge_record("log.append", staged)?;
        let refund = staged as u64 + RECORD_OVERHEAD_BYTES;
        let before = self.log_charge();
        let undo = match self.log.append(first, entries) {
            Ok(undo) => undo,
            Err(error) => {
                self.callback_staged_bytes -= refund;
                return Err(error);
            }
        };
        let after = self.log_charge();
        if after > before {
            let refused = if after > self.limits.log_bytes {
                Some(Err(self.refuse(format!(
                    "quota exceeded: region {} log bytes {after} > limit {} (quota.log-bytes); compact the log",
                    self.name, self.limits.log_bytes
                ))))
            } else {
                self.check_reserve("log").err().map(Err)
            };
            if let Some(refused) = refused {
                self.log.undo(undo);
                self.callback_staged_bytes -= refund;
                return refused;
            }
        }
        self.undo.push(Undo::Log(undo));
        self.staged.records.push(JournalRecord::LogAppend {
            region: self.region(),
            first,
            data: ByteBuf::from(entries.data.clone()),
            ends: entries.ends.clone(),
        });
        Ok(())
    }

    fn log_read(&mut self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError> {
        self.log.read(first, last, max_bytes)
    }

    fn log_bounds(&mut self) -> LogBounds {
        self.log.bounds()
    }

    fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        self.charge_record("log.truncate-suffix", 0)?;
        let undo = match self.log.truncate_suffix(from) {
            Ok(undo) => undo,
            Err(error) => {
                self.callback_staged_bytes -= RECORD_OVERHEAD_BYTES;
                return Err(error);
            }
        };
        self.undo.push(Undo::Log(undo));
        self.staged.records.push(JournalRecord::LogTruncate {
            region: self.region(),
            from,
        });
        Ok(())
    }

    fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError> {
        if through == u64::MAX {
            self.violate(format!(
                "log.compact-prefix({through}) would wrap the first position; compact at most through {POSITION_MAX}"
            ));
            return Err(StorageError::OutOfRange(
                "compact-prefix past the last position".into(),
            ));
        }
        self.charge_record("log.compact-prefix", 0)?;
        let undo = match self.log.compact_prefix(through) {
            Ok(undo) => undo,
            Err(error) => {
                self.callback_staged_bytes -= RECORD_OVERHEAD_BYTES;
                return Err(error);
            }
        };
        self.undo.push(Undo::Log(undo));
        self.staged.records.push(JournalRecord::LogCompact {
            region: self.region(),
            through,
        });
        Ok(())
    }

    fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.meta.get(key).cloned()
    }

    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if key.len() > META_KEY_BYTES_MAX || value.len() > META_VALUE_BYTES_MAX {
            return Err(StorageError::OutOfRange(format!(
                "kv keys are limited to {META_KEY_BYTES_MAX} bytes and values to {META_VALUE_BYTES_MAX}"
            )));
        }
        let old = self.meta.get(key).map(|v| (key.len() + v.len()) as u64);
        let new_bytes = self.meta_bytes - old.unwrap_or(0) + (key.len() + value.len()) as u64;
        let new_keys = self.meta.len() as u64 + u64::from(old.is_none());
        if new_keys > self.limits.kv_keys && old.is_none() {
            return Err(self.refuse(format!(
                "quota exceeded: region {} kv keys {new_keys} > limit {} (quota.kv-keys)",
                self.name, self.limits.kv_keys
            )));
        }
        if new_bytes > self.meta_bytes {
            if new_bytes > self.limits.kv_bytes {
                return Err(self.refuse(format!(
                    "quota exceeded: region {} kv bytes {new_bytes} > limit {} (quota.kv-bytes)",
                    self.name, self.limits.kv_bytes
                )));
            }
            self.check_reserve("kv area")?;
        }
        self.charge_record("kv.put", key.len() + value.len())?;
        let previous = self.meta_insert(key.to_vec(), value.to_vec());
        self.undo.push(Undo::Meta {
            key: key.to_vec(),
            previous,
        });
        self.staged.records.push(JournalRecord::MetaPut {
            region: self.region(),
            key: ByteBuf::from(key.to_vec()),
            value: ByteBuf::from(value.to_vec()),
        });
        Ok(())
    }

    fn kv_delete(&mut self, key: &[u8]) {
        if let Some(previous) = self.meta_remove(key) {
            self.undo.push(Undo::Meta {
                key: key.to_vec(),
                previous: Some(previous),
            });
            self.staged.records.push(JournalRecord::MetaDelete {
                region: self.region(),
                key: ByteBuf::from(key.to_vec()),
            });
        }
    }

    fn send(&mut self, to: NodeId, messages: &Batch) {
        if !self.check_batch("network.send", messages) || to == self.self_id || messages.is_empty()
        {
            return;
        }
        if !self.charge_output("network.send", messages.byte_len() + 4 * messages.len()) {
            return;
        }
        self.staged.outputs.push(Output::Send {
            to,
            messages: messages.clone(),
        });
    }

    fn send_eager(&mut self, to: NodeId, messages: &Batch) {
        if !self.check_batch("network.send-eager", messages)
            || to == self.self_id
            || messages.is_empty()
        {
            return;
        }
        if !self.charge_output(
            "network.send-eager",
            messages.byte_len() + 4 * messages.len(),
        ) {
            return;
        }
        self.staged.outputs.push(Output::SendEager {
            to,
            messages: messages.clone(),
        });
    }

    fn now(&mut self) -> u64 {
        u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX)
    }

    fn set_timer(&mut self, id: TimerId, after_nanos: u64) {
        if !self.armed_timers.contains(&id) {
            if self.armed_timers.len() as u64 >= self.limits.timers {
                self.violate(format!(
                    "clock.set-timer({id}): {} timers are armed, the limit (quota.timers); re-arm or cancel existing timer ids",
                    self.limits.timers
                ));
                return;
            }
            self.armed_timers.insert(id);
            self.undo.push(Undo::TimerArmed(id));
        }
        let deadline_nanos = self.now().saturating_add(after_nanos);
        self.stage_timer(id, TimerChange::Set { id, deadline_nanos });
    }

    fn cancel_timer(&mut self, id: TimerId) {
        // Cancelling a timer that is not armed changes nothing.
        if self.armed_timers.remove(&id) {
            self.undo.push(Undo::TimerDisarmed(id));
            self.stage_timer(id, TimerChange::Cancel { id });
        }
    }

    fn random(&mut self) -> u64 {
        if self.rng_at_start.is_none() {
            self.rng_at_start = Some(self.rng.clone());
        }
        self.rng.next_u64()
    }

    fn apply(&mut self, commands: &Applies, position: u64) {
        if !self.check_apply("state-machine.apply", commands, position) {
            return;
        }
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            let (outcome, undo) = self.state.apply(payload, position);
            self.undo.push(Undo::State(undo));
            self.staged.outputs.push(Output::Reply {
                id: *id,
                reply: Reply::Outcome(outcome),
            });
        }
    }

    fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64) {
        if stamps.len() != commands.ids.len() {
            self.violate(format!(
                "state-machine.apply-stamped: {} stamps for {} commands",
                stamps.len(),
                commands.ids.len()
            ));
            return;
        }
        if !self.check_apply("state-machine.apply-stamped", commands, position) {
            return;
        }
        for ((id, payload), stamp) in commands
            .ids
            .iter()
            .zip(commands.payloads.iter())
            .zip(stamps)
        {
            let (outcome, undo) = self.state.apply_stamped(payload, *stamp, position);
            self.undo.push(Undo::State(undo));
            self.staged.outputs.push(Output::Reply {
                id: *id,
                reply: Reply::Outcome(outcome),
            });
        }
    }

    fn compact_tombstones(&mut self, below: u64) {
        let undo = self.state.compact_tombstones(below);
        self.undo.push(Undo::Tombstones(undo));
    }

    fn query(&mut self, query: &[u8]) -> Vec<u8> {
        self.state.query(query).encode()
    }

    fn snapshot(&mut self) -> Result<u64, StorageError> {
        let position = self.state.applied_position();
        let image = Arc::new(self.state.snapshot());
        // An async request earlier in this callback saves this newer image
        // (it covers at least its position), after the synchronous save.
        if let Some(request) = self.staged.snapshot_request.as_mut() {
            request.image = image.clone();
        }
        self.staged.snapshot = Some(StagedSnapshot {
            position,
            image,
            records_before: self.staged.records.len(),
        });
        Ok(position)
    }

    fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError> {
        let refusal = self.snapshot_refusal.or(self
            .staged
            .snapshot_request
            .as_ref()
            .map(|_| SAVE_IN_FLIGHT));
        if let Some(why) = refusal {
            return Err(StorageError::Failed(format!(
                "state-machine.snapshot-async: {why}; ask again later"
            )));
        }
        let position = self.state.applied_position();
        let started = std::time::Instant::now();
        let image = Arc::new(self.state.snapshot());
        self.staged.snapshot_request = Some(SnapshotRequest {
            position,
            image,
            notify,
            capture: started.elapsed(),
        });
        Ok(position)
    }

    fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]) {
        if to != self.self_id && self.charge_output("state-machine.send-snapshot", metadata.len()) {
            // The metadata describes the latest snapshot the plugin knows
            // of: one taken earlier in this callback, else the saved one.
            let image = match &self.staged.snapshot {
                Some(staged) => PinnedImage::Pinned(staged.image.clone()),
                None if self.snapshot_refusal == Some(SAVE_IN_FLIGHT)
                    || self.staged.snapshot_request.is_some() =>
                {
                    // The file may turn into the save in flight at any
                    // moment: no metadata could describe what would ship.
                    tracing::debug!(region = %self.name, to, "send-snapshot dropped: a snapshot save is in flight");
                    return;
                }
                None => PinnedImage::LatestSaved,
            };
            self.staged.outputs.push(Output::SendSnapshot {
                to,
                metadata: metadata.to_vec(),
                image,
            });
        }
    }

    fn digest(&mut self) -> Vec<u8> {
        self.state.digest().to_vec()
    }

    fn complete_reads(&mut self, ids: &[RequestId]) {
        // Evaluated when the callback returns; unknown read ids (already
        // answered, expired, or from an earlier run) are ignored then, since
        // replays may legitimately answer old ids. A write id is a mistake
        // that would leave its client waiting.
        if !self.charge_output(
            "client.complete-reads",
            ids.len() * OUTPUT_OVERHEAD_BYTES as usize,
        ) {
            return;
        }
        for id in ids {
            if !is_read_id(*id) && !self.reads.contains_key(id) {
                self.violate(format!(
                    "client.complete-reads({id}): request {id} is a write; answer writes with state-machine.apply or client.reject"
                ));
                return;
            }
            self.completed_reads.push(*id);
        }
    }

    fn reject(&mut self, ids: &[RequestId], reason: &Rejection) {
        let reason_bytes = match reason {
            Rejection::Invalid(why) | Rejection::Unavailable(why) => why.len(),
            _ => 0,
        };
        if !self.charge_output(
            "client.reject",
            ids.len() * (OUTPUT_OVERHEAD_BYTES as usize + reason_bytes),
        ) {
            return;
        }
        for id in ids {
            self.staged.outputs.push(Output::Reply {
                id: *id,
                reply: Reply::Rejected(reason.clone()),
            });
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        if let Some(tap) = self.log_tap.as_mut() {
            // Bounded: a plugin logging in a loop costs the trace, not memory.
            if tap.len() < LOG_TAP_LINES_MAX {
                let line: String = message.chars().take(LOG_TAP_LINE_CHARS_MAX).collect();
                tap.push((level, line));
            }
        }
        let region = self.name.as_str();
        match level {
            Level::Trace => tracing::trace!(region, plugin = true, "{message}"),
            Level::Debug => tracing::debug!(region, plugin = true, "{message}"),
            Level::Info => tracing::info!(region, plugin = true, "{message}"),
            Level::Warn => tracing::warn!(region, plugin = true, "{message}"),
            Level::Error => {
                tracing::error!(region, plugin = true, "{message}");
                if let Some(panic) = message.strip_prefix("plugin panicked: ") {
                    self.last_panic = Some(panic.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::KvCommand;

    fn core() -> RegionCore {
        RegionCore {
            self_id: 1,
            ..RegionCore::default()
        }
    }

    fn put(key: &str) -> Vec<u8> {
        KvCommand::Put {
            key: key.into(),
            value: b"v".to_vec(),
        }
        .encode()
    }

    #[test]
    fn rollback_reverses_every_effect() {
        let mut core = core();
        core.log_append(1, &Batch::from_items([b"a"]))
            .expect("append");
        core.kv_put(b"term", b"1").expect("put");
        let mut applies = Applies::default();
        applies.push(7, &put("x"));
        core.apply(&applies, 1);
        let committed = core.commit_callback();
        assert_eq!(committed.records.len(), 2);
        assert_eq!(committed.outputs.len(), 1);

        let log_before = core.log.clone();
        let state_before = core.state.clone();
        core.log_append(2, &Batch::from_items([b"b"]))
            .expect("append");
        core.log_truncate_suffix(1).expect("truncate");
        core.kv_put(b"term", b"2").expect("put");
        core.kv_delete(b"term");
        let mut applies = Applies::default();
        applies.push(8, &put("y"));
        core.apply(&applies, 2);
        core.log_compact_prefix(5).expect("compact");
        core.rollback_callback();
        assert_eq!(core.log, log_before);
        assert_eq!(core.state, state_before);
        assert_eq!(core.kv_get(b"term"), Some(b"1".to_vec()));
        assert!(core.commit_callback().is_empty());
    }

    #[test]
    fn non_advancing_apply_is_a_contract_violation() {
        let mut core = core();
        let mut applies = Applies::default();
        applies.push(1, &put("x"));
        core.apply(&applies, 3);
        core.apply(&applies, 3);
        assert!(core.take_violation().is_some());
    }

    #[test]
    fn malformed_batches_are_violations_not_panics() {
        let mut core = core();
        let bad = Batch {
            data: vec![1, 2],
            ends: vec![5],
        };
        assert!(core.log_append(1, &bad).is_err());
        assert!(core.take_violation().is_some());
        core.send(2, &bad);
        assert!(core.take_violation().is_some());
    }

    #[test]
    fn reads_are_answered_once_after_the_callbacks_applies() {
        let mut core = core();
        core.register_read(
            5,
            crate::state_machine::KvQuery::Get { key: b"x".to_vec() }.encode(),
        );
        // Completed before the apply in the same callback, and twice: it is
        // answered once, with the state after the apply.
        core.complete_reads(&[5, 99, 5]);
        let mut applies = Applies::default();
        applies.push(1, &put("x"));
        core.apply(&applies, 1);
        let effects = core.commit_callback();
        let replies: Vec<_> = effects
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Reply { id, reply } => Some((*id, reply.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 2, "one write reply and one read reply");
        assert!(matches!(
            &replies[1],
            (5, Reply::Outcome(KvOutcome::Value(Some(_))))
        ));
        assert_eq!(core.pending_reads(), 0);
    }

    #[test]
    fn snapshot_records_its_place_among_records() {
        let mut core = core();
        core.log_append(1, &Batch::from_items([b"a"]))
            .expect("append");
        assert_eq!(core.snapshot(), Ok(0));
        core.log_compact_prefix(0).expect("compact");
        let effects = core.commit_callback();
        let snapshot = effects.snapshot.expect("staged snapshot");
        assert_eq!(snapshot.records_before, 1);
        assert_eq!(effects.records.len(), 2);
    }

    fn limited(limits: RegionLimits) -> RegionCore {
        let mut core = core();
        core.set_limits(limits, None);
        core
    }

    #[test]
    fn quota_counters_follow_rollback_and_freeing() {
        // Each log entry counts 32 bytes beyond its payload.
        let mut core = limited(RegionLimits {
            log_bytes: 70,
            kv_bytes: 10,
            kv_keys: 2,
            ..RegionLimits::default()
        });
        core.log_append(1, &Batch::from_items([b"12345678"]))
            .expect("8 + 32 bytes fit");
        core.kv_put(b"k", b"1234").expect("5 bytes fit");
        core.commit_callback();

        // Refused past each limit, with the limit in the message.
        let error = core
            .log_append(2, &Batch::from_items([b"abc"]))
            .expect_err("75 bytes do not");
        assert!(
            matches!(&error, StorageError::Failed(why) if why.contains("log bytes 75 > limit 70")),
            "{error:?}"
        );
        assert!(core.kv_put(b"k", b"1234567890").is_err(), "kv bytes");
        core.kv_put(b"j", b"1").expect("second key");
        assert!(core.kv_put(b"i", b"1").is_err(), "kv keys");
        assert!(core.quota_usage().exceeded);
        assert!(
            core.take_violation().is_none(),
            "refusals are not violations"
        );
        // Replacing the suffix with less is fine over the quota.
        core.log_append(1, &Batch::from_items([b"12"]))
            .expect("shrinks");
        assert_eq!(core.quota_usage().log_bytes, 34);

        // A trapped callback's changes leave the counters as they were.
        core.rollback_callback();
        let usage = core.quota_usage();
        assert_eq!((usage.log_bytes, usage.kv_bytes, usage.kv_keys), (40, 5, 1));

        // Compacting and deleting free quota.
        core.log_compact_prefix(1).expect("compact");
        core.kv_delete(b"k");
        core.log_append(2, &Batch::from_items([b"1234567890"]))
            .expect("fits after compaction");
        core.kv_put(b"x", b"123456789").expect("fits after delete");
        let usage = core.quota_usage();
        assert_eq!(
            (usage.log_bytes, usage.kv_bytes, usage.kv_keys),
            (42, 10, 1)
        );

        // Empty entries are not free.
        let empty: [&[u8]; 2] = [b"", b""];
        assert!(core.log_append(3, &Batch::from_items(empty)).is_err());
    }

    #[test]
    fn timer_changes_are_coalesced_per_id() {
        let mut core = core();
        for after in 0..1000 {
            core.set_timer(1, after);
        }
        for id in 100..1100 {
            core.cancel_timer(id);
        }
        core.set_timer(2, 5);
        core.cancel_timer(2);
        let effects = core.commit_callback();
        assert_eq!(effects.timers.len(), 2, "{:?}", effects.timers);
        assert!(matches!(effects.timers[0], TimerChange::Set { id: 1, .. }));
        assert_eq!(effects.timers[1], TimerChange::Cancel { id: 2 });
    }

    #[test]
    fn a_round_stages_at_most_one_wal_entry() {
        let mut core = limited(RegionLimits {
            staged_bytes: 1000,
            ..RegionLimits::default()
        });
        let big = vec![0u8; 600];
        core.log_append(1, &Batch::from_items([&big])).expect("600");
        core.commit_callback();
        // The round's earlier callback counts until the driver submits.
        let error = core
            .log_append(2, &Batch::from_items([&big]))
            .expect_err("1200 + overhead > 1000");
        assert!(
            matches!(&error, StorageError::Failed(why) if why.contains("one WAL entry")),
            "{error:?}"
        );
        // Shrinking records still fit in the same round.
        core.log_truncate_suffix(1).expect("truncate");
        core.rollback_callback();
        core.records_submitted();
        core.log_append(2, &Batch::from_items([&big]))
            .expect("a new WAL entry");
    }

    #[test]
    fn the_disk_reserve_refuses_growth_only() {
        use crate::region::quota::{DiskReserve, FreeSpace};
        use std::sync::atomic::AtomicU64;
        let free = Arc::new(AtomicU64::new(10));
        let reserve = DiskReserve::new(".".into(), 100, FreeSpace::shared(free));
        let mut core = core();
        core.log_append(1, &Batch::from_items([b"abcd"]))
            .expect("append");
        core.kv_put(b"k", b"vv").expect("put");
        core.commit_callback();
        core.set_limits(RegionLimits::default(), Some(Arc::new(reserve)));
        let error = core
            .log_append(2, &Batch::from_items([b"e"]))
            .expect_err("grows");
        assert!(
            matches!(&error, StorageError::Failed(why) if why.contains("disk reserve")),
            "{error:?}"
        );
        assert!(core.kv_put(b"k", b"vvv").is_err(), "grows");
        core.kv_put(b"k", b"v").expect("shrinks");
        core.log_append(1, &Batch::from_items([b"ab"]))
            .expect("shrinks");
        core.log_truncate_suffix(1).expect("truncate");
        core.log_compact_prefix(3).expect("compact");
        core.kv_delete(b"k");
        assert!(core.take_violation().is_none());
    }

    #[test]
    fn timers_are_bounded_and_rearming_is_free() {
        let mut core = limited(RegionLimits {
            timers: 2,
            ..RegionLimits::default()
        });
        core.set_timer(1, 10);
        core.set_timer(2, 10);
        core.set_timer(2, 20);
        assert!(core.take_violation().is_none(), "re-arming is fine");
        core.commit_callback();
        core.cancel_timer(1);
        core.set_timer(3, 10);
        assert!(core.take_violation().is_none(), "a cancelled slot is free");
        core.set_timer(4, 10);
        let why = core.take_violation().expect("a third timer");
        assert!(why.contains("quota.timers"), "{why}");
        // Rollback restores the armed set: 1 and 2 again, so 3 is refused.
        core.rollback_callback();
        core.set_timer(3, 10);
        assert!(core.take_violation().is_some());
        core.rollback_callback();
        // Fired timers free their slot.
        core.timers_fired(&[1]);
        core.set_timer(3, 10);
        assert!(core.take_violation().is_none());
    }

    #[test]
    fn edge_positions_are_contract_violations() {
        let mut core = core();
        assert!(core.log_append(0, &Batch::from_items([b"a"])).is_err());
        assert!(
            core.take_violation()
                .expect("append at 0")
                .contains("start at 1")
        );
        assert!(core.log_compact_prefix(u64::MAX).is_err());
        assert!(core.take_violation().expect("compact MAX").contains("wrap"));
        assert_eq!(core.log_bounds(), LogBounds { first: 1, last: 0 });
        core.log_compact_prefix(POSITION_MAX - 1).expect("compact");
        assert!(
            core.log_append(POSITION_MAX, &Batch::from_items([b"a", b"b"]))
                .is_err()
        );
        assert!(
            core.take_violation()
                .expect("past the last")
                .contains("last usable")
        );
        core.rollback_callback();

        let mut applies = Applies::default();
        applies.push(2, &put("x"));
        core.apply(&applies, u64::MAX);
        assert!(
            core.take_violation()
                .expect("apply MAX")
                .contains("could follow")
        );

        // A write id answered as a read; unknown read ids are ignored.
        core.complete_reads(&[7]);
        assert!(core.take_violation().is_none(), "7 is a read id");
        core.complete_reads(&[8]);
        assert!(
            core.take_violation()
                .expect("8 is a write")
                .contains("is a write")
        );
        // A registered read is answered whatever its id.
        core.rollback_callback();
        core.register_read(
            10,
            crate::state_machine::KvQuery::Get { key: b"x".to_vec() }.encode(),
        );
        core.complete_reads(&[10]);
        assert!(core.take_violation().is_none());
        assert_eq!(core.commit_callback().outputs.len(), 1);
    }
}
