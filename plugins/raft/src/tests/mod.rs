//! Cluster tests over the in-memory harness. Each test opens with its goal
//! and method; the Raft paper sentence or thesis section it checks is cited.

mod harness;
mod randomized;

use synod_guest_sdk::testing::commands;
use synod_guest_sdk::*;

use crate::message::Message;
use crate::raft::{HARD_STATE_KEY, Raft, RaftRole, SNAPSHOT_KEY};
use harness::{Cluster, Faults, Verdict, fast_params};

fn member(ids: &[NodeId]) -> Membership {
    Membership {
        voters: ids.to_vec(),
        learners: vec![],
    }
}

/// Ticks until the write `id` is applied on every node in `at`.
fn wait_applied(cluster: &mut Cluster, at: &[NodeId], id: RequestId, max_ms: u64) {
    let nodes = at.to_vec();
    cluster.wait_until(max_ms, &format!("write {id} applied on {nodes:?}"), |c| {
        nodes.iter().all(|&n| c.is_applied(n, id))
    });
}

#[test]
fn info_names_raft_and_its_capabilities() {
    let info = Raft::info();
    assert_eq!(info.name, "raft");
    assert_eq!(info.consistency, Consistency::Linearizable);
    assert_eq!(
        info.capabilities.names(),
        vec![
            "replication",
            "linearizable-reads",
            "lease-reads",
            "membership-change",
            "leader-transfer",
            "seal",
            "snapshots"
        ]
    );
}

/// Goal: one voter elects itself after one election timeout and commits
/// alone. Method: tick a one-node cluster, write, check apply positions are
/// the writes' log indexes (the noop at 1 is skipped).
#[test]
fn single_node_elects_itself_and_applies_at_log_indexes() {
    let mut cluster = Cluster::new(1, 1, fast_params(&[]), 1);
    assert_eq!(cluster.raft(1).role, RaftRole::Follower);
    let leader = cluster.wait_for_leader(1000);
    assert_eq!(leader, 1);
    let a = cluster.propose(1, b"a");
    let b = cluster.propose(1, b"b");
    assert_eq!(cluster.host(1).applied_ids(), vec![a, b]);
    assert_eq!(cluster.host(1).applied_position, 3);
    let status = cluster.call(1, |raft, host| raft.status(host));
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.commit_position, 3);
    assert_eq!(status.applied_position, 3);
    let counter = |name: &str| {
        status
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    assert_eq!(counter("elections-started"), Some(1));
    assert_eq!(counter("pre-votes-started"), Some(1));
}

/// Goal: a three-node cluster elects one leader, replicates, and every
/// node applies the same sequence; followers refuse writes with a hint.
#[test]
fn three_nodes_replicate_and_followers_redirect_writes() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 2);
    let leader = cluster.wait_for_leader(2000);
    let ids: Vec<RequestId> = (0..20)
        .map(|i| cluster.propose(leader, format!("w{i}").as_bytes()))
        .collect();
    wait_applied(&mut cluster, &[1, 2, 3], *ids.last().unwrap(), 500);
    for node in 1..=3 {
        assert_eq!(cluster.host(node).applied_ids(), ids);
    }
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let refused = cluster.propose(follower, b"nope");
    assert_eq!(
        cluster.rejection(follower, refused),
        Some(Rejection::NotLeader(Some(leader)))
    );
    cluster.tick(5);
    let status = cluster.call(leader, |raft, host| raft.status(host));
    assert_eq!(status.peers.len(), 2);
    assert!(status.peers.iter().all(|p| p.match_position == 21));
    cluster.check_log_matching();
    cluster.check_applied_prefixes();
}

/// Goal: election safety (§5.2: at most one leader per term) under message
/// loss, duplication, delay and partitions, across many seeds. Method: the
/// harness asserts after every callback that no term has two leaders.
#[test]
fn election_safety_across_seeds_with_loss_and_partitions() {
    let mut terms_with_leaders = 0;
    for seed in 0..40 {
        let mut cluster = Cluster::new(5, 5, fast_params(&[]), 1000 + seed);
        cluster.faults = Faults {
            loss_per_mille: 150,
            duplicate_per_mille: 50,
            delay_ms_max: 15,
        };
        for step in 0..20 {
            if step % 4 == 0 {
                let a = 1 + cluster.random() % 5;
                let b = 1 + cluster.random() % 5;
                cluster.isolate(&[a, b]);
            } else if step % 4 == 2 {
                cluster.heal();
            }
            cluster.tick(60);
        }
        terms_with_leaders += cluster.leaders_by_term.len();
        cluster.check_log_matching();
    }
    assert!(
        terms_with_leaders > 50,
        "only {terms_with_leaders} leaderships"
    );
}

