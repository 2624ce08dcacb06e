//! The driver's snapshot paths over the real host core: a plugin (Raft,
//! natively, or a small test protocol) over `ReplicaHost`, `RegionReplica`,
//! `RegionCore`, the journal, a WAL and snapshot files on a `MemDisk`,
//! crashed (unsynced writes lost) at each step of a snapshot install or
//! save, then booted again from the disk as a node would be.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use synod_guest_sdk::{
    Applies, Batch, Commands, Consistency, Host, InitConfig, Membership, NodeId, PluginInfo,
    Protocol, Reads, Role, SealProgress, Status,
};
use synod_plugin_raft::message::{Entries, Message, ShippedSnapshot, SnapshotMeta};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::journal::{JournalRecord, RecoveredNode};
use crate::plugin::PluginSource;
use crate::region::core::RegionCore;
use crate::region::driver::{ClientError, ClientReply, DriverContext, RegionEvent, ReplicaHost};
use crate::region::replica::{FailurePolicy, RegionReplica};
use crate::region::{ProtocolRef, RegionName, RegionSpec};
use crate::sim::parts::{Payload, SimClock, SimCommit, SimNetwork, VirtualTime};
use crate::state_machine::{KvCommand, KvStateMachine};
use crate::storage::commit::CommitLog;
use crate::storage::disk::{Disk, MemDisk};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::wal::{Wal, WalOptions};

const REGION: &str = "r";

/// A `MemDisk` whose atomic file writes (snapshot saves) can be made to
/// fail, while the WAL keeps working.
#[derive(Clone, Default)]
struct FaultyDisk {
    inner: MemDisk,
    fail_atomic_writes: Arc<AtomicBool>,
}

impl Disk for FaultyDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(path, bytes)
    }
    fn sync(&self, path: &str) -> io::Result<()> {
        self.inner.sync(path)
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        if self.fail_atomic_writes.load(Ordering::Relaxed) {
            return Err(io::Error::other(format!("{path}: injected write failure")));
        }
        self.inner.write_atomic(path, bytes)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }
}

/// One node of one region, booted from its disk like `Node::open` does.
struct TestNode {
    id: NodeId,
    disk: FaultyDisk,
    source: PluginSource,
    voters: Vec<NodeId>,
    time: VirtualTime,
    runtime: Option<(ReplicaHost, Arc<SimCommit>, Arc<SimNetwork>)>,
    incarnation: u64,
}

impl TestNode {
    fn new(id: NodeId, source: PluginSource, voters: &[NodeId]) -> TestNode {
        let mut node = TestNode {
            id,
            disk: FaultyDisk::default(),
            source,
            voters: voters.to_vec(),
            time: VirtualTime::default(),
            runtime: None,
            incarnation: 0,
        };
        node.boot();
        node
    }

    fn spec(&self) -> RegionSpec {
        RegionSpec {
            name: REGION.into(),
            protocol: ProtocolRef::Native {
                name: self.source.info().name,
            },
            params: Vec::new(),
            voters: self.voters.clone(),
            learners: Vec::new(),
            epoch: 1,
            membership_target: None,
            version: 1,
        }
    }

