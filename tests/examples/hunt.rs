//! The mutant hunt: runs every deliberate Raft bug (`synod-plugin-raft`
//! feature `mutants`) natively through the simulator over a seed budget per
//! fault profile at 3 and 5 nodes, prints the catch table, and the unbroken
//! plugin's violations (there must be none).
//!
//! ```sh
//! cargo run -p synod-tests --example hunt -- --seeds 100
//! cargo run -p synod-tests --example hunt -- --mutants figure8-commit --seeds 20
//! cargo run -p synod-tests --example hunt -- --replay figure8-commit --profile chaos --nodes 3 --seed 17 --trace sim-trace
//! ```

use std::time::Duration;

use anyhow::{Context, Result, bail};
use synod::plugin::PluginSource;
use synod::sim::hunt::{HuntCase, HuntPlan, catch_table, hunt};
use synod::sim::{FaultProfile, SimConfig, run_seed};
use synod_plugin_raft::Raft;
use synod_plugin_raft::mutants::Mutant;

/// The parameters every hunt runs Raft with: short timeouts (many
/// elections), lease reads on (half the reads take the lease path),
/// frequent snapshots (installs happen) and small append batches (a
/// follower catching up acknowledges a prefix at a time).
pub const HUNT_PARAMS: [(&str, &str); 6] = [
    ("election-timeout-ms", "300"),
    ("heartbeat-ms", "50"),
    ("lease-reads", "true"),
    ("clock-drift-ms", "30"),
    ("snapshot-interval", "40"),
    ("max-batch-bytes", "256"),
];

fn base() -> SimConfig {
    SimConfig {
        nodes: 3,
        faults: FaultProfile::named("chaos").expect("a named profile"),
        fault_phase: Duration::from_secs(6),
        quiet_phase: Duration::from_secs(4),
        clients: 4,
        keys: 8,
        source: PluginSource::native::<Raft>(),
        params: HUNT_PARAMS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        record_trace: false,
        swap_to: None,
    }
}

struct Args {
    seeds: u64,
    first_seed: u64,
    nodes: Vec<u64>,
    profiles: Vec<String>,
    mutants: Vec<String>,
    threads: usize,
    baseline: bool,
    replay: Option<String>,
    seed: u64,
    trace: Option<String>,
    unsteered: bool,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        seeds: 100,
        first_seed: 1,
        nodes: vec![3, 5],
        profiles: FaultProfile::NAMES.iter().map(|s| s.to_string()).collect(),
        mutants: Mutant::ALL.iter().map(|m| m.name().to_string()).collect(),
        threads: 2,
        baseline: true,
        replay: None,
        seed: 1,
        trace: None,
        unsteered: false,
    };
    let list = |v: &str| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => args.seeds = value()?.parse()?,
            "--first-seed" => args.first_seed = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--nodes" => {
                args.nodes = list(&value()?)
                    .iter()
                    .map(|n| n.parse())
                    .collect::<Result<_, _>>()?
            }
            "--profiles" | "--profile" => args.profiles = list(&value()?),
            "--mutants" => args.mutants = list(&value()?),
            "--threads" => args.threads = value()?.parse()?,
            "--no-baseline" => args.baseline = false,
            "--mutants-only" => args.baseline = false,
            "--baseline-only" => args.mutants.clear(),
            "--replay" => args.replay = Some(value()?),
            "--trace" => args.trace = Some(value()?),
            "--unsteered" => args.unsteered = true,
            other => bail!("unknown flag {other}"),
        }
    }
    for name in &args.mutants {
        if Mutant::named(name).is_none() && name != "none" {
            bail!("unknown mutant {name:?}");
        }
    }
    Ok(args)
}

fn profile(name: &str) -> Result<FaultProfile> {
    FaultProfile::named(name).with_context(|| {
        format!(
            "unknown profile {name:?}; use one of {:?}",
            FaultProfile::NAMES
        )
    })
}

