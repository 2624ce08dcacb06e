//! The simulator as a library, for a plugin crate's own `cargo test`.
//!
//! A [`Harness`] runs the same engine as `synod sim` ([`World`]: N nodes of
//! the real host core over the simulated network, disk and clock, the fault
//! profiles and the history checkers) over a range of seeds, for a protocol
//! type compiled into the test itself ([`Harness::native`]) or a built
//! component ([`Harness::wasm_file`]).
//!
//! ```no_run
//! # use synod::sim::harness::Harness;
//! # struct MyProtocol;
//! # fn doc<P: synod_guest_sdk::Protocol + Send>() {
//! Harness::native::<P>()
//!     .nodes(3)
//!     .faults("chaos")
//!     .assert_no_violations(1..=20);
//! # }
//! ```
//!
//! A failing seed panics with its violations and a replay line. Two
//! environment variables narrow a run for debugging: `SYNOD_SIM_SEED=N`
//! runs only seed N, and `SYNOD_SIM_TRACE=DIR` writes the text and HTML
//! traces of failing seeds (or of the one seed) into DIR.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use synod_guest_sdk::{PluginInfo, Protocol};

use super::faults::FaultProfile;
use super::world::{SimConfig, SimReport, World};
use crate::engine::{PluginEngine, SandboxLimits};
use crate::plugin::PluginSource;

/// Only this seed runs (overrides the range given in code).
pub const SEED_ENV: &str = "SYNOD_SIM_SEED";
/// Traces of failing seeds are written here.
pub const TRACE_ENV: &str = "SYNOD_SIM_TRACE";

/// Why a harness could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("unknown fault profile {name:?}; use one of {known:?}")]
    UnknownFaults {
        name: String,
        known: &'static [&'static str],
    },
    #[error("cannot read the component {path}: {source}")]
    ReadComponent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a loadable plugin component: {reason}")]
    LoadComponent { path: PathBuf, reason: String },
    #[error("cannot write the trace into {path}: {source}")]
    WriteTrace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{SEED_ENV}={value:?} is not a seed number")]
    BadSeedEnv { value: String },
}

/// How the protocol under test reaches the simulator, for replay lines.
#[derive(Clone, Debug)]
enum Origin {
    /// Compiled into the test: replayed by re-running the test.
    Native,
    /// A component file: replayed with `synod sim --plugin FILE`.
    File(PathBuf),
}

/// A configured simulated cluster, run over many seeds.
#[derive(Clone)]
pub struct Harness {
    config: SimConfig,
    origin: Origin,
    threads: usize,
}

impl Harness {
    /// A protocol type from the calling crate, run natively (no Wasm): the
    /// quickest loop, and a panic shows a normal backtrace.
    pub fn native<P: Protocol + Send>() -> Self {
        Self::from_source(PluginSource::native::<P>(), None)
    }

