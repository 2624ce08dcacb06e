//! A replica's side of a live protocol swap over the real host code:
//! `ReplicaHost` → `RegionReplica` → native plugins → `RegionCore`, the
//! journal, a WAL and snapshot files on a `MemDisk`, crashed (unsynced
//! writes lost) at the steps of a switch and booted again from the disk as
//! `Node::open` does (the recovered spec picks the protocol).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use synod_guest_sdk::{
    Applies, Batch, Capabilities, Commands, Consistency, Host, InitConfig, Membership, NodeId,
    PluginInfo, Protocol, ReadLevel, Reads, Role, SealProgress, Status,
};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::journal::{JournalRecord, RecoveredNode, group_records};
use crate::plugin::PluginSource;
use crate::region::core::RegionCore;
use crate::region::driver::{ClientError, ClientReply, DriverContext, RegionEvent, ReplicaHost};
use crate::region::epoch::{EpochEvent, SealReport};
use crate::region::replica::{FailurePolicy, RegionReplica};
use crate::region::{ProtocolRef, RegionName, RegionSpec};
use crate::sim::parts::{SimClock, SimCommit, SimNetwork, VirtualTime};
use crate::state_machine::{KvCommand, KvOutcome, KvQuery, KvStateMachine, conflict_key};
use crate::storage::commit::CommitLog;
use crate::storage::disk::{Disk, MemDisk};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::wal::{Wal, WalOptions};

const REGION: &str = "r";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A `MemDisk` whose appends (the WAL's writes) can be made to fail while
/// atomic writes (snapshot files) still work: a switch then saves its
/// boundary image and cannot journal the new epoch, as if the node had
/// crashed between the two.
#[derive(Clone, Default)]
struct FaultyDisk {
    inner: MemDisk,
    fail_appends: Arc<AtomicBool>,
}

impl Disk for FaultyDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        if self.fail_appends.load(Ordering::Relaxed) {
            return Err(io::Error::other(format!("{path}: injected append failure")));
        }
        self.inner.append(path, bytes)
    }
    fn sync(&self, path: &str) -> io::Result<()> {
        self.inner.sync(path)
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_atomic(path, bytes)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }
}

fn fast_params() -> Vec<(String, String)> {
    vec![
        ("election-timeout-ms".into(), "100".into()),
        ("heartbeat-ms".into(), "10".into()),
    ]
}

/// One node of one region, booted from its disk like `Node::open` does.
struct TestNode {
    id: NodeId,
    disk: FaultyDisk,
    /// The protocol of epoch `n` is `sources[n - 1]`.
    sources: Vec<PluginSource>,
    voters: Vec<NodeId>,
    time: VirtualTime,
    runtime: Option<(ReplicaHost, Arc<SimCommit>, Arc<SimNetwork>)>,
    incarnation: u64,
}

impl TestNode {
    fn new(id: NodeId, sources: Vec<PluginSource>, voters: &[NodeId]) -> TestNode {
        let mut node = TestNode {
            id,
            disk: FaultyDisk::default(),
            sources,
            voters: voters.to_vec(),
            time: VirtualTime::default(),
            runtime: None,
            incarnation: 0,
        };
        node.boot();
        node
    }

    fn spec(&self, epoch: u64) -> RegionSpec {
        let source = &self.sources[(epoch - 1) as usize];
        RegionSpec {
            name: REGION.into(),
            protocol: ProtocolRef::Native {
                name: source.info().name,
            },
            params: fast_params(),
            voters: self.voters.clone(),
            learners: Vec::new(),
            epoch,
            membership_target: None,
            version: epoch,
        }
    }

    fn recovered(&self) -> RecoveredNode {
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        let (_, replay) = Wal::open(disk, "wal", WalOptions::default()).expect("wal");
        RecoveredNode::rebuild(&replay.entries).expect("journal")
    }

