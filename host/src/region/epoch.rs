//! A replica's side of a live protocol swap (epochs).
//!
//! A coordinator moves a region from one protocol to the next in steps;
//! this module does what happens inside one node's replica:
//!
//! - **hold** (step a): writes, and reads other than `local`, stop reaching
//!   the plugin and wait in a bounded queue (beyond it: `overloaded`). They
//!   stay registered as pending, so they still expire at their client's
//!   timeout.
//! - **seal** (step b): the host calls the plugin's `seal` at the end of
//!   every round (the plugin keeps getting messages and timers meanwhile)
//!   until it answers `sealed(p)`, then reports `p` and the state
//!   machine's digest once everything the replica wrote is durable (a
//!   sealed Raft replica has journaled its seal marker, so it re-reports
//!   `sealed` after a crash).
//! - **switch** (steps e and f): flush the old epoch's outputs, save the
//!   state machine as the region's snapshot (the boundary image), journal
//!   `RegionEpochStarted` (its fold drops the old log and kv area), start
//!   the new protocol with empty storage and `init(recovering = false,
//!   applied-position = the state machine's position)`, and release the
//!   held requests into it once it can serve them (it names a leader, or is
//!   leaderless).
//!
//! Requests the old plugin took but never answered stay pending and expire
//! at their client's timeout (their outcome is unknown: another replica's
//! state, which the new epoch may start from, can hold them).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use synod_guest_sdk::{
    InitConfig, Membership, NodeId, ReadLevel, Rejection, RequestId, Role, SealProgress,
};
use tokio::sync::oneshot;

use crate::journal::JournalRecord;
use crate::plugin::{Call, CallResult, PluginSource};
use crate::region::RegionSpec;
use crate::region::driver::{
    ClientError, INBOX_CAPACITY, ROUND_EVENTS_MAX, ROUND_WRITE_BYTES_MAX, RegionEvent,
    RegionHandle, ReplicaHost, RoundBatches, blocking,
};
use crate::region::replica::Delivery;

/// What `hold` queues when `seal` holds first without being told a bound.
pub const DEFAULT_HOLD_CAPACITY: usize = INBOX_CAPACITY;
/// How often a driver that is sealing wakes to call `seal` again when no
/// other event arrives.
const SEAL_POLL: Duration = Duration::from_millis(10);

/// A replica's answer to `seal`: the plugin's sealed position and the
/// state machine's digest there. Replicas whose (position, digest) agree
/// hold the same state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SealReport {
    pub epoch: u64,
    /// The position the plugin reported sealed. The state machine holds
    /// exactly the commands up to it; its own applied position is the last
    /// command at or before it (a protocol may log non-commands, such as
    /// Raft's seal entry, after the last command).
    pub position: u64,
    /// SHA-256 of the state machine's contents.
    pub digest: Vec<u8>,
}

/// What a replica did when it switched epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SwitchReport {
    pub epoch: u64,
    /// The state machine's applied position the new protocol started from.
    pub start_position: u64,
}

/// The region's current spec, shared between the driver (which replaces it
/// at a switch) and every handle.
#[derive(Clone, Debug)]
pub struct SharedSpec(Arc<RwLock<Arc<RegionSpec>>>);

impl SharedSpec {
    pub fn new(spec: Arc<RegionSpec>) -> Self {
        Self(Arc::new(RwLock::new(spec)))
    }

    pub fn get(&self) -> Arc<RegionSpec> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, spec: Arc<RegionSpec>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = spec;
    }
}

