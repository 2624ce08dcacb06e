//! Virtual WASI for components built for `wasm32-wasip2`, whose standard
//! library imports WASI even when unused.
//!
//! Nothing here reaches the outside world: no preopened directories, no
//! environment, no arguments, no sockets or name lookup, stdin empty and
//! stdout/stderr discarded (plugins log through the `logging` import).
//! Randomness is seeded from the component's digest and both clocks are
//! counters that advance one microsecond per reading, so a plugin's
//! behaviour depends only on its inputs, as the simulator requires.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// The fixed instant the virtual wall clock starts from (2000-01-01 UTC).
const WALL_CLOCK_ORIGIN: Duration = Duration::from_secs(946_684_800);
/// How far both virtual clocks advance per reading.
const TICK: Duration = Duration::from_micros(1);

/// A seeded generator behind wasmtime-wasi's random trait.
struct SeededRandom(ChaCha8Rng);

impl rand_core_wasi::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

/// Readings shared by the wall and monotonic clocks of one instance.
#[derive(Clone, Default)]
struct Ticks(Arc<AtomicU64>);

impl Ticks {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

struct VirtualWallClock(Ticks);

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        TICK
    }

    fn now(&self) -> Duration {
        let ticks = u32::try_from(self.0.next()).unwrap_or(u32::MAX);
        WALL_CLOCK_ORIGIN + TICK * ticks
    }
}

struct VirtualMonotonicClock(Ticks);

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        TICK.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        self.0.next() * TICK.as_nanos() as u64
    }
}

/// A WASI context with no ambient authority and deterministic sources.
pub fn virtual_context(seed: u64) -> WasiCtx {
    let ticks = Ticks::default();
    WasiCtxBuilder::new()
        .secure_random(SeededRandom(ChaCha8Rng::seed_from_u64(seed)))
        .insecure_random(SeededRandom(ChaCha8Rng::seed_from_u64(seed ^ 0x5EED)))
        .insecure_random_seed(u128::from(seed))
        .wall_clock(VirtualWallClock(ticks.clone()))
        .monotonic_clock(VirtualMonotonicClock(ticks))
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false)
        .build()
}
