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
//!   `heavy_call`, moves to the **background lane**: its calls run on a
//!   thread of a node-wide pool at the lowest scheduling class (`SCHED_IDLE` on
//!   Linux), while the tokio worker steps aside (`block_in_place`) so the
//!   node's other tasks keep their workers;
//! - it returns to the inline lane after `cooldown` with no heavy call and
//!   no debt.
//!
//! The kernel then gives a hog only the CPU nobody else wants: a slow
//! plugin slows its own region. The hand-off to the pool costs a few
//! microseconds, which only regions already known to be expensive pay.
//! Under the simulator (no multi-threaded runtime) every call runs inline.

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

/// Where a replica's next plugin call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// On the caller's thread (a tokio worker).
    Inline,
    /// On a low-priority thread, the worker stepping aside meanwhile.
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

    pub fn background_calls(&self) -> u64 {
        self.background_calls
    }
}

/// Runs `f` in `lane` and returns its result with the CPU time it used.
/// The background lane needs a multi-threaded tokio runtime; elsewhere
/// (the simulator, plain threads) every call runs inline.
pub fn run_in_lane<R: Send>(lane: Lane, f: impl FnOnce() -> R + Send) -> (R, Duration, Lane) {
    let multi_thread = matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread)
    );
    if lane == Lane::Inline || !multi_thread {
        let started = thread_cpu_time();
        let result = f();
        return (
            result,
            thread_cpu_time().saturating_sub(started),
            Lane::Inline,
        );
    }
    let (result, used) = tokio::task::block_in_place(|| match background_pool() {
        Some(pool) => pool.install(|| {
            let started = thread_cpu_time();
            let result = f();
            (result, thread_cpu_time().saturating_sub(started))
        }),
        None => {
            let started = thread_cpu_time();
            let result = f();
            (result, thread_cpu_time().saturating_sub(started))
        }
    });
    (result, used, Lane::Background)
}

/// The node-wide pool of idle-priority threads that run background calls,
/// one per CPU. Persistent threads, so a background call costs a hand-off,
/// not a thread start (whose stack `mmap` would also contend with every
/// other thread of the process). `None` if the pool cannot be built; calls
/// then run inline.
fn background_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("synod-background-{i}"))
            .start_handler(|_| lower_this_thread_priority())
            .build()
        {
            Ok(pool) => Some(pool),
            Err(error) => {
                tracing::warn!(%error, "no background call pool; expensive calls run inline");
                None
            }
        }
    })
    .as_ref()
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_calls_run_elsewhere_at_idle_priority() {
        let caller = std::thread::current().id();
        let ((thread, idle), used, lane) = run_in_lane(Lane::Background, || {
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            (std::thread::current().id(), this_thread_is_idle_class())
        });
        assert_eq!(lane, Lane::Background);
        assert_ne!(thread, caller);
        if cfg!(target_os = "linux") {
            assert!(idle, "background calls run in SCHED_IDLE");
        }
        assert!(used > Duration::ZERO);
        let ((thread, idle), _, lane) = run_in_lane(Lane::Inline, || {
            (std::thread::current().id(), this_thread_is_idle_class())
        });
        assert_eq!(lane, Lane::Inline);
        assert_eq!(thread, caller);
        assert!(!idle);
    }
}