/// Goal: Figure 8 of the Raft paper (§5.4.2). An entry of an old term that
/// sits on a majority must not be committed by counting replicas, because a
/// later leader may still overwrite it. Method: five nodes, forced
/// elections and per-message delivery; `max-batch-bytes = 1` puts one
/// entry in each AppendEntries so index 2 and index 3 travel separately.
#[test]
fn figure_8_old_term_entry_is_not_committed_by_counting_replicas() {
    let mut cluster = Cluster::new(5, 5, fast_params(&[("max-batch-bytes", "1")]), 8);
    let group = |ids: &'static [NodeId]| {
        move |from: NodeId, to: NodeId, _: &Message| {
            if ids.contains(&from) && ids.contains(&to) {
                Verdict::Deliver
            } else {
                Verdict::Drop
            }
        }
    };
    // (a) S1 leads term t1 and its noop (index 1) commits everywhere; then
    // it appends X at index 2, which only S2 receives.
    cluster.call(1, |raft, host| raft.campaign_now(host));
    cluster.settle();
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.raft(1).commit, 1);
    let t1 = cluster.raft(1).term;
    let x = cluster.propose(1, b"X");
    cluster.deliver_where(group(&[1, 2]));
    assert_eq!(cluster.raft(2).log.term(2), Some(t1));
    assert_eq!(cluster.raft(1).commit, 1, "X is on 2 of 5");
    // (b) S1 crashes; S5 wins term t2 with S3 and S4, appends its own entry
    // at index 2 and crashes before sending it.
    cluster.crash(1, true);
    cluster.call(5, |raft, host| raft.campaign_now(host));
    cluster.deliver_where(|from, to, message| match message {
        Message::Vote { .. } | Message::VoteResponse { .. }
            if [3, 4, 5].contains(&from) && [3, 4, 5].contains(&to) =>
        {
            Verdict::Deliver
        }
        _ => Verdict::Drop,
    });
    assert_eq!(cluster.raft(5).role, RaftRole::Leader);
    let t2 = cluster.raft(5).term;
    assert_eq!(cluster.raft(5).log.term(2), Some(t2));
    cluster.crash(5, true);
    // (c) S1 restarts and wins a later term t3 with S2 and S3. It copies X
    // (index 2, term t1) to S3 but its own noop (index 3, term t3) reaches
    // only S2. X is now on S1, S2, S3: a majority, counted by the leader.
    cluster.restart(1);
    for _ in 0..3 {
        if cluster.raft(1).role == RaftRole::Leader {
            break;
        }
        cluster.call(1, |raft, host| raft.campaign_now(host));
        // S3 may receive index 2 but not index 3: once it acknowledged
        // index 2, appends carrying index 3 to it are lost.
        let mut s3_has_2 = false;
        cluster.deliver_where(|from, to, message| {
            if ![1, 2, 3].contains(&from) || ![1, 2, 3].contains(&to) {
                return Verdict::Drop;
            }
            match message {
                Message::AppendResponse {
                    success: true,
                    index,
                    ..
                } if from == 3 && *index >= 2 => {
                    s3_has_2 = true;
                    Verdict::Deliver
                }
                Message::Append {
                    prev_index,
                    entries,
                    ..
                } if to == 3 && s3_has_2 && prev_index + entries.ends.len() as u64 >= 3 => {
                    Verdict::Drop
                }
                _ => Verdict::Deliver,
            }
        });
    }
    assert_eq!(cluster.raft(1).role, RaftRole::Leader);
    let t3 = cluster.raft(1).term;
    assert!(t3 > t2);
    let leader = cluster.raft(1);
    assert_eq!(leader.log.term(2), Some(t1));
    assert_eq!(leader.log.term(3), Some(t3));
    assert!(leader.lead.progress[&2].match_index >= 2);
    assert_eq!(leader.lead.progress[&3].match_index, 2);
    assert_eq!(cluster.raft(3).log.term(2), Some(t1));
    // The old-term entry is on a majority, yet it is not committed.
    assert!(
        leader.commit < 2,
        "an old-term entry was committed by counting replicas"
    );
    // (d) Why: S1 crashes, S5 comes back and wins with S3 and S4 (its last
    // term t2 beats their t1), then overwrites index 2 everywhere.
    cluster.crash(1, true);
    cluster.restart(5);
    for _ in 0..3 {
        if cluster.raft(5).role == RaftRole::Leader {
            break;
        }
        cluster.call(5, |raft, host| raft.campaign_now(host));
        cluster.deliver_where(group(&[3, 4, 5]));
    }
    assert_eq!(cluster.raft(5).role, RaftRole::Leader);
    assert!(cluster.raft(5).commit >= 3);
    assert_eq!(
        cluster.raft(3).log.term(2),
        Some(t2),
        "X was overwritten on S3"
    );
    // Everyone converges on S5's history; X is never applied.
    cluster.restart(1);
    cluster.tick(1000);
    let leader = cluster.wait_for_leader(2000);
    let y = cluster.propose(leader, b"Y");
    wait_applied(&mut cluster, &[1, 2, 3, 4, 5], y, 1000);
    for node in 1..=5 {
        assert!(!cluster.is_applied(node, x), "X applied on {node}");
        assert_eq!(cluster.raft(node).log.term(2), Some(t2));
    }
    cluster.check_log_matching();
    cluster.check_applied_prefixes();
}

/// Goal: a leader cut off from its quorum cannot commit (§5.4); its write
/// is never applied anywhere and is overwritten once the partition heals.
/// Method: isolate the leader, write to it, let the majority elect a new
/// leader and commit, heal.
#[test]
fn partitioned_old_leader_cannot_commit() {
    let mut cluster = Cluster::new(5, 5, fast_params(&[]), 3);
    let old = cluster.wait_for_leader(2000);
    cluster.isolate(&[old]);
    let lost = cluster.propose(old, b"lost");
    let lost_index = cluster.raft(old).log.last_index();
    let lost_bytes = cluster.host(old).log[&lost_index].clone();
    cluster.tick(400);
    assert!(cluster.raft(old).commit < lost_index);
    assert_ne!(
        cluster.raft(old).role,
        RaftRole::Leader,
        "check-quorum steps down"
    );
    let new = cluster.leader().expect("the majority elects a leader");
    assert_ne!(new, old);
    let kept = cluster.propose(new, b"kept");
    cluster.tick(100);
    assert!(!cluster.is_applied(old, kept));
    cluster.heal();
    let everyone: Vec<NodeId> = (1..=5).collect();
    wait_applied(&mut cluster, &everyone, kept, 1000);
    for node in 1..=5 {
        assert!(!cluster.is_applied(node, lost));
    }
    assert_ne!(
        cluster.host(old).log.get(&lost_index),
        Some(&lost_bytes),
        "overwritten"
    );
    cluster.check_log_matching();
    cluster.check_applied_prefixes();
}

/// Goal: pre-vote (thesis §9.6) keeps a node that was partitioned away from
/// raising its term, so it does not depose the leader when it rejoins.
/// Method: isolate a follower for many election timeouts, heal, check the
/// term and leader are unchanged.
#[test]
fn pre_vote_keeps_a_rejoining_node_from_inflating_terms() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 4);
    let leader = cluster.wait_for_leader(2000);
    let term = cluster.raft(leader).term;
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.isolate(&[follower]);
    cluster.tick(2000);
    assert_eq!(
        cluster.raft(follower).term,
        term,
        "pre-vote must not raise the term"
    );
    assert!(cluster.raft(follower).counters.pre_votes_started >= 5);
    assert_eq!(cluster.raft(follower).counters.elections_started, 0);
    cluster.heal();
    cluster.tick(500);
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.raft(leader).term, term);
    assert_eq!(cluster.raft(follower).leader, Some(leader));
}

