//! Scripted multi-replica scenarios: fast and slow paths, execution order,
//! every row of the recovery case analysis, reads, seal, restarts.

mod fixtures;
mod harness;
mod randomized;

use synod_guest_sdk::{Protocol, Rejection, SealProgress};

use crate::types::{Command, InstanceId, Status};
use harness::{Cluster, committed_command, is};

fn inst(space: u64, slot: u64) -> InstanceId {
    InstanceId { space, slot }
}

fn writes_of(command: Option<Command>) -> Vec<u64> {
    match command {
        Some(Command::Writes(writes)) => writes.iter().map(|w| w.id).collect(),
        _ => vec![],
    }
}

#[test]
fn fast_path_commits_after_one_round_trip() {
    for n in [1u64, 3, 5, 7] {
        let mut cluster = Cluster::new(n);
        cluster.write(1, 100, 7);
        // One round trip: PreAccept out, replies in.
        let pre_accepts = cluster.queue.len();
        assert_eq!(pre_accepts as u64, n - 1);
        cluster.deliver_where(|e| is(e, "pre-accept") || is(e, "pre-accept-ok"));
        assert_eq!(cluster.applied(1), vec![100], "n = {n}");
        assert_eq!(cluster.counter(1, "fast-path"), 1);
        assert_eq!(cluster.counter(1, "slow-path"), 0);
        cluster.deliver_all();
        for id in 1..=n {
            assert_eq!(cluster.applied(id), vec![100], "n = {n}, node {id}");
        }
        cluster.check();
    }
}

#[test]
fn disagreeing_replies_take_the_slow_path_and_order_is_agreed() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.write(2, 200, 7);
    // Node 3 sees 1.1 before 2.1: its reply to 2 carries a dependency on 1.1.
    cluster.deliver_where(|e| e.from == 1 && e.to == 3 && is(e, "pre-accept"));
    cluster.deliver_where(|e| e.from == 2 && e.to == 3 && is(e, "pre-accept"));
    cluster.deliver_where(|e| e.from == 3);
    assert_eq!(cluster.counter(1, "fast-path"), 1);
    cluster.deliver_all();
    assert_eq!(cluster.counter(2, "slow-path"), 1);
    for id in 1..=3 {
        assert_eq!(cluster.applied(id), vec![100, 200], "node {id}");
    }
    cluster.check();
}

#[test]
fn a_dependency_cycle_executes_by_seq_then_replica_on_every_replica() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.write(2, 200, 7);
    // Each leader hears only from the other, who already holds its own
    // instance: both replies disagree, both go slow, deps form a cycle.
    cluster.drop_where(|e| e.to == 3);
    cluster.deliver_all();
    assert!(cluster.applied(1).is_empty());
    cluster.advance(60);
    cluster.deliver_all();
    assert_eq!(cluster.counter(1, "slow-path"), 1);
    assert_eq!(cluster.counter(2, "slow-path"), 1);
    let one = cluster.record(1, inst(1, 1)).unwrap();
    let two = cluster.record(1, inst(2, 1)).unwrap();
    assert!(one.attributes.covers(inst(2, 1)) && two.attributes.covers(inst(1, 1)));
    assert_eq!(one.attributes.seq, two.attributes.seq);
    cluster.run(1000);
    for id in 1..=3 {
        assert_eq!(cluster.applied(id), vec![100, 200], "node {id}");
    }
    assert_eq!(cluster.replica(3).counters.graph_largest_component, 2);
    cluster.check();
}

#[test]
fn non_interfering_commands_do_not_wait_for_each_other() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 1);
    cluster.write(2, 200, 2);
    cluster.deliver_all();
    let record = cluster.record(3, inst(2, 1)).unwrap();
    assert!(record.attributes.deps.is_empty());
    assert_eq!(
        cluster.counter(1, "fast-path") + cluster.counter(2, "fast-path"),
        2
    );
    for id in 1..=3 {
        let mut applied = cluster.applied(id);
        applied.sort();
        assert_eq!(applied, vec![100, 200]);
    }
    cluster.check();
}

