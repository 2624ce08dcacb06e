//! The simulated outside world of one node: a virtual clock with drift, a
//! commit log over a simulated disk whose fsync completes when the
//! scheduler says so, and a network that hands every message to the
//! scheduler.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synod_guest_sdk::{Batch, NodeId};

use crate::clock::Clock;
use crate::network::Network;
use crate::region::RegionName;
use crate::storage::commit::{CommitError, CommitLog};
use crate::storage::wal::Wal;

/// Global virtual time in nanoseconds, shared by every simulated clock.
#[derive(Clone, Default)]
pub struct VirtualTime(Arc<AtomicU64>);

impl VirtualTime {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, nanos: u64) {
        self.0.store(nanos, Ordering::Relaxed);
    }
}

/// A node's clock: virtual time plus a fixed offset and a drift in parts
/// per million (lease reads must tolerate it up to their documented bound).
pub struct SimClock {
    time: VirtualTime,
    offset_nanos: u64,
    drift_ppm: AtomicI64,
}

impl SimClock {
    pub fn new(time: VirtualTime, offset_nanos: u64, drift_ppm: i64) -> Self {
        Self {
            time,
            offset_nanos,
            drift_ppm: AtomicI64::new(drift_ppm),
        }
    }

    /// The node-local reading at global time `global`.
    pub fn local_at(&self, global: u64) -> u64 {
        let drift = self.drift_ppm.load(Ordering::Relaxed);
        let skew = (global as i128 * drift as i128 / 1_000_000) as i64;
        (global as i64 + skew).max(0) as u64 + self.offset_nanos
    }

    /// The global time at which this clock reads `local` (inverse of
    /// [`SimClock::local_at`], rounded up).
    pub fn global_at(&self, local: u64) -> u64 {
        let drift = self.drift_ppm.load(Ordering::Relaxed);
        let local = local.saturating_sub(self.offset_nanos) as i128;
        let global = local * 1_000_000 / (1_000_000 + drift as i128);
        (global.max(0) as u64).saturating_add(1)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.local_at(self.time.now()))
    }
}

/// A WAL whose fsync happens when the scheduler fires it.
pub struct SimCommit {
    wal: Mutex<Wal>,
    next_ticket: AtomicU64,
    durable: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl SimCommit {
    pub fn new(wal: Wal) -> Self {
        Self {
            wal: Mutex::new(wal),
            next_ticket: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            failed: Mutex::new(None),
        }
    }

    fn lock_wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether submissions wait for an fsync.
    pub fn has_unsynced(&self) -> bool {
        self.durable.load(Ordering::Relaxed) < self.next_ticket.load(Ordering::Relaxed)
    }

    /// The fsync completes: everything submitted so far is durable.
    pub fn sync(&self) -> Result<(), CommitError> {
        let target = self.next_ticket.load(Ordering::Relaxed);
        self.lock_wal()
            .sync()
            .map_err(|e| self.fail(e.to_string()))?;
        self.durable.store(target, Ordering::Relaxed);
        Ok(())
    }

    fn fail(&self, why: String) -> CommitError {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        CommitError::Failed(why)
    }
}

impl CommitLog for SimCommit {
    fn submit(&self, entry: Vec<u8>) -> Result<u64, CommitError> {
        if let Some(why) = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(CommitError::Failed(why));
        }
        self.lock_wal()
            .append(&[entry])
            .map_err(|e| self.fail(e.to_string()))?;
        Ok(self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn wait_durable(&self, ticket: u64) -> Result<(), CommitError> {
        if self.durable.load(Ordering::Relaxed) < ticket {
            self.sync()?;
        }
        Ok(())
    }

    fn durable_ticket(&self) -> u64 {
        self.durable.load(Ordering::Relaxed)
    }

    fn current_ticket(&self) -> u64 {
        self.next_ticket.load(Ordering::Relaxed)
    }
}

/// What one node sent, waiting for the scheduler to route it.
#[derive(Debug)]
pub enum Payload {
    Messages(Batch),
    Snapshot { metadata: Vec<u8>, image: Vec<u8> },
}

#[derive(Debug)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's epoch (fencing across a protocol swap).
    pub epoch: u64,
    pub payload: Payload,
}

/// Collects every send; the scheduler decides loss, delay and duplication.
#[derive(Default)]
pub struct SimNetwork {
    outbox: Mutex<Vec<Envelope>>,
}

impl SimNetwork {
    pub fn drain(&self) -> Vec<Envelope> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push(&self, envelope: Envelope) {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(envelope);
    }
}

impl Network for SimNetwork {
    fn send(&self, _region: &RegionName, epoch: u64, from: NodeId, to: NodeId, messages: Batch) {
        self.push(Envelope {
            from,
            to,
            epoch,
            payload: Payload::Messages(messages),
        });
    }

    fn send_snapshot(
        &self,
        _region: &RegionName,
        epoch: u64,
        from: NodeId,
        to: NodeId,
        metadata: Vec<u8>,
        image: Vec<u8>,
    ) {
        self.push(Envelope {
            from,
            to,
            epoch,
            payload: Payload::Snapshot { metadata, image },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drifting_clocks_invert() {
        let time = VirtualTime::default();
        for drift in [-500, 0, 300] {
            let clock = SimClock::new(time.clone(), 7_000, drift);
            for global in [0u64, 1_000, 5_000_000_000] {
                let local = clock.local_at(global);
                let back = clock.global_at(local);
                assert!(
                    back >= global && back <= global + 2,
                    "{drift} {global} {back}"
                );
            }
        }
    }
}