/// Goal: leader stickiness (thesis §4.2.3): a node that heard from the
/// leader within an election timeout refuses to help elect another, so a
/// node that lost only its link to the leader cannot depose it (and leader
/// leases stay sound). Method: cut the link between the leader and one
/// follower only; the follower keeps pre-voting and keeps losing.
#[test]
fn leader_stickiness_survives_a_single_broken_link() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 20);
    let leader = cluster.wait_for_leader(2000);
    let term = cluster.raft(leader).term;
    let cut_off = (1..=3).find(|&n| n != leader).unwrap();
    let bystander = (1..=3).find(|&n| n != leader && n != cut_off).unwrap();
    cluster.cut.insert((leader, cut_off));
    cluster.cut.insert((cut_off, leader));
    cluster.tick(1000);
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.raft(leader).term, term);
    assert_eq!(cluster.raft(bystander).term, term);
    assert!(cluster.raft(cut_off).counters.pre_votes_started >= 3);
    let write = cluster.propose(leader, b"still leading");
    wait_applied(&mut cluster, &[leader, bystander], write, 500);
}

/// Goal: AppendEntries leave eagerly (thesis §10.2.1), before the leader's
/// own copy is durable, but the commit index that counts that copy never
/// leaves before it is. Method: manual durability. A follower persists and
/// acknowledges a new entry while the leader has not synced; the leader
/// counts itself and commits; then it restarts and loses the entry. No
/// follower may have learned that commit index.
#[test]
fn eager_appends_never_leak_a_commit_index_that_is_not_durable() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 21);
    let leader = cluster.wait_for_leader(2000);
    cluster.tick(30);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let other = (1..=3).find(|&n| n != leader && n != follower).unwrap();
    cluster.auto_sync = false;
    let x = cluster.propose(leader, b"X");
    let x_index = cluster.raft(leader).log.last_index();
    // The eager append reaches one follower, which persists and answers.
    cluster.deliver_where(|from, to, _| {
        if (from, to) == (leader, follower) {
            Verdict::Deliver
        } else {
            Verdict::Hold
        }
    });
    assert_eq!(cluster.raft(follower).log.last_index(), x_index);
    cluster.sync(follower);
    cluster.deliver_where(|from, to, _| {
        if (from, to) == (follower, leader) {
            Verdict::Deliver
        } else {
            Verdict::Hold
        }
    });
    assert_eq!(
        cluster.raft(leader).commit,
        x_index,
        "leader counts its own copy"
    );
    // Whatever the leader sent since is eager or held: nothing carries it.
    cluster.deliver_where(|_, _, _| Verdict::Deliver);
    assert!(cluster.raft(follower).commit < x_index);
    assert!(cluster.raft(other).commit < x_index);
    assert!(!cluster.is_applied(follower, x));
    // The leader restarts before syncing: its copy of X is gone.
    cluster.crash(leader, false);
    assert!(!cluster.host(leader).log.contains_key(&x_index));
    cluster.auto_sync = true;
    cluster.sync(follower);
    cluster.sync(other);
    cluster.restart(leader);
    cluster.tick(1000);
    let leader = cluster.wait_for_leader(1000);
    let y = cluster.propose(leader, b"Y");
    wait_applied(&mut cluster, &[1, 2, 3], y, 1000);
    cluster.check_applied_prefixes();
    cluster.check_log_matching();
}

/// Goal: a follower that missed entries catches up from the log (§5.3),
/// with the leader backing up by the conflict hint.
#[test]
fn lagging_follower_catches_up_from_the_log() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[("max-batch-bytes", "64")]), 5);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.isolate(&[follower]);
    let mut last = 0;
    for i in 0..200 {
        last = cluster.propose(leader, format!("entry-{i}").as_bytes());
    }
    cluster.tick(50);
    assert!(!cluster.is_applied(follower, last));
    cluster.heal();
    wait_applied(&mut cluster, &[follower], last, 2000);
    assert_eq!(
        cluster.host(follower).applied_ids(),
        cluster.host(leader).applied_ids()
    );
    assert_eq!(cluster.raft(follower).counters.snapshots_installed, 0);
}

/// Goal: a periodic snapshot is asked for with `snapshot-async` (contract
/// 0.1.2) and the log is compacted only once the host reports the save
/// durable; until then the log stays whole, a node restarted meanwhile
/// (its save lost) replays everything from its log, and no snapshot is
/// shipped from a file that is about to change. Method: 3 nodes,
/// `snapshot-interval = 10`, saves held in flight while 30 writes commit,
/// a follower crashed and restarted, then the saves released.
#[test]
fn a_periodic_snapshot_compacts_the_log_only_once_durable() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[("snapshot-interval", "10")]), 11);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.hold_saves = true;
    let mut last = 0;
    for i in 0..30 {
        last = cluster.propose(leader, format!("v{i}").as_bytes());
        cluster.tick(1);
    }
    wait_applied(&mut cluster, &[1, 2, 3], last, 2000);
    cluster.tick(50);
    for id in 1..=3 {
        let (position, _) = cluster
            .host(id)
            .snapshot_requested
            .expect("a save was asked for");
        assert!(position >= 10, "node {id}: save at {position}");
        assert_eq!(
            cluster.host(id).log_first,
            1,
            "node {id}: log not compacted"
        );
        assert_eq!(cluster.raft(id).log.snapshot_index(), 0);
        assert_eq!(cluster.raft(id).counters.snapshots_taken, 0);
        assert!(!cluster.host(id).kv.contains_key(SNAPSHOT_KEY));
    }
    // A restart before the save is durable loses the save, not a write.
    cluster.crash(follower, false);
    cluster.restart(follower);
    let again = cluster.propose(leader, b"again");
    wait_applied(&mut cluster, &[1, 2, 3], again, 2000);
    assert_eq!(
        cluster.host(follower).applied_ids(),
        cluster.host(leader).applied_ids()
    );
    // Durable: each node records the snapshot and compacts through it.
    cluster.hold_saves = false;
    cluster.tick(30);
    for id in 1..=3 {
        let raft = cluster.raft(id);
        assert!(raft.counters.snapshots_taken >= 1, "node {id}");
        let index = raft.log.snapshot_index();
        assert!(index >= 10, "node {id}: compacted through {index}");
        assert_eq!(cluster.host(id).log_first, index + 1, "node {id}");
        assert_eq!(raft.snapshot_meta.index, index);
    }
}

