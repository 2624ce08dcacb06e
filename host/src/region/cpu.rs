//! CPU fairness between regions.
//!
//! Plugin calls run on the tokio workers that also serve every other
//! region, the API and the transport. A plugin that burns hundreds of
//! milliseconds per call (within its fuel and deadline) would hold a worker
//! that long and starve its neighbours. So each replica keeps a CPU account:
//!
//! - every call's thread CPU time is charged to a token bucket that refills
//!   at `share` of one core and holds at most `burst`;
//! - a region whose bucket is empty, or one of whose calls took more than
//!   `heavy_call`, moves to the **background lane**: its driver task moves
//!   to a node-wide tokio runtime whose worker threads run in the lowest
//!   scheduling class (`SCHED_IDLE` on Linux), so its calls never hold the
//!   workers that serve every other region;
//! - it returns to the inline lane after `cooldown` with no heavy call and
//!   no debt.
//!
//! The kernel then gives a hog only the CPU nobody else wants: a slow
//! plugin slows its own region. A region changes runtime only when its lane
//! changes, at most once per `cooldown`. Under the simulator (no driver
//! task) every call runs where it is called.

use std::time::{Duration, Instant};

/// How much CPU a region may use before its calls move to the background.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuPolicy {
    /// Off: every call runs inline whatever it costs (for comparison).
    pub enabled: bool,
    /// Sustained share of one core a region may use inline (0.5 = half).
    pub share: f64,
    /// CPU time a region may use in a burst beyond its share.
    pub burst: Duration,
    /// One call using more CPU than this marks the region heavy at once.
    pub heavy_call: Duration,
    /// How long a region must stay light before it runs inline again.
    pub cooldown: Duration,
}

impl Default for CpuPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            share: 0.5,
            burst: Duration::from_millis(100),
            heavy_call: Duration::from_millis(20),
            cooldown: Duration::from_secs(5),
        }
    }
}

/// Which runtime a replica's driver should run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// The node's runtime, with every other region.
    Inline,
    /// The idle-priority background runtime.
    Background,
}

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Lane::Inline => "inline",
            Lane::Background => "background",
        }
    }
}

/// One replica's CPU account (see the module docs).
#[derive(Debug)]
pub struct CpuAccount {
    policy: CpuPolicy,
    /// Tokens in nanoseconds of CPU; negative is debt.
    tokens: f64,
    refilled_at: Instant,
    lane: Lane,
    /// When the region last did something heavy (bucket empty or a heavy call).
    heavy_at: Option<Instant>,
    total: Duration,
    calls: u64,
    background_calls: u64,
}

impl CpuAccount {
    pub fn new(policy: CpuPolicy) -> Self {
        Self {
            tokens: policy.burst.as_nanos() as f64,
            policy,
            refilled_at: Instant::now(),
            lane: Lane::Inline,
            heavy_at: None,
            total: Duration::ZERO,
            calls: 0,
            background_calls: 0,
        }
    }

    /// The lane of the next call.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Charges one call's CPU time and picks the lane of the next call.
    pub fn charge(&mut self, used: Duration, lane_used: Lane) {
        let now = Instant::now();
        self.charge_at(used, lane_used, now);
    }

    fn charge_at(&mut self, used: Duration, lane_used: Lane, now: Instant) {
        self.total += used;
        self.calls += 1;
        if lane_used == Lane::Background {
            self.background_calls += 1;
        }
        let burst = self.policy.burst.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.tokens =
            (self.tokens + elapsed.as_nanos() as f64 * self.policy.share.max(0.0)).min(burst);
        self.tokens -= used.as_nanos() as f64;
        if !self.policy.enabled {
            return;
        }
        if used > self.policy.heavy_call || self.tokens < 0.0 {
            self.heavy_at = Some(now);
        }
        self.lane = match self.heavy_at {
            Some(at) if now.saturating_duration_since(at) < self.policy.cooldown => {
                Lane::Background
            }
            _ => {
                self.heavy_at = None;
                Lane::Inline
            }
        };
    }

    /// CPU used by every call so far.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// Calls charged so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn background_calls(&self) -> u64 {
        self.background_calls
    }
}

