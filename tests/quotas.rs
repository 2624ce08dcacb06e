//! A region that grows without bound, arms timers without bound, breaks the
//! edge cases of the contract or never answers hurts only itself: its
//! imports are refused past its quota (status `quota`), the disk reserve
//! keeps the shared WAL alive, edge cases fail the callback as contract
//! violations, and unanswered requests expire with the client's timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use synod::engine::SandboxLimits;
use synod::node::NodeConfig;
use synod::region::quota::FreeSpace;
use synod::region::replica::FailurePolicy;
use synod_tests::TestNode;

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new(1, dir.to_path_buf());
    config.limits = SandboxLimits {
        fuel_per_call: 2_000_000_000,
        deadline_per_call: Duration::from_secs(2),
        memory_bytes_max: 64 << 20,
        instances_max: 16,
    };
    config.failure_policy = FailurePolicy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        quarantine_after: 5,
        window: Duration::from_secs(60),
    };
    config
}

async fn start(config: NodeConfig) -> TestNode {
    let node = TestNode::start(config).await.expect("node");
    node.client
        .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
        .await
        .expect("publish the fixture");
    node.client
        .create_region("good", "standalone", &[])
        .await
        .expect("good region");
    node
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn good_region_serves(node: &TestNode, round: u64) {
    good_region_serves_in(node, round, "running").await;
}

async fn good_region_serves_in(node: &TestNode, round: u64, state: &str) {
    for i in 0..5 {
        node.client
            .put("good", &format!("k{i}"), &format!("v{round}"))
            .await
            .expect("the good region keeps serving");
    }
    assert_eq!(
        node.client
            .get("good", "k0", "linearizable")
            .await
            .expect("read"),
        Some(format!("v{round}"))
    );
    let status = node.client.region_status("good").await.expect("status");
    assert_eq!(status["health"]["state"], state, "{status}");
    assert_eq!(status["health"]["failures_total"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_filling_its_log_is_refused_at_its_quota_and_compaction_frees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    // 16 entries of 64 KiB per write: 1 MiB per write against a 2.5 MiB quota.
    node.client
        .create_region(
            "bad",
            "misbehave",
            &params(&[("mode", "fill-log"), ("quota.log-bytes", "2621440")]),
        )
        .await
        .expect("bad region");
    node.client.put("bad", "a", "1").await.expect("1 MiB fits");
    node.client.put("bad", "b", "2").await.expect("2 MiB fit");
    let error = node
        .client
        .put("bad", "c", "3")
        .await
        .expect_err("3 MiB are over the quota");
    assert_eq!(error.status(), Some(503), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("quota exceeded") && message.contains("log bytes"),
        "{message}"
    );
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["state"], "quota", "{status}");
    let quota = &status["health"]["quota"];
    assert_eq!(quota["exceeded"], true, "{status}");
    assert_eq!(quota["limits"]["log_bytes"], 2_621_440, "{status}");
    assert!(
        quota["last_refusal"]
            .as_str()
            .unwrap_or("")
            .contains("log bytes"),
        "{status}"
    );
    // The plugin compacted on the refusal: the quota is free again.
    assert_eq!(quota["log_bytes"], 0, "{status}");
    node.client
        .put("bad", "d", "4")
        .await
        .expect("compaction freed the quota");
    good_region_serves(&node, 1).await;
    assert_eq!(
        node.client.region_status("bad").await.expect("status")["health"]["failures_total"],
        0,
        "a refusal is not a failure"
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_snapshots_early_when_its_log_reaches_the_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    // 100 writes of 4 KiB against a 64 KiB log quota, with the default
    // snapshot interval of 10,000 entries.
    node.client
        .create_region(
            "small",
            "standalone",
            &params(&[("quota.log-bytes", "65536")]),
        )
        .await
        .expect("region");
    let value = "x".repeat(4096);
    for i in 0..100 {
        node.client
            .put("small", &format!("k{i}"), &value)
            .await
            .expect("the log is compacted instead of refused");
    }
    let status = node.client.region_status("small").await.expect("status");
    assert!(
        status["log"]["bytes"].as_u64().unwrap_or(u64::MAX) <= 65_536,
        "{status}"
    );
    assert_eq!(status["state_machine"]["keys"], 100, "{status}");
    node.stop().await.expect("stop");
    let node = TestNode::start(config(dir.path())).await.expect("restart");
    assert_eq!(
        node.client
            .get("small", "k99", "linearizable")
            .await
            .expect("read"),
        Some(value)
    );
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_large_writes_fits_the_staged_bytes_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    // 96 concurrent writes of 1 MiB: more than one WAL entry may hold
    // (64 MiB), so the driver must spread them over several rounds.
    let value = Arc::new("v".repeat(1 << 20));
    let mut writes = Vec::new();
    for i in 0..96 {
        let client = node.client.clone();
        let value = value.clone();
        writes.push(tokio::spawn(async move {
            client.put("good", &format!("big{i}"), &value).await
        }));
    }
    for write in writes {
        write.await.expect("task").expect("every write fits");
    }
    let status = node.client.region_status("good").await.expect("status");
    assert_eq!(status["health"]["state"], "running", "{status}");
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_callback_cannot_stage_more_than_one_wal_entry_may_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.region_limits.staged_bytes = 4 << 20;
    let node = start(config).await;
    // One append of 8 MiB: over the 4 MiB a round may stage, under the log quota.
    node.client
        .create_region(
            "bad",
            "misbehave",
            &params(&[
                ("mode", "fill-log"),
                ("entries", "1"),
                ("entry-bytes", "8388608"),
            ]),
        )
        .await
        .expect("bad region");
    let error = node.client.put("bad", "a", "1").await.expect_err("refused");
    assert!(error.to_string().contains("one WAL entry"), "{error}");
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["state"], "quota", "{status}");
    assert_eq!(status["log"]["bytes"], 0, "{status}");
    good_region_serves(&node, 1).await;
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_bytes_and_keys_have_quotas_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    // 64 KiB values, 4 per write, against 600 KiB.
    node.client
        .create_region(
            "bytes",
            "misbehave",
            &params(&[
                ("mode", "fill-kv"),
                ("entries", "4"),
                ("quota.kv-bytes", "614400"),
            ]),
        )
        .await
        .expect("region");
    node.client.put("bytes", "a", "1").await.expect("256 KiB");
    node.client.put("bytes", "a", "2").await.expect("512 KiB");
    let error = node
        .client
        .put("bytes", "a", "3")
        .await
        .expect_err("over the kv quota");
    assert!(error.to_string().contains("kv bytes"), "{error}");
    // 1024 keys per write, against 1500 keys.
    node.client
        .create_region(
            "keys",
            "misbehave",
            &params(&[("mode", "many-keys"), ("quota.kv-keys", "1500")]),
        )
        .await
        .expect("region");
    node.client.put("keys", "a", "1").await.expect("1024 keys");
    let error = node
        .client
        .put("keys", "a", "2")
        .await
        .expect_err("over the key quota");
    assert!(error.to_string().contains("kv keys"), "{error}");
    let status = node.client.region_status("keys").await.expect("status");
    assert_eq!(status["health"]["state"], "quota", "{status}");
    // The keys put before the refusal stay (the plugin did not trap): at
    // the limit, not past it.
    assert_eq!(status["health"]["quota"]["kv_keys"], 1500, "{status}");
    let bytes_before = node.client.region_status("bytes").await.expect("status")["health"]["quota"]
        ["kv_bytes"]
        .clone();
    good_region_serves(&node, 1).await;
    node.stop().await.expect("stop");

    // The counters are rebuilt from the WAL.
    let node = TestNode::start(config(dir.path())).await.expect("restart");
    let status = node.client.region_status("keys").await.expect("status");
    assert_eq!(status["health"]["quota"]["kv_keys"], 1500, "{status}");
    assert_eq!(status["health"]["state"], "running", "{status}");
    let status = node.client.region_status("bytes").await.expect("status");
    assert_eq!(
        status["health"]["quota"]["kv_bytes"], bytes_before,
        "{status}"
    );
    assert_eq!(status["health"]["quota"]["limits"]["kv_bytes"], 614_400);
    good_region_serves(&node, 2).await;
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_quota_parameters_are_refused_with_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    for (key, value) in [
        ("quota.log-bytes", "lots"),
        ("quota.kv-keys", "0"),
        ("quota.staged-bytes", "999999999999"),
        ("quota.everything", "1"),
    ] {
        let error = node
            .client
            .create_region("r", "standalone", &params(&[(key, value)]))
            .await
            .expect_err("refused");
        assert_eq!(error.status(), Some(400), "{key}: {error}");
        assert!(error.to_string().contains(key), "{error}");
    }
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nearly_full_disk_refuses_growth_without_failing_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = Arc::new(AtomicU64::new(100 << 30));
    let mut config = config(dir.path());
    config.disk_reserve_bytes = 1 << 30;
    config.free_space = FreeSpace::shared(free.clone());
    let node = start(config).await;
    node.client
        .create_region(
            "bad",
            "misbehave",
            &params(&[("mode", "fill-log"), ("entries", "1")]),
        )
        .await
        .expect("bad region");
    node.client.put("bad", "a", "1").await.expect("room");
    good_region_serves(&node, 1).await;

    // The disk nearly fills up: growth is refused (after the next look).
    free.store(200 << 20, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let error = node
        .client
        .put("bad", "b", "2")
        .await
        .expect_err("refused below the reserve");
    assert!(error.to_string().contains("disk reserve"), "{error}");
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["state"], "quota", "{status}");
    // The good region's writes grow its log too: refused, not failed, and
    // its reads go on.
    let error = node
        .client
        .put("good", "k0", "x")
        .await
        .expect_err("no growth below the reserve");
    assert!(error.to_string().contains("disk reserve"), "{error}");
    assert_eq!(
        node.client
            .get("good", "k0", "linearizable")
            .await
            .expect("reads go on"),
        Some("v1".into())
    );

    // Space comes back: everyone writes again; the WAL never failed.
    free.store(100 << 30, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.client.put("bad", "c", "3").await.expect("room again");
    // (Its status shows the refusal for 10 s.)
    good_region_serves_in(&node, 2, "quota").await;
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn armed_timers_are_bounded_per_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(config(dir.path())).await;
    // 200,000 new timers in one callback, against the default 4096.
    node.client
        .create_region(
            "bad",
            "misbehave",
            &params(&[("mode", "timers"), ("entries", "200000")]),
        )
        .await
        .expect("bad region");
    let error = node
        .client
        .put("bad", "a", "1")
        .await
        .expect_err("too many timers");
    let message = error.to_string();
    assert!(
        message.contains("broke the host contract") && message.contains("timers are armed"),
        "{message}"
    );
    // A bound below it is fine, and re-arming is too.
    node.client
        .create_region(
            "busy",
            "misbehave",
            &params(&[
                ("mode", "timers"),
                ("entries", "1000"),
                ("quota.timers", "2500"),
            ]),
        )
        .await
        .expect("region");
    node.client
        .put("busy", "a", "1")
        .await
        .expect("1000 timers");
    node.client
        .put("busy", "a", "2")
        .await
        .expect("2000 timers");
    let error = node
        .client
        .put("busy", "a", "3")
        .await
        .expect_err("3000 timers");
    assert!(error.to_string().contains("quota.timers"), "{error}");
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["quota"]["timers"], 0, "{status}");
    // A region at the default bound stays quick to ask.
    node.client
        .create_region(
            "full",
            "misbehave",
            &params(&[("mode", "timers"), ("entries", "4096")]),
        )
        .await
        .expect("region");
    node.client
        .put("full", "a", "1")
        .await
        .expect("4096 timers");
    for _ in 0..5 {
        let started = Instant::now();
        let status = node.client.region_status("full").await.expect("status");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "status took {:?}",
            started.elapsed()
        );
        assert_eq!(status["health"]["quota"]["timers"], 4096, "{status}");
    }
    good_region_serves(&node, 1).await;
    node.stop().await.expect("stop");
}

async fn edge_case_is_a_contract_violation(mode: &str, reason: &str) {
    edge_case_with(&[("mode", mode)], reason).await;
}

async fn edge_case_with(region_params: &[(&str, &str)], reason: &str) {
    let mode = region_params[0].1;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.request_timeout = Duration::from_secs(3);
    let node = start(config).await;
    node.client
        .create_region("bad", "misbehave", &params(region_params))
        .await
        .expect("bad region");
    let error = node.client.put("bad", "a", "1").await.expect_err("fails");
    assert_eq!(error.status(), Some(503), "{mode}: {error}");
    let message = error.to_string();
    assert!(
        message.contains("broke the host contract") && message.contains(reason),
        "{mode}: {message}"
    );
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["health"]["failures_total"], 1, "{status}");
    assert_eq!(status["log"]["first"], 1, "{status}");
    assert_eq!(status["log"]["last"], 0, "{status}");
    good_region_serves(&node, 1).await;
    node.stop().await.expect("stop");

    // Nothing of the failed callback survives a restart.
    let node = TestNode::start(config_for_restart(dir.path()))
        .await
        .expect("restart");
    let status = node.client.region_status("bad").await.expect("status");
    assert_eq!(status["log"]["first"], 1, "{status}");
    assert_eq!(status["log"]["last"], 0, "{status}");
    assert_eq!(status["state_machine"]["applied_position"], 0, "{status}");
    node.stop().await.expect("stop");
}

