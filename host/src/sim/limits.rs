//! Per-seed budgets: a seed whose protocol storms (answers every message
//! with more messages, re-arms a zero timer forever) must end as a reported
//! failure with its seed, not hang the run. Three budgets are watched after
//! every scheduler step:
//!
//! - events per node within any window of virtual time (a burst: a storm
//!   or a livelock that keeps virtual time from advancing);
//! - events per node over the whole run (a storm spread thin);
//! - wall time of the seed (a backstop for a callback that is slow without
//!   making events; it depends on the machine, so it is generous).

use std::time::{Duration, Instant};

/// The budgets of one seed. The defaults are far above what a correct
/// protocol needs (Raft with 50 ms heartbeats passes every profile well
/// inside them); a storm that doubles its messages spends them within a
/// few virtual milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedLimits {
    /// Length of the burst window, virtual time.
    pub window: Duration,
    /// Events per node allowed within one window.
    pub window_events_per_node: u64,
    /// Events per node per virtual second of the run, on average.
    pub events_per_node_second: u64,
    /// Wall time one seed may take.
    pub wall_time: Duration,
}

impl Default for SeedLimits {
    fn default() -> Self {
        SeedLimits {
            window: Duration::from_millis(100),
            window_events_per_node: 4_000,
            events_per_node_second: 12_000,
            wall_time: Duration::from_secs(120),
        }
    }
}

/// Watches one seed's budgets.
pub(crate) struct LimitWatch {
    limits: SeedLimits,
    nodes: u64,
    started: Instant,
    /// Virtual time (ns) the current window started at, and its events.
    window_start: u64,
    window_events: u64,
    total_budget: u64,
}

impl LimitWatch {
    pub(crate) fn new(limits: SeedLimits, nodes: u64, virtual_nanos: u64) -> Self {
        let seconds = (virtual_nanos as f64 / 1e9).max(1.0);
        let total_budget =
            (limits.events_per_node_second as f64 * nodes.max(1) as f64 * seconds) as u64;
        LimitWatch {
            limits,
            nodes: nodes.max(1),
            started: Instant::now(),
            window_start: 0,
            window_events: 0,
            total_budget,
        }
    }

    /// Counts one event at virtual time `now`; `steps` is the run's count
    /// so far. Returns why the seed must stop, if a budget is spent.
    pub(crate) fn step(&mut self, now: u64, steps: u64) -> Option<String> {
        let window = u64::try_from(self.limits.window.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.window_start) >= window {
            self.window_start = now;
            self.window_events = 0;
        }
        self.window_events += 1;
        let window_budget = self.limits.window_events_per_node * self.nodes;
        if self.window_events > window_budget {
            return Some(format!(
                "storm/livelock: {} events in {:.3} virtual s (from t={:.6}s; limit {} per node per {:?}) — a message storm or a timer that never lets time advance",
                self.window_events,
                (now - self.window_start) as f64 / 1e9,
                self.window_start as f64 / 1e9,
                self.limits.window_events_per_node,
                self.limits.window,
            ));
        }
        if steps > self.total_budget {
            return Some(format!(
                "storm/livelock: {steps} events in {:.3} virtual s (limit {} per node per virtual second)",
                now as f64 / 1e9,
                self.limits.events_per_node_second,
            ));
        }
        // Reading the clock is cheap, but not free: every 1024 events.
        if steps.is_multiple_of(1024) && self.started.elapsed() > self.limits.wall_time {
            return Some(format!(
                "wall-time limit: the seed ran {:.1}s of wall time ({steps} events, t={:.6}s virtual; limit {:?})",
                self.started.elapsed().as_secs_f64(),
                now as f64 / 1e9,
                self.limits.wall_time,
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_in_one_window_stops_the_seed() {
        let limits = SeedLimits {
            window_events_per_node: 10,
            ..SeedLimits::default()
        };
        let mut watch = LimitWatch::new(limits, 2, 10_000_000_000);
        let stops: Vec<_> = (1..=21).map(|step| watch.step(5, step)).collect();
        assert!(stops[..20].iter().all(Option::is_none));
        let why = stops[20].as_deref().unwrap_or_default();
        assert!(why.starts_with("storm/livelock: 21 events"), "{why}");
    }

    #[test]
    fn events_spread_over_windows_pass_until_the_total_budget() {
        let limits = SeedLimits {
            window: Duration::from_millis(1),
            window_events_per_node: 10,
            events_per_node_second: 100,
            ..SeedLimits::default()
        };
        // One node, 2 virtual seconds: 200 events in all.
        let mut watch = LimitWatch::new(limits, 1, 2_000_000_000);
        for step in 1..=200u64 {
            assert_eq!(watch.step(step * 1_000_000, step), None);
        }
        assert!(watch.step(201_000_000, 201).is_some());
    }
}