    fn boot(&mut self) {
        assert!(self.runtime.is_none(), "node {} is running", self.id);
        self.incarnation += 1;
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        let (wal, replay) = Wal::open(disk.clone(), "wal", WalOptions::default()).expect("wal");
        let recovered = RecoveredNode::rebuild(&replay.entries).expect("journal");
        let region = recovered.regions.get(REGION);
        let commit = Arc::new(SimCommit::new(wal));
        let recovering = region.is_some();
        let spec = match region.and_then(|r| r.spec.clone()) {
            Some(spec) => spec,
            None => {
                let spec = self.spec(1);
                let record = JournalRecord::encode_all(&[JournalRecord::RegionCreated {
                    spec: spec.clone(),
                }]);
                let ticket = commit.submit(record).expect("submit");
                commit.wait_durable(ticket).expect("durable");
                spec
            }
        };
        let (log, meta) = region
            .map(|r| (r.log.clone(), r.meta.clone()))
            .unwrap_or_default();
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
                voters: spec.voters.clone(),
                learners: spec.learners.clone(),
            },
            params: spec.params.clone(),
            recovering,
            applied_position: 0,
        };
        let source = self.sources[(spec.epoch - 1) as usize].clone();
        let replica =
            RegionReplica::new(source, core, init, FailurePolicy::default(), clock.clone());
        let network = Arc::new(SimNetwork::default());
        let context = DriverContext {
            node_id: self.id,
            incarnation: self.incarnation,
            commit: commit.clone(),
            snapshots,
            network: network.clone(),
            clock,
        };
        let mut host = ReplicaHost::new(spec, replica, context);
        host.start(recovering);
        self.runtime = Some((host, commit, network));
    }

    fn host(&mut self) -> &mut ReplicaHost {
        &mut self.runtime.as_mut().expect("node is up").0
    }

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

    /// Time passes in 10 ms steps, with timers fired and storage synced.
    fn run_for(&mut self, millis: u64) {
        for _ in 0..millis / 10 {
            self.time.set(self.time.now() + 10_000_000);
            self.host().on_wakeup();
            self.host().end_round();
            self.sync();
        }
    }

    /// kill -9 and power loss: unsynced writes are gone.
    fn crash(&mut self) {
        self.runtime = None;
        self.disk.inner.crash();
    }

    fn sent_epochs(&mut self) -> Vec<u64> {
        let network = &self.runtime.as_ref().expect("node is up").2;
        network.drain().into_iter().map(|e| e.epoch).collect()
    }

    fn state(&self) -> &KvStateMachine {
        self.runtime
            .as_ref()
            .expect("node is up")
            .0
            .replica()
            .core()
            .state()
    }

    fn write(&mut self, key: &str, value: &str) -> oneshot::Receiver<ClientReply> {
        let (reply, answer) = oneshot::channel();
        self.round(vec![write_event(key, value, reply)]);
        answer
    }

    fn read(&mut self, key: &str, level: ReadLevel) -> oneshot::Receiver<ClientReply> {
        let (reply, answer) = oneshot::channel();
        self.round(vec![RegionEvent::Read {
            query: KvQuery::Get {
                key: key.as_bytes().to_vec(),
            }
            .encode(),
            level,
            reply,
            timeout: TIMEOUT,
        }]);
        answer
    }

    /// Seals and returns the report once it is durable.
    fn seal(&mut self) -> SealReport {
        let (reply, mut answer) = oneshot::channel();
        self.host().begin_seal(Some(reply));
        for _ in 0..100 {
            self.host().end_round();
            self.sync();
            if let Ok(report) = answer.try_recv() {
                return report.expect("sealed");
            }
            self.run_for(10);
        }
        panic!("the region did not seal");
    }

    fn counter(&mut self, name: &str) -> u64 {
        let status = self.host().status();
        let plugin = status.plugin.expect("plugin running");
        plugin
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("no counter {name}"), |(_, v)| *v)
    }
}

