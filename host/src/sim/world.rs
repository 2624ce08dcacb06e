//! One simulated run: N virtual nodes, each running the real host code
//! (`ReplicaHost` → `RegionReplica` → plugin → `RegionCore`, the journal,
//! the WAL and snapshots over a simulated disk), a simulated network and
//! virtual time, all driven from one seed on one thread.
//!
//! The run has a fault phase (loss, delay, duplication, partitions,
//! crashes losing unsynced writes, torn writes, pauses, clock drift) and a
//! quiet phase (everything healed and restarted) in which the cluster must
//! make progress and converge. Invariants are checked continuously; the
//! client history is checked at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_guest_sdk::{
    Consistency, InitConfig, Membership, NodeId, ReadLevel, Rejection, RequestId,
};
use tokio::sync::oneshot;

use super::faults::FaultProfile;
use super::limits::{LimitWatch, SeedLimits};
use super::parts::{Envelope, Payload, SimClock, SimCommit, SimNetwork, VirtualTime};
use super::schedule::{ARMED_WINDOW_NANOS, Armed, client_requests_first};
use super::trace::Trace;
use super::trace::kinds::batch_kinds;
use super::trace::model::{Fate, MarkKind, NodeChange, OpOutcome, Sending};
use crate::checker::{
    CheckOptions, OpInput, OpOutput, Operation, Outcome, UNKNOWN_RETURN, check_linearizable,
    convergence::{LwwState, LwwWrite, check_lww_convergence},
};
use crate::journal::{JournalRecord, RecoveredNode, RecoveredRegion};
use crate::plugin::PluginSource;
use crate::region::core::{RegionCore, Reply};
use crate::region::driver::{ClientError, ClientReply, DriverContext, RegionEvent, ReplicaHost};
use crate::region::epoch::SealReport;
use crate::region::replica::{FailurePolicy, RegionReplica};
use crate::region::{ProtocolRef, RegionName, RegionSpec};
use crate::state_machine::{KvCommand, KvOutcome, KvQuery, KvStateMachine, Stamp, conflict_key};
use crate::storage::commit::CommitLog;
use crate::storage::disk::{Disk, MemDisk};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::wal::{Wal, WalOptions};

const REGION: &str = "sim";
/// How often leaders are observed and traced.
const OBSERVE_EVERY: Duration = Duration::from_millis(50);
/// Clients stop this long before the end so replicas can converge.
const DRAIN: Duration = Duration::from_secs(1);
/// The checker's bound per key for a seed that has already failed.
const FAILED_SEED_MAX_STATES: u64 = 20_000;

/// Everything a run depends on besides the seed.
#[derive(Clone)]
pub struct SimConfig {
    pub nodes: u64,
    pub faults: FaultProfile,
    pub fault_phase: Duration,
    pub quiet_phase: Duration,
    pub clients: usize,
    pub keys: usize,
    pub source: PluginSource,
    pub params: Vec<(String, String)>,
    pub record_trace: bool,
    /// Live protocol swap: at a seeded time in the fault phase a modelled
    /// coordinator moves the region to epoch 2 running this protocol.
    pub swap_to: Option<PluginSource>,
}

/// What a run found.
#[derive(Debug)]
pub struct SimReport {
    pub seed: u64,
    pub violations: Vec<String>,
    pub operations_ok: u64,
    pub operations_unknown: u64,
    pub virtual_seconds: f64,
    pub leader_changes: u64,
    pub steps: u64,
    /// Hash of every traced event: equal hashes mean identical runs.
    pub trace_hash: u64,
    /// Nodes that switched to the swap's epoch (0 without a swap).
    pub nodes_switched: u64,
    /// Coverage: the plugin's status counters, summed over every node and
    /// incarnation (each incarnation's last observed value), so a seed
    /// shows which protocol paths ran.
    pub counters: BTreeMap<String, u64>,
    /// The highest term any node reported, and the terms in which a leader
    /// was observed (epoch 1): the liveness oracle compares them.
    pub max_term: u64,
    pub leader_terms: u64,
    /// CPU time the seed took on its thread (`run_seed` measures it): the
    /// simulator's speed is `virtual_seconds / cpu` per core.
    pub cpu: Duration,
    pub trace: Option<Trace>,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: NodeId,
        envelope: Envelope,
        /// The trace's id of this delivery (0 when untraced).
        message: u32,
    },
    Wake {
        node: NodeId,
    },
    Fsync {
        node: NodeId,
    },
    ClientIssue {
        client: usize,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Pause {
        node: NodeId,
    },
    Resume {
        node: NodeId,
    },
    Partition,
    Heal,
    Observe,
    QuietPhase,
    /// The coordinator starts a protocol swap.
    Swap,
    /// The current leader is asked to transfer leadership.
    Transfer,
}

/// The modelled swap coordinator's progress.
enum Swap {
    /// No swap configured, or not started yet.
    Idle,
    /// Every reachable replica holds and seals; reports are collected.
    Sealing {
        reports: BTreeMap<NodeId, SealReport>,
        /// (node, incarnation) already asked to hold and seal.
        asked: BTreeSet<(NodeId, u64)>,
    },
    /// The new epoch is recorded; every replica switches once reachable.
    Switched { spec: RegionSpec },
}

/// Requests a replica holds while it seals.
const SWAP_HOLD_CAPACITY: usize = 1024;

struct Runtime {
    host: ReplicaHost,
    commit: Arc<SimCommit>,
    network: Arc<SimNetwork>,
}

struct SimNode {
    disk: MemDisk,
    clock: Arc<SimClock>,
    runtime: Option<Runtime>,
    paused: bool,
    /// Events that reached a paused node; handled when it resumes.
    parked: Vec<RegionEvent>,
    incarnation: u64,
    fsync_pending: bool,
    /// The newest hard-state write the targeted crash fault has considered.
    metadata_ticket_seen: u64,
    wake_at: Option<u64>,
    /// Commands applied since the last (re)start, to catch double applies.
    applied: HashSet<RequestId>,
    last_checked_position: u64,
    /// Plugin failures already reported.
    failures_seen: u64,
    /// States (ticket, position, digest) waiting for their round to be
    /// durable: only durable states must agree across replicas, because a
    /// crash may legitimately undo what was applied but never released.
    unconfirmed: std::collections::VecDeque<(u64, u64, [u8; 32])>,
    /// A steered crash waiting for its moment, and when it lands anyway.
    armed: Option<(Armed, u64)>,
}

struct InFlight {
    op: usize,
    node: NodeId,
    reply: oneshot::Receiver<ClientReply>,
    deadline: u64,
}

struct SimClient {
    target: NodeId,
    sequence: u64,
    in_flight: Option<InFlight>,
}

pub struct World {
    config: SimConfig,
    seed: u64,
    rng: ChaCha8Rng,
    time: VirtualTime,
    queue: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<SimClient>,
    operations: Vec<Operation>,
    /// Weak protocols: the stamp each acknowledged write's reply named.
    write_stamps: HashMap<usize, Stamp>,
    /// Operations known not to have happened (refused), excluded from checks.
    dropped: HashSet<usize>,
    /// When and to which node each request was sent (the leak check).
    sent_requests: Vec<(u64, NodeId)>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    faults_on: bool,
    strong: bool,
    /// The plugin serves lease reads: half the reads ask for them.
    lease_reads: bool,
    end: u64,
    clients_stop: u64,
    quiet_from: u64,
    ok_in_quiet: u64,
    violations: Vec<String>,
    results: HashMap<RequestId, Reply>,
    digests_at: HashMap<u64, [u8; 32]>,
    /// A node reported the leaderless role `replica`: such a protocol
    /// (EPaxos) applies commuting commands in different orders on different
    /// replicas, so equal states at equal positions is not its invariant.
    leaderless: bool,
    /// Prefix divergences (time, what), reported at the end unless the
    /// protocol turned out to be leaderless.
    prefix_divergences: Vec<(u64, String)>,
    leaders: BTreeMap<NodeId, ((u64, u64), bool)>,
    leader_changes: u64,
    last_leader: Option<((u64, u64), NodeId)>,
    trace: Trace,
    steps: u64,
    swap: Swap,
    /// The seed's event and wall-time budgets.
    watch: LimitWatch,
    /// Set when a budget was spent: the run stopped early.
    stopped: bool,
    /// The leader observed in each (epoch, term): any second one is a
    /// violation, however far apart the observations.
    term_leaders: BTreeMap<(u64, u64), NodeId>,
    /// Counters of incarnations that ended, summed; and each running
    /// node's last observed counters.
    counters_done: BTreeMap<String, u64>,
    counters_last: BTreeMap<NodeId, Vec<(String, u64)>>,
    max_term: u64,
}

