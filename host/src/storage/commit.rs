//! Group commit: submitters enqueue entries and get a ticket; one dedicated
//! thread drains the queue into a single WAL frame and a single fsync, so
//! concurrent submitters share the cost of durability.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, error};

use super::wal::{self, Wal};

/// Soft cap on the entry bytes gathered into one frame.
pub const COMMIT_FRAME_BYTES: usize = 8 << 20;
/// Largest entry a checkpoint builds (a kv area or log is split into many).
pub const CHECKPOINT_ENTRY_BYTES: usize = 4 << 20;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// The commit thread hit an error; nothing after `durable` is safe.
    #[error("group commit failed: {0}")]
    Failed(String),
    #[error("group commit is shut down")]
    Closed,
    #[error("empty submission (use current_ticket instead)")]
    Empty,
    #[error("invalid entry: {0}")]
    InvalidEntry(String),
    #[error("ticket {0} was never issued")]
    UnknownTicket(u64),
}

/// Live counters, updated by the commit thread.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub fsyncs: AtomicU64,
    pub frames: AtomicU64,
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub checkpoints: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitStatsSnapshot {
    pub fsyncs: u64,
    pub frames: u64,
    pub entries: u64,
    pub bytes: u64,
    pub checkpoints: u64,
}

impl CommitStats {
    pub fn snapshot(&self) -> CommitStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommitStatsSnapshot {
            fsyncs: get(&self.fsyncs),
            frames: get(&self.frames),
            entries: get(&self.entries),
            bytes: get(&self.bytes),
            checkpoints: get(&self.checkpoints),
        }
    }
}

/// What a region driver needs from the node's write-ahead log. The
/// group-commit thread implements it for real nodes; the simulator
/// implements it over a simulated disk with virtual fsync latency.
pub trait CommitLog: Send + Sync + 'static {
    /// Enqueues one entry; returns its ticket (tickets increase).
    fn submit(&self, entry: Vec<u8>) -> Result<u64, CommitError>;
    /// Blocks until `ticket` is durable (rare: snapshots).
    fn wait_durable(&self, ticket: u64) -> Result<(), CommitError>;
    /// The highest durable ticket.
    fn durable_ticket(&self) -> u64;
    /// The last ticket handed out.
    fn current_ticket(&self) -> u64;
}

impl CommitLog for GroupCommit {
    fn submit(&self, entry: Vec<u8>) -> Result<u64, CommitError> {
        GroupCommit::submit(self, entry)
    }
    fn wait_durable(&self, ticket: u64) -> Result<(), CommitError> {
        GroupCommit::wait_durable(self, ticket)
    }
    fn durable_ticket(&self) -> u64 {
        *self.shared.durable_tx.borrow()
    }
    fn current_ticket(&self) -> u64 {
        GroupCommit::current_ticket(self)
    }
}

/// Keeps a shadow of the live state the WAL describes so the commit thread
/// can rewrite the WAL as a compact checkpoint. Because the shadow is fed
/// exactly the entries written, in order, a checkpoint can never miss one.
pub trait Compactor: Send + 'static {
    /// Folds one durable entry into the shadow.
    fn fold(&mut self, entry: &[u8]);
    /// Approximate bytes a checkpoint of the shadow would take.
    fn live_bytes(&self) -> u64;
    /// Entries recreating the shadow, each at most `entry_bytes_max` bytes
    /// unless one record alone is larger (it then fits a frame, because it
    /// was accepted into one).
    fn checkpoint(&self, entry_bytes_max: usize) -> Vec<Vec<u8>>;
}

/// When the commit thread rewrites the WAL.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    /// Never checkpoint a WAL smaller than this.
    pub min_wal_bytes: u64,
    /// Checkpoint once the WAL exceeds this multiple of the live state.
    pub wal_to_live_ratio: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            min_wal_bytes: 64 << 20,
            wal_to_live_ratio: 4,
        }
    }
}

enum Op {
    Entry(u64, Vec<u8>),
    Checkpoint(Vec<Vec<u8>>),
}

