//! One conformance suite for every protocol plugin: the contract's
//! obligations, each checked by a run of the simulator ([`Harness`]) whose
//! faults aim at it, with evidence that the run exercised it.
//!
//! | obligation      | run                                    | checked by                                  |
//! |-----------------|----------------------------------------|---------------------------------------------|
//! | `baseline`      | no faults                              | linearizability / convergence, liveness     |
//! | `output-commit` | crashes losing unsynced writes, torn   | no acknowledged write lost (history check)  |
//! | `recovery`      | same, plus crashes right after hard state | restarts with `init(recovering)` converge and serve |
//! | `seal`          | a live swap to the same protocol       | sealed (position, digest) equal, all switch |
//! | `snapshots`     | crashes and partitions, small interval | lagging replicas installed, state converges |
//! | `membership`    | declared `membership-change`           | not driven by the simulator yet: reported as skipped |
//!
//! Obligations a plugin does not declare (`seal`, `snapshots`) are skipped.
//! A protocol without `replication` runs on one node. Plugins declaring
//! `snapshots` are run with `snapshot-interval=20` (the built-in plugins'
//! parameter name); [`Suite::snapshot_param`] changes it.
//!
//! ```no_run
//! # fn doc<P: synod_guest_sdk::Protocol + Send>() {
//! use synod::sim::{conformance, harness::Harness};
//! conformance::assert_conforms(&Harness::native::<P>());
//! # }
//! ```

use std::fmt;
use std::ops::RangeInclusive;

use super::harness::{Harness, RunReport};
use super::world::SimReport;

/// One obligation of the plugin contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obligation {
    Baseline,
    OutputCommit,
    Recovery,
    Seal,
    Snapshots,
    Membership,
}

impl Obligation {
    pub const ALL: [Obligation; 6] = [
        Obligation::Baseline,
        Obligation::OutputCommit,
        Obligation::Recovery,
        Obligation::Seal,
        Obligation::Snapshots,
        Obligation::Membership,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Obligation::Baseline => "baseline",
            Obligation::OutputCommit => "output-commit",
            Obligation::Recovery => "recovery",
            Obligation::Seal => "seal",
            Obligation::Snapshots => "snapshots",
            Obligation::Membership => "membership",
        }
    }
}

/// What one obligation's run showed.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Every seed passed and the run exercised the obligation.
    Passed { evidence: String },
    /// A seed violated an invariant.
    Failed(RunReport),
    /// Every seed passed but the faults never reached the obligation, so
    /// the run proves nothing about it.
    NotExercised { why: String },
    /// The plugin does not declare the capability, or the simulator cannot
    /// check it yet.
    Skipped { why: String },
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Failed(_) | Verdict::NotExercised { .. })
    }
}

/// The suite's outcome for one plugin.
#[derive(Clone, Debug)]
pub struct ConformanceReport {
    pub plugin: String,
    pub nodes: u64,
    pub results: Vec<(Obligation, Verdict)>,
}

impl ConformanceReport {
    pub fn passed(&self) -> bool {
        !self.results.iter().any(|(_, verdict)| verdict.is_failure())
    }

