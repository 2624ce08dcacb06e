//! `synod sim`: runs any plugin — built-in or a third party's `.wasm` —
//! through the deterministic simulator over many seeds, with a progress bar
//! and a summary table; failing seeds print their replay command and can
//! write a trace.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::engine::{PluginEngine, SandboxLimits};
use crate::plugin::PluginSource;
use crate::sim::{FaultProfile, SimConfig, SimReport, replay_command, run_seed};

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// A .wasm component, a built-in protocol name (standalone, raft), or
    /// native:<name> for a protocol linked into this binary.
    #[arg(long)]
    pub plugin: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// How many seeds to run, starting at --seed.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// First seed (a failing seed replays exactly with --seeds 1).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// none, lossy, partitions, crashes or chaos.
    #[arg(long, default_value = "chaos")]
    pub faults: String,
    /// Virtual seconds of faults per seed (a quiet phase follows).
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Virtual seconds of the quiet phase.
    #[arg(long, default_value_t = 4.0)]
    pub quiet_seconds: f64,
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Protocol parameter, repeatable: --param election-timeout-ms=300
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Write text traces and HTML pages (space-time diagrams) of failing
    /// seeds (or of the one seed with --seeds 1) into this directory.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Live protocol swap: at a seeded time in the fault phase, move the
    /// region to epoch 2 running this protocol (same forms as --plugin).
    #[arg(long)]
    pub swap_to: Option<String>,
    /// Worker threads (seeds run in parallel; each seed is single-threaded).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// Resolves `--plugin` to something the simulator can instantiate.
pub fn plugin_source(plugin: &str) -> Result<PluginSource> {
    if let Some(name) = plugin.strip_prefix("native:") {
        return crate::node::native_protocol(name)
            .with_context(|| format!("no native protocol named {name}"));
    }
    let bytes = match crate::node::builtin_components()
        .into_iter()
        .find(|(name, _)| *name == plugin)
    {
        Some((_, bytes)) => bytes.to_vec(),
        None => std::fs::read(plugin).with_context(|| {
            format!("{plugin:?} is neither a built-in protocol nor a readable .wasm file")
        })?,
    };
    let limits = SandboxLimits {
        instances_max: 256,
        ..SandboxLimits::default()
    };
    let engine = Arc::new(PluginEngine::new(limits, None)?);
    let component = engine.load(&bytes)?;
    Ok(PluginSource::Wasm { engine, component })
}

pub fn config(args: &SimArgs) -> Result<SimConfig> {
    let faults = FaultProfile::named(&args.faults).with_context(|| {
        format!(
            "unknown fault profile {:?}; use one of {:?}",
            args.faults,
            FaultProfile::NAMES
        )
    })?;
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    if !(args.seconds > 0.0 && args.quiet_seconds > 1.0) {
        bail!("--seconds must be positive and --quiet-seconds above 1");
    }
    Ok(SimConfig {
        nodes: args.nodes,
        faults,
        fault_phase: Duration::from_secs_f64(args.seconds),
        quiet_phase: Duration::from_secs_f64(args.quiet_seconds),
        clients: args.clients,
        keys: args.keys,
        source: plugin_source(&args.plugin)?,
        params: args.params.clone(),
        record_trace: false,
        swap_to: args.swap_to.as_deref().map(plugin_source).transpose()?,
    })
}

/// Runs `count` seeds from `first` on `threads` threads; calls `progress`
/// after each. Reports come back in seed order.
pub fn run_seeds(
    config: &SimConfig,
    first: u64,
    count: u64,
    threads: usize,
    progress: &(dyn Fn(&SimReport) + Sync),
) -> Vec<SimReport> {
    let next = AtomicU64::new(first);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    let report = run_seed(config, seed);
                    progress(&report);
                    reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|r| r.seed);
    reports
}

pub fn run(args: SimArgs) -> Result<()> {
    let config = config(&args)?;
    let info = config.source.info();
    println!(
        "synod sim: {} {} ({}) on {} nodes, faults {:?}, {} seeds from {}, {:.1}s + {:.1}s virtual each",
        info.name,
        info.version,
        info.consistency.as_str(),
        args.nodes,
        args.faults,
        args.seeds,
        args.seed,
        args.seconds,
        args.quiet_seconds
    );
    if let Some(target) = &config.swap_to {
        let target = target.info();
        println!(
            "  live swap mid-run to {} {} (epoch 1 → 2)",
            target.name, target.version
        );
    }
    let bar = indicatif::ProgressBar::new(args.seeds);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds  {msg}  [{elapsed} / eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let failures = AtomicU64::new(0);
    let started = Instant::now();
    let reports = run_seeds(&config, args.seed, args.seeds, args.threads, &|report| {
        if !report.violations.is_empty() {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        bar.set_message(format!("{} failing", failures.load(Ordering::Relaxed)));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();

    let failing: Vec<&SimReport> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    let virtual_seconds: f64 = reports.iter().map(|r| r.virtual_seconds).sum();
    let ok: u64 = reports.iter().map(|r| r.operations_ok).sum();
    let elections: u64 = reports.iter().map(|r| r.leader_changes).sum();
    println!("  seeds run            {}", reports.len());
    println!("  seeds with violations {}", failing.len());
    println!(
        "  operations completed {ok} ({:.0} per virtual second)",
        ok as f64 / virtual_seconds.max(1e-9)
    );
    println!(
        "  leader changes       {elections} ({:.1} per seed)",
        elections as f64 / reports.len().max(1) as f64
    );
    println!(
        "  wall time            {wall:.1}s ({:.1} seeds/s)",
        reports.len() as f64 / wall.max(1e-9)
    );
    let cpu: f64 = reports.iter().map(|r| r.cpu.as_secs_f64()).sum();
    println!(
        "  speed                {:.0} virtual s per CPU s of the seeds' threads ({:.0} per wall s)",
        virtual_seconds / cpu.max(1e-9),
        virtual_seconds / wall.max(1e-9)
    );
    println!(
        "  run hash             {:016x} (equal iff every seed ran identically)",
        crate::sim::run_hash(&reports)
    );
    for report in &failing {
        println!("\nseed {} FAILED:", report.seed);
        for violation in &report.violations {
            println!("  {violation}");
        }
        println!(
            "  replay: {}",
            replay_command(&args.plugin, &config, report.seed)
        );
    }
    let trace_seeds: Vec<u64> = if args.seeds == 1 {
        vec![args.seed]
    } else {
        failing.iter().map(|r| r.seed).take(5).collect()
    };
    if let Some(dir) = &args.trace {
        std::fs::create_dir_all(dir)?;
        let mut traced = config.clone();
        traced.record_trace = true;
        for seed in trace_seeds {
            let report = run_seed(&traced, seed);
            if let Some(trace) = report.trace {
                let base = dir.join(format!("seed-{seed}"));
                std::fs::write(base.with_extension("txt"), trace.to_text())?;
                let title = format!("{} seed {seed} ({} faults)", info.name, args.faults);
                std::fs::write(base.with_extension("html"), trace.to_html(&title))?;
                let opens = match report.violations.first() {
                    Some(first) => format!(
                        "opens on {}",
                        first.split_whitespace().next().unwrap_or("the violation")
                    ),
                    None => "the whole run".to_string(),
                };
                println!(
                    "  trace of seed {seed}: {}.txt, and {}.html (a space-time diagram in any browser; {opens})",
                    base.display(),
                    base.display()
                );
            }
        }
    }
    if !failing.is_empty() {
        bail!(
            "{} of {} seeds violated an invariant",
            failing.len(),
            reports.len()
        );
    }
    Ok(())
}
