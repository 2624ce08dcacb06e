//! `synod demo`: the main job. Starts a local node, creates a standalone
//! region, drives a write/read/compare-and-swap workload over HTTP, stops
//! the node, reopens it from disk and checks that every acknowledged write
//! survived and the state digest is unchanged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::sync::oneshot;

use crate::client::ApiClient;
use crate::node::{Node, NodeConfig};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long the workload runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

/// A node serving HTTP on an ephemeral loopback port.
struct RunningNode {
    node: Arc<Node>,
    client: ApiClient,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    async fn start(data_dir: &std::path::Path) -> Result<Self> {
        let node = Node::open(NodeConfig::new(1, data_dir.to_path_buf())).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(crate::api::serve(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = ApiClient::new(&format!("http://{address}"));
        client.wait_ready(crate::cli::READY_TIMEOUT).await?;
        Ok(Self {
            node,
            client,
            stop: Some(stop),
            server,
        })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await??;
        self.node.shutdown().await;
        Ok(())
    }
}

#[derive(Default)]
struct ClientReport {
    latencies: Vec<Duration>,
    writes: u64,
    reads: u64,
    cas: u64,
    errors: u64,
    /// The last acknowledged value of every key this client owns.
    acknowledged: HashMap<String, String>,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.clients == 0 || args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--clients and --seconds must be positive");
    }
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary data directory")?),
    };
    let data_dir = match (&args.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    println!("Synod demo: one node, data in {}", data_dir.display());

    let running = RunningNode::start(&data_dir).await?;
    println!("  node up at {}", running.client.base());
    let created = running
        .client
        .create_region("demo", "standalone", &[])
        .await;
    match created {
        Ok(status) => println!(
            "  region 'demo' created: protocol {} {} ({}), {}",
            status["protocol"]["name"].as_str().unwrap_or("?"),
            status["protocol"]["version"].as_str().unwrap_or("?"),
            status["protocol"]["consistency"].as_str().unwrap_or("?"),
            status["protocol"]["id"].as_str().unwrap_or("?"),
        ),
        Err(error) if error.code() == Some("region_exists") => {
            println!("  region 'demo' already exists; reusing it")
        }
        Err(error) => return Err(error.into()),
    }

    let fsyncs_before = running.node.wal_stats().fsyncs;
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "  workload: {} clients for {:.1}s (put 60%, get 25%, cas 15%), fsync on every commit",
        args.clients, args.seconds
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..args.clients {
        let client = running.client.clone();
        tasks.push(tokio::spawn(workload(client, client_index, duration)));
    }
    let mut total = ClientReport::default();
    for task in tasks {
        let report = task.await?;
        total.latencies.extend(report.latencies);
        total.writes += report.writes;
        total.reads += report.reads;
        total.cas += report.cas;
        total.errors += report.errors;
        total.acknowledged.extend(report.acknowledged);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fsyncs = running.node.wal_stats().fsyncs - fsyncs_before;
    let operations = total.writes + total.reads + total.cas;
    total.latencies.sort_unstable();
    println!(
        "  done: {operations} operations in {elapsed:.2}s = {:.0} ops/s ({} puts, {} gets, {} cas, {} errors)",
        operations as f64 / elapsed,
        total.writes,
        total.reads,
        total.cas,
        total.errors
    );
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&total.latencies, 0.50),
        percentile(&total.latencies, 0.99),
        percentile(&total.latencies, 1.0)
    );
    let commits = total.writes + total.cas;
    println!(
        "  group commit: {fsyncs} fsyncs for {commits} durable writes ({:.1} writes per fsync)",
        commits as f64 / fsyncs.max(1) as f64
    );

    let before = running.client.region_status("demo").await?;
    println!("  stopping the node and reopening it from disk...");
    running.stop().await?;
    let running = RunningNode::start(&data_dir).await?;
    let after = running.client.region_status("demo").await?;
    let mut missing = 0usize;
    for (key, value) in &total.acknowledged {
        match running.client.get("demo", key, "linearizable").await? {
            Some(found) if &found == value => {}
            found => {
                missing += 1;
                eprintln!("  LOST: {key} should be {value:?}, found {found:?}");
            }
        }
    }
    let digest_before = before["state_machine"]["digest"].as_str().unwrap_or("");
    let digest_after = after["state_machine"]["digest"].as_str().unwrap_or("");
    println!(
        "  after restart: {} of {} acknowledged keys verified; state digest {} ({})",
        total.acknowledged.len() - missing,
        total.acknowledged.len(),
        &digest_after.get(..16).unwrap_or(digest_after),
        if digest_before == digest_after {
            "unchanged"
        } else {
            "CHANGED"
        }
    );
    running.stop().await?;
    if missing > 0 || digest_before != digest_after {
        bail!("the demo found lost or changed data");
    }
    println!("Synod demo finished: nothing acknowledged was lost.");
    Ok(())
}

async fn workload(client: ApiClient, index: usize, duration: Duration) -> ClientReport {
    let mut report = ClientReport::default();
    let deadline = Instant::now() + duration;
    let mut step: u64 = 0;
    while Instant::now() < deadline {
        step += 1;
        // Each client owns its keys so the last acknowledged value is known.
        let key = format!("c{index}-k{}", step % 64);
        let value = format!("v{step}");
        let started = Instant::now();
        let kind = step % 20;
        let result = if kind < 12 {
            report.writes += 1;
            client.put("demo", &key, &value).await.map(|()| {
                report.acknowledged.insert(key.clone(), value.clone());
            })
        } else if kind < 17 {
            report.reads += 1;
            client.get("demo", &key, "linearizable").await.map(drop)
        } else {
            report.cas += 1;
            let expected = report.acknowledged.get(&key).cloned();
            client
                .cas("demo", &key, expected.as_deref(), Some(&value))
                .await
                .map(|outcome| {
                    if outcome.succeeded {
                        report.acknowledged.insert(key.clone(), value.clone());
                    }
                })
        };
        match result {
            Ok(()) => report.latencies.push(started.elapsed()),
            Err(error) => {
                report.errors += 1;
                tracing::warn!(%error, "demo request failed");
                if !(12..17).contains(&kind) {
                    // The write's outcome is unknown: stop asserting its key.
                    report.acknowledged.remove(&key);
                }
            }
        }
    }
    report
}

/// Milliseconds at quantile `q` of sorted latencies.
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}
