//! Randomized fault-injection runs, one per seed.
//!
//! Goal: safety under every fault the harness can inject, then liveness
//! once the faults stop. Method: each seed picks the cluster size, the
//! snapshot interval, lease reads, batch size and the network's loss,
//! duplication and delay, then runs a safety phase of random writes, reads,
//! partitions, crashes (node restarts and plugin rebuilds), restarts,
//! leadership transfers and membership changes. The harness checks after
//! every callback that no term has two leaders and at every sync that
//! committed entries never change; this file adds that linearizable and
//! lease reads reflect every write applied anywhere (and synced) before they
//! were issued, that applied
//! sequences are prefixes of each other and that logs match. The liveness
//! phase heals everything and requires a new write to reach every member.
//! A failure names its seed; rerun one with `RAFT_SEED=<seed>`.

use std::collections::BTreeMap;

use synod_guest_sdk::*;

use super::harness::{Cluster, Faults, fast_params};
use crate::raft::RaftRole;

const SEEDS: u64 = 200;
const SAFETY_PHASE_MS: u64 = 1_500;
const LIVENESS_PHASE_MS_MAX: u64 = 5_000;

#[test]
fn randomized_safety_and_liveness() {
    if let Ok(seed) = std::env::var("RAFT_SEED") {
        run_seed(seed.parse().expect("RAFT_SEED is a number"));
        return;
    }
    // `RAFT_SEEDS=first..last` sweeps another range (the coverage bounds
    // below are tuned for the default 200 seeds).
    let range = std::env::var("RAFT_SEEDS")
        .ok()
        .and_then(|value| {
            let (first, last) = value.split_once("..")?;
            Some(first.parse().ok()?..last.parse().ok()?)
        })
        .unwrap_or(0..SEEDS);
    let seeds = range.end - range.start;
    let mut total = Coverage::default();
    for seed in range {
        let coverage = run_seed(seed);
        total.add(&coverage);
    }
    eprintln!("randomized coverage over {seeds} seeds: {total:?}");
    // The runs must exercise what they claim to.
    assert!(total.terms > seeds * 3, "{total:?}");
    assert!(total.committed > seeds * 50, "{total:?}");
    assert!(total.reads_checked > seeds * 10, "{total:?}");
    assert!(total.snapshots_installed > seeds / 10, "{total:?}");
    assert!(total.config_changes > seeds / 4, "{total:?}");
    assert!(total.transfers > seeds / 10, "{total:?}");
    assert!(total.crashes > seeds, "{total:?}");
}

/// What one run exercised.
#[derive(Debug, Default)]
struct Coverage {
    terms: u64,
    committed: u64,
    reads_checked: u64,
    snapshots_installed: u64,
    config_changes: u64,
    transfers: u64,
    crashes: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.terms += other.terms;
        self.committed += other.committed;
        self.reads_checked += other.reads_checked;
        self.snapshots_installed += other.snapshots_installed;
        self.config_changes += other.config_changes;
        self.transfers += other.transfers;
        self.crashes += other.crashes;
    }
}

/// Reads waiting for an answer: id → (node, writes applied somewhere when
/// the read was issued).
type PendingReads = BTreeMap<RequestId, (NodeId, usize)>;

fn run_seed(seed: u64) -> Coverage {
    let voters = if seed.is_multiple_of(3) { 3 } else { 5 };
    let nodes = voters + 1;
    let snapshot_interval = ["0", "15", "40"][(seed / 3 % 3) as usize];
    let lease = if seed.is_multiple_of(2) {
        "true"
    } else {
        "false"
    };
    let batch = if seed.is_multiple_of(5) {
        "200"
    } else {
        "1048576"
    };
    let mut cluster = Cluster::new(
        voters,
        nodes,
        fast_params(&[
            ("snapshot-interval", snapshot_interval),
            ("lease-reads", lease),
            ("clock-drift-ms", "20"),
            ("max-batch-bytes", batch),
        ]),
        seed,
    );
    let loss = cluster.random() % 120;
    let duplicate = cluster.random() % 60;
    let delay = 1 + cluster.random() % 12;
    cluster.faults = Faults {
        loss_per_mille: loss,
        duplicate_per_mille: duplicate,
        delay_ms_max: delay,
    };
    let context = format!(
        "seed {seed}: {voters} voters, snapshot-interval {snapshot_interval}, lease {lease}, \
         batch {batch}, loss {loss}‰, duplicate {duplicate}‰, delay ≤ {delay} ms"
    );
    let mut reads = PendingReads::new();
    let mut writes = 0u64;
    let mut coverage = Coverage::default();
    for ms in 0..SAFETY_PHASE_MS {
        random_event(&mut cluster, &mut reads, &mut writes, &mut coverage);
        cluster.tick(1);
        coverage.reads_checked += check_reads(&mut cluster, &mut reads, &context);
        if ms % 100 == 0 {
            cluster.check_applied_prefixes();
        }
    }

    // Liveness: no more faults; every node back.
    cluster.heal();
    cluster.faults = Faults::NONE;
    for id in 1..=nodes {
        if !cluster.is_up(id) {
            cluster.restart(id);
        }
    }
    let mut marker = None;
    let mut done = false;
    for _ in 0..LIVENESS_PHASE_MS_MAX {
        cluster.tick(1);
        coverage.reads_checked += check_reads(&mut cluster, &mut reads, &context);
        let Some(leader) = cluster.leader() else {
            continue;
        };
        let raft = cluster.raft(leader);
        if raft.commit < raft.lead.term_start_index {
            continue;
        }
        let id = match marker {
            Some((at, id)) if at == leader && cluster.rejection(leader, id).is_none() => id,
            _ => {
                let id = cluster.propose(leader, format!("marker-{seed}").as_bytes());
                marker = Some((leader, id));
                id
            }
        };
        let members: Vec<NodeId> = cluster.raft(leader).config.members().collect();
        if members.iter().all(|&member| cluster.is_applied(member, id)) {
            done = true;
            break;
        }
    }
    assert!(
        done,
        "{context}: no progress after healing (leader {:?}, roles {:?})",
        cluster.leader(),
        (1..=nodes)
            .map(|id| (
                id,
                cluster.raft(id).role,
                cluster.raft(id).term,
                cluster.raft(id).commit
            ))
            .collect::<Vec<_>>()
    );
    cluster.check_applied_prefixes();
    cluster.check_log_matching();
    coverage.terms = cluster.leaders_by_term.len() as u64;
    coverage.committed = cluster.committed.len() as u64;
    for id in 1..=nodes {
        let counters = &cluster.raft(id).counters;
        coverage.snapshots_installed += counters.snapshots_installed;
        coverage.config_changes += counters.config_changes_proposed;
        coverage.transfers += counters.timeout_now_received;
    }
    if std::env::var("RAFT_VERBOSE").is_ok() {
        eprintln!("{context}: {coverage:?}");
    }
    coverage
}

