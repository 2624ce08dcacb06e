//! EPaxos in the deterministic simulator: at least one client per replica,
//! so every replica leads commands (there is no leader to find), under
//! seeded loss, reordering, duplication, partitions and crash-restarts;
//! every seed's history is checked for linearizability and the replicas
//! must converge.

use std::time::{Duration, Instant};

use synod::sim::{FaultProfile, SimConfig, SimReport, run_seed};
use synod::tools::sim_cli::plugin_source;

fn config(plugin: &str, nodes: u64, faults: &str) -> SimConfig {
    SimConfig {
        nodes,
        faults: FaultProfile::named(faults).expect("profile"),
        fault_phase: Duration::from_secs(3),
        quiet_phase: Duration::from_secs(3),
        clients: nodes as usize,
        keys: 6,
        source: plugin_source(plugin).expect("plugin"),
        params: Vec::new(),
        record_trace: false,
        swap_to: None,
    }
}

fn run(config: &SimConfig, seed: u64) -> SimReport {
    let started = Instant::now();
    let report = run_seed(config, seed);
    println!(
        "n={} {:?} seed {seed}: {} ok, {} steps, {:.2}s wall, fast {} slow {} recoveries {} noops {}",
        config.nodes,
        config.faults.name,
        report.operations_ok,
        report.steps,
        started.elapsed().as_secs_f64(),
        report.counters.get("fast-path").copied().unwrap_or(0),
        report.counters.get("slow-path").copied().unwrap_or(0),
        report.counters.get("recoveries").copied().unwrap_or(0),
        report.counters.get("noops-committed").copied().unwrap_or(0),
    );
    report
}

/// Every seed passes, clients made progress, and each replica led
/// commands (the clients really wrote through every node).
fn assert_passes(nodes: u64, faults: &str, seeds: std::ops::Range<u64>) {
    assert_config_passes(&config("native:epaxos", nodes, faults), seeds);
}

fn assert_config_passes(config: &SimConfig, seeds: std::ops::Range<u64>) {
    let nodes = config.nodes;
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run(config, seed);
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                report.violations,
                synod::sim::replay_command("native:epaxos", config, seed)
            ));
        }
        assert!(
            report.operations_ok > 20,
            "seed {seed}: clients made progress"
        );
        assert!(
            report.counters.get("instances-led").copied().unwrap_or(0) >= nodes,
            "seed {seed}: commands were led"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn three_nodes_under_loss_duplication_and_reordering() {
    assert_passes(3, "lossy", 1..3);
}

#[test]
fn three_nodes_under_partitions() {
    assert_passes(3, "partitions", 1..3);
}

#[test]
fn three_nodes_under_chaos() {
    assert_passes(3, "chaos", 1..3);
}

#[test]
fn five_nodes_under_chaos() {
    assert_passes(5, "chaos", 1..3);
}

#[test]
fn seven_nodes_under_chaos() {
    let mut config = config("native:epaxos", 7, "chaos");
    // A shorter run: seven replicas' graphs make each event dearer.
    config.fault_phase = Duration::from_millis(1500);
    config.quiet_phase = Duration::from_secs(2);
    assert_config_passes(&config, 1..2);
}

#[test]
fn three_nodes_without_faults() {
    assert_passes(3, "none", 1..2);
}

#[test]
fn three_nodes_with_crash_restarts() {
    assert_passes(3, "crashes", 1..3);
}

/// Slow (15-50 s of wall time): under crash-restarts the dependency
/// graphs of 5 and 7 replicas grow to thousands of instances before they
/// execute, and nothing is compacted yet (no GC). Run with `--ignored`.
#[test]
#[ignore = "slow until executed instances are compacted (15-50 s)"]
fn five_nodes_with_crash_restarts() {
    assert_passes(5, "crashes", 1..2);
}

#[test]
#[ignore = "slow until executed instances are compacted (15-50 s)"]
fn seven_nodes_with_crash_restarts() {
    assert_passes(7, "crashes", 1..2);
}
