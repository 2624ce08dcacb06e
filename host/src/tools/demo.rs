//! `synod demo`: the main job.
//!
//! By default: starts a 3-process cluster on loopback, creates Raft
//! regions, runs a recorded read/write/CAS workload, swaps one region live
//! from the Wasm raft to the native raft and back (printing the write stall
//! each swap caused), kills -9 the leader of one region and restarts it,
//! then prints throughput, latency percentiles and leader changes, and
//! checks that replicas converged and the client history is linearizable.
//!
//! With `--single`: one in-process node with a standalone region, stopped
//! and reopened from disk to show nothing acknowledged is lost.

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
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// One in-process node with a standalone region instead of a cluster.
    #[arg(long)]
    single: bool,
    /// Nodes in the cluster demo.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Raft regions in the cluster demo.
    #[arg(long, default_value_t = 2)]
    regions: usize,
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
        client.wait_ready(crate::tools::cli::READY_TIMEOUT).await?;
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
    if !args.single {
        return cluster_demo(args).await;
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

async fn cluster_demo(args: DemoArgs) -> Result<()> {
    use crate::checker::{CheckOptions, Outcome, check_linearizable};
    use crate::tools::cluster::LocalCluster;
    use crate::tools::workload::{Recorder, Workload};

    if args.nodes < 3 || args.regions == 0 {
        bail!("the cluster demo needs --nodes >= 3 and --regions >= 1");
    }
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary directory")?),
    };
    let dir = match (&args.data_dir, &temporary) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        (None, Some(dir)) => dir.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let binary = std::env::current_exe().context("locating the synod binary")?;
    println!(
        "Synod demo: {}-node cluster of separate processes on loopback",
        args.nodes
    );
    println!("  data and logs in {}", dir.display());
    let mut cluster = LocalCluster::start(&binary, &dir, args.nodes).await?;
    for node in cluster.nodes.values() {
        println!(
            "  node {} pid {:>7}  api {}  peer {}",
            node.id,
            node.pid().unwrap_or(0),
            cluster.url(node.id)?,
            node.peer
        );
    }
    if let Some(secrets) = cluster.secrets() {
        println!(
            "  TLS and tokens on; client profile {}",
            secrets.profile.display()
        );
    }
    let entry = cluster.client(1)?;
    let names: Vec<String> = (0..args.regions).map(|i| format!("demo-{i}")).collect();
    for name in &names {
        entry.create_region(name, "raft", &[]).await?;
    }
    for name in &names {
        let leader = cluster
            .wait_for_leader(name, Duration::from_secs(20))
            .await?;
        println!(
            "  region {name}: raft on nodes 1-{}, leader node {leader}",
            args.nodes
        );
    }

    let recorder = Arc::new(Recorder::default());
    let duration = Duration::from_secs_f64(args.seconds);
    let clients_per_region = args.clients.div_ceil(args.regions).max(1);
    let swapped = names[names.len() - 1].clone();
    println!(
        "  workload: {} clients per region for {:.0}s (put 60%, linearizable get 30%, cas 10%); \
         {swapped} is swapped live to native:raft after {:.1}s and back to raft after {:.1}s; \
         the leader of {} is killed -9 after {:.1}s and restarted",
        clients_per_region,
        args.seconds,
        args.seconds * SWAP_OUT_AT,
        args.seconds * SWAP_BACK_AT,
        names[0],
        args.seconds * KILL_AT
    );
    let mut runs = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut workload = Workload::new(name, clients_per_region);
        // Enough keys that the unknown outcomes of a failover stay few per
        // key, which keeps the linearizability search small.
        workload.keys = 64;
        workload.client_id_base = (index as u64) << 32;
        runs.push(tokio::spawn(crate::tools::workload::run(
            cluster.clients(),
            workload,
            duration,
            Some(recorder.clone()),
        )));
    }

    // Watch leaders while the workload runs.
    let started = Instant::now();
    let swaps = tokio::spawn(swap_out_and_back(
        entry.clone(),
        swapped.clone(),
        recorder.clone(),
        started,
        duration,
    ));
    // The last leader seen per region (elections in between show no leader).
    let mut leaders: HashMap<String, u64> = HashMap::new();
    let mut leader_changes = 0u64;
    let mut killed: Option<(u64, Instant)> = None;
    let mut restarted = false;
    while started.elapsed() < duration {
        for name in &names {
            let Some(now) = cluster.leader_of(name).await else {
                continue;
            };
            let previous = leaders.insert(name.clone(), now);
            if let Some(before) = previous
                && before != now
            {
                leader_changes += 1;
                println!(
                    "  {:>5.2}s  {name}: leader moved from node {before} to node {now}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if killed.is_none() && started.elapsed() > duration.mul_f64(KILL_AT) {
            let victim = cluster.leader_of(&names[0]).await.unwrap_or(1);
            cluster.kill(victim)?;
            println!(
                "  {:>5.2}s  kill -9 node {victim} (leader of {})",
                started.elapsed().as_secs_f64(),
                names[0]
            );
            killed = Some((victim, Instant::now()));
        }
        if let Some((victim, at)) = killed
            && !restarted
            && at.elapsed() > Duration::from_millis(1500)
        {
            cluster.restart(victim).await?;
            restarted = true;
            println!(
                "  {:>5.2}s  node {victim} restarted; it catches up from its log and the leader",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let swaps = swaps.await?;
    let mut report = crate::tools::workload::WorkloadReport::default();
    for run in runs {
        let part = run.await?;
        report.latencies.extend(part.latencies);
        report.writes += part.writes;
        report.reads += part.reads;
        report.cas += part.cas;
        report.errors += part.errors;
        report.elapsed = report.elapsed.max(part.elapsed);
    }
    report.latencies.sort_unstable();
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  done: {} operations in {seconds:.1}s = {:.0} ops/s ({} puts, {} gets, {} cas; {} failed or timed out during failover)",
        report.completed(),
        report.completed() as f64 / seconds,
        report.writes,
        report.reads,
        report.cas,
        report.errors
    );
    println!(
        "  latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms;  leader changes: {leader_changes}",
        report.percentile_ms(0.50),
        report.percentile_ms(0.99),
        report.percentile_ms(0.999)
    );

    print_swap_stalls(&swapped, &swaps, &recorder.operations());

    // Consistency: replicas converge, and the history is linearizable.
    let mut converged = true;
    for name in &names {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let digests = cluster.digests(name).await;
            let distinct: std::collections::BTreeSet<&String> = digests.values().collect();
            if digests.len() as u64 == args.nodes && distinct.len() == 1 {
                println!(
                    "  {name}: all {} replicas hold state digest {}",
                    digests.len(),
                    distinct.iter().next().map(|d| &d[..16]).unwrap_or("")
                );
                break;
            }
            if Instant::now() > deadline {
                println!("  {name}: replicas DIVERGED: {digests:?}");
                converged = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let operations = recorder.operations();
    let swap_failed = swaps.iter().any(|swap| swap.outcome.is_err());
    let outcome = check_linearizable(&operations, &CheckOptions::default());
    let verdict = match &outcome {
        Outcome::Linearizable => "linearizable".to_string(),
        Outcome::Violation(violation) => format!(
            "NOT linearizable on key {}: {}",
            violation.key, violation.explanation
        ),
        Outcome::Unknown { key, reason } => format!("undecided on key {key}: {reason}"),
    };
    println!(
        "  history of {} operations (keys checked independently): {verdict}",
        operations.len()
    );
    cluster.stop_all();
    if swap_failed {
        println!("  a live swap failed (see above)");
    }
    if !converged || swap_failed || matches!(outcome, Outcome::Violation(_)) {
        // Keep the evidence: the temporary directory outlives the demo.
        let kept = temporary.map(|t| t.keep());
        let logs = kept.as_deref().unwrap_or(&dir);
        bail!(
            "the demo found a consistency problem; logs are in {}",
            logs.display()
        );
    }
    println!(
        "Synod demo finished: the cluster swapped protocols live and survived kill -9 of a leader with nothing lost."
    );
    if let Some(temporary) = temporary {
        // Keep the logs when asked with --data-dir; otherwise clean up.
        drop(temporary);
    }
    Ok(())
}

/// Fractions of the run at which the demo swaps, swaps back and kills.
const SWAP_OUT_AT: f64 = 0.15;
const SWAP_BACK_AT: f64 = 0.30;
const KILL_AT: f64 = 0.45;

/// One live swap the demo made, on the recorder's clock.
struct DemoSwap {
    to: &'static str,
    window: crate::tools::stall::SwapWindow,
    outcome: Result<serde_json::Value, String>,
}

/// Swaps `region` to the native raft and back to the Wasm raft at
/// [`SWAP_OUT_AT`] and [`SWAP_BACK_AT`] of the run, timing each request.
async fn swap_out_and_back(
    client: ApiClient,
    region: String,
    recorder: Arc<crate::tools::workload::Recorder>,
    started: Instant,
    duration: Duration,
) -> Vec<DemoSwap> {
    let mut swaps = Vec::new();
    for (to, at) in [("native:raft", SWAP_OUT_AT), ("raft", SWAP_BACK_AT)] {
        let due = started + duration.mul_f64(at);
        tokio::time::sleep_until(due.into()).await;
        let start_ns = recorder.elapsed_ns();
        let outcome = client
            .swap_region(&region, to, None, None, false, Duration::from_secs(30))
            .await
            .map_err(|error| error.to_string());
        let end_ns = recorder.elapsed_ns();
        let failed = outcome.is_err();
        swaps.push(DemoSwap {
            to,
            window: crate::tools::stall::SwapWindow { start_ns, end_ns },
            outcome,
        });
        if failed {
            // Swapping back from a failed swap means nothing.
            break;
        }
    }
    swaps
}

/// Prints what each swap cost the writes of `region`.
fn print_swap_stalls(region: &str, swaps: &[DemoSwap], operations: &[crate::checker::Operation]) {
    use crate::tools::stall::{Windows, acknowledged_writes, analyze};

    let writes = acknowledged_writes(operations, region);
    let windows = Windows {
        margin: Duration::from_millis(200),
        baseline: Duration::from_millis(500),
    };
    for swap in swaps {
        match &swap.outcome {
            Ok(outcome) => {
                let stall = analyze(&writes, swap.window, windows);
                println!(
                    "  live swap of {region} to {}: epoch {} from position {} in {:.1} ms{}",
                    swap.to,
                    outcome["epoch"],
                    outcome["start_position"],
                    (swap.window.end_ns.saturating_sub(swap.window.start_ns)) as f64 / 1e6,
                    if outcome["rolled_back"].as_bool() == Some(true) {
                        format!(" ROLLED BACK: {}", outcome["note"].as_str().unwrap_or(""))
                    } else {
                        String::new()
                    }
                );
                println!(
                    "      write stall: longest gap between acknowledged writes {:.1} ms, slowest write in flight {:.1} ms; \
                     p99 write latency {:.1} ms around it vs {:.1} ms before; writes/s {:.0} before, {:.0} after ({:.2}x)",
                    stall.gap_ms,
                    stall.max_in_flight_ms,
                    stall.p99_around_ms,
                    stall.p99_before_ms,
                    stall.writes_per_second_before,
                    stall.writes_per_second_after,
                    stall.throughput_ratio()
                );
            }
            Err(error) => println!("  live swap of {region} to {} FAILED: {error}", swap.to),
        }
    }
}