/// Swap steps sent to a region driver.
pub enum EpochEvent {
    Hold {
        capacity: usize,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    ReleaseHeld {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    RedirectHeld {
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    SaveBoundary {
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
    Seal {
        reply: oneshot::Sender<Result<SealReport, ClientError>>,
    },
    Switch {
        spec: Box<RegionSpec>,
        source: PluginSource,
        reply: oneshot::Sender<Result<SwitchReport, ClientError>>,
    },
}

/// A client request queued while the region holds.
pub enum HeldRequest {
    Write {
        id: RequestId,
        command: Vec<u8>,
        keys: Vec<u64>,
    },
    Read {
        id: RequestId,
        query: Vec<u8>,
        level: ReadLevel,
    },
}

impl HeldRequest {
    fn id(&self) -> RequestId {
        match self {
            HeldRequest::Write { id, .. } | HeldRequest::Read { id, .. } => *id,
        }
    }
}

struct Hold {
    capacity: usize,
    queue: VecDeque<HeldRequest>,
    /// After a switch: the queue goes to the new protocol once it can
    /// serve (it knows a leader, or has none by design), so held writes are
    /// served instead of refused by a replica that is still electing.
    until_ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seal {
    Idle,
    /// `seal` is called every round until the plugin answers `sealed`.
    Sealing,
    /// The plugin answered `sealed(position)`; everything up to `ticket`
    /// must be durable before the answer is reported.
    Sealed {
        position: u64,
        ticket: u64,
    },
}

/// The swap state of one replica.
pub struct EpochState {
    hold: Option<Hold>,
    seal: Seal,
    seal_waiters: Vec<oneshot::Sender<Result<SealReport, ClientError>>>,
    /// The state machine's position the current epoch started from (after
    /// a restart: the position the replica restarted from).
    start_position: u64,
    /// The state-machine position whose image is already saved as the
    /// boundary snapshot (saved right after the seal, while the commit is
    /// in flight, so the switch need not wait for it).
    boundary_saved: Option<u64>,
}

impl EpochState {
    pub fn new(start_position: u64) -> Self {
        Self {
            hold: None,
            seal: Seal::Idle,
            seal_waiters: Vec::new(),
            start_position,
            boundary_saved: None,
        }
    }

    pub fn is_holding(&self) -> bool {
        self.hold.is_some()
    }

    /// The seal's state for the status: `none`, `sealing` or `sealed`.
    pub fn seal_name(&self) -> &'static str {
        match self.seal {
            Seal::Idle => "none",
            Seal::Sealing => "sealing",
            Seal::Sealed { .. } => "sealed",
        }
    }

    /// When a driver that is sealing, or waiting for the new protocol to
    /// serve, should wake to look again.
    pub fn next_seal_poll(&self, now_nanos: u64) -> Option<u64> {
        let waiting = self.hold.as_ref().is_some_and(|hold| hold.until_ready);
        (self.seal == Seal::Sealing || waiting)
            .then(|| now_nanos.saturating_add(u64::try_from(SEAL_POLL.as_nanos()).unwrap_or(0)))
    }

    /// The driver stops: seal waiters learn it (held requests are pending
    /// and answered with the rest).
    pub fn stop(&mut self) {
        self.hold = None;
        self.seal = Seal::Idle;
        for waiter in self.seal_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Stopped));
        }
    }
}

fn invalid(why: String) -> ClientError {
    ClientError::Rejected(Rejection::Invalid(why))
}

impl ReplicaHost {
    /// The current spec.
    pub fn spec(&self) -> Arc<RegionSpec> {
        self.spec.clone()
    }

    /// The handles' view of the spec.
    pub fn shared_spec(&self) -> SharedSpec {
        self.shared_spec.clone()
    }

    /// Requests held for the next epoch.
    pub fn held_requests(&self) -> usize {
        self.epoch.hold.as_ref().map_or(0, |hold| hold.queue.len())
    }

    /// Step a: from now on writes, and reads other than `local`, wait in a
    /// queue of at most `capacity` requests instead of reaching the plugin.
    /// Idempotent; a second call sets the bound.
    pub fn hold(&mut self, capacity: usize) {
        match self.epoch.hold.as_mut() {
            Some(hold) => hold.capacity = capacity,
            None => {
                tracing::info!(region = %self.name, epoch = self.spec.epoch, capacity, "holding client requests for a protocol swap");
                self.epoch.hold = Some(Hold {
                    capacity,
                    queue: VecDeque::new(),
                    until_ready: false,
                });
            }
        }
    }

    /// Queues a request the region holds (already registered as pending),
    /// or answers it `overloaded` beyond the bound.
    pub(super) fn hold_request(&mut self, request: HeldRequest) {
        let Some(hold) = self.epoch.hold.as_mut() else {
            return;
        };
        if hold.queue.len() >= hold.capacity {
            // Requests that expired meanwhile do not count against the bound.
            let pending = &self.pending;
            hold.queue.retain(|held| pending.contains(held.id()));
        }
        if hold.queue.len() < hold.capacity {
            hold.queue.push_back(request);
            return;
        }
        let capacity = hold.capacity;
        if let Some(reply) = self.pending.take(request.id()) {
            let _ = reply.send(Err(ClientError::Overloaded(format!(
                "region {} is swapping its protocol and already holds {capacity} requests",
                self.name
            ))));
        }
    }

