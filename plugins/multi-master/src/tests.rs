//! Native tests over `MemoryHost`: a small cluster whose messages the test
//! delivers, drops or duplicates, with state shipping modelled as the
//! host's last-writer-wins merge (the union of stamped writes).

use std::collections::{BTreeMap, BTreeSet};

use synod_guest_sdk::testing::{MemoryHost, commands};
use synod_guest_sdk::*;

use super::*;

/// A shipped snapshot in flight: from, to, metadata, and the image (the
/// sender's stamped writes when it was sent).
type Shipment = (
    NodeId,
    NodeId,
    Vec<u8>,
    BTreeMap<Stamp, (RequestId, Vec<u8>)>,
);

struct Node {
    host: MemoryHost,
    protocol: Option<MultiMaster>,
}

struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Nodes whose messages (both ways) are dropped.
    down: BTreeSet<NodeId>,
    params: Vec<(String, String)>,
    next_id: u64,
    /// Deliver every message twice.
    duplicate: bool,
}

fn config(
    id: NodeId,
    members: &[NodeId],
    params: &[(String, String)],
    recovering: bool,
    applied: u64,
) -> InitConfig {
    InitConfig {
        self_id: id,
        membership: Membership {
            voters: members.to_vec(),
            learners: vec![],
        },
        params: params.to_vec(),
        recovering,
        applied_position: applied,
    }
}

impl Cluster {
    fn new(n: u64, params: &[(&str, &str)]) -> Cluster {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let members: Vec<NodeId> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut host = MemoryHost::new(id);
            let protocol = MultiMaster::init(&mut host, config(id, &members, &params, false, 0));
            nodes.insert(
                id,
                Node {
                    host,
                    protocol: Some(protocol),
                },
            );
        }
        Cluster {
            nodes,
            down: BTreeSet::new(),
            params,
            next_id: 0,
            duplicate: false,
        }
    }

    fn write(&mut self, at: NodeId, payload: &str) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let node = self.nodes.get_mut(&at).expect("node");
        let protocol = node.protocol.as_mut().expect("running");
        protocol.on_commands(&mut node.host, commands(&[(id, payload.as_bytes())]));
        id
    }

    /// Delivers every queued message and snapshot once (or twice), fires
    /// due timers after `advance_ms`, repeated `rounds` times.
    fn run(&mut self, rounds: usize, advance_ms: u64) {
        for _ in 0..rounds {
            let mut mail: Vec<(NodeId, NodeId, Vec<u8>)> = Vec::new();
            let mut ships: Vec<Shipment> = Vec::new();
            for (&id, node) in self.nodes.iter_mut() {
                for (to, payload) in node.host.sent.drain(..) {
                    mail.push((id, to, payload));
                }
                let image = node.host.stamped.clone();
                for (to, metadata) in node.host.snapshots_sent.drain(..) {
                    ships.push((id, to, metadata, image.clone()));
                }
            }
            for (from, to, payload) in mail {
                if self.down.contains(&from) || self.down.contains(&to) {
                    continue;
                }
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                let Some(protocol) = node.protocol.as_mut() else {
                    continue;
                };
                let copies = if self.duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    let mut messages = Messages::default();
                    messages.senders.push(from);
                    messages.payloads.push(&payload);
                    protocol.on_messages(&mut node.host, messages);
                }
            }
            for (from, to, metadata, image) in ships {
                if self.down.contains(&from) || self.down.contains(&to) {
                    continue;
                }
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                let Some(protocol) = node.protocol.as_mut() else {
                    continue;
                };
                let offer = SnapshotOffer {
                    sender: from,
                    position: 0,
                    metadata,
                };
                if protocol.on_snapshot(&mut node.host, offer) {
                    // The host's merge: the union of stamped writes.
                    for (stamp, write) in image {
                        node.host.stamped.entry(stamp).or_insert(write);
                    }
                }
            }
            for node in self.nodes.values_mut() {
                let due = node.host.advance(advance_ms * 1_000_000);
                if let Some(protocol) = node.protocol.as_mut()
                    && !due.is_empty()
                {
                    protocol.on_timers(&mut node.host, due);
                }
            }
        }
    }

    fn stamped(&self, id: NodeId) -> BTreeSet<Stamp> {
        self.nodes[&id].host.stamped.keys().copied().collect()
    }

    fn status(&mut self, id: NodeId) -> BTreeMap<String, u64> {
        let node = self.nodes.get_mut(&id).expect("node");
        let status = node
            .protocol
            .as_mut()
            .expect("running")
            .status(&mut node.host);
        status.counters.into_iter().collect()
    }

    fn restart(&mut self, id: NodeId) {
        let members: Vec<NodeId> = self.nodes.keys().copied().collect();
        let node = self.nodes.get_mut(&id).expect("node");
        node.host.sent.clear();
        node.host.timers.clear();
        let applied = node.host.applied_position;
        let protocol = MultiMaster::init(
            &mut node.host,
            config(id, &members, &self.params, true, applied),
        );
        node.protocol = Some(protocol);
    }
}

