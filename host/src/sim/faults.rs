//! Fault profiles: how often the simulated world misbehaves. Every rate is
//! applied through the run's seeded random generator.

use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultProfile {
    pub name: String,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// One-way delay range; a wide range reorders messages.
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Mean time between network partitions (none if zero).
    pub partition_every: Duration,
    pub partition_length: Duration,
    /// Whether some partitions cut only one direction.
    pub one_way_partitions: bool,
    /// Mean time between node crashes (none if zero); unsynced writes are
    /// lost, and with `torn_writes` the last write may be torn.
    pub crash_every: Duration,
    pub down_for: Duration,
    pub torn_writes: bool,
    /// Probability that a node crashes the moment a write to its plugin's
    /// kv (hard state: term, vote) is durable and the messages that
    /// depended on it have left, and comes back within `quick_down_max`.
    /// Random crashes almost never land there; bugs in persisting a vote
    /// or a term show only when one does.
    pub crash_after_metadata: f64,
    /// Probability that a node crashes the moment it has installed a
    /// shipped snapshot (image saved, state replaced), before anything
    /// later is synced; it comes back within `quick_down_max`. Installs are
    /// rare, and the order of their writes only shows in a crash there.
    pub crash_after_install: f64,
    /// Probability that a node crashes the moment it has switched to a
    /// swap's new epoch (epoch record durable, new protocol started),
    /// before anything later is synced; back within `quick_down_max`.
    pub crash_after_switch: f64,
    /// Probability that a node crashes in the middle of switching epoch:
    /// after its boundary snapshot is saved, before the epoch record is
    /// written; back within `quick_down_max`.
    pub crash_mid_switch: f64,
    pub quick_down_max: Duration,
    /// Mean time between pauses (a frozen process), and their length.
    pub pause_every: Duration,
    pub pause_length: Duration,
    /// Largest clock drift of a node, parts per million.
    pub clock_drift_ppm: i64,
    /// Steering (see `schedule.rs`). Probability that a pause or a
    /// partition picks the current leader (isolated alone) rather than a
    /// random node or split: a new leader then commits while the old one
    /// still believes it leads.
    pub target_leader: f64,
    /// Probability that a resumed node handles its parked client requests
    /// first, then parked peer messages, then its due timers (otherwise:
    /// timers, then everything parked). A stale leader then answers before
    /// it learns it was deposed, as a process waking from a long pause may.
    pub wake_inputs_first: f64,
    /// Probability that a periodic crash is armed instead, to land at the
    /// node's next moment of sending messages while it has unsynced writes
    /// (what an eager send exposes), back within `quick_down_max`.
    pub crash_eager: f64,
    /// Probability that a periodic crash is armed to land when a hard-state
    /// write has become durable but before the messages that waited for it
    /// leave, back within `quick_down_max`.
    pub crash_before_release: f64,
    /// Mean time between leadership transfers the simulator asks the
    /// current leader for (none if zero), to a random other voter. A
    /// transfer's vote bypasses the vote fence, which is where a forgotten
    /// or eagerly sent vote shows.
    pub transfer_every: Duration,
    /// How long a client waits for an answer before it records an unknown
    /// outcome and moves to a random node. Short, clients leave a frozen
    /// or cut-off leader and write through the new one while the old one
    /// still holds their earlier reads.
    pub client_timeout: Duration,
    /// Simulated fsync latency range.
    pub fsync_min: Duration,
    pub fsync_max: Duration,
}

impl FaultProfile {
    fn base(name: &str) -> Self {
        Self {
            name: name.into(),
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_micros(600),
            partition_every: Duration::ZERO,
            partition_length: Duration::ZERO,
            one_way_partitions: false,
            crash_every: Duration::ZERO,
            down_for: Duration::ZERO,
            torn_writes: false,
            crash_after_metadata: 0.0,
            crash_after_install: 0.0,
            crash_after_switch: 0.0,
            crash_mid_switch: 0.0,
            quick_down_max: Duration::ZERO,
            pause_every: Duration::ZERO,
            pause_length: Duration::ZERO,
            clock_drift_ppm: 0,
            target_leader: 0.0,
            wake_inputs_first: 0.0,
            crash_eager: 0.0,
            crash_before_release: 0.0,
            transfer_every: Duration::ZERO,
            client_timeout: Duration::from_millis(1500),
            fsync_min: Duration::from_micros(200),
            fsync_max: Duration::from_micros(900),
        }
    }