fn write_event(key: &str, value: &str, reply: oneshot::Sender<ClientReply>) -> RegionEvent {
    let command = KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    };
    RegionEvent::Write {
        keys: vec![conflict_key(command.key())],
        command: command.encode(),
        reply,
        timeout: TIMEOUT,
    }
}

fn messages(from: NodeId, epoch: u64, payload: &[u8]) -> RegionEvent {
    RegionEvent::Messages {
        from,
        epoch,
        payloads: Batch::from_items([payload]),
    }
}

fn standalone() -> PluginSource {
    PluginSource::native::<synod_plugin_standalone::Standalone>()
}

fn raft() -> PluginSource {
    PluginSource::native::<synod_plugin_raft::Raft>()
}

fn probe() -> PluginSource {
    PluginSource::native::<EpochProbe>()
}

/// A minimal protocol that reports what it saw: at `init`, whether the
/// kv area held its key and how many log entries there were; later, how
/// many peer messages reached it. It writes its key and the log on every
/// command and answers each message batch with a message back.
struct EpochProbe {
    position: u64,
    heard: u64,
    init_kv: u64,
    init_log: u64,
}

const PROBE_KEY: &[u8] = b"probe/k";

impl Protocol for EpochProbe {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "epoch-probe".into(),
            version: "0".into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities {
                seal: true,
                ..Capabilities::default()
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let bounds = host.log_bounds();
        let init_log = (bounds.last + 1).saturating_sub(bounds.first);
        if init_log == 0 && config.applied_position >= bounds.first {
            host.log_compact_prefix(config.applied_position)
                .expect("compact");
        }
        EpochProbe {
            position: config.applied_position.max(bounds.last),
            heard: 0,
            init_kv: u64::from(host.kv_get(PROBE_KEY).is_some()),
            init_log,
        }
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        let mut entries = Batch::new();
        let mut applies = Applies::default();
        for (id, payload) in commands.ids.iter().zip(commands.payloads.iter()) {
            entries.push(payload);
            applies.push(*id, payload);
        }
        host.log_append(self.position + 1, &entries)
            .expect("append");
        host.kv_put(PROBE_KEY, b"1").expect("kv put");
        self.position += commands.len() as u64;
        host.apply(&applies, self.position);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        host.complete_reads(&reads.ids);
    }

