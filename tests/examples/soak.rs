//! The soak: many seeds per fault profile for the correct plugins (native
//! Raft at 3 and 5 nodes with the hunt's parameters, multi-master at 3,
//! standalone at 1), with progress and a summary. Every seed must pass; a
//! failing seed prints its replay line and the exit status is non-zero.
//!
//! ```sh
//! cargo run -p synod-tests --example soak -- --seeds 10000
//! cargo run -p synod-tests --example soak -- --seeds 200 --profiles chaos,clocks --plugins raft3
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use synod::plugin::PluginSource;
use synod::sim::{FaultProfile, SimConfig, SimReport, replay_command, run_hash};
use synod::tools::sim_cli::run_seeds;
use synod_plugin_multi_master::MultiMaster;
use synod_plugin_raft::Raft;
use synod_plugin_standalone::Standalone;

/// Raft's parameters in the soak, as in the hunt: short timeouts, lease
/// reads, frequent snapshots, small append batches.
const RAFT_PARAMS: [(&str, &str); 6] = [
    ("election-timeout-ms", "300"),
    ("heartbeat-ms", "50"),
    ("lease-reads", "true"),
    ("clock-drift-ms", "30"),
    ("snapshot-interval", "40"),
    ("max-batch-bytes", "256"),
];

/// One soaked plugin: its name on the command line, the `--plugin` form of
/// its replay line, and its configuration.
struct Target {
    name: &'static str,
    plugin: &'static str,
    nodes: u64,
    source: PluginSource,
    params: &'static [(&'static str, &'static str)],
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "raft3",
            plugin: "native:raft",
            nodes: 3,
            source: PluginSource::native::<Raft>(),
            params: &RAFT_PARAMS,
        },
        Target {
            name: "raft5",
            plugin: "native:raft",
            nodes: 5,
            source: PluginSource::native::<Raft>(),
            params: &RAFT_PARAMS,
        },
        Target {
            name: "multi-master",
            plugin: "native:multi-master",
            nodes: 3,
            source: PluginSource::native::<MultiMaster>(),
            params: &[],
        },
        Target {
            name: "standalone",
            plugin: "native:standalone",
            nodes: 1,
            source: PluginSource::native::<Standalone>(),
            params: &[],
        },
    ]
}

struct Args {
    seeds: u64,
    first_seed: u64,
    threads: usize,
    profiles: Vec<String>,
    plugins: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        seeds: 1000,
        first_seed: 1,
        threads: 2,
        profiles: FaultProfile::NAMES.iter().map(|s| s.to_string()).collect(),
        plugins: targets().iter().map(|t| t.name.to_string()).collect(),
    };
    let list = |v: String| v.split(',').map(|s| s.trim().to_string()).collect();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => args.seeds = value()?.parse()?,
            "--first-seed" => args.first_seed = value()?.parse()?,
            "--threads" => args.threads = value()?.parse()?,
            "--profiles" | "--profile" => args.profiles = list(value()?),
            "--plugins" | "--plugin" => args.plugins = list(value()?),
            other => bail!("unknown flag {other}"),
        }
    }
    let known: Vec<&str> = targets().iter().map(|t| t.name).collect();
    for name in &args.plugins {
        if !known.contains(&name.as_str()) {
            bail!("unknown plugin {name:?}; use some of {known:?}");
        }
    }
    Ok(args)
}

/// What one (plugin, profile) soak found.
struct Row {
    target: &'static str,
    nodes: u64,
    profile: String,
    seeds: u64,
    failing: Vec<String>,
    virtual_seconds: f64,
    cpu: Duration,
    wall: Duration,
    hash: u64,
}

fn soak(target: &Target, profile: FaultProfile, args: &Args) -> Row {
    let config = SimConfig {
        nodes: target.nodes,
        faults: profile,
        fault_phase: Duration::from_secs(6),
        quiet_phase: Duration::from_secs(4),
        clients: 4,
        keys: 8,
        source: target.source.clone(),
        params: target
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        record_trace: false,
        swap_to: None,
    };
    let label = format!(
        "{} ({} nodes) {}",
        target.name, target.nodes, config.faults.name
    );
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let failing = AtomicU64::new(0);
    let cpu_nanos = AtomicU64::new(0);
    let every = (args.seeds / 20).max(1);
    let per_seed = (config.fault_phase + config.quiet_phase).as_secs_f64();
    let print = Mutex::new(());
    let reports = run_seeds(
        &config,
        args.first_seed,
        args.seeds,
        args.threads,
        &|report: &SimReport| {
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if !report.violations.is_empty() {
                failing.fetch_add(1, Ordering::Relaxed);
                let _guard = print.lock().unwrap_or_else(|p| p.into_inner());
                eprintln!("{label}: seed {} FAILED", report.seed);
                for violation in &report.violations {
                    eprintln!("  {violation}");
                }
            }
            let cpu = cpu_nanos.fetch_add(
                u64::try_from(report.cpu.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            ) + u64::try_from(report.cpu.as_nanos()).unwrap_or(u64::MAX);
            if n.is_multiple_of(every) || n == args.seeds {
                let virtual_seconds = n as f64 * per_seed;
                eprintln!(
                    "{label}: {n}/{} seeds, {} failing, {:.0}s wall, {:.0} virtual s per CPU s",
                    args.seeds,
                    failing.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64(),
                    virtual_seconds / (cpu as f64 / 1e9).max(1e-9)
                );
            }
        },
    );
    Row {
        target: target.name,
        nodes: target.nodes,
        profile: config.faults.name.to_string(),
        seeds: reports.len() as u64,
        failing: reports
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| {
                format!(
                    "{}\n    replay: {}",
                    r.violations.join("\n    "),
                    replay_command(target.plugin, &config, r.seed)
                )
            })
            .collect(),
        virtual_seconds: reports.iter().map(|r| r.virtual_seconds).sum(),
        cpu: reports.iter().map(|r| r.cpu).sum(),
        wall: started.elapsed(),
        hash: run_hash(&reports),
    }
}

fn main() -> Result<()> {
    let args = parse()?;
    let mut rows = Vec::new();
    for target in targets()
        .iter()
        .filter(|t| args.plugins.iter().any(|p| p == t.name))
    {
        for name in &args.profiles {
            let profile = FaultProfile::named(name).with_context(|| {
                format!(
                    "unknown profile {name:?}; use one of {:?}",
                    FaultProfile::NAMES
                )
            })?;
            rows.push(soak(target, profile, &args));
        }
    }
    println!(
        "\n| plugin | nodes | profile | seeds | failing | virtual s / CPU s | wall | run hash |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} (from {}) | {} | {:.0} | {:.0}s | {:016x} |",
            row.target,
            row.nodes,
            row.profile,
            row.seeds,
            args.first_seed,
            row.failing.len(),
            row.virtual_seconds / row.cpu.as_secs_f64().max(1e-9),
            row.wall.as_secs_f64(),
            row.hash
        );
    }
    let failed: usize = rows.iter().map(|r| r.failing.len()).sum();
    for row in rows.iter().filter(|r| !r.failing.is_empty()) {
        println!("\n{} {} failing seeds:", row.target, row.profile);
        for failure in &row.failing {
            println!("  {failure}");
        }
    }
    if failed > 0 {
        bail!("{failed} seeds violated an invariant");
    }
    Ok(())
}