/// Row 1: some replica in the majority has the instance committed.
#[test]
fn recovery_commits_what_a_replica_holds_committed() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| e.to == 2 && is(e, "pre-accept") || e.to == 1);
    assert_eq!(cluster.applied(1), vec![100]);
    cluster.deliver_where(|e| e.to == 2 && is(e, "commit"));
    cluster.crash(1);
    cluster.drop_where(|_| true);
    cluster.on(3, |r, h| r.recover(h, inst(1, 1)));
    cluster.deliver_all();
    assert_eq!(
        writes_of(committed_command(&cluster.record(3, inst(1, 1)))),
        vec![100]
    );
    assert_eq!(cluster.applied(3), vec![100]);
    cluster.check();
}

/// Row 2: accepted somewhere; the accepted attributes are kept.
#[test]
fn recovery_keeps_the_accepted_attributes() {
    let mut cluster = Cluster::new(5);
    // 3.1 is known only at node 3, so node 3's reply to 1.1 disagrees.
    cluster.write(3, 300, 7);
    cluster.drop_where(|_| true);
    cluster.write(1, 100, 7);
    cluster.drop_where(|e| !(e.to == 2 || e.to == 3));
    cluster.deliver_all();
    // Fast path impossible to confirm; after the timeout, the slow path.
    cluster.advance(60);
    assert_eq!(cluster.counter(1, "slow-path"), 1);
    cluster.deliver_where(|e| e.to == 2 && is(e, "accept"));
    cluster.drop_where(|_| true);
    cluster.crash(1);
    let accepted = cluster.record(2, inst(1, 1)).unwrap();
    assert_eq!(accepted.status, Status::Accepted);
    assert!(accepted.attributes.covers(inst(3, 1)));
    cluster.on(4, |r, h| r.recover(h, inst(1, 1)));
    // Node 3 does not answer this Prepare.
    cluster.drop_where(|e| e.to == 3);
    cluster.deliver_all();
    let recovered = cluster.record(4, inst(1, 1)).unwrap();
    assert!(recovered.is_committed());
    assert_eq!(recovered.attributes, accepted.attributes);
    cluster.run(3000);
    let order = cluster.applied(2);
    assert_eq!(order.len(), 2);
    for id in 3..=5 {
        assert_eq!(cluster.applied(id), order, "node {id}");
    }
    cluster.check();
}

/// Row 3: possibly committed on the fast path (identical initial-ballot
/// pre-accepts); TryPreAccept finds no conflict and keeps the attributes.
#[test]
fn recovery_keeps_a_possible_fast_commit_through_try_pre_accept() {
    let mut cluster = Cluster::new(5);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| (e.to == 2 || e.to == 3) && is(e, "pre-accept") || e.to == 1);
    assert_eq!(cluster.counter(1, "fast-path"), 1);
    let chosen = cluster.record(1, inst(1, 1)).unwrap();
    cluster.crash(1);
    cluster.drop_where(|_| true);
    cluster.on(4, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 5);
    cluster.deliver_all();
    assert_eq!(cluster.counter(4, "try-pre-accepts"), 1);
    let recovered = cluster.record(4, inst(1, 1)).unwrap();
    assert!(recovered.is_committed());
    assert_eq!(recovered.attributes, chosen.attributes);
    cluster.restart(1, false);
    cluster.run(2000);
    for id in 1..=5 {
        assert_eq!(cluster.applied(id), vec![100], "node {id}");
    }
    cluster.check();
}

