//! Snapshot durability off the region's pipeline (`snapshot-async`,
//! contract 0.1.2).
//!
//! A callback captures the image; at the end of its round the driver
//! submits the round's records and starts the save with that ticket. The
//! save waits until the WAL is durable through the ticket, writes the file
//! atomically and syncs it, all off the pipeline: on a blocking thread
//! under tokio, or (the simulator, deterministic) by the driver itself at
//! a later round end once the ticket is durable. Then the instance that
//! asked gets `on-timers([notify])`, and only then compacts its log, so a
//! crash at any point finds the log intact behind whichever snapshot is on
//! disk. One save at a time; a synchronous snapshot write (a `snapshot()`,
//! an installed shipment, a swap's boundary image) joins the save in
//! flight first, so an older image never replaces a newer one.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use synod_guest_sdk::TimerId;

use super::core::{SAVE_IN_FLIGHT, SnapshotRequest};
use super::driver::{ReplicaHost, SNAPSHOT_SLOW, blocking};
use crate::plugin::Call;

/// Why `snapshot-async` is refused while a swap holds the region.
const SWAP_HOLD: &str = "the region is held for a live swap";

/// The instance a notification belongs to: the epoch and the replica's
/// failure count (a rebuilt instance did not ask).
type Owner = (u64, u64);

/// A requested save, not started until its round's records are submitted.
pub(super) struct Requested {
    request: SnapshotRequest,
    owner: Owner,
}

/// The save in flight.
pub(super) struct InFlight {
    position: u64,
    notify: TimerId,
    owner: Owner,
    started: Instant,
    state: SaveState,
}

enum SaveState {
    /// Written by the driver once `ticket` is durable (no background
    /// threads: the simulator).
    Deferred {
        ticket: u64,
        image: Arc<Vec<u8>>,
    },
    /// Being written on a blocking thread, which answers here.
    Background {
        done: mpsc::Receiver<Result<(), String>>,
    },
    Done(Result<(), String>),
}

impl ReplicaHost {
    /// Saves of `snapshot-async` run on blocking threads from now on,
    /// waking the driver through `wake` when one finishes.
    pub fn use_background_saves(&mut self, wake: Arc<tokio::sync::Notify>) {
        self.save_wake = Some(wake);
    }

    fn save_owner(&self) -> Owner {
        (self.spec.epoch, self.replica.failures_total())
    }

    /// Tells the core whether `snapshot-async` is refused now; called
    /// before every plugin callback.
    pub(super) fn refresh_snapshot_refusal(&mut self) {
        let why = if self.save_requested.is_some() || self.snapshot_save.is_some() {
            Some(SAVE_IN_FLIGHT)
        } else if self.epoch.is_holding() {
            Some(SWAP_HOLD)
        } else {
            None
        };
        self.replica.core_mut().set_snapshot_refusal(why);
    }

    /// A callback asked for a save: it starts at the end of the round.
    pub(super) fn request_snapshot_save(&mut self, request: SnapshotRequest) {
        if self.storage_failure.is_some() {
            return;
        }
        let owner = self.save_owner();
        self.save_requested = Some(Requested { request, owner });
    }