    fn on_messages<H: Host>(&mut self, host: &mut H, messages: synod_guest_sdk::Messages) {
        self.heard += messages.senders.len() as u64;
        for sender in &messages.senders {
            host.send(*sender, &Batch::from_items([b"ack"]));
        }
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Sealed(self.position)
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> Status {
        Status {
            role: Role::Replica,
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: vec![
                ("heard".into(), self.heard),
                ("init-kv".into(), self.init_kv),
                ("init-log".into(), self.init_log),
            ],
        }
    }
}

/// Goal: a standalone region swapped to Raft (one node) while clients keep
/// writing loses no acknowledged write, answers the writes it held once the
/// new protocol serves, reports epoch 2 with the new protocol, and Raft
/// starts over empty storage after the boundary position.
#[test]
fn standalone_to_raft_under_continuous_writes() {
    let mut node = TestNode::new(1, vec![standalone(), raft()], &[1]);
    let mut answers = Vec::new();
    for i in 0..20 {
        answers.push((i, node.write(&format!("k{i}"), &format!("v{i}"))));
        if i % 3 == 0 {
            node.sync();
        }
    }
    node.sync();
    node.host().hold(100);
    let mut held = Vec::new();
    for i in 20..30 {
        held.push((i, node.write(&format!("k{i}"), &format!("v{i}"))));
    }
    // A local read passes the hold; a linearizable one is held.
    let mut local = node.read("k0", ReadLevel::Local);
    let mut linear = node.read("k25", ReadLevel::Linearizable);
    node.sync();
    assert!(matches!(local.try_recv(), Ok(Ok(KvOutcome::Value(Some(v)))) if v == b"v0"));
    assert!(
        linear.try_recv().is_err(),
        "a linearizable read passed the hold"
    );
    assert_eq!(node.host().held_requests(), 11);
    for (_, answer) in &mut held {
        assert!(answer.try_recv().is_err(), "a held write was answered");
    }
    assert_eq!(node.host().status().held_requests, 11);
    let report = node.seal();
    assert_eq!(node.host().status().seal, "sealed");
    assert_eq!(report.epoch, 1);
    assert_eq!(report.position, 20);
    assert_eq!(report.digest, node.state().digest().to_vec());
    let spec = node.spec(2);
    let switched = node
        .host()
        .switch_epoch(spec.clone(), raft())
        .expect("switch");
    assert_eq!(switched.epoch, 2);
    assert_eq!(switched.start_position, 20);
    // Idempotent: the coordinator may retry.
    assert_eq!(
        node.host().switch_epoch(spec, raft()).expect("again"),
        switched
    );
    // Raft started after the boundary, with none of standalone's log.
    let status = node.host().status();
    assert_eq!(status.epoch, 2);
    assert_eq!(status.seal, "none");
    assert_eq!(status.protocol.name, "raft");
    assert_eq!(status.log.first, 21);
    assert_eq!(node.host().spec().epoch, 2);
    assert_eq!(node.host().shared_spec().get().epoch, 2);
    // The held writes wait until the new Raft leads (it elects itself
    // after its election timeout), then are served, not refused.
    assert_eq!(node.host().held_requests(), 11);
    node.run_for(500);
    assert_eq!(node.host().held_requests(), 0);
    for (i, mut answer) in held {
        match answer.try_recv() {
            Ok(Ok(KvOutcome::Written)) => {}
            other => panic!("held write {i} got {other:?}"),
        }
    }
    assert!(matches!(linear.try_recv(), Ok(Ok(KvOutcome::Value(Some(v)))) if v == b"v25"));
    for i in 30..40 {
        answers.push((i, node.write(&format!("k{i}"), &format!("v{i}"))));
    }
    node.run_for(200);
    for (i, answer) in &mut answers {
        assert!(
            matches!(answer.try_recv(), Ok(Ok(KvOutcome::Written)) | Err(_)),
            "write {i} failed"
        );
    }
    for i in 0..40 {
        assert_eq!(
            node.state().get(format!("k{i}").as_bytes()),
            Some(format!("v{i}").as_bytes()),
            "acknowledged write k{i} lost"
        );
    }
    assert!(node.state().applied_position() > 20);
}

/// Goal: a hold queues at most `capacity` requests; the next is answered
/// `overloaded` at once, and `release_held` hands the queued ones to the
/// current plugin. `hold` and `release_held` are idempotent.
#[test]
fn holding_more_than_the_capacity_is_overloaded() {
    let mut node = TestNode::new(1, vec![standalone()], &[1]);
    node.host().hold(2);
    node.host().hold(2);
    let mut a = node.write("a", "1");
    let mut b = node.write("b", "1");
    let mut c = node.write("c", "1");
    node.sync();
    assert!(matches!(c.try_recv(), Ok(Err(ClientError::Overloaded(_)))));
    assert!(a.try_recv().is_err() && b.try_recv().is_err());
    node.host().release_held();
    node.host().release_held();
    node.host().end_round();
    node.sync();
    assert!(matches!(a.try_recv(), Ok(Ok(KvOutcome::Written))));
    assert!(matches!(b.try_recv(), Ok(Ok(KvOutcome::Written))));
    assert_eq!(node.state().get(b"c"), None);
    // Not holding any more: writes go straight to the plugin.
    let mut d = node.write("d", "1");
    node.sync();
    assert!(matches!(d.try_recv(), Ok(Ok(KvOutcome::Written))));
}

/// Goal: held requests still expire at their client's timeout (and free
/// their place in the queue).
#[test]
fn held_requests_expire_at_their_timeout() {
    let mut node = TestNode::new(1, vec![standalone()], &[1]);
    node.host().hold(1);
    let (reply, mut answer) = oneshot::channel();
    let mut event = write_event("a", "1", reply);
    if let RegionEvent::Write { timeout, .. } = &mut event {
        *timeout = Duration::from_millis(50);
    }
    node.round(vec![event]);
    node.run_for(100);
    assert!(matches!(
        answer.try_recv(),
        Ok(Err(ClientError::Timeout(_)))
    ));
    let mut next = node.write("b", "1");
    node.sync();
    assert!(
        next.try_recv().is_err(),
        "the expired request kept its place"
    );
    node.host().release_held();
    node.host().end_round();
    node.sync();
    assert!(matches!(next.try_recv(), Ok(Ok(KvOutcome::Written))));
    assert_eq!(node.state().get(b"a"), None);
}

/// Goal: a protocol without the seal capability cannot be sealed, with an
/// error that says so.
#[test]
fn sealing_a_protocol_without_seal_is_refused() {
    let mut node = TestNode::new(1, vec![PluginSource::native::<NoSeal>()], &[1]);
    let (reply, mut answer) = oneshot::channel();
    node.host().begin_seal(Some(reply));
    match answer.try_recv() {
        Ok(Err(ClientError::Rejected(synod_guest_sdk::Rejection::Invalid(why)))) => {
            assert!(why.contains("no seal capability"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

struct NoSeal(EpochProbe);

impl Protocol for NoSeal {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "no-seal".into(),
            capabilities: Capabilities::default(),
            ..EpochProbe::info()
        }
    }
    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        NoSeal(EpochProbe::init(host, config))
    }
    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        self.0.on_commands(host, commands)
    }
    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        self.0.on_reads(host, reads)
    }
    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Pending
    }
    fn status<H: Host>(&mut self, host: &mut H) -> Status {
        self.0.status(host)
    }
}

