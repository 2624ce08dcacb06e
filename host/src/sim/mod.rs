//! The deterministic simulator: whole clusters of the real host code over
//! a simulated network, disk and clock, driven by one seed on one thread.
//! A failing seed replays bit for bit (`synod sim --seed N`).
//!
//! - [`parts`]: virtual clocks, the simulated commit log and network;
//! - [`faults`]: fault profiles;
//! - [`oracles`]: protocol-independent checks (acknowledged writes survive, term churn);
//! - [`hunt`]: catch tables of deliberately broken protocol variants;
//! - [`limits`]: per-seed event and wall-time budgets (storms end as failures);
//! - [`schedule`]: steered faults (armed crashes, leader-targeted pauses and partitions);
//! - [`world`]: the scheduler, clients and invariant checks;
//! - [`trace`]: text and HTML timelines of a run;
//! - [`harness`]: the simulator as a library for a plugin crate's tests;
//! - [`conformance`]: the contract's obligations, checked through it.

pub mod conformance;
pub mod faults;
pub mod harness;
pub mod hunt;
pub mod limits;
pub mod oracles;
pub mod parts;
pub mod schedule;
pub mod trace;
pub mod world;

pub use faults::FaultProfile;
pub use limits::SeedLimits;
pub use trace::Trace;
pub use world::{SimConfig, SimReport, World};

/// Runs one seed (and notes the CPU time it took on this thread).
pub fn run_seed(config: &SimConfig, seed: u64) -> SimReport {
    let started = crate::region::cpu::thread_cpu_time();
    let mut report = World::new(config.clone(), seed).run();
    report.cpu = crate::region::cpu::thread_cpu_time().saturating_sub(started);
    report
}

/// One hash over the trace hashes of `reports` in seed order: two builds
/// (or two machines) ran the same seeds identically iff it is equal.
pub fn run_hash(reports: &[SimReport]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for report in reports {
        for byte in report
            .seed
            .to_le_bytes()
            .into_iter()
            .chain(report.trace_hash.to_le_bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The command that replays exactly `seed` of a run (and writes its trace).
pub fn replay_command(plugin: &str, config: &SimConfig, seed: u64) -> String {
    let params: String = config
        .params
        .iter()
        .map(|(k, v)| format!(" --param {k}={v}"))
        .collect();
    let swap = match &config.swap_to {
        Some(crate::plugin::PluginSource::Native { info, .. }) => {
            format!(" --swap-to native:{}", info.name)
        }
        Some(target) => format!(" --swap-to {}", target.info().name),
        None => String::new(),
    };
    format!(
        "synod sim --plugin {plugin} --nodes {} --faults {} --seed {seed} --seeds 1 --seconds {} --quiet-seconds {} --clients {} --keys {}{params}{swap} --trace sim-trace",
        config.nodes,
        config.faults.name,
        config.fault_phase.as_secs_f64(),
        config.quiet_phase.as_secs_f64(),
        config.clients,
        config.keys
    )
}