    /// Undoes `hold` (a swap abandoned before the switch): the queued
    /// requests go to the current plugin, and a seal in progress stops
    /// being driven (a plugin that already sealed stays sealed: that is its
    /// own state). Idempotent.
    pub fn release_held(&mut self) {
        if self.epoch.seal == Seal::Sealing {
            self.epoch.seal = Seal::Idle;
        }
        for waiter in self.epoch.seal_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Unavailable(
                "the swap was abandoned (held requests were released)".into(),
            )));
        }
        if let Some(hold) = self.epoch.hold.take() {
            tracing::info!(region = %self.name, released = hold.queue.len(), "released held requests to the current protocol");
            self.admit(hold.queue);
        }
    }

    /// Saves the state machine as the region's snapshot now: right after a
    /// seal, while the swap's commit is in flight, so the switch does not
    /// wait for it. Equivalent to a crash between the two steps of a switch
    /// (the old epoch restarts from it). Returns the position saved.
    pub fn save_boundary(&mut self) -> Result<u64, ClientError> {
        let position = self.replica.core().state().applied_position();
        // Saved already (a step retried), and the state has not moved since.
        if self.epoch.boundary_saved == Some(position) {
            return Ok(position);
        }
        // A periodic save still in flight must not land over the boundary.
        self.join_snapshot_save();
        let started = std::time::Instant::now();
        let state = self.replica.core().state();
        // Streamed from the live state: the swap's stall would otherwise
        // grow with the copies of a large state (page faults, not I/O,
        // dominated: 33-46 ms to build a 2.5 MB image under load).
        let saved = blocking(|| {
            self.context
                .snapshots
                .save_encoded(self.name.as_str(), &|out| state.write_snapshot(out))
        });
        let bytes = match saved {
            Ok(bytes) => bytes,
            Err(error) => {
                return Err(ClientError::Unavailable(format!(
                    "saving the boundary snapshot of region {} at {position}: {error}",
                    self.name
                )));
            }
        };
        tracing::debug!(
            region = %self.name,
            position,
            bytes,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "boundary snapshot written"
        );
        self.epoch.boundary_saved = Some(position);
        Ok(position)
    }

    /// Answers every held request `not-leader(to)`: this replica leaves the
    /// region (a swap's new epoch does not include it), so its clients are
    /// sent to a node that has it instead of being refused.
    pub fn redirect_held(&mut self, to: Option<NodeId>) {
        if let Some(hold) = self.epoch.hold.take() {
            tracing::info!(region = %self.name, redirected = hold.queue.len(), ?to, "held requests redirected: this replica leaves the region");
            for request in hold.queue {
                if let Some(reply) = self.pending.take(request.id()) {
                    let _ = reply.send(Err(ClientError::Rejected(Rejection::NotLeader(to))));
                }
            }
        }
    }

    /// Hands held requests that are still pending to the plugin, in rounds
    /// bounded like inbox rounds.
    fn admit(&mut self, requests: VecDeque<HeldRequest>) {
        let mut batches = RoundBatches::default();
        let mut count = 0;
        let mut bytes = 0;
        for request in requests {
            if !self.pending.contains(request.id()) {
                continue;
            }
            match request {
                HeldRequest::Write { id, command, keys } => {
                    bytes += command.len();
                    batches.push_write(id, &command, &keys);
                }
                HeldRequest::Read { id, query, level } => {
                    self.replica.core_mut().register_read(id, query);
                    batches.reads.ids.push(id);
                    batches.reads.levels.push(level);
                }
            }
            count += 1;
            if count >= ROUND_EVENTS_MAX || bytes >= ROUND_WRITE_BYTES_MAX {
                self.deliver_batches(std::mem::take(&mut batches));
                self.submit_round_records();
                count = 0;
                bytes = 0;
            }
        }
        self.deliver_batches(batches);
    }

    /// Step b: holds (if not yet, with [`DEFAULT_HOLD_CAPACITY`]) and calls
    /// `seal` every round until the plugin answers `sealed`. `reply`, if
    /// given, gets the report once it is durable. The seal keeps being
    /// driven after a waiter gives up, until `release_held` or a switch.
    pub fn begin_seal(&mut self, reply: Option<oneshot::Sender<Result<SealReport, ClientError>>>) {
        let info = self.replica.info();
        if !info.capabilities.seal {
            let error = invalid(format!(
                "protocol {} {} cannot seal (no seal capability), so region {} cannot be swapped live",
                info.name, info.version, self.name
            ));
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
            return;
        }
        if !self.epoch.is_holding() {
            self.hold(DEFAULT_HOLD_CAPACITY);
        }
        if self.epoch.seal == Seal::Idle {
            tracing::info!(region = %self.name, epoch = self.spec.epoch, "sealing the protocol");
            self.epoch.seal = Seal::Sealing;
        }
        if let Some(reply) = reply {
            // Callers that timed out and retry leave closed waiters behind.
            self.epoch.seal_waiters.retain(|waiter| !waiter.is_closed());
            self.epoch.seal_waiters.push(reply);
        }
        self.poll_seal();
        let durable = self.context.commit.durable_ticket();
        self.answer_seal_waiters(durable);
    }

    /// After a switch, hands the held requests to the new protocol once it
    /// can serve them: its status names a leader, or its role is `leader`
    /// or `replica` (leaderless). Until then they stay held (and expire at
    /// their client's timeout). Called at every round end.
    pub(super) fn release_when_ready(&mut self) {
        if !self
            .epoch
            .hold
            .as_ref()
            .is_some_and(|hold| hold.until_ready)
        {
            return;
        }
        let ready = match self.replica.deliver(Call::Status) {
            Delivery::Done(CallResult::Status(status), effects) => {
                self.stage(effects);
                status.leader.is_some() || matches!(status.role, Role::Leader | Role::Replica)
            }
            Delivery::Done(_, effects) => {
                self.stage(effects);
                true
            }
            Delivery::Refused(_) => false,
            Delivery::Failed(_) => {
                self.timers.clear();
                false
            }
        };
        if ready && let Some(hold) = self.epoch.hold.take() {
            tracing::info!(region = %self.name, epoch = self.spec.epoch, released = hold.queue.len(), "the new protocol serves; held requests released");
            self.admit(hold.queue);
        }
    }

    /// Calls `seal` once if a seal is in progress (every round end).
    pub(super) fn poll_seal(&mut self) {
        if self.epoch.seal != Seal::Sealing {
            return;
        }
        if let Some(why) = &self.storage_failure {
            // A region whose storage failed writes nothing more, so it can
            // never report a durable seal.
            let error = ClientError::Unavailable(format!("storage failed: {why}"));
            for waiter in self.epoch.seal_waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
            self.epoch.seal = Seal::Idle;
            return;
        }
        self.refresh_snapshot_refusal();
        match self.replica.deliver(Call::Seal) {
            Delivery::Done(CallResult::Seal(SealProgress::Sealed(position)), effects) => {
                self.stage(effects);
                // The report waits until everything this replica wrote so
                // far (its seal marker included) is durable.
                self.submit_round_records();
                tracing::info!(region = %self.name, epoch = self.spec.epoch, position, "protocol sealed");
                // The state's digest is taken when the report is due, not
                // now: on a leader, computing it here would hold back the
                // seal's messages to the followers (they leave when this
                // round's records are durable and the driver is free).
                self.epoch.seal = Seal::Sealed {
                    position,
                    ticket: self.last_ticket,
                };
            }
            Delivery::Done(_, effects) => self.stage(effects),
            // Fenced: called again after the rebuild.
            Delivery::Refused(_) => {}
            Delivery::Failed(_) => self.timers.clear(),
        }
    }

    /// The seal report, once the plugin sealed and its writes are durable.
    pub fn seal_report(&self) -> Option<Result<SealReport, ClientError>> {
        let Seal::Sealed { position, ticket } = self.epoch.seal else {
            return None;
        };
        if ticket > self.context.commit.durable_ticket() {
            return None;
        }
        let state = self.replica.core().state();
        if state.applied_position() > position {
            return Some(Err(ClientError::Unavailable(format!(
                "protocol reported sealed at {position} but the state machine applied through {}",
                state.applied_position()
            ))));
        }
        Some(Ok(SealReport {
            epoch: self.spec.epoch,
            position,
            digest: state.digest().to_vec(),
        }))
    }

    pub(super) fn answer_seal_waiters(&mut self, durable: u64) {
        if self.epoch.seal_waiters.is_empty() {
            return;
        }
        if matches!(self.epoch.seal, Seal::Sealed { ticket, .. } if ticket <= durable)
            && let Some(report) = self.seal_report()
        {
            for waiter in self.epoch.seal_waiters.drain(..) {
                let _ = waiter.send(report.clone());
            }
        }
    }

    /// Steps e and f: moves the replica to `spec` (a later epoch) running
    /// `source`. In order: (0) every record of the old epoch is durable and
    /// its held outputs leave, still tagged with the old epoch; (1) the
    /// state machine is saved as the region's snapshot (the boundary
    /// image); (2) `RegionEpochStarted` is journaled and made durable (its
    /// fold drops the old log and kv area); (3) the new protocol starts
    /// with empty storage and `init(recovering = false, applied-position =
    /// the state machine's position)`; (4) the held requests go to it once
    /// it can serve them (see [`ReplicaHost::release_when_ready`]); a
    /// `hold` and `release_held` still apply meanwhile.
    /// A crash before (2) restarts in the old epoch; after it, in the new
    /// epoch from the boundary snapshot. The same epoch again is a no-op
    /// (the coordinator may retry). Works whether or not the old plugin
    /// sealed: a replica that was down switches from the state it has and
    /// the new protocol catches it up.
    pub fn switch_epoch(
        &mut self,
        spec: RegionSpec,
        source: PluginSource,
    ) -> Result<SwitchReport, ClientError> {
        let current = self.spec.epoch;
        if spec.name != self.spec.name {
            return Err(invalid(format!(
                "spec of region {} given to region {}",
                spec.name, self.spec.name
            )));
        }
        if spec.epoch == current {
            return Ok(SwitchReport {
                epoch: current,
                start_position: self.epoch.start_position,
            });
        }
        if spec.epoch < current {
            return Err(invalid(format!(
                "region {} is in epoch {current}; cannot switch back to epoch {}",
                self.name, spec.epoch
            )));
        }
        if let Some(why) = &self.storage_failure {
            return Err(ClientError::Unavailable(format!("storage failed: {why}")));
        }
        // (0) Flush the old epoch: no record or output of it may follow the
        // switch.
        if self.epoch.seal == Seal::Sealing {
            self.epoch.seal = Seal::Idle;
        }
        let started = std::time::Instant::now();
        self.end_round();
        let flushed = blocking(|| self.wait_durable(self.last_ticket));
        let flushed_at = started.elapsed();
        if let Err(why) = flushed {
            self.fail_storage(format!("flushing epoch {current} before a switch: {why}"));
            return Err(ClientError::Unavailable(format!("storage failed: {why}")));
        }
        self.release();
        // A save of the old epoch in flight finishes first; its
        // notification is not delivered (the new instance did not ask).
        self.join_snapshot_save();
        self.finish_snapshot_save(false);
        // (1) The boundary image (unless saved after the seal already). If
        // it cannot be saved the replica stays in the old epoch (an atomic
        // write leaves the previous file).
        let start_position = self.replica.core().state().applied_position();
        if self.epoch.boundary_saved != Some(start_position) {
            self.save_boundary()?;
        }
        self.epoch.boundary_saved = None;
        let boundary_at = started.elapsed();
        // (2) The new epoch, durably.
        let record = JournalRecord::RegionEpochStarted {
            spec: spec.clone(),
            start_position,
        };
        let journaled = self
            .context
            .commit
            .submit(JournalRecord::encode_all(&[record]))
            .map_err(|e| e.to_string())
            .and_then(|ticket| {
                self.last_ticket = ticket;
                blocking(|| self.wait_durable(ticket))
            });
        if let Err(why) = journaled {
            // Whether the record reached the disk is unknown: stop writing.
            self.fail_storage(format!("journaling epoch {}: {why}", spec.epoch));
            return Err(ClientError::Unavailable(format!("storage failed: {why}")));
        }
        tracing::info!(
            region = %self.name,
            from = current,
            to = spec.epoch,
            protocol = %source.id(),
            start_position,
            flush_ms = flushed_at.as_secs_f64() * 1e3,
            boundary_ms = boundary_at.as_secs_f64() * 1e3,
            journal_ms = started.elapsed().as_secs_f64() * 1e3,
            "region switches epoch"
        );
        // (3) The new protocol, over empty storage. Outputs from here on
        // carry the new epoch.
        let init = InitConfig {
            self_id: self.context.node_id,
            membership: Membership {
                voters: spec.voters.clone(),
                learners: spec.learners.clone(),
            },
            params: spec.params.clone(),
            recovering: false,
            applied_position: start_position,
        };
        let epoch = spec.epoch;
        self.spec = Arc::new(spec);
        self.shared_spec.set(self.spec.clone());
        self.epoch.seal = Seal::Idle;
        self.epoch.start_position = start_position;
        for waiter in self.epoch.seal_waiters.drain(..) {
            let _ = waiter.send(Err(ClientError::Unavailable(format!(
                "the region switched to epoch {epoch} before the seal completed"
            ))));
        }
        self.timers.clear();
        self.refresh_snapshot_refusal();
        match self.replica.switch_protocol(source, init) {
            Ok(effects) => self.stage(effects),
            // The replica is fenced and rebuilt like after any failure.
            Err(failure) => {
                tracing::warn!(region = %self.name, %failure, "the new protocol failed to start")
            }
        }
        // (4) Release what was held into the new epoch, once the new
        // protocol can serve it (at once for one that can already).
        if let Some(hold) = self.epoch.hold.as_mut() {
            hold.until_ready = true;
        }
        self.end_round();
        Ok(SwitchReport {
            epoch,
            start_position,
        })
    }

    /// Runs one swap step sent to the driver.
    pub(super) fn handle_epoch_event(&mut self, event: EpochEvent) {
        match event {
            EpochEvent::Hold { capacity, reply } => {
                self.hold(capacity);
                let _ = reply.send(Ok(()));
            }
            EpochEvent::ReleaseHeld { reply } => {
                self.release_held();
                let _ = reply.send(Ok(()));
            }
            EpochEvent::RedirectHeld { to, reply } => {
                self.redirect_held(to);
                let _ = reply.send(Ok(()));
            }
            EpochEvent::SaveBoundary { reply } => {
                let _ = reply.send(self.save_boundary());
            }
            EpochEvent::Seal { reply } => self.begin_seal(Some(reply)),
            EpochEvent::Switch {
                spec,
                source,
                reply,
            } => {
                let _ = reply.send(self.switch_epoch(*spec, source));
            }
        }
    }
}