/// Row 3, conflict variant: TryPreAccept meets a committed interfering
/// instance that neither is among the deps nor depends on the instance, so
/// the attributes were never chosen; Phase 1 runs again and orders it.
#[test]
fn try_pre_accept_conflict_with_a_committed_instance_restarts_phase_one() {
    let mut cluster = Cluster::new(5);
    cluster.write(1, 100, 7);
    // Only node 2 pre-accepts 1.1; its reply is lost.
    cluster.deliver_where(|e| e.to == 2 && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    cluster.crash(1);
    // 3.1 commits on the fast path at 3, 4, 5 without knowing 1.1.
    cluster.write(3, 300, 7);
    cluster.drop_where(|e| e.to == 2);
    cluster.deliver_all();
    assert_eq!(cluster.counter(3, "fast-path"), 1);
    // Node 4 recovers 1.1 with node 2 and 5 answering.
    cluster.on(4, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 3);
    cluster.deliver_all();
    assert_eq!(cluster.counter(4, "try-pre-accepts"), 1);
    let recovered = cluster.record(4, inst(1, 1)).unwrap();
    assert!(recovered.is_committed());
    assert!(recovered.attributes.covers(inst(3, 1)));
    cluster.run(2000);
    for id in 2..=5 {
        assert_eq!(cluster.applied(id), vec![300, 100], "node {id}");
    }
    cluster.check();
}

/// Row 4: the command is known but cannot have been chosen (its leader
/// answered without a commit); Phase 1 runs again at the recovery ballot.
#[test]
fn recovery_reproposes_a_command_its_live_leader_never_committed() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.drop_where(|_| true);
    cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
    cluster.deliver_all();
    assert!(cluster.replica(1).leading().is_empty());
    for id in 1..=3 {
        assert_eq!(cluster.applied(id), vec![100], "node {id}");
    }
    // Recovery never takes the fast path.
    assert_eq!(cluster.counter(2, "fast-path"), 0);
    assert_eq!(cluster.counter(1, "fast-path"), 0);
    cluster.check();
}

/// Row 5: nobody in the majority knows the instance: a no-op, found by
/// execution waiting on an uncommitted dependency past the timeout.
#[test]
fn an_unknown_dependency_is_recovered_as_a_noop() {
    let mut cluster = Cluster::new(5);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| e.to == 2 && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    cluster.write(2, 200, 7);
    cluster.drop_where(|e| e.to == 1 || e.to == 5);
    cluster.deliver_where(|e| is(e, "pre-accept") || is(e, "pre-accept-ok"));
    assert_eq!(cluster.counter(2, "fast-path"), 1);
    cluster.deliver_where(|e| is(e, "commit"));
    cluster.crash(1);
    cluster.crash(2);
    assert!(cluster.applied(3).is_empty(), "2.1 waits for 1.1");
    cluster.run(2000);
    for id in 3..=5 {
        assert_eq!(cluster.applied(id), vec![200], "node {id}");
        assert_eq!(
            committed_command(&cluster.record(id, inst(1, 1))),
            Some(Command::Noop)
        );
    }
    cluster.restart(1, false);
    cluster.restart(2, false);
    cluster.run(2000);
    for id in 1..=5 {
        assert_eq!(cluster.applied(id), vec![200], "node {id}");
    }
    cluster.check();
}

/// Recovery when the last-voted ballot and the promise differ: the vote
/// cast at the higher ballot wins, whatever was promised since.
#[test]
fn recovery_ranks_accepted_votes_by_the_ballot_they_were_cast_at() {
    let cluster = fixtures::accepted_at_two_ballots();
    assert!(
        cluster.commit_disagreements().is_empty(),
        "{:?}",
        cluster.commit_disagreements()
    );
    assert_eq!(
        writes_of(committed_command(&cluster.record(2, inst(1, 1)))),
        vec![100]
    );
}

#[test]
fn linearizable_reads_wait_for_every_earlier_write_to_execute() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| e.to == 2 && is(e, "pre-accept") || e.to == 1);
    assert_eq!(cluster.applied(1), vec![100], "the write is acknowledged");
    cluster.drop_where(|_| true);
    cluster.read(3, 900);
    let mut steps = 0;
    while cluster.nodes[&3].host.completed_reads.is_empty() {
        assert!(cluster.applied(3).is_empty() || cluster.applied(3) == vec![100]);
        cluster.deliver_all();
        cluster.advance(10);
        steps += 1;
        assert!(steps < 500, "the read never completed");
    }
    assert_eq!(cluster.nodes[&3].host.completed_reads, vec![900]);
    assert_eq!(cluster.applied(3), vec![100]);
    cluster.check();
}

