//! Live protocol swap on a real cluster of node processes, under
//! continuous client load: no acknowledged write is lost, replicas
//! converge, and the history stays linearizable across strong protocols.
//! Then the coordinating node is killed (a failpoint aborts it) at each
//! step of a swap, and the swap must finish or be abandoned cleanly.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use synod::tools::cluster::LocalCluster;
use synod::tools::workload::Recorder;
use synod_tests::cluster::{
    assert_converged, assert_linearizable, assert_replica_deleted, start, start_workload,
};
use synod_tests::{node_binary, sha256_hex, with_custom_section};

async fn cluster(size: u64) -> (LocalCluster, tempfile::TempDir) {
    start(node_binary!(), size).await
}

/// Creates `region` through node 1 and, for raft, waits for a leader.
async fn create(cluster: &LocalCluster, region: &str, protocol: &str, replicas: &[u64]) {
    cluster
        .client(1)
        .expect("client")
        .create_region_on(region, protocol, &[], Some(replicas))
        .await
        .expect("create region");
    if protocol != "standalone" {
        // Every replica runs (a node that does not host it yet cannot
        // answer or redirect a client).
        for id in replicas {
            let client = cluster.client(*id).expect("client");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !client
                .region_status(region)
                .await
                .is_ok_and(|status| !status["plugin"].is_null())
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {id} never ran {region}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    if protocol != "standalone" && protocol != "multi-master" && protocol != "epaxos" {
        cluster
            .wait_for_leader(region, Duration::from_secs(20))
            .await
            .expect("leader");
    }
}

/// The region's record, as any running node answers it.
async fn record(cluster: &LocalCluster, region: &str) -> Value {
    for client in cluster.clients() {
        if let Ok(answer) = client.region_record(region).await {
            return answer;
        }
    }
    panic!("no running node answers the record of {region}");
}

/// Waits until no running node's record shows a swap of `region` in
/// progress and all agree on its epoch; returns the record.
async fn settled(cluster: &LocalCluster, region: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut answers = Vec::new();
        for client in cluster.clients() {
            if let Ok(answer) = client.region_record(region).await {
                answers.push(answer);
            }
        }
        let done = !answers.is_empty()
            && answers.len() == cluster.clients().len()
            && answers.iter().all(|a| a["record"]["swap"].is_null())
            && answers
                .iter()
                .all(|a| a["record"]["spec"]["epoch"] == answers[0]["record"]["spec"]["epoch"]);
        if done {
            return answers.swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the swap of {region} did not settle within {timeout:?}: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every member of the record's epoch runs `region` in that epoch, on the
/// recorded protocol (hosts enter lazily, hence the wait).
async fn assert_one_epoch(cluster: &LocalCluster, region: &str, record: &Value) -> Vec<u64> {
    let spec = &record["record"]["spec"];
    let epoch = spec["epoch"].as_u64().expect("epoch");
    let voters: Vec<u64> = spec["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut protocols = std::collections::BTreeSet::new();
    for id in &voters {
        loop {
            let status = cluster
                .client(*id)
                .expect("client")
                .region_status(region)
                .await;
            match status {
                Ok(status) if status["epoch"].as_u64() == Some(epoch) => {
                    protocols.insert(status["protocol"]["id"].to_string());
                    break;
                }
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {id} is not in epoch {epoch} of {region}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        protocols.len(),
        1,
        "members of epoch {epoch} run {protocols:?}"
    );
    voters
}

/// Swaps `region` (running `from` on `before`) to `to` on `after` under
/// load; checks the epoch moved, the members agree, nothing was lost.
async fn swap_under_load(
    cluster: &LocalCluster,
    from: &str,
    before: &[u64],
    to: &str,
    after: &[u64],
) -> Value {
    create(cluster, "r", from, before).await;
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(cluster, "r", 6, 6.0, &recorder);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcome = cluster
        .client(1)
        .expect("client")
        .swap_region("r", to, None, Some(after), false, Duration::from_secs(30))
        .await
        .expect("swap");
    assert_eq!(outcome["epoch"], 2, "{outcome}");
    assert_eq!(outcome["rolled_back"], false, "{outcome}");
    let report = load.await.expect("workload");
    eprintln!(
        "{from} -> {to}: {} ok, {} errors",
        report.completed(),
        report.errors
    );
    assert!(report.completed() > 100, "the workload ran");
    let record = settled(cluster, "r", Duration::from_secs(5)).await;
    let members = assert_one_epoch(cluster, "r", &record).await;
    assert_eq!(members, after);
    assert_converged(cluster, "r", after).await;
    assert_linearizable(&recorder);
    let epochs = record["record"]["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 2, "{record}");
    assert_eq!(epochs[1]["requested"], to);
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_to_raft_on_its_node_under_load() {
    let (cluster, _dir) = cluster(3).await;
    swap_under_load(&cluster, "standalone", &[1], "raft", &[1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_to_epaxos_under_load() {
    let (cluster, _dir) = cluster(3).await;
    swap_under_load(&cluster, "raft", &[1, 2, 3], "epaxos", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn epaxos_to_raft_under_load() {
    let (cluster, _dir) = cluster(3).await;
    swap_under_load(&cluster, "epaxos", &[1, 2, 3], "raft", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_to_epaxos_on_its_node_under_load() {
    let (cluster, _dir) = cluster(3).await;
    swap_under_load(&cluster, "standalone", &[1], "epaxos", &[1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn epaxos_to_standalone_under_load_drops_the_other_replicas() {
    let (cluster, _dir) = cluster(3).await;
    swap_under_load(&cluster, "epaxos", &[1, 2, 3], "standalone", &[1]).await;
    for id in [2, 3] {
        assert_replica_deleted(&cluster, "r", id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_to_standalone_under_load_drops_the_other_replicas() {
    let (cluster, _dir) = cluster(3).await;
    let record = swap_under_load(&cluster, "raft", &[1, 2, 3], "standalone", &[1]).await;
    let epochs = record["record"]["epochs"].as_array().expect("epochs");
    assert_eq!(epochs[0]["voters"], serde_json::json!([1, 2, 3]));
    assert_eq!(epochs[1]["voters"], serde_json::json!([1]));
    // The dropped replicas delete their data and confirm it.
    for id in [2, 3] {
        assert_replica_deleted(&cluster, "r", id).await;
    }
    let record = settled(&cluster, "r", Duration::from_secs(20)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut record = record;
    while record["record"]["retired"] != serde_json::json!([]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped replicas never confirmed: {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        record = settled(&cluster, "r", Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_to_a_rebuilt_raft_under_load() {
    let (cluster, _dir) = cluster(3).await;
    let rebuilt = with_custom_section(synod_plugin_artifacts::RAFT_WASM, "synod-test", b"v2");
    let digest = sha256_hex(&rebuilt);
    assert_ne!(digest, sha256_hex(synod_plugin_artifacts::RAFT_WASM));
    let published = cluster
        .client(1)
        .expect("client")
        .publish_component(rebuilt)
        .await
        .expect("publish v2");
    assert_eq!(published["digest"], digest.as_str(), "{published}");
    let to = format!("sha256:{digest}");
    swap_under_load(&cluster, "raft", &[1, 2, 3], &to, &[1, 2, 3]).await;
    let status = cluster
        .client(2)
        .expect("client")
        .region_status("r")
        .await
        .expect("status");
    assert!(
        status["protocol"]["id"]
            .as_str()
            .is_some_and(|id| id.contains(&digest)),
        "node 2 runs the rebuilt component: {}",
        status["protocol"]
    );
}

/// Standalone keeps one copy; raft on three new voters would let the two
/// empty replicas out-vote the only one holding the data. The swap must
/// not commit, must say why, and must not leave the region refusing
/// writes.
#[tokio::test(flavor = "multi_thread")]
async fn standalone_to_raft_on_three_voters_is_not_committed() {
    let (cluster, _dir) = cluster(3).await;
    create(&cluster, "r", "standalone", &[1]).await;
    let client = cluster.client(1).expect("client");
    client.put("r", "before", "1").await.expect("put");
    let answer = client
        .swap_region(
            "r",
            "raft",
            None,
            Some(&[1, 2, 3]),
            false,
            Duration::from_secs(3),
        )
        .await;
    eprintln!("swap answer: {answer:?}");
    let record = record(&cluster, "r").await;
    eprintln!("record: {record}");
    assert_eq!(record["record"]["spec"]["epoch"], 1, "not committed");
    let why = record["swap_waiting_for"]
        .as_str()
        .map(str::to_string)
        .or_else(|| answer.err().map(|e| e.to_string()))
        .unwrap_or_default();
    assert!(
        why.contains("majority") || why.contains("new voters"),
        "the refusal says why: {why}"
    );
    // Writes still flow on the single copy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.put("r", "after", "2").await {
            Ok(()) => break,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "the region refuses writes while the swap cannot commit: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client
            .get("r", "before", "linearizable")
            .await
            .expect("get"),
        Some("1".into())
    );
}

/// A control-plane leader that every running node names, twice over a
/// pause (a restart can trigger an election right after it is answered).
async fn stable_control_leader(cluster: &LocalCluster) -> u64 {
    let mut previous = None;
    for _ in 0..20 {
        let leader = cluster
            .wait_for_control_leader(Duration::from_secs(20))
            .await
            .expect("control leader");
        if previous == Some(leader) {
            return leader;
        }
        previous = Some(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    panic!("the control-plane leader kept changing");
}

/// Points reached by every host of the swap, not only the coordinator.
const HOST_POINTS: [&str; 2] = ["swap-after-sealed", "swap-before-enter"];

/// Kills the control-plane leader at `point` of a swap under load,
/// restarts it clean, and checks the swap finished or was abandoned with
/// nothing lost. Coordinator points are armed on every node (whichever
/// leads, it is the one to reach them); host points on the leader only.
async fn crash_at(point: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let env = [("SYNOD_FAILPOINTS", point)];
    let mut cluster = LocalCluster::start_with_env(&binary, dir.path(), 3, &env)
        .await
        .expect("cluster starts");
    let mut armed: Vec<u64> = vec![1, 2, 3];
    let mut coordinator = stable_control_leader(&cluster).await;
    if HOST_POINTS.contains(&point) {
        for _ in 0..3 {
            for id in armed.clone() {
                if id != coordinator {
                    cluster.restart(id).await.expect("restart clean");
                    armed.retain(|a| *a != id);
                }
            }
            coordinator = stable_control_leader(&cluster).await;
            if armed.contains(&coordinator) {
                break;
            }
            cluster
                .restart_with_failpoints(coordinator, &[point])
                .await
                .expect("restart armed");
            armed.push(coordinator);
            coordinator = stable_control_leader(&cluster).await;
        }
        assert!(armed.contains(&coordinator), "could not arm the leader");
    }
    create(&cluster, "r", "raft", &[1, 2, 3]).await;
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 6, 8.0, &recorder);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let swapper = cluster.client(coordinator).expect("client");
    let swap = tokio::spawn(async move {
        swapper
            .swap_region(
                "r",
                "native:raft",
                None,
                None,
                false,
                Duration::from_secs(20),
            )
            .await
    });
    // Whichever armed node coordinates (or hosts) the step aborts there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut aborted = Vec::new();
    while aborted.is_empty() {
        for id in &armed {
            if let Some(status) = cluster.reap(*id).expect("reap") {
                assert!(!status.success(), "node {id} exited cleanly");
                aborted.push(*id);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no armed node {armed:?} reached {point}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("nodes {aborted:?} aborted at {point} (coordinator {coordinator})");
    let _ = swap.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [1, 2, 3] {
        let _ = cluster.reap(id);
        if !cluster.node(id).expect("node").is_running() {
            cluster.restart(id).await.expect("restart clean");
        }
    }
    let record = settled(&cluster, "r", Duration::from_secs(40)).await;
    let epoch = record["record"]["spec"]["epoch"].as_u64();
    eprintln!(
        "after {point}: epoch {epoch:?}, {}",
        record["record"]["epochs"]
    );
    assert!(matches!(epoch, Some(1 | 2)), "{record}");
    let members = assert_one_epoch(&cluster, "r", &record).await;
    let report = load.await.expect("workload");
    eprintln!(
        "{point}: {} ok, {} errors",
        report.completed(),
        report.errors
    );
    // Writes flow again, whichever way the swap ended.
    let client = cluster.client(coordinator).expect("client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(error) = client.put("r", "after-crash", "1").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write succeeds after the crash at {point}: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_converged(&cluster, "r", &members).await;
    assert_linearizable(&recorder);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_coordinator_after_the_swap_begins() {
    crash_at("swap-after-begin").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_coordinator_after_it_records_the_seal_step() {
    crash_at("swap-after-seal-step").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_coordinator_after_it_sealed_its_replica() {
    crash_at("swap-after-sealed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_coordinator_after_it_records_the_commit() {
    crash_at("swap-after-commit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_coordinator_before_it_enters_the_new_epoch() {
    crash_at("swap-before-enter").await;
}
#[tokio::test(flavor = "multi_thread")]
async fn raft_to_native_raft_and_back_under_load() {
    let (cluster, _dir) = cluster(3).await;
    let client = cluster.client(1).expect("client");
    client
        .create_region("r", "raft", &[])
        .await
        .expect("create");
    cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("leader");
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "r", 6, 8.0, &recorder);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = client
        .swap_region(
            "r",
            "native:raft",
            None,
            None,
            false,
            Duration::from_secs(30),
        )
        .await
        .expect("swap to native raft");
    eprintln!("first swap: {outcome}");
    assert_eq!(outcome["epoch"], 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = client
        .swap_region("r", "raft", None, None, false, Duration::from_secs(30))
        .await
        .expect("swap back to the Wasm raft");
    eprintln!("second swap: {outcome}");
    assert_eq!(outcome["epoch"], 3);
    let report = load.await.expect("workload");
    eprintln!(
        "workload: {} ok, {} errors",
        report.completed(),
        report.errors
    );
    assert!(report.completed() > 200);
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    assert_linearizable(&recorder);
    let record = client.region_record("r").await.expect("record");
    assert_eq!(record["record"]["epochs"].as_array().map(Vec::len), Some(3));
}

/// A swap whose begin was committed (the API node logged it) must be in
/// the record that node reads right after it is restarted: it leads again
/// at once, in the same term, and its own commit index may lag the entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_committed_swap_begin_is_read_back_after_the_leader_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let env = [("SYNOD_FAILPOINTS", "swap-after-begin")];
    let mut cluster = LocalCluster::start_with_env(&binary, dir.path(), 3, &env)
        .await
        .expect("cluster starts");
    let leader = stable_control_leader(&cluster).await;
    create(&cluster, "r", "raft", &[1, 2, 3]).await;
    let swapper = cluster.client(leader).expect("client");
    let answer = swapper
        .swap_region(
            "r",
            "native:raft",
            None,
            None,
            false,
            Duration::from_secs(5),
        )
        .await;
    assert!(
        answer.is_err(),
        "the leader died after the begin: {answer:?}"
    );
    let status = cluster
        .wait_exit(leader, Duration::from_secs(10))
        .await
        .expect("aborted after the begin");
    assert!(!status.success());
    cluster.restart(leader).await.expect("restart clean");
    // The window is short: read it back many times from the start.
    for _ in 0..40 {
        let answer = swapper.region_record("r").await.expect("record");
        let record = &answer["record"];
        assert!(
            !record["swap"].is_null() || record["spec"]["epoch"] != 1,
            "node {leader} reads a record without the committed swap: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A replica that is down during a swap enters the new epoch when it is
/// back and is caught up by the new protocol; a second swap while one runs
/// is refused; the region then deletes from every host.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_down_during_a_swap_catches_up_into_the_new_epoch() {
    let (mut cluster, _dir) = cluster(3).await;
    create(&cluster, "r", "raft", &[1, 2, 3]).await;
    let down = 3;
    cluster.kill(down).expect("kill");
    let recorder = Arc::new(Recorder::default());
    let clients: Vec<_> = (1..=2)
        .map(|id| cluster.client(id).expect("client"))
        .collect();
    let mut workload = synod::tools::workload::Workload::new("r", 4);
    workload.keys = 16;
    let load = tokio::spawn(synod::tools::workload::run(
        clients,
        workload,
        Duration::from_secs(5),
        Some(recorder.clone()),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = cluster.client(1).expect("client");
    let outcome = client
        .swap_region(
            "r",
            "native:raft",
            None,
            None,
            false,
            Duration::from_secs(30),
        )
        .await
        .expect("swap with a replica down");
    assert_eq!(outcome["done"], true, "{outcome}");
    assert_eq!(outcome["epoch"], 2, "{outcome}");
    // A swap that does not finish within its wait answers 202 with its
    // step; another swap meanwhile is refused.
    let running = client
        .swap_region("r", "raft", None, None, false, Duration::from_millis(1))
        .await
        .expect("a running swap is not an error");
    assert_eq!(running["done"], false, "{running}");
    let refused = client
        .swap_region("r", "raft", None, None, false, Duration::from_millis(1))
        .await
        .expect_err("one swap at a time");
    assert_eq!(refused.code(), Some("swap_in_progress"), "{refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(down).await.expect("restart");
    let report = load.await.expect("workload");
    assert!(report.completed() > 100, "progress: {}", report.completed());
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    assert_linearizable(&recorder);
    let status = cluster
        .client(down)
        .expect("client")
        .region_status("r")
        .await
        .expect("status");
    assert_eq!(
        status["epoch"], 3,
        "the restarted replica entered the latest epoch: {status}"
    );
    let deleted = client
        .delete_region("r", Duration::from_secs(10))
        .await
        .expect("delete");
    assert_eq!(deleted["deleted"], true, "{deleted}");
    for id in 1..=3 {
        let listed = cluster
            .client(id)
            .expect("client")
            .regions()
            .await
            .expect("regions");
        assert_eq!(
            listed["regions"].as_array().map(Vec::len),
            Some(0),
            "node {id}: {listed}"
        );
    }
}

/// Puts `rounds` unique values on 8 keys through every node of `nodes`
/// (concurrently per node); returns (key, value, stamp or None, acknowledged).
async fn put_everywhere(
    cluster: &LocalCluster,
    region: &str,
    nodes: &[u64],
    rounds: usize,
    tag: &str,
) -> Vec<(String, String, Option<(u64, u64)>, bool)> {
    let mut tasks = Vec::new();
    for id in nodes {
        let client = cluster.client(*id).expect("client");
        let (region, tag, id) = (region.to_string(), tag.to_string(), *id);
        tasks.push(tokio::spawn(async move {
            let mut puts = Vec::new();
            for i in 0..rounds {
                let key = format!("k{}", (i + id as usize) % 8);
                let value = format!("{tag}-n{id}-{i}");
                let answer = client.put_stamped(&region, &key, &value).await;
                if let Err(error) = &answer {
                    eprintln!("put {key}={value} through node {id}: {error}");
                }
                let acked = answer.is_ok();
                puts.push((key, value, answer.ok().flatten(), acked));
            }
            puts
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer"));
    }
    all
}

/// Swaps a region between multi-master and an ordered protocol under puts
/// on every node. Before the swap no load runs, so each key's survivor is
/// known (the greatest stamp under multi-master, the last put otherwise);
/// after it, every key holds that survivor or a put made during the swap,
/// the members converge, and a put after the swap is read back everywhere.
async fn weak_swap(cluster: &LocalCluster, from: &str, before: &[u64], to: &str, after: &[u64]) {
    create(cluster, "w", from, before).await;
    let mut survivors: std::collections::BTreeMap<String, (Option<(u64, u64)>, String)> =
        std::collections::BTreeMap::new();
    for (key, value, stamp, acked) in put_everywhere(cluster, "w", before, 40, "pre").await {
        assert!(acked, "{from} acknowledges puts");
        let entry = survivors.entry(key).or_insert((stamp, value.clone()));
        // Ordered protocols: puts of one node come in order, and the nodes'
        // puts to a key interleave; only the stamp (or a final sequential
        // put) decides. Without stamps, overwrite with one sequential put.
        if stamp > entry.0 {
            *entry = (stamp, value);
        }
    }
    if from != "multi-master" {
        for i in 0..8 {
            let (key, value) = (format!("k{i}"), format!("pre-final-{i}"));
            cluster
                .client(before[0])
                .expect("client")
                .put("w", &key, &value)
                .await
                .expect("put");
            survivors.insert(key, (None, value));
        }
    }
    let during = {
        let cluster_nodes: Vec<u64> = before.to_vec();
        let clients: Vec<_> = cluster_nodes
            .iter()
            .map(|id| cluster.client(*id).expect("client"))
            .collect();
        tokio::spawn(async move {
            let mut values = Vec::new();
            for i in 0..60 {
                let client = &clients[i % clients.len()];
                let value = format!("during-{i}");
                let _ = client.put("w", &format!("k{}", i % 8), &value).await;
                values.push(value);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            values
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = cluster
        .client(1)
        .expect("client")
        .swap_region("w", to, None, Some(after), false, Duration::from_secs(30))
        .await
        .expect("swap");
    assert_eq!(outcome["epoch"], 2, "{outcome}");
    assert_eq!(outcome["rolled_back"], false, "{outcome}");
    let during = during.await.expect("load");
    let record = settled(cluster, "w", Duration::from_secs(10)).await;
    assert_eq!(assert_one_epoch(cluster, "w", &record).await, after);
    assert_converged(cluster, "w", after).await;
    let level = if to == "multi-master" {
        "local"
    } else {
        "linearizable"
    };
    for (key, (_, survivor)) in &survivors {
        let held = cluster
            .client(after[0])
            .expect("client")
            .get("w", key, level)
            .await
            .expect("read");
        let held = held.unwrap_or_default();
        assert!(
            held == *survivor || during.contains(&held),
            "{from} -> {to}: {key} holds {held:?}, not {survivor:?} or a later put"
        );
    }
    cluster
        .client(after[0])
        .expect("client")
        .put("w", "after", "v")
        .await
        .expect("put");
    assert_converged(cluster, "w", after).await;
    for id in after {
        let held = cluster
            .client(*id)
            .expect("client")
            .get("w", "after", "local")
            .await;
        assert_eq!(held.expect("read"), Some("v".to_string()), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_master_to_raft_under_puts() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "multi-master", &[1, 2, 3], "raft", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_to_multi_master_under_puts() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "raft", &[1, 2, 3], "multi-master", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_master_to_standalone_under_puts() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "multi-master", &[1, 2, 3], "standalone", &[1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_master_to_epaxos_under_puts() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "multi-master", &[1, 2, 3], "epaxos", &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn epaxos_to_multi_master_under_puts() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "epaxos", &[1, 2, 3], "multi-master", &[1, 2, 3]).await;
}

/// Standalone swaps onto its own node; replicas added afterwards start by
/// state shipping and converge.
#[tokio::test(flavor = "multi_thread")]
async fn standalone_to_multi_master_under_puts_then_two_replicas_join() {
    let (cluster, _dir) = cluster(3).await;
    weak_swap(&cluster, "standalone", &[1], "multi-master", &[1]).await;
    cluster
        .client(1)
        .expect("client")
        .change_membership("w", &[1, 2, 3], &[])
        .await
        .expect("membership");
    assert_converged(&cluster, "w", &[1, 2, 3]).await;
    let held = cluster
        .client(3)
        .expect("client")
        .get("w", "after", "local")
        .await;
    assert_eq!(held.expect("read"), Some("v".to_string()));
}

/// Goal: a swap away from multi-master with an unreachable replica waits
/// and says why (that replica may hold writes no other has); `force`
/// proceeds without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_swap_away_from_multi_master_waits_for_an_unreachable_replica_unless_forced() {
    let (mut cluster, _dir) = cluster(3).await;
    for region in ["held", "forced"] {
        create(&cluster, region, "multi-master", &[1, 2, 3]).await;
        cluster
            .client(1)
            .expect("client")
            .put(region, "k", "v")
            .await
            .expect("put");
        assert_converged(&cluster, region, &[1, 2, 3]).await;
    }
    cluster.kill(3).expect("kill -9");
    let client = cluster.client(1).expect("client");
    let waiting = client
        .swap_region(
            "held",
            "raft",
            None,
            Some(&[1, 2]),
            false,
            Duration::from_secs(3),
        )
        .await
        .expect("swap");
    assert_eq!(waiting["done"], false, "{waiting}");
    let why = record(&cluster, "held").await["swap_waiting_for"].to_string();
    assert!(
        why.contains("eventually consistent") && why.contains("3"),
        "{why}"
    );
    let forced = client
        .swap_region(
            "forced",
            "raft",
            None,
            Some(&[1, 2]),
            true,
            Duration::from_secs(30),
        )
        .await
        .expect("swap");
    assert_eq!(forced["epoch"], 2, "{forced}");
    assert_eq!(forced["rolled_back"], false, "{forced}");
    let record = settled(&cluster, "forced", Duration::from_secs(10)).await;
    assert_eq!(record["record"]["spec"]["epoch"], 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match client.get("forced", "k", "linearizable").await {
            Ok(value) => {
                assert_eq!(value, Some("v".into()));
                break;
            }
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "raft never served the forced region: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
