//! `synod bench`: what the Wasm boundary costs and what group commit buys.
//! Prints figures and ratios measured in one run (machines are noisy, so
//! compare the ratios, not the absolute numbers across runs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use synod_guest_sdk::{Commands, InitConfig, Membership};

use crate::clock::SystemClock;
use crate::engine::{PluginEngine, SandboxLimits};
use crate::node::{Node, NodeConfig};
use crate::plugin::{Call, PluginInstance, PluginSource};
use crate::region::core::RegionCore;
use crate::region::{RegionLog, RegionName};
use crate::state_machine::{KvCommand, KvStateMachine};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Benchmark a 3-process Raft cluster instead of the single-node
    /// runtime: writes/s and latency percentiles per client count.
    #[arg(long)]
    cluster: bool,
    /// With --cluster: measure again on a cluster without TLS and tokens
    /// (loopback only) and print what security costs (ratios).
    #[arg(long, requires = "cluster")]
    insecure: bool,
    /// Client counts for --cluster, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    clients: Vec<usize>,
    /// Value size in bytes for --cluster.
    #[arg(long, default_value_t = 256)]
    pub(crate) value_bytes: usize,
    /// Client protocol for --cluster: `wire` (the binary protocol, clients
    /// multiplexed over --connections) or `http` (one connection each).
    #[arg(long, default_value = "wire", value_parser = ["wire", "http"])]
    api: String,
    /// Protocol of the --cluster bench region (`standalone` measures the
    /// host alone: one copy, no replication).
    #[arg(long, default_value = "raft")]
    pub(crate) protocol: String,
    /// Parameter of the --cluster bench region, repeatable:
    /// `--param snapshot-interval=100000`.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub(crate) params: Vec<String>,
    /// Connections the --cluster wire clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds per group-commit configuration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Regions in the multi-region group-commit run.
    #[arg(long, default_value_t = 8)]
    regions: usize,
    /// Concurrent writers per region in the multi-region run.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Benchmark live protocol swaps on a 3-process cluster: --swap-clients
    /// writers run while the region is swapped --swaps times between
    /// --protocol and --swap-to; prints each swap's write stall.
    #[arg(long, conflicts_with = "cluster")]
    swap: bool,
    /// Swaps in the --swap run (alternating there and back).
    #[arg(long, default_value_t = 10)]
    pub(crate) swaps: usize,
    /// The protocol --swap alternates with --protocol.
    #[arg(long, default_value = "native:raft")]
    pub(crate) swap_to: String,
    /// Closed-loop writers in the --swap run (HTTP, to any node).
    #[arg(long, default_value_t = 16)]
    pub(crate) swap_clients: usize,
    /// Seconds between swaps in the --swap run.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) swap_interval: f64,
    /// Run only the CPU fairness scenario of the single-node bench.
    #[arg(long)]
    fairness_only: bool,
    /// CPU hogs beside the healthy region in the fairness run (0 skips it).
    #[arg(long, default_value_t = 8)]
    hogs: usize,
    /// CPU each hog burns per call, in milliseconds.
    #[arg(long, default_value_t = 200)]
    hog_burn_ms: u64,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.seconds.is_nan()
        || args.seconds <= 0.0
        || args.regions == 0
        || args.writers == 0
        || args.connections == 0
    {
        bail!("--seconds, --regions, --writers and --connections must be positive");
    }
    if args.cluster {
        return cluster_bench(&args).await;
    }
    if args.swap {
        return crate::tools::swap_bench::run(&args).await;
    }
    let seconds = Duration::from_secs_f64(args.seconds);
    if args.fairness_only {
        return fairness_section(&args, seconds).await;
    }
    println!("== Wasm boundary (wasmtime, pooling allocator, fuel + epoch deadline on) ==");
    tokio::task::spawn_blocking(call_costs).await??;
    println!();
    println!("== Group commit (one WAL and one fsync stream per node, 64-byte values) ==");
    let single = group_commit(1, 1, seconds).await?;
    let many = group_commit(args.regions, args.writers, seconds).await?;
    println!(
        "  ratio: {:.1}x the writes/s with {:.1}x the fsyncs/s ({} regions x {} writers vs 1 x 1)",
        many.writes_per_second / single.writes_per_second.max(1e-9),
        many.fsyncs_per_second / single.fsyncs_per_second.max(1e-9),
        args.regions,
        args.writers
    );
    if args.hogs > 0 {
        println!();
        fairness_section(&args, seconds).await?;
    }
    Ok(())
}

