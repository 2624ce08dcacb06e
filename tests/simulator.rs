//! The deterministic simulator as a test tool: protocols run a bounded
//! number of seeds per fault profile, replays are bit-identical, native and
//! Wasm modes give the same trace, and deliberately broken protocols are
//! caught within the seed budget.

use std::time::Duration;

use synod::sim::{FaultProfile, SimConfig, run_seed};
use synod::tools::sim_cli::{plugin_source, run_seeds};

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
        swap_to: None,
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
    assert!(html.contains("<canvas") && html.contains("</html>"));
    assert!(
        html.contains("\"nodes\":[1]"),
        "the page's data names the node"
    );
}

#[test]
fn plugin_log_lines_reach_the_trace_with_virtual_time_and_node() {
    let mut config = config("raft", 3, "crashes", &[]);
    config.record_trace = true;
    let trace = run_seed(&config, 7).trace.expect("trace");
    let logged: Vec<_> = trace
        .events()
        .iter()
        .filter(|e| e.what.starts_with("plugin info: raft:"))
        .collect();
    for node in 1..=3 {
        assert!(
            logged
                .iter()
                .any(|e| e.node == node && e.what.contains(&format!("node {node} starts"))),
            "node {node}'s start line is in the trace: {logged:?}"
        );
    }
    assert!(
        logged
            .iter()
            .any(|e| e.nanos > 0 && e.what.contains("is leader for term")),
        "a leader's line, stamped with virtual time"
    );
    let text = trace.to_text();
    assert!(text.contains("plugin info: raft: node 1 starts"));
    assert!(
        trace
            .to_html("raft seed 7")
            .contains("info: raft: node 1 starts")
    );
}

mod overeager {
    //! A deliberately broken Raft that commits without a quorum: every
    //! AppendEntries it sends is answered at once by a forged success from
    //! the follower, so it counts acknowledgements that never happened.

    use synod_guest_sdk::*;
    use synod_plugin_raft::Raft;
    use synod_plugin_raft::message::Message;