fn assert_converged(cluster: &Cluster, writes: usize) {
    let first = cluster.stamped(1);
    assert_eq!(first.len(), writes, "every write is held");
    for id in cluster.nodes.keys() {
        assert_eq!(cluster.stamped(*id), first, "node {id} differs");
    }
}

#[test]
fn writes_to_every_replica_converge_and_ack_locally() {
    let mut cluster = Cluster::new(3, &[]);
    for i in 0..30 {
        let at = 1 + (i % 3);
        let id = cluster.write(at, &format!("w{i}"));
        // Applied (answered) at once on the replica that took it.
        assert!(cluster.nodes[&at].host.applied_ids().contains(&id));
    }
    cluster.run(20, 10);
    assert_converged(&cluster, 30);
    // Each write's stamp names its origin, and the stamps are distinct.
    for stamp in cluster.stamped(1) {
        assert!((1..=3).contains(&stamp.origin));
    }
}

#[test]
fn lost_messages_are_resent_and_duplicates_are_not_applied_twice() {
    let mut cluster = Cluster::new(3, &[("resend-ms", "50")]);
    cluster.write(2, "warm");
    cluster.run(5, 10);
    cluster.down.insert(2);
    for i in 0..10 {
        cluster.write(1, &format!("a{i}"));
    }
    cluster.run(3, 10); // Everything to and from 2 is lost.
    cluster.down.clear();
    cluster.duplicate = true;
    for i in 0..10 {
        cluster.write(3, &format!("b{i}"));
    }
    cluster.run(60, 20);
    assert_converged(&cluster, 21);
    for node in cluster.nodes.values() {
        let ids = node.host.applied_ids();
        let distinct: BTreeSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), distinct.len(), "a write was applied twice");
    }
    assert!(cluster.status(2)["duplicates"] > 0);
    assert!(cluster.status(1)["resends"] > 0);
}

/// Goal: a replica down past the backlog budget is caught up by state
/// shipping, then resumes on the log; writes never wait for it.
#[test]
fn a_replica_past_the_backlog_budget_comes_back_by_state_shipping() {
    let mut cluster = Cluster::new(
        3,
        &[
            ("backlog-entries", "20"),
            ("snapshot-interval", "10"),
            ("peer-silent-ms", "100"),
        ],
    );
    cluster.write(1, "before");
    cluster.run(5, 10);
    cluster.down.insert(3);
    for i in 0..50 {
        let id = cluster.write(1 + (i % 2), &format!("w{i}"));
        let at = 1 + (i % 2);
        assert!(
            cluster.nodes[&at].host.applied_ids().contains(&id),
            "never blocked"
        );
    }
    cluster.run(30, 20);
    let status = cluster.status(1);
    assert_eq!(status["peer-3-carrier-state"], 1, "{status:?}");
    assert!(status["peer-3-lag-entries"] >= 25, "{status:?}");
    // Nothing is kept for the dead replica past the budget.
    assert!(status["log-entries"] <= 20, "{status:?}");
    cluster.down.clear();
    cluster.run(60, 20);
    assert_converged(&cluster, 51);
    assert!(cluster.status(3)["states-merged"] >= 1);
    let status = cluster.status(1);
    assert_eq!(
        status["peer-3-carrier-state"], 0,
        "back on the log: {status:?}"
    );
    assert_eq!(status["peer-3-lag-entries"], 0, "{status:?}");
    // Later writes reach it by the log.
    let merged = cluster.status(3)["states-merged"];
    cluster.write(1, "after");
    cluster.run(10, 20);
    assert_converged(&cluster, 52);
    assert_eq!(cluster.status(3)["states-merged"], merged);
}