async fn fairness_section(args: &BenchArgs, seconds: Duration) -> Result<()> {
    println!(
        "== CPU fairness (a healthy standalone region beside {} Wasm regions burning {} ms per call) ==",
        args.hogs, args.hog_burn_ms
    );
    let without = cpu_fairness(args.hogs, args.hog_burn_ms, seconds, false).await?;
    let with = cpu_fairness(args.hogs, args.hog_burn_ms, seconds, true).await?;
    println!(
        "  ratio: healthy p99 beside hogs / alone = {with:.2}x with fairness (target <= 2x), {without:.2}x without"
    );
    Ok(())
}

/// Latency of a healthy region's writes alone, then beside `hogs` regions
/// whose plugin burns `burn_ms` of CPU in every call.
/// Returns the p99 ratio (beside / alone).
async fn cpu_fairness(hogs: usize, burn_ms: u64, duration: Duration, fair: bool) -> Result<f64> {
    const WRITERS: usize = 4;
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(1, dir.path().to_path_buf());
    config.cpu_policy.enabled = fair;
    println!("  fairness {}:", if fair { "on" } else { "off" });
    let node = Node::open(config).await?;
    let healthy = node
        .create_region("healthy", "standalone", Vec::new())
        .await
        .context("creating the healthy region")?;
    let alone = timed_writes(&healthy, WRITERS, duration).await?;
    alone.print("alone");
    node.publish(synod_plugin_artifacts::MISBEHAVE_WASM)
        .await
        .context("publishing the hog component")?;
    let params = vec![
        ("mode".to_string(), "burn".to_string()),
        ("burn-ms".to_string(), burn_ms.to_string()),
    ];
    for index in 0..hogs {
        node.create_region(&format!("hog{index}"), "misbehave", params.clone())
            .await
            .context("creating a hog region")?;
    }
    // Measure the steady state: a hog's first call runs where every region
    // runs (nothing can know in advance that it will be heavy), so wait
    // until every hog has moved (with fairness on), then a little more.
    let settle_started = Instant::now();
    while fair && settle_started.elapsed() < Duration::from_secs(20) {
        let mut moved = 0;
        for index in 0..hogs {
            if let Ok(hog) = node.region(&format!("hog{index}")).await
                && let Ok(status) = hog.status().await
                && status.cpu.lane == "background"
            {
                moved += 1;
            }
        }
        if moved == hogs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500 + 2 * burn_ms)).await;
    let beside = timed_writes(&healthy, WRITERS, duration).await?;
    beside.print(&format!("beside {hogs} hogs"));
    let mut lanes = BTreeMap::<&'static str, usize>::new();
    for index in 0..hogs {
        if let Ok(hog) = node.region(&format!("hog{index}")).await
            && let Ok(status) = hog.status().await
        {
            *lanes.entry(status.cpu.lane).or_default() += 1;
        }
    }
    let ratio = beside.p99.as_secs_f64() / alone.p99.as_secs_f64().max(1e-9);
    println!(
        "    hog lanes {lanes:?}; beside/alone: p99 {ratio:.2}x, p50 {:.2}x, writes/s {:.2}x",
        beside.p50.as_secs_f64() / alone.p50.as_secs_f64().max(1e-9),
        beside.writes_per_second / alone.writes_per_second.max(1e-9),
    );
    node.shutdown().await;
    Ok(ratio)
}