impl RegionHandle {
    async fn epoch_step<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> EpochEvent,
    ) -> Result<oneshot::Receiver<Result<T, ClientError>>, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(RegionEvent::Epoch(make(reply)))
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(answer)
    }

    /// Step a. Stops passing writes (and reads other than `local`) to the
    /// plugin; queues up to `capacity` of them (beyond: `Overloaded`).
    /// Idempotent. Queued requests still expire at their client timeout.
    pub async fn hold(&self, capacity: usize) -> Result<(), ClientError> {
        let answer = self
            .epoch_step(|reply| EpochEvent::Hold { capacity, reply })
            .await?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Undoes `hold` (swap abandoned before the switch): queued requests go
    /// to the current plugin. Idempotent.
    pub async fn release_held(&self) -> Result<(), ClientError> {
        let answer = self
            .epoch_step(|reply| EpochEvent::ReleaseHeld { reply })
            .await?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Saves the boundary snapshot ahead of a switch (see
    /// [`ReplicaHost::save_boundary`]).
    pub async fn save_boundary(&self) -> Result<u64, ClientError> {
        let answer = self
            .epoch_step(|reply| EpochEvent::SaveBoundary { reply })
            .await?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Answers the held requests `not-leader(to)` (this replica leaves the
    /// region in the new epoch).
    pub async fn redirect_held(&self, to: Option<NodeId>) -> Result<(), ClientError> {
        let answer = self
            .epoch_step(|reply| EpochEvent::RedirectHeld { to, reply })
            .await?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Step b. Holds (if not yet) and calls the plugin's `seal` every
    /// driver round until it answers `sealed(p)`; returns `p` and the state
    /// machine's digest once the replica's writes are durable. If
    /// `timeout` passes first, the seal keeps being driven in the
    /// background (a later call returns at once when it completes;
    /// `release_held` stops it).
    pub async fn seal(&self, timeout: Duration) -> Result<SealReport, ClientError> {
        let answer = self.epoch_step(|reply| EpochEvent::Seal { reply }).await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::Unavailable(format!(
                "region {} did not seal within {timeout:?}; the seal goes on in the background",
                self.name()
            ))),
        }
    }

    /// Steps e and f (see [`ReplicaHost::switch_epoch`]): moves the replica
    /// to `spec.epoch` running `source`. The same epoch again is a no-op.
    pub async fn switch_epoch(
        &self,
        spec: RegionSpec,
        source: PluginSource,
    ) -> Result<SwitchReport, ClientError> {
        let answer = self
            .epoch_step(|reply| EpochEvent::Switch {
                spec: Box::new(spec),
                source,
                reply,
            })
            .await?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }
}
