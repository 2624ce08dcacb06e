//! A deterministic in-memory cluster: every node is a [`Raft`] over a
//! [`SimHost`] (a `MemoryHost` that also models durability and keeps the
//! state machine as of its last snapshot), and a network queue that can
//! lose, duplicate, delay (hence reorder) and cut messages. Time advances in
//! whole milliseconds on every host at once.
//!
//! Durability follows the host's output commit. Each node syncs its storage
//! every few milliseconds (its own period, so leaders and followers sync at
//! different times). Until then its log and kv writes are not durable and
//! its normal sends, snapshot shipments are held; `send-eager` messages leave
//! at once. A node restart loses unsynced writes and held messages. Outside
//! `tick` (scripted scenarios), every callback syncs at once. A shipment's
//! image is the node's snapshot when `send-snapshot` is called, however long
//! it is held (the driver pins it the same way). A snapshot
//! offer the plugin accepts follows the driver's order
//! (`ReplicaHost::offer_snapshot`): the accepting callback's writes become
//! durable, then the image becomes the node's snapshot, then its state.
//!
//! Safety checkers:
//! - election safety, after every callback: at most one leader per term;
//! - committed entries never change, at every sync (when a node's commit
//!   index rests only on durable facts): the first time any node reports an
//!   index committed, its bytes are recorded; every later report must agree;
//! - on demand: applied sequences are prefixes of each other, and logs
//!   satisfy the log matching property.

use std::collections::{BTreeMap, BTreeSet};

use synod_guest_sdk::testing::{MemoryHost, commands};
use synod_guest_sdk::*;

use crate::message::Message;
use crate::raft::{Raft, RaftRole};

pub const NANOS_PER_MS: u64 = 1_000_000;

/// Applied commands, `(request id, payload)`, in order.
pub type AppliedCommands = Vec<(RequestId, Vec<u8>)>;
/// A state machine image: its position and applied commands.
pub type StateImage = (u64, AppliedCommands);

/// A `MemoryHost` that models durability and remembers the state machine
/// as of its last snapshot, which is what a restarted node comes back with
/// and what snapshot shipping installs elsewhere.
pub struct SimHost {
    pub mem: MemoryHost,
    /// `(position, applied commands)` of the last snapshot.
    pub snapshot_image: Option<StateImage>,
    /// `(read id, applied commands when it was answered)`.
    pub read_results: Vec<(RequestId, usize)>,
    /// Applied commands as of the last sync (what clients may have seen).
    pub synced_applied: usize,
    /// Storage changes since the last sync, oldest first.
    unsynced: Vec<Undo>,
    /// Normal sends waiting for the next sync.
    held_messages: Vec<(NodeId, Vec<u8>)>,
    /// Snapshot shipments waiting for the next sync, with the image pinned
    /// when `send-snapshot` was called (as the driver pins it).
    held_snapshots: Vec<(NodeId, Vec<u8>, Option<StateImage>)>,
    /// A `snapshot-async` save in flight: its image and the timer to fire
    /// once saved (`None` after the instance that asked is gone). It is
    /// written at the node's next sync, after the writes before it.
    saving: Option<(StateImage, Option<TimerId>)>,
}

/// How to revert one storage change.
enum Undo {
    /// Entries at or after `from` before the change.
    Log {
        from: u64,
        previous: BTreeMap<u64, Vec<u8>>,
    },
    Compact {
        previous_first: u64,
        removed: BTreeMap<u64, Vec<u8>>,
    },
    Kv {
        key: Vec<u8>,
        previous: Option<Vec<u8>>,
    },
}

impl SimHost {
    pub fn new(id: NodeId) -> SimHost {
        SimHost {
            mem: MemoryHost::new(id),
            snapshot_image: None,
            read_results: Vec::new(),
            synced_applied: 0,
            unsynced: Vec::new(),
            held_messages: Vec::new(),
            held_snapshots: Vec::new(),
            saving: None,
        }
    }

    /// Writes the save in flight (its writes are durable) and arms its
    /// notification, as the driver does after a save off the pipeline.
    fn finish_save(&mut self) {
        if let Some((image, notify)) = self.saving.take() {
            self.snapshot_image = Some(image);
            self.mem.finish_snapshot_save();
            if let Some(id) = notify {
                self.mem.timers.insert(id, self.mem.now_nanos);
            }
        }
    }

    /// Makes every storage change durable.
    fn sync_storage(&mut self) {
        self.unsynced.clear();
        self.synced_applied = self.mem.applied.len();
    }