struct LatencyFigures {
    writes_per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl LatencyFigures {
    fn print(&self, label: &str) {
        println!(
            "    {label}: {:.0} writes/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.writes_per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
        );
    }
}

/// `writers` closed-loop writers on one region for `duration`.
async fn timed_writes(
    handle: &crate::region::driver::RegionHandle,
    writers: usize,
    duration: Duration,
) -> Result<LatencyFigures> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < deadline {
                let command = KvCommand::Put {
                    key: format!("h{writer}-{}", latencies.len() % 64).into_bytes(),
                    value: vec![b'v'; 64],
                };
                let sent = Instant::now();
                match handle.write(&command, Duration::from_secs(10)).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (mut l, f) = task.await?;
        latencies.append(&mut l);
        failed += f;
    }
    if failed > 0 {
        bail!("{failed} writes of the healthy region failed");
    }
    if latencies.is_empty() {
        bail!("the healthy region completed no writes");
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(LatencyFigures {
        writes_per_second: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    })
}

fn new_core(name: &str) -> Result<RegionCore> {
    Ok(RegionCore::new(
        RegionName::new(name)?,
        1,
        RegionLog::default(),
        BTreeMap::new(),
        KvStateMachine::default(),
        Arc::new(SystemClock::new()),
        7,
    ))
}

fn init(params: &[(&str, &str)]) -> Call {
    Call::Init(InitConfig {
        self_id: 1,
        membership: Membership {
            voters: vec![1],
            learners: vec![],
        },
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        recovering: false,
        applied_position: 0,
    })
}

/// Nanoseconds per iteration of `f`, best of three runs of `iterations`.
fn time_per(iterations: u32, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..iterations {
            f()?;
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    Ok(best)
}

fn call(instance: &mut dyn PluginInstance, core: &mut RegionCore, call: Call) -> Result<()> {
    instance.call(core, call)?;
    core.commit_callback();
    Ok(())
}

fn commands(count: usize, first_id: u64) -> Commands {
    let mut commands = Commands::default();
    for i in 0..count {
        let command = KvCommand::Put {
            key: format!("key-{}", i % 1024).into_bytes(),
            value: vec![b'x'; 64],
        };
        commands.ids.push(first_id + i as u64);
        commands.payloads.push(&command.encode());
        commands.keys.push(i as u64);
        commands.key_ends.push(commands.keys.len() as u32);
    }
    commands
}

fn call_costs() -> Result<()> {
    let cache = tempfile::tempdir()?;
    let engine = Arc::new(PluginEngine::new(
        SandboxLimits::default(),
        Some(cache.path().to_path_buf()),
    )?);
    let started = Instant::now();
    let misbehave = engine.load(synod_plugin_artifacts::MISBEHAVE_WASM)?;
    let cold = started.elapsed();
    // A node starts its engine once; loading a component from the cache
    // happens per component (at start-up, on publish, on a swap).
    let started = Instant::now();
    let reloaded = PluginEngine::new(SandboxLimits::default(), Some(cache.path().to_path_buf()))?;
    let engine_start = started.elapsed();
    let started = Instant::now();
    reloaded.load(synod_plugin_artifacts::MISBEHAVE_WASM)?;
    let warm = started.elapsed();
    println!(
        "  load {} KiB component: compile {:.1} ms, from the on-disk cache {:.2} ms (target <= 1 ms; engine start, once per node: {:.2} ms)",
        synod_plugin_artifacts::MISBEHAVE_WASM.len() / 1024,
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        engine_start.as_secs_f64() * 1e3
    );
    let instantiate = time_per(200, || {
        engine.instantiate(&misbehave)?;
        Ok(())
    })?;
    println!("  instantiate + drop: {:.1} us", instantiate / 1e3);

    let mut core = new_core("bench")?;
    let mut fixture = engine.instantiate(&misbehave)?;
    call(&mut fixture, &mut core, init(&[]))?;
    let export = time_per(20_000, || {
        call(&mut fixture, &mut core, Call::Timers(Vec::new()))
    })?;
    let imports_per_call = 10_000u32;
    let timers: Vec<u64> = (0..u64::from(imports_per_call)).collect();
    let with_imports = time_per(50, || {
        call(&mut fixture, &mut core, Call::Timers(timers.clone()))
    })?;
    let import = (with_imports - export) / f64::from(imports_per_call);
    println!("  export call (empty batch): {export:.0} ns");
    println!("  import call (clock.now from the guest): {import:.0} ns");

    let standalone_wasm = engine.load(synod_plugin_artifacts::STANDALONE_WASM)?;
    let sources = [
        (
            "wasm",
            PluginSource::Wasm {
                engine: engine.clone(),
                component: standalone_wasm,
            },
        ),
        (
            "native",
            PluginSource::native::<synod_plugin_standalone::Standalone>(),
        ),
    ];
    let batch = 256usize;
    let mut per_command = Vec::new();
    for (mode, source) in sources {
        let mut core = new_core(mode)?;
        let mut instance = source.instantiate()?;
        call(
            instance.as_mut(),
            &mut core,
            init(&[("snapshot-interval", "0")]),
        )?;
        let mut next_id = 0u64;
        let nanos = time_per(200, || {
            let batch_commands = commands(batch, next_id);
            next_id += batch as u64;
            call(instance.as_mut(), &mut core, Call::Commands(batch_commands))
        })?;
        per_command.push(nanos / batch as f64);
        println!(
            "  standalone on-commands, {batch} x 64 B puts per call ({mode}): {:.0} ns per command (log append + apply + effects)",
            nanos / batch as f64
        );
    }
    println!(
        "  ratio wasm/native per command: {:.2}x",
        per_command[0] / per_command[1].max(1e-9)
    );
    Ok(())
}

struct GroupCommitFigures {
    writes_per_second: f64,
    fsyncs_per_second: f64,
}

async fn group_commit(
    regions: usize,
    writers: usize,
    duration: Duration,
) -> Result<GroupCommitFigures> {
    let dir = tempfile::tempdir()?;
    let node = Node::open(NodeConfig::new(1, dir.path().to_path_buf())).await?;
    let mut handles = Vec::new();
    for index in 0..regions {
        handles.push(
            node.create_region(&format!("r{index}"), "standalone", Vec::new())
                .await
                .context("creating a bench region")?,
        );
    }
    let before = node.wal_stats();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (region_index, handle) in handles.iter().enumerate() {
        for writer in 0..writers {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let command = KvCommand::Put {
                        key: format!("w{region_index}-{writer}-{}", done % 100).into_bytes(),
                        value: vec![b'v'; 64],
                    };
                    if handle
                        .write(&command, Duration::from_secs(10))
                        .await
                        .is_ok()
                    {
                        done += 1;
                    }
                }
                done
            }));
        }
    }
    let mut writes = 0u64;
    for task in tasks {
        writes += task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = node.wal_stats();
    node.shutdown().await;
    let fsyncs = after.fsyncs - before.fsyncs;
    let figures = GroupCommitFigures {
        writes_per_second: writes as f64 / elapsed,
        fsyncs_per_second: fsyncs as f64 / elapsed,
    };
    println!(
        "  {regions} region(s) x {writers} writer(s): {:.0} region-writes/s, {:.0} fsyncs/s, {:.1} writes per fsync",
        figures.writes_per_second,
        figures.fsyncs_per_second,
        writes as f64 / fsyncs.max(1) as f64
    );
    Ok(figures)
}

