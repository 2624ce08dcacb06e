//! EPaxos on a real cluster of three node processes, chosen per region by
//! name: clients write through every node at once, one node (a command
//! leader: every node leads the commands its clients send) is killed with
//! SIGKILL mid-load and restarted; the recorded history must be
//! linearizable and the replicas must converge.

use std::sync::Arc;
use std::time::Duration;

use synod::tools::cluster::LocalCluster;
use synod::tools::workload::Recorder;
use synod_tests::cluster::{
    self as support, assert_converged, assert_linearizable, start_workload,
};
use synod_tests::node_binary;

/// Creates an EPaxos region and waits until every node runs its replica.
async fn epaxos_region(cluster: &LocalCluster, name: &str) {
    let params = vec![("recovery-timeout-ms".to_string(), "200".to_string())];
    cluster
        .client(1)
        .expect("client")
        .create_region(name, "epaxos", &params)
        .await
        .expect("create region");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for id in cluster.nodes.keys() {
        let client = cluster.client(*id).expect("client");
        while !client
            .region_status(name)
            .await
            .is_ok_and(|status| status["plugin"]["role"] == "replica")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} never ran {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A status counter of `region` on node `id`.
async fn counter(cluster: &LocalCluster, id: u64, region: &str, name: &str) -> u64 {
    let status = cluster
        .client(id)
        .expect("client")
        .region_status(region)
        .await
        .expect("status");
    status["plugin"]["counters"]
        .as_array()
        .and_then(|pairs| pairs.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or_else(|| panic!("counter {name} missing from {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_a_command_leader_under_writes_to_every_node() {
    let (mut cluster, _dir) = support::start(node_binary!(), 3).await;
    epaxos_region(&cluster, "e").await;
    let recorder = Arc::new(Recorder::default());
    let load = start_workload(&cluster, "e", 6, 6.0, &recorder);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every node led commands: the clients write through all three.
    for id in [1, 2, 3] {
        assert!(
            counter(&cluster, id, "e", "instances-led").await > 0,
            "node {id} led no command"
        );
    }
    cluster.kill(2).expect("kill");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(2).await.expect("restart");
    let report = load.await.expect("workload");
    assert!(report.completed() > 100, "progress: {}", report.completed());
    assert_converged(&cluster, "e", &[1, 2, 3]).await;
    assert_linearizable(&recorder);
    let committed = counter(&cluster, 1, "e", "instances-committed").await;
    let fast = counter(&cluster, 1, "e", "fast-path").await;
    println!("node 1: {committed} committed, {fast} on the fast path");
}