/// Goal: a crash after the boundary snapshot is saved (1) but before the
/// new epoch is journaled (2) restarts in the old epoch, with the old
/// protocol over its own storage; a sealed Raft re-reports the same seal,
/// and the switch can then be done.
#[test]
fn a_crash_between_the_boundary_snapshot_and_the_epoch_record_stays_in_the_old_epoch() {
    let mut node = TestNode::new(1, vec![raft(), raft()], &[1]);
    node.run_for(300);
    let mut writes = Vec::new();
    for i in 0..5 {
        writes.push(node.write(&format!("k{i}"), "v"));
    }
    node.run_for(50);
    for answer in &mut writes {
        assert!(matches!(answer.try_recv(), Ok(Ok(KvOutcome::Written))));
    }
    let sealed = node.seal();
    node.disk.fail_appends.store(true, Ordering::Relaxed);
    let spec = node.spec(2);
    assert!(node.host().switch_epoch(spec.clone(), raft()).is_err());
    // The boundary image was saved; the epoch record never was.
    node.crash();
    node.disk.fail_appends.store(false, Ordering::Relaxed);
    let recovered = node.recovered();
    let region = &recovered.regions[REGION];
    assert_eq!(region.spec.as_ref().map(|s| s.epoch), Some(1));
    assert!(!region.log.is_empty(), "the old protocol's log was kept");
    node.boot();
    assert_eq!(node.host().spec().epoch, 1);
    let again = node.seal();
    assert_eq!(again, sealed);
    let switched = node.host().switch_epoch(spec, raft()).expect("switch");
    assert_eq!(switched.epoch, 2);
    node.run_for(300);
    let mut after = node.write("after", "v");
    node.run_for(50);
    assert!(matches!(after.try_recv(), Ok(Ok(KvOutcome::Written))));
    for i in 0..5 {
        assert_eq!(
            node.state().get(format!("k{i}").as_bytes()),
            Some(&b"v"[..])
        );
    }
}