    pub fn verdict(&self, obligation: Obligation) -> Option<&Verdict> {
        self.results
            .iter()
            .find(|(o, _)| *o == obligation)
            .map(|(_, v)| v)
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance of {} on {} node(s): {}",
            self.plugin,
            self.nodes,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        for (obligation, verdict) in &self.results {
            let name = obligation.as_str();
            match verdict {
                Verdict::Passed { evidence } => writeln!(f, "  {name:<14} pass  ({evidence})")?,
                Verdict::Skipped { why } => writeln!(f, "  {name:<14} skip  ({why})")?,
                Verdict::NotExercised { why } => {
                    writeln!(f, "  {name:<14} FAIL  not exercised: {why}")?
                }
                Verdict::Failed(report) => {
                    writeln!(f, "  {name:<14} FAIL")?;
                    for line in report.to_string().lines() {
                        writeln!(f, "      {line}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The suite, configured: seeds per obligation and the snapshot parameter.
pub struct Suite {
    base: Harness,
    seeds: RangeInclusive<u64>,
    snapshot_param: (String, String),
}

impl Suite {
    /// The suite over `base` (its protocol, parameters and node count; a
    /// protocol without replication always runs on one node).
    pub fn new(base: &Harness) -> Self {
        let replicated = base.info().capabilities.replication;
        let nodes = if replicated { base.config().nodes } else { 1 };
        Suite {
            base: base.clone().nodes(nodes),
            seeds: 1..=8,
            snapshot_param: ("snapshot-interval".into(), "20".into()),
        }
    }

    /// Seeds run for each obligation (default 1..=8).
    pub fn seeds(mut self, seeds: RangeInclusive<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// The parameter that makes the plugin snapshot and compact often.
    pub fn snapshot_param(mut self, name: &str, value: &str) -> Self {
        self.snapshot_param = (name.into(), value.into());
        self
    }

    pub fn run(&self) -> ConformanceReport {
        let info = self.base.info();
        let results = Obligation::ALL
            .iter()
            .map(|obligation| (*obligation, self.check(*obligation)))
            .collect();
        ConformanceReport {
            plugin: format!("{} {}", info.name, info.version),
            nodes: self.base.config().nodes,
            results,
        }
    }

    fn check(&self, obligation: Obligation) -> Verdict {
        let capabilities = self.base.info().capabilities;
        let nodes = self.base.config().nodes;
        match obligation {
            Obligation::Baseline => self.scenario(self.base.clone().faults("none"), |_| {
                Ok("no faults: histories checked, replicas converged".into())
            }),
            Obligation::OutputCommit => {
                self.scenario(self.base.clone().faults("crashes"), |reports| {
                    let crashes = count(reports, |what| what.starts_with("crash"));
                    let ok: u64 = reports.iter().map(|r| r.operations_ok).sum();
                    if crashes == 0 || ok == 0 {
                        return Err(format!(
                            "{crashes} crashes and {ok} acknowledged operations"
                        ));
                    }
                    Ok(format!(
                        "{ok} acknowledged operations survived {crashes} crashes"
                    ))
                })
            }
            Obligation::Recovery => {
                let mut profile = self.base.config().faults.clone();
                if let Some(crashes) = super::FaultProfile::named("crashes") {
                    profile = crashes;
                }
                // Every durable hard-state write is a chance to crash.
                profile.crash_after_metadata = 0.5;
                self.scenario(self.base.clone().fault_profile(profile), |reports| {
                    let recovered = count(reports, |what| what.contains("recovering=true"));
                    if recovered == 0 {
                        return Err("no node restarted from its disk".into());
                    }
                    Ok(format!(
                        "{recovered} restarts with init(recovering) converged and served"
                    ))
                })
            }
            Obligation::Seal if !capabilities.seal => Verdict::Skipped {
                why: "the plugin does not declare seal".into(),
            },
            Obligation::Seal => {
                let target = self.base.config().source.clone();
                let harness = self.base.clone().faults("crashes").swap_to(target);
                self.scenario(harness, |reports| {
                    let seals = count(reports, |what| what.starts_with("swap: sealed at"));
                    let switched: u64 = reports.iter().map(|r| r.nodes_switched).sum();
                    if seals == 0 {
                        return Err("no replica reported sealed".into());
                    }
                    Ok(format!(
                        "{seals} seal reports agreed on position and digest; {switched} node switches"
                    ))
                })
            }
            Obligation::Snapshots if !capabilities.snapshots => Verdict::Skipped {
                why: "the plugin does not declare snapshots".into(),
            },
            Obligation::Snapshots => {
                let (name, value) = &self.snapshot_param;
                let harness = self.base.clone().faults("chaos").param(name, value);
                self.scenario(harness, |reports| {
                    let shipped = count(reports, |what| what.contains(" snapshot, "));
                    let recovered = count(reports, |what| what.contains("recovering=true"));
                    if nodes > 1 && shipped == 0 {
                        return Err(format!(
                            "no snapshot was shipped to a lagging replica (is {name}={value} honoured?)"
                        ));
                    }
                    if nodes == 1 && recovered == 0 {
                        return Err("no restart recovered from a snapshot".into());
                    }
                    Ok(if nodes > 1 {
                        format!("{shipped} snapshots shipped to lagging replicas; {name}={value}")
                    } else {
                        format!("{recovered} restarts over snapshots and a compacted log; {name}={value}")
                    })
                })
            }
            Obligation::Membership if !capabilities.membership_change => Verdict::Skipped {
                why: "the plugin does not declare membership-change".into(),
            },
            Obligation::Membership => Verdict::Skipped {
                why: "declared, but the simulator does not drive membership changes yet; \
                      test it on a live cluster (synod region add-voter)"
                    .into(),
            },
        }
    }

    /// Runs `harness` over the suite's seeds with traces; `exercised`
    /// turns the passing reports into evidence, or says why they show
    /// nothing.
    fn scenario(
        &self,
        harness: Harness,
        exercised: impl Fn(&[SimReport]) -> Result<String, String>,
    ) -> Verdict {
        let (report, traced) = match harness.traced().run_with_reports(self.seeds.clone()) {
            Ok(run) => run,
            Err(error) => {
                return Verdict::NotExercised {
                    why: format!("the run could not start: {error}"),
                };
            }
        };
        if !report.passed() {
            return Verdict::Failed(report);
        }
        match exercised(&traced) {
            Ok(evidence) => Verdict::Passed {
                evidence: format!("{}; {evidence}", seeds_text(&self.seeds)),
            },
            Err(why) => Verdict::NotExercised {
                why: format!("{} passed, but {why}", seeds_text(&self.seeds)),
            },
        }
    }
}

fn seeds_text(seeds: &RangeInclusive<u64>) -> String {
    format!("seeds {}..={}", seeds.start(), seeds.end())
}

/// Trace events of every report matching `matches`.
fn count(reports: &[SimReport], matches: impl Fn(&str) -> bool) -> u64 {
    reports
        .iter()
        .filter_map(|report| report.trace.as_ref())
        .flat_map(|trace| trace.events())
        .filter(|event| matches(&event.what))
        .count() as u64
}

/// Runs the suite with default settings.
pub fn run(base: &Harness) -> ConformanceReport {
    Suite::new(base).run()
}

/// Runs the suite and panics with its table unless every obligation the
/// plugin declares passed.
pub fn assert_conforms(base: &Harness) -> ConformanceReport {
    let report = run(base);
    assert!(report.passed(), "{report}");
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_guest_sdk::*;
    use synod_plugin_standalone::Standalone;

    /// Standalone whose seal reports the position before its last apply
    /// (a stale counter): the host refuses such a seal report.
    struct LeakySeal(Standalone);

    impl Protocol for LeakySeal {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "leaky-seal".into(),
                ..Standalone::info()
            }
        }
        fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
            LeakySeal(Standalone::init(host, config))
        }
        fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
            self.0.on_commands(host, commands)
        }
        fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
            self.0.on_reads(host, reads)
        }
        fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
            let applied = self.0.status(host).applied_position;
            SealProgress::Sealed(applied.saturating_sub(1))
        }
        fn status<H: Host>(&mut self, host: &mut H) -> Status {
            self.0.status(host)
        }
    }

    #[test]
    fn standalone_conforms() {
        let report = assert_conforms(&Harness::native::<Standalone>());
        assert_eq!(report.nodes, 1, "single-copy runs on one node");
        assert!(matches!(
            report.verdict(Obligation::Seal),
            Some(Verdict::Passed { .. })
        ));
        assert!(matches!(
            report.verdict(Obligation::Membership),
            Some(Verdict::Skipped { .. })
        ));
    }

    #[test]
    fn a_wrong_seal_fails_the_seal_obligation() {
        let report = Suite::new(&Harness::native::<LeakySeal>())
            .seeds(1..=4)
            .run();
        assert!(!report.passed(), "{report}");
        assert!(
            matches!(report.verdict(Obligation::Seal), Some(Verdict::Failed(_))),
            "{report}"
        );
        assert!(
            report.to_string().contains("seal           FAIL"),
            "{report}"
        );
    }
}