thread_local! {
    /// Whether [`measure`] reads the thread CPU clock on this thread.
    static ACCOUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Turns CPU accounting of plugin calls on or off for the calling thread;
/// returns the previous setting. The simulator turns it off: reading the
/// thread CPU clock is a system call (a quarter of a simulated run's time)
/// and what it measures is wall-clock noise in a virtual-time world.
pub fn set_thread_cpu_accounting(on: bool) -> bool {
    ACCOUNTING.with(|accounting| accounting.replace(on))
}

/// Runs `f` and returns its result with the thread CPU time it used (zero
/// while accounting is off on this thread).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    if !ACCOUNTING.with(std::cell::Cell::get) {
        return (f(), Duration::ZERO);
    }
    let started = thread_cpu_time();
    let result = f();
    (result, thread_cpu_time().saturating_sub(started))
}

/// The node-wide tokio runtime whose worker threads (one per CPU) run in
/// the idle scheduling class. A heavy region's driver task moves here, so
/// its calls never hold the node's normal workers and no call needs a
/// hand-off between threads. `None` if the runtime cannot be built; heavy
/// regions then stay where they are.
pub fn background_runtime() -> Option<tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            // One CPU fewer than the machine has: even idle-priority work
            // slows a normal thread that shares a core with it (hardware
            // threads, caches), so heavy regions never occupy every CPU.
            let threads = std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1));
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("synod-background")
                .on_thread_start(lower_this_thread_priority)
                .enable_all()
                .build()
            {
                Ok(runtime) => Some(runtime),
                Err(error) => {
                    tracing::warn!(%error, "no background runtime; heavy regions run with the others");
                    None
                }
            }
        })
        .as_ref()
        .map(|runtime| runtime.handle().clone())
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_nsec).unwrap_or(0),
            );
        }
        Duration::ZERO
    }
    #[cfg(not(unix))]
    {
        Duration::ZERO
    }
}

/// Puts the calling thread in the idle scheduling class: it runs only when
/// no normal thread wants the CPU. Only the background pool's threads do
/// this, and they never run anything else, so nothing ever needs to raise
/// them again (which an unprivileged process could not).
fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not move a background call thread to SCHED_IDLE"
            );
        }
    }
}

/// Whether the calling thread runs in the idle scheduling class (tests).
pub fn this_thread_is_idle_class() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CpuPolicy {
        CpuPolicy {
            enabled: true,
            share: 0.5,
            burst: Duration::from_millis(100),
            heavy_call: Duration::from_millis(20),
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn light_calls_stay_inline() {
        let mut account = CpuAccount::new(policy());
        let mut now = Instant::now();
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            // 100 µs per ms: 10% of a core.
            account.charge_at(Duration::from_micros(100), Lane::Inline, now);
            assert_eq!(account.lane(), Lane::Inline);
        }
    }

    #[test]
    fn one_heavy_call_moves_a_region_to_the_background_until_it_cools_down() {
        let mut account = CpuAccount::new(policy());
        let start = Instant::now();
        account.charge_at(Duration::from_millis(30), Lane::Inline, start);
        assert_eq!(account.lane(), Lane::Background);
        // Light afterwards: still background within the cooldown.
        account.charge_at(
            Duration::from_micros(10),
            Lane::Background,
            start + Duration::from_secs(4),
        );
        assert_eq!(account.lane(), Lane::Background);
        account.charge_at(
            Duration::from_micros(10),
            Lane::Background,
            start + Duration::from_secs(6),
        );
        assert_eq!(account.lane(), Lane::Inline);
        assert_eq!(account.background_calls(), 2);
    }

    #[test]
    fn many_medium_calls_exhaust_the_share() {
        let mut account = CpuAccount::new(policy());
        let mut now = Instant::now();
        let mut moved = false;
        for _ in 0..100 {
            now += Duration::from_millis(10);
            // 9 ms per 10 ms: 90% of a core, each call under `heavy_call`.
            account.charge_at(Duration::from_millis(9), Lane::Inline, now);
            moved |= account.lane() == Lane::Background;
        }
        assert!(
            moved,
            "a region using 90% of a core must leave the inline lane"
        );
    }

    #[test]
    fn the_background_runtime_runs_at_idle_priority() {
        let handle = background_runtime().expect("background runtime");
        let (sender, receiver) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let (idle, used) = measure(|| {
                let mut x = 0u64;
                for i in 0..2_000_000u64 {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                this_thread_is_idle_class()
            });
            let _ = sender.send((idle, used));
        });
        let (idle, used) = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the task ran");
        if cfg!(target_os = "linux") {
            assert!(idle, "background workers run in SCHED_IDLE");
        }
        assert!(used > Duration::ZERO);
        assert!(!this_thread_is_idle_class());
    }
}