    /// Delegates every effect and forges an ack for each Append sent.
    struct ForgeAcks<'a, H> {
        host: &'a mut H,
        forged: &'a mut Messages,
    }

    impl<H: Host> ForgeAcks<'_, H> {
        fn forge(&mut self, to: NodeId, messages: &Batch) {
            for bytes in messages.iter() {
                if let Ok(Message::Append {
                    term,
                    prev_index,
                    entries,
                    ..
                }) = Message::decode(bytes)
                {
                    let ack = Message::AppendResponse {
                        term,
                        success: true,
                        index: prev_index + entries.ends.len() as u64,
                        hint_index: 0,
                        hint_term: 0,
                    };
                    self.forged.senders.push(to);
                    self.forged.payloads.push(&ack.encode());
                }
            }
        }
    }

    impl<H: Host> Host for ForgeAcks<'_, H> {
        fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError> {
            self.host.log_append(first, entries)
        }
        fn log_read(&mut self, first: u64, last: u64, max: u32) -> Result<Batch, StorageError> {
            self.host.log_read(first, last, max)
        }
        fn log_bounds(&mut self) -> LogBounds {
            self.host.log_bounds()
        }
        fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
            self.host.log_truncate_suffix(from)
        }
        fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError> {
            self.host.log_compact_prefix(through)
        }
        fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
            self.host.kv_get(key)
        }
        fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
            self.host.kv_put(key, value)
        }
        fn kv_delete(&mut self, key: &[u8]) {
            self.host.kv_delete(key)
        }
        fn send(&mut self, to: NodeId, messages: &Batch) {
            self.forge(to, messages);
            self.host.send(to, messages)
        }
        fn send_eager(&mut self, to: NodeId, messages: &Batch) {
            self.forge(to, messages);
            self.host.send_eager(to, messages)
        }
        fn now(&mut self) -> u64 {
            self.host.now()
        }
        fn set_timer(&mut self, id: TimerId, after: u64) {
            self.host.set_timer(id, after)
        }
        fn cancel_timer(&mut self, id: TimerId) {
            self.host.cancel_timer(id)
        }
        fn random(&mut self) -> u64 {
            self.host.random()
        }
        fn apply(&mut self, commands: &Applies, position: u64) {
            self.host.apply(commands, position)
        }
        fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64) {
            self.host.apply_stamped(commands, stamps, position)
        }
        fn compact_tombstones(&mut self, below: u64) {
            self.host.compact_tombstones(below)
        }
        fn query(&mut self, query: &[u8]) -> Vec<u8> {
            self.host.query(query)
        }
        fn snapshot(&mut self) -> Result<u64, StorageError> {
            self.host.snapshot()
        }
        fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError> {
            self.host.snapshot_async(notify)
        }
        fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]) {
            self.host.send_snapshot(to, metadata)
        }
        fn digest(&mut self) -> Vec<u8> {
            self.host.digest()
        }
        fn complete_reads(&mut self, ids: &[RequestId]) {
            self.host.complete_reads(ids)
        }
        fn reject(&mut self, ids: &[RequestId], reason: &Rejection) {
            self.host.reject(ids, reason)
        }
        fn log(&mut self, level: Level, message: &str) {
            self.host.log(level, message)
        }
    }

    pub struct OverEager(Raft);

    impl OverEager {
        /// Runs `f` against the forging host, then feeds the forged acks
        /// back in (a few rounds: acks can trigger more sends).
        fn with<H: Host, R>(
            &mut self,
            host: &mut H,
            f: impl FnOnce(&mut Raft, &mut ForgeAcks<'_, H>) -> R,
        ) -> R {
            let mut forged = Messages::default();
            let result = f(
                &mut self.0,
                &mut ForgeAcks {
                    host,
                    forged: &mut forged,
                },
            );
            for _ in 0..4 {
                if forged.senders.is_empty() {
                    break;
                }
                let batch = std::mem::take(&mut forged);
                self.0.on_messages(
                    &mut ForgeAcks {
                        host,
                        forged: &mut forged,
                    },
                    batch,
                );
            }
            result
        }
    }

    impl Protocol for OverEager {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "raft-overeager".into(),
                ..Raft::info()
            }
        }
        fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
            OverEager(Raft::init(host, config))
        }
        fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
            self.with(host, |raft, host| raft.on_commands(host, commands))
        }
        fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
            self.with(host, |raft, host| raft.on_reads(host, reads))
        }
        fn on_messages<H: Host>(&mut self, host: &mut H, messages: Messages) {
            self.with(host, |raft, host| raft.on_messages(host, messages))
        }
        fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
            self.with(host, |raft, host| raft.on_timers(host, timers))
        }
        fn on_membership<H: Host>(&mut self, host: &mut H, m: Membership) -> Result<(), String> {
            self.0.on_membership(host, m)
        }
        fn on_snapshot<H: Host>(&mut self, host: &mut H, offer: SnapshotOffer) -> bool {
            self.0.on_snapshot(host, offer)
        }
        fn transfer_leader<H: Host>(
            &mut self,
            host: &mut H,
            to: Option<NodeId>,
        ) -> Result<(), String> {
            self.0.transfer_leader(host, to)
        }
        fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
            self.0.seal(host)
        }
        fn status<H: Host>(&mut self, host: &mut H) -> Status {
            self.0.status(host)
        }
    }
}

#[test]
fn raft_passes_every_fault_profile() {
    for (profile, seeds) in [
        ("lossy", 6),
        ("partitions", 6),
        ("crashes", 6),
        ("chaos", 6),
    ] {
        let config = config(
            "raft",
            3,
            profile,
            &[("election-timeout-ms", "300"), ("heartbeat-ms", "50")],
        );
        assert_seeds_pass("raft", &config, 100, seeds);
    }
}

#[test]
fn raft_in_wasm_and_native_gives_the_same_trace() {
    let params = [
        ("election-timeout-ms", "300"),
        ("heartbeat-ms", "50"),
        ("snapshot-interval", "50"),
    ];
    let wasm = config("raft", 3, "chaos", &params);
    let native = config("native:raft", 3, "chaos", &params);
    let a = run_seed(&wasm, 11);
    let b = run_seed(&native, 11);
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.operations_ok, b.operations_ok);
}

