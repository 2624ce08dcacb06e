//! Live protocol swap on a real cluster of node processes, under
//! continuous client load: no acknowledged write is lost, replicas
//! converge, and the history stays linearizable across strong protocols.

use std::sync::Arc;
use std::time::Duration;

use synod::checker::{CheckOptions, Outcome, check_linearizable};
use synod::tools::cluster::LocalCluster;
use synod::tools::workload::{Recorder, Workload, WorkloadReport};
use synod_tests::node_binary;

async fn cluster(size: u64) -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let cluster = LocalCluster::start(&binary, dir.path(), size)
        .await
        .expect("cluster starts");
    (cluster, dir)
}

fn start_workload(
    cluster: &LocalCluster,
    region: &str,
    clients: usize,
    seconds: f64,
    recorder: &Arc<Recorder>,
) -> tokio::task::JoinHandle<WorkloadReport> {
    let mut workload = Workload::new(region, clients);
    workload.keys = 16;
    tokio::spawn(synod::tools::workload::run(
        cluster.clients(),
        workload,
        Duration::from_secs_f64(seconds),
        Some(recorder.clone()),
    ))
}

fn assert_linearizable(recorder: &Recorder) {
    let operations = recorder.operations();
    assert!(
        operations.len() > 50,
        "the workload ran ({} ops)",
        operations.len()
    );
    match check_linearizable(&operations, &CheckOptions::default()) {
        Outcome::Linearizable => {}
        Outcome::Violation(violation) => panic!(
            "history is not linearizable on key {}: {}",
            violation.key, violation.explanation
        ),
        Outcome::Unknown { key, reason } => panic!("checker undecided on {key}: {reason}"),
    }
}

async fn assert_converged(cluster: &LocalCluster, region: &str, members: &[u64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let digests = cluster.digests(region).await;
        let distinct: std::collections::BTreeSet<_> =
            members.iter().filter_map(|id| digests.get(id)).collect();
        if distinct.len() == 1 && members.iter().all(|id| digests.contains_key(id)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas {members:?} of {region} did not converge: {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
