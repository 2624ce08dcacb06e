//! The replicated control plane on a real cluster of node processes:
//! region create and delete survive kill -9 of the node that took them
//! (right after the record) and of a member that was down meanwhile;
//! components are cluster objects that hosts fetch by digest.

use std::time::Duration;

use serde_json::Value;
use synod::tools::cluster::LocalCluster;
use synod_tests::cluster::{assert_converged, start};
use synod_tests::{node_binary, sha256_hex, with_custom_section};

/// Whether node `id` runs a replica of `region` (its own list: a status
/// request would be redirected to a host).
async fn hosts(cluster: &LocalCluster, id: u64, region: &str) -> bool {
    let list = cluster
        .client(id)
        .expect("client")
        .regions()
        .await
        .expect("regions");
    list["regions"]
        .as_array()
        .is_some_and(|regions| regions.iter().any(|r| r["name"] == region))
}

/// Waits until each of `nodes` hosts `region` (or, `want` false, none does).
async fn wait_hosted(cluster: &LocalCluster, nodes: &[u64], region: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for id in nodes {
        while hosts(cluster, *id, region).await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} {} {region}",
                if want { "does not host" } else { "still hosts" }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until no node knows `region` in the record (404 everywhere).
async fn wait_record_gone(cluster: &LocalCluster, region: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for client in cluster.clients() {
        loop {
            match client.region_record(region).await {
                Err(error) if error.status() == Some(404) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the record still has {region}: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn wait_exit(cluster: &mut LocalCluster, id: u64, point: &str) {
    let status = cluster
        .wait_exit(id, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("node {id} did not abort at {point}: {e}"));
    assert!(!status.success(), "node {id} aborted at {point}: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_the_create_and_delete_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let env = [(
        "SYNOD_FAILPOINTS",
        "create-after-record,delete-after-record",
    )];
    let mut cluster = LocalCluster::start_with_env(&binary, dir.path(), 3, &env)
        .await
        .expect("cluster starts");
    // Node 2 records the region, then dies before it reconciles.
    let creator = cluster.client(2).expect("client");
    let answer = creator.create_region("r", "raft", &[]).await;
    assert!(answer.is_err(), "the creating node died: {answer:?}");
    wait_exit(&mut cluster, 2, "create-after-record").await;
    cluster.restart(2).await.expect("restart clean");
    wait_hosted(&cluster, &[1, 2, 3], "r", true).await;
    cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("leader");
    // Node 2 is fresh from a restart: until it hears from the leader it
    // answers `not_leader` with no hint, which a client retries.
    let client = cluster.client(2).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.put("r", "k", "v").await {
            Ok(()) => break,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("put through the restarted node: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("put: {error}"),
        }
    }
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    // Node 3 records the deletion, then dies before deleting its data.
    let answer = cluster
        .client(3)
        .expect("client")
        .delete_region("r", Duration::from_secs(5))
        .await;
    assert!(answer.is_err(), "the deleting node died: {answer:?}");
    wait_exit(&mut cluster, 3, "delete-after-record").await;
    cluster.restart(3).await.expect("restart clean");
    wait_hosted(&cluster, &[1, 2, 3], "r", false).await;
    wait_record_gone(&cluster, "r").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_down_during_create_and_delete_catches_up() {
    let (mut cluster, _dir) = start(node_binary!(), 3).await;
    let leader = cluster
        .wait_for_control_leader(Duration::from_secs(20))
        .await
        .expect("control leader");
    let victim = if leader == 3 { 2 } else { 3 };
    cluster.kill(victim).expect("kill -9");
    let client = cluster.client(1).expect("client");
    client
        .create_region_on("r", "raft", &[], Some(&[1, 2, 3]))
        .await
        .expect("create with a member down");
    cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("leader");
    client.put("r", "k", "v").await.expect("put");
    cluster.restart(victim).await.expect("restart");
    wait_hosted(&cluster, &[victim], "r", true).await;
    assert_converged(&cluster, "r", &[1, 2, 3]).await;
    cluster.kill(victim).expect("kill -9");
    let answer = client
        .delete_region("r", Duration::from_millis(500))
        .await
        .expect("delete with a member down");
    assert_eq!(answer["deleted"], false, "{answer}");
    assert_eq!(answer["pending"], serde_json::json!([victim]), "{answer}");
    wait_hosted(
        &cluster,
        &[1, 2, 3]
            .into_iter()
            .filter(|id| *id != victim)
            .collect::<Vec<_>>(),
        "r",
        false,
    )
    .await;
    cluster.restart(victim).await.expect("restart");
    wait_hosted(&cluster, &[victim], "r", false).await;
    wait_record_gone(&cluster, "r").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_fetch_a_component_by_digest_and_refuse_damaged_bytes() {
    let (cluster, dir) = start(node_binary!(), 3).await;
    let one = cluster.client(1).expect("client");
    let rebuilt = with_custom_section(synod_plugin_artifacts::RAFT_WASM, "synod-test", b"fetch");
    let digest = sha256_hex(&rebuilt);
    let published: Value = one
        .publish_component(rebuilt.clone())
        .await
        .expect("publish on node 1");
    assert_eq!(published["digest"], digest.as_str(), "{published}");
    let stored = |id: u64, digest: &str| {
        dir.path()
            .join(format!("data{id}"))
            .join("components")
            .join(format!("{digest}.wasm"))
    };
    assert!(stored(1, &digest).exists());
    assert!(!stored(2, &digest).exists(), "published on node 1 only");
    one.create_region_on("c", &format!("sha256:{digest}"), &[], Some(&[2, 3]))
        .await
        .expect("create on nodes 2 and 3");
    wait_hosted(&cluster, &[2, 3], "c", true).await;
    assert!(!hosts(&cluster, 1, "c").await);
    cluster
        .wait_for_leader("c", Duration::from_secs(20))
        .await
        .expect("leader");
    one.put("c", "k", "v").await.expect("put through node 1");
    for id in [2, 3] {
        let fetched = std::fs::read(stored(id, &digest)).expect("fetched copy");
        assert_eq!(sha256_hex(&fetched), digest, "node {id} stored the bytes");
        let status = cluster
            .client(id)
            .expect("client")
            .region_status("c")
            .await
            .expect("status");
        assert!(
            status["protocol"]["id"]
                .as_str()
                .is_some_and(|p| p.contains(&digest)),
            "node {id} runs it: {}",
            status["protocol"]
        );
    }
    assert_converged(&cluster, "c", &[2, 3]).await;

    // Node 1's only copy of a second component is damaged (other bytes
    // under its digest): no host may run it.
    let other = with_custom_section(synod_plugin_artifacts::RAFT_WASM, "synod-test", b"damaged");
    let other_digest = sha256_hex(&other);
    one.publish_component(other).await.expect("publish");
    std::fs::write(stored(1, &other_digest), &rebuilt).expect("damage node 1's copy");
    one.create_region_on("d", &format!("sha256:{other_digest}"), &[], Some(&[2, 3]))
        .await
        .expect("the region is recorded");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [2, 3] {
        assert!(
            !hosts(&cluster, id, "d").await,
            "node {id} runs damaged bytes"
        );
        assert!(
            !stored(id, &other_digest).exists(),
            "node {id} stored bytes that do not match their digest"
        );
    }
}
