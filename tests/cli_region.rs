//! The `synod region` commands of the control plane, run as the operator
//! runs them (the binary, against a 3-process cluster): swap with its
//! outcome, status with a row per replica, history with every epoch, and
//! delete.

use std::process::Command;
use std::time::Duration;

use synod::tools::cluster::LocalCluster;
use synod_tests::node_binary;

/// Runs `synod region ARGS --node URL` with the cluster's client profile
/// (`URL PROFILE` in `node`); returns (success, stdout, stderr).
fn region(node: &(String, std::path::PathBuf), args: &[&str]) -> (bool, String, String) {
    let output = Command::new(node_binary!())
        .arg("region")
        .args(args)
        .args(["--node", &node.0])
        .arg("--profile")
        .arg(&node.1)
        .output()
        .expect("run the CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_status_history_and_delete_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::path::PathBuf::from(node_binary!());
    let mut cluster = LocalCluster::start(&binary, dir.path(), 3)
        .await
        .expect("cluster starts");
    let node = (
        cluster.url(1).expect("node 1"),
        cluster.secrets().expect("a secure cluster").profile.clone(),
    );
    let (ok, _, stderr) = region(&node, &["create", "r", "--protocol", "raft"]);
    assert!(ok, "create: {stderr}");
    cluster
        .wait_for_leader("r", Duration::from_secs(20))
        .await
        .expect("leader");
    cluster
        .client(1)
        .expect("client")
        .put("r", "k", "v")
        .await
        .expect("a write before the swap");

    let (ok, stdout, stderr) = region(&node, &["swap", "r", "--to", "native:raft"]);
    assert!(ok, "swap: {stdout} {stderr}");
    assert!(
        stdout.contains("swapped region r: epoch 2 runs native:raft from position"),
        "{stdout}"
    );

    // Status: the record's view and one row per replica, from its own node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (ok, stdout, stderr) = region(&node, &["status", "r"]);
        assert!(ok, "status: {stderr}");
        if stdout.lines().any(|l| l.contains(" leader ")) || tokio::time::Instant::now() > deadline
        {
            break stdout;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.contains("epoch     2"), "{status}");
    assert!(
        status.contains("protocol  native:raft (native:raft)"),
        "{status}"
    );
    assert!(status.contains("swap      none in progress"), "{status}");
    for id in 1..=3 {
        let row = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no row for node {id}: {status}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert!(
            matches!(columns[1], "leader" | "follower"),
            "node {id}'s role: {row}"
        );
        assert_eq!(columns[6], "2", "node {id}'s epoch: {row}");
    }

    let (ok, history, stderr) = region(&node, &["history", "r"]);
    assert!(ok, "history: {stderr}");
    let epochs: Vec<&str> = history
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']) && l.contains("raft"))
        .collect();
    assert_eq!(epochs.len(), 2, "{history}");
    assert!(epochs[0].contains("raft") && !epochs[0].contains("(current)"));
    assert!(epochs[1].contains("native:raft") && epochs[1].contains("(current)"));
    assert!(history.contains("swap to native:raft"), "{history}");

    // An unknown target is refused with the API's message.
    let (ok, _, stderr) = region(&node, &["swap", "r", "--to", "nosuch"]);
    assert!(!ok);
    assert!(stderr.contains("unknown_protocol"), "{stderr}");

    let (ok, stdout, stderr) = region(&node, &["delete", "r", "--wait-secs", "20"]);
    assert!(ok, "delete: {stderr}");
    assert!(
        stdout.contains("region r deleted on every host"),
        "{stdout}"
    );
    let (ok, _, stderr) = region(&node, &["status", "r"]);
    assert!(!ok);
    assert!(stderr.contains("region_not_found"), "{stderr}");
    cluster.stop_all();
}