    fn boot(&mut self) {
        assert!(self.runtime.is_none(), "node {} is running", self.id);
        self.incarnation += 1;
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        let (wal, replay) = Wal::open(disk.clone(), "wal", WalOptions::default()).expect("wal");
        let recovered = RecoveredNode::rebuild(&replay.entries).expect("journal");
        let region = recovered
            .regions
            .get(REGION)
            .map(|r| (r.log.clone(), r.meta.clone()));
        let commit = Arc::new(SimCommit::new(wal));
        let recovering = region.is_some();
        if !recovering {
            let record =
                JournalRecord::encode_all(&[JournalRecord::RegionCreated { spec: self.spec() }]);
            let ticket = commit.submit(record).expect("submit");
            commit.wait_durable(ticket).expect("durable");
        }
        let (log, meta) = region.unwrap_or_default();
        let snapshots = Arc::new(SnapshotStore::new(disk, "snapshots"));
        let state = match snapshots.load(REGION).expect("snapshot readable") {
            Some(image) => KvStateMachine::restore(&image).expect("snapshot restores"),
            None => KvStateMachine::default(),
        };
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(self.time.clone(), 0, 0));
        let core = RegionCore::new(
            RegionName::new(REGION).expect("name"),
            self.id,
            log,
            meta,
            state,
            clock.clone(),
            self.id,
        );
        let init = InitConfig {
            self_id: self.id,
            membership: Membership {
                voters: self.voters.clone(),
                learners: Vec::new(),
            },
            params: Vec::new(),
            recovering,
            applied_position: 0,
        };
        let replica = RegionReplica::new(
            self.source.clone(),
            core,
            init,
            FailurePolicy::default(),
            clock.clone(),
        );
        let network = Arc::new(SimNetwork::default());
        let context = DriverContext {
            node_id: self.id,
            incarnation: self.incarnation,
            commit: commit.clone(),
            snapshots,
            network: network.clone(),
            clock,
        };
        let mut host = ReplicaHost::new(self.spec(), replica, context);
        host.start(recovering);
        self.runtime = Some((host, commit, network));
    }

    fn host(&mut self) -> &mut ReplicaHost {
        &mut self.runtime.as_mut().expect("node is up").0
    }

    /// One round of events, ended (records submitted, not yet synced).
    fn round(&mut self, events: Vec<RegionEvent>) {
        let host = self.host();
        host.handle_events(events);
        host.end_round();
    }

    /// The fsync completes; held outputs leave.
    fn sync(&mut self) {
        let (host, commit, _) = self.runtime.as_mut().expect("node is up");
        commit.sync().expect("sync");
        host.release();
    }

    /// kill -9 and power loss: unsynced writes are gone.
    fn crash(&mut self) {
        self.runtime = None;
        self.disk.inner.crash();
    }

    fn sent(&mut self) -> Vec<crate::sim::parts::Envelope> {
        self.runtime.as_ref().expect("node is up").2.drain()
    }

    fn position(&self) -> u64 {
        let host = &self.runtime.as_ref().expect("node is up").0;
        host.replica().core().state().applied_position()
    }

    fn failures(&self) -> u64 {
        self.runtime
            .as_ref()
            .expect("node is up")
            .0
            .replica()
            .failures_total()
    }

    fn counter(&mut self, name: &str) -> Option<u64> {
        let status = self.host().status();
        let plugin = status.plugin?;
        plugin
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Writes `key` and returns the receiver of its answer.
    fn write(&mut self, key: &str) -> oneshot::Receiver<ClientReply> {
        let (reply, answer) = oneshot::channel();
        let command = KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        self.round(vec![RegionEvent::Write {
            keys: vec![crate::state_machine::conflict_key(command.key())],
            command: command.encode(),
            reply,
            timeout: std::time::Duration::from_secs(60),
        }]);
        answer
    }
}

/// A state-machine image at `position`.
fn image_at(position: u64) -> Vec<u8> {
    let mut state = KvStateMachine::default();
    let put = KvCommand::Put {
        key: b"shipped".to_vec(),
        value: b"yes".to_vec(),
    };
    let _ = state.apply(&put.encode(), position);
    state.snapshot()
}

fn raft_offer(leader: NodeId, position: u64, voters: &[NodeId]) -> RegionEvent {
    let shipped = ShippedSnapshot {
        leader_term: 1,
        meta: SnapshotMeta {
            index: position,
            term: 1,
            config: synod_plugin_raft::Config {
                voters: voters.to_vec(),
                learners: Vec::new(),
            },
            sealed: None,
        },
    };
    RegionEvent::Snapshot {
        from: leader,
        epoch: 1,
        metadata: postcard::to_allocvec(&shipped).expect("encodes"),
        image: image_at(position),
    }
}

fn heartbeat(leader: NodeId, commit: u64) -> RegionEvent {
    let message = Message::Heartbeat {
        term: 1,
        commit,
        round: 0,
    };
    RegionEvent::Messages {
        from: leader,
        epoch: 1,
        payloads: Batch::from_items([message.encode()]),
    }
}