#[test]
fn seal_agrees_on_one_position_and_refuses_later_writes() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 1);
    cluster.write(2, 200, 1);
    cluster.write(3, 300, 2);
    let first = cluster.on(1, |r, h| r.seal(h)).unwrap();
    assert_eq!(first, SealProgress::Pending);
    cluster.run(1000);
    let mut positions = Vec::new();
    for id in 1..=3 {
        let mut progress = cluster.on(id, |r, h| r.seal(h)).unwrap();
        for _ in 0..100 {
            if progress != SealProgress::Pending {
                break;
            }
            cluster.run(20);
            progress = cluster.on(id, |r, h| r.seal(h)).unwrap();
        }
        match progress {
            SealProgress::Sealed(position) => positions.push(position),
            SealProgress::Pending => panic!("node {id} never sealed"),
        }
    }
    assert!(positions.windows(2).all(|w| w[0] == w[1]), "{positions:?}");
    let applied: Vec<usize> = (1..=3).map(|id| cluster.applied(id).len()).collect();
    assert!(applied.windows(2).all(|w| w[0] == w[1]), "{applied:?}");
    cluster.write(1, 400, 3);
    assert!(
        cluster.nodes[&1]
            .host
            .rejected
            .contains(&(400, Rejection::Sealed))
    );
    cluster.check();
}

#[test]
fn a_restart_without_state_re_executes_in_the_same_order() {
    let mut cluster = Cluster::new(3);
    for (i, key) in [1u64, 2, 1, 1, 3, 2].iter().enumerate() {
        cluster.write((i as u64 % 3) + 1, 100 + i as u64, *key);
        if i % 2 == 0 {
            cluster.deliver_all();
        }
    }
    cluster.run(1000);
    let before = cluster.applied(2);
    assert_eq!(before.len(), 6);
    cluster.crash(2);
    cluster.restart(2, true);
    cluster.run(200);
    assert_eq!(cluster.applied(2).len(), 6);
    cluster.check();
    // A restart that keeps its state applies nothing twice.
    cluster.crash(3);
    cluster.restart(3, false);
    cluster.run(200);
    assert_eq!(cluster.applied(3).len(), 6);
    cluster.check();
}

#[test]
fn info_names_the_protocol() {
    let info = crate::Epaxos::info();
    assert_eq!(info.name, "epaxos");
    assert!(info.capabilities.seal && info.capabilities.linearizable_reads);
}

#[test]
fn a_late_pre_accept_does_not_undo_an_accept_vote() {
    use crate::message::Message;
    use crate::types::{Attributes, Ballot, Write};
    let mut cluster = Cluster::new(3);
    let command = Command::Writes(vec![Write {
        id: 100,
        payload: b"7:100".to_vec(),
        keys: vec![7],
    }]);
    let attributes = Attributes {
        seq: 1,
        deps: Default::default(),
    };
    let ballot = Ballot::initial(1);
    for message in [
        Message::Accept {
            instance: inst(1, 1),
            ballot,
            command: command.clone(),
            attributes: attributes.clone(),
        },
        Message::PreAccept {
            instance: inst(1, 1),
            ballot,
            command,
            attributes,
        },
    ] {
        cluster.queue.push(harness::Envelope {
            from: 1,
            to: 3,
            bytes: message.encode(),
        });
        cluster.deliver_at(cluster.queue.len() - 1);
    }
    let record = cluster.record(3, inst(1, 1)).unwrap();
    assert_eq!(record.status, Status::Accepted);
}

