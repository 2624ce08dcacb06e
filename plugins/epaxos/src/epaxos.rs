//! The EPaxos replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use synod_guest_sdk::*;

use crate::exec::{Walk, components};
use crate::message::{Message, TryOutcome};
use crate::params::Params;
use crate::quorum;
use crate::types::{Attributes, Ballot, Command, Deps, InstanceId, Record, Status, Write};

/// The one timer: housekeeping (retransmission, fast-path and recovery
/// timeouts).
pub const TIMER_TICK: TimerId = 1;
/// Kv key of [`Meta`].
pub const META_KEY: &[u8] = b"epaxos/meta";
/// Prefix of instance records: then space and slot, big-endian.
pub const RECORD_PREFIX: &[u8] = b"epaxos/i/";

/// Replica-wide durable facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The next slot of this replica's own instance space.
    pub next_slot: u64,
    /// Highest slot with a record, per instance space (where `init`
    /// looks for records).
    pub max_slot: BTreeMap<NodeId, u64>,
}

pub fn record_key(instance: InstanceId) -> Vec<u8> {
    let mut key = RECORD_PREFIX.to_vec();
    key.extend_from_slice(&instance.space.to_be_bytes());
    key.extend_from_slice(&instance.slot.to_be_bytes());
    key
}

/// Highest slot and seq of the instances behind one conflict key.
#[derive(Clone, Debug, Default)]
struct KeyEntry {
    slots: BTreeMap<NodeId, u64>,
    seq: u64,
}

impl KeyEntry {
    fn add(&mut self, instance: InstanceId, seq: u64) {
        let slot = self.slots.entry(instance.space).or_insert(0);
        *slot = (*slot).max(instance.slot);
        self.seq = self.seq.max(seq);
    }

    fn fold_into(&self, attributes: &mut Attributes) {
        attributes.merge(&Attributes {
            seq: self.seq,
            deps: self.slots.clone(),
        });
    }
}

/// Where attributes come from: the highest interfering instance per space
/// and key, without scanning instances.
#[derive(Clone, Debug, Default)]
struct ConflictIndex {
    by_key: HashMap<u64, KeyEntry>,
    /// Barriers and seals (they interfere with every write).
    global: KeyEntry,
    /// Every instance that is not a noop (what barriers interfere with).
    all: KeyEntry,
}

impl ConflictIndex {
    /// Attributes of `command` as this replica sees it: deps on the highest
    /// interfering instance of each space, seq above theirs.
    fn attributes(&self, command: &Command) -> Attributes {
        let mut attributes = Attributes {
            seq: 0,
            deps: Deps::new(),
        };
        match command {
            Command::Noop => return attributes,
            Command::Barrier | Command::Seal => self.all.fold_into(&mut attributes),
            Command::Writes(_) => {
                self.global.fold_into(&mut attributes);
                for key in command.keys() {
                    if let Some(entry) = self.by_key.get(&key) {
                        entry.fold_into(&mut attributes);
                    }
                }
            }
        }
        attributes.seq += 1;
        attributes
    }

    /// Registers what a record held before it was overwritten.
    fn register_seen(&mut self, instance: InstanceId, record: &Record) {
        let seq = record.attributes.seq;
        if record.seen_global {
            self.register(instance, &Command::Barrier, seq);
        }
        for key in &record.seen_keys {
            self.all.add(instance, seq);
            self.by_key.entry(*key).or_default().add(instance, seq);
        }
    }

    fn register(&mut self, instance: InstanceId, command: &Command, seq: u64) {
        match command {
            Command::Noop => {}
            Command::Barrier | Command::Seal => {
                self.global.add(instance, seq);
                self.all.add(instance, seq);
            }
            Command::Writes(_) => {
                self.all.add(instance, seq);
                for key in command.keys() {
                    self.by_key.entry(key).or_default().add(instance, seq);
                }
            }
        }
    }
}

/// What a replica driving an instance (its command leader, or a
/// recovering replica) is waiting for.
#[derive(Clone, Debug)]
enum Phase {
    PreAccept {
        /// The attributes this replica proposed.
        proposed: Attributes,
        oks: BTreeMap<NodeId, Attributes>,
    },
    Accept {
        oks: BTreeSet<NodeId>,
    },
    Prepare {
        replies: BTreeMap<NodeId, PrepareReply>,
    },
    TryPreAccept {
        attributes: Attributes,
        /// Replicas known to hold `command` with `attributes`.
        holders: BTreeSet<NodeId>,
        /// Replicas that answered the Prepare, and those of them that
        /// pre-accepted the leader's attributes unchanged.
        responders: BTreeSet<NodeId>,
        group: BTreeSet<NodeId>,
        /// Leaders of conflicting instances shown unable to have
        /// pre-accepted these attributes unchanged.
        excluded: BTreeSet<NodeId>,
    },
}

#[derive(Clone, Debug)]
struct PrepareReply {
    status: Status,
    command: Option<Command>,
    attributes: Attributes,
    voted: Ballot,
    unchanged: bool,
}

#[derive(Clone, Debug)]
struct Lead {
    ballot: Ballot,
    command: Command,
    phase: Phase,
    /// When the current phase's messages were last sent.
    sent_at: u64,
    started_at: u64,
}

/// Protocol counters reported by `status`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub instances_led: u64,
    pub instances_committed: u64,
    pub instances_executed: u64,
    pub fast_path: u64,
    pub slow_path: u64,
    pub recoveries: u64,
    pub noops_committed: u64,
    pub try_pre_accepts: u64,
    pub graph_largest_component: u64,
    pub graph_last_walk: u64,
    pub execution_blocked: u64,
    pub messages_malformed: u64,
    pub nacks: u64,
    pub commit_disagreements: u64,
}

