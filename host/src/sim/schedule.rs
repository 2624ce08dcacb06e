//! Steered faults: rather than landing at random instants, some crashes are
//! armed to land at the moments where protocol bugs show, and pauses and
//! partitions pick the current leader. The profile's `target_leader`,
//! `wake_inputs_first`, `crash_eager` and `crash_before_release` say how
//! often (`faults.rs`); the world applies them (`world.rs`).

use crate::region::driver::RegionEvent;

/// A crash waiting for its moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Armed {
    /// The next time the node sends messages while it has unsynced writes:
    /// what it sent eagerly is out, what it wrote is lost.
    Eager,
    /// The next time a hard-state write becomes durable: the node dies
    /// before the messages that waited for it leave.
    BeforeRelease,
}

impl Armed {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Armed::Eager => "right after sending ahead of its unsynced writes",
            Armed::BeforeRelease => "right after its hard state, before its messages left",
        }
    }
}

/// How long an armed crash waits for its moment (virtual ns) before it
/// lands anyway.
pub(crate) const ARMED_WINDOW_NANOS: u64 = 300_000_000;

/// Splits a paused node's parked events into client requests and the rest,
/// each in arrival order.
pub(crate) fn client_requests_first(
    parked: Vec<RegionEvent>,
) -> (Vec<RegionEvent>, Vec<RegionEvent>) {
    parked
        .into_iter()
        .partition(|event| matches!(event, RegionEvent::Read { .. } | RegionEvent::Write { .. }))
}
