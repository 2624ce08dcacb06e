//! Measuring what the simulator catches: run deliberately broken variants
//! of a protocol ("mutants", each selected by protocol parameters) over a
//! seed budget per fault profile and cluster size, and report which oracle
//! caught each one first, at which seed — and for the unbroken protocol,
//! every violation (there must be none).
//!
//! It is generic: any protocol whose bugs can be switched on by parameters
//! can be hunted (the Raft plugin's are behind its `mutants` feature).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::faults::FaultProfile;
use super::world::{SimConfig, SimReport};

/// One variant to hunt: a name and the parameters that select it (added to
/// the base configuration's).
#[derive(Clone, Debug)]
pub struct HuntCase {
    pub name: String,
    pub params: Vec<(String, String)>,
}

/// Where to look: every (cluster size, profile) pair gets `seeds` seeds
/// from `first_seed`.
#[derive(Clone, Debug)]
pub struct HuntPlan {
    pub nodes: Vec<u64>,
    pub profiles: Vec<FaultProfile>,
    pub seeds: u64,
    pub first_seed: u64,
    pub threads: usize,
    /// Stop hunting a case at its first failing seed (a mutant); run every
    /// seed otherwise (the unbroken protocol).
    pub stop_at_first: bool,
}

/// A failing seed.
#[derive(Clone, Debug)]
pub struct Catch {
    pub nodes: u64,
    pub profile: String,
    pub seed: u64,
    /// The oracle of the first violation ([`oracle_of`]).
    pub oracle: &'static str,
    pub violation: String,
}

/// What hunting one case found.
#[derive(Clone, Debug)]
pub struct HuntRow {
    pub name: String,
    /// Failing seeds, in the order found (one when stopping at the first).
    pub catches: Vec<Catch>,
    pub seeds_run: u64,
    /// Status counters summed over every seed run: coverage.
    pub counters: BTreeMap<String, u64>,
    pub wall: Duration,
    pub virtual_seconds: f64,
    /// The most terms without an observed leader in one seed (calibrates
    /// the liveness oracle).
    pub max_leaderless_terms: u64,
}

impl HuntRow {
    pub fn caught(&self) -> Option<&Catch> {
        self.catches.first()
    }
}

/// Which oracle a violation message comes from.
pub fn oracle_of(violation: &str) -> &'static str {
    // Violations start with their virtual time, `t=1.234567s `.
    let text = match violation.strip_prefix("t=") {
        Some(rest) => rest.split_once(' ').map_or(rest, |(_, what)| what),
        None => violation,
    };
    let has = |needle: &str| text.contains(needle);
    // A contained plugin failure reads `node N: plugin panicked: ...`,
    // whatever the assertion says (it may name an invariant itself).
    let plugin_failure = text.starts_with("node ")
        && text
            .split_once(": ")
            .is_some_and(|(_, why)| why.starts_with("plugin") || why.contains("panicked"));
    if plugin_failure {
        "plugin failure"
    } else if has("storm/livelock") || has("wall-time limit") {
        "limits"
    } else if has("two leaders") {
        "one leader per term"
    } else if has("not linearizable") {
        "linearizability"
    } else if has("applied prefixes diverge") {
        "durable prefixes"
    } else if has("produced") && has("elsewhere") {
        "same result"
    } else if has("did not converge") {
        "convergence"
    } else if has("applied request") && has("twice") {
        "double apply"
    } else if has("lost the acknowledged write") {
        "acknowledged writes"
    } else if has("liveness") || has("no client operation completed") {
        "liveness"
    } else if has("requests leaked") {
        "request leak"
    } else if has("WAL does not reopen")
        || has("journal does not replay")
        || has("snapshot does not restore")
        || has("snapshot unreadable")
    {
        "recovery"
    } else if has("swap") {
        "swap"
    } else {
        "other"
    }
}

/// Runs `cases` under `plan`, each over `base` with its parameters added.
/// `run` runs one seed of a configuration (normally [`super::run_seed`]);
/// `progress` hears each finished case.
pub fn hunt(
    base: &SimConfig,
    plan: &HuntPlan,
    cases: &[HuntCase],
    run: &(dyn Fn(&SimConfig, u64) -> SimReport + Sync),
    progress: &dyn Fn(&HuntRow),
) -> Vec<HuntRow> {
    let mut rows = Vec::new();
    for case in cases {
        let started = Instant::now();
        let mut row = HuntRow {
            name: case.name.clone(),
            catches: Vec::new(),
            seeds_run: 0,
            counters: BTreeMap::new(),
            wall: Duration::ZERO,
            virtual_seconds: 0.0,
            max_leaderless_terms: 0,
        };
        'plan: for &nodes in &plan.nodes {
            for profile in &plan.profiles {
                let mut config = base.clone();
                config.nodes = nodes;
                config.faults = profile.clone();
                config.params.extend(case.params.iter().cloned());
                let reports = run_until_caught(&config, plan, run);
                for report in &reports {
                    row.seeds_run += 1;
                    row.virtual_seconds += report.virtual_seconds;
                    row.max_leaderless_terms = row
                        .max_leaderless_terms
                        .max(report.max_term.saturating_sub(report.leader_terms));
                    for (name, value) in &report.counters {
                        *row.counters.entry(name.clone()).or_default() += value;
                    }
                    if let Some(first) = report.violations.first() {
                        row.catches.push(Catch {
                            nodes,
                            profile: profile.name.clone(),
                            seed: report.seed,
                            oracle: oracle_of(first),
                            violation: first.clone(),
                        });
                    }
                }
                if plan.stop_at_first && !row.catches.is_empty() {
                    break 'plan;
                }
            }
        }
        row.wall = started.elapsed();
        progress(&row);
        rows.push(row);
    }
    rows
}

