//! The deterministic simulator as a test tool: protocols run a bounded
//! number of seeds per fault profile, replays are bit-identical, native and
//! Wasm modes give the same trace, and deliberately broken protocols are
//! caught within the seed budget.

use std::time::Duration;

use synod::sim::{FaultProfile, SimConfig, run_seed};
use synod::sim_cli::{plugin_source, run_seeds};

fn config(plugin: &str, nodes: u64, faults: &str, params: &[(&str, &str)]) -> SimConfig {
    SimConfig {
        nodes,
        faults: FaultProfile::named(faults).expect("profile"),
        fault_phase: Duration::from_secs(4),
        quiet_phase: Duration::from_secs(3),
        clients: 4,
        keys: 6,
        source: plugin_source(plugin).expect("plugin"),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        record_trace: false,
    }
}

/// Runs seeds and fails with every violation and its replay command.
fn assert_seeds_pass(plugin: &str, config: &SimConfig, first: u64, count: u64) {
    let reports = run_seeds(config, first, count, 2, &|_| {});
    let mut failures = Vec::new();
    for report in &reports {
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {}: {:?}\n  replay: {}",
                report.seed,
                report.violations,
                synod::sim::replay_command(plugin, config, report.seed)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let ok: u64 = reports.iter().map(|r| r.operations_ok).sum();
    assert!(ok > count * 20, "clients made progress ({ok} operations)");
}

#[test]
fn standalone_survives_crashes_and_torn_writes() {
    let config = config("standalone", 1, "crashes", &[("snapshot-interval", "40")]);
    assert_seeds_pass("standalone", &config, 1, 12);
}

#[test]
fn replays_are_bit_identical() {
    let mut config = config("standalone", 1, "crashes", &[("snapshot-interval", "40")]);
    config.record_trace = true;
    let first = run_seed(&config, 7);
    let second = run_seed(&config, 7);
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.operations_ok, second.operations_ok);
    let (a, b) = (first.trace.expect("trace"), second.trace.expect("trace"));
    assert_eq!(a.to_text(), b.to_text());
    let other = run_seed(&config, 8);
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "another seed is another run"
    );
}

#[test]
fn native_and_wasm_give_the_same_trace() {
    let wasm = config("standalone", 1, "crashes", &[("snapshot-interval", "40")]);
    let native = config(
        "native:standalone",
        1,
        "crashes",
        &[("snapshot-interval", "40")],
    );
    for seed in [3, 4] {
        let a = run_seed(&wasm, seed);
        let b = run_seed(&native, seed);
        assert!(a.violations.is_empty() && b.violations.is_empty());
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.operations_ok, b.operations_ok);
    }
}

#[test]
fn traces_render_as_text_and_html() {
    let mut config = config("standalone", 1, "crashes", &[]);
    config.record_trace = true;
    let trace = run_seed(&config, 5).trace.expect("trace");
    let text = trace.to_text();
    assert!(
        text.contains("boot") && text.contains("crash"),
        "{}",
        &text[..text.len().min(500)]
    );
    let html = trace.to_html("standalone seed 5");
    assert!(html.contains("<svg") && html.contains("</html>"));
}