/// One EPaxos replica of a region.
pub struct Epaxos {
    id: NodeId,
    voters: Vec<NodeId>,
    params: Params,
    meta: Meta,
    records: BTreeMap<InstanceId, Record>,
    index: ConflictIndex,
    leads: BTreeMap<InstanceId, Lead>,
    /// Uncommitted instances (or ones execution waits for): when this
    /// replica recovers them if nothing happens first.
    deadlines: BTreeMap<InstanceId, u64>,
    /// Committed instances not yet executed.
    pending: BTreeSet<InstanceId>,
    /// Pending instances whose last walk stopped at an uncommitted one:
    /// while that stays uncommitted, walking again would stop there again.
    blocked: BTreeMap<InstanceId, InstanceId>,
    /// Per space: every slot at or below is executed.
    executed_prefix: BTreeMap<NodeId, u64>,
    /// Apply position: instances executed (noops excluded, so that every
    /// replica counts the same instances before a seal).
    position: u64,
    /// Linearizable reads waiting for a barrier to execute here.
    waiting_reads: BTreeMap<InstanceId, Vec<RequestId>>,
    /// Writes this replica proposed, by instance, until it executes: if a
    /// recovery chose a no-op instead, their clients are told to retry.
    proposed_writes: BTreeMap<InstanceId, Vec<RequestId>>,
    /// The position of the first executed seal.
    sealed_at: Option<u64>,
    /// This replica was asked to seal (refuses new writes and reads).
    sealing: bool,
    /// The seal instance this replica proposed.
    seal_instance: Option<InstanceId>,
    pub counters: Counters,
}

impl Protocol for Epaxos {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "epaxos".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities {
                replication: true,
                linearizable_reads: true,
                lease_reads: false,
                membership_change: false,
                leader_transfer: false,
                seal: true,
                snapshots: false,
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let (params, warnings) = Params::parse(&config.params);
        for warning in warnings {
            host.log(Level::Warn, &format!("epaxos: {warning}"));
        }
        let mut voters = config.membership.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let mut replica = Epaxos {
            id: config.self_id,
            voters,
            params,
            meta: Meta {
                next_slot: 1,
                max_slot: BTreeMap::new(),
            },
            records: BTreeMap::new(),
            index: ConflictIndex::default(),
            leads: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            pending: BTreeSet::new(),
            blocked: BTreeMap::new(),
            executed_prefix: BTreeMap::new(),
            position: config.applied_position,
            waiting_reads: BTreeMap::new(),
            proposed_writes: BTreeMap::new(),
            sealed_at: None,
            sealing: false,
            seal_instance: None,
            counters: Counters::default(),
        };
        if config.recovering {
            replica.reload(host, config.applied_position);
        }
        host.set_timer(TIMER_TICK, replica.params.tick_ms * NANOS_PER_MS);
        replica.execute(host);
        replica
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        if self.refusing() {
            host.reject(&commands.ids, &Rejection::Sealed);
            return;
        }
        let mut writes = Vec::with_capacity(commands.len());
        for (index, id) in commands.ids.iter().enumerate() {
            let Some(payload) = commands.payloads.get(index) else {
                host.reject(
                    &[*id],
                    &Rejection::Invalid("malformed payload batch".into()),
                );
                continue;
            };
            writes.push(Write {
                id: *id,
                payload: payload.to_vec(),
                keys: commands.keys_of(index).to_vec(),
            });
        }
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(self.params.max_batch));
            let batch = std::mem::replace(&mut writes, rest);
            let ids = batch.iter().map(|w| w.id).collect();
            let instance = self.propose(host, Command::Writes(batch));
            self.proposed_writes.insert(instance, ids);
        }
        self.execute(host);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        if self.refusing() {
            host.reject(&reads.ids, &Rejection::Sealed);
            return;
        }
        let mut ordered = Vec::new();
        let mut local = Vec::new();
        for (id, level) in reads.ids.iter().zip(reads.levels.iter()) {
            match level {
                ReadLevel::Local => local.push(*id),
                // No leases in a leaderless protocol: a lease read is
                // served as a linearizable one.
                ReadLevel::Linearizable | ReadLevel::Lease => ordered.push(*id),
            }
        }
        if !local.is_empty() {
            host.complete_reads(&local);
        }
        if !ordered.is_empty() {
            let instance = self.propose(host, Command::Barrier);
            self.waiting_reads.insert(instance, ordered);
            self.execute(host);
        }
    }

    fn on_messages<H: Host>(&mut self, host: &mut H, messages: Messages) {
        for (sender, bytes) in messages.iter() {
            match Message::decode(bytes) {
                Ok(message) => self.handle(host, sender, message),
                Err(error) => {
                    self.counters.messages_malformed += 1;
                    host.log(
                        Level::Warn,
                        &format!("epaxos: malformed message from {sender}: {error}"),
                    );
                }
            }
        }
        self.execute(host);
    }

    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
        if timers.contains(&TIMER_TICK) {
            self.tick(host);
            host.set_timer(TIMER_TICK, self.params.tick_ms * NANOS_PER_MS);
        }
        self.execute(host);
    }

    fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
        if let Some(position) = self.sealed_at {
            return SealProgress::Sealed(position);
        }
        self.sealing = true;
        if self.seal_instance.is_none() {
            let instance = self.propose(host, Command::Seal);
            self.seal_instance = Some(instance);
            self.execute(host);
        }
        match self.sealed_at {
            Some(position) => SealProgress::Sealed(position),
            None => SealProgress::Pending,
        }
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> synod_guest_sdk::Status {
        let c = &self.counters;
        let counters = [
            ("instances-led", c.instances_led),
            ("instances-committed", c.instances_committed),
            ("instances-executed", c.instances_executed),
            ("fast-path", c.fast_path),
            ("slow-path", c.slow_path),
            ("recoveries", c.recoveries),
            ("noops-committed", c.noops_committed),
            ("try-pre-accepts", c.try_pre_accepts),
            ("graph-largest-component", c.graph_largest_component),
            ("graph-last-walk", c.graph_last_walk),
            ("execution-blocked", c.execution_blocked),
            ("messages-malformed", c.messages_malformed),
            ("nacks", c.nacks),
            ("commit-disagreements", c.commit_disagreements),
            ("instances-pending-execution", self.pending.len() as u64),
            ("instances-retained", self.records.len() as u64),
        ];
        synod_guest_sdk::Status {
            role: if self.sealed_at.is_some() {
                Role::Sealed
            } else {
                Role::Replica
            },
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: counters
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
        }
    }
}

const NANOS_PER_MS: u64 = 1_000_000;
/// How many slots past a missing dependency one blocked walk arms recovery
/// for.
const CATCH_UP_SLOTS: u64 = 1024;

impl Epaxos {
    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The apply position (instances executed, noops excluded).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// What this replica holds for `instance`.
    pub fn record(&self, instance: InstanceId) -> Option<&Record> {
        self.records.get(&instance)
    }

    /// Every record this replica retains.
    pub fn records(&self) -> &BTreeMap<InstanceId, Record> {
        &self.records
    }

    /// Instances this replica is driving (as leader or recoverer).
    pub fn leading(&self) -> Vec<InstanceId> {
        self.leads.keys().copied().collect()
    }