#[derive(Default)]
struct State {
    last_ticket: u64,
    durable: u64,
    pending: VecDeque<Op>,
    failed: Option<String>,
    shutdown: bool,
    exited: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the commit thread when work or shutdown arrives.
    work: Condvar,
    /// Wakes `wait_durable` callers when durability or failure changes.
    progress: Condvar,
    durable_tx: watch::Sender<u64>,
    stats: Arc<CommitStats>,
    /// The WAL's frame payload limit: an entry must fit one frame alone.
    frame_bytes_max: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State is only mutated in small consistent steps; poison is harmless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to the "synod-wal" commit thread. Dropping it flushes and stops.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

enum Batch {
    Entries { entries: Vec<Vec<u8>>, last: u64 },
    Checkpoint(Vec<Vec<u8>>),
}

impl GroupCommit {
    pub fn start(wal: Wal) -> GroupCommit {
        Self::start_inner(wal, None)
    }

    /// Starts with automatic checkpoints driven by `compactor`.
    pub fn start_with_compactor(
        wal: Wal,
        compactor: Box<dyn Compactor>,
        policy: CheckpointPolicy,
    ) -> GroupCommit {
        Self::start_inner(wal, Some((compactor, policy)))
    }

    fn start_inner(
        wal: Wal,
        compaction: Option<(Box<dyn Compactor>, CheckpointPolicy)>,
    ) -> GroupCommit {
        let (durable_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable_tx,
            stats: Arc::new(CommitStats::default()),
            frame_bytes_max: wal.frame_bytes_max(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("synod-wal".into())
            .spawn(move || run(&worker, wal, compaction));
        let thread = match thread {
            Ok(h) => Some(h),
            Err(e) => {
                error!(error = %e, "wal: cannot spawn commit thread");
                let mut st = shared.lock();
                st.failed = Some(format!("spawn commit thread: {e}"));
                st.exited = true;
                None
            }
        };
        GroupCommit {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Enqueues one entry; on-disk order equals ticket order. An entry that
    /// cannot fit a frame is refused here, to this submitter only, so it can
    /// never fail the commit thread.
    pub fn submit(&self, entry: Vec<u8>) -> Result<u64, CommitError> {
        if entry.is_empty() {
            return Err(CommitError::Empty);
        }
        wal::check_entry(&entry, self.shared.frame_bytes_max)
            .map_err(|e| CommitError::InvalidEntry(e.to_string()))?;
        let ticket = {
            let mut st = self.shared.lock();
            Self::check_open(&st)?;
            st.last_ticket += 1;
            let t = st.last_ticket;
            st.pending.push_back(Op::Entry(t, entry));
            t
        };
        self.shared.work.notify_one();
        Ok(ticket)
    }

    /// Replaces the log with `entries` once everything submitted before this
    /// call is durable. `entries` must capture the state as of that point.
    /// Returns the last ticket the checkpoint covers.
    pub fn request_checkpoint(&self, entries: Vec<Vec<u8>>) -> Result<u64, CommitError> {
        for e in &entries {
            wal::check_entry(e, self.shared.frame_bytes_max)
                .map_err(|e| CommitError::InvalidEntry(e.to_string()))?;
        }
        let covered = {
            let mut st = self.shared.lock();
            Self::check_open(&st)?;
            st.pending.push_back(Op::Checkpoint(entries));
            st.last_ticket
        };
        self.shared.work.notify_one();
        Ok(covered)
    }

    /// Last ticket handed out (0 if none).
    pub fn current_ticket(&self) -> u64 {
        self.shared.lock().last_ticket
    }

    /// Highest ticket known durable, for async callers.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    /// Blocks until `ticket` is durable, or the committer failed or stopped.
    pub fn wait_durable(&self, ticket: u64) -> Result<(), CommitError> {
        let mut st = self.shared.lock();
        loop {
            if ticket <= st.durable {
                return Ok(());
            }
            if ticket > st.last_ticket {
                return Err(CommitError::UnknownTicket(ticket));
            }
            if let Some(reason) = &st.failed {
                return Err(CommitError::Failed(reason.clone()));
            }
            if st.exited {
                return Err(CommitError::Closed);
            }
            st = self
                .shared
                .progress
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn stats(&self) -> CommitStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Flushes everything already submitted, then stops the thread.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            error!("wal: commit thread panicked");
        }
    }

    fn check_open(st: &State) -> Result<(), CommitError> {
        if let Some(reason) = &st.failed {
            return Err(CommitError::Failed(reason.clone()));
        }
        if st.shutdown || st.exited {
            return Err(CommitError::Closed);
        }
        Ok(())
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Takes the next unit of work: a checkpoint alone, or a run of entries up to
/// the frame cap. `None` once shut down and drained.
fn next_batch(shared: &Shared) -> Option<Batch> {
    let mut st = shared.lock();
    while st.pending.is_empty() {
        if st.shutdown {
            return None;
        }
        st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    match st.pending.pop_front()? {
        Op::Checkpoint(entries) => Some(Batch::Checkpoint(entries)),
        Op::Entry(ticket, first) => {
            // Each entry fits a frame alone (checked at submit); a batch
            // stays within both the soft cap and the frame limit.
            let cap = COMMIT_FRAME_BYTES.min(shared.frame_bytes_max);
            let mut bytes = wal::payload_bound([first.as_slice()]);
            let (mut entries, mut last) = (vec![first], ticket);
            while let Some(Op::Entry(_, next)) = st.pending.front() {
                let size = next.len() + wal::VARINT_MAX;
                if bytes + size > cap {
                    break;
                }
                bytes += size;
                if let Some(Op::Entry(t, e)) = st.pending.pop_front() {
                    entries.push(e);
                    last = t;
                }
            }
            Some(Batch::Entries { entries, last })
        }
    }
}

/// A WAL checkpoint taking longer than this is logged as a warning.
const CHECKPOINT_SLOW: std::time::Duration = std::time::Duration::from_millis(50);

fn run(
    shared: &Shared,
    mut wal: Wal,
    mut compaction: Option<(Box<dyn Compactor>, CheckpointPolicy)>,
) {
    let stats = &shared.stats;
    // After a refused checkpoint, WAL size before the next attempt.
    let mut retry_after = 0u64;
    while let Some(batch) = next_batch(shared) {
        let result = match batch {
            Batch::Entries { entries, last } => wal
                .append(&entries)
                .and_then(|bytes| wal.sync().map(|()| bytes))
                .map(|bytes| {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    stats
                        .entries
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                    Some(last)
                })
                .and_then(|durable| {
                    // Publish durability first: compaction must not delay acks.
                    if let Some(durable) = durable {
                        let mut st = shared.lock();
                        st.durable = durable;
                        shared.durable_tx.send_replace(durable);
                        drop(st);
                        shared.progress.notify_all();
                    }
                    if let Some((compactor, policy)) = compaction.as_mut() {
                        for entry in &entries {
                            compactor.fold(entry);
                        }
                        let wal_bytes = wal.total_bytes();
                        let live = compactor.live_bytes().max(1);
                        if wal_bytes > policy.min_wal_bytes
                            && wal_bytes > live.saturating_mul(policy.wal_to_live_ratio)
                            && wal_bytes > retry_after
                        {
                            let started = std::time::Instant::now();
                            let cap = CHECKPOINT_ENTRY_BYTES
                                .min(wal::entry_bytes_max(wal.frame_bytes_max()));
                            let checkpoint = compactor.checkpoint(cap);
                            match wal.checkpoint(&checkpoint) {
                                Ok(()) => retry_after = 0,
                                // Refused before writing: the WAL is intact,
                                // so keep committing and retry much later.
                                Err(error) if error.is_refusal() => {
                                    retry_after = wal_bytes.saturating_mul(2);
                                    error!(%error, wal_bytes, "wal: checkpoint refused; the WAL keeps growing until it succeeds");
                                    return Ok(durable);
                                }
                                Err(error) => return Err(error),
                            }
                            if started.elapsed() > CHECKPOINT_SLOW {
                                tracing::warn!(
                                    wal_bytes,
                                    live,
                                    ms = started.elapsed().as_millis() as u64,
                                    "slow WAL checkpoint: commits waited while it was written"
                                );
                            }
                            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                            debug!(
                                wal_bytes,
                                live,
                                after = wal.total_bytes(),
                                "wal: automatic checkpoint"
                            );
                        }
                    }
                    Ok(durable)
                }),
            Batch::Checkpoint(entries) => wal.checkpoint(&entries).map(|()| {
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                debug!(entries = entries.len(), "wal: checkpoint done");
                None
            }),
        };
        match result {
            // Entries published their durability above, before compaction;
            // publishing again would only wake every region once more.
            Ok(Some(_)) => {}
            Ok(None) => shared.progress.notify_all(),
            Err(e) => {
                let mut st = shared.lock();
                error!(error = %e, durable = st.durable, "wal: commit thread failed");
                st.failed = Some(e.to_string());
                break;
            }
        }
    }
    shared.lock().exited = true;
    shared.progress.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::MemDisk;
    use crate::storage::wal::{WalError, WalOptions};

    fn start(disk: &MemDisk) -> Result<GroupCommit, WalError> {
        let (wal, _) = Wal::open(Arc::new(disk.clone()), "wal", WalOptions::default())?;
        Ok(GroupCommit::start(wal))
    }

    fn replay(disk: &MemDisk) -> Result<Vec<Vec<u8>>, WalError> {
        Ok(
            Wal::open(Arc::new(disk.clone()), "wal", WalOptions::default())?
                .1
                .entries,
        )
    }

    #[test]
    fn concurrent_submitters_share_fsyncs() -> Result<(), Box<dyn std::error::Error>> {
        const THREADS: usize = 8;
        const PER: usize = 50;
        let disk = MemDisk::new();
        let gc = Arc::new(start(&disk)?);
        let rx = gc.durable();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let gc = gc.clone();
                std::thread::spawn(move || -> Result<Vec<(u64, Vec<u8>)>, CommitError> {
                    let mut mine = Vec::new();
                    for i in 0..PER {
                        let entry = format!("t{t}-{i}").into_bytes();
                        let ticket = gc.submit(entry.clone())?;
                        gc.wait_durable(ticket)?;
                        mine.push((ticket, entry));
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| "submitter panicked")??);
        }
        let n = (THREADS * PER) as u64;
        assert_eq!(gc.current_ticket(), n);
        assert_eq!(*rx.borrow(), n);
        let stats = gc.stats();
        assert_eq!(stats.entries, n);
        assert!(stats.fsyncs <= n && stats.fsyncs == stats.frames);
        gc.shutdown();
        assert_eq!(gc.submit(b"late".to_vec()), Err(CommitError::Closed));
        all.sort();
        let by_ticket: Vec<Vec<u8>> = all.into_iter().map(|(_, e)| e).collect();
        assert_eq!(replay(&disk)?, by_ticket);
        Ok(())
    }

    #[test]
    fn drop_flushes_and_checkpoint_is_ordered() -> Result<(), Box<dyn std::error::Error>> {
        let disk = MemDisk::new();
        let gc = start(&disk)?;
        assert_eq!(gc.submit(Vec::new()), Err(CommitError::Empty));
        assert!(gc.submit(wal::CHECKPOINT_MARKER.to_vec()).is_err());
        assert_eq!(gc.wait_durable(0), Ok(()));
        assert_eq!(gc.wait_durable(1), Err(CommitError::UnknownTicket(1)));
        gc.submit(b"a".to_vec())?;
        gc.submit(b"b".to_vec())?;
        assert_eq!(gc.request_checkpoint(vec![b"ab".to_vec()])?, 2);
        let t = gc.submit(b"c".to_vec())?;
        gc.submit(b"d".to_vec())?;
        gc.wait_durable(t)?;
        drop(gc);
        disk.crash();
        assert_eq!(
            replay(&disk)?,
            vec![b"ab".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        Ok(())
    }

    #[test]
    fn sync_failure_stops_durability() -> Result<(), Box<dyn std::error::Error>> {
        let disk = MemDisk::new();
        let gc = start(&disk)?;
        let rx = gc.durable();
        let t1 = gc.submit(b"ok".to_vec())?;
        gc.wait_durable(t1)?;
        disk.set_fail_sync(true);
        let t2 = gc.submit(b"doomed".to_vec())?;
        assert!(matches!(gc.wait_durable(t2), Err(CommitError::Failed(_))));
        assert!(matches!(
            gc.submit(b"after".to_vec()),
            Err(CommitError::Failed(_))
        ));
        assert!(matches!(
            gc.request_checkpoint(vec![]),
            Err(CommitError::Failed(_))
        ));
        assert_eq!(*rx.borrow(), t1);
        assert_eq!(gc.wait_durable(t1), Ok(()));
        gc.shutdown();
        disk.set_fail_sync(false);
        disk.crash();
        assert_eq!(replay(&disk)?, vec![b"ok".to_vec()]);
        Ok(())
    }
}