#[test]
fn status_reports_counters_and_malformed_messages_are_counted() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.deliver_all();
    cluster.queue.push(harness::Envelope {
        from: 2,
        to: 1,
        bytes: vec![0xff, 0xff, 0xff],
    });
    cluster.deliver_all();
    let status = cluster.on(1, |r, h| r.status(h)).unwrap();
    let counter = |name: &str| {
        status
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    assert_eq!(counter("fast-path"), Some(1));
    assert_eq!(counter("instances-executed"), Some(1));
    assert_eq!(counter("messages-malformed"), Some(1));
    assert_eq!(status.applied_position, 1);
    assert_eq!(status.role, synod_guest_sdk::Role::Replica);
}

/// Two interfering instances whose leaders both failed, each pre-accepted
/// unchanged by one other replica and each blocking the other's
/// TryPreAccept. The blocked leader cannot be in a fast quorum of the
/// other's attributes, which leaves too few replicas for one: Phase 1
/// runs again instead of waiting for a failed leader to return.
#[test]
fn mutually_blocking_try_pre_accepts_resolve_without_the_failed_leaders() {
    let mut cluster = Cluster::new(5);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| e.to == 2 && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    cluster.write(3, 300, 7);
    cluster.deliver_where(|e| e.to == 4 && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    cluster.crash(1);
    cluster.crash(3);
    cluster.run(5000);
    let order = cluster.applied(2);
    assert_eq!(order.len(), 2, "both instances commit and execute");
    for id in [4, 5] {
        assert_eq!(cluster.applied(id), order, "node {id}");
    }
    cluster.check();
}

/// A record overwritten by a no-op vote still counts as a conflict after a
/// restart: its command may yet be chosen at a higher ballot.
#[test]
fn a_restarted_replica_still_depends_on_commands_it_once_held() {
    use crate::message::Message;
    use crate::types::{Attributes, Ballot};
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| e.to == 3 && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    let noop = Message::Accept {
        instance: inst(1, 1),
        ballot: Ballot { round: 1, node: 2 },
        command: Command::Noop,
        attributes: Attributes {
            seq: 0,
            deps: Default::default(),
        },
    };
    cluster.queue.push(harness::Envelope {
        from: 2,
        to: 3,
        bytes: noop.encode(),
    });
    cluster.deliver_at(0);
    cluster.drop_where(|_| true);
    cluster.crash(3);
    cluster.restart(3, false);
    cluster.drop_where(|_| true);
    cluster.write(3, 300, 7);
    let proposed = cluster.record(3, inst(3, 1)).unwrap();
    assert!(proposed.attributes.covers(inst(1, 1)));
}

/// A read barrier that a recovery replaced with a no-op is proposed again,
/// so its reads are still answered.
#[test]
fn reads_whose_barrier_became_a_noop_are_ordered_again() {
    let mut cluster = Cluster::new(3);
    cluster.read(1, 900);
    cluster.drop_where(|_| true);
    cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 1);
    cluster.deliver_where(|e| !is(e, "commit"));
    cluster.deliver_where(|e| is(e, "commit") && e.to == 1);
    assert_eq!(
        committed_command(&cluster.record(1, inst(1, 1))),
        Some(Command::Noop)
    );
    cluster.run(500);
    assert_eq!(cluster.nodes[&1].host.completed_reads, vec![900]);
    cluster.check();
}

/// A write whose instance a recovery turned into a no-op is refused at the
/// replica that took it, so its client retries instead of waiting.
#[test]
fn writes_lost_to_a_noop_are_refused() {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.drop_where(|_| true);
    cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 1);
    cluster.deliver_where(|e| e.to != 1);
    cluster.deliver_where(|e| is(e, "commit"));
    assert_eq!(
        committed_command(&cluster.record(1, inst(1, 1))),
        Some(Command::Noop)
    );
    let rejected = &cluster.nodes[&1].host.rejected;
    assert!(
        matches!(rejected.as_slice(), [(100, Rejection::Unavailable(_))]),
        "{rejected:?}"
    );
    assert!(cluster.applied(1).is_empty());
    cluster.check();
}
