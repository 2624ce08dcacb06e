//! Hibernation: an idle replica drops its Wasm instance and keeps its
//! state; the next call re-instantiates it.
//!
//! Everything a plugin must keep lives in the host already (log, meta,
//! state machine, snapshots), and `init(recovering = true)` rebuilds the
//! rest — exactly what a crash recovery does, without losing anything. So a
//! wake-up is a fresh instance plus `init(recovering)`, run inside the same
//! callback as the event that woke it (its effects are staged together).
//! A replica is idle when it has no armed timer, no pending or held request
//! or output and no swap step under way, for `idle_after`.

use std::time::{Duration, Instant};

use serde::Serialize;

/// When a replica hibernates (`None`: never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HibernatePolicy {
    pub idle_after: Option<Duration>,
}

/// A replica's hibernation bookkeeping.
#[derive(Debug, Default)]
pub struct Hibernation {
    pub policy: HibernatePolicy,
    /// Clock time of the last event that was not a plain wake-up.
    last_activity: Duration,
    hibernated: bool,
    hibernations: u64,
    wakes: u64,
    last_wake: Duration,
}

/// Hibernation as the region's status reports it.
#[derive(Clone, Debug, Serialize)]
pub struct HibernationStatus {
    pub hibernated: bool,
    pub hibernations: u64,
    pub wakes: u64,
    /// Wall time of the last wake-up (instantiate + `init`), microseconds.
    pub last_wake_us: u64,
}

impl Hibernation {
    pub fn is_hibernated(&self) -> bool {
        self.hibernated
    }

    /// Something happened at clock time `now`.
    pub fn active(&mut self, now: Duration) {
        self.last_activity = now;
    }

    /// Whether a replica that is `quiet` at `now` should hibernate.
    pub fn due(&self, now: Duration, quiet: bool) -> bool {
        !self.hibernated
            && quiet
            && self
                .policy
                .idle_after
                .is_some_and(|idle| now.saturating_sub(self.last_activity) >= idle)
    }

    pub fn hibernated(&mut self) {
        self.hibernated = true;
        self.hibernations += 1;
    }

    /// The replica woke; `started` is when re-instantiating began.
    pub fn woke(&mut self, started: Instant) {
        self.hibernated = false;
        self.wakes += 1;
        self.last_wake = started.elapsed();
    }

    /// Forgets a hibernation the replica left by other means (a restart).
    pub fn reset(&mut self) {
        self.hibernated = false;
    }

    pub fn status(&self) -> HibernationStatus {
        HibernationStatus {
            hibernated: self.hibernated,
            hibernations: self.hibernations,
            wakes: self.wakes,
            last_wake_us: u64::try_from(self.last_wake.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_quiet_replica_idle_long_enough_is_due() {
        let mut state = Hibernation {
            policy: HibernatePolicy {
                idle_after: Some(Duration::from_secs(2)),
            },
            ..Hibernation::default()
        };
        state.active(Duration::from_secs(10));
        assert!(!state.due(Duration::from_secs(11), true));
        assert!(!state.due(Duration::from_secs(12), false), "not quiet");
        assert!(state.due(Duration::from_secs(12), true));
        state.hibernated();
        assert!(!state.due(Duration::from_secs(20), true), "already asleep");
        state.woke(Instant::now());
        assert_eq!(state.status().wakes, 1);
        assert!(
            !Hibernation::default().due(Duration::MAX, true),
            "off by default"
        );
    }
}
