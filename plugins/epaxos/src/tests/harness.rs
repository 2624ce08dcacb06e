//! A scripted in-memory cluster of [`Epaxos`] replicas over `MemoryHost`s.
//!
//! Every callback's storage writes are durable at once (so a message sent
//! is always backed by durable state); messages wait in one queue that a
//! test delivers, drops, duplicates or reorders. A crash discards the
//! replica and the messages addressed to it; a restart rebuilds it from its
//! kv with `init(recovering = true)`, optionally with the state machine
//! rolled back to empty (as after a restart without a snapshot).

use std::collections::{BTreeMap, BTreeSet};

use synod_guest_sdk::testing::MemoryHost;
use synod_guest_sdk::*;

use crate::epaxos::Epaxos;
use crate::message::Message;
use crate::types::{Command, InstanceId, Record, Status};

pub const MS: u64 = 1_000_000;

pub struct Node {
    pub host: MemoryHost,
    pub replica: Option<Epaxos>,
}

/// A message in flight.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub bytes: Vec<u8>,
}

impl Envelope {
    pub fn message(&self) -> Message {
        Message::decode(&self.bytes).expect("the replicas send valid messages")
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    /// Node each write was submitted to.
    pub origin: BTreeMap<RequestId, NodeId>,
    /// Writes applied at the node they were submitted to (acknowledged).
    pub acknowledged: BTreeSet<RequestId>,
    /// Linearizable reads in flight: the writes acknowledged when each was
    /// issued, which its answer must reflect.
    pub reads_owed: BTreeMap<RequestId, BTreeSet<RequestId>>,
    /// Reads answered without reflecting an acknowledged write.
    pub stale_reads: Vec<String>,
    pub queue: Vec<Envelope>,
    pub voters: Vec<NodeId>,
    pub params: Vec<(String, String)>,
}

/// The conflict key a test payload names (`"<key>:<id>"`).
pub fn key_of(payload: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(payload);
    text.split(':')
        .next()
        .and_then(|k| k.parse().ok())
        .expect("test payloads are <key>:<id>")
}

impl Cluster {
    pub fn new(n: u64) -> Cluster {
        Cluster::with_params(n, &[])
    }

