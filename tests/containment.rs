//! A plugin that loops forever, allocates without bound or panics fences
//! only its own region replica: the replica is rebuilt with backoff, then
//! quarantined, while another region on the same node keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use synod::engine::SandboxLimits;
use synod::node::NodeConfig;
use synod::region::replica::FailurePolicy;
use synod_tests::TestNode;

async fn node() -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.limits = SandboxLimits {
        fuel_per_call: 300_000_000,
        deadline_per_call: Duration::from_millis(500),
        memory_bytes_max: 32 << 20,
        instances_max: 16,
    };
    config.failure_policy = FailurePolicy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        quarantine_after: 3,
        window: Duration::from_secs(60),
    };
    let node = TestNode::start(config).await.expect("node");
    node.client
        .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
        .await
        .expect("publish the fixture");
    (node, dir)
}

async fn wait_for_state(node: &TestNode, region: &str, state: &str) -> serde_json::Value {
    for _ in 0..200 {
        let status = node.client.region_status(region).await.expect("status");
        if status["health"]["state"] == state {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("region {region} never reached state {state}");
}

async fn misbehaving_region_is_contained(mode: &str, reason_fragment: &str) {
    let (node, _dir) = node().await;
    node.client
        .create_region("good", "standalone", &[])
        .await
        .expect("good region");
    let params = [("mode".to_string(), mode.to_string())];
    node.client
        .create_region("bad", "misbehave", &params)
        .await
        .expect("bad region");

    // The good region keeps serving throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let good_writes = Arc::new(AtomicU64::new(0));
    let good = {
        let client = node.client.clone();
        let stop = stop.clone();
        let good_writes = good_writes.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                client
                    .put("good", &format!("k{}", i % 10), &format!("v{i}"))
                    .await
                    .expect("the good region never fails");
                good_writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // First failure: the write is refused, the replica is fenced and says why.
    let error = node
        .client
        .put("bad", "k", "v")
        .await
        .expect_err("write fails");
    assert_eq!(error.status(), Some(503), "{error}");
    assert!(
        error.to_string().contains(reason_fragment),
        "{mode}: {error}"
    );
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["failures_total"], 1);

    // It is rebuilt from storage and serves reads again.
    wait_for_state(&node, "bad", "running").await;
    assert_eq!(
        node.client
            .get("bad", "k", "linearizable")
            .await
            .expect("read"),
        None
    );

    // Repeated failures quarantine it; it then refuses without calling the plugin.
    for _ in 0..2 {
        wait_for_state(&node, "bad", "running").await;
        let _ = node
            .client
            .put("bad", "k", "v")
            .await
            .expect_err("fails again");
    }
    let status = wait_for_state(&node, "bad", "quarantined").await;
    assert!(
        status["health"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains(reason_fragment),
        "{status}"
    );
    let error = node.client.put("bad", "k", "v").await.expect_err("refused");
    assert!(error.to_string().contains("quarantined"), "{error}");

    // An operator restart brings it back.
    let restarted = node.client.restart_region("bad").await.expect("restart");
    assert_eq!(restarted["health"]["state"], "running");

    stop.store(true, Ordering::Relaxed);
    good.await.expect("good writer");
    assert!(
        good_writes.load(Ordering::Relaxed) > 10,
        "the good region made progress"
    );
    let good_status = node.client.region_status("good").await.expect("status");
    assert_eq!(good_status["health"]["state"], "running");
    assert_eq!(good_status["health"]["failures_total"], 0);
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_is_stopped_by_fuel_or_deadline() {
    misbehaving_region_is_contained("loop", "plugin").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_allocation_hits_the_memory_limit() {
    misbehaving_region_is_contained("alloc", "memory limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_reported_with_its_message() {
    misbehaving_region_is_contained("panic", "misbehave fixture asked to panic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loop_reports_fuel_or_time() {
    let (node, _dir) = node().await;
    let params = [("mode".to_string(), "loop".to_string())];
    node.client
        .create_region("spin", "misbehave", &params)
        .await
        .expect("region");
    let error = node.client.put("spin", "k", "v").await.expect_err("fails");
    let message = error.to_string();
    assert!(
        message.contains("ran out of fuel") || message.contains("time limit"),
        "{message}"
    );
    node.stop().await.expect("stop");
}
