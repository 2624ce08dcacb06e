//! Per-seed budgets: a protocol that storms or livelocks ends its seed as a
//! reported failure (with the seed) in seconds, instead of hanging the run.

use std::time::{Duration, Instant};

use synod::plugin::PluginSource;
use synod::sim::{FaultProfile, SeedLimits, SimConfig, World};
use synod_guest_sdk::*;

/// A replicated protocol that answers every peer message with two (a
/// storm), or with `mode=spin`, re-arms a zero timer forever (a livelock
/// in which virtual time barely advances). Writes are refused.
struct Storm {
    id: NodeId,
    peers: Vec<NodeId>,
    spin: bool,
    position: u64,
}

const KICK: TimerId = 1;

impl Protocol for Storm {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "storm".into(),
            version: "0.0.1".into(),
            consistency: Consistency::Linearizable,
            capabilities: Capabilities {
                replication: true,
                ..Capabilities::default()
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        // The storm starts a little after boot, so it is the protocol, not
        // the first round, that never settles.
        host.set_timer(KICK, 50_000_000);
        Storm {
            id: config.self_id,
            peers: config.membership.voters.clone(),
            spin: config.param("mode") == Some("spin"),
            position: config.applied_position,
        }
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        // Busy storming: writes are refused (so no replica state differs).
        host.reject(&commands.ids, &Rejection::Unavailable("storming".into()));
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        host.complete_reads(&reads.ids);
    }

    fn on_messages<H: Host>(&mut self, host: &mut H, messages: Messages) {
        for (from, _) in messages.iter() {
            let mut batch = Batch::new();
            batch.push(b"ping");
            batch.push(b"pong");
            host.send(from, &batch);
            host.send(from, &batch);
        }
    }

    fn on_timers<H: Host>(&mut self, host: &mut H, _timers: Vec<TimerId>) {
        if self.spin {
            host.set_timer(KICK, 0);
            return;
        }
        for peer in self.peers.iter().filter(|p| **p != self.id) {
            let mut batch = Batch::new();
            batch.push(b"ping");
            host.send(*peer, &batch);
        }
    }

    fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
        SealProgress::Sealed(self.position)
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> Status {
        Status {
            role: Role::Replica,
            leader: None,
            term: 0,
            commit_position: self.position,
            applied_position: self.position,
            peers: Vec::new(),
            counters: Vec::new(),
        }
    }
}

fn storm_config(mode: &str) -> SimConfig {
    SimConfig {
        nodes: 3,
        faults: FaultProfile::named("none").expect("profile"),
        fault_phase: Duration::from_secs(6),
        quiet_phase: Duration::from_secs(4),
        clients: 2,
        keys: 4,
        source: PluginSource::native::<Storm>(),
        params: vec![("mode".into(), mode.into())],
        record_trace: false,
        swap_to: None,
    }
}

/// Goal: a message storm (every message answered with two) ends its seed
/// within seconds of wall time, as a violation naming the storm and the
/// seed, long before the run's virtual end.
#[test]
fn a_message_storm_ends_the_seed_as_a_reported_failure() {
    let started = Instant::now();
    let report = World::new(storm_config("storm"), 11).run();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    let why = &report.violations[0];
    assert!(why.contains("storm/livelock"), "{why}");
    assert!(why.contains("(seed 11)"), "{why}");
    assert!(report.virtual_seconds < 1.0, "{}", report.virtual_seconds);
}

/// Goal: a timer re-armed at zero forever (virtual time crawls by a
/// nanosecond per event) is a livelock, reported the same way.
#[test]
fn a_zero_timer_livelock_ends_the_seed_as_a_reported_failure() {
    let started = Instant::now();
    let report = World::new(storm_config("spin"), 3).run();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("storm/livelock")),
        "{:?}",
        report.violations
    );
}

/// Goal: the wall-time backstop stops a seed that is slow without
/// storming; a correct protocol under the default budgets is not stopped.
#[test]
fn the_wall_time_budget_stops_a_seed_and_defaults_leave_a_correct_run_alone() {
    let mut config = storm_config("storm");
    config.source = synod::tools::sim_cli::plugin_source("native:raft").expect("raft");
    config.params = vec![
        ("election-timeout-ms".into(), "300".into()),
        ("heartbeat-ms".into(), "50".into()),
    ];
    let limits = SeedLimits {
        wall_time: Duration::ZERO,
        ..SeedLimits::default()
    };
    let stopped = World::new(config.clone(), 5).with_limits(limits).run();
    assert!(
        stopped
            .violations
            .iter()
            .any(|v| v.contains("wall-time limit")),
        "{:?}",
        stopped.violations
    );
    let full = World::new(config, 5).run();
    assert!(full.violations.is_empty(), "{:?}", full.violations);
    assert!(full.virtual_seconds >= 10.0);
}