fn replay(args: &Args, mutant: &str) -> Result<()> {
    let mut config = base();
    config.nodes = *args.nodes.first().context("--nodes")?;
    config.faults = profile(args.profiles.first().context("--profile")?)?;
    if mutant != "none" {
        config.params.push(("mutant".into(), mutant.into()));
    }
    config.record_trace = args.trace.is_some();
    let report = run_seed(&config, args.seed);
    println!(
        "{mutant} seed {} ({} nodes, {}): {} violations",
        args.seed,
        config.nodes,
        config.faults.name,
        report.violations.len()
    );
    for violation in &report.violations {
        println!("  {violation}");
    }
    if let (Some(dir), Some(trace)) = (&args.trace, &report.trace) {
        std::fs::create_dir_all(dir)?;
        let path = format!("{dir}/{mutant}-seed-{}.txt", args.seed);
        std::fs::write(&path, trace.to_text())?;
        println!("trace: {path}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse()?;
    if let Some(mutant) = &args.replay {
        return replay(&args, mutant);
    }
    let mut profiles = args
        .profiles
        .iter()
        .map(|p| profile(p))
        .collect::<Result<Vec<_>>>()?;
    if args.unsteered {
        // The profiles without steering (as before it existed): faults at
        // random instants, pauses and partitions at random nodes.
        for profile in &mut profiles {
            profile.target_leader = 0.0;
            profile.wake_inputs_first = 0.0;
            profile.crash_eager = 0.0;
            profile.crash_before_release = 0.0;
        }
    }
    let plan = HuntPlan {
        nodes: args.nodes.clone(),
        profiles,
        seeds: args.seeds,
        first_seed: args.first_seed,
        threads: args.threads,
        stop_at_first: true,
    };
    let base = base();
    let run = |config: &SimConfig, seed: u64| run_seed(config, seed);
    let mut rows = Vec::new();
    if args.baseline {
        let unbroken = HuntCase {
            name: "(unmutated raft)".into(),
            params: Vec::new(),
        };
        let full = HuntPlan {
            stop_at_first: false,
            ..plan.clone()
        };
        let found = hunt(&base, &full, &[unbroken], &run, &|row| {
            eprintln!(
                "unmutated: {} seeds, {} failing, {:.0}s wall, {:.0} virtual s/wall s, at most {} leaderless terms in a seed",
                row.seeds_run,
                row.catches.len(),
                row.wall.as_secs_f64(),
                row.virtual_seconds / row.wall.as_secs_f64().max(1e-9),
                row.max_leaderless_terms
            );
            for catch in &row.catches {
                eprintln!(
                    "  {} nodes {} seed {}: {}\n    replay: cargo run -p synod-tests --example hunt -- --replay none --profile {} --nodes {} --seed {} --trace sim-trace",
                    catch.nodes,
                    catch.profile,
                    catch.seed,
                    catch.violation,
                    catch.profile,
                    catch.nodes,
                    catch.seed
                );
            }
        });
        rows.extend(found);
    }
    let cases: Vec<HuntCase> = args
        .mutants
        .iter()
        .filter(|m| *m != "none")
        .map(|m| HuntCase {
            name: m.clone(),
            params: vec![("mutant".into(), m.clone())],
        })
        .collect();
    let unbroken = rows.len();
    let found = hunt(&base, &plan, &cases, &run, &|row| match row.caught() {
        Some(catch) => eprintln!(
            "{}: caught by {} ({} nodes, {}, seed {}) after {} seeds, {:.1}s: {}\n  replay: cargo run -p synod-tests --example hunt -- --replay {} --profile {} --nodes {} --seed {} --trace sim-trace",
            row.name,
            catch.oracle,
            catch.nodes,
            catch.profile,
            catch.seed,
            row.seeds_run,
            row.wall.as_secs_f64(),
            catch.violation,
            row.name,
            catch.profile,
            catch.nodes,
            catch.seed
        ),
        None => eprintln!(
            "{}: NOT caught in {} seeds ({:.1}s); mutant-reached {}; at most {} leaderless terms in a seed",
            row.name,
            row.seeds_run,
            row.wall.as_secs_f64(),
            row.counters.get("mutant-reached").copied().unwrap_or(0),
            row.max_leaderless_terms
        ),
    });
    rows.extend(found);
    print!("{}", catch_table(&rows, unbroken, Some("mutant-reached")));
    Ok(())
}