/// AppendEntries from leader 1 in term 1: `count` noops after `prev`.
fn append(prev_index: u64, prev_term: u64, count: usize) -> RegionEvent {
    let mut entries = Batch::new();
    for _ in 0..count {
        synod_plugin_raft::entry::push_noop(&mut entries, 1);
    }
    let message = Message::Append {
        term: 1,
        prev_index,
        prev_term,
        entries: Entries::from_batch(entries),
    };
    RegionEvent::Messages {
        from: 1,
        epoch: 1,
        payloads: Batch::from_items([message.encode()]),
    }
}

/// The AppendResponses a node sent, as `(success, index)`.
fn append_answers(node: &mut TestNode) -> Vec<(bool, u64)> {
    node.sent()
        .into_iter()
        .filter_map(|envelope| match envelope.payload {
            Payload::Messages(batch) => Some(batch),
            Payload::Snapshot { .. } => None,
        })
        .flat_map(|batch| {
            batch
                .iter()
                .filter_map(|bytes| match Message::decode(bytes) {
                    Ok(Message::AppendResponse { success, index, .. }) => Some((success, index)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn raft_follower() -> TestNode {
    TestNode::new(
        2,
        PluginSource::native::<synod_plugin_raft::Raft>(),
        &[1, 2],
    )
}

/// Goal: a Raft follower that accepted a shipped snapshot recovers after a
/// crash right after the image was saved, before anything later was
/// synced. The driver makes the accepting callback's records (the install
/// marker, the new term) durable before it saves the image, so recovery
/// finds the new image and the marker and finishes the install. (When the
/// image was saved first, the marker was lost and `init` asserted "state
/// machine at 5 is ahead of the log" on every try.)
#[test]
fn raft_install_survives_a_crash_after_the_image_is_saved() {
    let mut node = raft_follower();
    // The follower holds entries 1..=2 of term 1, then misses 3..=5.
    node.round(vec![append(0, 0, 2)]);
    node.sync();
    assert_eq!(append_answers(&mut node), vec![(true, 2)]);
    node.round(vec![raft_offer(1, 5, &[1, 2])]);
    assert_eq!(node.position(), 5, "installed");
    node.crash();
    node.boot();
    assert_eq!(node.failures(), 0, "init must not fail");
    assert_eq!(node.position(), 5, "the saved image is the state");
    assert_eq!(node.counter("snapshot-index"), Some(5), "install finished");
    // The follower goes on from there: entry 6 follows the snapshot's
    // (index 5, term 1).
    node.round(vec![append(5, 1, 1)]);
    node.sync();
    assert_eq!(node.failures(), 0);
    assert!(append_answers(&mut node).contains(&(true, 6)));
}

/// Goal: a crash after the marker is durable but before the image is saved
/// (the save fails, the region stops) leaves the old state and the marker:
/// recovery abandons the install without asserting, and the next offer
/// installs. After the failure, and before the restart, offers are refused.
#[test]
fn raft_install_survives_a_failed_save_and_refuses_offers_after_it() {
    let mut node = raft_follower();
    node.disk.fail_atomic_writes.store(true, Ordering::Relaxed);
    node.round(vec![raft_offer(1, 5, &[1, 2])]);
    assert_eq!(node.position(), 0, "not installed: the save failed");
    node.disk.fail_atomic_writes.store(false, Ordering::Relaxed);
    // Storage failed: a second offer must not replace the state either.
    node.round(vec![raft_offer(1, 6, &[1, 2])]);
    assert_eq!(
        node.position(),
        0,
        "an offer after a storage failure was installed"
    );
    let mut answer = node.write("k");
    assert!(matches!(
        answer.try_recv(),
        Ok(Err(ClientError::Unavailable(why))) if why.contains("storage failed")
    ));
    node.crash();
    node.boot();
    assert_eq!(node.failures(), 0, "init must not fail");
    assert_eq!(node.position(), 0);
    assert_eq!(node.counter("snapshot-index"), Some(0));
    // Crash after the install finished: the new state and metadata hold.
    node.round(vec![raft_offer(1, 5, &[1, 2])]);
    node.round(vec![heartbeat(1, 5)]);
    node.sync();
    node.crash();
    node.boot();
    assert_eq!(node.failures(), 0);
    assert_eq!(node.position(), 5);
    assert_eq!(node.counter("snapshot-index"), Some(5));
}

/// A test protocol: every command batch is applied and snapshotted, then
/// the snapshot's position is written to kv (as a plugin records what its
/// snapshot covers); every message batch writes kv and ships the snapshot
/// to node 2. `status` reports the recorded position.
struct SnapshotProbe {
    position: u64,
}

const PROBE_META: &[u8] = b"probe/snapshot";

impl Protocol for SnapshotProbe {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "snapshot-probe".into(),
            version: "0".into(),
            consistency: Consistency::Eventual,
            capabilities: Default::default(),
        }
    }

    fn init<H: Host>(_host: &mut H, config: InitConfig) -> Self {
        SnapshotProbe {
            position: config.applied_position,
        }
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        let mut applies = Applies::default();
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            applies.push(*id, payload);
        }
        self.position += 1;
        host.apply(&applies, self.position);
        let position = host.snapshot().expect("snapshot");
        host.kv_put(PROBE_META, &position.to_le_bytes())
            .expect("kv put");
    }

    fn on_reads<H: Host>(&mut self, _host: &mut H, _reads: Reads) {}

    fn on_messages<H: Host>(&mut self, host: &mut H, _messages: synod_guest_sdk::Messages) {
        host.kv_put(b"probe/heard", b"1").expect("kv put");
        host.send_snapshot(2, b"the snapshot I know of");
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Pending
    }

    fn status<H: Host>(&mut self, host: &mut H) -> Status {
        let recorded = host
            .kv_get(PROBE_META)
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        Status {
            role: Role::Replica,
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: vec![("recorded".into(), recorded)],
        }
    }
}

fn probe() -> TestNode {
    TestNode::new(1, PluginSource::native::<SnapshotProbe>(), &[1, 2])
}

fn poke(node: &mut TestNode) {
    node.round(vec![RegionEvent::Messages {
        from: 2,
        epoch: 1,
        payloads: Batch::from_items([b"hi"]),
    }]);
}

/// Goal: a shipped image is the one the metadata was captured with. The
/// shipment is held for durability; a newer snapshot saved before it is
/// released must not be shipped in its place (the receiver would refuse
/// it as not matching the metadata, and the leader would wait two
/// election timeouts before trying again).
#[test]
fn a_shipped_snapshot_is_the_image_of_its_callback() {
    let mut node = probe();
    node.write("a");
    node.sync();
    assert_eq!(node.position(), 1);
    // Ships snapshot 1; held behind a kv write that is not durable yet.
    poke(&mut node);
    assert!(node.sent().is_empty(), "held for durability");
    // A newer snapshot is saved (its save waits for the WAL, which also
    // makes the shipment releasable).
    node.write("b");
    assert_eq!(node.position(), 2);
    node.sync();
    let shipped: Vec<u64> = node
        .sent()
        .into_iter()
        .filter_map(|envelope| match envelope.payload {
            Payload::Snapshot { image, .. } => Some(
                KvStateMachine::restore(&image)
                    .expect("image")
                    .applied_position(),
            ),
            Payload::Messages(_) => None,
        })
        .collect();
    assert_eq!(shipped, vec![1], "the image shipped with the metadata");
}

/// Goal: when a snapshot save fails, the records the callback staged after
/// it (here the plugin's note of what the snapshot covers) never become
/// durable, and the region stops acknowledging.
#[test]
fn a_failed_snapshot_save_keeps_later_records_out_of_the_wal() {
    let mut node = probe();
    node.write("a");
    node.sync();
    assert_eq!(node.counter("recorded"), Some(1));
    node.disk.fail_atomic_writes.store(true, Ordering::Relaxed);
    let mut answer = node.write("b");
    node.sync();
    assert!(
        !matches!(answer.try_recv(), Ok(Ok(_))),
        "acknowledged a write whose snapshot failed"
    );
    node.disk.fail_atomic_writes.store(false, Ordering::Relaxed);
    node.crash();
    node.boot();
    assert_eq!(node.position(), 1, "the last saved snapshot");
    assert_eq!(
        node.counter("recorded"),
        Some(1),
        "the metadata of a snapshot that was never saved is durable"
    );
}

/// A test protocol on `snapshot-async` (contract 0.1.2): every command
/// batch is logged and applied, then a save is asked for (one at a time);
/// when the host reports it durable, the position is recorded in kv and the
/// log compacted through it. At start it re-applies the log after
/// `applied-position`. Every message batch ships the snapshot to node 2,
/// then asks for a save too.
struct AsyncProbe {
    position: u64,
    saving: Option<u64>,
}

const ASYNC_NOTIFY: u64 = 7;

impl Protocol for AsyncProbe {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "async-snapshot-probe".into(),
            version: "0".into(),
            consistency: Consistency::Eventual,
            capabilities: Default::default(),
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let mut probe = AsyncProbe {
            position: config.applied_position,
            saving: None,
        };
        let bounds = host.log_bounds();
        if !bounds.is_empty() && bounds.last > probe.position {
            let first = (probe.position + 1).max(bounds.first);
            let entries = host.log_read(first, bounds.last, u32::MAX).expect("log");
            for (offset, payload) in entries.iter().enumerate() {
                let mut applies = Applies::default();
                applies.push(0, payload);
                host.apply(&applies, first + offset as u64);
            }
            probe.position = bounds.last;
        }
        probe
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            self.position += 1;
            host.log_append(self.position, &Batch::from_items([payload]))
                .expect("log append");
            let mut applies = Applies::default();
            applies.push(*id, payload);
            host.apply(&applies, self.position);
        }
        if self.saving.is_none()
            && let Ok(position) = host.snapshot_async(ASYNC_NOTIFY)
        {
            self.saving = Some(position);
        }
    }

    fn on_reads<H: Host>(&mut self, _host: &mut H, _reads: Reads) {}

    fn on_messages<H: Host>(&mut self, host: &mut H, _messages: synod_guest_sdk::Messages) {
        host.send_snapshot(2, b"the snapshot I know of");
        if self.saving.is_none()
            && let Ok(position) = host.snapshot_async(ASYNC_NOTIFY)
        {
            self.saving = Some(position);
        }
    }

    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<u64>) {
        if timers.contains(&ASYNC_NOTIFY)
            && let Some(position) = self.saving.take()
        {
            host.kv_put(PROBE_META, &position.to_le_bytes())
                .expect("kv put");
            host.log_compact_prefix(position).expect("compact");
        }
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Pending
    }

    fn status<H: Host>(&mut self, host: &mut H) -> Status {
        let recorded = host
            .kv_get(PROBE_META)
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        Status {
            role: Role::Replica,
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: vec![
                ("recorded".into(), recorded),
                ("log-first".into(), host.log_bounds().first),
            ],
        }
    }
}