    /// The position of the executed seal, if any.
    pub fn sealed_at(&self) -> Option<u64> {
        self.sealed_at
    }

    fn refusing(&self) -> bool {
        self.sealing || self.sealed_at.is_some()
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.id;
        self.voters.iter().copied().filter(move |peer| *peer != me)
    }

    fn n(&self) -> usize {
        self.voters.len().max(1)
    }

    // ----- storage -------------------------------------------------------

    fn reload<H: Host>(&mut self, host: &mut H, applied: u64) {
        if let Some(bytes) = host.kv_get(META_KEY) {
            match postcard::from_bytes::<Meta>(&bytes) {
                Ok(meta) => self.meta = meta,
                Err(error) => panic!("epaxos: corrupt meta record: {error}"),
            }
        }
        let spaces: Vec<(NodeId, u64)> = self.meta.max_slot.iter().map(|(s, m)| (*s, *m)).collect();
        let now = host.now();
        for (space, max) in spaces {
            for slot in 1..=max {
                let instance = InstanceId { space, slot };
                let Some(bytes) = host.kv_get(&record_key(instance)) else {
                    continue;
                };
                let mut record: Record = match postcard::from_bytes(&bytes) {
                    Ok(record) => record,
                    Err(error) => panic!("epaxos: corrupt record {instance:?}: {error}"),
                };
                if record.status == Status::Executed && record.executed_at > applied {
                    // The state machine came back without it: execute again.
                    record.status = Status::Committed;
                    record.executed_at = 0;
                }
                if let Some(command) = &record.command {
                    self.index
                        .register(instance, command, record.attributes.seq);
                }
                self.index.register_seen(instance, &record);
                match record.status {
                    Status::Executed => {
                        if matches!(record.command, Some(Command::Seal)) && self.sealed_at.is_none()
                        {
                            self.sealed_at = Some(record.executed_at);
                        }
                    }
                    Status::Committed => {
                        self.pending.insert(instance);
                    }
                    _ => {
                        let deadline = self.recovery_deadline(host, now);
                        self.deadlines.insert(instance, deadline);
                    }
                }
                self.records.insert(instance, record);
            }
        }
        for space in self.meta.max_slot.keys().copied().collect::<Vec<_>>() {
            self.advance_prefix(space);
        }
    }