/// Goal: a follower whose missing entries were compacted catches up by a
/// shipped snapshot (§7), and a lost shipment is retried. Method:
/// `snapshot-interval = 10`, isolate a follower, write 100 entries, drop the
/// first snapshot, heal; then restart the follower from its own snapshot.
#[test]
fn lagging_follower_catches_up_by_snapshot_after_compaction() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[("snapshot-interval", "10")]), 6);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.isolate(&[follower]);
    let mut last = 0;
    for i in 0..100 {
        last = cluster.propose(leader, format!("v{i}").as_bytes());
        cluster.tick(1);
    }
    cluster.tick(20);
    assert!(
        cluster.host(leader).log_first > 50,
        "the leader compacted its log"
    );
    assert!(cluster.raft(leader).counters.snapshots_taken >= 5);
    // The first shipment is lost; the leader ships again later.
    cluster.heal();
    cluster.wait_until(500, "a snapshot is shipped", |c| {
        c.raft(leader).counters.snapshots_sent >= 1
    });
    cluster.drop_queued();
    wait_applied(&mut cluster, &[follower], last, 3000);
    assert!(cluster.raft(leader).counters.snapshots_sent >= 2);
    assert!(cluster.raft(follower).counters.snapshots_installed >= 1);
    assert_eq!(
        cluster.host(follower).applied_ids(),
        cluster.host(leader).applied_ids()
    );
    // More writes replicate from the log after the snapshot.
    let after = cluster.propose(leader, b"after");
    wait_applied(&mut cluster, &[1, 2, 3], after, 1000);
    // The follower restarts from its own snapshot and replays the rest.
    cluster.crash(follower, false);
    cluster.restart(follower);
    let again = cluster.propose(leader, b"again");
    wait_applied(&mut cluster, &[1, 2, 3], again, 1000);
    cluster.check_applied_prefixes();
    assert_eq!(
        cluster.host(follower).applied_ids(),
        cluster.host(leader).applied_ids()
    );
}

/// Goal: ReadIndex (thesis §6.4) answers only after a heartbeat round that
/// started after the read, and only once the read index is applied.
#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 7);
    let leader = cluster.wait_for_leader(2000);
    let write = cluster.propose(leader, b"w");
    let read = cluster.read(leader, ReadLevel::Linearizable);
    assert!(!cluster.read_completed(leader, read), "no round yet");
    cluster.settle();
    assert!(cluster.read_completed(leader, read));
    assert!(cluster.is_applied(leader, write), "the read saw the write");
    // Several reads share one round.
    let rounds_before = cluster.raft(leader).counters.read_rounds_started;
    let id_a = cluster.next_id();
    let id_b = cluster.next_id();
    cluster.call(leader, |raft, host| {
        raft.on_reads(
            host,
            Reads {
                ids: vec![id_a, id_b],
                levels: vec![ReadLevel::Linearizable, ReadLevel::Linearizable],
            },
        )
    });
    cluster.settle();
    assert!(cluster.read_completed(leader, id_a) && cluster.read_completed(leader, id_b));
    assert_eq!(
        cluster.raft(leader).counters.read_rounds_started,
        rounds_before + 1
    );
}

/// Goal: a deposed leader never answers a linearizable read, even though
/// the cluster moved on without it. Method: isolate the leader, read from
/// it, let the others elect a leader and write, heal: the read is refused.
#[test]
fn deposed_leader_does_not_answer_linearizable_reads() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 8);
    let old = cluster.wait_for_leader(2000);
    cluster.isolate(&[old]);
    let read = cluster.read(old, ReadLevel::Linearizable);
    let lease = cluster.read(old, ReadLevel::Lease);
    cluster.tick(400);
    let new = cluster.leader().expect("new leader");
    assert_ne!(new, old);
    let write = cluster.propose(new, b"newer");
    cluster.tick(50);
    assert!(cluster.is_applied(new, write));
    assert!(!cluster.read_completed(old, read), "stale read answered");
    assert!(
        !cluster.read_completed(old, lease),
        "stale lease read answered"
    );
    assert!(matches!(
        cluster.rejection(old, read),
        Some(Rejection::NotLeader(_))
    ));
    cluster.heal();
    cluster.tick(200);
    assert!(!cluster.read_completed(old, read));
}

/// Goal: with `lease-reads=true` a leader answers lease reads at once while
/// its lease (round start + election timeout − drift) holds, and falls back
/// to ReadIndex once it expires; without the parameter lease reads always
/// take a round.
#[test]
fn lease_reads_skip_the_round_only_while_the_lease_holds() {
    let mut cluster = Cluster::new(
        3,
        3,
        fast_params(&[("lease-reads", "true"), ("clock-drift-ms", "20")]),
        9,
    );
    let leader = cluster.wait_for_leader(2000);
    cluster.tick(30);
    let read = cluster.read(leader, ReadLevel::Lease);
    assert!(
        cluster.read_completed(leader, read),
        "answered from the lease"
    );
    assert_eq!(cluster.raft(leader).counters.reads_lease, 1);
    // Cut off, the lease runs out after at most 80 ms (100 − 20) from the
    // last acknowledged round.
    cluster.isolate(&[leader]);
    cluster.tick(85);
    assert_eq!(
        cluster.raft(leader).role,
        RaftRole::Leader,
        "check-quorum not yet"
    );
    let late = cluster.read(leader, ReadLevel::Lease);
    assert!(!cluster.read_completed(leader, late), "lease expired");
    cluster.heal();
    cluster.tick(30);

    let mut plain = Cluster::new(3, 3, fast_params(&[]), 9);
    let leader = plain.wait_for_leader(2000);
    plain.tick(30);
    let read = plain.read(leader, ReadLevel::Lease);
    assert!(!plain.read_completed(leader, read), "lease reads are off");
    plain.settle();
    assert!(plain.read_completed(leader, read));
}

/// Goal: local reads are answered at once on any node; linearizable reads
/// on a follower are refused with the leader's id.
#[test]
fn local_reads_are_answered_anywhere() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 10);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let local = cluster.read(follower, ReadLevel::Local);
    assert!(cluster.read_completed(follower, local));
    let linearizable = cluster.read(follower, ReadLevel::Linearizable);
    assert_eq!(
        cluster.rejection(follower, linearizable),
        Some(Rejection::NotLeader(Some(leader)))
    );
    let local_on_leader = cluster.read(leader, ReadLevel::Local);
    assert!(cluster.read_completed(leader, local_on_leader));
}

