//! Admission: a node that cannot host one more region refuses its
//! creation with a stable error (503 `node_full`) instead of creating it and
//! quarantining it for want of an instance; publishing at the cap works;
//! a restart brings back exactly the regions that ran, even with a lower
//! limit.

use std::time::Duration;

use synod::node::NodeConfig;
use synod_tests::TestNode;

fn config(dir: &std::path::Path, instances: u32) -> NodeConfig {
    let mut config = NodeConfig::new(1, dir.to_path_buf());
    config.limits.instances_max = instances;
    config.limits.memory_bytes_max = 32 << 20;
    config
}

async fn assert_serving(node: &TestNode, region: &str, round: u32) {
    for _ in 0..200 {
        let status = node.client.region_status(region).await.expect("status");
        if status["health"]["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = node.client.region_status(region).await.expect("status");
    assert_eq!(status["health"]["state"], "running", "{region}: {status}");
    let value = format!("v{round}");
    node.client
        .put(region, "k", &value)
        .await
        .unwrap_or_else(|e| panic!("put to {region}: {e}"));
    let got = node
        .client
        .get(region, "k", "linearizable")
        .await
        .expect("get");
    assert_eq!(got.as_deref(), Some(value.as_str()), "{region}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_the_region_and_a_restart_keeps_every_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(config(dir.path(), 3)).await.expect("node");
    for name in ["r1", "r2", "r3"] {
        node.client
            .create_region(name, "standalone", &[])
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    let refused = node
        .client
        .create_region("r4", "standalone", &[])
        .await
        .expect_err("the fourth region does not fit");
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert_eq!(refused.code(), Some("node_full"), "{refused}");
    // Publishing a component needs an instance too; it never competes
    // with the regions for one.
    node.client
        .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
        .await
        .expect("publish at the cap");
    for (round, name) in ["r1", "r2", "r3"].into_iter().enumerate() {
        assert_serving(&node, name, round as u32).await;
    }
    let regions = node.client.regions().await.expect("regions").to_string();
    assert!(!regions.contains("\"r4\""), "{regions}");
    node.stop().await.expect("stop");

    // A lower limit after the restart admits nothing new but keeps every
    // region that ran.
    let node = TestNode::start(config(dir.path(), 2))
        .await
        .expect("restart");
    for name in ["r1", "r2", "r3"] {
        assert_serving(&node, name, 7).await;
    }
    let refused = node
        .client
        .create_region("r4", "standalone", &[])
        .await
        .expect_err("still full");
    assert_eq!(refused.code(), Some("node_full"), "{refused}");
    node.stop().await.expect("stop");
}

async fn hibernation(node: &TestNode, region: &str) -> serde_json::Value {
    node.client.region_status(region).await.expect("status")["hibernation"].clone()
}

/// An idle replica drops its instance and keeps its state; the next
/// request wakes it (a fresh instance and `init(recovering)`), across
/// several cycles and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_hibernates_and_the_next_request_wakes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), 4);
    config.hibernate_after = Some(Duration::from_millis(100));
    let node = TestNode::start(config.clone()).await.expect("node");
    node.client
        .create_region("idle", "standalone", &[])
        .await
        .expect("create");
    for round in 1..=3u32 {
        let value = format!("v{round}");
        node.client.put("idle", "k", &value).await.expect("put");
        let mut asleep = false;
        for _ in 0..100 {
            if hibernation(&node, "idle").await["hibernated"] == true {
                asleep = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            asleep,
            "round {round}: {}",
            hibernation(&node, "idle").await
        );
        let got = node
            .client
            .get("idle", "k", "linearizable")
            .await
            .expect("get");
        assert_eq!(got.as_deref(), Some(value.as_str()), "round {round}");
        let state = hibernation(&node, "idle").await;
        assert_eq!(state["hibernated"], false, "{state}");
        assert_eq!(state["wakes"], u64::from(round), "{state}");
        println!("wake-up took {} µs", state["last_wake_us"]);
    }
    node.stop().await.expect("stop");
    let node = TestNode::start(config).await.expect("restart");
    let got = node
        .client
        .get("idle", "k", "linearizable")
        .await
        .expect("get");
    assert_eq!(got.as_deref(), Some("v3"));
    node.stop().await.expect("stop");
}
