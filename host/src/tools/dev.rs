//! `synod dev --plugin FILE`: a plugin on a live local cluster in one
//! command. Starts `--nodes` `synod serve` processes on loopback
//! ([`LocalCluster`]), publishes the component (once: it is a cluster
//! object every replica's node fetches), creates a
//! region on it, runs a recorded workload during which one replica is
//! killed -9 and restarted, and prints the verdict the plugin's declared
//! consistency calls for: a linearizable history for strong protocols,
//! converged replicas (and no lost acknowledged write) for eventual ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use synod_guest_sdk::Consistency;

use crate::checker::{CheckOptions, Outcome, check_linearizable};
use crate::engine::{PluginEngine, SandboxLimits};
use crate::tools::cluster::LocalCluster;
use crate::tools::workload::{Recorder, Workload};

const REGION: &str = "dev";
/// Fraction of the run at which a replica is killed.
const KILL_AT: f64 = 0.35;
/// How long the killed node stays down.
const DOWN_FOR: Duration = Duration::from_millis(1500);

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// The plugin component (`synod plugin build` output).
    #[arg(long)]
    pub plugin: PathBuf,
    /// Nodes in the local cluster (a protocol without replication gets one
    /// replica whatever the cluster size).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Seconds the workload runs.
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Protocol parameter, repeatable: --param election-timeout-ms=300
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Keep data and node logs here (default: a temporary directory, kept
    /// only when the verdict fails).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leave the cluster running after the verdict until Ctrl-C, to try
    /// the CLI against it.
    #[arg(long)]
    pub keep_running: bool,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// What the run showed.
#[derive(Debug)]
pub struct DevVerdict {
    pub operations: usize,
    pub killed: Option<u64>,
    pub converged: bool,
    /// The history check (strong protocols) or lost writes (eventual).
    pub consistency: String,
    pub passed: bool,
}

/// Runs `synod dev` with `binary` as the node executable.
pub async fn run_with(binary: &Path, args: DevArgs) -> Result<DevVerdict> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 || args.clients == 0 {
        bail!("--seconds and --clients must be positive");
    }
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("reading the component {}", args.plugin.display()))?;
    let engine = PluginEngine::new(SandboxLimits::default(), None)?;
    let loaded = engine
        .load(&bytes)
        .with_context(|| format!("{} is not a loadable plugin", args.plugin.display()))?;
    let info = loaded.info.clone();
    let replicas: Vec<u64> = if info.capabilities.replication {
        (1..=args.nodes).collect()
    } else {
        vec![1]
    };

    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary directory")?),
    };
    let dir = match (&args.data_dir, &temporary) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        (_, Some(dir)) => dir.path().to_path_buf(),
        (None, None) => bail!("no data directory"),
    };
    println!(
        "synod dev: {} {} ({}; {}) on a {}-node local cluster",
        info.name,
        info.version,
        info.consistency.as_str(),
        info.capabilities.names().join(", "),
        args.nodes
    );
    println!("  data and node logs in {}", dir.display());
    let mut cluster = LocalCluster::start(binary, &dir, args.nodes).await?;
    for node in cluster.nodes.values() {
        println!("  node {} api {}", node.id, cluster.url(node.id)?);
    }
    // A published component is a cluster object: every node hosting a
    // replica fetches the bytes from a peer by digest.
    cluster
        .client(1)?
        .publish_component(bytes.clone())
        .await
        .context("publishing the component on node 1")?;
    let protocol = format!("sha256:{}", loaded.digest);
    println!("  published {protocol}; creating region {REGION:?} on nodes {replicas:?}");
    cluster
        .client(1)?
        .create_region_on(REGION, &protocol, &args.params, Some(&replicas))
        .await
        .context("creating the region")?;
    let leader = cluster
        .wait_for_leader(REGION, Duration::from_secs(20))
        .await
        .unwrap_or(replicas[0]);
    println!("  region {REGION:?} serves; leader node {leader}");

    let recorder = Arc::new(Recorder::default());
    let duration = Duration::from_secs_f64(args.seconds);
    let mut workload = Workload::new(REGION, args.clients);
    workload.keys = 64;
    if info.consistency == Consistency::Eventual {
        workload.consistency = "local".into();
        workload.cas_percent = 0;
    }
    let endpoints: Vec<_> = replicas
        .iter()
        .filter_map(|id| cluster.client(*id).ok())
        .collect();
    println!(
        "  workload: {} clients for {:.1}s; a replica is killed -9 after {:.1}s and restarted {:.1}s later",
        args.clients,
        args.seconds,
        args.seconds * KILL_AT,
        DOWN_FOR.as_secs_f64()
    );
    let run = tokio::spawn(crate::tools::workload::run(
        endpoints,
        workload,
        duration,
        Some(recorder.clone()),
    ));
    let started = Instant::now();
    tokio::time::sleep(duration.mul_f64(KILL_AT)).await;
    let victim = cluster.leader_of(REGION).await.unwrap_or(replicas[0]);
    cluster.kill(victim)?;
    println!(
        "  {:>5.2}s  kill -9 node {victim}",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(DOWN_FOR).await;
    cluster.restart(victim).await?;
    println!(
        "  {:>5.2}s  node {victim} restarted",
        started.elapsed().as_secs_f64()
    );
    let report = run.await?;
    println!(
        "  done: {} operations completed, {} failed or timed out around the crash",
        report.completed(),
        report.errors
    );

    // Replicas converge once the workload stops.
    let deadline = Instant::now() + Duration::from_secs(15);
    let converged = loop {
        let digests = cluster.digests(REGION).await;
        let distinct: BTreeSet<&String> = digests.values().collect();
        if digests.len() == replicas.len() && distinct.len() == 1 {
            println!(
                "  all {} replicas hold state digest {}",
                digests.len(),
                distinct.iter().next().map_or("", |d| &d[..16.min(d.len())])
            );
            break true;
        }
        if Instant::now() > deadline {
            println!("  replicas DIVERGED: {digests:?}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let operations = recorder.operations();
    let (consistency, consistent) = if info.consistency == Consistency::Eventual {
        lost_writes(&cluster, &replicas, &operations).await
    } else {
        match check_linearizable(&operations, &CheckOptions::default()) {
            Outcome::Linearizable => ("history linearizable".to_string(), true),
            Outcome::Violation(v) => (
                format!(
                    "history NOT linearizable on key {}: {}",
                    v.key, v.explanation
                ),
                false,
            ),
            Outcome::Unknown { key, reason } => {
                (format!("checker undecided on key {key}: {reason}"), true)
            }
        }
    };
    println!("  {} operations checked: {consistency}", operations.len());
    let passed = converged && consistent && report.completed() > 0;
    if args.keep_running && passed {
        let profile = cluster
            .secrets()
            .map(|s| format!("--profile {} ", s.profile.display()))
            .unwrap_or_default();
        println!(
            "  the cluster keeps running; try: synod {profile}--node {} get {REGION} KEY  (Ctrl-C stops it)",
            cluster.url(1)?
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.stop_all();
    let verdict = DevVerdict {
        operations: operations.len(),
        killed: Some(victim),
        converged,
        consistency,
        passed,
    };
    if !passed {
        let kept = temporary.map(|t| t.keep());
        let logs = kept.as_deref().unwrap_or(&dir);
        bail!(
            "VERDICT: FAIL ({}); node logs are in {}",
            if report.completed() == 0 {
                "no operation completed"
            } else if !converged {
                "replicas diverged"
            } else {
                "consistency violated"
            },
            logs.display()
        );
    }
    println!(
        "VERDICT: PASS — survived kill -9 of node {victim}; replicas converged; {}",
        verdict.consistency
    );
    Ok(verdict)
}

/// Eventual protocols: once converged, every replica holds for each
/// written key a value no acknowledged write superseded: a put is a
/// candidate unless an acknowledged put to its key began after it returned
/// (unknown outcomes never return, so they stay candidates). The workload
/// has no compare-and-swap for these protocols.
async fn lost_writes(
    cluster: &LocalCluster,
    replicas: &[u64],
    operations: &[crate::checker::Operation],
) -> (String, bool) {
    use crate::checker::{OpInput, UNKNOWN_RETURN};
    use std::collections::BTreeMap;
    let prefix = format!("{REGION}/");
    let mut puts: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for op in operations {
        if let (OpInput::Put { value }, Some(key)) = (&op.input, op.key.strip_prefix(&prefix)) {
            puts.entry(key)
                .or_default()
                .push((op.call, op.ret, value.as_str()));
        }
    }
    let mut lost = Vec::new();
    for (key, writes) in &puts {
        let Some(last_acknowledged_call) = writes
            .iter()
            .filter(|(_, ret, _)| *ret != UNKNOWN_RETURN)
            .map(|(call, _, _)| *call)
            .max()
        else {
            continue;
        };
        let candidates: BTreeSet<&str> = writes
            .iter()
            .filter(|(_, ret, _)| *ret == UNKNOWN_RETURN || *ret >= last_acknowledged_call)
            .map(|(_, _, value)| *value)
            .collect();
        for client in replicas.iter().filter_map(|id| cluster.client(*id).ok()) {
            match client.get(REGION, key, "local").await {
                Ok(Some(found)) if candidates.contains(found.as_str()) => {}
                found => lost.push(format!("{} holds {found:?} for {key}", client.base())),
            }
        }
    }
    match lost.first() {
        None => ("no acknowledged write lost on any replica".into(), true),
        Some(first) => (
            format!("{} acknowledged writes lost (e.g. {first})", lost.len()),
            false,
        ),
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    let binary = std::env::current_exe().context("locating the synod binary")?;
    run_with(&binary, args).await.map(drop)
}
