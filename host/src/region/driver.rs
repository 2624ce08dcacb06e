//! The region driver: a tokio task that feeds a replica batches of events
//! and enforces output commit.
//!
//! Each round drains the inbox (up to [`ROUND_EVENTS_MAX`]), hands the
//! plugin one batch per event kind, submits the round's journal records to
//! the node's group commit as one WAL entry, and holds every reply and
//! message until the WAL is durable through that entry. The next round
//! starts while the last one syncs (pipelining).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use synod_guest_sdk::{
    Batch, Commands, Consistency, Messages, NodeId, ReadLevel, Reads, Rejection, RequestId,
    SnapshotOffer, Status, TimerId,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::journal::JournalRecord;
use crate::metrics::RegionMetrics;
use crate::network::Network;
use crate::plugin::{Call, CallResult, PluginFailure};
use crate::region::core::{Effects, Output, PinnedImage, QuotaUsage, Reply, TimerChange};
use crate::region::cpu::{Lane, background_runtime};
use crate::region::epoch::{EpochEvent, EpochState, HeldRequest, SharedSpec};
use crate::region::pending::{PendingRequests, READ_ID_BIT};
use crate::region::replica::{Delivery, RegionReplica};
use crate::region::{RegionName, RegionSpec};
use crate::state_machine::{KvCommand, KvOutcome, KvQuery, KvStateMachine, conflict_key};
use crate::storage::commit::CommitLog;
use crate::storage::snapshot::SnapshotStore;

/// Events taken from the inbox per round: bounds the batch handed to the
/// plugin and the latency of one round.
pub const ROUND_EVENTS_MAX: usize = 4096;
/// Write payload bytes taken from the inbox per round: a round's writes
/// become one WAL entry, which must stay well below the region's
/// `staged_bytes` limit (64 MiB by default) and the WAL frame limit.
pub const ROUND_WRITE_BYTES_MAX: usize = 8 << 20;
/// Inbox capacity; a full inbox answers `overloaded`.
pub const INBOX_CAPACITY: usize = 16 * 1024;
/// Bytes of peer messages a region's inbox may hold; beyond it further
/// messages are refused (the transport drops and counts them), so a peer
/// flooding one region cannot grow the node's memory without bound.
pub const INBOX_MESSAGE_BYTES_MAX: usize = 32 << 20;

/// Runs `f`, which blocks on the disk, telling a multi-threaded tokio
/// runtime first so it moves this worker's other tasks elsewhere. Under the
/// simulator (no runtime) it simply runs.
pub(super) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A snapshot write taking longer than this is logged as a warning.
pub(super) const SNAPSHOT_SLOW: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a client request got no outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("rejected by the protocol: {0:?}")]
    Rejected(Rejection),
    #[error("{0}")]
    Unavailable(String),
    #[error("region is overloaded: {0}")]
    Overloaded(String),
    /// No outcome in time. For a write the outcome is unknown: it may or
    /// may not have been applied; a read changed nothing.
    #[error(
        "no answer within {0:?} (a write may or may not have been applied; a read changed nothing)"
    )]
    Timeout(Duration),
    #[error("region is shutting down")]
    Stopped,
}

pub type ClientReply = Result<KvOutcome, ClientError>;

/// What a region driver receives.
pub enum RegionEvent {
    /// `timeout`: how long the client waits; the driver forgets the
    /// request then (answering it as timed out), whatever the protocol does.
    Write {
        command: Vec<u8>,
        keys: Vec<u64>,
        reply: oneshot::Sender<ClientReply>,
        timeout: Duration,
    },
    Read {
        query: Vec<u8>,
        level: ReadLevel,
        reply: oneshot::Sender<ClientReply>,
        timeout: Duration,
    },
    /// `epoch`: the epoch the sender was in; messages of another epoch
    /// than the region's when they are handled never reach the plugin.
    Messages {
        from: NodeId,
        epoch: u64,
        payloads: Batch,
    },
    /// A peer shipped a snapshot of its state machine (fenced by epoch
    /// like messages).
    Snapshot {
        from: NodeId,
        epoch: u64,
        metadata: Vec<u8>,
        image: Vec<u8>,
    },
    /// A step of a live protocol swap (see `region::epoch`).
    Epoch(EpochEvent),
    /// An operator call into the protocol (membership, leader transfer,
    /// seal); answered with the plugin's result.
    Control {
        call: Call,
        reply: oneshot::Sender<Result<CallResult, String>>,
    },
    Status {
        reply: oneshot::Sender<RegionStatus>,
    },
    /// Operator action: rebuild a fenced or quarantined replica now.
    Restart {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop after flushing: answers `done` once every output that can be
    /// released has been.
    Shutdown { done: oneshot::Sender<()> },
}

impl RegionEvent {
    /// The command bytes of a write (0 for other events).
    fn write_bytes(&self) -> usize {
        match self {
            RegionEvent::Write { command, .. } => command.len(),
            _ => 0,
        }
    }
}

/// A region replica's status, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub epoch: u64,
    pub protocol: ProtocolStatus,
    pub health: HealthStatus,
    /// What the plugin reports; absent while it is not running.
    pub plugin: Option<PluginStatus>,
    pub log: LogStatus,
    pub state_machine: StateMachineStatus,
    pub pending_requests: usize,
    /// Of `pending_requests`, the reads.
    pub pending_reads: usize,
    /// Read queries stored in the core for reads the plugin holds.
    pub read_queries: usize,
    pub held_outputs: usize,
    /// Client requests held for a protocol swap (see `region::epoch`).
    pub held_requests: usize,
    /// The swap's seal: `none`, `sealing` or `sealed`.
    pub seal: &'static str,
    pub cpu: CpuStatus,
    pub hibernation: super::hibernate::HibernationStatus,
}