/// Median of one fdatasync of a 256-byte append, in the directory given.
fn fsync_cost(dir: &std::path::Path) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&[7u8; 256])?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    std::fs::remove_file(&path)?;
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// Median loopback TCP round trip of 64 bytes.
async fn loopback_rtt() -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let mut buffer = [0u8; 64];
            while stream.read_exact(&mut buffer).await.is_ok() {
                if stream.write_all(&buffer).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut buffer = [0u8; 64];
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let started = Instant::now();
        stream.write_all(&buffer).await?;
        stream.read_exact(&mut buffer).await?;
        samples.push(started.elapsed());
    }
    drop(stream);
    echo.abort();
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// A 3-member etcd on this machine's loopback, as measured in the brief:
/// (closed-loop clients, writes/s).
const ETCD_REFERENCE: [(usize, f64); 2] = [(1, 945.0), (1000, 10_400.0)];

async fn cluster_bench(args: &BenchArgs) -> Result<()> {
    use crate::tools::cluster::LocalCluster;

    let dir = tempfile::tempdir()?;
    let fsync = fsync_cost(dir.path())?;
    let rtt = loopback_rtt().await?;
    let floor = fsync + rtt;
    println!("== Physical floor on this machine ==");
    println!(
        "  one fsync (256 B append + fdatasync): {:.3} ms;  one loopback TCP round trip: {:.3} ms;  floor {:.3} ms",
        fsync.as_secs_f64() * 1e3,
        rtt.as_secs_f64() * 1e3,
        floor.as_secs_f64() * 1e3
    );
    let binary = std::env::current_exe()?;
    let cluster = LocalCluster::start(&binary, dir.path(), 3).await?;
    let entry = cluster.client(1)?;
    let mut params = Vec::new();
    for param in &args.params {
        let Some((name, value)) = param.split_once('=') else {
            bail!("--param {param:?}: expected NAME=VALUE");
        };
        params.push((name.to_string(), value.to_string()));
    }
    entry
        .create_region("bench", &args.protocol, &params)
        .await?;
    // A leaderless protocol takes writes on every node: spread the writers.
    let leaderless = super::bench_mm::wait_for_replicas(&cluster, "bench").await?;
    let nodes: Vec<u64> = if leaderless {
        cluster.nodes.keys().copied().collect()
    } else {
        vec![
            cluster
                .wait_for_leader("bench", Duration::from_secs(20))
                .await?,
        ]
    };
    let over = if args.api == "wire" {
        format!("the wire protocol ({} connections)", args.connections)
    } else {
        "HTTP (a connection each)".to_string()
    };
    let to = if leaderless {
        "spread over every node"
    } else {
        "to the leader"
    };
    println!(
        "== 3-process cluster, a {} region, fsync on, {} B values, closed-loop writers {to} over {over} ==",
        args.protocol, args.value_bytes
    );
    let raft_beside = if leaderless {
        println!(
            "   (each point is followed by a raft region on the same cluster, writers to its leader)"
        );
        Some(super::bench_mm::raft_beside(&cluster).await?)
    } else {
        None
    };
    let mut points = Vec::new();
    for &clients in &args.clients {
        let point = super::bench_mm::measure(&cluster, "bench", &nodes, clients, args).await?;
        point.print(clients, floor);
        points.push((clients, point.clone()));
        if let Some(leader) = raft_beside {
            super::bench_mm::measure_raft_beside(&cluster, leader, clients, &point, args, floor)
                .await?;
        }
        if let Some((etcd_clients, etcd_writes)) =
            ETCD_REFERENCE.iter().find(|(c, _)| *c == clients)
        {
            // Little's law: closed-loop clients / throughput = mean latency.
            let etcd_mean_ms = *etcd_clients as f64 / etcd_writes * 1e3;
            println!(
                "         vs etcd's {etcd_writes:.0} writes/s at {etcd_clients} clients (the brief's figure for this machine): {:.1}x the writes/s; \
                 etcd's mean latency there is {etcd_mean_ms:.1} ms (clients / writes/s), {:.1}x this run's p99",
                point.writes_per_second / etcd_writes,
                etcd_mean_ms / point.p99_ms.max(1e-9)
            );
        }
    }
    if leaderless {
        let mut cluster = cluster;
        super::bench_mm::one_down(&mut cluster, &points, args, floor).await?;
    } else {
        drop(cluster);
    }
    if args.insecure {
        insecure_comparison(args, &params, &points, floor).await?;
    }
    Ok(())
}