/// Goal: adding a voter goes through a learner that catches up, then a
/// second configuration promotes it (thesis §4.1, §4.2.1).
#[test]
fn membership_add_voter_via_learner() {
    let mut cluster = Cluster::new(3, 4, fast_params(&[]), 11);
    assert_eq!(
        cluster.raft(4).role,
        RaftRole::Learner,
        "outside the configuration"
    );
    let leader = cluster.wait_for_leader(2000);
    for i in 0..30 {
        cluster.propose(leader, format!("before-{i}").as_bytes());
    }
    let result = cluster.call(leader, |raft, host| {
        raft.on_membership(host, member(&[1, 2, 3, 4]))
    });
    assert_eq!(result, Ok(()));
    // The first step appended node 4 as a learner.
    assert_eq!(cluster.raft(leader).config.learners, vec![4]);
    assert_eq!(cluster.raft(leader).config.voters, vec![1, 2, 3]);
    cluster.wait_until(1000, "node 4 promoted", |c| {
        c.raft(leader).config.voters == vec![1, 2, 3, 4]
    });
    assert_eq!(cluster.raft(leader).counters.config_changes_proposed, 2);
    let write = cluster.propose(leader, b"after");
    wait_applied(&mut cluster, &[1, 2, 3, 4], write, 1000);
    assert_eq!(cluster.raft(4).role, RaftRole::Follower);
    assert!(cluster.raft(leader).lead.membership_target.is_none());
    cluster.check_applied_prefixes();
}

/// Goal: removing a follower is one configuration entry; the cluster then
/// commits with the remaining voters.
#[test]
fn membership_remove_voter() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 12);
    let leader = cluster.wait_for_leader(2000);
    let removed = (1..=3).rev().find(|&n| n != leader).unwrap();
    let remaining: Vec<NodeId> = (1..=3).filter(|&n| n != removed).collect();
    let result = cluster.call(leader, |raft, host| {
        raft.on_membership(host, member(&remaining))
    });
    assert_eq!(result, Ok(()));
    cluster.tick(100);
    assert_eq!(cluster.raft(leader).config.voters, remaining);
    assert!(cluster.raft(leader).commit >= cluster.raft(leader).configs.last().unwrap().0);
    assert!(!cluster.raft(leader).lead.progress.contains_key(&removed));
    // The removed node is no longer needed: stop it and keep committing.
    cluster.crash(removed, true);
    let write = cluster.propose(leader, b"two voters");
    wait_applied(&mut cluster, &remaining, write, 1000);
}

/// Goal: removing the leader: it keeps leading until the configuration that
/// removes it commits, then steps down (thesis §4.2.2) and hands over; the
/// others carry on.
#[test]
fn membership_remove_the_leader() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 13);
    let leader = cluster.wait_for_leader(2000);
    let others: Vec<NodeId> = (1..=3).filter(|&n| n != leader).collect();
    let result = cluster.call(leader, |raft, host| {
        raft.on_membership(host, member(&others))
    });
    assert_eq!(result, Ok(()));
    assert_eq!(
        cluster.raft(leader).role,
        RaftRole::Leader,
        "leads until it commits"
    );
    cluster.tick(300);
    assert_eq!(cluster.raft(leader).role, RaftRole::Learner);
    assert_eq!(cluster.raft(leader).config.voters, others);
    let new = cluster.wait_for_leader(1000);
    assert!(others.contains(&new));
    let write = cluster.propose(new, b"without the old leader");
    wait_applied(&mut cluster, &others, write, 1000);
    // The old leader no longer campaigns.
    let before = cluster.raft(leader).counters.pre_votes_started;
    cluster.isolate(&[leader]);
    cluster.tick(1000);
    assert_eq!(cluster.raft(leader).counters.pre_votes_started, before);
}

/// Goal: on_membership refuses when not leader (naming the leader) and
/// for an empty or contradictory target.
#[test]
fn membership_errors() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 14);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let error = cluster
        .call(follower, |raft, host| {
            raft.on_membership(host, member(&[1, 2]))
        })
        .unwrap_err();
    assert!(error.contains(&format!("node {leader} is")), "{error}");
    let error = cluster
        .call(leader, |raft, host| raft.on_membership(host, member(&[])))
        .unwrap_err();
    assert!(error.contains("no voters"), "{error}");
    let both = Membership {
        voters: vec![1, 2, 3],
        learners: vec![3],
    };
    assert!(
        cluster
            .call(leader, |raft, host| raft.on_membership(host, both))
            .is_err()
    );
}

/// Goal: leadership transfer (thesis §3.10): writes are refused while it
/// runs, the target campaigns at once and wins; with no target the most
/// up-to-date voter is chosen; an unreachable target aborts after an
/// election timeout.
#[test]
fn leader_transfer() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 15);
    let leader = cluster.wait_for_leader(2000);
    let target = (1..=3).find(|&n| n != leader).unwrap();
    let term = cluster.raft(leader).term;
    cluster.propose(leader, b"before");
    assert_eq!(
        cluster.call(leader, |raft, host| raft
            .transfer_leader(host, Some(target))),
        Ok(())
    );
    let refused = cluster.propose(leader, b"during");
    assert_eq!(
        cluster.rejection(leader, refused),
        Some(Rejection::Unavailable(
            "leadership transfer in progress".into()
        ))
    );
    cluster.tick(50);
    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.raft(target).term, term + 1);
    assert_eq!(cluster.raft(target).counters.timeout_now_received, 1);

    // No target: the most up-to-date other voter.
    let second = cluster.wait_for_leader(1000);
    assert_eq!(
        cluster.call(second, |raft, host| raft.transfer_leader(host, None)),
        Ok(())
    );
    cluster.tick(50);
    let third = cluster.leader().unwrap();
    assert_ne!(third, second);

    // An isolated target: the transfer is abandoned and writes resume.
    let cut_off = (1..=3).find(|&n| n != third).unwrap();
    cluster.isolate(&[cut_off]);
    assert_eq!(
        cluster.call(third, |raft, host| raft
            .transfer_leader(host, Some(cut_off))),
        Ok(())
    );
    cluster.tick(150);
    assert_eq!(cluster.leader(), Some(third));
    assert_eq!(cluster.raft(third).counters.transfers_aborted, 1);
    let write = cluster.propose(third, b"resumed");
    assert!(cluster.rejection(third, write).is_none());
    // Errors.
    let follower = (1..=3).find(|&n| n != third).unwrap();
    assert!(
        cluster
            .call(follower, |raft, host| raft
                .transfer_leader(host, Some(third)))
            .is_err()
    );
    assert!(
        cluster
            .call(third, |raft, host| raft.transfer_leader(host, Some(99)))
            .is_err()
    );
}