#[test]
fn a_raft_that_commits_without_a_quorum_is_caught() {
    let params = [("election-timeout-ms", "300"), ("heartbeat-ms", "50")];
    let mut config = config("native:raft", 3, "partitions", &params);
    let budget = 16;
    // The correct Raft passes these seeds...
    let correct = run_seeds(&config, 1, budget, 2, &|_| {});
    assert!(
        correct.iter().all(|r| r.violations.is_empty()),
        "the correct Raft must pass"
    );
    // ...and the broken one is caught within them.
    config.source = synod::plugin::PluginSource::native::<overeager::OverEager>();
    let reports = run_seeds(&config, 1, budget, 2, &|_| {});
    let caught: Vec<_> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    assert!(
        !caught.is_empty(),
        "the over-eager Raft went unnoticed in {budget} seeds"
    );
    eprintln!(
        "caught in {} of {budget} seeds; first: seed {} {:?}",
        caught.len(),
        caught[0].seed,
        caught[0].violations.first()
    );
}

#[test]
fn raft_lease_reads_stay_linearizable_under_clock_drift() {
    let params = [
        ("election-timeout-ms", "300"),
        ("heartbeat-ms", "50"),
        ("lease-reads", "true"),
        ("clock-drift-ms", "30"),
    ];
    let config = config("raft", 3, "chaos", &params);
    assert!(config.faults.clock_drift_ppm > 0, "chaos drifts clocks");
    assert_seeds_pass("raft", &config, 200, 6);
}

mod weak {
    //! Standalone declared eventually consistent: it acknowledges writes
    //! with the plain ordered apply, so their replies carry no stamp.

    use synod_guest_sdk::*;
    use synod_plugin_standalone::Standalone;

    pub struct Weak(Standalone);

    impl Protocol for Weak {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "weak-standalone".into(),
                consistency: Consistency::Eventual,
                ..Standalone::info()
            }
        }
        fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
            Weak(Standalone::init(host, config))
        }
        fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
            self.0.on_commands(host, commands)
        }
        fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
            self.0.on_reads(host, reads)
        }
        fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
            self.0.seal(host)
        }
        fn status<H: Host>(&mut self, host: &mut H) -> Status {
            self.0.status(host)
        }
    }
}

/// An eventual protocol whose acknowledgements name no stamp cannot be
/// judged with several writers per key, and is reported as such.
#[test]
fn an_eventual_protocol_without_stamps_is_reported() {
    let mut config = config(
        "native:standalone",
        1,
        "none",
        &[("snapshot-interval", "30")],
    );
    config.source = synod::plugin::PluginSource::native::<weak::Weak>();
    let report = run_seed(&config, 1);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("without a last-writer-wins stamp")),
        "{:?}",
        report.violations
    );
}

/// Parameters that make the multi-master plugin use every carrier within
/// a short run: a tiny backlog (state shipping), frequent snapshots and
/// tombstone collection.
const MULTI_MASTER_PARAMS: [(&str, &str); 6] = [
    ("backlog-entries", "60"),
    ("snapshot-interval", "40"),
    ("resend-ms", "100"),
    ("peer-silent-ms", "500"),
    ("relay-after-ms", "300"),
    ("tombstone-gc-ms", "300"),
];

fn multi_master_config(faults: &str) -> SimConfig {
    let mut config = config("native:multi-master", 3, faults, &MULTI_MASTER_PARAMS);
    config.fault_phase = Duration::from_secs(2);
    config.quiet_phase = Duration::from_secs(2);
    config
}

/// Goal: under every fault profile, with every client writing (puts and
/// deletes) every key at every node, replicas end with equal values and
/// stamps and no acknowledged write is lost by the last-writer-wins rule.
#[test]
fn multi_master_converges_under_every_fault_profile() {
    for profile in FaultProfile::NAMES {
        let config = multi_master_config(profile);
        assert_seeds_pass("native:multi-master", &config, 1, 3);
    }
}

#[test]
fn multi_master_in_wasm_and_native_gives_the_same_trace() {
    let native = multi_master_config("lossy");
    let mut wasm = multi_master_config("lossy");
    wasm.source = plugin_source("multi-master").expect("plugin");
    let a = run_seed(&native, 11);
    let b = run_seed(&wasm, 11);
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(a.trace_hash, b.trace_hash);
}