/// Runs the plan's seeds of `config` on its threads. When stopping at the
/// first catch, no seed above a failing one is started, and every seed
/// below the lowest failing one has run, so the reports end exactly at the
/// first failing seed.
fn run_until_caught(
    config: &SimConfig,
    plan: &HuntPlan,
    run: &(dyn Fn(&SimConfig, u64) -> SimReport + Sync),
) -> Vec<SimReport> {
    let first = plan.first_seed;
    let end = first + plan.seeds;
    let next = AtomicU64::new(first);
    let lowest_failing = AtomicU64::new(u64::MAX);
    let stop = AtomicBool::new(false);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end
                        || (stop.load(Ordering::SeqCst)
                            && seed > lowest_failing.load(Ordering::SeqCst))
                    {
                        break;
                    }
                    let report = run(config, seed);
                    if plan.stop_at_first && !report.violations.is_empty() {
                        lowest_failing.fetch_min(seed, Ordering::SeqCst);
                        stop.store(true, Ordering::SeqCst);
                    }
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
    if plan.stop_at_first {
        let lowest = lowest_failing.load(Ordering::SeqCst);
        reports.retain(|r| r.seed <= lowest);
    }
    reports
}

/// The catch table: one line per case, then the catch rate of the cases
/// after the first `unbroken` ones (the unbroken protocol is listed, not
/// counted).
pub fn catch_table(rows: &[HuntRow], unbroken: usize, coverage_counter: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<34} {:<22} {:>5} {:<11} {:>6} {:>6} {:>9}\n",
        "case", "caught by", "nodes", "profile", "seed", "seeds", "reached"
    ));
    for row in rows {
        let reached = coverage_counter
            .and_then(|name| row.counters.get(name))
            .map_or("-".to_string(), |v| v.to_string());
        match row.caught() {
            Some(catch) => out.push_str(&format!(
                "{:<34} {:<22} {:>5} {:<11} {:>6} {:>6} {:>9}\n",
                row.name,
                catch.oracle,
                catch.nodes,
                catch.profile,
                catch.seed,
                row.seeds_run,
                reached
            )),
            None => out.push_str(&format!(
                "{:<34} {:<22} {:>5} {:<11} {:>6} {:>6} {:>9}\n",
                row.name, "NOT CAUGHT", "-", "-", "-", row.seeds_run, reached
            )),
        }
    }
    let mutants = &rows[unbroken.min(rows.len())..];
    let caught = mutants.iter().filter(|r| r.caught().is_some()).count();
    let by_plugin = mutants
        .iter()
        .filter(|r| r.caught().is_some_and(|c| c.oracle == "plugin failure"))
        .count();
    if !mutants.is_empty() {
        out.push_str(&format!(
            "caught {caught} of {} ({:.0}%); {by_plugin} first by a plugin assertion, {} by the simulator's oracles\n",
            mutants.len(),
            100.0 * caught as f64 / mutants.len() as f64,
            caught - by_plugin
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_map_to_their_oracle() {
        assert_eq!(
            oracle_of("t=1.0s two leaders in term 3 of epoch 1: nodes 1 and 2"),
            "one leader per term"
        );
        assert_eq!(
            oracle_of("t=9.0s history is not linearizable on key k1: x"),
            "linearizability"
        );
        assert_eq!(
            oracle_of("t=0.2s node 2: plugin trapped: assertion failed"),
            "plugin failure"
        );
        assert_eq!(
            oracle_of("t=0.1s storm/livelock: 9 events (seed 1)"),
            "limits"
        );
        // The plugin's own assertion, even when it names an invariant.
        assert_eq!(
            oracle_of("t=0.4s node 2: plugin panicked: two leaders in term 1: 2 and 1"),
            "plugin failure"
        );
        assert_eq!(
            oracle_of("t=0.4s node 2: WAL does not reopen: torn"),
            "recovery"
        );
    }
}