    /// A node restart: unsynced storage changes and held outputs are lost.
    fn lose_unsynced(&mut self) {
        while let Some(undo) = self.unsynced.pop() {
            match undo {
                Undo::Log { from, previous } => {
                    self.mem.log.split_off(&from);
                    self.mem.log.extend(previous);
                }
                Undo::Compact {
                    previous_first,
                    removed,
                } => {
                    self.mem.log.extend(removed);
                    self.mem.log_first = previous_first;
                }
                Undo::Kv { key, previous } => match previous {
                    Some(value) => {
                        self.mem.kv.insert(key, value);
                    }
                    None => {
                        self.mem.kv.remove(&key);
                    }
                },
            }
        }
        self.held_messages.clear();
        self.held_snapshots.clear();
    }

    fn log_from(&self, from: u64) -> BTreeMap<u64, Vec<u8>> {
        self.mem
            .log
            .range(from..)
            .map(|(index, entry)| (*index, entry.clone()))
            .collect()
    }
}

impl Host for SimHost {
    fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError> {
        let previous = self.log_from(first);
        self.mem.log_append(first, entries)?;
        self.unsynced.push(Undo::Log {
            from: first,
            previous,
        });
        Ok(())
    }
    fn log_read(&mut self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError> {
        self.mem.log_read(first, last, max_bytes)
    }
    fn log_bounds(&mut self) -> LogBounds {
        self.mem.log_bounds()
    }
    fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        let previous = self.log_from(from);
        self.mem.log_truncate_suffix(from)?;
        self.unsynced.push(Undo::Log { from, previous });
        Ok(())
    }
    fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError> {
        let previous_first = self.mem.log_first;
        let removed = self
            .mem
            .log
            .range(..=through)
            .map(|(index, entry)| (*index, entry.clone()))
            .collect();
        self.mem.log_compact_prefix(through)?;
        self.unsynced.push(Undo::Compact {
            previous_first,
            removed,
        });
        Ok(())
    }
    fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.mem.kv_get(key)
    }
    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let previous = self.mem.kv.get(key).cloned();
        self.mem.kv_put(key, value)?;
        self.unsynced.push(Undo::Kv {
            key: key.to_vec(),
            previous,
        });
        Ok(())
    }
    fn kv_delete(&mut self, key: &[u8]) {
        let previous = self.mem.kv.get(key).cloned();
        self.mem.kv_delete(key);
        self.unsynced.push(Undo::Kv {
            key: key.to_vec(),
            previous,
        });
    }
    fn send(&mut self, to: NodeId, messages: &Batch) {
        for message in messages.iter() {
            self.held_messages.push((to, message.to_vec()));
        }
    }
    fn send_eager(&mut self, to: NodeId, messages: &Batch) {
        self.mem.send(to, messages)
    }
    fn now(&mut self) -> u64 {
        self.mem.now()
    }
    fn set_timer(&mut self, id: TimerId, after_nanos: u64) {
        self.mem.set_timer(id, after_nanos)
    }
    fn cancel_timer(&mut self, id: TimerId) {
        self.mem.cancel_timer(id)
    }
    fn random(&mut self) -> u64 {
        self.mem.random()
    }
    fn apply(&mut self, commands: &Applies, position: u64) {
        self.mem.apply(commands, position)
    }
    fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64) {
        self.mem.apply_stamped(commands, stamps, position)
    }
    fn compact_tombstones(&mut self, below: u64) {
        self.mem.compact_tombstones(below)
    }
    fn query(&mut self, query: &[u8]) -> Vec<u8> {
        self.mem.query(query)
    }
    fn snapshot(&mut self) -> Result<u64, StorageError> {
        // The host saves a snapshot once the writes before it are durable,
        // after the save in flight (the driver joins it).
        self.sync_storage();
        self.finish_save();
        let position = self.mem.snapshot()?;
        self.snapshot_image = Some((position, self.mem.applied.clone()));
        Ok(position)
    }
    fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError> {
        let position = self.mem.snapshot_async(notify)?;
        self.saving = Some(((position, self.mem.applied.clone()), Some(notify)));
        Ok(position)
    }
    fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]) {
        if self.saving.is_some() {
            // The driver ships nothing while a save is in flight.
            return;
        }
        let image = self.snapshot_image.clone();
        self.held_snapshots.push((to, metadata.to_vec(), image));
    }
    fn digest(&mut self) -> Vec<u8> {
        self.mem.digest()
    }
    fn complete_reads(&mut self, ids: &[RequestId]) {
        let applied = self.mem.applied.len();
        self.read_results
            .extend(ids.iter().map(|&id| (id, applied)));
        self.mem.complete_reads(ids)
    }
    fn reject(&mut self, ids: &[RequestId], reason: &Rejection) {
        self.mem.reject(ids, reason)
    }
    fn log(&mut self, level: Level, message: &str) {
        self.mem.log(level, message)
    }
}