fn config_for_restart(dir: &std::path::Path) -> NodeConfig {
    config(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_at_the_last_position_is_a_contract_violation() {
    edge_case_is_a_contract_violation("edge-apply-max", "no position could follow it").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compacting_through_the_last_position_is_a_contract_violation() {
    edge_case_is_a_contract_violation("edge-compact-max", "would wrap the first position").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn appending_at_position_zero_is_a_contract_violation() {
    edge_case_is_a_contract_violation("edge-append-zero", "positions start at 1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn answering_a_write_as_a_read_is_a_contract_violation() {
    edge_case_is_a_contract_violation("edge-complete-write", "is a write").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_the_protocol_never_answers_expire_with_the_client_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.request_timeout = Duration::from_millis(300);
    let node = start(config).await;
    node.client
        .create_region("bad", "misbehave", &params(&[("mode", "silent")]))
        .await
        .expect("bad region");
    let mut requests = Vec::new();
    for i in 0..20 {
        let client = node.client.clone();
        requests.push(tokio::spawn(async move {
            let write = client.put("bad", &format!("k{i}"), "v").await;
            let read = client.get("bad", &format!("k{i}"), "linearizable").await;
            (write.is_err(), read.is_err())
        }));
    }
    for request in requests {
        assert_eq!(request.await.expect("request"), (true, true), "timed out");
    }
    let mut status = serde_json::Value::Null;
    for _ in 0..40 {
        status = node.client.region_status("bad").await.expect("status");
        if status["pending_requests"] == 0 && status["read_queries"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["pending_requests"], 0, "{status}");
    assert_eq!(status["pending_reads"], 0, "{status}");
    assert_eq!(status["read_queries"], 0, "{status}");
    good_region_serves(&node, 1).await;
    node.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_replies_in_one_callback_is_a_contract_violation() {
    edge_case_with(
        &[("mode", "flood-replies"), ("entries", "2000000")],
        "messages and replies",
    )
    .await;
}