/// Goal: seal appends a seal entry; once applied every node reports
/// `Sealed(index)`, writes are refused with `Sealed`, and nothing after
/// the seal is ever applied.
#[test]
fn seal_stops_writes_everywhere() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 16);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let write = cluster.propose(leader, b"last");
    assert_eq!(
        cluster.call(leader, |raft, host| raft.seal(host)),
        SealProgress::Pending
    );
    assert_eq!(
        cluster.call(follower, |raft, host| raft.seal(host)),
        SealProgress::Pending
    );
    let refused = cluster.propose(leader, b"too late");
    assert_eq!(cluster.rejection(leader, refused), Some(Rejection::Sealed));
    cluster.tick(50);
    let sealed = cluster.call(leader, |raft, host| raft.seal(host));
    let SealProgress::Sealed(index) = sealed else {
        panic!("not sealed: {sealed:?}");
    };
    assert_eq!(index, cluster.raft(leader).log_seal_index.unwrap());
    for node in 1..=3 {
        assert_eq!(
            cluster.call(node, |raft, host| raft.seal(host)),
            SealProgress::Sealed(index)
        );
        assert!(cluster.is_applied(node, write));
        assert_eq!(cluster.host(node).applied_position, index - 1);
        let status = cluster.call(node, |raft, host| raft.status(host));
        assert_eq!(status.role, Role::Sealed);
    }
    let refused = cluster.propose(follower, b"follower");
    assert_eq!(
        cluster.rejection(follower, refused),
        Some(Rejection::Sealed)
    );
    // A new leader after the seal stays sealed (its noop is not applied).
    cluster
        .call(follower, |raft, host| raft.transfer_leader(host, None))
        .ok();
    cluster.crash(leader, true);
    cluster.tick(500);
    let new = cluster.wait_for_leader(1000);
    let refused = cluster.propose(new, b"new leader");
    assert_eq!(cluster.rejection(new, refused), Some(Rejection::Sealed));
    cluster.restart(leader);
    cluster.tick(100);
    assert_eq!(
        cluster.call(leader, |raft, host| raft.seal(host)),
        SealProgress::Sealed(index)
    );
}

/// Goal: term and vote survive a restart (§5.1 persistent state), so a
/// node never votes for two candidates in one term across a restart.
#[test]
fn restart_keeps_term_and_vote() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 17);
    // Node 1 campaigns; only node 3 hears it and votes.
    cluster.call(1, |raft, host| raft.campaign_now(host));
    let term = cluster.raft(1).term;
    cluster.deliver_where(|from, to, _| {
        if (from, to) == (1, 3) || (from, to) == (3, 1) {
            Verdict::Deliver
        } else {
            Verdict::Drop
        }
    });
    assert_eq!(cluster.raft(3).voted_for, Some(1));
    assert!(cluster.host(3).kv.contains_key(HARD_STATE_KEY));
    cluster.crash(3, false);
    cluster.restart(3);
    assert_eq!(cluster.raft(3).term, term);
    assert_eq!(cluster.raft(3).voted_for, Some(1));
    // Node 2 asks for node 3's vote in the same term: refused.
    let request = Message::Vote {
        term,
        last_index: 100,
        last_term: term,
        transfer: true,
    };
    cluster.call(3, |raft, host| {
        raft.on_messages(
            host,
            Messages {
                senders: vec![2],
                payloads: Batch::from_items([request.encode()]),
            },
        )
    });
    cluster.deliver_where(|from, to, message| {
        if from == 3 && to == 2 {
            assert_eq!(
                message,
                &Message::VoteResponse {
                    term,
                    granted: false
                }
            );
        }
        Verdict::Drop
    });
    assert_eq!(cluster.raft(3).voted_for, Some(1));
}

/// Goal: a crashed node whose state machine comes back from its snapshot
/// (or empty) re-applies committed entries from its log, and a plugin
/// rebuild (live state kept) resumes after the applied position.
#[test]
fn recovery_reapplies_committed_entries() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[("snapshot-interval", "25")]), 18);
    let leader = cluster.wait_for_leader(2000);
    let mut last = 0;
    for i in 0..60 {
        last = cluster.propose(leader, format!("r{i}").as_bytes());
    }
    wait_applied(&mut cluster, &[1, 2, 3], last, 1000);
    // A few more, after the last snapshot.
    for i in 0..5 {
        last = cluster.propose(leader, format!("s{i}").as_bytes());
    }
    wait_applied(&mut cluster, &[1, 2, 3], last, 1000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let expected = cluster.host(leader).applied_ids();
    cluster.crash(follower, false);
    assert!(cluster.host(follower).applied.len() < expected.len());
    cluster.restart(follower);
    cluster.tick(100);
    assert_eq!(cluster.host(follower).applied_ids(), expected);
    cluster.crash(follower, true);
    cluster.restart(follower);
    let more = cluster.propose(leader, b"more");
    wait_applied(&mut cluster, &[1, 2, 3], more, 1000);
    // The leader itself restarts: a new election, nothing lost.
    cluster.crash(leader, false);
    cluster.restart(leader);
    let next = cluster.wait_for_leader(2000);
    let final_write = cluster.propose(next, b"final");
    wait_applied(&mut cluster, &[1, 2, 3], final_write, 1000);
    cluster.check_applied_prefixes();
    for node in 1..=3 {
        assert_eq!(
            cluster.host(node).applied_ids(),
            cluster.host(next).applied_ids()
        );
    }
}

/// Goal: a node that starts over a state machine that already applied
/// commands (a protocol swap) starts its log after them.
#[test]
fn starts_after_an_existing_state_machine_position() {
    let mut host = synod_guest_sdk::testing::MemoryHost::new(1);
    host.applied_position = 40;
    let config = InitConfig {
        self_id: 1,
        membership: member(&[1]),
        params: fast_params(&[]),
        recovering: false,
        applied_position: 40,
    };
    let mut raft = Raft::new(&mut host, config);
    assert_eq!(raft.log.last_index(), 40);
    let due = host.advance(250 * harness::NANOS_PER_MS);
    raft.on_timers(&mut host, due);
    assert_eq!(raft.role, RaftRole::Leader);
    raft.on_commands(&mut host, commands(&[(1, b"x")]));
    assert_eq!(host.applied_position, 42);
    assert_eq!(host.applied_ids(), vec![1]);
}