pub struct Node {
    pub raft: Option<Raft>,
    pub host: SimHost,
    /// Highest index this node's commits were checked through.
    checked_commit: u64,
    /// This node syncs its storage every this many milliseconds.
    sync_every_ms: u64,
}

#[derive(Clone)]
enum Payload {
    Message(Vec<u8>),
    Snapshot {
        metadata: Vec<u8>,
        image: StateImage,
    },
}

struct Envelope {
    deliver_at_ms: u64,
    from: NodeId,
    to: NodeId,
    payload: Payload,
}

/// What a message filter decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Drop,
    Hold,
}

/// Network fault rates, in parts per thousand, and the delay range.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_ms_max: u64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss_per_mille: 0,
        duplicate_per_mille: 0,
        delay_ms_max: 1,
    };
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub initial: Membership,
    params: Vec<(String, String)>,
    pub now_ms: u64,
    queue: Vec<Envelope>,
    rng: u64,
    pub faults: Faults,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    next_request_id: RequestId,
    /// Term → the node that led it.
    pub leaders_by_term: BTreeMap<u64, NodeId>,
    /// Index → entry bytes, the first time any node reported it committed.
    pub committed: BTreeMap<u64, Vec<u8>>,
    /// Inside `tick`: callbacks wait for their node's next sync.
    in_tick: bool,
    /// Outside `tick`, whether every callback syncs at once (otherwise the
    /// test calls [`Cluster::sync`]).
    pub auto_sync: bool,
    /// While set, `snapshot-async` saves stay in flight (a slow disk).
    pub hold_saves: bool,
}

pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Fast timings for tests: 100 ms election timeout, 10 ms heartbeats.
pub fn fast_params(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = params(&[("election-timeout-ms", "100"), ("heartbeat-ms", "10")]);
    all.extend(params(extra));
    all
}