    /// A built component (`synod plugin build` output), run in the sandbox
    /// exactly as a node runs it.
    pub fn wasm_file(path: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| HarnessError::ReadComponent {
            path: path.clone(),
            source,
        })?;
        let load = |bytes: &[u8]| -> anyhow::Result<PluginSource> {
            let limits = SandboxLimits {
                instances_max: 256,
                ..SandboxLimits::default()
            };
            let engine = Arc::new(PluginEngine::new(limits, None)?);
            let component = engine.load(bytes)?;
            Ok(PluginSource::Wasm { engine, component })
        };
        let source = load(&bytes).map_err(|error| HarnessError::LoadComponent {
            path: path.clone(),
            reason: format!("{error:#}"),
        })?;
        Ok(Self::from_source(source, Some(path)))
    }

    /// Any source (a built-in protocol, a loaded component).
    pub fn from_source(source: PluginSource, file: Option<PathBuf>) -> Self {
        Harness {
            config: SimConfig {
                nodes: 3,
                faults: FaultProfile::named("chaos")
                    .unwrap_or_else(|| unreachable!("chaos is a built-in profile")),
                fault_phase: Duration::from_secs(6),
                quiet_phase: Duration::from_secs(4),
                clients: 4,
                keys: 8,
                source,
                params: Vec::new(),
                record_trace: false,
                swap_to: None,
            },
            origin: file.map_or(Origin::Native, Origin::File),
            threads: 2,
        }
    }

    /// The protocol's declared name, version, consistency and capabilities.
    pub fn info(&self) -> PluginInfo {
        self.config.source.info()
    }

    /// Cluster size (default 3).
    pub fn nodes(mut self, nodes: u64) -> Self {
        self.config.nodes = nodes.max(1);
        self
    }

    /// A named fault profile: none, lossy, partitions, crashes, chaos
    /// (default). Panics on an unknown name; see [`Harness::try_faults`].
    pub fn faults(self, name: &str) -> Self {
        match self.try_faults(name) {
            Ok(harness) => harness,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`Harness::faults`], returning an error for an unknown name.
    pub fn try_faults(mut self, name: &str) -> Result<Self, HarnessError> {
        self.config.faults =
            FaultProfile::named(name).ok_or_else(|| HarnessError::UnknownFaults {
                name: name.into(),
                known: &FaultProfile::NAMES,
            })?;
        Ok(self)
    }

    /// A fault profile built or tuned in code.
    pub fn fault_profile(mut self, profile: FaultProfile) -> Self {
        self.config.faults = profile;
        self
    }

    /// Virtual seconds of faults, then of the quiet phase in which the
    /// cluster must serve and converge (defaults 6 and 4).
    pub fn seconds(mut self, faults: f64, quiet: f64) -> Self {
        self.config.fault_phase = Duration::from_secs_f64(faults.max(0.001));
        self.config.quiet_phase = Duration::from_secs_f64(quiet.max(1.001));
        self
    }

    /// Concurrent clients and keys of the workload (defaults 4 and 8).
    pub fn workload(mut self, clients: usize, keys: usize) -> Self {
        self.config.clients = clients;
        self.config.keys = keys.max(1);
        self
    }

    /// A protocol parameter, as `--param name=value` passes it.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.config.params.push((name.into(), value.into()));
        self
    }

    /// A live protocol swap to `target` in the middle of the fault phase
    /// (seal, then epoch 2): the swap's checks (equal sealed positions and
    /// digests, every node switched) join the run's.
    pub fn swap_to(mut self, target: PluginSource) -> Self {
        self.config.swap_to = Some(target);
        self
    }

    /// Worker threads for seeds (each seed runs on one thread; default 2).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The engine's configuration, for callers that need `World` directly.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Runs one seed, recording its trace.
    pub fn run_seed_traced(&self, seed: u64) -> SimReport {
        let mut config = self.config.clone();
        config.record_trace = true;
        World::new(config, seed).run()
    }

    /// Runs `seeds` (or only `SYNOD_SIM_SEED` when set) and, with
    /// `SYNOD_SIM_TRACE`, writes the traces of failing seeds.
    pub fn run(&self, seeds: RangeInclusive<u64>) -> Result<RunReport, HarnessError> {
        Ok(self.run_with_reports(seeds)?.0)
    }

    /// Records every seed's trace in [`Harness::run_with_reports`].
    pub fn traced(mut self) -> Self {
        self.config.record_trace = true;
        self
    }

    /// [`Harness::run`], also returning each seed's engine report (with its
    /// trace after [`Harness::traced`]).
    pub fn run_with_reports(
        &self,
        seeds: RangeInclusive<u64>,
    ) -> Result<(RunReport, Vec<SimReport>), HarnessError> {
        let seeds = match std::env::var(SEED_ENV) {
            Ok(value) => {
                let seed = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| HarnessError::BadSeedEnv { value })?;
                seed..=seed
            }
            Err(_) => seeds,
        };
        let (first, last) = (*seeds.start(), *seeds.end());
        let count = (last + 1).saturating_sub(first);
        let reports =
            crate::tools::sim_cli::run_seeds(&self.config, first, count, self.threads, &|_| {});
        let mut traces = Vec::new();
        if let Some(dir) = std::env::var_os(TRACE_ENV).map(PathBuf::from) {
            let wanted: Vec<u64> = if count == 1 {
                vec![first]
            } else {
                reports
                    .iter()
                    .filter(|r| !r.violations.is_empty())
                    .map(|r| r.seed)
                    .take(5)
                    .collect()
            };
            for seed in wanted {
                traces.push(self.write_trace(&dir, seed)?);
            }
        }
        let failures = reports
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| SeedFailure {
                seed: r.seed,
                violations: r.violations.clone(),
                replay: self.replay_line(r.seed),
            })
            .collect();
        let report = RunReport {
            plugin: self.info().name,
            nodes: self.config.nodes,
            faults: self.config.faults.name.clone(),
            seeds: first..=last,
            operations_ok: reports.iter().map(|r| r.operations_ok).sum(),
            leader_changes: reports.iter().map(|r| r.leader_changes).sum(),
            failures,
            traces,
        };
        Ok((report, reports))
    }

    /// Runs `seeds` and panics, naming every failing seed with its
    /// violations and replay line, unless all pass.
    pub fn assert_no_violations(&self, seeds: RangeInclusive<u64>) -> RunReport {
        match self.run(seeds) {
            Ok(report) if report.failures.is_empty() => report,
            Ok(report) => panic!("{report}"),
            Err(error) => panic!("the simulation could not run: {error}"),
        }
    }

    fn write_trace(&self, dir: &Path, seed: u64) -> Result<PathBuf, HarnessError> {
        let report = self.run_seed_traced(seed);
        let base = dir.join(format!("seed-{seed}"));
        let write_error = |source| HarnessError::WriteTrace {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write_error)?;
        if let Some(trace) = report.trace {
            std::fs::write(base.with_extension("txt"), trace.to_text()).map_err(write_error)?;
            let title = format!(
                "{} seed {seed} ({} faults)",
                self.info().name,
                self.config.faults.name
            );
            std::fs::write(base.with_extension("html"), trace.to_html(&title))
                .map_err(write_error)?;
        }
        Ok(base.with_extension("txt"))
    }

    /// How to re-run exactly this seed: the `synod sim` line for a file,
    /// the test itself (libtest names its threads after the test) for a
    /// native protocol.
    pub fn replay_line(&self, seed: u64) -> String {
        match &self.origin {
            Origin::File(path) => {
                super::replay_command(&path.display().to_string(), &self.config, seed)
            }
            Origin::Native => {
                let test = std::thread::current()
                    .name()
                    .filter(|name| *name != "main")
                    .map(|name| format!(" {name} -- --exact"))
                    .unwrap_or_default();
                format!("{SEED_ENV}={seed} {TRACE_ENV}=sim-trace cargo test{test}")
            }
        }
    }
}