fn async_probe() -> TestNode {
    TestNode::new(1, PluginSource::native::<AsyncProbe>(), &[1, 2])
}

impl TestNode {
    /// The position of the snapshot file on disk, 0 if there is none.
    fn saved_position(&self) -> u64 {
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        SnapshotStore::new(disk, "snapshots")
            .load(REGION)
            .expect("snapshot readable")
            .map_or(0, |image| {
                KvStateMachine::restore(&image)
                    .expect("image")
                    .applied_position()
            })
    }

    fn has_key(&self, key: &str) -> bool {
        let host = &self.runtime.as_ref().expect("node is up").0;
        host.replica().core().state().get(key.as_bytes()).is_some()
    }
}

/// Goal: `snapshot-async` saves the image only after the WAL holds every
/// record up to the request, off the callback (no file yet when the round
/// ends), and notifies the plugin only once the file is there; a crash at
/// any point loses no write: before the save (log intact, no file), after
/// the save but before the plugin's compaction is durable (new file, log
/// intact, old metadata), and after it (file, compacted log, metadata).
#[test]
fn an_async_snapshot_survives_a_crash_at_every_step() {
    for crash_at in 0..3 {
        let mut node = async_probe();
        node.write("a");
        node.write("b");
        assert_eq!(node.position(), 2);
        assert_eq!(node.host().snapshot_save_in_flight(), Some(1));
        assert_eq!(
            node.saved_position(),
            0,
            "written before the WAL was durable"
        );
        node.sync();
        if crash_at == 0 {
            // The log is durable, the save not started (the driver writes
            // it at its next round end).
            assert_eq!(node.saved_position(), 0);
        } else {
            node.round(Vec::new());
            assert_eq!(node.saved_position(), 1, "saved once the WAL is durable");
            assert_eq!(node.host().snapshot_save_in_flight(), None);
            assert_eq!(node.counter("recorded"), Some(1), "notified");
            assert_eq!(node.counter("log-first"), Some(2), "compacted once durable");
            if crash_at == 2 {
                node.sync();
            }
        }
        node.crash();
        node.boot();
        assert!(
            node.has_key("a") && node.has_key("b"),
            "crash at {crash_at}"
        );
        assert_eq!(node.position(), 2, "crash at {crash_at}");
        let (saved, recorded) = [(0, 0), (1, 0), (1, 1)][crash_at];
        assert_eq!(node.saved_position(), saved, "crash at {crash_at}");
        assert_eq!(
            node.counter("recorded"),
            Some(recorded),
            "crash at {crash_at}"
        );
    }
}