/// Where the region's plugin calls run (see `region::cpu`).
#[derive(Clone, Debug, Serialize)]
pub struct CpuStatus {
    /// `inline` (on the node's workers) or `background` (idle priority).
    pub lane: &'static str,
    /// CPU time used by plugin calls since the replica was created.
    pub used_ms: u64,
    /// The same, in microseconds.
    pub used_us: u64,
    /// Plugin calls since the replica was created.
    pub calls: u64,
    pub background_calls: u64,
    /// Wasm fuel the calls consumed (0 for a native plugin).
    pub fuel: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProtocolStatus {
    pub name: String,
    pub version: String,
    pub id: String,
    pub consistency: &'static str,
    pub capabilities: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthStatus {
    /// `running`, `quota` (running, but a limit refused an import within
    /// the last 10 s), `restarting` or `quarantined`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub failures_total: u64,
    pub restarts: u64,
    pub quota: QuotaUsage,
}

#[derive(Clone, Debug, Serialize)]
pub struct PluginStatus {
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_position: u64,
    pub applied_position: u64,
    pub peers: Vec<(NodeId, u64)>,
    pub counters: Vec<(String, u64)>,
}

impl From<Status> for PluginStatus {
    fn from(status: Status) -> Self {
        Self {
            role: status.role.as_str(),
            leader: status.leader,
            term: status.term,
            commit_position: status.commit_position,
            applied_position: status.applied_position,
            peers: status
                .peers
                .into_iter()
                .map(|p| (p.peer, p.match_position))
                .collect(),
            counters: status.counters,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LogStatus {
    pub first: u64,
    pub last: u64,
    pub bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateMachineStatus {
    pub keys: usize,
    pub applied_position: u64,
    pub digest: String,
}

/// A cheap, cloneable way to talk to a region driver.
#[derive(Clone)]
pub struct RegionHandle {
    /// The current spec, replaced by the driver when the region switches
    /// epoch (shared: a handle is cloned for every request).
    spec: SharedSpec,
    /// The region's name (never changes).
    name: Arc<str>,
    pub(super) sender: mpsc::Sender<RegionEvent>,
    /// Bytes of peer messages in the inbox (see [`INBOX_MESSAGE_BYTES_MAX`]).
    inbox_message_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests through this replica's handles, for `/metrics`.
    metrics: Arc<RegionMetrics>,
}

impl RegionHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current spec (it changes when the region switches epoch).
    pub fn spec(&self) -> Arc<RegionSpec> {
        self.spec.get()
    }

    fn enqueue(&self, event: RegionEvent) -> Result<(), ClientError> {
        self.sender.try_send(event).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                ClientError::Overloaded(format!("more than {INBOX_CAPACITY} requests queued"))
            }
            mpsc::error::TrySendError::Closed(_) => ClientError::Stopped,
        })
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<ClientReply>) -> RegionEvent,
        timeout: Duration,
    ) -> ClientReply {
        let (reply, answer) = oneshot::channel();
        self.enqueue(make(reply))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Orders and applies a write; answers after it is durable.
    pub async fn write(&self, command: &KvCommand, timeout: Duration) -> ClientReply {
        let started = std::time::Instant::now();
        let keys = vec![conflict_key(command.key())];
        let command = command.encode();
        let reply = self
            .ask(
                |reply| RegionEvent::Write {
                    command,
                    keys,
                    reply,
                    timeout,
                },
                timeout,
            )
            .await;
        self.metrics.writes.record(reply.is_ok(), started);
        reply
    }

    pub async fn read(&self, query: &KvQuery, level: ReadLevel, timeout: Duration) -> ClientReply {
        let started = std::time::Instant::now();
        let query = query.encode();
        let reply = self
            .ask(
                |reply| RegionEvent::Read {
                    query,
                    level,
                    reply,
                    timeout,
                },
                timeout,
            )
            .await;
        self.metrics.reads.record(reply.is_ok(), started);
        reply
    }

    /// The request counters and latency histograms of this replica.
    pub fn metrics(&self) -> &RegionMetrics {
        &self.metrics
    }

    pub async fn status(&self) -> Result<RegionStatus, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(RegionEvent::Status { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)
    }

    pub async fn restart(&self) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(RegionEvent::Restart { reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer
            .await
            .map_err(|_| ClientError::Stopped)?
            .map_err(ClientError::Unavailable)
    }

    /// Offers a peer's snapshot, shipped in `epoch`, to the plugin (used by
    /// the transport). One from another epoch is refused here and, if the
    /// region switches while it waits in the inbox, by the driver.
    pub fn offer_snapshot(
        &self,
        from: NodeId,
        epoch: u64,
        metadata: Vec<u8>,
        image: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.check_epoch(epoch)?;
        self.enqueue(RegionEvent::Snapshot {
            from,
            epoch,
            metadata,
            image,
        })
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ClientError> {
        let current = self.spec.get().epoch;
        if epoch == current {
            Ok(())
        } else {
            Err(ClientError::Unavailable(format!(
                "region {} is in epoch {current}, not {epoch}",
                self.name
            )))
        }
    }

    /// Calls the protocol's operator entry points (membership, transfer,
    /// seal) and returns its answer.
    pub async fn control(&self, call: Call) -> Result<CallResult, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(RegionEvent::Control { call, reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer
            .await
            .map_err(|_| ClientError::Stopped)?
            .map_err(ClientError::Unavailable)
    }

    /// Delivers messages a peer sent in `epoch` (used by the transport).
    /// Messages of another epoch are refused here and, if the region
    /// switches while they wait in the inbox, by the driver.
    pub fn deliver_messages(
        &self,
        from: NodeId,
        epoch: u64,
        payloads: Batch,
    ) -> Result<(), ClientError> {
        use std::sync::atomic::Ordering;
        self.check_epoch(epoch)?;
        let bytes = message_bytes(&payloads);
        let queued = self.inbox_message_bytes.fetch_add(bytes, Ordering::AcqRel);
        if queued + bytes > INBOX_MESSAGE_BYTES_MAX {
            self.inbox_message_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(ClientError::Overloaded(format!(
                "region {} holds {queued} bytes of peer messages; the limit is {INBOX_MESSAGE_BYTES_MAX}",
                self.name
            )));
        }
        let enqueued = self.enqueue(RegionEvent::Messages {
            from,
            epoch,
            payloads,
        });
        if enqueued.is_err() {
            self.inbox_message_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        enqueued
    }

    /// Stops the driver and waits until it has flushed.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self
            .sender
            .send(RegionEvent::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }
}

/// The batches one round hands the plugin.
#[derive(Default)]
pub(super) struct RoundBatches {
    pub(super) commands: Commands,
    pub(super) reads: Reads,
    pub(super) messages: Messages,
}

impl RoundBatches {
    pub(super) fn push_write(&mut self, id: RequestId, command: &[u8], keys: &[u64]) {
        self.commands.ids.push(id);
        self.commands.payloads.push(command);
        self.commands.keys.extend_from_slice(keys);
        self.commands.key_ends.push(self.commands.keys.len() as u32);
    }
}

/// What a message batch is charged in the inbox's byte budget.
fn message_bytes(payloads: &Batch) -> usize {
    payloads.data.len() + 4 * payloads.ends.len()
}

/// What a driver shares with the rest of the node.
#[derive(Clone)]
pub struct DriverContext {
    pub node_id: NodeId,
    /// Distinguishes request ids of this run from earlier runs.
    pub incarnation: u64,
    pub commit: Arc<dyn CommitLog>,
    pub snapshots: Arc<SnapshotStore>,
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn Clock>,
}

/// The sans-IO heart of a region driver: batches events into plugin calls,
/// stages their effects, submits journal records and releases outputs once
/// durable. The tokio [`RegionDriver`] and the deterministic simulator both
/// drive it, so they exercise the same code.
pub struct ReplicaHost {
    pub(super) spec: Arc<RegionSpec>,
    /// The handles' view of `spec`, updated at an epoch switch.
    pub(super) shared_spec: SharedSpec,
    pub(super) name: RegionName,
    pub(super) replica: RegionReplica,
    pub(super) context: DriverContext,
    pub(super) pending: PendingRequests,
    /// Live swap: held requests, the seal in progress (see `region::epoch`).
    pub(super) epoch: EpochState,
    /// Outputs waiting for the WAL to be durable through their ticket.
    held: VecDeque<(u64, Vec<Output>)>,
    /// Records of the current round not yet submitted.
    round_records: Vec<JournalRecord>,
    round_outputs: Vec<Output>,
    /// The newest ticket holding this region's records.
    pub(super) last_ticket: u64,
    /// The newest ticket holding a write to the plugin's kv (its hard
    /// state): the simulator crashes nodes right after such writes.
    metadata_ticket: u64,
    pub(super) timers: HashMap<TimerId, u64>,
    next_request: u64,
    pub(super) storage_failure: Option<String>,
    /// Shipped snapshots installed (the simulator crashes nodes right after).
    snapshots_installed: u64,
    /// A `snapshot-async` save requested this round, started at its end.
    pub(super) save_requested: Option<super::snapshot_save::Requested>,
    /// The `snapshot-async` save in flight.
    pub(super) snapshot_save: Option<super::snapshot_save::InFlight>,
    /// Set when saves run on blocking threads (tokio): wakes the driver.
    pub(super) save_wake: Option<Arc<tokio::sync::Notify>>,
    /// Who to tell once a requested shutdown has flushed.
    stopped: Option<oneshot::Sender<()>>,
    /// Every released reply, when observed (the simulator's invariants).
    tap: Option<Vec<(RequestId, Reply)>>,
    /// Shared with the handles: what `/metrics` shows of this replica.
    pub(super) metrics: Arc<RegionMetrics>,
}

/// A region driver on tokio: an inbox, a durability watch and timers
/// around a [`ReplicaHost`].
pub struct RegionDriver {
    host: ReplicaHost,
    inbox: mpsc::Receiver<RegionEvent>,
    durable: watch::Receiver<u64>,
    inbox_message_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// The runtime the driver was spawned on, where an inline region runs.
    home: tokio::runtime::Handle,
    /// Signalled when a snapshot save off the pipeline finishes.
    save_done: Arc<tokio::sync::Notify>,
}

impl RegionDriver {
    /// Spawns the driver and returns its handle. `recovering` says whether
    /// the replica starts over existing storage.
    pub fn spawn(
        spec: RegionSpec,
        replica: RegionReplica,
        context: DriverContext,
        durable: watch::Receiver<u64>,
        recovering: bool,
    ) -> RegionHandle {
        let (sender, inbox) = mpsc::channel(INBOX_CAPACITY);
        let mut host = ReplicaHost::new(spec, replica, context);
        let save_done = Arc::new(tokio::sync::Notify::new());
        host.use_background_saves(save_done.clone());
        let shared_spec = host.shared_spec.clone();
        let metrics = host.metrics.clone();
        let name: Arc<str> = Arc::from(host.name.as_str());
        let inbox_message_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut driver = RegionDriver {
            host,
            inbox,
            durable,
            inbox_message_bytes: inbox_message_bytes.clone(),
            home: tokio::runtime::Handle::current(),
            save_done,
        };
        tokio::spawn(async move {
            driver.host.start(recovering);
            driver.run().await;
        });
        RegionHandle {
            spec: shared_spec,
            name,
            sender,
            inbox_message_bytes,
            metrics,
        }
    }

    /// The driver loop on its current runtime. When the replica's CPU
    /// lane changes (see `region::cpu`), the driver hands itself to the
    /// other runtime between two rounds and this task ends.
    async fn run(mut self) {
        loop {
            let sleep = self.host.next_wakeup();
            tokio::select! {
                event = self.inbox.recv() => {
                    let Some(event) = event else { break };
                    let mut bytes = event.write_bytes();
                    let mut events = vec![event];
                    while events.len() < ROUND_EVENTS_MAX && bytes < ROUND_WRITE_BYTES_MAX {
                        match self.inbox.try_recv() {
                            Ok(event) => {
                                bytes += event.write_bytes();
                                events.push(event);
                            }
                            Err(_) => break,
                        }
                    }
                    let taken: usize = events
                        .iter()
                        .map(|event| match event {
                            RegionEvent::Messages { payloads, .. } => message_bytes(payloads),
                            _ => 0,
                        })
                        .sum();
                    self.inbox_message_bytes
                        .fetch_sub(taken, std::sync::atomic::Ordering::AcqRel);
                    if !self.host.handle_events(events) {
                        self.host.end_round();
                        break;
                    }
                }
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        self.host.fail_storage("the write-ahead log stopped".into());
                    }
                }
                () = tokio::time::sleep(sleep) => {
                    self.host.on_wakeup();
                }
                () = self.save_done.notified() => {
                    // `end_round` below reports the finished save.
                }
            }
            self.host.end_round();
            // Checked after every round too: status queries alone never
            // let the idle sleep above run out.
            self.host.maybe_hibernate();
            if let Some((lane, runtime)) = self.migration() {
                self.host.replica.set_running_lane(lane);
                tracing::info!(region = %self.host.name, lane = lane.name(), "region driver changes CPU lane");
                runtime.spawn(self.run_boxed());
                return;
            }
        }
        // Release what the last rounds produced once it is durable.
        let ticket = self.host.last_ticket;
        if self.host.storage_failure.is_none()
            && self.durable.wait_for(|d| *d >= ticket).await.is_ok()
        {
            self.host.release();
        }
        self.host.finish();
    }
}

impl RegionDriver {
    fn run_boxed(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.run())
    }

    /// The runtime to move to, if the replica's lane has changed.
    fn migration(&self) -> Option<(Lane, tokio::runtime::Handle)> {
        let wanted = self.host.replica.cpu().lane();
        if wanted == self.host.replica.running_lane() {
            return None;
        }
        match wanted {
            Lane::Inline => Some((Lane::Inline, self.home.clone())),
            Lane::Background => background_runtime().map(|runtime| (Lane::Background, runtime)),
        }
    }
}

impl ReplicaHost {
    pub fn new(spec: RegionSpec, replica: RegionReplica, context: DriverContext) -> Self {
        let name = replica.core().name().clone();
        let last_ticket = context.commit.current_ticket();
        let request_prefix =
            ((context.node_id & 0xFFFF) << 48) | ((context.incarnation & 0xFFFF) << 32);
        let start_position = replica.core().state().applied_position();
        let spec = Arc::new(spec);
        ReplicaHost {
            shared_spec: SharedSpec::new(spec.clone()),
            spec,
            epoch: EpochState::new(start_position),
            name,
            replica,
            context,
            pending: PendingRequests::default(),
            held: VecDeque::new(),
            round_records: Vec::new(),
            round_outputs: Vec::new(),
            last_ticket,
            metadata_ticket: 0,
            timers: HashMap::new(),
            next_request: request_prefix,
            storage_failure: None,
            snapshots_installed: 0,
            save_requested: None,
            snapshot_save: None,
            save_wake: None,
            stopped: None,
            tap: None,
            metrics: Arc::default(),
        }
    }

    /// Starts recording every released reply (see [`ReplicaHost::drain_tap`]).
    pub fn enable_tap(&mut self) {
        self.tap = Some(Vec::new());
    }

    /// Keeps the plugin's log lines for [`ReplicaHost::drain_plugin_logs`].
    pub fn enable_plugin_log_tap(&mut self) {
        self.replica.core_mut().enable_log_tap();
    }

    /// The plugin's log lines since the last call, as `level: line`.
    pub fn drain_plugin_logs(&mut self) -> Vec<String> {
        self.replica
            .core_mut()
            .drain_logs()
            .into_iter()
            .map(|(level, line)| {
                let level = match level {
                    synod_guest_sdk::Level::Trace => "trace",
                    synod_guest_sdk::Level::Debug => "debug",
                    synod_guest_sdk::Level::Info => "info",
                    synod_guest_sdk::Level::Warn => "warn",
                    synod_guest_sdk::Level::Error => "error",
                };
                format!("{level}: {line}")
            })
            .collect()
    }

    /// Replies released since the last call, in release order.
    pub fn drain_tap(&mut self) -> Vec<(RequestId, Reply)> {
        self.tap.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn replica(&self) -> &RegionReplica {
        &self.replica
    }

    /// Starts the plugin (`init`) and ends that first round.
    pub fn start(&mut self, recovering: bool) {
        self.refresh_snapshot_refusal();
        self.replica.note_activity();
        match self.replica.start(recovering) {
            Ok(effects) => self.stage(effects),
            Err(failure) => {
                tracing::warn!(region = %self.name, %failure, "replica failed to start")
            }
        }
        self.end_round();
    }

    /// Fires due timers and rebuilds a fenced replica whose backoff passed.
    pub fn on_wakeup(&mut self) {
        self.fire_timers();
        self.maybe_restart();
        self.expire_pending();
        self.maybe_hibernate();
    }

    /// Drops the instance if the replica has been idle long enough.
    pub fn maybe_hibernate(&mut self) {
        let quiet = self.is_quiet();
        self.replica.maybe_hibernate(quiet);
    }

    /// Nothing armed, pending, held or under way: the replica may
    /// hibernate (see `region::hibernate`).
    fn is_quiet(&self) -> bool {
        self.timers.is_empty()
            && self.pending.is_empty()
            && self.held.is_empty()
            && self.round_outputs.is_empty()
            && self.round_records.is_empty()
            && !self.epoch.is_holding()
            && self.epoch.seal_name() == "none"
            && self.replica.core().pending_reads() == 0
            // A save in flight ends with a notification to this instance.
            && self.save_requested.is_none()
            && self.snapshot_save.is_none()
    }

    /// Answers requests whose client has given up as timed out and drops
    /// their stored read queries: the protocol may never answer them (a
    /// deposed leader's overwritten writes, reads a trapped instance held).
    pub fn expire_pending(&mut self) {
        if self
            .pending
            .next_deadline()
            .is_none_or(|deadline| deadline > self.now_nanos())
        {
            return;
        }
        let expired = self.pending.expire(self.now_nanos());
        tracing::debug!(region = %self.name, count = expired.len(), "expired requests the protocol did not answer in time");
        for (id, reply, timeout) in expired {
            self.replica.core_mut().forget_read(id);
            let _ = reply.send(Err(ClientError::Timeout(timeout)));
        }
    }

    /// Client requests waiting for an answer.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Answers every pending request as stopped and signals a waiting
    /// shutdown.
    pub fn finish(&mut self) {
        // A save still writing must not outlive the driver (a deleted
        // region's file would come back); its notification is not sent.
        self.join_snapshot_save();
        self.finish_snapshot_save(false);
        self.epoch.stop();
        self.fail_all_pending(ClientError::Stopped);
        if let Some(done) = self.stopped.take() {
            let _ = done.send(());
        }
        tracing::debug!(region = %self.name, "driver stopped");
    }

    /// The clock time (nanoseconds) of the next timer or restart, if any.
    pub fn next_deadline_nanos(&self) -> Option<u64> {
        let timer = self.timers.values().min().copied();
        let restart = self
            .replica
            .next_restart()
            .map(|at| u64::try_from(at.as_nanos()).unwrap_or(u64::MAX));
        let seal = self.epoch.next_seal_poll(self.now_nanos());
        [timer, restart, self.pending.next_deadline(), seal]
            .into_iter()
            .flatten()
            .min()
    }

    /// Outputs held for durability.
    pub fn held_outputs(&self) -> usize {
        self.held.iter().map(|(_, o)| o.len()).sum()
    }

    /// Time until the next timer or restart is due (capped, so a clock
    /// that jumps is noticed).
    fn next_wakeup(&self) -> Duration {
        let Some(next) = self.next_deadline_nanos() else {
            return Duration::from_secs(1);
        };
        Duration::from_nanos(next.saturating_sub(self.now_nanos())).min(Duration::from_secs(1))
    }

    pub(super) fn now_nanos(&self) -> u64 {
        u64::try_from(self.context.clock.now().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A new request id; the low bit tells reads (1) from writes (0).
    fn allocate_request(&mut self, read: bool) -> RequestId {
        self.next_request += 2;
        if read {
            self.next_request | READ_ID_BIT
        } else {
            self.next_request & !READ_ID_BIT
        }
    }

    /// Handles one round of events; returns false when the driver should
    /// stop.
    pub fn handle_events(&mut self, events: Vec<RegionEvent>) -> bool {
        // Reading the status is not activity: it neither wakes nor keeps
        // awake a hibernating replica.
        if events
            .iter()
            .any(|event| !matches!(event, RegionEvent::Status { .. }))
        {
            self.replica.note_activity();
        }
        let mut batches = RoundBatches::default();
        let mut stopping = None;
        for event in events {
            match event {
                RegionEvent::Write {
                    command,
                    keys,
                    reply,
                    timeout,
                } => {
                    if let Some(refusal) = super::weak::refuse_write(self.replica.info(), &command)
                    {
                        let _ = reply.send(Err(ClientError::Rejected(refusal)));
                        continue;
                    }
                    let id = self.allocate_request(false);
                    self.pending.insert(id, reply, self.now_nanos(), timeout);
                    if self.epoch.is_holding() {
                        self.hold_request(HeldRequest::Write { id, command, keys });
                    } else {
                        batches.push_write(id, &command, &keys);
                    }
                }
                RegionEvent::Read {
                    query,
                    level,
                    reply,
                    timeout,
                } => {
                    if let Some(refusal) = super::weak::refuse_read(self.replica.info(), level) {
                        let _ = reply.send(Err(ClientError::Rejected(refusal)));
                        continue;
                    }
                    let id = self.allocate_request(true);
                    self.pending.insert(id, reply, self.now_nanos(), timeout);
                    if self.epoch.is_holding() && level != ReadLevel::Local {
                        self.hold_request(HeldRequest::Read { id, query, level });
                    } else {
                        self.replica.core_mut().register_read(id, query);
                        batches.reads.ids.push(id);
                        batches.reads.levels.push(level);
                    }
                }
                RegionEvent::Messages {
                    from,
                    epoch,
                    payloads,
                } => {
                    if epoch != self.spec.epoch {
                        tracing::debug!(region = %self.name, from, epoch, current = self.spec.epoch, "messages of another epoch dropped");
                        continue;
                    }
                    for payload in payloads.iter() {
                        batches.messages.senders.push(from);
                        batches.messages.payloads.push(payload);
                    }
                }
                RegionEvent::Snapshot {
                    from,
                    epoch,
                    metadata,
                    image,
                } => {
                    if epoch != self.spec.epoch {
                        tracing::debug!(region = %self.name, from, epoch, current = self.spec.epoch, "snapshot of another epoch dropped");
                        continue;
                    }
                    self.offer_snapshot(from, metadata, image)
                }
                RegionEvent::Control { call, reply } => {
                    let _ = reply.send(self.control(call));
                }
                RegionEvent::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                RegionEvent::Restart { reply } => {
                    self.timers.clear();
                    let result = self.replica.reset().map_err(|failure| failure.to_string());
                    let _ = reply.send(match result {
                        Ok(effects) => {
                            self.stage(effects);
                            Ok(())
                        }
                        Err(why) => Err(why),
                    });
                }
                RegionEvent::Epoch(event) => {
                    // What arrived before the swap step goes to the plugin
                    // it was meant for (and in the epoch it was sent in).
                    self.deliver_batches(std::mem::take(&mut batches));
                    self.handle_epoch_event(event);
                }
                RegionEvent::Shutdown { done } => stopping = Some(done),
            }
        }
        self.deliver_batches(batches);
        self.expire_pending();
        match stopping {
            Some(done) => {
                self.stopped = Some(done);
                false
            }
            None => true,
        }
    }

    /// Hands the plugin a round's messages, then writes, then reads.
    pub(super) fn deliver_batches(&mut self, batches: RoundBatches) {
        let RoundBatches {
            commands,
            reads,
            messages,
        } = batches;
        if !messages.senders.is_empty() {
            self.deliver(Call::Messages(messages), &[]);
        }
        if !commands.ids.is_empty() {
            let ids = commands.ids.clone();
            self.deliver(Call::Commands(commands), &ids);
        }
        if !reads.ids.is_empty() {
            let ids = reads.ids.clone();
            if !self.deliver(Call::Reads(reads), &ids) {
                for id in ids {
                    self.replica.core_mut().forget_read(id);
                }
            }
        }
    }

    /// Delivers one call; if it does not run, the requests it carried are
    /// answered with the reason. Returns whether the call ran.
    pub(super) fn deliver(&mut self, call: Call, requests: &[RequestId]) -> bool {
        if let Some(why) = &self.storage_failure {
            let error = ClientError::Unavailable(format!("storage failed: {why}"));
            self.fail_requests(requests, &error);
            return false;
        }
        self.refresh_snapshot_refusal();
        match self.replica.deliver(call) {
            Delivery::Done(_, effects) => {
                self.stage(effects);
                true
            }
            Delivery::Refused(why) => {
                self.fail_requests(requests, &ClientError::Unavailable(why));
                false
            }
            Delivery::Failed(failure) => {
                // The failed instance's timers die with it.
                self.timers.clear();
                let why = format!(
                    "region replica failed and was fenced ({failure}); the request was not applied"
                );
                self.fail_requests(requests, &ClientError::Unavailable(why));
                false
            }
        }
    }

    /// Offers a shipped snapshot. If the plugin accepts, the steps are, in
    /// this order: (a) every record of the accepting callback (its install
    /// marker, a new term) and everything staged before it becomes durable;
    /// (b) the image is saved as the region's snapshot file (atomically);
    /// (c) the in-memory state machine is replaced. A crash between any two
    /// steps leaves the plugin's durable records at least as new as the
    /// snapshot file, so recovery sees either the old state with the marker
    /// (the install is abandoned and retried) or the new state with the
    /// marker (the install is finished). If a step fails the region stops
    /// acknowledging, as on a WAL failure; after a storage failure offers are
    /// refused.
    fn offer_snapshot(&mut self, from: NodeId, metadata: Vec<u8>, image: Vec<u8>) {
        if let Some(why) = &self.storage_failure {
            tracing::warn!(region = %self.name, from, %why, "refusing a shipped snapshot: storage failed");
            return;
        }
        let state = match KvStateMachine::restore(&image) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(region = %self.name, from, %error, "dropping an undecodable snapshot");
                return;
            }
        };
        let offer = SnapshotOffer {
            sender: from,
            position: state.applied_position(),
            metadata,
        };
        self.refresh_snapshot_refusal();
        match self.replica.deliver(Call::Snapshot(offer)) {
            Delivery::Done(CallResult::Snapshot(true), effects) => {
                // (a) The accepting callback's records join the round (a
                // snapshot it took itself is saved here too), then the whole
                // round is submitted and waited for.
                self.stage(effects);
                if self.storage_failure.is_none() {
                    self.submit_round_records();
                }
                if self.storage_failure.is_some() {
                    return;
                }
                // A leaderless protocol's catch-up joins the image into
                // the state by last-writer-wins: what this replica held and
                // the sender lacked survives (contract 0.1.1).
                let (state, image) = if self.replica.info().consistency == Consistency::Eventual {
                    let mut merged = self.replica.core().state().clone();
                    merged.merge(state);
                    let image = merged.snapshot();
                    (merged, image)
                } else {
                    (state, image)
                };
                // (b) Save the image, after any save in flight (an older
                // image must not land over it).
                self.join_snapshot_save();
                let saved = blocking(|| {
                    self.wait_durable(self.last_ticket).and_then(|()| {
                        self.context
                            .snapshots
                            .save(self.name.as_str(), &image)
                            .map_err(|e| e.to_string())
                    })
                });
                if let Err(why) = saved {
                    self.fail_storage(format!("installing a shipped snapshot: {why}"));
                    return;
                }
                // (c) Replace the state.
                tracing::info!(region = %self.name, from, position = state.applied_position(), "installed a shipped snapshot");
                self.replica.core_mut().replace_state(state);
                self.snapshots_installed += 1;
            }
            Delivery::Done(_, effects) => self.stage(effects),
            Delivery::Refused(_) => {}
            Delivery::Failed(_) => self.timers.clear(),
        }
    }

    fn control(&mut self, call: Call) -> Result<CallResult, String> {
        self.refresh_snapshot_refusal();
        match self.replica.deliver(call) {
            Delivery::Done(result, effects) => {
                self.stage(effects);
                Ok(result)
            }
            Delivery::Refused(why) => Err(why),
            Delivery::Failed(failure) => {
                self.timers.clear();
                Err(failure.to_string())
            }
        }
    }

    fn fail_requests(&mut self, requests: &[RequestId], error: &ClientError) {
        for id in requests {
            if let Some(reply) = self.pending.take(*id) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    fn fail_all_pending(&mut self, error: ClientError) {
        for reply in self.pending.drain() {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Adds a callback's effects to the round. A snapshot is written only
    /// after every record staged before it is durable, and the records after
    /// it (the plugin's metadata, compacting its log) only after it is saved:
    /// if saving fails they are never submitted and the region stops
    /// acknowledging, so no durable record runs ahead of the snapshot file.
    /// `send-snapshot` outputs are pinned to their image here.
    pub(super) fn stage(&mut self, effects: Effects) {
        let Effects {
            mut records,
            mut outputs,
            timers,
            snapshot,
            snapshot_request,
        } = effects;
        for change in timers {
            match change {
                TimerChange::Set { id, deadline_nanos } => {
                    self.timers.insert(id, deadline_nanos);
                }
                TimerChange::Cancel { id } => {
                    self.timers.remove(&id);
                }
            }
        }
        // Before this callback's own snapshot replaces the file.
        self.pin_snapshot_images(&mut outputs);
        if let Some(snapshot) = snapshot {
            // An older image in flight must not land after this one.
            self.join_snapshot_save();
            let after = records.split_off(snapshot.records_before.min(records.len()));
            self.round_records.extend(records);
            self.submit_round_records();
            records = after;
            let started = std::time::Instant::now();
            let (waited, saved) = blocking(|| {
                let durable = self.wait_durable(self.last_ticket);
                let waited = started.elapsed();
                let saved = durable.and_then(|()| {
                    if let Some(why) = &self.storage_failure {
                        return Err(why.clone());
                    }
                    self.context
                        .snapshots
                        .save(self.name.as_str(), &snapshot.image)
                        .map_err(|e| e.to_string())
                });
                (waited, saved)
            });
            if started.elapsed() > SNAPSHOT_SLOW {
                tracing::warn!(
                    region = %self.name,
                    bytes = snapshot.image.len(),
                    waited_for_wal_ms = waited.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "slow snapshot: the region stalled while it was written"
                );
            }
            match saved {
                Ok(()) => {
                    tracing::debug!(region = %self.name, position = snapshot.position, "snapshot saved")
                }
                Err(why) => {
                    // The records after the snapshot (its metadata, log
                    // compaction) must never become durable without it.
                    records.clear();
                    self.fail_storage(format!(
                        "saving the snapshot at position {}: {why}",
                        snapshot.position
                    ));
                }
            }
        }
        self.round_records.extend(records);
        // After the callback's records (its save waits for all of them) and
        // after its synchronous snapshot, if any (never older over newer).
        if let Some(request) = snapshot_request {
            self.request_snapshot_save(request);
        }
        for output in outputs {
            match output {
                Output::SendEager { .. } if self.storage_failure.is_none() => self.emit(output),
                output => self.round_outputs.push(output),
            }
        }
    }

    /// Pins every `send-snapshot` that names the saved snapshot to the
    /// file's current bytes (read once per callback). One that cannot be
    /// read is dropped with an error; the plugin's retry ships it again.
    fn pin_snapshot_images(&mut self, outputs: &mut Vec<Output>) {
        let mut saved: Option<Option<Arc<Vec<u8>>>> = None;
        outputs.retain_mut(|output| {
            let Output::SendSnapshot { to, image, .. } = output else {
                return true;
            };
            if !matches!(image, PinnedImage::LatestSaved) {
                return true;
            }
            let bytes = saved.get_or_insert_with(|| {
                match self.context.snapshots.load(self.name.as_str()) {
                    Ok(Some(bytes)) => Some(Arc::new(bytes)),
                    Ok(None) => {
                        tracing::warn!(region = %self.name, to = *to, "no snapshot to ship");
                        None
                    }
                    Err(error) => {
                        tracing::error!(region = %self.name, %error, "snapshot unreadable; not shipped");
                        None
                    }
                }
            });
            match bytes {
                Some(bytes) => {
                    *image = PinnedImage::Pinned(bytes.clone());
                    true
                }
                None => false,
            }
        });
    }

    pub(super) fn wait_durable(&self, ticket: u64) -> Result<(), String> {
        self.context
            .commit
            .wait_durable(ticket)
            .map_err(|e| e.to_string())
    }

    pub(super) fn submit_round_records(&mut self) {
        if self.round_records.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.round_records);
        self.replica.core_mut().records_submitted();
        if self.storage_failure.is_some() {
            // A region whose storage failed writes nothing more: a record
            // could depend on a write that failed (a snapshot file).
            return;
        }
        let writes_metadata = records.iter().any(|record| {
            matches!(
                record,
                JournalRecord::MetaPut { .. } | JournalRecord::MetaDelete { .. }
            )
        });
        match self
            .context
            .commit
            .submit(JournalRecord::encode_all(&records))
        {
            Ok(ticket) => {
                self.last_ticket = ticket;
                if writes_metadata {
                    self.metadata_ticket = ticket;
                }
            }
            Err(error) => self.fail_storage(error.to_string()),
        }
    }

    /// Submits the round's records and holds its outputs behind them.
    pub fn end_round(&mut self) {
        self.poll_snapshot_save();
        self.poll_seal();
        self.release_when_ready();
        self.submit_round_records();
        self.start_snapshot_save();
        let outputs = std::mem::take(&mut self.round_outputs);
        if !outputs.is_empty() {
            if self.storage_failure.is_some() {
                self.drop_outputs(outputs);
            } else {
                self.held.push_back((self.last_ticket, outputs));
            }
        }
        self.release();
    }

    /// Shipped snapshots this host installed.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }

    /// The newest ticket that carried a plugin kv write (0 if none yet).
    pub fn metadata_ticket(&self) -> u64 {
        self.metadata_ticket
    }

    /// Releases every output whose records are durable.
    pub fn release(&mut self) {
        let durable = self.context.commit.durable_ticket();
        while let Some((ticket, _)) = self.held.front() {
            if *ticket > durable {
                break;
            }
            let Some((_, outputs)) = self.held.pop_front() else {
                break;
            };
            for output in outputs {
                self.emit(output);
            }
        }
        self.answer_seal_waiters(durable);
    }

    fn emit(&mut self, output: Output) {
        match output {
            Output::Reply { id, reply } => {
                if let Some(tap) = self.tap.as_mut() {
                    tap.push((id, reply.clone()));
                }
                if let Some(sender) = self.pending.take(id) {
                    let answer = match reply {
                        Reply::Outcome(outcome) => Ok(outcome),
                        Reply::Rejected(rejection) => Err(ClientError::Rejected(rejection)),
                    };
                    let _ = sender.send(answer);
                }
            }
            Output::Send { to, messages } | Output::SendEager { to, messages } => {
                self.metrics.sent(messages.data.len());
                self.context.network.send(
                    &self.name,
                    self.spec.epoch,
                    self.context.node_id,
                    to,
                    messages,
                );
            }
            Output::SendSnapshot {
                to,
                metadata,
                image,
            } => match image {
                PinnedImage::Pinned(image) => {
                    self.metrics.sent(metadata.len() + image.len());
                    self.context.network.send_snapshot(
                        &self.name,
                        self.spec.epoch,
                        self.context.node_id,
                        to,
                        metadata,
                        Arc::unwrap_or_clone(image),
                    )
                }
                PinnedImage::LatestSaved => {
                    tracing::error!(region = %self.name, to, "a snapshot shipment was never pinned; dropped")
                }
            },
        }
    }

    fn drop_outputs(&mut self, outputs: Vec<Output>) {
        let why = self.storage_failure.clone().unwrap_or_default();
        for output in outputs {
            if let Output::Reply { id, .. } = output
                && let Some(sender) = self.pending.take(id)
            {
                let _ = sender.send(Err(ClientError::Unavailable(format!(
                    "storage failed: {why}"
                ))));
            }
        }
    }

    pub fn fail_storage(&mut self, why: String) {
        if self.storage_failure.is_none() {
            tracing::error!(region = %self.name, %why, "storage failed; region stops acknowledging");
            self.storage_failure = Some(why);
            let held: Vec<_> = self.held.drain(..).flat_map(|(_, o)| o).collect();
            self.drop_outputs(held);
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now_nanos();
        let mut due: Vec<(u64, TimerId)> = self
            .timers
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, deadline)| (*deadline, *id))
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_unstable();
        let ids: Vec<TimerId> = due.into_iter().map(|(_, id)| id).collect();
        for id in &ids {
            self.timers.remove(id);
        }
        self.replica.core_mut().timers_fired(&ids);
        self.deliver(Call::Timers(ids), &[]);
    }

    fn maybe_restart(&mut self) {
        self.refresh_snapshot_refusal();
        match self.replica.poll_restart() {
            Some(Ok(effects)) => self.stage(effects),
            Some(Err(failure)) => {
                tracing::warn!(region = %self.name, %failure, "rebuild failed");
            }
            None => {}
        }
    }

    pub fn status(&mut self) -> RegionStatus {
        // A status query does not wake a hibernated replica.
        let asleep = self.replica.hibernation().is_hibernated();
        let plugin = match (!asleep).then(|| self.replica.deliver(Call::Status)) {
            None => None,
            Some(delivery) => match delivery {
                Delivery::Done(CallResult::Status(status), effects) => {
                    self.stage(effects);
                    Some(PluginStatus::from(status))
                }
                Delivery::Done(_, effects) => {
                    self.stage(effects);
                    None
                }
                Delivery::Refused(_) => None,
                Delivery::Failed(_) => {
                    self.timers.clear();
                    None
                }
            },
        };
        let info = self.replica.info();
        let health = self.replica.health();
        let core = self.replica.core();
        let bounds = core.log_view().bounds();
        RegionStatus {
            name: self.name.to_string(),
            epoch: self.spec.epoch,
            protocol: ProtocolStatus {
                name: info.name.clone(),
                version: info.version.clone(),
                id: self.replica.source().id(),
                consistency: info.consistency.as_str(),
                capabilities: info.capabilities.names(),
            },
            health: HealthStatus {
                state: match core.recent_refusal() {
                    Some(_) if health.is_running() => "quota",
                    _ => health.name(),
                },
                reason: health
                    .reason()
                    .or_else(|| core.recent_refusal())
                    .map(str::to_string),
                failures_total: self.replica.failures_total(),
                restarts: self.replica.restarts(),
                quota: core.quota_usage(),
            },
            plugin,
            log: LogStatus {
                first: bounds.first,
                last: bounds.last,
                bytes: core.log_view().byte_len(),
            },
            state_machine: StateMachineStatus {
                keys: core.state().len(),
                applied_position: core.state().applied_position(),
                digest: hex::encode(core.state().digest()),
            },
            pending_requests: self.pending.len(),
            pending_reads: self.pending.reads(),
            read_queries: core.pending_reads(),
            held_outputs: self.held.iter().map(|(_, o)| o.len()).sum(),
            held_requests: self.held_requests(),
            seal: self.epoch.seal_name(),
            cpu: CpuStatus {
                lane: self.replica.running_lane().name(),
                used_ms: u64::try_from(self.replica.cpu().total().as_millis()).unwrap_or(u64::MAX),
                used_us: u64::try_from(self.replica.cpu().total().as_micros()).unwrap_or(u64::MAX),
                calls: self.replica.cpu().calls(),
                background_calls: self.replica.cpu().background_calls(),
                fuel: self.replica.fuel_used(),
            },
            hibernation: self.replica.hibernation().status(),
        }
    }
}

impl From<PluginFailure> for ClientError {
    fn from(failure: PluginFailure) -> Self {
        ClientError::Unavailable(failure.to_string())
    }
}