/// Goal: a crash right after the epoch record (2) restarts in the new epoch
/// from the boundary snapshot, with the new spec and protocol and an empty
/// log and kv area (the new protocol never sees the old one's storage). A
/// checkpoint of that journal recovers the same.
#[test]
fn a_crash_after_the_epoch_record_restarts_in_the_new_epoch() {
    let mut node = TestNode::new(1, vec![probe(), probe()], &[1]);
    for i in 0..5 {
        node.write(&format!("k{i}"), "v");
    }
    node.sync();
    assert_eq!(node.counter("init-kv"), 0);
    let boundary = node.state().digest();
    let spec = node.spec(2);
    let switched = node.host().switch_epoch(spec, probe()).expect("switch");
    assert_eq!(switched.start_position, 5);
    assert_eq!(node.counter("init-kv"), 0, "the new probe saw the old kv");
    assert_eq!(node.counter("init-log"), 0, "the new probe saw the old log");
    node.crash();
    let recovered = node.recovered();
    let region = &recovered.regions[REGION];
    assert_eq!(region.spec.as_ref().map(|s| s.epoch), Some(2));
    assert!(region.log.is_empty(), "old log survived the epoch record");
    assert!(region.meta.is_empty(), "old kv survived the epoch record");
    // A checkpoint of the journal keeps it so.
    let entries = group_records(&recovered.checkpoint_records(1 << 20), 1 << 20);
    let checkpointed = RecoveredNode::rebuild(&entries).expect("checkpoint folds");
    let again = &checkpointed.regions[REGION];
    assert_eq!(again.spec, region.spec);
    assert!(again.log.is_empty() && again.meta.is_empty());
    node.boot();
    assert_eq!(node.host().spec().epoch, 2);
    assert_eq!(node.host().status().epoch, 2);
    assert_eq!(node.state().digest(), boundary);
    assert_eq!(node.state().applied_position(), 5);
    assert_eq!(node.counter("init-kv"), 0);
    assert_eq!(node.counter("init-log"), 0);
    let mut after = node.write("after", "v");
    node.sync();
    assert!(matches!(after.try_recv(), Ok(Ok(KvOutcome::Written))));
    assert_eq!(node.state().applied_position(), 6);
}

/// Goal: epochs are fenced inside the driver. Messages that arrive in the
/// same inbox batch before a switch go to the old plugin; messages of the
/// old epoch handled after it (queued across the switch) never reach the
/// new plugin; outbound messages carry the epoch they were sent in.
#[test]
fn old_epoch_messages_never_reach_the_new_plugin() {
    let mut node = TestNode::new(1, vec![probe(), probe()], &[1, 2]);
    node.round(vec![messages(2, 1, b"old")]);
    node.sync();
    assert_eq!(node.counter("heard"), 1);
    assert_eq!(node.sent_epochs(), vec![1]);
    let (reply, mut answer) = oneshot::channel();
    node.round(vec![
        messages(2, 1, b"before the switch"),
        RegionEvent::Epoch(EpochEvent::Switch {
            spec: Box::new(node.spec(2)),
            source: probe(),
            reply,
        }),
        messages(2, 1, b"queued across the switch"),
        RegionEvent::Snapshot {
            from: 2,
            epoch: 1,
            metadata: Vec::new(),
            image: KvStateMachine::default().snapshot(),
        },
        messages(2, 2, b"new"),
    ]);
    node.sync();
    assert!(matches!(answer.try_recv(), Ok(Ok(_))));
    // The old probe answered the first message in epoch 1; the new one
    // heard only the epoch-2 message and answers in epoch 2.
    assert_eq!(node.counter("heard"), 1);
    assert_eq!(node.sent_epochs(), vec![1, 2]);
    node.round(vec![messages(2, 1, b"late")]);
    node.sync();
    assert_eq!(node.counter("heard"), 1);
    assert!(node.sent_epochs().is_empty());
}