#[test]
fn a_restarted_replica_keeps_what_it_held_and_catches_up() {
    let mut cluster = Cluster::new(3, &[("snapshot-interval", "7")]);
    for i in 0..20 {
        cluster.write(1 + (i % 3), &format!("w{i}"));
    }
    cluster.run(10, 10);
    cluster.down.insert(2);
    for i in 0..5 {
        cluster.write(1, &format!("x{i}"));
    }
    cluster.restart(2);
    cluster.down.clear();
    cluster.run(60, 20);
    assert_converged(&cluster, 25);
    // Its own writes continue their sequence after the restart.
    cluster.write(2, "after restart");
    cluster.run(10, 20);
    assert_converged(&cluster, 26);
}

/// Goal: writes an origin shipped to one peer only reach the others after
/// the origin dies (relayed), and seal then reports one position.
#[test]
fn writes_of_a_dead_origin_are_relayed_and_seal_agrees() {
    let mut cluster = Cluster::new(3, &[("relay-after-ms", "100"), ("peer-silent-ms", "300")]);
    cluster.write(2, "warm");
    cluster.run(5, 10);
    cluster.down.insert(3);
    for i in 0..5 {
        cluster.write(1, &format!("w{i}"));
    }
    cluster.run(3, 10); // 2 has them, 3 does not.
    cluster.down = BTreeSet::from([1]);
    cluster.run(60, 20);
    assert_eq!(cluster.stamped(2), cluster.stamped(3));
    assert_eq!(cluster.stamped(3).len(), 6);
    assert!(cluster.status(2)["relayed"] > 0);
    // Seal on the live replicas: node 1 has been silent long enough.
    let mut positions = Vec::new();
    for _ in 0..20 {
        positions.clear();
        for id in [2, 3] {
            let node = cluster.nodes.get_mut(&id).expect("node");
            let protocol = node.protocol.as_mut().expect("running");
            positions.push(protocol.seal(&mut node.host));
        }
        if positions
            .iter()
            .all(|p| matches!(p, SealProgress::Sealed(_)))
        {
            break;
        }
        cluster.run(1, 20);
    }
    assert_eq!(positions[0], positions[1], "{positions:?}");
    assert_eq!(positions[0], SealProgress::Sealed(6));
    // Sealed: new writes are refused.
    let node = cluster.nodes.get_mut(&2).expect("node");
    node.protocol
        .as_mut()
        .expect("running")
        .on_commands(&mut node.host, commands(&[(999, b"late")]));
    assert_eq!(node.host.rejected, vec![(999, Rejection::Sealed)]);
}

/// Goal: while every origin is alive and shipping, nothing is relayed.
/// Under steady writes a peer is always a little behind on some origin
/// (its acknowledgement trails the newest write); only writes missing for
/// `relay-after-ms` count, not the time since the peer was last fully up
/// to date, or every replica relays every other origin's writes. (The
/// relay delay is above the heartbeat, `resend-ms` 200: a quiet peer's
/// vector reaches the third replica only by heartbeats.)
#[test]
fn live_origins_under_steady_writes_are_never_relayed() {
    let mut cluster = Cluster::new(3, &[("relay-after-ms", "300")]);
    for i in 0..60 {
        cluster.write(1, &format!("a{i}"));
        cluster.write(3, &format!("c{i}"));
        cluster.run(1, 10);
    }
    cluster.run(20, 10);
    assert_converged(&cluster, 120);
    for id in [1, 2, 3] {
        let status = cluster.status(id);
        assert_eq!(status["relayed"], 0, "node {id}: {status:?}");
        assert_eq!(status["duplicates"], 0, "node {id}: {status:?}");
    }
}