    pub fn with_params(n: u64, params: &[(&str, &str)]) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).collect();
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            origin: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            reads_owed: BTreeMap::new(),
            stale_reads: Vec::new(),
            queue: Vec::new(),
            voters: voters.clone(),
            params,
        };
        for id in voters {
            let mut host = MemoryHost::new(id);
            let replica = Epaxos::init(&mut host, cluster.config(id, false, 0));
            cluster.nodes.insert(
                id,
                Node {
                    host,
                    replica: Some(replica),
                },
            );
            cluster.collect(id);
        }
        cluster
    }

    fn config(&self, id: NodeId, recovering: bool, applied: u64) -> InitConfig {
        InitConfig {
            self_id: id,
            membership: Membership {
                voters: self.voters.clone(),
                learners: vec![],
            },
            params: self.params.clone(),
            recovering,
            applied_position: applied,
        }
    }

    /// Moves what `id` sent into the network queue.
    fn collect(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            for (to, bytes) in node.host.sent.drain(..) {
                self.queue.push(Envelope {
                    from: id,
                    to,
                    bytes,
                });
            }
        }
    }

    pub fn replica(&self, id: NodeId) -> &Epaxos {
        self.nodes[&id].replica.as_ref().expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].replica.is_some()
    }

    /// Runs `f` on node `id`'s replica (if up) and collects its sends.
    pub fn on<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Epaxos, &mut MemoryHost) -> R,
    ) -> Option<R> {
        let node = self.nodes.get_mut(&id)?;
        let replica = node.replica.as_mut()?;
        let result = f(replica, &mut node.host);
        self.collect(id);
        self.observe(id);
        Some(result)
    }

    /// Records acknowledgements and checks answered reads at node `id`.
    fn observe(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        for (request, _) in &node.host.applied {
            if self.origin.get(request) == Some(&id) {
                self.acknowledged.insert(*request);
            }
        }
        let applied: BTreeSet<RequestId> = node.host.applied_ids().into_iter().collect();
        for read in &node.host.completed_reads {
            if let Some(owed) = self.reads_owed.remove(read) {
                let missing: Vec<&RequestId> = owed.difference(&applied).collect();
                if !missing.is_empty() {
                    self.stale_reads.push(format!(
                        "read {read} at node {id} missed acknowledged writes {missing:?}"
                    ));
                }
            }
        }
    }

    /// A client write of `key` with request `id` at node `at`.
    pub fn write(&mut self, at: NodeId, id: RequestId, key: u64) {
        let mut commands = Commands::default();
        commands.ids.push(id);
        commands.payloads.push(format!("{key}:{id}").as_bytes());
        commands.keys.push(key);
        commands.key_ends.push(1);
        self.origin.insert(id, at);
        self.on(at, |r, h| r.on_commands(h, commands));
    }

    /// A linearizable read at node `at`.
    pub fn read(&mut self, at: NodeId, id: RequestId) {
        let reads = Reads {
            ids: vec![id],
            levels: vec![ReadLevel::Linearizable],
        };
        self.reads_owed.insert(id, self.acknowledged.clone());
        self.on(at, |r, h| r.on_reads(h, reads));
    }

    /// Delivers one queued message (by queue index).
    pub fn deliver_at(&mut self, index: usize) {
        let envelope = self.queue.remove(index);
        if std::env::var_os("EPAXOS_TRACE").is_some() {
            eprintln!(
                "{} -> {}: {:?}",
                envelope.from,
                envelope.to,
                envelope.message()
            );
        }
        let messages = Messages {
            senders: vec![envelope.from],
            payloads: Batch::from_items([envelope.bytes]),
        };
        self.on(envelope.to, |r, h| r.on_messages(h, messages));
    }

    /// Delivers queued messages matching `pick` (and whatever they cause
    /// that also matches) until none is left; others stay queued.
    pub fn deliver_where(&mut self, mut pick: impl FnMut(&Envelope) -> bool) {
        while let Some(index) = self.queue.iter().position(&mut pick) {
            self.deliver_at(index);
        }
    }

    /// Delivers everything until the network is quiet.
    pub fn deliver_all(&mut self) {
        self.deliver_where(|_| true);
    }

    /// Drops queued messages matching `pick`.
    pub fn drop_where(&mut self, pick: impl Fn(&Envelope) -> bool) {
        self.queue.retain(|e| !pick(e));
    }

    /// Advances every node's clock by `ms`, firing due timers.
    pub fn advance(&mut self, ms: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let due = self.nodes.get_mut(&id).map(|n| n.host.advance(ms * MS));
            if let Some(due) = due
                && !due.is_empty()
            {
                self.on(id, |r, h| r.on_timers(h, due));
            }
        }
    }

    /// Alternates delivery and time until `ms` have passed.
    pub fn run(&mut self, ms: u64) {
        let mut elapsed = 0;
        while elapsed < ms {
            self.deliver_all();
            self.advance(10);
            elapsed += 10;
        }
        self.deliver_all();
    }

    /// Crashes `id`: the replica and messages addressed to it are lost.
    pub fn crash(&mut self, id: NodeId) {
        if std::env::var_os("EPAXOS_TRACE").is_some() {
            eprintln!("crash {id}");
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.replica = None;
            node.host.timers.clear();
            node.host.sent.clear();
        }
        self.queue.retain(|e| e.to != id);
    }

    /// Restarts `id` from its kv. With `lose_state`, the state machine
    /// comes back empty (no snapshot) and must be rebuilt by re-execution.
    pub fn restart(&mut self, id: NodeId, lose_state: bool) {
        if std::env::var_os("EPAXOS_TRACE").is_some() {
            eprintln!("restart {id} lose_state={lose_state}");
        }
        let applied = {
            let node = self.nodes.get_mut(&id).expect("known node");
            if lose_state {
                node.host.applied.clear();
                node.host.applied_position = 0;
            }
            node.host.applied_position
        };
        let config = self.config(id, true, applied);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.replica = Some(Epaxos::init(&mut node.host, config));
        self.collect(id);
    }

    /// Request ids node `id` applied, in order.
    pub fn applied(&self, id: NodeId) -> Vec<RequestId> {
        self.nodes[&id].host.applied_ids()
    }

    /// A status counter of node `id` (0 when it is down).
    pub fn counter(&self, id: NodeId, name: &str) -> u64 {
        let Some(replica) = self.nodes[&id].replica.as_ref() else {
            return 0;
        };
        let c = &replica.counters;
        match name {
            "fast-path" => c.fast_path,
            "slow-path" => c.slow_path,
            "recoveries" => c.recoveries,
            "noops-committed" => c.noops_committed,
            "try-pre-accepts" => c.try_pre_accepts,
            "commit-disagreements" => c.commit_disagreements,
            "instances-committed" => c.instances_committed,
            "instances-executed" => c.instances_executed,
            other => panic!("unknown counter {other}"),
        }
    }

    pub fn record(&self, id: NodeId, instance: InstanceId) -> Option<Record> {
        self.nodes[&id]
            .replica
            .as_ref()
            .and_then(|r| r.record(instance).cloned())
    }

    /// Every pair of nodes agrees on every instance both hold committed
    /// (command and attributes); returns the disagreements found.
    pub fn commit_disagreements(&self) -> Vec<String> {
        let mut chosen: BTreeMap<InstanceId, (NodeId, Record)> = BTreeMap::new();
        let mut found = Vec::new();
        for (id, node) in &self.nodes {
            let Some(replica) = node.replica.as_ref() else {
                continue;
            };
            if replica.counters.commit_disagreements > 0 {
                found.push(format!(
                    "node {id} was told two different values for one instance"
                ));
            }
            for (instance, record) in replica.records() {
                if record.status < Status::Committed {
                    continue;
                }
                match chosen.get(instance) {
                    None => {
                        chosen.insert(*instance, (*id, record.clone()));
                    }
                    Some((other, first)) => {
                        if first.command != record.command || first.attributes != record.attributes
                        {
                            found.push(format!(
                                "{instance:?}: node {other} committed {:?}/{:?}, node {id} {:?}/{:?}",
                                first.command, first.attributes, record.command, record.attributes
                            ));
                        }
                    }
                }
            }
        }
        found
    }

    /// Per conflict key, the applied request ids of every node must be
    /// prefixes of one another. Returns the first disagreement.
    pub fn order_disagreement(&self) -> Option<String> {
        let mut per_node: Vec<(NodeId, BTreeMap<u64, Vec<RequestId>>)> = Vec::new();
        for (id, node) in &self.nodes {
            let mut by_key: BTreeMap<u64, Vec<RequestId>> = BTreeMap::new();
            for (request, payload) in &node.host.applied {
                by_key.entry(key_of(payload)).or_default().push(*request);
            }
            per_node.push((*id, by_key));
        }
        for (a, keys_a) in &per_node {
            for (b, keys_b) in &per_node {
                for (key, seq_a) in keys_a {
                    let Some(seq_b) = keys_b.get(key) else {
                        continue;
                    };
                    let common = seq_a.len().min(seq_b.len());
                    if seq_a[..common] != seq_b[..common] {
                        return Some(format!(
                            "key {key}: node {a} applied {seq_a:?}, node {b} applied {seq_b:?}"
                        ));
                    }
                }
            }
        }
        None
    }

    /// No request id is applied twice on any node.
    pub fn duplicate_applies(&self) -> Option<String> {
        for (id, node) in &self.nodes {
            let mut seen = BTreeSet::new();
            for request in node.host.applied_ids() {
                if !seen.insert(request) {
                    return Some(format!("node {id} applied request {request} twice"));
                }
            }
        }
        None
    }

    /// Asserts the safety properties.
    pub fn check(&self) {
        let disagreements = self.commit_disagreements();
        assert!(disagreements.is_empty(), "{disagreements:#?}");
        if let Some(why) = self.order_disagreement() {
            panic!("{why}");
        }
        if let Some(why) = self.duplicate_applies() {
            panic!("{why}");
        }
        assert!(self.stale_reads.is_empty(), "{:#?}", self.stale_reads);
        // A refused request changed nothing: it is applied nowhere.
        for (id, node) in &self.nodes {
            for (request, reason) in &node.host.rejected {
                for (other_id, other) in &self.nodes {
                    assert!(
                        !other.host.applied_ids().contains(request),
                        "request {request} refused at node {id} ({reason:?}) but applied at node {other_id}"
                    );
                }
            }
        }
    }
}

/// True for a message of the given kind.
pub fn is(envelope: &Envelope, kind: &str) -> bool {
    let message = envelope.message();
    let name = match message {
        Message::PreAccept { .. } => "pre-accept",
        Message::PreAcceptOk { .. } => "pre-accept-ok",
        Message::Accept { .. } => "accept",
        Message::AcceptOk { .. } => "accept-ok",
        Message::Commit { .. } => "commit",
        Message::Prepare { .. } => "prepare",
        Message::PrepareOk { .. } => "prepare-ok",
        Message::TryPreAccept { .. } => "try-pre-accept",
        Message::TryPreAcceptReply { .. } => "try-pre-accept-reply",
        Message::Nack { .. } => "nack",
    };
    name == kind
}

/// The command a committed record holds.
pub fn committed_command(record: &Option<Record>) -> Option<Command> {
    record
        .as_ref()
        .filter(|r| r.is_committed())
        .and_then(|r| r.command.clone())
}