    /// The named profiles: `none`, `lossy`, `partitions`, `crashes`,
    /// `chaos` (all of them together), `clocks` (leader trouble and clock
    /// drift near lease bounds).
    pub fn named(name: &str) -> Option<Self> {
        let mut profile = Self::base(name);
        match name {
            "none" => {}
            "lossy" => {
                profile.loss = 0.05;
                profile.duplicate = 0.03;
                profile.delay_max = Duration::from_millis(20);
            }
            "partitions" => {
                profile.loss = 0.01;
                profile.delay_max = Duration::from_millis(5);
                profile.partition_every = Duration::from_secs(2);
                profile.partition_length = Duration::from_millis(1500);
                profile.one_way_partitions = true;
                profile.target_leader = 0.5;
            }
            "crashes" => {
                profile.delay_max = Duration::from_millis(5);
                profile.crash_every = Duration::from_secs(2);
                profile.down_for = Duration::from_millis(800);
                profile.torn_writes = true;
                profile.crash_after_metadata = 0.25;
                profile.crash_after_install = 0.5;
                profile.crash_after_switch = 0.5;
                profile.crash_mid_switch = 0.3;
                profile.quick_down_max = Duration::from_millis(4);
                profile.pause_every = Duration::from_secs(4);
                profile.pause_length = Duration::from_millis(700);
                profile.target_leader = 0.5;
                profile.wake_inputs_first = 0.5;
                profile.crash_eager = 0.3;
                profile.crash_before_release = 0.2;
                profile.transfer_every = Duration::from_secs(2);
            }
            "chaos" => {
                profile.loss = 0.03;
                profile.duplicate = 0.02;
                profile.delay_max = Duration::from_millis(15);
                profile.partition_every = Duration::from_secs(3);
                profile.partition_length = Duration::from_millis(1200);
                profile.one_way_partitions = true;
                profile.crash_every = Duration::from_secs(3);
                profile.down_for = Duration::from_millis(700);
                profile.torn_writes = true;
                profile.crash_after_metadata = 0.1;
                profile.crash_after_install = 0.3;
                profile.crash_after_switch = 0.3;
                profile.crash_mid_switch = 0.2;
                profile.quick_down_max = Duration::from_millis(4);
                profile.pause_every = Duration::from_secs(5);
                profile.pause_length = Duration::from_millis(500);
                profile.clock_drift_ppm = 200;
                profile.target_leader = 0.4;
                profile.wake_inputs_first = 0.5;
                profile.crash_eager = 0.25;
                profile.crash_before_release = 0.15;
                profile.transfer_every = Duration::from_secs(3);
            }
            "clocks" => {
                // Leader trouble against lease bounds: clocks drifting up
                // to ±2% (two nodes differ by at most 4%, inside the 10%
                // that Raft's `clock-drift-ms=30` per 300 ms election
                // timeout allows), the leader paused or cut off, crashes
                // at the moments eager sends and lost votes show.
                profile.loss = 0.01;
                profile.delay_max = Duration::from_millis(5);
                profile.partition_every = Duration::from_secs(3);
                profile.partition_length = Duration::from_millis(900);
                profile.crash_every = Duration::from_secs(3);
                profile.down_for = Duration::from_millis(300);
                profile.crash_after_metadata = 0.2;
                profile.crash_after_install = 0.3;
                profile.quick_down_max = Duration::from_millis(4);
                profile.pause_every = Duration::from_secs(3);
                profile.pause_length = Duration::from_millis(700);
                profile.client_timeout = Duration::from_millis(250);
                // A disk slower than the network: acknowledgements arrive
                // before the sender's own writes are durable, so whatever
                // leaves ahead of its writes is acted on.
                profile.fsync_min = Duration::from_micros(500);
                profile.fsync_max = Duration::from_millis(6);
                profile.clock_drift_ppm = 20_000;
                profile.target_leader = 0.7;
                profile.wake_inputs_first = 0.7;
                profile.crash_eager = 0.4;
                profile.crash_before_release = 0.2;
                profile.transfer_every = Duration::from_millis(1500);
            }
            _ => return None,
        }
        Some(profile)
    }

    pub const NAMES: [&'static str; 6] =
        ["none", "lossy", "partitions", "crashes", "chaos", "clocks"];
}