/// Goal: a replica whose own rounds stalled (here: its clock jumps past
/// `resend-ms` while acknowledgements wait for it) does not resend what
/// its peers acknowledged meanwhile; resends follow a peer whose
/// acknowledgements stopped moving, not this side's silence.
#[test]
fn a_stalled_replica_does_not_resend_what_was_acknowledged_meanwhile() {
    let mut cluster = Cluster::new(3, &[("resend-ms", "50")]);
    cluster.write(1, "warm");
    cluster.run(5, 10);
    for round in 0..5 {
        for i in 0..4 {
            cluster.write(1, &format!("a{round}-{i}"));
        }
        // Delivered to 2 and 3; their acknowledgements wait in flight.
        cluster.run(1, 0);
        for i in 0..4 {
            cluster.write(1, &format!("b{round}-{i}"));
        }
        // Node 1 stalls: 80 ms pass before it handles anything again (the
        // waiting messages first, then its due timer).
        cluster.nodes.get_mut(&1).expect("node").host.now_nanos += 80 * 1_000_000;
        cluster.run(2, 0);
    }
    cluster.run(20, 10);
    assert_converged(&cluster, 41);
    assert_eq!(cluster.status(1)["resends"], 0, "{:?}", cluster.status(1));
    for id in [2, 3] {
        assert_eq!(cluster.status(id)["duplicates"], 0, "node {id}");
    }
}

/// Delivers what `from` has sent, to whom it was sent.
fn deliver_from(cluster: &mut Cluster, from: NodeId) {
    let mail: Vec<(NodeId, Vec<u8>)> = cluster
        .nodes
        .get_mut(&from)
        .expect("node")
        .host
        .sent
        .drain(..)
        .collect();
    for (to, payload) in mail {
        let node = cluster.nodes.get_mut(&to).expect("node");
        let mut messages = Messages::default();
        messages.senders.push(from);
        messages.payloads.push(&payload);
        let protocol = node.protocol.as_mut().expect("running");
        protocol.on_messages(&mut node.host, messages);
    }
}

/// Goal: a peer that is slow but alive (every answer 120 ms late, with
/// `resend-ms` 50) is learnt: once its delay is measured, nothing more is
/// resent to it (resending everything in flight to the slowest replica
/// only doubled its work).
#[test]
fn a_slow_peer_is_not_resent_to_once_its_delay_is_learnt() {
    let mut cluster = Cluster::new(2, &[("resend-ms", "50")]);
    cluster.write(1, "warm");
    cluster.run(5, 10);
    let mut resends_after_warmup = 0;
    for i in 0..40 {
        cluster.write(1, &format!("w{i}"));
        deliver_from(&mut cluster, 1);
        for _ in 0..6 {
            for node in cluster.nodes.values_mut() {
                let due = node.host.advance(20 * 1_000_000);
                if !due.is_empty() {
                    node.protocol
                        .as_mut()
                        .expect("running")
                        .on_timers(&mut node.host, due);
                }
            }
            deliver_from(&mut cluster, 1);
        }
        deliver_from(&mut cluster, 2);
        if i == 10 {
            resends_after_warmup = cluster.status(1)["resends"];
        }
    }
    cluster.run(20, 10);
    assert_converged(&cluster, 41);
    assert_eq!(
        cluster.status(1)["resends"],
        resends_after_warmup,
        "resent to a slow peer after its delay was learnt"
    );
}

#[test]
fn a_new_replica_starts_by_state_shipping() {
    let mut cluster = Cluster::new(2, &[]);
    for i in 0..10 {
        cluster.write(1 + (i % 2), &format!("w{i}"));
    }
    cluster.run(10, 10);
    let mut host = MemoryHost::new(3);
    let members = [1, 2, 3];
    let protocol = MultiMaster::init(&mut host, config(3, &members, &cluster.params, false, 0));
    cluster.nodes.insert(
        3,
        Node {
            host,
            protocol: Some(protocol),
        },
    );
    let target = Membership {
        voters: members.to_vec(),
        learners: vec![],
    };
    for id in [1, 2] {
        let node = cluster.nodes.get_mut(&id).expect("node");
        node.protocol
            .as_mut()
            .expect("running")
            .on_membership(&mut node.host, target.clone())
            .expect("membership");
    }
    cluster.run(30, 20);
    assert_converged(&cluster, 10);
    assert!(cluster.status(3)["states-merged"] >= 1);
}

