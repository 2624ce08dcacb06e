//! One region cannot take a cluster's transport: a replicated plugin that
//! floods its peers (4 × 1 MiB to each every 5 ms) has its own messages
//! dropped and counted, while a Raft region in the same cluster keeps its
//! leader and serves writes, and a region created afterwards reaches the
//! peers. Node memory stays bounded.

use std::time::{Duration, Instant};

use synod::tools::cluster::LocalCluster;
use synod_tests::node_binary;

/// Resident memory of a process, in bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_region_does_not_stall_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let cluster = LocalCluster::start(&binary, dir.path(), 3)
        .await
        .expect("cluster starts");
    let entry = cluster.client(1).expect("client");
    let raft_params: Vec<(String, String)> =
        [("election-timeout-ms", "300"), ("heartbeat-ms", "50")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    entry
        .create_region("r", "raft", &raft_params)
        .await
        .expect("raft region");
    cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("a leader");

    for client in cluster.clients() {
        client
            .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
            .await
            .expect("publish the fixture");
    }
    let flood_params = vec![("mode".to_string(), "flood".to_string())];
    entry
        .create_region_on("flood", "misbehave", &flood_params, Some(&[1, 2, 3]))
        .await
        .expect("flood region");
    // Let the flood fill every link.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Writes to the Raft region, through whichever node answers.
    let clients = cluster.clients();
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        let client = &clients[i % clients.len()];
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            client.put("r", &format!("k{}", i % 16), &format!("v{i}")),
        )
        .await;
        match put {
            Ok(Ok(())) => ok += 1,
            _ => failed += 1,
        }
        i += 1;
    }
    eprintln!("raft writes under the flood: {ok} ok, {failed} failed");
    assert!(
        ok >= 50 && ok >= 4 * failed,
        "the Raft region serves writes under the flood: {ok} ok, {failed} failed"
    );
    cluster
        .wait_for_leader("r", Duration::from_secs(5))
        .await
        .expect("the Raft region keeps a leader");

    // A region created now reaches the peers through the flooded links.
    entry
        .create_region("late", "raft", &raft_params)
        .await
        .expect("late region");
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in [2, 3] {
        let client = cluster.client(id).expect("client");
        loop {
            let hosted = client.regions().await.ok().is_some_and(|listing| {
                listing["regions"]
                    .as_array()
                    .is_some_and(|regions| regions.iter().any(|r| r["name"] == "late"))
            });
            if hosted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never started a replica of the late region"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The flood's own frames were dropped and counted, per region. The
    // flood goes on, so on a machine slow enough that it has not yet
    // overrun a link, give it the time to.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut flood_dropped = 0;
        for client in cluster.clients() {
            let status = client.status().await.expect("status");
            flood_dropped += status["transport"]["regions"]["flood"]["frames_dropped"]
                .as_u64()
                .unwrap_or(0);
        }
        if flood_dropped > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood region's drops are counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in cluster.nodes.values() {
        let rss = node.pid().map_or(0, rss_bytes);
        eprintln!("node {}: {} MiB resident", node.id, rss >> 20);
        assert!(
            rss < 768 << 20,
            "node {} holds {} MiB: link memory is not bounded",
            node.id,
            rss >> 20
        );
    }
}