/// The length of every WAL file (`None` if the directory cannot be read).
fn wal_lengths(disk: &MemDisk) -> Option<Vec<(String, u64)>> {
    let names = disk.list("wal").ok()?;
    names
        .into_iter()
        .map(|name| {
            let path = format!("wal/{name}");
            disk.read(&path)
                .ok()
                .map(|bytes| (path, bytes.len() as u64))
        })
        .collect()
}

/// Puts the WAL back to `lengths` (files created since are removed): the
/// writes since then never happened.
fn cut_wal_back(disk: &MemDisk, lengths: &[(String, u64)]) -> std::io::Result<()> {
    for name in disk.list("wal")? {
        let path = format!("wal/{name}");
        match lengths.iter().find(|(p, _)| *p == path) {
            Some((_, len)) => disk.truncate(&path, *len)?,
            None => disk.remove(&path)?,
        }
    }
    Ok(())
}

fn protocol_ref(source: &PluginSource) -> ProtocolRef {
    match source {
        PluginSource::Wasm { component, .. } => ProtocolRef::Component {
            digest: component.digest.clone(),
        },
        PluginSource::Native { info, .. } => ProtocolRef::Native {
            name: info.name.clone(),
        },
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl World {
    pub fn new(config: SimConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let time = VirtualTime::default();
        let info = config.source.info();
        let strong = info.consistency != Consistency::Eventual;
        let lease_reads = info.capabilities.lease_reads;
        let mut nodes = BTreeMap::new();
        for id in 1..=config.nodes {
            let drift = if config.faults.clock_drift_ppm > 0 {
                (rng.next_u64() % (2 * config.faults.clock_drift_ppm as u64 + 1)) as i64
                    - config.faults.clock_drift_ppm
            } else {
                0
            };
            let offset = rng.next_u64() % 1_000_000_000;
            nodes.insert(
                id,
                SimNode {
                    disk: MemDisk::new(),
                    clock: Arc::new(SimClock::new(time.clone(), offset, drift)),
                    runtime: None,
                    paused: false,
                    parked: Vec::new(),
                    incarnation: 0,
                    fsync_pending: false,
                    metadata_ticket_seen: 0,
                    wake_at: None,
                    applied: HashSet::new(),
                    last_checked_position: 0,
                    failures_seen: 0,
                    unconfirmed: std::collections::VecDeque::new(),
                    armed: None,
                },
            );
        }
        let clients = (0..config.clients)
            .map(|i| SimClient {
                target: 1 + (i as u64 % config.nodes),
                sequence: 0,
                in_flight: None,
            })
            .collect();
        let quiet_from = nanos(config.fault_phase);
        let end = quiet_from + nanos(config.quiet_phase);
        World {
            trace: Trace::new(config.record_trace),
            seed,
            rng,
            time,
            queue: BTreeMap::new(),
            sequence: 0,
            nodes,
            clients,
            operations: Vec::new(),
            write_stamps: HashMap::new(),
            dropped: HashSet::new(),
            sent_requests: Vec::new(),
            blocked: BTreeSet::new(),
            faults_on: true,
            strong,
            lease_reads,
            end,
            clients_stop: end.saturating_sub(nanos(DRAIN)),
            quiet_from,
            ok_in_quiet: 0,
            leaderless: false,
            prefix_divergences: Vec::new(),
            violations: Vec::new(),
            results: HashMap::new(),
            digests_at: HashMap::new(),
            leaders: BTreeMap::new(),
            leader_changes: 0,
            last_leader: None,
            steps: 0,
            swap: Swap::Idle,
            watch: LimitWatch::new(SeedLimits::default(), config.nodes, end),
            stopped: false,
            term_leaders: BTreeMap::new(),
            counters_done: BTreeMap::new(),
            counters_last: BTreeMap::new(),
            max_term: 0,
            config,
        }
    }

    /// Replaces the default per-seed budgets.
    pub fn with_limits(mut self, limits: SeedLimits) -> Self {
        self.watch = LimitWatch::new(limits, self.config.nodes, self.end);
        self
    }

    fn now(&self) -> u64 {
        self.time.now()
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((at, self.sequence), event);
    }

    fn random_between(&mut self, low: Duration, high: Duration) -> u64 {
        let (low, high) = (nanos(low), nanos(high).max(nanos(low)));
        low + self.rng.next_u64() % (high - low + 1)
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }

    /// Roughly exponential spacing around `mean` (uniform 0.2x..1.8x).
    fn after_mean(&mut self, mean: Duration) -> u64 {
        let mean = nanos(mean);
        mean / 5 + self.rng.next_u64() % (mean * 8 / 5 + 1)
    }

    fn spec(&self) -> RegionSpec {
        let protocol = protocol_ref(&self.config.source);
        RegionSpec {
            name: REGION.into(),
            protocol,
            params: self.config.params.clone(),
            voters: (1..=self.config.nodes).collect(),
            learners: Vec::new(),
            epoch: 1,
            membership_target: None,
            version: 1,
        }
    }

    /// Runs to the end and checks everything.
    pub fn run(self) -> SimReport {
        let accounting = crate::region::cpu::set_thread_cpu_accounting(false);
        let report = self.run_to_end();
        crate::region::cpu::set_thread_cpu_accounting(accounting);
        report
    }

    fn run_to_end(mut self) -> SimReport {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.boot(*id);
        }
        for client in 0..self.clients.len() {
            let at = self.random_between(Duration::from_millis(1), Duration::from_millis(20));
            self.schedule(at, Event::ClientIssue { client });
        }
        self.schedule(nanos(OBSERVE_EVERY), Event::Observe);
        self.schedule(self.quiet_from, Event::QuietPhase);
        self.schedule_faults();
        if self.config.swap_to.is_some() {
            // Somewhere in the middle of the fault phase.
            let at = self.quiet_from / 5 + self.rng.next_u64() % (self.quiet_from * 2 / 5 + 1);
            self.schedule(at, Event::Swap);
        }
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > self.end {
                break;
            }
            self.time.set(at);
            self.steps += 1;
            self.handle(event);
            self.drive_swap();
            self.settle_all();
            self.poll_clients();
            if let Some(why) = self.watch.step(at, self.steps) {
                self.violation(format!("{why} (seed {})", self.seed));
                self.stopped = true;
                break;
            }
        }
        if !self.stopped {
            self.time.set(self.end);
        }
        self.finish()
    }

    fn schedule_faults(&mut self) {
        let faults = self.config.faults.clone();
        if !faults.partition_every.is_zero() {
            let at = self.after_mean(faults.partition_every);
            self.schedule(at, Event::Partition);
        }
        if !faults.transfer_every.is_zero() && self.config.nodes > 1 {
            let at = self.after_mean(faults.transfer_every);
            self.schedule(at, Event::Transfer);
        }
        for id in 1..=self.config.nodes {
            if !faults.crash_every.is_zero() {
                let at = self.after_mean(faults.crash_every * self.config.nodes as u32);
                self.schedule(at, Event::Crash { node: id });
            }
            if !faults.pause_every.is_zero() {
                let at = self.after_mean(faults.pause_every * self.config.nodes as u32);
                self.schedule(at, Event::Pause { node: id });
            }
        }
    }

    /// The protocol of an epoch: the configured one, or after the swap
    /// (epoch 2) the swap's target.
    fn source_of(&self, epoch: u64) -> PluginSource {
        match (&self.config.swap_to, epoch) {
            (Some(target), 2..) => target.clone(),
            _ => self.config.source.clone(),
        }
    }

    /// Starts a node's runtime from its (simulated) disk.
    fn boot(&mut self, id: NodeId) {
        let mut spec = self.spec();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.incarnation += 1;
        let disk: Arc<dyn Disk> = Arc::new(node.disk.clone());
        let (wal, replay) = match Wal::open(disk.clone(), "wal", WalOptions::default()) {
            Ok(opened) => opened,
            Err(error) => {
                self.violations
                    .push(format!("node {id}: WAL does not reopen: {error}"));
                return;
            }
        };
        let recovered = match RecoveredNode::rebuild(&replay.entries) {
            Ok(recovered) => recovered,
            Err(error) => {
                self.violations
                    .push(format!("node {id}: journal does not replay: {error}"));
                return;
            }
        };
        let mut region = recovered.regions.get(REGION).map(|r| RecoveredRegion {
            spec: r.spec.clone(),
            log: r.log.clone(),
            meta: r.meta.clone(),
        });
        let commit = Arc::new(SimCommit::new(wal));
        let recovering = region.is_some();
        if region.is_none() {
            let record =
                JournalRecord::encode_all(&[JournalRecord::RegionCreated { spec: spec.clone() }]);
            if commit
                .submit(record)
                .and_then(|t| commit.wait_durable(t))
                .is_err()
            {
                self.violations
                    .push(format!("node {id}: cannot journal the region"));
                return;
            }
            region = Some(RecoveredRegion::default());
        }
        let region = region.unwrap_or_default();
        // The spec the journal recovered picks the protocol (a swap moves it).
        if let Some(recovered) = &region.spec {
            spec = recovered.clone();
        }
        let source = self.source_of(spec.epoch);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let snapshots = Arc::new(SnapshotStore::new(disk, "snapshots"));
        let state = match snapshots.load(REGION) {
            Ok(Some(image)) => match KvStateMachine::restore(&image) {
                Ok(state) => state,
                Err(error) => {
                    self.violations
                        .push(format!("node {id}: snapshot does not restore: {error}"));
                    return;
                }
            },
            Ok(None) => KvStateMachine::default(),
            Err(error) => {
                self.violations
                    .push(format!("node {id}: snapshot unreadable: {error}"));
                return;
            }
        };
        let network = Arc::new(SimNetwork::default());
        let clock: Arc<dyn crate::clock::Clock> = node.clock.clone();
        let seed = self.seed ^ (id << 32) ^ node.incarnation;
        let core = RegionCore::new(
            RegionName::new(REGION).unwrap_or_else(|_| unreachable!("a valid name")),
            id,
            region.log,
            region.meta,
            state,
            clock.clone(),
            seed,
        );
        let init = InitConfig {
            self_id: id,
            membership: Membership {
                voters: spec.voters.clone(),
                learners: Vec::new(),
            },
            params: spec.params.clone(),
            recovering,
            applied_position: 0,
        };
        let replica =
            RegionReplica::new(source, core, init, FailurePolicy::default(), clock.clone());
        let context = DriverContext {
            node_id: id,
            incarnation: node.incarnation,
            commit: commit.clone(),
            snapshots,
            network: network.clone(),
            clock,
        };
        let spec_epoch = spec.epoch;
        let mut host = ReplicaHost::new(spec, replica, context);
        host.enable_tap();
        host.enable_plugin_log_tap();
        host.start(recovering);
        node.runtime = Some(Runtime {
            host,
            commit,
            network,
        });
        node.applied.clear();
        node.last_checked_position = 0;
        node.failures_seen = 0;
        node.unconfirmed.clear();
        node.fsync_pending = false;
        node.metadata_ticket_seen = 0;
        node.wake_at = None;
        node.armed = None;
        let torn = replay.torn_tail_bytes;
        self.trace.node(
            self.time.now(),
            id,
            NodeChange::Boot {
                epoch: spec_epoch,
                recovering,
            },
        );
        self.trace.record(
            self.time.now(),
            id,
            format!(
                "boot (recovering={recovering}, epoch {}, torn tail {torn} bytes)",
                spec_epoch
            ),
        );
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                to,
                envelope,
                message,
            } => self.deliver(to, envelope, message),
            Event::Wake { node } => {
                let now = self.now();
                if let Some(n) = self.nodes.get_mut(&node) {
                    // Only the wake-up for the recorded time clears it: a
                    // stale one (superseded, or a second at the same time)
                    // must not, or each would schedule its own successor
                    // and wake-up chains would multiply with every timer.
                    if n.wake_at.is_some_and(|w| w <= now) {
                        n.wake_at = None;
                    }
                    if !n.paused
                        && let Some(runtime) = n.runtime.as_mut()
                    {
                        runtime.host.on_wakeup();
                    }
                }
            }
            Event::Fsync { node } => {
                let mut metadata_left = false;
                let mut before_release = false;
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.fsync_pending = false;
                    // The disk completes the fsync even while the process
                    // is frozen; releasing outputs waits for it to resume.
                    if let Some(runtime) = n.runtime.as_mut()
                        && runtime.commit.sync().is_ok()
                        && !n.paused
                    {
                        let written = runtime.host.metadata_ticket();
                        if matches!(n.armed, Some((Armed::BeforeRelease, _)))
                            && written > n.metadata_ticket_seen
                            && written <= runtime.commit.durable_ticket()
                        {
                            before_release = true;
                        }
                    }
                    if before_release {
                        n.armed = None;
                    } else if let Some(runtime) = n.runtime.as_mut()
                        && !n.paused
                    {
                        runtime.host.release();
                        let written = runtime.host.metadata_ticket();
                        if written > n.metadata_ticket_seen
                            && written <= runtime.commit.durable_ticket()
                        {
                            n.metadata_ticket_seen = written;
                            metadata_left = true;
                        }
                    }
                }
                if before_release {
                    let down_for =
                        self.random_between(Duration::ZERO, self.config.faults.quick_down_max);
                    self.take_down(node, down_for, Armed::BeforeRelease.describe());
                } else if metadata_left && self.faults_on {
                    let probability = self.config.faults.crash_after_metadata;
                    if probability > 0.0 && self.chance(probability) {
                        let down_for =
                            self.random_between(Duration::ZERO, self.config.faults.quick_down_max);
                        self.take_down(node, down_for, "right after its hard state");
                    }
                }
            }
            Event::ClientIssue { client } => self.issue(client),
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => {
                if self.nodes.get(&node).is_some_and(|n| n.runtime.is_none()) {
                    self.boot(node);
                }
            }
            Event::Pause { node } => self.pause(node),
            Event::Resume { node } => self.resume(node),
            Event::Partition => self.partition(),
            Event::Transfer => self.transfer(),
            Event::Heal => {
                if !self.blocked.is_empty() {
                    self.blocked.clear();
                    self.trace.healed(self.now());
                    self.trace.record(self.now(), 0, "partition healed".into());
                }
            }
            Event::Observe => {
                self.observe();
                let next = self.now() + nanos(OBSERVE_EVERY);
                self.schedule(next, Event::Observe);
            }
            Event::Swap => {
                self.trace.mark(
                    self.now(),
                    0,
                    MarkKind::SwapStart,
                    "swap: coordinator holds and seals every reachable replica (epoch 1 → 2)"
                        .into(),
                );
                self.swap = Swap::Sealing {
                    reports: BTreeMap::new(),
                    asked: BTreeSet::new(),
                };
            }
            Event::QuietPhase => {
                self.faults_on = false;
                self.blocked.clear();
                self.trace.healed(self.now());
                self.trace.mark(
                    self.now(),
                    0,
                    MarkKind::QuietPhase,
                    "quiet phase: faults stop, everything heals".into(),
                );
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for node in self.nodes.values_mut() {
                    node.armed = None;
                }
                for id in ids {
                    self.resume(id);
                    if self.nodes.get(&id).is_some_and(|n| n.runtime.is_none()) {
                        self.boot(id);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, to: NodeId, envelope: Envelope, message: u32) {
        let now = self.now();
        if self.blocked.contains(&(envelope.from, to)) {
            self.trace.arrived(now, message, Fate::CutAtDelivery);
            return;
        }
        let (from, epoch) = (envelope.from, envelope.epoch);
        let event = match envelope.payload {
            Payload::Messages(payloads) => RegionEvent::Messages {
                from,
                epoch,
                payloads,
            },
            Payload::Snapshot { metadata, image } => RegionEvent::Snapshot {
                from,
                epoch,
                metadata,
                image,
            },
        };
        let installs = self.snapshots_installed(to);
        let paused = self.nodes.get(&to).is_some_and(|n| n.paused);
        let fate = match self.submit(to, event) {
            true if paused => Fate::Parked,
            true => Fate::Delivered,
            false => Fate::ReceiverDown,
        };
        self.trace.arrived(now, message, fate);
        if self.faults_on && self.snapshots_installed(to) > installs {
            let probability = self.config.faults.crash_after_install;
            if probability > 0.0 && self.chance(probability) {
                let down_for =
                    self.random_between(Duration::ZERO, self.config.faults.quick_down_max);
                self.take_down(to, down_for, "right after installing a shipped snapshot");
            }
        }
    }

    /// Shipped snapshots the node's running replica has installed.
    fn snapshots_installed(&self, id: NodeId) -> u64 {
        self.nodes
            .get(&id)
            .and_then(|node| node.runtime.as_ref())
            .map_or(0, |runtime| runtime.host.snapshots_installed())
    }

    /// Hands an event to a node: handled now, parked while paused, lost
    /// while down.
    fn submit(&mut self, to: NodeId, event: RegionEvent) -> bool {
        let Some(node) = self.nodes.get_mut(&to) else {
            return false;
        };
        if node.runtime.is_none() {
            return false;
        }
        if node.paused {
            node.parked.push(event);
            return true;
        }
        if let Some(runtime) = node.runtime.as_mut() {
            runtime.host.handle_events(vec![event]);
        }
        self.observe_node(to);
        true
    }

    /// A periodic crash; the next one is scheduled from here.
    fn crash(&mut self, id: NodeId) {
        if !self.faults_on {
            return;
        }
        let down_for = nanos(self.config.faults.down_for);
        let (eager, before_release) = (
            self.config.faults.crash_eager,
            self.config.faults.crash_before_release,
        );
        let armed = if self.chance(eager + before_release) {
            Some(if self.chance(eager / (eager + before_release)) {
                Armed::Eager
            } else {
                Armed::BeforeRelease
            })
        } else {
            None
        };
        match armed {
            Some(kind) => {
                if let Some(node) = self.nodes.get_mut(&id)
                    && node.runtime.is_some()
                {
                    node.armed = Some((kind, self.time.now() + ARMED_WINDOW_NANOS));
                }
            }
            None => self.take_down(id, down_for, ""),
        }
        let every = self.config.faults.crash_every * self.config.nodes as u32;
        let next = self.now() + down_for + self.after_mean(every);
        self.schedule(next, Event::Crash { node: id });
    }

    /// Crashes node `id` if it is up (unsynced writes are lost, the tail
    /// maybe torn) and restarts it `down_for` nanoseconds later.
    fn take_down(&mut self, id: NodeId, down_for: u64, when: &str) {
        let torn = self.config.faults.torn_writes && self.chance(0.5);
        let keep = (self.rng.next_u64() % 64) as usize;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.runtime.is_none() {
            return;
        }
        node.runtime = None;
        node.paused = false;
        node.parked.clear();
        if let Some(last) = self.counters_last.remove(&id) {
            for (name, value) in last {
                *self.counters_done.entry(name).or_default() += value;
            }
        }
        if torn {
            node.disk.crash_with_torn_tail(keep);
        } else {
            node.disk.crash();
        }
        self.trace
            .node(self.time.now(), id, NodeChange::Crash { why: when.into() });
        let when = if when.is_empty() {
            String::new()
        } else {
            format!(" {when}")
        };
        self.trace.record(
            self.now(),
            id,
            format!(
                "crash{when} (unsynced writes lost{})",
                if torn { ", torn tail" } else { "" }
            ),
        );
        let restart_at = self.now() + down_for;
        self.schedule(restart_at, Event::Restart { node: id });
    }

    fn pause(&mut self, id: NodeId) {
        if !self.faults_on {
            return;
        }
        let length = nanos(self.config.faults.pause_length);
        let every = self.config.faults.pause_every * self.config.nodes as u32;
        let target = self.leader_or(id);
        if let Some(node) = self.nodes.get_mut(&target)
            && node.runtime.is_some()
            && !node.paused
        {
            node.paused = true;
            self.trace.node(self.time.now(), target, NodeChange::Pause);
            self.trace.record(self.now(), target, "paused".into());
            let at = self.now() + length;
            self.schedule(at, Event::Resume { node: target });
        }
        let next = self.now() + length + self.after_mean(every);
        self.schedule(next, Event::Pause { node: id });
    }

    /// Asks the node last seen leading to hand leadership to a random other
    /// voter (as an operator's `transfer` would); the next one is scheduled
    /// from here.
    fn transfer(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.now() + self.after_mean(self.config.faults.transfer_every);
        self.schedule(next, Event::Transfer);
        let Some((_, leader)) = self.last_leader else {
            return;
        };
        let others = self.config.nodes - 1;
        let pick = 1 + self.rng.next_u64() % others;
        let target = if pick >= leader { pick + 1 } else { pick };
        let (reply, _answer) = oneshot::channel();
        let call = crate::plugin::Call::TransferLeader(Some(target));
        if self.submit(leader, RegionEvent::Control { call, reply }) {
            self.trace.record(
                self.now(),
                leader,
                format!("asked to transfer leadership to n{target}"),
            );
        }
    }

    /// With the profile's `target_leader` probability the node last seen
    /// leading (if it is up), else `fallback`.
    fn leader_or(&mut self, fallback: NodeId) -> NodeId {
        if !self.chance(self.config.faults.target_leader) {
            return fallback;
        }
        match self.last_leader {
            Some((_, leader))
                if self
                    .nodes
                    .get(&leader)
                    .is_some_and(|n| n.runtime.is_some() && !n.paused) =>
            {
                leader
            }
            _ => fallback,
        }
    }

    fn resume(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if !node.paused {
            return;
        }
        node.paused = false;
        let parked = std::mem::take(&mut node.parked);
        let inputs_first = self.faults_on && self.chance(self.config.faults.wake_inputs_first);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if let Some(runtime) = node.runtime.as_mut() {
            if inputs_first {
                // Client requests, then peer messages, then timers: a stale
                // leader answers before it can learn it was deposed.
                let (requests, rest) = client_requests_first(parked);
                if !requests.is_empty() {
                    runtime.host.handle_events(requests);
                }
                if !rest.is_empty() {
                    runtime.host.handle_events(rest);
                }
                runtime.host.on_wakeup();
            } else {
                runtime.host.on_wakeup();
                if !parked.is_empty() {
                    runtime.host.handle_events(parked);
                }
            }
        }
        self.trace.node(self.time.now(), id, NodeChange::Resume);
        let order = if inputs_first {
            " (requests first)"
        } else {
            ""
        };
        self.trace.record(self.now(), id, format!("resumed{order}"));
    }

    fn partition(&mut self) {
        if !self.faults_on {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut side: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|_| self.rng.next_u64().is_multiple_of(2))
            .collect();
        if side.is_empty() || side.len() == ids.len() {
            side = vec![ids[(self.rng.next_u64() % ids.len() as u64) as usize]];
        }
        let leader = self.leader_or(0);
        if leader != 0 {
            side = vec![leader];
        }
        let one_way = self.config.faults.one_way_partitions && self.chance(0.3);
        self.blocked.clear();
        for a in &side {
            for b in ids.iter().filter(|b| !side.contains(b)) {
                self.blocked.insert((*a, *b));
                if !one_way {
                    self.blocked.insert((*b, *a));
                }
            }
        }
        let rest: Vec<NodeId> = ids.iter().copied().filter(|b| !side.contains(b)).collect();
        self.trace.partition(self.now(), &side, &rest, one_way);
        self.trace.record(
            self.now(),
            0,
            format!(
                "partition {side:?} | rest{}",
                if one_way {
                    " (one-way: their messages out are lost)"
                } else {
                    ""
                }
            ),
        );
        let heal_at = self.now() + nanos(self.config.faults.partition_length);
        self.schedule(heal_at, Event::Heal);
        let next = heal_at + self.after_mean(self.config.faults.partition_every);
        self.schedule(next, Event::Partition);
    }

    /// After any step: end rounds, schedule fsyncs and wake-ups, route
    /// what nodes sent, and check invariants.
    fn settle_all(&mut self) {
        // The nodes are 1..=nodes (`World::new`), in the map's order.
        for id in 1..=self.config.nodes {
            self.settle(id);
        }
    }

    fn settle(&mut self, id: NodeId) {
        let now = self.now();
        let fsync_delay =
            self.random_between(self.config.faults.fsync_min, self.config.faults.fsync_max);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(runtime) = node.runtime.as_mut() else {
            return;
        };
        if !node.paused {
            runtime.host.end_round();
            runtime.host.release();
        }
        let mut schedule = Vec::new();
        if runtime.commit.has_unsynced() && !node.fsync_pending {
            node.fsync_pending = true;
            schedule.push((now + fsync_delay, Event::Fsync { node: id }));
        }
        // A frozen process has no timers; `resume` wakes it.
        if let Some(deadline) = runtime.host.next_deadline_nanos().filter(|_| !node.paused) {
            let at = node.clock.global_at(deadline).max(now + 1);
            if node.wake_at.is_none_or(|w| at < w || w <= now) {
                node.wake_at = Some(at);
                schedule.push((at, Event::Wake { node: id }));
            }
        }
        // A plugin that traps (a failed assertion, a panic) is a protocol
        // bug worth a seed, even though the host contains it.
        let replica = runtime.host.replica();
        let failure = (replica.failures_total() > node.failures_seen).then(|| {
            node.failures_seen = replica.failures_total();
            replica.health().reason().unwrap_or("unknown").to_string()
        });
        let sent = runtime.network.drain();
        // An armed crash: now if messages left ahead of unsynced writes, or
        // anyway once its window passed.
        let armed_crash = match node.armed {
            Some((Armed::Eager, _)) if !sent.is_empty() && runtime.commit.has_unsynced() => {
                Some(Armed::Eager.describe())
            }
            Some((_, until)) if until <= now => Some(""),
            _ => None,
        };
        let taps = runtime.host.drain_tap();
        let plugin_logs = runtime.host.drain_plugin_logs();
        let state = runtime.host.replica().core().state();
        let position = state.applied_position();
        if position != node.last_checked_position {
            node.last_checked_position = position;
            node.unconfirmed
                .push_back((runtime.commit.current_ticket(), position, state.digest()));
        }
        let durable = runtime.commit.durable_ticket();
        let mut confirmed = Vec::new();
        while node
            .unconfirmed
            .front()
            .is_some_and(|(ticket, _, _)| *ticket <= durable)
        {
            if let Some((_, position, digest)) = node.unconfirmed.pop_front() {
                confirmed.push((position, digest));
            }
        }
        let mut double_applied = Vec::new();
        for (request, reply) in &taps {
            if matches!(reply, Reply::Outcome(outcome) if !matches!(outcome, KvOutcome::Value(_)))
                && !node.applied.insert(*request)
            {
                double_applied.push(*request);
            }
        }
        for (at, event) in schedule {
            self.schedule(at, event);
        }
        let now = self.now();
        for line in plugin_logs {
            self.trace.plugin_log(now, id, line);
        }
        for (request, reply) in &taps {
            let what = match reply {
                Reply::Outcome(KvOutcome::Value(_)) => "read",
                Reply::Outcome(KvOutcome::Written | KvOutcome::WrittenStamped { .. }) => {
                    "apply put"
                }
                Reply::Outcome(KvOutcome::Deleted { .. } | KvOutcome::DeletedStamped { .. }) => {
                    "apply delete"
                }
                Reply::Outcome(KvOutcome::Cas {
                    succeeded: true, ..
                }) => "apply cas ok",
                Reply::Outcome(KvOutcome::Cas { .. }) => "apply cas failed",
                Reply::Outcome(KvOutcome::Invalid(_)) => "apply invalid",
                Reply::Rejected(_) => "reject",
            };
            self.trace
                .record_args(now, id, format_args!("{what} {request:#x}"));
        }
        if let Some(why) = failure {
            self.violation(format!("node {id}: {why}"));
        }
        for request in double_applied {
            self.violation(format!("node {id} applied request {request:#x} twice"));
        }
        if self.strong {
            for (request, reply) in taps {
                if matches!(
                    &reply,
                    Reply::Outcome(KvOutcome::Value(_)) | Reply::Rejected(_)
                ) {
                    continue;
                }
                match self.results.get(&request) {
                    Some(first) if *first != reply => self.violation(format!(
                        "request {request:#x} produced {reply:?} on node {id} but {first:?} elsewhere"
                    )),
                    Some(_) => {}
                    None => {
                        self.results.insert(request, reply);
                    }
                }
            }
            for (position, digest) in confirmed {
                if position == 0 {
                    continue;
                }
                match self.digests_at.get(&position) {
                    Some(known) if *known != digest => self.prefix_divergences.push((now, format!(
                        "applied prefixes diverge: node {id} at position {position} holds a different state"
                    ))),
                    Some(_) => {}
                    None => {
                        self.digests_at.insert(position, digest);
                    }
                }
            }
        }
        for envelope in sent {
            self.route(envelope);
        }
        if let Some(when) = armed_crash {
            let down_for = if when.is_empty() {
                nanos(self.config.faults.down_for)
            } else {
                self.random_between(Duration::ZERO, self.config.faults.quick_down_max)
            };
            self.take_down(id, down_for, when);
        }
    }

    fn route(&mut self, envelope: Envelope) {
        let (from, to) = (envelope.from, envelope.to);
        let now = self.now();
        // Message kinds, only worked out for a kept trace.
        let protocol = self
            .trace
            .keeping()
            .then(|| self.source_of(envelope.epoch).info().name);
        let kind = |payload: &Payload| match (payload, &protocol) {
            (Payload::Messages(batch), Some(protocol)) => batch_kinds(protocol, batch),
            (Payload::Snapshot { .. }, _) => "snapshot".to_string(),
            _ => String::new(),
        };
        let bytes = match &envelope.payload {
            Payload::Messages(batch) => batch.byte_len() as u64,
            Payload::Snapshot { image, .. } => image.len() as u64,
        };
        let sending = Sending {
            from,
            to,
            bytes,
            duplicate: false,
        };
        if self.blocked.contains(&(from, to)) {
            self.trace
                .send(now, sending, Fate::CutAtSend, || kind(&envelope.payload));
            self.trace
                .record_args(self.now(), from, format_args!("→ n{to} cut by partition"));
            return;
        }
        if self.faults_on && self.chance(self.config.faults.loss) {
            self.trace
                .send(now, sending, Fate::Lost, || kind(&envelope.payload));
            self.trace
                .record_args(self.now(), from, format_args!("→ n{to} lost"));
            return;
        }
        let message = self
            .trace
            .send(now, sending, Fate::InFlight, || kind(&envelope.payload));
        let delay = self.random_between(self.config.faults.delay_min, self.config.faults.delay_max);
        match &envelope.payload {
            Payload::Messages(batch) => self.trace.record_args(
                now,
                from,
                format_args!("→ n{to} {} msg, {} B", batch.len(), batch.byte_len()),
            ),
            Payload::Snapshot { image, .. } => self.trace.record_args(
                now,
                from,
                format_args!("→ n{to} snapshot, {} B", image.len()),
            ),
        }
        if self.faults_on && self.chance(self.config.faults.duplicate) {
            let copy = Envelope {
                from,
                to,
                epoch: envelope.epoch,
                payload: match &envelope.payload {
                    Payload::Messages(batch) => Payload::Messages(batch.clone()),
                    Payload::Snapshot { metadata, image } => Payload::Snapshot {
                        metadata: metadata.clone(),
                        image: image.clone(),
                    },
                },
            };
            let again = self.random_between(
                self.config.faults.delay_min,
                self.config.faults.delay_max * 3,
            );
            let at = self.now() + again;
            let message = self.trace.send(
                now,
                Sending {
                    duplicate: true,
                    ..sending
                },
                Fate::InFlight,
                || kind(&copy.payload),
            );
            self.schedule(
                at,
                Event::Deliver {
                    to,
                    envelope: copy,
                    message,
                },
            );
        }
        let at = self.now() + delay;
        self.schedule(
            at,
            Event::Deliver {
                to,
                envelope,
                message,
            },
        );
    }

    /// Whether the swap coordinator reaches node `id` now: it is up, not
    /// frozen, and not cut off by a partition.
    fn coordinator_reaches(&self, id: NodeId) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.runtime.is_some() && !n.paused)
            && !self.blocked.iter().any(|(a, b)| *a == id || *b == id)
    }

    /// The modelled coordinator's steps, after every scheduler step, with
    /// the real `ReplicaHost` swap code on each node: hold and seal every
    /// reachable replica; once a majority of voters reports sealed, all
    /// with equal (position, digest) — anything else is a violation —
    /// record epoch 2 and switch every replica as soon as it is reachable.
    fn drive_swap(&mut self) {
        if matches!(self.swap, Swap::Idle) {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let now = self.now();
        match &mut self.swap {
            Swap::Idle => {}
            Swap::Sealing { .. } => {
                let mut traced = Vec::new();
                let mut problems = Vec::new();
                for id in &ids {
                    if !self.coordinator_reaches(*id) {
                        continue;
                    }
                    let Swap::Sealing { reports, asked } = &mut self.swap else {
                        return;
                    };
                    let Some(node) = self.nodes.get_mut(id) else {
                        continue;
                    };
                    let Some(runtime) = node.runtime.as_mut() else {
                        continue;
                    };
                    if runtime.host.spec().epoch != 1 {
                        continue;
                    }
                    if asked.insert((*id, node.incarnation)) {
                        runtime.host.hold(SWAP_HOLD_CAPACITY);
                        runtime.host.begin_seal(None);
                        traced.push((*id, "hold and seal".to_string()));
                    }
                    match runtime.host.seal_report() {
                        Some(Ok(report)) if reports.get(id) != Some(&report) => {
                            traced.push((
                                *id,
                                format!(
                                    "sealed at {} (state digest {})",
                                    report.position,
                                    &hex::encode(&report.digest)[..12]
                                ),
                            ));
                            reports.insert(*id, report);
                        }
                        Some(Err(error)) => {
                            problems.push(format!("node {id}: seal failed: {error}"))
                        }
                        Some(Ok(_)) | None => {}
                    }
                }
                for (id, what) in traced {
                    self.trace.record(now, id, format!("swap: {what}"));
                }
                for problem in problems {
                    self.violation(problem);
                }
                let Swap::Sealing { reports, .. } = &self.swap else {
                    return;
                };
                // The real coordinator's rule decides (the record around it
                // is modelled: every node a voter of both epochs).
                let spec = self.spec();
                let record = crate::control::record::RegionRecord {
                    spec: spec.clone(),
                    phase: crate::control::record::RegionPhase::Active,
                    epochs: Vec::new(),
                    swap: None,
                    retired: BTreeSet::new(),
                    created_at_ms: 0,
                };
                let swap = crate::control::record::SwapRecord {
                    from_epoch: 1,
                    to: spec.protocol.clone(),
                    requested: String::new(),
                    params: Vec::new(),
                    voters: spec.voters.clone(),
                    force: false,
                    step: crate::control::record::SwapStep::Sealing,
                    prepared: BTreeSet::new(),
                    refused: BTreeMap::new(),
                    sealed: reports
                        .iter()
                        .map(|(id, r)| {
                            (
                                *id,
                                crate::control::record::SealReportRecord {
                                    position: r.position,
                                    digest: hex::encode(&r.digest),
                                },
                            )
                        })
                        .collect(),
                    began_at_ms: 0,
                    step_at_ms: 0,
                    actor: 0,
                };
                let decision = crate::swap::coordinator::decide(&record, &swap, false, 0);
                if let crate::swap::coordinator::Decision::Commit {
                    rollback: Some(why),
                    ..
                } = &decision
                {
                    self.violation(why.clone());
                    self.swap = Swap::Idle;
                    return;
                }
                if matches!(decision, crate::swap::coordinator::Decision::Commit { .. }) {
                    let mut spec = self.spec();
                    spec.epoch = 2;
                    spec.version = 2;
                    if let Some(target) = &self.config.swap_to {
                        spec.protocol = protocol_ref(target);
                    }
                    self.trace.mark(
                        now,
                        0,
                        MarkKind::EpochRecorded,
                        format!(
                            "swap: a majority sealed; epoch 2 recorded ({})",
                            self.source_of(2).id()
                        ),
                    );
                    self.swap = Swap::Switched { spec };
                    self.drive_swap();
                }
            }
            Swap::Switched { .. } => {
                let source = self.source_of(2);
                let mut switched = Vec::new();
                for id in &ids {
                    if !self.coordinator_reaches(*id) {
                        continue;
                    }
                    let behind = self
                        .nodes
                        .get(id)
                        .and_then(|n| n.runtime.as_ref())
                        .is_some_and(|r| r.host.spec().epoch < 2);
                    if !behind {
                        continue;
                    }
                    // A crash between the boundary snapshot (1) and the
                    // epoch record (2): the switch runs over a synced WAL,
                    // then the node dies and the WAL is cut back to where it
                    // was, so the snapshot file is the only trace of it.
                    let probability = self.config.faults.crash_mid_switch;
                    let mid_switch = self.faults_on && self.chance(probability);
                    let Swap::Switched { spec } = &self.swap else {
                        return;
                    };
                    let Some(node) = self.nodes.get_mut(id) else {
                        continue;
                    };
                    let Some(runtime) = node.runtime.as_mut() else {
                        continue;
                    };
                    let mut wal_before = None;
                    if mid_switch {
                        runtime.host.end_round();
                        if runtime.commit.sync().is_ok() {
                            wal_before = wal_lengths(&node.disk);
                        }
                    }
                    let result = runtime.host.switch_epoch(spec.clone(), source.clone());
                    switched.push((*id, wal_before, result));
                }
                for (id, wal_before, result) in switched {
                    if let (Some(lengths), Ok(_)) = (wal_before, &result) {
                        let down_for =
                            self.random_between(Duration::ZERO, self.config.faults.quick_down_max);
                        self.take_down(
                            id,
                            down_for,
                            "between the boundary snapshot and the epoch record",
                        );
                        if let Some(node) = self.nodes.get(&id)
                            && let Err(error) = cut_wal_back(&node.disk, &lengths)
                        {
                            self.violation(format!("node {id}: cannot cut the WAL back: {error}"));
                        }
                        continue;
                    }
                    match result {
                        Ok(report) => {
                            self.trace.mark(
                                now,
                                id,
                                MarkKind::Switched,
                                format!(
                                    "swap: switched to epoch {} at position {}",
                                    report.epoch, report.start_position
                                ),
                            );
                            let probability = self.config.faults.crash_after_switch;
                            if self.faults_on && self.chance(probability) {
                                let down_for = self.random_between(
                                    Duration::ZERO,
                                    self.config.faults.quick_down_max,
                                );
                                self.take_down(id, down_for, "right after switching epoch");
                            }
                        }
                        Err(error) => self.violation(format!("node {id}: switch failed: {error}")),
                    }
                }
            }
        }
    }

    /// Nodes running the swap's epoch.
    fn nodes_switched(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| n.runtime.as_ref())
            .filter(|r| r.host.spec().epoch >= 2)
            .count() as u64
    }

    fn violation(&mut self, what: String) {
        let now = self.now();
        if self.violations.len() < 20 {
            self.violations
                .push(format!("t={:.6}s {what}", now as f64 / 1e9));
        }
        self.trace.mark(now, 0, MarkKind::Violation, what);
    }

    fn observe(&mut self) {
        for id in 1..=self.config.nodes {
            self.observe_node(id);
        }
    }

    /// Reads node `id`'s status: its role and term for the one-leader
    /// oracle, its counters. Called periodically for every node and right
    /// after a node handles peer messages (where it may have won an
    /// election), so a leader that lasts less than the sampling period is
    /// still seen. Reading status changes nothing, so the run is the same.
    fn observe_node(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.paused {
            return;
        }
        let Some(runtime) = node.runtime.as_mut() else {
            return;
        };
        let status = runtime.host.status();
        let Some(mut plugin) = status.plugin else {
            return;
        };
        self.trace
            .role(self.time.now(), id, plugin.role, plugin.term, status.epoch);
        let is_leader = plugin.role == "leader";
        self.leaderless |= plugin.role == "replica";
        self.counters_last
            .insert(id, std::mem::take(&mut plugin.counters));
        if status.epoch == 1 {
            self.max_term = self.max_term.max(plugin.term);
        }
        // Terms start over in every epoch (a swap starts a new protocol).
        let term = (status.epoch, plugin.term);
        if is_leader && self.strong && self.config.nodes > 1 {
            match self.term_leaders.get(&term) {
                Some(&first) if first != id => {
                    let previous_is_first = self
                        .last_leader
                        .is_some_and(|(last_term, leader)| last_term == term && leader == first);
                    // Consecutive leaders are reported below already.
                    if !previous_is_first {
                        self.violation(format!(
                            "two leaders in term {} of epoch {}: nodes {first} and {id}",
                            term.1, term.0
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    self.term_leaders.insert(term, id);
                }
            }
        }
        let previous = self.leaders.insert(id, (term, is_leader));
        if is_leader && previous != Some((term, true)) {
            if let Some((last_term, leader)) = self.last_leader
                && self.strong
                && last_term == term
                && leader != id
                && self.config.nodes > 1
            {
                self.violation(format!(
                    "two leaders in term {} of epoch {}: nodes {leader} and {id}",
                    term.1, term.0
                ));
            }
            if self
                .last_leader
                .is_none_or(|(last_term, leader)| last_term != term || leader != id)
            {
                self.leader_changes += 1;
                self.last_leader = Some((term, id));
                let what = if term.0 == 1 {
                    format!("leader (term {})", term.1)
                } else {
                    format!("leader (term {}, epoch {})", term.1, term.0)
                };
                self.trace.record(self.now(), id, what);
            }
        }
    }

    fn issue(&mut self, index: usize) {
        let now = self.now();
        if now >= self.clients_stop {
            return;
        }
        let keys = self.config.keys.max(1) as u64;
        let roll = self.rng.next_u64();
        // Every client writes every key, also under weak protocols: their
        // check judges the survivor by the stamps the replies name.
        let key = format!("k{}", roll % keys);
        let client_count = self.clients.len() as u64;
        let client = &mut self.clients[index];
        client.sequence += 1;
        let sequence = client.sequence;
        let value = format!("c{index}s{sequence}");
        let target = client.target;
        let (input, event_for) = match (roll >> 20) % 10 {
            0..=2 => (OpInput::Get, None),
            3 if self.strong => (
                OpInput::Cas {
                    expected: if roll & 1 == 0 {
                        None
                    } else {
                        Some(format!(
                            "c{}s{}",
                            (roll >> 8) % client_count,
                            sequence.saturating_sub(1)
                        ))
                    },
                    new: Some(value.clone()),
                },
                Some(()),
            ),
            // Weak protocols delete instead of compare-and-swap.
            3 => (OpInput::Delete, Some(())),
            _ => (
                OpInput::Put {
                    value: value.clone(),
                },
                Some(()),
            ),
        };
        let (reply, receiver) = oneshot::channel();
        let event = match &input {
            OpInput::Get => RegionEvent::Read {
                query: KvQuery::Get {
                    key: key.clone().into_bytes(),
                }
                .encode(),
                level: if !self.strong {
                    ReadLevel::Local
                } else if self.lease_reads && roll & 2 == 0 {
                    ReadLevel::Lease
                } else {
                    ReadLevel::Linearizable
                },
                reply,
                timeout: self.config.faults.client_timeout,
            },
            OpInput::Put { value } => {
                let command = KvCommand::Put {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                };
                RegionEvent::Write {
                    keys: vec![conflict_key(command.key())],
                    command: command.encode(),
                    reply,
                    timeout: self.config.faults.client_timeout,
                }
            }
            OpInput::Cas { expected, new } => {
                let command = KvCommand::Cas {
                    key: key.clone().into_bytes(),
                    expected: expected.clone().map(|v| v.into_bytes().into()),
                    new: new.clone().map(|v| v.into_bytes().into()),
                };
                RegionEvent::Write {
                    keys: vec![conflict_key(command.key())],
                    command: command.encode(),
                    reply,
                    timeout: self.config.faults.client_timeout,
                }
            }
            OpInput::Delete => {
                let command = KvCommand::Delete {
                    key: key.clone().into_bytes(),
                };
                RegionEvent::Write {
                    keys: vec![conflict_key(command.key())],
                    command: command.encode(),
                    reply,
                    timeout: self.config.faults.client_timeout,
                }
            }
        };
        let _ = event_for;
        let op = self.operations.len();
        self.operations.push(Operation {
            client: index as u64,
            key,
            call: now,
            ret: UNKNOWN_RETURN,
            input,
            output: OpOutput::Unknown,
        });
        if let Some(traced) = self.operations.get(op) {
            self.trace.client_call(now, op, target, traced);
        }
        if !self.submit(target, event) {
            // Connection refused: the request never left the client.
            if let Some(traced) = self.operations.get(op) {
                self.trace
                    .client_return(now, op, traced, OpOutcome::Refused, "node down");
            }
            self.dropped.insert(op);
            let next = (self.rng.next_u64() % self.config.nodes) + 1;
            self.clients[index].target = next;
            let at = now + nanos(Duration::from_millis(10));
            self.schedule(at, Event::ClientIssue { client: index });
            return;
        }
        self.sent_requests.push((now, target));
        self.clients[index].in_flight = Some(InFlight {
            op,
            node: target,
            reply: receiver,
            deadline: now + nanos(self.config.faults.client_timeout),
        });
    }

    fn poll_clients(&mut self) {
        let now = self.now();
        for index in 0..self.clients.len() {
            let Some(in_flight) = self.clients[index].in_flight.as_mut() else {
                continue;
            };
            let answer = match in_flight.reply.try_recv() {
                Ok(answer) => Some(answer),
                Err(oneshot::error::TryRecvError::Empty) if now < in_flight.deadline => None,
                Err(_) => Some(Err(ClientError::Timeout(self.config.faults.client_timeout))),
            };
            let Some(answer) = answer else { continue };
            let (op, node) = (in_flight.op, in_flight.node);
            self.clients[index].in_flight = None;
            let mut retry_after = self.random_between(Duration::ZERO, Duration::from_millis(3));
            match answer {
                Ok(outcome) => {
                    let output = match outcome {
                        KvOutcome::Written => OpOutput::Ok,
                        KvOutcome::WrittenStamped { time, origin, .. } => {
                            self.write_stamps.insert(op, Stamp { time, origin });
                            OpOutput::Ok
                        }
                        KvOutcome::DeletedStamped {
                            existed,
                            time,
                            origin,
                            ..
                        } => {
                            self.write_stamps.insert(op, Stamp { time, origin });
                            OpOutput::Deleted { existed }
                        }
                        KvOutcome::Value(value) => {
                            OpOutput::Value(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
                        }
                        KvOutcome::Deleted { existed } => OpOutput::Deleted { existed },
                        KvOutcome::Cas { succeeded, current } => OpOutput::Cas {
                            succeeded,
                            current: current.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        },
                        KvOutcome::Invalid(why) => {
                            self.violation(format!(
                                "a well-formed request was refused as invalid: {why}"
                            ));
                            OpOutput::Unknown
                        }
                    };
                    if let Some(operation) = self.operations.get_mut(op) {
                        operation.output = output;
                        operation.ret = now;
                    }
                    if now >= self.quiet_from {
                        self.ok_in_quiet += 1;
                    }
                    if let Some(traced) = self.operations.get(op) {
                        self.trace.client_return(now, op, traced, OpOutcome::Ok, "");
                    }
                }
                Err(ClientError::Rejected(Rejection::NotLeader(hint))) => {
                    // Refused before being ordered: it did not happen.
                    if self.trace.keeping()
                        && let Some(traced) = self.operations.get(op)
                    {
                        let why = match hint {
                            Some(leader) => format!("not leader (try n{leader})"),
                            None => "not leader".to_string(),
                        };
                        self.trace
                            .client_return(now, op, traced, OpOutcome::Rejected, &why);
                    }
                    self.dropped.insert(op);
                    self.clients[index].target = match hint {
                        Some(leader) if leader != node => leader,
                        _ => (self.rng.next_u64() % self.config.nodes) + 1,
                    };
                    retry_after += nanos(Duration::from_millis(5));
                }
                Err(error) => {
                    // Unknown outcome: it may or may not have happened.
                    if self.trace.keeping()
                        && let Some(traced) = self.operations.get(op)
                    {
                        let why = error.to_string();
                        self.trace
                            .client_return(now, op, traced, OpOutcome::Unknown, &why);
                    }
                    self.clients[index].target = (self.rng.next_u64() % self.config.nodes) + 1;
                    retry_after += nanos(Duration::from_millis(10));
                }
            }
            self.schedule(
                now + retry_after.max(1),
                Event::ClientIssue { client: index },
            );
        }
    }

    /// Weak protocols: once quiet, every replica holds the same values
    /// with the same stamps, and each key's survivor is its acknowledged
    /// write with the greatest stamp, or one after it by the rule
    /// (`checker::check_lww_convergence`). An acknowledged write whose reply
    /// names no stamp cannot be judged, and is itself a violation.
    fn check_acknowledged_writes(&mut self) {
        let mut writes = Vec::new();
        let mut unstamped = Vec::new();
        for (index, op) in self.operations.iter().enumerate() {
            let value = match &op.input {
                OpInput::Put { value } => Some(value.clone()),
                OpInput::Delete => None,
                _ => continue,
            };
            if self.dropped.contains(&index) {
                continue;
            }
            let stamp = self.write_stamps.get(&index).copied();
            if op.ret != UNKNOWN_RETURN && stamp.is_none() {
                unstamped.push(op.key.clone());
            }
            writes.push(LwwWrite {
                key: op.key.clone(),
                value,
                stamp,
            });
        }
        let mut replicas = Vec::new();
        for (id, node) in &self.nodes {
            let Some(runtime) = &node.runtime else {
                continue;
            };
            let state: LwwState = runtime
                .host
                .replica()
                .core()
                .state()
                .versioned()
                .into_iter()
                .map(|(key, value, stamp)| {
                    (
                        String::from_utf8_lossy(key).into_owned(),
                        (
                            value.map(|v| String::from_utf8_lossy(v).into_owned()),
                            stamp,
                        ),
                    )
                })
                .collect();
            replicas.push((*id, state));
        }
        if let Some(key) = unstamped.first() {
            self.violation(format!(
                "an eventually consistent protocol acknowledged a write to {key} without a last-writer-wins stamp ({} such writes): apply writes with state-machine.apply-stamped",
                unstamped.len()
            ));
        }
        if let Err(error) = check_lww_convergence(&replicas, &writes) {
            self.violation(format!("weak consistency: {error}"));
        }
    }

    /// Requests the protocol never answered (a deposed leader's overwritten
    /// writes, reads a trapped instance held) must not pile up: a node may
    /// hold only requests sent within the client timeout (plus a margin for
    /// delivery and clock drift) before the end.
    fn check_pending_requests_drained(&mut self) {
        let margin = nanos(Duration::from_millis(500));
        let recent_from = self
            .end
            .saturating_sub(nanos(self.config.faults.client_timeout) + margin);
        let mut leaks = Vec::new();
        for (id, node) in &self.nodes {
            let Some(runtime) = &node.runtime else {
                continue;
            };
            let recent = self
                .sent_requests
                .iter()
                .filter(|(at, to)| to == id && *at >= recent_from)
                .count();
            let pending = runtime.host.pending_requests();
            if pending > recent {
                leaks.push(format!(
                    "n{id} holds {pending} pending requests, but only {recent} were sent within the client timeout"
                ));
            }
        }
        for leak in leaks {
            self.violation(format!("requests leaked: {leak}"));
        }
    }

    fn finish(mut self) -> SimReport {
        self.report_prefix_divergences();
        if self.stopped {
            // The run ended early: the end-of-run checks would only repeat
            // that it did not finish.
            return self.report(0);
        }
        self.check_pending_requests_drained();
        let nodes_switched = self.nodes_switched();
        if self.config.swap_to.is_some() && nodes_switched < self.config.nodes {
            self.violation(format!(
                "the protocol swap did not complete: {nodes_switched} of {} nodes switched",
                self.config.nodes
            ));
        }
        // Liveness: once healed, a strong protocol must serve clients.
        if self.config.clients > 0 && self.ok_in_quiet == 0 {
            self.violation("no client operation completed after the faults stopped".into());
        }
        // Liveness: terms must not run far ahead of the leaders elected.
        if self.strong && self.config.nodes > 1 {
            let leader_terms = self.term_leaders.keys().filter(|(e, _)| *e == 1).count() as u64;
            let bound = super::oracles::LivenessBound::for_run(self.config.fault_phase);
            if let Some(why) = super::oracles::term_churn(self.max_term, leader_terms, &bound) {
                self.violation(why);
            }
        }
        // Convergence: every replica holds the same state.
        let mut digests = BTreeMap::new();
        for (id, node) in &self.nodes {
            if let Some(runtime) = &node.runtime {
                digests.insert(
                    *id,
                    hex::encode(runtime.host.replica().core().state().digest()),
                );
            }
        }
        let distinct: BTreeSet<&String> = digests.values().collect();
        if distinct.len() > 1 {
            let listing = digests
                .iter()
                .map(|(id, d)| format!("n{id}={}", &d[..12]))
                .collect::<Vec<_>>()
                .join(" ");
            self.violation(format!(
                "replicas did not converge after the quiet phase: {listing}"
            ));
        }
        if !self.strong {
            self.check_acknowledged_writes();
        }
        let mut history: Vec<Operation> = self
            .operations
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.dropped.contains(index))
            .map(|(_, op)| op.clone())
            .collect();
        let ok = history.iter().filter(|op| op.ret != UNKNOWN_RETURN).count() as u64;
        let unknown = history.len() as u64 - ok;
        if self.strong && distinct.len() == 1 {
            // Acknowledged writes survive: the converged state is read once
            // more, after everything, so a write acknowledged and then lost
            // makes the history non-linearizable even if no client read
            // the key again.
            let reads = super::oracles::final_reads(
                &history,
                self.end,
                self.nodes
                    .values()
                    .find_map(|node| node.runtime.as_ref())
                    .map(|runtime| runtime.host.replica().core().state()),
            );
            history.extend(reads);
        }
        if self.strong {
            // A seed that already failed (replicas diverged, say) often has
            // a history no order explains, and proving that can take the
            // checker minutes: its verdict is then bounded tighter (still
            // deterministic), and an undecided check is only traced.
            let options = if self.violations.is_empty() {
                CheckOptions::default()
            } else {
                CheckOptions {
                    max_states: FAILED_SEED_MAX_STATES,
                    ..CheckOptions::default()
                }
            };
            match check_linearizable(&history, &options) {
                Outcome::Linearizable => {}
                Outcome::Violation(violation) => self.violation(format!(
                    "history is not linearizable on key {}: {}",
                    violation.key, violation.explanation
                )),
                Outcome::Unknown { key, reason } => {
                    self.trace.record(
                        self.now(),
                        0,
                        format!("checker undecided on {key}: {reason}"),
                    );
                }
            }
        }
        let mut report = self.report(nodes_switched);
        report.operations_ok = ok;
        report.operations_unknown = unknown;
        report
    }

    /// The prefix oracle's findings, for protocols that apply in one order.
    fn report_prefix_divergences(&mut self) {
        if self.leaderless {
            return;
        }
        for (at, what) in std::mem::take(&mut self.prefix_divergences) {
            if self.violations.len() < 20 {
                self.violations
                    .push(format!("t={:.6}s {what}", at as f64 / 1e9));
            }
            self.trace.mark(at, 0, MarkKind::Violation, what);
        }
    }

    fn report(self, nodes_switched: u64) -> SimReport {
        let mut counters = self.counters_done;
        for last in self.counters_last.into_values() {
            for (name, value) in last {
                *counters.entry(name).or_default() += value;
            }
        }
        SimReport {
            counters,
            max_term: self.max_term,
            leader_terms: self
                .term_leaders
                .keys()
                .filter(|(epoch, _)| *epoch == 1)
                .count() as u64,
            seed: self.seed,
            violations: self.violations,
            operations_ok: 0,
            operations_unknown: 0,
            virtual_seconds: self.time.now() as f64 / 1e9,
            leader_changes: self.leader_changes,
            steps: self.steps,
            trace_hash: self.trace.hash(),
            nodes_switched,
            cpu: Duration::ZERO,
            trace: self.trace.into_recorded(),
        }
    }
}
