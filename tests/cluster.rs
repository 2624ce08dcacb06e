//! Raft on a real cluster of node processes: kill -9 the leader under load,
//! pause a follower, catch up by log and by snapshot, change membership
//! under load. Every recorded client history must be linearizable and the
//! replicas must converge.

use std::sync::Arc;
use std::time::Duration;

use synod::checker::{CheckOptions, Outcome, check_linearizable};
use synod::tools::cluster::LocalCluster;
use synod::tools::workload::{Recorder, Workload, WorkloadReport};
use synod_tests::cluster::{
    self as support, assert_converged, assert_linearizable, assert_replica_deleted, start_workload,
};
use synod_tests::node_binary;

async fn cluster(size: u64) -> (LocalCluster, tempfile::TempDir) {
    support::start(node_binary!(), size).await
}

async fn raft_region(cluster: &LocalCluster, name: &str, params: &[(&str, &str)]) {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cluster
        .client(1)
        .expect("client")
        .create_region(name, "raft", &params)
        .await
        .expect("create region");
    cluster
        .wait_for_leader(name, Duration::from_secs(20))
        .await
        .expect("a leader is elected");
}

/// Like [`start_workload`] over the binary wire protocol, one connection
/// per node, with client ids from 1000 so both can share a recorder.
async fn start_wire_workload(
    cluster: &LocalCluster,
    region: &str,
    clients: usize,
    seconds: f64,
    recorder: &Arc<Recorder>,
) -> tokio::task::JoinHandle<WorkloadReport> {
    let mut endpoints = Vec::new();
    for id in cluster.nodes.keys() {
        let client = cluster
            .wire_client(*id, Duration::from_secs(5))
            .await
            .expect("wire connection");
        endpoints.push(client);
    }
    let mut workload = Workload::new(region, clients);
    workload.keys = 16;
    workload.client_id_base = 1000;
    tokio::spawn(synod::tools::workload::run(
        endpoints,
        workload,
        Duration::from_secs_f64(seconds),
        Some(recorder.clone()),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_the_leader_under_load() {
    let (mut cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 6, 6.0, &recorder);
    let wire_load = start_wire_workload(&cluster, "r", 6, 6.0, &recorder).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_leader = cluster.leader_of("r").await.expect("leader");
    cluster.kill(old_leader).expect("kill");
    let new_leader = cluster
        .wait_for_leader("r", Duration::from_secs(10))
        .await
        .expect("a new leader is elected");
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(old_leader).await.expect("restart");
    let report = load.await.expect("workload");
    assert!(report.completed() > 100, "progress: {}", report.completed());
    let wire_report = wire_load.await.expect("wire workload");
    assert!(
        wire_report.completed() > 100,
        "wire progress: {}",
        wire_report.completed()
    );
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    assert_linearizable(&recorder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_catches_up_by_snapshot_after_compaction() {
    let (mut cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[
            ("snapshot-interval", "40"),
            ("election-timeout-ms", "300"),
            ("heartbeat-ms", "50"),
        ],
    )
    .await;
    let leader = cluster.leader_of("r").await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower).expect("kill follower");
    // Over two snapshot chunks of state, so the catch-up reassembles chunks.
    let big = "b".repeat(900_000);
    let chunks_of_state = synod::transport::SNAPSHOT_CHUNK_BYTES * 2 / big.len() + 1;
    let leader_client = cluster.client(leader).expect("client");
    for i in 0..chunks_of_state {
        leader_client
            .put("r", &format!("big-{i}"), &big)
            .await
            .expect("large put");
    }
    // Enough writes to compact the log, however slow the machine is today
    // (rounds of load until then, not a fixed time).
    let recorder = Arc::new(Recorder::default());
    let mut writes = 0;
    for round in 0..10 {
        let mut workload = Workload::new("r", 4);
        workload.keys = 16;
        // Distinct client ids per round keep every written value unique.
        workload.client_id_base = 100 * round;
        let report = tokio::spawn(synod::tools::workload::run(
            cluster.clients(),
            workload,
            Duration::from_secs_f64(2.5),
            Some(recorder.clone()),
        ))
        .await
        .expect("workload");
        eprintln!(
            "workload: {} ok, {} errors",
            report.completed(),
            report.errors
        );
        writes += report.writes;
        if writes > 200 {
            break;
        }
    }
    assert!(writes > 200, "enough writes to compact the log ({writes})");
    let status = cluster
        .client(leader)
        .expect("client")
        .region_status("r")
        .await
        .expect("status");
    assert!(
        status["log"]["first"].as_u64().unwrap_or(0) > 1,
        "the leader compacted: {status}"
    );
    cluster.restart(follower).await.expect("restart follower");
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    let caught_up = cluster
        .client(follower)
        .expect("client")
        .region_status("r")
        .await
        .expect("status");
    assert!(
        caught_up["log"]["first"].as_u64().unwrap_or(0) > 1,
        "the follower installed a snapshot rather than replaying from 1: {caught_up}"
    );
    assert_linearizable(&recorder);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstop_a_follower_and_resume() {
    let (cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    let leader = cluster.leader_of("r").await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 4, 5.0, &recorder);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pause(follower).expect("SIGSTOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume(follower).expect("SIGCONT");
    let report = load.await.expect("workload");
    assert!(
        report.completed() > 100,
        "writes went on with a follower paused"
    );
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    assert_linearizable(&recorder);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_a_fourth_node_and_remove_one_under_load() {
    let (mut cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 4, 7.0, &recorder);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster
        .add_node(4, 1)
        .await
        .expect("node 4 joins the cluster");
    let entry = cluster.client(1).expect("client");
    let leader = cluster.leader_of("r").await.expect("leader");
    let removed = (1..=3)
        .find(|id| *id != leader)
        .expect("a follower to remove");
    let mut voters: Vec<u64> = (1..=4).filter(|id| *id != removed).collect();
    voters.sort_unstable();
    entry
        .change_membership("r", &voters, &[])
        .await
        .expect("membership change accepted");
    // Wait until the leader reports node 4 as a voter and the removed node gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.leader_of("r").await;
        if let Some(leader) = leader
            && let Ok(status) = cluster
                .client(leader)
                .expect("client")
                .region_status("r")
                .await
        {
            let peers: Vec<u64> = status["plugin"]["peers"]
                .as_array()
                .map(|p| p.iter().filter_map(|x| x[0].as_u64()).collect())
                .unwrap_or_default();
            if peers.contains(&4) && !peers.contains(&removed) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "membership change did not complete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.await.expect("workload");
    assert!(report.completed() > 100);
    assert_converged(&cluster, "r", &voters).await;
    assert_linearizable(&recorder);
    // No idle replica is left behind: the removed node deletes its replica.
    assert_replica_deleted(&cluster, "r", removed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn move_a_replica_under_load() {
    let (mut cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    cluster
        .add_node(4, 1)
        .await
        .expect("node 4 joins the cluster");
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 4, 6.0, &recorder);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader_of("r").await.expect("leader");
    let from = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster
        .client(1)
        .expect("client")
        .move_replica("r", from, 4)
        .await
        .expect("move accepted");
    let report = load.await.expect("workload");
    assert!(report.completed() > 100);
    let members: Vec<u64> = (1..=4).filter(|id| *id != from).collect();
    assert_converged(&cluster, "r", &members).await;
    assert_linearizable(&recorder);
    assert_replica_deleted(&cluster, "r", from).await;
    let record = cluster
        .client(1)
        .expect("client")
        .region_record("r")
        .await
        .expect("record");
    let voters: Vec<u64> = record["record"]["spec"]["voters"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(voters, members, "the record's hosts shrank to the target");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_change_survives_the_leader_that_took_it() {
    let (mut cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    cluster
        .add_node(4, 1)
        .await
        .expect("node 4 joins the cluster");
    let leader = cluster.leader_of("r").await.expect("leader");
    // Frozen, node 4 cannot catch up, so the leader that accepts the change
    // cannot finish it before it dies.
    cluster.pause(4).expect("pause node 4");
    cluster
        .client(leader)
        .expect("client")
        .change_membership("r", &[1, 2, 3, 4], &[])
        .await
        .expect("membership change accepted");
    // Let the spec (with the target) reach the other nodes, then kill it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader).expect("kill the leader");
    // (Resumed before polling statuses: a frozen node would not answer.)
    cluster.resume(4).expect("resume node 4");
    let new_leader = cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    eprintln!("node {new_leader} leads after node {leader} died");
    // The new leader is asked for the target again and makes node 4 a voter.
    let started = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let role = cluster
            .client(4)
            .expect("client")
            .region_status("r")
            .await
            .ok()
            .and_then(|status| status["plugin"]["role"].as_str().map(str::to_string));
        if matches!(role.as_deref(), Some("follower" | "leader")) {
            eprintln!("node 4 became a voter after {:?}", started.elapsed());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 never became a voter (role {role:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster
        .restart(leader)
        .await
        .expect("restart the old leader");
    assert_converged(&cluster, "r", &[1, 2, 3, 4]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_transfer_moves_leadership() {
    let (cluster, _dir) = cluster(3).await;
    raft_region(
        &cluster,
        "r",
        &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
    )
    .await;
    let leader = cluster.leader_of("r").await.expect("leader");
    let target = (1..=3).find(|id| *id != leader).expect("target");
    // A transfer is best-effort (it aborts after an election timeout, e.g.
    // on a saturated machine); ask again until it lands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    'transfer: loop {
        let _ = cluster
            .client(1)
            .expect("client")
            .transfer_leader("r", Some(target))
            .await;
        for _ in 0..30 {
            if cluster.leader_of("r").await == Some(target) {
                break 'transfer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership did not move to {target}"
        );
    }
}

#[test]
fn the_checker_catches_an_injected_stale_read() {
    use synod::checker::{OpInput, OpOutput, Operation};
    let op = |client, call, ret, input, output| Operation {
        client,
        key: "x".into(),
        call,
        ret,
        input,
        output,
    };
    let mut history = vec![
        op(1, 0, 10, OpInput::Put { value: "1".into() }, OpOutput::Ok),
        op(2, 20, 30, OpInput::Put { value: "2".into() }, OpOutput::Ok),
        op(3, 40, 50, OpInput::Get, OpOutput::Value(Some("2".into()))),
    ];
    assert_eq!(
        check_linearizable(&history, &CheckOptions::default()),
        Outcome::Linearizable
    );
    // The same read returning the overwritten value is stale.
    history[2].output = OpOutput::Value(Some("1".into()));
    assert!(matches!(
        check_linearizable(&history, &CheckOptions::default()),
        Outcome::Violation(_)
    ));
}
