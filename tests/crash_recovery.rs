//! kill -9 a node process during writes and restart it: every write that
//! was acknowledged before the kill must still be there, with its value.
//! Runs with and without frequent snapshots + log compaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synod::client::ApiClient;
use synod_tests::{NodeProcess, free_port, node_binary};

/// Acknowledged value of each key, and keys whose last write had an
/// unknown outcome (sent, but the node died before answering).
#[derive(Default)]
struct Ledger {
    acknowledged: HashMap<String, String>,
    uncertain: HashMap<String, Vec<String>>,
}

/// Writes until told to stop; returns how many writes were acknowledged.
async fn writer(
    client: ApiClient,
    region: String,
    id: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let mut acked = 0;
    let mut sequence = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        sequence += 1;
        let key = format!("w{id}-k{}", sequence % 50);
        let value = format!("w{id}-v{sequence}");
        match client.put(&region, &key, &value).await {
            Ok(()) => {
                acked += 1;
                let mut ledger = ledger.lock().expect("ledger");
                ledger.uncertain.remove(&key);
                ledger.acknowledged.insert(key, value);
            }
            Err(_) => {
                // The node may have applied it before dying: either the
                // acknowledged value or this one is acceptable afterwards.
                ledger
                    .lock()
                    .expect("ledger")
                    .uncertain
                    .entry(key)
                    .or_default()
                    .push(value);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    acked
}

async fn crash_cycles(region: &str, params: &[(String, String)], serve_flags: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let mut process = NodeProcess::start_with_args(node_binary!(), dir.path(), port, serve_flags)
        .await
        .expect("node starts");
    process
        .client
        .create_region(region, "standalone", params)
        .await
        .expect("create region");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut total_acked = 0;
    for cycle in 0..3 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|id| {
                tokio::spawn(writer(
                    process.client.clone(),
                    region.to_string(),
                    id,
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        process.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            total_acked += writer.await.expect("writer");
        }
        process = NodeProcess::start_with_args(node_binary!(), dir.path(), port, serve_flags)
            .await
            .expect("node restarts after kill -9");

        let (acknowledged, uncertain) = {
            let ledger = ledger.lock().expect("ledger");
            (ledger.acknowledged.clone(), ledger.uncertain.clone())
        };
        let mut checked = 0;
        for (key, value) in &acknowledged {
            let found = process
                .client
                .get(region, key, "linearizable")
                .await
                .expect("read after restart");
            let allowed = uncertain.get(key);
            let ok = found.as_deref() == Some(value.as_str())
                || allowed.is_some_and(|values| found.as_ref().is_some_and(|f| values.contains(f)));
            assert!(
                ok,
                "cycle {cycle}: {key} acknowledged as {value:?} but reads {found:?}"
            );
            checked += 1;
        }
        assert!(checked > 0, "cycle {cycle}: some writes were acknowledged");
    }
    assert!(
        total_acked > 100,
        "the workload made progress ({total_acked} acks)"
    );
    let status = process.client.region_status(region).await.expect("status");
    assert_eq!(status["health"]["state"], "running");
    if serve_flags.contains(&"--wal-checkpoint-bytes") {
        // Checkpoints keep the WAL near the live state instead of holding
        // every write ever made (each write journals well over 40 bytes).
        let wal_bytes: u64 = std::fs::read_dir(dir.path().join("wal"))
            .expect("wal dir")
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|metadata| metadata.len())
            .sum();
        eprintln!("wal {wal_bytes} bytes after {total_acked} acknowledged writes");
        assert!(
            wal_bytes < total_acked * 40,
            "the WAL was compacted: {wal_bytes} bytes for {total_acked} writes"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    crash_cycles("plain", &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_with_snapshots_and_compaction() {
    crash_cycles("snappy", &[("snapshot-interval".into(), "37".into())], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_across_wal_checkpoints() {
    let params = [("snapshot-interval".to_string(), "50".to_string())];
    crash_cycles("compacted", &params, &["--wal-checkpoint-bytes", "65536"]).await;
}