fn random_event(
    cluster: &mut Cluster,
    reads: &mut PendingReads,
    writes: &mut u64,
    coverage: &mut Coverage,
) {
    let nodes = cluster.nodes.len() as u64;
    let up: Vec<NodeId> = (1..=nodes).filter(|&id| cluster.is_up(id)).collect();
    let down: Vec<NodeId> = (1..=nodes).filter(|&id| !cluster.is_up(id)).collect();
    let leader = cluster.leader();
    let pick = |cluster: &mut Cluster, from: &[NodeId]| -> Option<NodeId> {
        if from.is_empty() {
            None
        } else {
            Some(from[(cluster.random() % from.len() as u64) as usize])
        }
    };
    // Writes, mostly to the leader.
    if cluster.chance(250) {
        let at = match leader {
            Some(leader) if cluster.chance(800) => Some(leader),
            _ => pick(cluster, &up),
        };
        if let Some(at) = at {
            *writes += 1;
            let payload = format!("w{}-{}", cluster.now_ms, writes);
            cluster.propose(at, payload.as_bytes());
        }
    }
    // Reads at every level.
    if cluster.chance(120) {
        let at = match leader {
            Some(leader) if cluster.chance(700) => Some(leader),
            _ => pick(cluster, &up),
        };
        if let Some(at) = at {
            let level = match cluster.random() % 3 {
                0 => ReadLevel::Linearizable,
                1 => ReadLevel::Lease,
                _ => ReadLevel::Local,
            };
            // Writes applied (hence committed) where clients could see
            // them: as of each node's last sync.
            let required = cluster
                .nodes
                .values()
                .map(|node| node.host.synced_applied)
                .max()
                .unwrap_or(0);
            let id = cluster.read(at, level);
            if level != ReadLevel::Local {
                reads.insert(id, (at, required));
            }
        }
    }
    // Partitions and healing.
    if cluster.chance(6) {
        let size = 1 + cluster.random() % (nodes / 2);
        let mut group = Vec::new();
        for _ in 0..size {
            group.push(1 + cluster.random() % nodes);
        }
        cluster.isolate(&group);
    }
    if cluster.chance(6) {
        // One broken link (both directions): the non-transitive partitions
        // that leader stickiness and leases must survive.
        let a = 1 + cluster.random() % nodes;
        let b = 1 + cluster.random() % nodes;
        cluster.cut.insert((a, b));
        cluster.cut.insert((b, a));
    }
    if cluster.chance(10) {
        cluster.heal();
    }
    // Crashes: a node restart (state machine from its snapshot) or a plugin
    // rebuild (live state kept).
    if cluster.chance(4)
        && let Some(victim) = pick(cluster, &up)
    {
        let keep_state = cluster.chance(500);
        cluster.crash(victim, keep_state);
        coverage.crashes += 1;
    }
    if cluster.chance(15)
        && let Some(back) = pick(cluster, &down)
    {
        cluster.restart(back);
    }
    // Operator requests at the leader.
    if let Some(leader) = cluster.leader() {
        if cluster.chance(3) {
            let target = if cluster.chance(500) {
                None
            } else {
                Some(1 + cluster.random() % nodes)
            };
            let _ = cluster.call(leader, |raft, host| raft.transfer_leader(host, target));
        }
        if cluster.chance(3) {
            let config = cluster.raft(leader).config.clone();
            let node = 1 + cluster.random() % nodes;
            let mut target = config.to_membership();
            if config.is_voter(node) {
                if config.voters.len() > 2 {
                    target.voters.retain(|&v| v != node);
                    if cluster.chance(500) {
                        target.learners.push(node);
                    }
                }
            } else {
                target.learners.retain(|&l| l != node);
                target.voters.push(node);
            }
            let _ = cluster.call(leader, |raft, host| raft.on_membership(host, target));
        }
    }
    if let Some(leader) = cluster.leader() {
        assert_eq!(cluster.raft(leader).role, RaftRole::Leader);
    }
}

/// Every answered linearizable or lease read reflects every write that was
/// applied anywhere (hence committed) before the read was issued.
fn check_reads(cluster: &mut Cluster, reads: &mut PendingReads, context: &str) -> u64 {
    let mut checked = 0;
    for (&id, node) in cluster.nodes.iter_mut() {
        for (read, applied) in node.host.read_results.drain(..) {
            if let Some((at, required)) = reads.remove(&read) {
                checked += 1;
                assert_eq!(at, id);
                assert!(
                    applied >= required,
                    "{context}: read {read} at node {id} saw {applied} writes, {required} were applied before it"
                );
            }
        }
    }
    checked
}