/// The same measurement on a cluster without TLS or tokens, and the
/// secured cluster's figures relative to it.
async fn insecure_comparison(
    args: &BenchArgs,
    params: &[(String, String)],
    secure: &[(usize, super::bench_mm::Point)],
    floor: Duration,
) -> Result<()> {
    use crate::tools::cluster::LocalCluster;
    let dir = tempfile::tempdir()?;
    let binary = std::env::current_exe()?;
    let cluster = LocalCluster::start_insecure(&binary, dir.path(), 3).await?;
    cluster
        .client(1)?
        .create_region("bench", &args.protocol, params)
        .await?;
    let leaderless = super::bench_mm::wait_for_replicas(&cluster, "bench").await?;
    let nodes: Vec<u64> = if leaderless {
        cluster.nodes.keys().copied().collect()
    } else {
        vec![
            cluster
                .wait_for_leader("bench", Duration::from_secs(20))
                .await?,
        ]
    };
    println!("== The same cluster WITHOUT TLS and tokens (--insecure, for comparison only) ==");
    for (clients, with_tls) in secure {
        let plain = super::bench_mm::measure(&cluster, "bench", &nodes, *clients, args).await?;
        plain.print(*clients, floor);
        println!(
            "         TLS + tokens: {:.2}x the writes/s, {:.2}x the p50, {:.2}x the p99 of the insecure cluster",
            with_tls.writes_per_second / plain.writes_per_second.max(1e-9),
            with_tls.p50_ms / plain.p50_ms.max(1e-9),
            with_tls.p99_ms / plain.p99_ms.max(1e-9)
        );
    }
    Ok(())
}

impl BenchArgs {
    pub(crate) fn api_is_wire(&self) -> bool {
        self.api == "wire"
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections
    }

    pub(crate) fn seconds(&self) -> f64 {
        self.seconds
    }
}