/// Goal: the weak-consistency checks catch a plugin that drops writes and
/// one that applies the rule inconsistently (fixture variants of the real
/// plugin, run natively).
#[test]
fn multi_master_fixtures_that_drop_writes_or_break_the_rule_are_caught() {
    use synod_plugin_multi_master::fixtures::{DropsWrites, WrongRule};
    for (name, source) in [
        (
            "drops-writes",
            synod::plugin::PluginSource::native::<DropsWrites>(),
        ),
        (
            "wrong-rule",
            synod::plugin::PluginSource::native::<WrongRule>(),
        ),
    ] {
        let mut config = multi_master_config("lossy");
        config.source = source;
        let caught: Vec<String> = (1..=3)
            .flat_map(|seed| run_seed(&config, seed).violations)
            .filter(|v| v.contains("weak consistency:"))
            .collect();
        assert!(
            !caught.is_empty(),
            "{name} went unnoticed by checker::check_lww_convergence"
        );
    }
}

/// Writes a deposed leader appended and its successor overwrote are never
/// answered by the protocol; the host expires them with the client's
/// timeout instead of holding them (and their reply channels) forever. The
/// simulator checks at the end of every run that no node holds more
/// requests than were sent within the client timeout.
#[test]
fn requests_a_deposed_leader_never_answers_do_not_leak() {
    let params = [("election-timeout-ms", "300"), ("heartbeat-ms", "50")];
    let config = config("native:raft", 3, "partitions", &params);
    let mut leader_changes = 0;
    for seed in 100..106 {
        let report = run_seed(&config, seed);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        leader_changes += report.leader_changes;
    }
    assert!(leader_changes > 6, "the seeds depose leaders");
}

/// Runs seeds of a swap and fails unless every seed is clean, made
/// progress, and ended with every node in epoch 2.
fn assert_swap_seeds_pass(plugin: &str, config: &SimConfig, first: u64, count: u64) {
    let reports = run_seeds(config, first, count, 2, &|_| {});
    let mut failures = Vec::new();
    for report in &reports {
        if !report.violations.is_empty() || report.nodes_switched != config.nodes {
            failures.push(format!(
                "seed {}: {} of {} nodes switched; {:?}\n  replay: {}",
                report.seed,
                report.nodes_switched,
                config.nodes,
                report.violations,
                synod::sim::replay_command(plugin, config, report.seed)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let ok: u64 = reports.iter().map(|r| r.operations_ok).sum();
    assert!(ok > count * 20, "clients made progress ({ok} operations)");
}

/// Goal: a live swap from Raft to a second Raft (native) in the middle of
/// the chaos profile: the modelled coordinator holds and seals every
/// reachable replica, a majority agrees on (position, digest), every node
/// switches to epoch 2 (those down or cut off when they are next
/// reachable), and the client history stays linearizable across the swap
/// with converged replicas. The swap shows in the trace.
#[test]
fn raft_to_raft_swap_under_chaos() {
    let params = [
        ("election-timeout-ms", "300"),
        ("heartbeat-ms", "50"),
        ("snapshot-interval", "50"),
    ];
    let mut config = config("native:raft", 3, "chaos", &params);
    config.swap_to = Some(plugin_source("native:raft").expect("plugin"));
    assert_swap_seeds_pass("native:raft", &config, 300, 20);
    config.record_trace = true;
    let traced = run_seed(&config, 300);
    let text = traced.trace.expect("trace").to_text();
    assert!(
        text.contains("swap: a majority sealed; epoch 2 recorded"),
        "{text}"
    );
    assert!(text.contains("swap: switched to epoch 2"));
}

/// Goal: a single-node swap from standalone to Raft (another log format,
/// another use of the kv area) under crashes with torn writes: no
/// acknowledged write is lost and the node ends in epoch 2.
#[test]
fn standalone_to_raft_swap_under_crashes() {
    let params = [
        ("election-timeout-ms", "300"),
        ("heartbeat-ms", "50"),
        ("snapshot-interval", "40"),
    ];
    let mut config = config("native:standalone", 1, "crashes", &params);
    config.swap_to = Some(plugin_source("native:raft").expect("plugin"));
    assert_swap_seeds_pass("native:standalone", &config, 1, 12);
}