/// Goal: pipelining keeps at most `max-inflight-bytes` unacknowledged per
/// follower and `max-batch-bytes` per message.
#[test]
fn pipelining_respects_batch_and_inflight_bounds() {
    let mut cluster = Cluster::new(
        3,
        3,
        fast_params(&[("max-batch-bytes", "100"), ("max-inflight-bytes", "400")]),
        19,
    );
    let leader = cluster.wait_for_leader(2000);
    let payload = [7u8; 40];
    let batch: Vec<(RequestId, &[u8])> = (1000..1100).map(|id| (id, &payload[..])).collect();
    cluster.call(leader, |raft, host| {
        raft.on_commands(host, commands(&batch))
    });
    let mut appends = 0;
    cluster.deliver_where(|from, _, message| {
        if from == leader
            && let Message::Append { entries, .. } = message
            && !entries.ends.is_empty()
        {
            appends += 1;
            assert!(entries.data.0.len() <= 100 || entries.ends.len() == 1);
        }
        Verdict::Hold
    });
    // Two followers, each: at most 400 bytes in flight at ~57 bytes an entry.
    assert!(
        appends > 0 && appends <= 2 * 8,
        "{appends} messages in flight"
    );
    let progress = &cluster.raft(leader).lead.progress;
    assert!(progress.values().all(|p| p.inflight_bytes <= 400 + 100));
    cluster.settle();
    wait_applied(&mut cluster, &[1, 2, 3], 1099, 1000);
}

/// Goal: a single voter never lets a learner act on a term it may still
/// lose. With voters = {1} and a learner (every 1 → 3 growth passes
/// through it), the voter's own vote is the quorum: it wins a term and
/// commits in one callback, before that term is durable. Method: manual
/// durability. Node 1 restarts, wins term T alone and appends X; whatever
/// it sent reaches the learner, which persists it. Node 1 crashes before
/// its fsync (losing T and X), restarts, wins T again and appends Y at X's
/// index. Had the learner received X, it would compare by term only, keep
/// X and acknowledge it: the logs would diverge and it would apply X.
#[test]
fn a_single_voter_never_reveals_a_term_it_may_lose() {
    let mut cluster = Cluster::new(1, 2, fast_params(&[]), 30);
    assert_eq!(cluster.wait_for_leader(1000), 1);
    let grow = Membership {
        voters: vec![1],
        learners: vec![2],
    };
    assert_eq!(
        cluster.call(1, |raft, host| raft.on_membership(host, grow)),
        Ok(())
    );
    let first = cluster.propose(1, b"first");
    wait_applied(&mut cluster, &[1, 2], first, 1000);
    cluster.tick(50);
    // Node 1 restarts from durable storage and wins the next term alone.
    cluster.crash(1, false);
    cluster.restart(1);
    cluster.auto_sync = false;
    let before = cluster.raft(1).term;
    cluster.call(1, |raft, host| raft.campaign_now(host));
    assert_eq!(cluster.raft(1).role, RaftRole::Leader);
    let term = cluster.raft(1).term;
    assert_eq!(term, before + 1);
    let x = cluster.propose(1, b"X");
    let x_index = cluster.raft(1).log.last_index();
    assert!(cluster.is_applied(1, x), "a quorum of one commits at once");
    // Whatever left node 1 reaches the learner, which persists it and
    // answers.
    cluster.settle();
    cluster.sync(2);
    cluster.settle();
    // Node 1 crashes before its fsync: term T and X are gone.
    cluster.crash(1, false);
    cluster.restart(1);
    assert_eq!(cluster.raft(1).term, before);
    cluster.call(1, |raft, host| raft.campaign_now(host));
    assert_eq!(cluster.raft(1).term, term, "the same term again");
    let y = cluster.propose(1, b"Y");
    assert_eq!(cluster.raft(1).log.last_index(), x_index);
    cluster.auto_sync = true;
    cluster.sync(1);
    cluster.sync(2);
    wait_applied(&mut cluster, &[1], y, 1000);
    cluster.tick(300);
    assert_eq!(
        cluster.host(2).log.get(&x_index),
        cluster.host(1).log.get(&x_index),
        "the learner's log diverged from the leader's at {x_index}"
    );
    assert!(cluster.is_applied(2, y));
    assert!(
        !cluster.is_applied(2, x),
        "the learner applied a lost entry"
    );
    cluster.check_log_matching();
    cluster.check_applied_prefixes();
}

/// Goal: the receiver side of log matching (§5.3). An append whose entry
/// has the term of the entry held at its index but other bytes (only a
/// leader that lost its term in a crash and won it again could send one)
/// is refused and not acknowledged, instead of being taken for the entry
/// already held. Method: a follower holds an uncommitted X; it is sent a
/// forged entry of X's term at X's index.
#[test]
fn an_entry_rewritten_within_its_term_is_refused() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 31);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    cluster.propose(leader, b"X");
    let x_index = cluster.raft(leader).log.last_index();
    let term = cluster.raft(leader).term;
    cluster.deliver_where(|from, to, message| match message {
        Message::Append { .. } if (from, to) == (leader, follower) => Verdict::Deliver,
        _ => Verdict::Drop,
    });
    assert_eq!(cluster.raft(follower).log.last_index(), x_index);
    assert!(cluster.raft(follower).commit < x_index);
    let held = cluster.host(follower).log[&x_index].clone();
    let mut forged = Batch::new();
    crate::entry::push_command(&mut forged, term, 999, b"Y");
    let append = Message::Append {
        term,
        prev_index: x_index - 1,
        prev_term: cluster.raft(follower).log.term(x_index - 1).unwrap(),
        entries: crate::message::Entries::from_batch(forged),
    };
    let sent_before = cluster.raft(follower).counters.messages_sent;
    cluster.call(follower, |raft, host| {
        raft.on_messages(
            host,
            Messages {
                senders: vec![leader],
                payloads: Batch::from_items([append.encode()]),
            },
        )
    });
    let raft = cluster.raft(follower);
    assert_eq!(raft.counters.append_term_conflicts, 1);
    assert_eq!(
        raft.counters.messages_sent, sent_before,
        "no acknowledgement"
    );
    assert_eq!(cluster.host(follower).log[&x_index], held);
}