/// Goal: the async handle methods reach the driver and answer (the tokio
/// shell around the same host code).
#[test]
fn handle_methods_drive_a_swap() {
    use crate::storage::commit::GroupCommit;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
        let (wal, _) = Wal::open(disk.clone(), "wal", WalOptions::default()).expect("wal");
        let commit = Arc::new(GroupCommit::start(wal));
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::new());
        let spec = RegionSpec {
            name: REGION.into(),
            protocol: ProtocolRef::Native {
                name: "standalone".into(),
            },
            params: Vec::new(),
            voters: vec![1],
            learners: Vec::new(),
            epoch: 1,
            membership_target: None,
            version: 1,
        };
        let core = RegionCore::new(
            RegionName::new(REGION).expect("name"),
            1,
            Default::default(),
            Default::default(),
            KvStateMachine::default(),
            clock.clone(),
            1,
        );
        let init = InitConfig {
            self_id: 1,
            membership: Membership {
                voters: vec![1],
                learners: Vec::new(),
            },
            params: Vec::new(),
            recovering: false,
            applied_position: 0,
        };
        let replica = RegionReplica::new(
            standalone(),
            core,
            init,
            FailurePolicy::default(),
            clock.clone(),
        );
        let context = DriverContext {
            node_id: 1,
            incarnation: 1,
            commit: commit.clone(),
            snapshots: Arc::new(SnapshotStore::new(disk, "snapshots")),
            network: Arc::new(crate::network::NoPeers::default()),
            clock,
        };
        let handle = crate::region::driver::RegionDriver::spawn(
            spec.clone(),
            replica,
            context,
            commit.durable(),
            false,
        );
        let put = |key: &str| KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        handle.write(&put("a"), TIMEOUT).await.expect("write");
        handle.hold(1).await.expect("hold");
        let held = {
            let handle = handle.clone();
            let command = put("b");
            tokio::spawn(async move { handle.write(&command, TIMEOUT).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            handle.write(&put("c"), TIMEOUT).await,
            Err(ClientError::Overloaded(_))
        ));
        // A second message batch of the old epoch is refused at the handle.
        assert!(
            handle
                .deliver_messages(2, 7, Batch::from_items([b"x"]))
                .is_err()
        );
        let report = handle.seal(Duration::from_secs(5)).await.expect("seal");
        assert_eq!(report.position, 1);
        let mut next = spec.clone();
        next.epoch = 2;
        next.version = 2;
        let switched = handle
            .switch_epoch(next, standalone())
            .await
            .expect("switch");
        assert_eq!(switched.start_position, 1);
        assert_eq!(handle.spec().epoch, 2);
        assert!(matches!(held.await.expect("task"), Ok(KvOutcome::Written)));
        let status = handle.status().await.expect("status");
        assert_eq!(status.epoch, 2);
        assert_eq!(status.state_machine.applied_position, 2);
        handle.release_held().await.expect("release");
        handle.shutdown().await;
    });
}

/// Goal: a region whose storage failed cannot report a durable seal: the
/// seal is refused with the reason and is not driven any more.
#[test]
fn a_seal_after_a_storage_failure_is_refused() {
    let mut node = TestNode::new(1, vec![standalone()], &[1]);
    node.disk.fail_appends.store(true, Ordering::Relaxed);
    let mut write = node.write("a", "1");
    assert!(matches!(
        write.try_recv(),
        Ok(Err(ClientError::Unavailable(_)))
    ));
    let (reply, mut answer) = oneshot::channel();
    node.host().begin_seal(Some(reply));
    match answer.try_recv() {
        Ok(Err(ClientError::Unavailable(why))) => assert!(why.contains("storage failed"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(node.host().status().seal, "none");
    assert_eq!(node.host().next_deadline_nanos(), None);
}