    fn save<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let Some(record) = self.records.get(&instance) else {
            return;
        };
        let bytes = postcard::to_allocvec(record).expect("records always encode");
        if let Err(error) = host.kv_put(&record_key(instance), &bytes) {
            panic!("epaxos: cannot persist {instance:?}: {error}");
        }
        let max = self.meta.max_slot.entry(instance.space).or_insert(0);
        if *max < instance.slot {
            *max = instance.slot;
            self.save_meta(host);
        }
    }

    fn save_meta<H: Host>(&mut self, host: &mut H) {
        let bytes = postcard::to_allocvec(&self.meta).expect("meta always encodes");
        if let Err(error) = host.kv_put(META_KEY, &bytes) {
            panic!("epaxos: cannot persist meta: {error}");
        }
    }

    fn send<H: Host>(&mut self, host: &mut H, to: NodeId, message: &Message) {
        if to == self.id {
            return;
        }
        host.send(to, &Batch::from_items([message.encode()]));
    }

    fn broadcast<H: Host>(&mut self, host: &mut H, message: &Message) {
        let bytes = message.encode();
        let batch = Batch::from_items([bytes]);
        for peer in self.peers().collect::<Vec<_>>() {
            host.send(peer, &batch);
        }
    }

    fn recovery_deadline<H: Host>(&self, host: &mut H, now: u64) -> u64 {
        let timeout = self.params.recovery_timeout_ms * NANOS_PER_MS;
        now + timeout + host.random() % timeout.max(1)
    }

    /// Arms recovery for `missing` and for every later uncommitted slot of
    /// its space this replica knows of (at most [`CATCH_UP_SLOTS`]): a
    /// replica back from a partition misses a run of slots, and recovering
    /// them one timeout after another would take minutes.
    fn arm_space_recovery<H: Host>(&mut self, host: &mut H, missing: InstanceId) {
        let known = self
            .meta
            .max_slot
            .get(&missing.space)
            .copied()
            .unwrap_or(missing.slot);
        let last = known.min(missing.slot.saturating_add(CATCH_UP_SLOTS));
        for slot in missing.slot..=last.max(missing.slot) {
            let instance = InstanceId {
                space: missing.space,
                slot,
            };
            if !self
                .records
                .get(&instance)
                .is_some_and(Record::is_committed)
            {
                self.arm_recovery(host, instance);
            }
        }
    }

    /// Makes sure an uncommitted instance execution waits for is either
    /// driven by a lead here or has a recovery deadline.
    fn arm_recovery<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        if !self.deadlines.contains_key(&instance) && !self.leads.contains_key(&instance) {
            let now = host.now();
            let deadline = self.recovery_deadline(host, now);
            self.deadlines.insert(instance, deadline);
        }
    }

    /// Pushes back the recovery of `instance` (it made progress).
    fn touch<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let committed = self
            .records
            .get(&instance)
            .is_some_and(Record::is_committed);
        if committed {
            self.deadlines.remove(&instance);
        } else {
            let now = host.now();
            let deadline = self.recovery_deadline(host, now);
            self.deadlines.insert(instance, deadline);
        }
    }

    // ----- command leader -------------------------------------------------

    /// Starts a new instance in this replica's space for `command`.
    fn propose<H: Host>(&mut self, host: &mut H, command: Command) -> InstanceId {
        let instance = InstanceId {
            space: self.id,
            slot: self.meta.next_slot,
        };
        self.meta.next_slot += 1;
        self.save_meta(host);
        self.counters.instances_led += 1;
        let ballot = Ballot::initial(self.id);
        let attributes = self.index.attributes(&command);
        self.index.register(instance, &command, attributes.seq);
        self.records.insert(instance, {
            let mut record = Record::empty(instance);
            record.status = Status::PreAccepted;
            record.hold(command.clone());
            record.attributes = attributes.clone();
            record.promised = ballot;
            record.voted = ballot;
            record.unchanged = true;
            record
        });
        self.save(host, instance);
        self.touch(host, instance);
        self.start_pre_accept(host, instance, ballot, command, attributes);
        instance
    }

    fn start_pre_accept<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    ) {
        let now = host.now();
        self.leads.insert(
            instance,
            Lead {
                ballot,
                command: command.clone(),
                phase: Phase::PreAccept {
                    proposed: attributes.clone(),
                    oks: BTreeMap::new(),
                },
                sent_at: now,
                started_at: now,
            },
        );
        self.broadcast(
            host,
            &Message::PreAccept {
                instance,
                ballot,
                command,
                attributes,
            },
        );
        self.evaluate_pre_accept(host, instance, false);
    }

    /// Decides the fast or slow path once enough replies are in.
    fn evaluate_pre_accept<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        timed_out: bool,
    ) {
        let n = self.n();
        let Some(lead) = self.leads.get(&instance) else {
            return;
        };
        let Phase::PreAccept { proposed, oks } = &lead.phase else {
            return;
        };
        let promised = self.records.get(&instance).map(|r| r.promised);
        if promised != Some(lead.ballot) {
            // Promised to a recovery with a higher ballot: it decides now,
            // and this replica recovers again if that one fails too.
            self.leads.remove(&instance);
            self.touch(host, instance);
            return;
        }
        let initial = lead.ballot.is_initial_for(instance);
        let identical = oks.values().filter(|a| *a == proposed).count();
        if initial && identical + 1 >= quorum::fast(n) {
            let (command, attributes) = (lead.command.clone(), proposed.clone());
            self.counters.fast_path += 1;
            self.commit(host, instance, command, attributes);
            return;
        }
        let differing = oks.len() - identical;
        let peers = n - 1;
        let fast_impossible = !initial || peers - differing + 1 < quorum::fast(n);
        if oks.len() + 1 >= quorum::majority(n) && (fast_impossible || timed_out) {
            let mut merged = proposed.clone();
            for attributes in oks.values() {
                merged.merge(attributes);
            }
            let (ballot, command) = (lead.ballot, lead.command.clone());
            self.counters.slow_path += 1;
            self.start_accept(host, instance, ballot, command, merged);
        }
    }

    fn start_accept<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    ) {
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if record.is_committed() {
            self.leads.remove(&instance);
            return;
        }
        if record.promised > ballot {
            // Someone with a higher ballot took over; recover again if it
            // fails too.
            self.leads.remove(&instance);
            self.touch(host, instance);
            return;
        }
        record.status = Status::Accepted;
        record.unchanged = false;
        record.hold(command.clone());
        record.attributes = attributes.clone();
        record.promised = ballot;
        record.voted = ballot;
        self.index.register(instance, &command, attributes.seq);
        self.save(host, instance);
        self.touch(host, instance);
        let now = host.now();
        let started_at = self
            .leads
            .get(&instance)
            .map_or(now, |lead| lead.started_at);
        self.leads.insert(
            instance,
            Lead {
                ballot,
                command: command.clone(),
                phase: Phase::Accept {
                    oks: BTreeSet::new(),
                },
                sent_at: now,
                started_at,
            },
        );
        self.broadcast(
            host,
            &Message::Accept {
                instance,
                ballot,
                command,
                attributes,
            },
        );
        self.evaluate_accept(host, instance);
    }

    fn evaluate_accept<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let Some(lead) = self.leads.get(&instance) else {
            return;
        };
        let Phase::Accept { oks } = &lead.phase else {
            return;
        };
        if oks.len() + 1 >= quorum::majority(self.n()) {
            let command = lead.command.clone();
            let attributes = match self.records.get(&instance) {
                Some(record) => record.attributes.clone(),
                None => return,
            };
            self.commit(host, instance, command, attributes);
        }
    }

    /// Records `instance` as committed and tells every peer.
    fn commit<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        command: Command,
        attributes: Attributes,
    ) {
        self.leads.remove(&instance);
        self.learn_commit(host, instance, command, attributes);
        // Broadcast what this replica holds (a commit learnt earlier wins).
        if let Some(record) = self.records.get(&instance)
            && let Some(command) = record.command.clone()
        {
            let message = Message::Commit {
                instance,
                command,
                attributes: record.attributes.clone(),
            };
            self.broadcast(host, &message);
        }
    }

    /// Stores a commit; false if it was known already.
    fn learn_commit<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        command: Command,
        attributes: Attributes,
    ) -> bool {
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if record.is_committed() {
            if record.command.as_ref() != Some(&command) || record.attributes != attributes {
                // Two different values chosen: a safety violation (only the
                // unsafe fixtures can cause it). Keep the first.
                self.counters.commit_disagreements += 1;
                host.log(
                    Level::Error,
                    &format!("epaxos: {instance:?} committed with two different values"),
                );
            }
            return false;
        }
        if command == Command::Noop {
            self.counters.noops_committed += 1;
        }
        record.status = Status::Committed;
        record.hold(command.clone());
        record.attributes = attributes.clone();
        self.index.register(instance, &command, attributes.seq);
        self.save(host, instance);
        self.deadlines.remove(&instance);
        self.leads.remove(&instance);
        self.pending.insert(instance);
        self.counters.instances_committed += 1;
        true
    }

    // ----- message handling ---------------------------------------------

    fn handle<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        match message {
            Message::PreAccept {
                instance,
                ballot,
                command,
                attributes,
            } => self.on_pre_accept(host, from, instance, ballot, command, attributes),
            Message::PreAcceptOk {
                instance,
                ballot,
                attributes,
            } => {
                if let Some(lead) = self.leads.get_mut(&instance)
                    && lead.ballot == ballot
                    && let Phase::PreAccept { oks, .. } = &mut lead.phase
                {
                    oks.insert(from, attributes);
                    self.evaluate_pre_accept(host, instance, false);
                }
            }
            Message::Accept {
                instance,
                ballot,
                command,
                attributes,
            } => self.on_accept(host, from, instance, ballot, command, attributes),
            Message::AcceptOk { instance, ballot } => {
                if let Some(lead) = self.leads.get_mut(&instance)
                    && lead.ballot == ballot
                    && let Phase::Accept { oks } = &mut lead.phase
                {
                    oks.insert(from);
                    self.evaluate_accept(host, instance);
                }
            }
            Message::Commit {
                instance,
                command,
                attributes,
            } => {
                self.learn_commit(host, instance, command, attributes);
            }
            Message::Prepare { instance, ballot } => self.on_prepare(host, from, instance, ballot),
            Message::PrepareOk {
                instance,
                ballot,
                status,
                command,
                attributes,
                voted,
                unchanged,
            } => {
                if let Some(lead) = self.leads.get_mut(&instance)
                    && lead.ballot == ballot
                    && let Phase::Prepare { replies } = &mut lead.phase
                {
                    replies.insert(
                        from,
                        PrepareReply {
                            status,
                            command,
                            attributes,
                            voted,
                            unchanged,
                        },
                    );
                    self.evaluate_prepare(host, instance);
                }
            }
            Message::TryPreAccept {
                instance,
                ballot,
                command,
                attributes,
            } => {
                let reply = self.try_pre_accept_here(host, instance, ballot, command, attributes);
                self.send(host, from, &reply);
            }
            Message::TryPreAcceptReply {
                instance,
                ballot,
                outcome,
            } => self.on_try_reply(host, from, instance, ballot, outcome),
            Message::Nack {
                instance,
                ballot,
                promised,
            } => {
                if self
                    .leads
                    .get(&instance)
                    .is_some_and(|l| l.ballot == ballot)
                {
                    self.counters.nacks += 1;
                    // Someone else is driving it; recover later if they fail.
                    self.leads.remove(&instance);
                    let record = self
                        .records
                        .entry(instance)
                        .or_insert_with(|| Record::empty(instance));
                    if record.promised < promised && !record.is_committed() {
                        record.promised = promised;
                        self.save(host, instance);
                    }
                    self.touch(host, instance);
                }
            }
        }
    }

    /// A replica that voted for a higher ballot stops driving its own.
    fn supersede(&mut self, instance: InstanceId, ballot: Ballot) {
        if self.leads.get(&instance).is_some_and(|l| l.ballot < ballot) {
            self.leads.remove(&instance);
        }
    }

    /// If this replica holds `instance` committed, tells `to`.
    fn answer_committed<H: Host>(
        &mut self,
        host: &mut H,
        to: NodeId,
        instance: InstanceId,
    ) -> bool {
        let Some(record) = self.records.get(&instance) else {
            return false;
        };
        if !record.is_committed() {
            return false;
        }
        let Some(command) = record.command.clone() else {
            return false;
        };
        let message = Message::Commit {
            instance,
            command,
            attributes: record.attributes.clone(),
        };
        self.send(host, to, &message);
        true
    }

    fn nack<H: Host>(&mut self, host: &mut H, to: NodeId, instance: InstanceId, ballot: Ballot) {
        let promised = self
            .records
            .get(&instance)
            .map_or(Ballot::initial(instance.space), |r| r.promised);
        self.send(
            host,
            to,
            &Message::Nack {
                instance,
                ballot,
                promised,
            },
        );
    }

    fn on_pre_accept<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    ) {
        if self.answer_committed(host, from, instance) {
            return;
        }
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if ballot < record.promised {
            self.nack(host, from, instance, ballot);
            return;
        }
        if record.status == Status::Accepted && ballot <= record.voted {
            // A late PreAccept of a ballot this replica already accepted
            // in: the accept vote must stand.
            return;
        }
        if record.status == Status::PreAccepted
            && record.voted == ballot
            && record.command.as_ref() == Some(&command)
        {
            // A duplicate: answer what was voted.
            let attributes = record.attributes.clone();
            self.send(
                host,
                from,
                &Message::PreAcceptOk {
                    instance,
                    ballot,
                    attributes,
                },
            );
            return;
        }
        let proposed = attributes.clone();
        let mut merged = attributes;
        merged.merge(&self.index.attributes(&command));
        // The instance never depends on itself.
        if merged.deps.get(&instance.space) == Some(&instance.slot) {
            let own_lower = self.highest_interfering_below(instance, &command);
            merged.deps.insert(instance.space, own_lower);
        }
        merged.deps.retain(|_, slot| *slot > 0);
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        record.status = Status::PreAccepted;
        record.hold(command.clone());
        record.unchanged = ballot.is_initial_for(instance) && merged == proposed;
        record.attributes = merged.clone();
        record.promised = ballot;
        record.voted = ballot;
        self.index.register(instance, &command, merged.seq);
        self.supersede(instance, ballot);
        self.save(host, instance);
        self.touch(host, instance);
        self.send(
            host,
            from,
            &Message::PreAcceptOk {
                instance,
                ballot,
                attributes: merged,
            },
        );
    }

    /// The highest slot below `instance` in its own space that interferes
    /// with `command` (0 when none), by scanning the records.
    fn highest_interfering_below(&self, instance: InstanceId, command: &Command) -> u64 {
        let low = InstanceId {
            space: instance.space,
            slot: 0,
        };
        self.records
            .range(low..instance)
            .rev()
            .find(|(_, r)| r.command.as_ref().is_some_and(|c| c.interferes(command)))
            .map_or(0, |(id, _)| id.slot)
    }

    fn on_accept<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    ) {
        if self.answer_committed(host, from, instance) {
            return;
        }
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if ballot < record.promised {
            self.nack(host, from, instance, ballot);
            return;
        }
        record.status = Status::Accepted;
        record.unchanged = false;
        record.hold(command.clone());
        record.attributes = attributes.clone();
        record.promised = ballot;
        record.voted = ballot;
        self.index.register(instance, &command, attributes.seq);
        self.supersede(instance, ballot);
        self.save(host, instance);
        self.touch(host, instance);
        self.send(host, from, &Message::AcceptOk { instance, ballot });
    }

    fn on_prepare<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        instance: InstanceId,
        ballot: Ballot,
    ) {
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        let committed = record.is_committed();
        if !committed
            && (ballot < record.promised || (ballot == record.promised && ballot.node != from))
        {
            self.nack(host, from, instance, ballot);
            return;
        }
        // The vote as it stood before this promise.
        let reply = Message::PrepareOk {
            instance,
            ballot,
            status: record.status,
            command: record.command.clone(),
            attributes: record.attributes.clone(),
            voted: record.vote_ballot(),
            unchanged: record.unchanged,
        };
        if !committed {
            record.promised = ballot;
        }
        self.supersede(instance, ballot);
        self.save(host, instance);
        self.touch(host, instance);
        self.send(host, from, &reply);
    }

    // ----- recovery -------------------------------------------------------

    /// Starts recovering `instance` now (normally a timeout does).
    pub fn recover<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        self.start_recovery(host, instance);
        self.execute(host);
    }

    /// Explicit Prepare: takes `instance` over with a higher ballot.
    fn start_recovery<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let previous = self.leads.remove(&instance).map(|l| l.ballot.round);
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if record.is_committed() {
            return;
        }
        let round = record.promised.round.max(previous.unwrap_or(0)) + 1;
        let ballot = Ballot {
            round,
            node: self.id,
        };
        // The vote as it stood before this promise.
        let own = PrepareReply {
            status: record.status,
            command: record.command.clone(),
            attributes: record.attributes.clone(),
            voted: record.vote_ballot(),
            unchanged: record.unchanged,
        };
        record.promised = ballot;
        self.save(host, instance);
        self.touch(host, instance);
        self.counters.recoveries += 1;
        host.log(
            Level::Debug,
            &format!("epaxos: recovering {instance:?} at ballot {ballot:?}"),
        );
        let now = host.now();
        let mut replies = BTreeMap::new();
        replies.insert(self.id, own);
        self.leads.insert(
            instance,
            Lead {
                ballot,
                command: Command::Noop,
                phase: Phase::Prepare { replies },
                sent_at: now,
                started_at: now,
            },
        );
        self.broadcast(host, &Message::Prepare { instance, ballot });
        self.evaluate_prepare(host, instance);
    }

    /// The paper's case analysis over a majority of Prepare replies.
    fn evaluate_prepare<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let n = self.n();
        let Some(lead) = self.leads.get(&instance) else {
            return;
        };
        let Phase::Prepare { replies } = &lead.phase else {
            return;
        };
        if replies.len() < quorum::majority(n) {
            return;
        }
        let ballot = lead.ballot;
        let replies = replies.clone();
        // 1. Committed somewhere: that is the value.
        if let Some(reply) = replies.values().find(|r| r.status >= Status::Committed)
            && let Some(command) = reply.command.clone()
        {
            self.commit(host, instance, command, reply.attributes.clone());
            return;
        }
        // 2. Accepted: the vote with the highest ballot it was cast at.
        if let Some(reply) = replies
            .values()
            .filter(|r| r.status == Status::Accepted)
            .max_by_key(|r| r.voted)
            && let Some(command) = reply.command.clone()
        {
            self.start_accept(host, instance, ballot, command, reply.attributes.clone());
            return;
        }
        let leader_answered = replies
            .get(&instance.space)
            .is_some_and(|r| r.status != Status::None);
        // 3. Possibly chosen on the fast path: enough identical
        //    initial-ballot pre-accepts from replicas other than the leader.
        if !leader_answered {
            let mut groups: BTreeMap<Vec<u8>, (Command, Attributes, BTreeSet<NodeId>)> =
                BTreeMap::new();
            for (node, reply) in &replies {
                if *node == instance.space
                    || reply.status != Status::PreAccepted
                    || !reply.voted.is_initial_for(instance)
                    || !reply.unchanged
                {
                    continue;
                }
                let Some(command) = reply.command.clone() else {
                    continue;
                };
                let key = postcard::to_allocvec(&(&command, &reply.attributes))
                    .expect("attributes always encode");
                groups
                    .entry(key)
                    .or_insert_with(|| (command, reply.attributes.clone(), BTreeSet::new()))
                    .2
                    .insert(*node);
            }
            if let Some((command, attributes, members)) = groups
                .into_values()
                .max_by_key(|(_, _, members)| members.len())
                && members.len() >= quorum::recovery_group(n)
            {
                let mut holders = members.clone();
                for (node, reply) in &replies {
                    if reply.status == Status::PreAccepted
                        && reply.command.as_ref() == Some(&command)
                        && reply.attributes == attributes
                        && *node != instance.space
                    {
                        holders.insert(*node);
                    }
                }
                let group = members.clone();
                let responders = replies.keys().copied().collect();
                self.start_try_pre_accept(
                    host, instance, ballot, command, attributes, holders, group, responders,
                );
                return;
            }
        }
        // 4. Known but not chosen: propose it again from the start.
        if let Some(reply) = replies
            .values()
            .filter(|r| r.status == Status::PreAccepted)
            .max_by_key(|r| r.voted)
            && let Some(command) = reply.command.clone()
        {
            self.restart(host, instance, ballot, command);
            return;
        }
        // 5. Nothing can have been chosen: a no-op.
        self.start_accept(
            host,
            instance,
            ballot,
            Command::Noop,
            Attributes {
                seq: 0,
                deps: Deps::new(),
            },
        );
    }

    /// Phase 1 again at a recovery ballot (never fast: not the initial ballot).
    fn restart<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
    ) {
        let mut attributes = self.index.attributes(&command);
        if attributes.deps.get(&instance.space) == Some(&instance.slot) {
            let own_lower = self.highest_interfering_below(instance, &command);
            attributes.deps.insert(instance.space, own_lower);
        }
        attributes.deps.retain(|_, slot| *slot > 0);
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        record.status = Status::PreAccepted;
        record.unchanged = false;
        record.hold(command.clone());
        record.attributes = attributes.clone();
        record.promised = ballot;
        record.voted = ballot;
        self.index.register(instance, &command, attributes.seq);
        self.save(host, instance);
        self.start_pre_accept(host, instance, ballot, command, attributes);
    }

    #[allow(clippy::too_many_arguments)]
    fn start_try_pre_accept<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
        holders: BTreeSet<NodeId>,
        group: BTreeSet<NodeId>,
        responders: BTreeSet<NodeId>,
    ) {
        self.counters.try_pre_accepts += 1;
        let now = host.now();
        let started_at = self.leads.get(&instance).map_or(now, |l| l.started_at);
        let self_holds = holders.contains(&self.id);
        self.leads.insert(
            instance,
            Lead {
                ballot,
                command: command.clone(),
                phase: Phase::TryPreAccept {
                    attributes: attributes.clone(),
                    holders,
                    responders,
                    group,
                    excluded: BTreeSet::new(),
                },
                sent_at: now,
                started_at,
            },
        );
        if !self_holds {
            let reply = self.try_pre_accept_here(
                host,
                instance,
                ballot,
                command.clone(),
                attributes.clone(),
            );
            match reply {
                Message::TryPreAcceptReply { outcome, .. } => {
                    let me = self.id;
                    self.on_try_reply(host, me, instance, ballot, outcome);
                }
                _ => {
                    self.leads.remove(&instance);
                    return;
                }
            }
        }
        let Some(Lead {
            ballot: current,
            phase: Phase::TryPreAccept { holders, .. },
            ..
        }) = self.leads.get(&instance)
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        if holders.len() >= quorum::majority(self.n()) {
            self.start_accept(host, instance, ballot, command, attributes);
            return;
        }
        let askees: Vec<NodeId> = self.peers().filter(|p| !holders.contains(p)).collect();
        let message = Message::TryPreAccept {
            instance,
            ballot,
            command,
            attributes,
        };
        for peer in askees {
            self.send(host, peer, &message);
        }
    }

    /// A replica's side of TryPreAccept: pre-accept the proposed
    /// attributes unless an interfering instance neither is among them nor
    /// depends on this instance.
    fn try_pre_accept_here<H: Host>(
        &mut self,
        host: &mut H,
        instance: InstanceId,
        ballot: Ballot,
        command: Command,
        attributes: Attributes,
    ) -> Message {
        let reply = |outcome| Message::TryPreAcceptReply {
            instance,
            ballot,
            outcome,
        };
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        if record.is_committed()
            && let Some(committed) = record.command.clone()
        {
            return reply(TryOutcome::Committed {
                command: committed,
                attributes: record.attributes.clone(),
            });
        }
        if ballot < record.promised {
            return Message::Nack {
                instance,
                ballot,
                promised: record.promised,
            };
        }
        if record.status == Status::Accepted {
            // Voted in a later phase: this attempt cannot use this replica.
            return reply(TryOutcome::Conflict {
                with: instance,
                committed: false,
                initial: false,
            });
        }
        let mut conflict: Option<(InstanceId, bool, bool)> = None;
        for (other, other_record) in &self.records {
            if *other == instance || other_record.status < Status::PreAccepted {
                continue;
            }
            let Some(other_command) = &other_record.command else {
                continue;
            };
            if !other_command.interferes(&command)
                || attributes.covers(*other)
                || other_record.attributes.covers(instance)
            {
                continue;
            }
            let committed = other_record.is_committed();
            let initial = other_record.voted.is_initial_for(*other);
            if conflict.is_none_or(|(_, seen, _)| committed && !seen) {
                conflict = Some((*other, committed, initial));
            }
        }
        if let Some((with, committed, initial)) = conflict {
            return reply(TryOutcome::Conflict {
                with,
                committed,
                initial,
            });
        }
        let record = self
            .records
            .entry(instance)
            .or_insert_with(|| Record::empty(instance));
        record.status = Status::PreAccepted;
        record.unchanged = false;
        record.hold(command.clone());
        record.attributes = attributes.clone();
        record.promised = ballot;
        record.voted = ballot;
        self.index.register(instance, &command, attributes.seq);
        self.supersede(instance, ballot);
        self.save(host, instance);
        self.touch(host, instance);
        reply(TryOutcome::Ok)
    }

    fn on_try_reply<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        instance: InstanceId,
        ballot: Ballot,
        outcome: TryOutcome,
    ) {
        let fast = quorum::fast(self.n());
        let majority = quorum::majority(self.n());
        let Some(lead) = self.leads.get_mut(&instance) else {
            return;
        };
        if lead.ballot != ballot {
            return;
        }
        let Phase::TryPreAccept {
            attributes,
            holders,
            responders,
            group,
            excluded,
        } = &mut lead.phase
        else {
            return;
        };
        match outcome {
            TryOutcome::Ok => {
                holders.insert(from);
                if holders.len() >= majority {
                    let (command, attributes) = (lead.command.clone(), attributes.clone());
                    self.start_accept(host, instance, ballot, command, attributes);
                }
            }
            TryOutcome::Committed {
                command,
                attributes,
            } => self.commit(host, instance, command, attributes),
            TryOutcome::Conflict {
                committed: true, ..
            } => {
                // A committed interfering instance that neither depends on
                // this one nor is among its proposed deps: those
                // attributes were never chosen (two committed interfering
                // instances always have one depend on the other).
                let command = lead.command.clone();
                self.restart(host, instance, ballot, command);
            }
            TryOutcome::Conflict {
                with,
                committed: false,
                initial,
            } => {
                // The conflict's leader cannot have pre-accepted these
                // attributes unchanged: had it proposed `with` first, its
                // answer would list `with`; had it pre-accepted this
                // instance first, its proposal of `with` (which the
                // reporter's initial-ballot attributes include) would
                // depend on this one.
                if initial && with.space != instance.space {
                    excluded.insert(with.space);
                }
                // Who could have pre-accepted them unchanged: the leader,
                // the responders that did, and non-responders not excluded.
                let possible = self
                    .voters
                    .iter()
                    .filter(|v| {
                        **v == instance.space
                            || group.contains(v)
                            || (!responders.contains(v) && !excluded.contains(v))
                    })
                    .count();
                if possible < fast {
                    // No fast quorum can have formed: never chosen.
                    let command = lead.command.clone();
                    self.restart(host, instance, ballot, command);
                    return;
                }
                // Cannot tell yet; try again after the conflict settles.
                self.leads.remove(&instance);
                self.touch(host, instance);
                if with != instance && !self.deadlines.contains_key(&with) {
                    let known = self.records.get(&with).is_some_and(Record::is_committed);
                    if !known {
                        let now = host.now();
                        let deadline = self.recovery_deadline(host, now);
                        self.deadlines.insert(with, deadline);
                    }
                }
            }
        }
    }

    // ----- housekeeping -----------------------------------------------------

    fn tick<H: Host>(&mut self, host: &mut H) {
        let now = host.now();
        let retry = self.params.retry_ms * NANOS_PER_MS;
        let fast_timeout = self.params.fast_timeout_ms * NANOS_PER_MS;
        let instances: Vec<InstanceId> = self.leads.keys().copied().collect();
        for instance in instances {
            let Some(lead) = self.leads.get(&instance) else {
                continue;
            };
            if let Phase::PreAccept { .. } = lead.phase
                && now.saturating_sub(lead.started_at) >= fast_timeout
            {
                self.evaluate_pre_accept(host, instance, true);
            }
            let Some(lead) = self.leads.get(&instance) else {
                continue;
            };
            if now.saturating_sub(lead.sent_at) < retry {
                continue;
            }
            let message = self.phase_message(instance, lead);
            let answered: BTreeSet<NodeId> = match &lead.phase {
                Phase::PreAccept { oks, .. } => oks.keys().copied().collect(),
                Phase::Accept { oks } => oks.clone(),
                Phase::Prepare { replies } => replies.keys().copied().collect(),
                Phase::TryPreAccept { holders, .. } => holders.clone(),
            };
            if let Some(lead) = self.leads.get_mut(&instance) {
                lead.sent_at = now;
            }
            if let Some(message) = message {
                for peer in self
                    .peers()
                    .filter(|p| !answered.contains(p))
                    .collect::<Vec<_>>()
                {
                    self.send(host, peer, &message);
                }
            }
        }
        let due: Vec<InstanceId> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(instance, _)| *instance)
            .collect();
        for instance in due {
            self.deadlines.remove(&instance);
            if self
                .records
                .get(&instance)
                .is_some_and(Record::is_committed)
            {
                continue;
            }
            self.start_recovery(host, instance);
        }
    }

    /// The message that (re)starts the lead's current phase.
    fn phase_message(&self, instance: InstanceId, lead: &Lead) -> Option<Message> {
        let record = self.records.get(&instance)?;
        Some(match &lead.phase {
            Phase::PreAccept { proposed, .. } => Message::PreAccept {
                instance,
                ballot: lead.ballot,
                command: lead.command.clone(),
                attributes: proposed.clone(),
            },
            Phase::Accept { .. } => Message::Accept {
                instance,
                ballot: lead.ballot,
                command: lead.command.clone(),
                attributes: record.attributes.clone(),
            },
            Phase::Prepare { .. } => Message::Prepare {
                instance,
                ballot: lead.ballot,
            },
            Phase::TryPreAccept { attributes, .. } => Message::TryPreAccept {
                instance,
                ballot: lead.ballot,
                command: lead.command.clone(),
                attributes: attributes.clone(),
            },
        })
    }

    // ----- execution ----------------------------------------------------------

    fn advance_prefix(&mut self, space: NodeId) {
        let prefix = self.executed_prefix.entry(space).or_insert(0);
        while self
            .records
            .get(&InstanceId {
                space,
                slot: *prefix + 1,
            })
            .is_some_and(|r| r.status == Status::Executed)
        {
            *prefix += 1;
        }
    }

    /// Not yet executed instances `instance` depends on, or the first
    /// dependency that is not committed.
    fn edges(&self, instance: InstanceId) -> Result<Vec<InstanceId>, InstanceId> {
        let Some(record) = self.records.get(&instance) else {
            return Err(instance);
        };
        let Some(command) = &record.command else {
            return Err(instance);
        };
        let mut out = Vec::new();
        if *command == Command::Noop {
            return Ok(out);
        }
        for (space, max) in &record.attributes.deps {
            let from = self.executed_prefix.get(space).copied().unwrap_or(0) + 1;
            for slot in from..=*max {
                let other = InstanceId {
                    space: *space,
                    slot,
                };
                if other == instance {
                    continue;
                }
                match self.records.get(&other) {
                    Some(r) if r.status == Status::Executed => {}
                    Some(r) if r.is_committed() => {
                        if r.command.as_ref().is_some_and(|c| c.interferes(command)) {
                            out.push(other);
                        }
                    }
                    _ => return Err(other),
                }
            }
        }
        Ok(out)
    }

    /// Executes every committed instance whose dependencies allow it.
    fn execute<H: Host>(&mut self, host: &mut H) {
        let mut progress = true;
        while progress {
            progress = false;
            let starts: Vec<InstanceId> = self.pending.iter().copied().collect();
            for start in starts {
                if !self.pending.contains(&start) {
                    continue;
                }
                if let Some(&missing) = self.blocked.get(&start)
                    && !self.records.get(&missing).is_some_and(Record::is_committed)
                {
                    // Still waiting: whoever drove the dependency may have
                    // given up (superseded, nacked) after its recovery
                    // deadline was spent, so keep one armed.
                    self.arm_recovery(host, missing);
                    continue;
                }
                match components(start, |v| self.edges(v)) {
                    Walk::Blocked(missing) => {
                        self.counters.execution_blocked += 1;
                        self.blocked.insert(start, missing);
                        self.arm_space_recovery(host, missing);
                    }
                    Walk::Components(list) => {
                        let walked: usize = list.iter().map(Vec::len).sum();
                        self.counters.graph_last_walk = walked as u64;
                        for mut component in list {
                            self.counters.graph_largest_component = self
                                .counters
                                .graph_largest_component
                                .max(component.len() as u64);
                            component.sort_by_key(|id| {
                                let seq = self.records.get(id).map_or(0, |r| r.attributes.seq);
                                (seq, id.space, id.slot)
                            });
                            for instance in component {
                                self.execute_one(host, instance);
                            }
                        }
                        progress = true;
                    }
                }
            }
        }
    }

    fn execute_one<H: Host>(&mut self, host: &mut H, instance: InstanceId) {
        let Some(record) = self.records.get_mut(&instance) else {
            return;
        };
        if record.status != Status::Committed {
            return;
        }
        let command = record.command.clone().unwrap_or(Command::Noop);
        let sealed = self.sealed_at.is_some();
        if !sealed && command != Command::Noop {
            self.position += 1;
        }
        record.status = Status::Executed;
        record.executed_at = self.position;
        self.pending.remove(&instance);
        self.blocked.remove(&instance);
        self.counters.instances_executed += 1;
        if let Some(ids) = self.proposed_writes.remove(&instance)
            && command == Command::Noop
        {
            // Nothing was applied for them: a refusal is truthful.
            host.reject(
                &ids,
                &Rejection::Unavailable(
                    "the write's instance was recovered as a no-op; retry".into(),
                ),
            );
        }
        if command != Command::Barrier
            && let Some(ids) = self.waiting_reads.remove(&instance)
        {
            // A recovery replaced this replica's barrier with a no-op:
            // the reads are not ordered yet, so order them again.
            if self.refusing() {
                host.reject(&ids, &Rejection::Sealed);
            } else {
                let barrier = self.propose(host, Command::Barrier);
                self.waiting_reads.insert(barrier, ids);
            }
        }
        match command {
            Command::Noop => {}
            Command::Writes(writes) => {
                let ids: Vec<RequestId> = writes.iter().map(|w| w.id).collect();
                if sealed {
                    host.reject(&ids, &Rejection::Sealed);
                } else {
                    let mut applies = Applies::default();
                    for write in &writes {
                        applies.push(write.id, &write.payload);
                    }
                    host.apply(&applies, self.position);
                }
            }
            Command::Barrier => {
                if let Some(ids) = self.waiting_reads.remove(&instance) {
                    if sealed {
                        host.reject(&ids, &Rejection::Sealed);
                    } else {
                        host.complete_reads(&ids);
                    }
                }
            }
            Command::Seal => {
                if !sealed {
                    self.sealed_at = Some(self.position);
                }
            }
        }
        self.save(host, instance);
        self.advance_prefix(instance.space);
    }
}
