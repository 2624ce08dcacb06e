//! The simulator hunts: key deliberate Raft bugs (feature `mutants`) are
//! caught within a small seed budget, by the simulator's own oracles, and
//! the unbroken plugin passes 5-node seeds.

use std::time::Duration;

use synod::plugin::PluginSource;
use synod::sim::hunt::{HuntCase, HuntPlan, hunt};
use synod::sim::{FaultProfile, SimConfig, run_seed};
use synod_plugin_raft::Raft;

fn base() -> SimConfig {
    SimConfig {
        nodes: 3,
        faults: FaultProfile::named("chaos").expect("profile"),
        fault_phase: Duration::from_secs(6),
        quiet_phase: Duration::from_secs(4),
        clients: 4,
        keys: 8,
        source: PluginSource::native::<Raft>(),
        params: [
            ("election-timeout-ms", "300"),
            ("heartbeat-ms", "50"),
            ("lease-reads", "true"),
            ("clock-drift-ms", "30"),
            ("snapshot-interval", "40"),
            ("max-batch-bytes", "256"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        record_trace: false,
        swap_to: None,
    }
}

/// Goal: 5-node clusters run in CI too; the unbroken plugin passes a few
/// seeds of every profile at 5 nodes.
#[test]
fn unbroken_raft_passes_five_node_seeds_of_every_profile() {
    let plan = HuntPlan {
        nodes: vec![5],
        profiles: FaultProfile::NAMES
            .iter()
            .map(|name| FaultProfile::named(name).expect("profile"))
            .collect(),
        seeds: 2,
        first_seed: 1,
        threads: 2,
        stop_at_first: false,
    };
    let case = HuntCase {
        name: "raft".into(),
        params: Vec::new(),
    };
    let rows = hunt(&base(), &plan, &[case], &|c, s| run_seed(c, s), &|_| {});
    assert_eq!(rows[0].seeds_run, 10);
    assert!(rows[0].catches.is_empty(), "{:?}", rows[0].catches);
    // Coverage: the run exercised elections, replication and reads.
    for counter in ["elections-won", "entries-appended", "read-rounds-started"] {
        assert!(
            rows[0].counters.get(counter).copied().unwrap_or(0) > 0,
            "{counter}: {:?}",
            rows[0].counters
        );
    }
}