impl Cluster {
    /// Nodes `1..=node_count`, of which `1..=voter_count` are the initial
    /// voters; the rest exist but are outside the configuration.
    pub fn new(
        voter_count: u64,
        node_count: u64,
        params: Vec<(String, String)>,
        seed: u64,
    ) -> Cluster {
        let initial = Membership {
            voters: (1..=voter_count).collect(),
            learners: vec![],
        };
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            initial,
            params,
            now_ms: 0,
            queue: Vec::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            faults: Faults::NONE,
            cut: BTreeSet::new(),
            next_request_id: 1,
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
            in_tick: false,
            auto_sync: true,
            hold_saves: false,
        };
        for id in 1..=node_count {
            let mut host = SimHost::new(id);
            // Distinct random streams per seed, so elections differ.
            for _ in 0..(seed.wrapping_mul(7919).wrapping_add(id * 104_729) % 4096) {
                host.random();
            }
            let raft = Raft::new(&mut host, cluster.init_config(id, false, 0));
            let sync_every_ms = 1 + cluster.random() % 8;
            cluster.nodes.insert(
                id,
                Node {
                    raft: Some(raft),
                    host,
                    checked_commit: 0,
                    sync_every_ms,
                },
            );
            cluster.after_callback(id);
        }
        cluster
    }

    /// Adds a parameter every later start gets (e.g. a host parameter).
    pub fn add_param(&mut self, name: &str, value: &str) {
        self.params.push((name.to_string(), value.to_string()));
    }

    fn init_config(&self, id: NodeId, recovering: bool, applied_position: u64) -> InitConfig {
        InitConfig {
            self_id: id,
            membership: self.initial.clone(),
            params: self.params.clone(),
            recovering,
            applied_position,
        }
    }

    pub fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.random() % 1000 < per_mille
    }

    pub fn raft(&self, id: NodeId) -> &Raft {
        self.nodes[&id].raft.as_ref().expect("node is up")
    }

    pub fn host(&self, id: NodeId) -> &MemoryHost {
        &self.nodes[&id].host.mem
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].raft.is_some()
    }

    /// Runs `f` on node `id` as one host callback, then collects its effects.
    pub fn call<R>(&mut self, id: NodeId, f: impl FnOnce(&mut Raft, &mut SimHost) -> R) -> R {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let raft = node.raft.as_mut().expect("node is up");
        let result = f(raft, &mut node.host);
        self.after_callback(id);
        result
    }

    /// Puts the node's eager sends on the network, checks election safety,
    /// and outside `tick` syncs at once.
    fn after_callback(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let eager = std::mem::take(&mut node.host.mem.sent);
        for (to, bytes) in eager {
            self.enqueue(id, to, Payload::Message(bytes));
        }
        self.check_election_safety(id);
        if !self.in_tick && self.auto_sync {
            self.sync(id);
        }
    }

    /// Node `id`'s storage becomes durable: its held outputs leave and its
    /// commit index is checked.
    pub fn sync(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.host.sync_storage();
        if !self.hold_saves {
            node.host.finish_save();
        }
        let messages = std::mem::take(&mut node.host.held_messages);
        let shipped = std::mem::take(&mut node.host.held_snapshots);
        for (to, bytes) in messages {
            self.enqueue(id, to, Payload::Message(bytes));
        }
        for (to, metadata, image) in shipped {
            if let Some(image) = image {
                self.enqueue(id, to, Payload::Snapshot { metadata, image });
            }
        }
        self.check_commits(id);
    }

    fn enqueue(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        if !self.nodes.contains_key(&to) || from == to {
            return;
        }
        if self.chance(self.faults.loss_per_mille) {
            return;
        }
        let copies = if self.chance(self.faults.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.random() % self.faults.delay_ms_max.max(1);
            let payload = payload.clone();
            self.queue.push(Envelope {
                deliver_at_ms: self.now_ms + delay,
                from,
                to,
                payload,
            });
        }
    }

    /// Election safety (§5.2): one leader per term.
    fn check_election_safety(&mut self, id: NodeId) {
        let Some(raft) = self.nodes[&id].raft.as_ref() else {
            return;
        };
        if raft.role == RaftRole::Leader {
            let leader = *self.leaders_by_term.entry(raft.term).or_insert(id);
            assert_eq!(
                leader, id,
                "two leaders in term {}: {leader} and {id}",
                raft.term
            );
        }
    }

    /// Commit stability for node `id` (at a sync).
    fn check_commits(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some(raft) = node.raft.as_ref() else {
            return;
        };
        assert!(raft.applied <= raft.commit);
        assert!(raft.commit <= raft.log.last_index());
        let commit = raft.commit;
        let first = node.checked_commit.max(node.host.mem.log_first - 1) + 1;
        for index in first..=commit {
            let Some(bytes) = node.host.mem.log.get(&index) else {
                continue;
            };
            match self.committed.get(&index) {
                Some(known) => assert_eq!(
                    known, bytes,
                    "node {id} committed different bytes at {index}"
                ),
                None => {
                    self.committed.insert(index, bytes.clone());
                }
            }
        }
        node.checked_commit = node.checked_commit.max(commit);
    }

    /// Advances time by `ms` milliseconds, one at a time: fires due timers,
    /// delivers due messages (all of a destination's in one callback), then
    /// syncs the nodes whose period is up.
    pub fn tick(&mut self, ms: u64) {
        for _ in 0..ms {
            self.in_tick = true;
            self.now_ms += 1;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &id in &ids {
                let node = self.nodes.get_mut(&id).expect("node exists");
                let due = node.host.mem.advance(NANOS_PER_MS);
                if node.raft.is_some() && !due.is_empty() {
                    self.call(id, |raft, host| raft.on_timers(host, due));
                }
            }
            self.deliver_due();
            for &id in &ids {
                if self.now_ms.is_multiple_of(self.nodes[&id].sync_every_ms) {
                    self.sync(id);
                }
            }
            self.in_tick = false;
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now_ms;
        let (due, later): (Vec<Envelope>, Vec<Envelope>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|envelope| envelope.deliver_at_ms <= now);
        self.queue = later;
        self.deliver(due);
    }

    fn deliver(&mut self, envelopes: Vec<Envelope>) {
        let mut messages: BTreeMap<NodeId, Messages> = BTreeMap::new();
        let mut snapshots = Vec::new();
        for envelope in envelopes {
            if self.cut.contains(&(envelope.from, envelope.to)) || !self.is_up(envelope.to) {
                continue;
            }
            match envelope.payload {
                Payload::Message(bytes) => {
                    let batch = messages.entry(envelope.to).or_default();
                    batch.senders.push(envelope.from);
                    batch.payloads.push(&bytes);
                }
                Payload::Snapshot { metadata, image } => {
                    snapshots.push((envelope.from, envelope.to, metadata, image))
                }
            }
        }
        for (to, batch) in messages {
            if self.is_up(to) {
                self.call(to, |raft, host| raft.on_messages(host, batch));
            }
        }
        for (from, to, metadata, image) in snapshots {
            self.offer_snapshot(from, to, metadata, image);
        }
    }

    fn offer_snapshot(&mut self, from: NodeId, to: NodeId, metadata: Vec<u8>, image: StateImage) {
        if !self.is_up(to) {
            return;
        }
        let offer = SnapshotOffer {
            sender: from,
            position: image.0,
            metadata,
        };
        let accepted = self.call(to, |raft, host| raft.on_snapshot(host, offer));
        if accepted {
            // The driver's order (`ReplicaHost::offer_snapshot`): (a) the
            // accepting callback's storage effects become durable, (b) the
            // image is saved as the node's snapshot, (c) the state machine
            // is replaced, all before the next event.
            self.sync(to);
            let host = &mut self.nodes.get_mut(&to).expect("node").host;
            host.finish_save();
            host.snapshot_image = Some(image.clone());
            host.mem.applied_position = image.0;
            host.mem.applied = image.1;
        }
    }

    /// Delivers queued messages regardless of their delay, filtered by
    /// `filter`, until nothing deliverable remains (no time passes, no
    /// timers fire). Held messages stay queued.
    pub fn deliver_where(&mut self, mut filter: impl FnMut(NodeId, NodeId, &Message) -> Verdict) {
        for _ in 0..10_000 {
            let mut deliverable = Vec::new();
            let mut held = Vec::new();
            for envelope in std::mem::take(&mut self.queue) {
                let verdict = match &envelope.payload {
                    Payload::Message(bytes) => {
                        let message = Message::decode(bytes).expect("valid message");
                        filter(envelope.from, envelope.to, &message)
                    }
                    Payload::Snapshot { .. } => Verdict::Deliver,
                };
                match verdict {
                    Verdict::Deliver => deliverable.push(envelope),
                    Verdict::Drop => {}
                    Verdict::Hold => held.push(envelope),
                }
            }
            self.queue = held;
            if deliverable.is_empty() {
                return;
            }
            self.deliver(deliverable);
        }
        panic!("messages never settle");
    }

    /// Delivers everything queued, without time passing.
    pub fn settle(&mut self) {
        self.deliver_where(|_, _, _| Verdict::Deliver);
    }

    pub fn drop_queued(&mut self) {
        self.queue.clear();
    }

    /// Cuts every link between `group` and the other nodes, both ways.
    pub fn isolate(&mut self, group: &[NodeId]) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &inside in group {
            for &outside in &ids {
                if !group.contains(&outside) {
                    self.cut.insert((inside, outside));
                    self.cut.insert((outside, inside));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops node `id`: the Raft value and its timers go. With `keep_state`
    /// it is a plugin rebuild: storage and the live state machine survive
    /// and held outputs still leave at the next sync. Otherwise it is a node
    /// restart: unsynced writes and held outputs are lost and the state
    /// machine comes back from the last snapshot.
    pub fn crash(&mut self, id: NodeId, keep_state: bool) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.raft = None;
        node.host.mem.timers.clear();
        // A save in flight completes without telling the new instance; a
        // node restart loses it (it had not reached the disk).
        if let Some((_, notify)) = node.host.saving.as_mut() {
            *notify = None;
        }
        if !keep_state {
            node.host.saving = None;
            node.host.mem.snapshot_requested = None;
            node.host.lose_unsynced();
            let (position, applied) = node.host.snapshot_image.clone().unwrap_or_default();
            node.host.mem.applied_position = position;
            node.host.mem.applied = applied;
        }
    }

    /// Starts a crashed node over its storage with `recovering = true`.
    pub fn restart(&mut self, id: NodeId) {
        let applied_position = self.nodes[&id].host.mem.applied_position;
        let config = self.init_config(id, true, applied_position);
        let node = self.nodes.get_mut(&id).expect("node exists");
        assert!(node.raft.is_none(), "node {id} is running");
        let raft = Raft::new(&mut node.host, config);
        node.raft = Some(raft);
        self.after_callback(id);
    }

    /// A protocol swap on node `id`: a fresh Raft over empty storage whose
    /// state machine (and snapshot, the swap's boundary image) is `image`,
    /// started with `init(recovering = false, applied-position = image.0)`.
    pub fn swap_start(&mut self, id: NodeId, image: StateImage) {
        let config = self.init_config(id, false, image.0);
        let node = self.nodes.get_mut(&id).expect("node exists");
        let mut host = SimHost::new(id);
        host.mem.applied_position = image.0;
        host.mem.applied = image.1.clone();
        host.synced_applied = image.1.len();
        host.snapshot_image = Some(image);
        node.raft = Some(Raft::new(&mut host, config));
        node.host = host;
        node.checked_commit = 0;
        self.after_callback(id);
    }

    /// The up node that leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, node)| node.raft.as_ref().map(|raft| (id, raft)))
            .filter(|(_, raft)| raft.role == RaftRole::Leader)
            .max_by_key(|(_, raft)| raft.term)
            .map(|(id, _)| id)
    }

    /// Ticks until some node leads (panics after `max_ms`).
    pub fn wait_for_leader(&mut self, max_ms: u64) -> NodeId {
        for _ in 0..max_ms {
            if let Some(leader) = self.leader()
                && self.raft(leader).lead.term_start_index <= self.raft(leader).commit
            {
                return leader;
            }
            self.tick(1);
        }
        panic!("no leader after {max_ms} ms");
    }

    /// Ticks until `condition` holds (panics after `max_ms`).
    pub fn wait_until(
        &mut self,
        max_ms: u64,
        what: &str,
        mut condition: impl FnMut(&Cluster) -> bool,
    ) {
        for _ in 0..max_ms {
            if condition(self) {
                return;
            }
            self.tick(1);
        }
        assert!(condition(self), "{what}: not reached after {max_ms} ms");
    }

    pub fn next_id(&mut self) -> RequestId {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Submits a write to node `at`; returns its request id.
    pub fn propose(&mut self, at: NodeId, payload: &[u8]) -> RequestId {
        let id = self.next_id();
        self.call(at, |raft, host| {
            raft.on_commands(host, commands(&[(id, payload)]))
        });
        id
    }

    /// Submits a read at `level` to node `at`; returns its request id.
    pub fn read(&mut self, at: NodeId, level: ReadLevel) -> RequestId {
        let id = self.next_id();
        self.call(at, |raft, host| {
            raft.on_reads(
                host,
                Reads {
                    ids: vec![id],
                    levels: vec![level],
                },
            )
        });
        id
    }

    pub fn is_applied(&self, at: NodeId, id: RequestId) -> bool {
        self.host(at)
            .applied
            .iter()
            .any(|(applied, _)| *applied == id)
    }

    pub fn read_completed(&self, at: NodeId, id: RequestId) -> bool {
        self.host(at).completed_reads.contains(&id)
    }

    pub fn rejection(&self, at: NodeId, id: RequestId) -> Option<Rejection> {
        self.host(at)
            .rejected
            .iter()
            .find(|(rejected, _)| *rejected == id)
            .map(|(_, why)| why.clone())
    }

    /// Every pair of nodes' applied commands: one is a prefix of the other.
    pub fn check_applied_prefixes(&self) {
        let sequences: Vec<(NodeId, &AppliedCommands)> = self
            .nodes
            .iter()
            .map(|(&id, node)| (id, &node.host.mem.applied))
            .collect();
        for (a, left) in &sequences {
            for (b, right) in &sequences {
                let shared = left.len().min(right.len());
                assert_eq!(
                    left[..shared],
                    right[..shared],
                    "applied sequences of {a} and {b} diverge"
                );
            }
        }
    }

    /// Log matching (§5.3): if two logs hold an entry with the same index
    /// and term, they are identical up to it.
    pub fn check_log_matching(&self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                let left = &self.host(a).log;
                let right = &self.host(b).log;
                let highest_same_term = left
                    .iter()
                    .rev()
                    .find(|(index, bytes)| {
                        right.get(index).is_some_and(|other| {
                            crate::entry::term_of(other) == crate::entry::term_of(bytes)
                        })
                    })
                    .map(|(index, _)| *index);
                if let Some(highest) = highest_same_term {
                    for (index, bytes) in left.range(..=highest) {
                        if let Some(other) = right.get(index) {
                            assert_eq!(
                                bytes, other,
                                "logs of {a} and {b} differ at {index} below {highest}"
                            );
                        }
                    }
                }
            }
        }
    }
}