    /// Starts the requested save (the round's records are submitted, so
    /// `last_ticket` covers every effect up to the requesting callback).
    pub(super) fn start_snapshot_save(&mut self) {
        if self.snapshot_save.is_some() {
            // The core refuses requests while a save is in flight or not
            // yet reported, so this cannot happen; if it did, the request
            // waits for the save before it rather than replacing it.
            if self.save_requested.is_some() {
                tracing::error!(region = %self.name, "a snapshot save was requested while one is in flight; it waits");
            }
            return;
        }
        let Some(Requested { request, owner }) = self.save_requested.take() else {
            return;
        };
        if self.storage_failure.is_some() {
            return;
        }
        let ticket = self.last_ticket;
        tracing::debug!(
            region = %self.name,
            position = request.position,
            ticket,
            bytes = request.image.len(),
            capture_ms = request.capture.as_secs_f64() * 1e3,
            "snapshot save started (image captured on the pipeline)"
        );
        let state = match &self.save_wake {
            Some(wake) => {
                let (answer, done) = mpsc::channel();
                let commit = self.context.commit.clone();
                let snapshots = self.context.snapshots.clone();
                let name = self.name.clone();
                let wake = wake.clone();
                let image = request.image;
                tokio::task::spawn_blocking(move || {
                    let saved = commit
                        .wait_durable(ticket)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            snapshots
                                .save(name.as_str(), &image)
                                .map_err(|e| e.to_string())
                        });
                    let _ = answer.send(saved);
                    wake.notify_one();
                });
                SaveState::Background { done }
            }
            None => SaveState::Deferred {
                ticket,
                image: request.image,
            },
        };
        self.snapshot_save = Some(InFlight {
            position: request.position,
            notify: request.notify,
            owner,
            started: Instant::now(),
            state,
        });
    }

    /// Advances the save in flight without waiting: a deferred save whose
    /// ticket is durable is written now; a finished one is reported to the
    /// instance that asked (or fails the region's storage).
    pub(super) fn poll_snapshot_save(&mut self) {
        let Some(save) = self.snapshot_save.as_mut() else {
            return;
        };
        let finished = match &save.state {
            SaveState::Deferred { ticket, image } => {
                if self.context.commit.durable_ticket() < *ticket {
                    return;
                }
                let saved = self
                    .context
                    .snapshots
                    .save(self.name.as_str(), image)
                    .map_err(|e| e.to_string());
                Some(saved)
            }
            SaveState::Background { done } => match done.try_recv() {
                Ok(saved) => Some(saved),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    Some(Err("the snapshot save thread stopped".into()))
                }
            },
            SaveState::Done(_) => None,
        };
        if let Some(saved) = finished {
            save.state = SaveState::Done(saved);
        }
        self.finish_snapshot_save(true);
    }

    /// Waits for the save in flight (a requested one is started first) to
    /// be written, blocking the driver; its notification follows at the
    /// next poll. Called before any synchronous snapshot write.
    pub(super) fn join_snapshot_save(&mut self) {
        if self.save_requested.is_some() {
            self.submit_round_records();
            self.start_snapshot_save();
        }
        let Some(save) = self.snapshot_save.as_mut() else {
            return;
        };
        let commit = &self.context.commit;
        let snapshots = &self.context.snapshots;
        let name = &self.name;
        let saved = match &save.state {
            SaveState::Deferred { ticket, image } => Some(blocking(|| {
                commit
                    .wait_durable(*ticket)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        snapshots
                            .save(name.as_str(), image)
                            .map_err(|e| e.to_string())
                    })
            })),
            SaveState::Background { done } => Some(blocking(|| {
                done.recv()
                    .unwrap_or_else(|_| Err("the snapshot save thread stopped".into()))
            })),
            SaveState::Done(_) => None,
        };
        if let Some(saved) = saved {
            save.state = SaveState::Done(saved);
        }
    }

    /// Ends a finished save: logs it, fails the storage if it failed, and
    /// (with `notify`) tells the instance that asked, if it still runs.
    pub(super) fn finish_snapshot_save(&mut self, notify: bool) {
        let Some(save) = self.snapshot_save.take() else {
            return;
        };
        let saved = match save.state {
            SaveState::Done(saved) => saved,
            state => {
                self.snapshot_save = Some(InFlight { state, ..save });
                return;
            }
        };
        let took = save.started.elapsed();
        match saved {
            Ok(()) => {
                if took > SNAPSHOT_SLOW {
                    tracing::info!(region = %self.name, position = save.position, took_ms = took.as_millis() as u64, "slow snapshot save (off the pipeline)");
                } else {
                    tracing::debug!(region = %self.name, position = save.position, took_ms = took.as_secs_f64() * 1e3, "snapshot saved off the pipeline");
                }
                if notify && save.owner == self.save_owner() {
                    self.deliver(Call::Timers(vec![save.notify]), &[]);
                }
            }
            Err(why) => self.fail_storage(format!(
                "saving the snapshot at position {} off the pipeline: {why}",
                save.position
            )),
        }
    }

    /// The position of the save in flight, if any.
    pub fn snapshot_save_in_flight(&self) -> Option<u64> {
        self.save_requested
            .as_ref()
            .map(|r| r.request.position)
            .or(self.snapshot_save.as_ref().map(|s| s.position))
    }
}
