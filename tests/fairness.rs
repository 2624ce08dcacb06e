//! CPU fairness: regions whose plugin burns hundreds of milliseconds per
//! call (within fuel and deadline) move to the idle-priority lane, so a
//! healthy region on the same node keeps answering in milliseconds.
//! Without the lane (fairness off) the hogs hold the node's tokio workers
//! and the healthy region's mean write takes tens of milliseconds.

use std::time::{Duration, Instant};

use synod::node::NodeConfig;
use synod_tests::TestNode;

const HOGS: usize = 4;

async fn healthy_mean_beside_hogs(fair: bool) -> (Duration, TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.cpu_policy.enabled = fair;
    let node = TestNode::start(config).await.expect("node");
    node.client
        .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
        .await
        .expect("publish the fixture");
    node.client
        .create_region("healthy", "standalone", &[])
        .await
        .expect("healthy region");
    let params = [
        ("mode".to_string(), "burn".to_string()),
        ("burn-ms".to_string(), "150".to_string()),
    ];
    for index in 0..HOGS {
        node.client
            .create_region(&format!("hog{index}"), "misbehave", &params)
            .await
            .expect("hog region");
    }
    // Every hog burns through its inline budget on its first calls.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut latencies = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        node.client
            .put("healthy", &format!("k{i}"), "v")
            .await
            .expect("healthy write");
        latencies.push(started.elapsed());
    }
    // The mean, not the median: a hog on a worker delays the writes that
    // land behind it by up to a whole call, and work stealing lets the
    // others through, so the cost shows in the mean and the tail.
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    (mean, node, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hog_slows_only_its_own_region() {
    // The control first (the two runs must not overlap): without the lane
    // the hogs hold the workers, which proves the scenario can fail.
    {
        let (mean, node, _dir) = healthy_mean_beside_hogs(false).await;
        let status = node.client.region_status("hog0").await.expect("status");
        assert_eq!(status["cpu"]["lane"], "inline", "{status}");
        eprintln!("fairness off: healthy mean write {mean:?}");
        assert!(
            mean > Duration::from_millis(10),
            "healthy mean write {mean:?}: the hogs should have delayed it"
        );
        node.node.shutdown().await;
    }
    let (mean, node, _dir) = healthy_mean_beside_hogs(true).await;
    for index in 0..HOGS {
        let status = node
            .client
            .region_status(&format!("hog{index}"))
            .await
            .expect("hog status");
        assert_eq!(status["cpu"]["lane"], "background", "{status}");
        assert!(status["cpu"]["background_calls"].as_u64().unwrap_or(0) > 0);
    }
    let healthy = node.client.region_status("healthy").await.expect("status");
    assert_eq!(healthy["cpu"]["lane"], "inline", "{healthy}");
    // One hog call is 150 ms; without fairness the mean is tens of ms.
    eprintln!("fairness on: healthy mean write {mean:?}");
    assert!(
        mean < Duration::from_millis(10),
        "healthy mean write {mean:?} beside {HOGS} hogs"
    );
    node.node.shutdown().await;
}