#[test]
fn tombstones_are_collected_once_every_replica_holds_everything() {
    let mut cluster = Cluster::new(3, &[("tombstone-gc-ms", "100")]);
    for i in 0..6 {
        cluster.write(1 + (i % 3), &format!("w{i}"));
    }
    cluster.run(80, 20);
    assert_converged(&cluster, 6);
    let newest = cluster
        .stamped(1)
        .iter()
        .map(|s| s.time)
        .max()
        .expect("writes");
    for id in 1..=3 {
        let below = cluster.nodes[&id].host.tombstones_below;
        assert!(
            below > newest,
            "node {id}: bound {below} <= newest stamp {newest}"
        );
    }
    // While a replica is down, the bound stops at what it acknowledged.
    cluster.down.insert(3);
    let before = cluster.nodes[&1].host.tombstones_below;
    cluster.write(1, "unseen by 3");
    cluster.run(40, 20);
    let stamp = cluster
        .stamped(1)
        .iter()
        .map(|s| s.time)
        .max()
        .expect("writes");
    assert!(cluster.nodes[&1].host.tombstones_below <= stamp.max(before));
}

#[test]
fn strong_reads_are_refused_and_local_ones_answered() {
    let mut host = MemoryHost::new(1);
    let mut protocol = MultiMaster::init(&mut host, config(1, &[1], &[], false, 0));
    let reads = Reads {
        ids: vec![1, 3],
        levels: vec![ReadLevel::Local, ReadLevel::Linearizable],
    };
    protocol.on_reads(&mut host, reads);
    assert_eq!(host.completed_reads, vec![1]);
    assert!(matches!(&host.rejected[..], [(3, Rejection::Invalid(_))]));
    assert_eq!(MultiMaster::info().consistency, Consistency::Eventual);
}

/// Goal: the backlog for a replica that went silent before it fell behind
/// is still bounded (the budget is checked for dead peers too).
#[test]
fn nothing_is_kept_past_the_budget_for_a_silent_replica() {
    let mut cluster = Cluster::new(
        3,
        &[
            ("backlog-entries", "20"),
            ("snapshot-interval", "10"),
            ("peer-silent-ms", "100"),
        ],
    );
    cluster.write(1, "before");
    cluster.run(5, 10);
    cluster.down.insert(3);
    cluster.run(20, 20); // 3 is silent now.
    for i in 0..60 {
        cluster.write(1, &format!("w{i}"));
        cluster.run(1, 20);
    }
    let status = cluster.status(1);
    assert_eq!(status["peer-3-carrier-state"], 1, "{status:?}");
    assert!(status["log-entries"] <= 20, "{status:?}");
    cluster.down.clear();
    cluster.run(60, 20);
    assert_converged(&cluster, 61);
    assert_eq!(cluster.status(1)["peer-3-carrier-state"], 0);
}

/// Goal: replicas that join at a swap without the state the protocol
/// started from (a larger `applied-position` elsewhere) get it by state.
#[test]
fn replicas_joining_at_a_swap_get_the_starting_state() {
    let members = [1, 2, 3];
    let mut nodes = BTreeMap::new();
    for id in members {
        let mut host = MemoryHost::new(id);
        // Node 1 held the old protocol's state (position 40); 2 and 3 are new.
        let applied = if id == 1 { 40 } else { 0 };
        host.applied_position = applied;
        if id == 1 {
            host.stamped
                .insert(Stamp { time: 0, origin: 0 }, (0, b"old state".to_vec()));
        }
        let protocol = MultiMaster::init(&mut host, config(id, &members, &[], false, applied));
        nodes.insert(
            id,
            Node {
                host,
                protocol: Some(protocol),
            },
        );
    }
    let mut cluster = Cluster {
        nodes,
        down: BTreeSet::new(),
        params: Vec::new(),
        next_id: 0,
        duplicate: false,
    };
    cluster.write(2, "new");
    cluster.run(40, 20);
    assert_converged(&cluster, 2);
    for id in members {
        let node = cluster.nodes.get_mut(&id).expect("node");
        let status = node
            .protocol
            .as_mut()
            .expect("running")
            .status(&mut node.host);
        assert_eq!(
            status.applied_position, 41,
            "node {id}: same canonical position"
        );
    }
}