/// One failing seed.
#[derive(Clone, Debug)]
pub struct SeedFailure {
    pub seed: u64,
    pub violations: Vec<String>,
    /// A command that re-runs exactly this seed and writes its trace.
    pub replay: String,
}

/// The outcome of a range of seeds.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub plugin: String,
    pub nodes: u64,
    pub faults: String,
    pub seeds: RangeInclusive<u64>,
    pub operations_ok: u64,
    pub leader_changes: u64,
    pub failures: Vec<SeedFailure>,
    /// Trace files written (with `SYNOD_SIM_TRACE`).
    pub traces: Vec<PathBuf>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn seeds_run(&self) -> u64 {
        (self.seeds.end() + 1).saturating_sub(*self.seeds.start())
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} of {} seeds ({}..={}) violated an invariant ({} nodes, {} faults)",
            self.plugin,
            self.failures.len(),
            self.seeds_run(),
            self.seeds.start(),
            self.seeds.end(),
            self.nodes,
            self.faults
        )?;
        for failure in self.failures.iter().take(5) {
            writeln!(f, "seed {} FAILED:", failure.seed)?;
            for violation in failure.violations.iter().take(8) {
                writeln!(f, "  {violation}")?;
            }
            writeln!(f, "  replay: {}", failure.replay)?;
        }
        if self.failures.len() > 5 {
            writeln!(f, "({} more failing seeds)", self.failures.len() - 5)?;
        }
        for trace in &self.traces {
            writeln!(f, "trace: {}", trace.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_guest_sdk::*;
    use synod_plugin_standalone::Standalone;

    /// Standalone that forgets every write on restart: acknowledged writes
    /// are lost, which the harness must report with seed and replay line.
    struct Forgetful(Standalone);

    impl Protocol for Forgetful {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "forgetful".into(),
                ..Standalone::info()
            }
        }
        fn init<H: Host>(host: &mut H, mut config: InitConfig) -> Self {
            if config.recovering {
                let last = host.log_bounds().last;
                if last > config.applied_position {
                    let _ = host.log_truncate_suffix(config.applied_position + 1);
                }
            }
            config.recovering = false;
            Forgetful(Standalone::init(host, config))
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

    #[test]
    fn a_correct_native_protocol_passes() {
        let report = Harness::native::<Standalone>()
            .nodes(1)
            .faults("crashes")
            .param("snapshot-interval", "40")
            .assert_no_violations(1..=4);
        assert_eq!(report.seeds_run(), 4);
        assert!(report.operations_ok > 0);
    }

    #[test]
    fn a_lost_write_fails_with_seed_and_replay_line() {
        let harness = Harness::native::<Forgetful>().nodes(1).faults("crashes");
        let report = harness.run(1..=6).expect("runs");
        assert!(!report.passed(), "forgetting writes must be caught");
        let text = report.to_string();
        let failure = &report.failures[0];
        assert!(
            text.contains(&format!("seed {} FAILED", failure.seed)),
            "{text}"
        );
        assert!(
            failure
                .replay
                .starts_with(&format!("{SEED_ENV}={} ", failure.seed)),
            "{}",
            failure.replay
        );
        assert!(failure.replay.contains("cargo test"), "{}", failure.replay);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness.assert_no_violations(1..=6)
        }));
        assert!(caught.is_err(), "the assertion must fail");
    }

    #[test]
    fn a_component_file_runs_and_replays_with_synod_sim() {
        let path = synod_plugin_artifacts::STANDALONE_PATH;
        let harness = Harness::wasm_file(path)
            .expect("loads")
            .nodes(1)
            .faults("crashes");
        assert_eq!(harness.info().name, "standalone");
        let report = harness.assert_no_violations(1..=2);
        assert!(report.passed());
        let replay = harness.replay_line(7);
        assert!(
            replay.starts_with(&format!("synod sim --plugin {path} ")),
            "{replay}"
        );
        assert!(replay.contains("--seed 7"), "{replay}");
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let missing = Harness::wasm_file("/nonexistent/plugin.wasm");
        assert!(matches!(missing, Err(HarnessError::ReadComponent { .. })));
        let junk = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(junk.path(), b"not wasm").expect("write");
        let junk = Harness::wasm_file(junk.path());
        assert!(matches!(junk, Err(HarnessError::LoadComponent { .. })));
        let faults = Harness::native::<Standalone>().try_faults("earthquake");
        assert!(matches!(faults, Err(HarnessError::UnknownFaults { .. })));
    }
}