/// Goal: the driver's rule for an accepted snapshot offer, as this harness
/// models it (the real host core is held to the same rule by
/// `synod::region::snapshot_tests::raft_install_survives_a_crash_after_the_image_is_saved`):
/// a crash right after the install, before the replica's next callback,
/// brings the node back with the installed image and its install marker,
/// and recovery finishes the install instead of failing or forgetting it.
#[test]
fn a_snapshot_install_survives_a_crash_before_it_is_finished() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[("snapshot-interval", "10")]), 32);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    for i in 0..15 {
        cluster.propose(leader, format!("early-{i}").as_bytes());
    }
    cluster.tick(50);
    assert!(cluster.host(follower).applied_position > 0);
    cluster.isolate(&[follower]);
    for i in 0..60 {
        cluster.propose(leader, format!("v{i}").as_bytes());
        cluster.tick(1);
    }
    cluster.tick(20);
    let before = cluster.host(follower).applied_position;
    let sent = cluster.raft(leader).counters.snapshots_sent;
    cluster.heal();
    cluster.wait_until(1000, "a snapshot is shipped", |c| {
        c.raft(leader).counters.snapshots_sent > sent
    });
    cluster.sync(leader);
    // Only the shipment arrives; nothing else reaches the follower.
    cluster.deliver_where(|_, _, _| Verdict::Hold);
    let installed = cluster.host(follower).applied_position;
    assert!(installed > before, "the follower accepted the snapshot");
    assert_eq!(cluster.raft(follower).counters.snapshots_installed, 0);
    cluster.crash(follower, false);
    cluster.restart(follower);
    assert_eq!(cluster.host(follower).applied_position, installed);
    assert_eq!(cluster.raft(follower).snapshot_meta.index, installed);
    assert_eq!(cluster.raft(follower).counters.snapshots_installed, 1);
    let after = cluster.propose(leader, b"after");
    wait_applied(&mut cluster, &[1, 2, 3], after, 1000);
    cluster.check_applied_prefixes();
}

/// Goal: a sealed replica that restarts from an older snapshot (here: none)
/// re-applies through the seal on its own, without a leader: during a swap
/// the other replicas may already be in the next epoch, and it must report
/// (and switch from) the sealed state, not a stale one.
#[test]
fn a_restarted_sealed_replica_reapplies_through_the_seal_alone() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 31);
    let leader = cluster.wait_for_leader(2000);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let write = cluster.propose(leader, b"before the seal");
    wait_applied(&mut cluster, &[1, 2, 3], write, 1000);
    cluster.call(leader, |raft, host| raft.seal(host));
    cluster.tick(100);
    let SealProgress::Sealed(index) = cluster.call(follower, |raft, host| raft.seal(host)) else {
        panic!("follower did not seal");
    };
    let sealed_state = cluster.host(follower).applied.clone();
    // Restart from storage; the state machine comes back empty (no
    // snapshot), and nobody can reach the node.
    cluster.crash(follower, false);
    assert!(cluster.host(follower).applied.is_empty());
    let others: Vec<NodeId> = (1..=3).filter(|&n| n != follower).collect();
    cluster.isolate(&others);
    cluster.restart(follower);
    cluster.tick(50);
    assert_eq!(cluster.host(follower).applied, sealed_state);
    assert_eq!(
        cluster.call(follower, |raft, host| raft.seal(host)),
        SealProgress::Sealed(index)
    );
}

/// Goal: after a protocol swap every replica starts Raft over empty storage
/// at its state machine's position. One that starts lower (it was down
/// during the seal) never wins an election over a replica at the boundary,
/// and is caught up by the leader's snapshot.
#[test]
fn a_replica_starting_below_the_swap_boundary_is_caught_up_by_snapshot() {
    let mut cluster = Cluster::new(3, 3, fast_params(&[]), 32);
    cluster.drop_queued();
    let state: Vec<(RequestId, Vec<u8>)> = (1..=40u64)
        .map(|id| (id, format!("old {id}").into_bytes()))
        .collect();
    cluster.swap_start(1, (40, state.clone()));
    cluster.swap_start(2, (40, state.clone()));
    cluster.swap_start(3, (10, state[..10].to_vec()));
    // Node 1 is cut off: only 2 (at the boundary) and 3 (below it) can
    // form a majority, and only 2 may lead it.
    cluster.isolate(&[1]);
    let leader = cluster.wait_for_leader(3000);
    assert_eq!(leader, 2, "the replica below the boundary must not lead");
    cluster.tick(500);
    assert_eq!(cluster.leader(), Some(2));
    cluster.heal();
    let write = cluster.propose(2, b"new epoch");
    wait_applied(&mut cluster, &[1, 2, 3], write, 2000);
    assert!(cluster.raft(3).counters.snapshots_installed >= 1);
    assert_eq!(cluster.host(3).applied, cluster.host(2).applied);
    assert_eq!(cluster.host(1).applied, cluster.host(2).applied);
    assert_eq!(cluster.host(3).applied[..40], state[..]);
    cluster.check_applied_prefixes();
    cluster.check_log_matching();
}

/// At a swap boundary the replica the host names (`synod.first-leader`)
/// campaigns at once: the new epoch has a leader within a few round trips,
/// well before any election timeout (100 ms here) could fire. Without the
/// hint the first election waits at least one timeout.
#[test]
fn the_named_first_leader_of_a_new_epoch_campaigns_at_once() {
    for (hint, bound_ms) in [(Some("3"), 30), (None, 100)] {
        let mut cluster = Cluster::new(3, 3, fast_params(&[]), 77);
        cluster.drop_queued();
        if let Some(hint) = hint {
            cluster.add_param(crate::raft::FIRST_LEADER_PARAM, hint);
        }
        let state: Vec<(RequestId, Vec<u8>)> = (1..=20u64)
            .map(|id| (id, format!("old {id}").into_bytes()))
            .collect();
        for id in 1..=3 {
            cluster.swap_start(id, (20, state.clone()));
        }
        let started = cluster.now_ms;
        let leader = cluster.wait_for_leader(3000);
        let took = cluster.now_ms - started;
        match hint {
            Some(_) => {
                assert_eq!(leader, 3, "the named replica leads");
                assert!(took < bound_ms, "elected after {took} ms");
            }
            None => assert!(took >= bound_ms, "elected after {took} ms without a hint"),
        }
        let write = cluster.propose(leader, b"new epoch");
        wait_applied(&mut cluster, &[1, 2, 3], write, 2000);
        cluster.check_applied_prefixes();
    }
}