/// Goal: while a save is in flight, `send-snapshot` ships nothing (the file
/// may change under any metadata); once notified, it ships the new image.
/// A second request while one is in flight is refused.
#[test]
fn send_snapshot_ships_nothing_while_a_save_is_in_flight() {
    let shipped = |node: &mut TestNode| -> Vec<u64> {
        node.sent()
            .into_iter()
            .filter_map(|envelope| match envelope.payload {
                Payload::Snapshot { image, .. } => Some(
                    KvStateMachine::restore(&image)
                        .expect("image")
                        .applied_position(),
                ),
                Payload::Messages(_) => None,
            })
            .collect()
    };
    let mut node = async_probe();
    node.write("a");
    node.write("b");
    assert_eq!(
        node.host().snapshot_save_in_flight(),
        Some(1),
        "one at a time"
    );
    poke(&mut node);
    node.sync();
    assert!(shipped(&mut node).is_empty(), "shipped while in flight");
    node.round(Vec::new());
    node.sync();
    assert_eq!(node.counter("recorded"), Some(1));
    poke(&mut node);
    node.sync();
    assert_eq!(shipped(&mut node), vec![1]);
}

/// Goal: a failed async save fails the region's storage: no notification,
/// so the plugin never compacts past a snapshot that is not on disk, and no
/// later write is acknowledged; after a restart the log replays everything.
#[test]
fn a_failed_async_save_stops_the_region_and_keeps_the_log() {
    let mut node = async_probe();
    node.disk.fail_atomic_writes.store(true, Ordering::Relaxed);
    node.write("a");
    node.sync();
    node.round(Vec::new());
    let mut answer = node.write("b");
    node.sync();
    assert!(
        !matches!(answer.try_recv(), Ok(Ok(_))),
        "acknowledged a write after a failed save"
    );
    assert_eq!(
        node.counter("recorded"),
        Some(0),
        "notified of a failed save"
    );
    assert_eq!(node.counter("log-first"), Some(1));
    node.disk.fail_atomic_writes.store(false, Ordering::Relaxed);
    node.crash();
    node.boot();
    assert!(node.has_key("a"));
    assert_eq!(node.saved_position(), 0);
}

/// Goal: no snapshot save starts while a swap holds the region (it would
/// delay the seal and the boundary image); once released, one does.
#[test]
fn no_snapshot_save_starts_while_a_swap_holds_the_region() {
    let mut node = async_probe();
    node.write("a");
    node.sync();
    node.round(Vec::new());
    node.sync();
    assert_eq!(node.counter("recorded"), Some(1));
    node.host().hold(16);
    node.write("b");
    poke(&mut node);
    assert_eq!(
        node.host().snapshot_save_in_flight(),
        None,
        "a save started under the hold"
    );
    node.host().release_held();
    node.round(Vec::new());
    poke(&mut node);
    assert_eq!(node.host().snapshot_save_in_flight(), Some(2));
}
