//! Multi-master replication, after Apache IoTDB's IoTConsensus: every
//! replica accepts writes, applies them at once, acknowledges them once its
//! own log holds them (output commit), and ships them to the other replicas
//! asynchronously, tracked per origin by a sequence number (IoTDB's "search
//! index"). Nothing waits for another replica, so a dead replica never
//! blocks or slows writes.
//!
//! Convergence is the host's last-writer-wins rule (`apply-stamped`): each
//! write gets a hybrid-logical-clock stamp `(time, origin)` where it is
//! accepted, and every replica applies it with that stamp, in whatever order
//! it arrives. See `docs/PLUGIN-GUIDE.md` ("Multi-master") for the contract.
//!
//! Per peer and origin a replica tracks what the peer acknowledged (its
//! vector). Own writes are resent after loss (`resend-ms`), deduplicated by
//! sequence number at the receiver, and kept for a lagging peer only up to a
//! budget (`backlog-entries`, `backlog-bytes`). Past it, or when the entries
//! it needs were compacted, the peer is caught up by state shipping: a host
//! snapshot plus the vector it covers, which the host merges into the
//! peer's state by the same rule; the peer then resumes from that vector.
//! A replica also relays another origin's writes to a peer that lacks them
//! for `relay-after-ms` (the origin may be down), so live replicas converge
//! without it. Tombstones are dropped once every replica holds every write
//! stamped below a bound learnt from the vectors and clocks peers report.
//!
//! Log entry and message layouts: `entry.rs`, `message.rs`.

pub mod entry;
pub mod message;
pub mod params;
pub mod rto;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use synod_guest_sdk::*;

use crate::entry::Entry;
use crate::message::{BASE_KEY, Base, MEMBERS_KEY, Message, ShippedState, Vector, decode, encode};
use crate::params::Params;
use crate::rto::AckTimer;

/// The one timer: shipping, resends, probes, relays, tombstone collection.
const TICK: TimerId = 1;
/// Past reports of an origin's (sequence, clock) kept for tombstone bounds.
const REPORTS_MAX: usize = 64;
/// Log bytes read per host call while replaying or shipping.
const READ_BYTES_MAX: u32 = 4 << 20;

/// The multi-master protocol. `FLAW` selects a deliberately broken variant
/// for the checker's own tests (see [`fixtures`]); 0 is the real protocol.
pub struct MultiMasterWith<const FLAW: u8> {
    self_id: NodeId,
    members: BTreeSet<NodeId>,
    params: Params,
    /// Hybrid logical clock: above every stamp issued or applied here.
    hlc: u64,
    /// Per origin: every write up to this sequence number is held here.
    have: BTreeMap<NodeId, u64>,
    /// Applied position before this protocol's first write (a swap started
    /// it over an existing state); positions are `offset + Σ have`.
    offset: u64,
    log_first: u64,
    log_last: u64,
    /// What the latest snapshot covers (also in kv).
    base: Base,
    /// Own writes still in the log, in sequence order.
    own: VecDeque<OwnEntry>,
    /// Other origins' writes still in the log: (origin, seq) → position.
    index: BTreeMap<(NodeId, u64), u64>,
    peers: BTreeMap<NodeId, Peer>,
    since_snapshot: u64,
    /// A shipped state accepted in `on-snapshot`; the host merges it before
    /// the next callback, which records its vector.
    pending_merge: Option<ShippedState>,
    sealed: bool,
    /// (own sequence, clock) as reported to peers, for tombstone bounds.
    own_reports: VecDeque<(u64, u64)>,
    last_gc_nanos: u64,
    /// When `ship` last ran: it runs at least every `tick-ms` while this
    /// replica runs, so a longer gap is time this replica stalled.
    last_ship_nanos: u64,
    gc_below: u64,
    counters: Counters,
    /// Writes seen by a flawed fixture (which one to break).
    flaw_count: u64,
}

/// The real protocol.
pub type MultiMaster = MultiMasterWith<0>;

/// Broken variants that the simulator's weak-consistency checks must catch.
#[cfg(feature = "fixtures")]
pub mod fixtures {
    /// Acknowledges and counts every fifth write it receives from a peer as
    /// held, but never applies it: a dropped write.
    pub type DropsWrites = super::MultiMasterWith<1>;
    /// Applies peers' writes with the plain ordered `apply`, so the write
    /// that arrives last wins instead of the one with the greatest stamp.
    pub type WrongRule = super::MultiMasterWith<2>;
}

#[derive(Clone, Copy, Debug)]
struct OwnEntry {
    seq: u64,
    position: u64,
    bytes: u64,
    /// Bytes of every retained own entry up to and including this one.
    total_bytes: u64,
    accepted_nanos: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Carrier {
    /// Own writes go to the peer as log entries.
    Log,
    /// The peer is caught up by state shipping; back to `Log` once it
    /// acknowledges holding `covers`.
    State {
        shipped_nanos: Option<u64>,
        covers: BTreeMap<NodeId, u64>,
    },
}

#[derive(Clone, Debug)]
struct Peer {
    /// The peer's vector as it last reported it (`None` until it has).
    acked: Option<BTreeMap<NodeId, u64>>,
    /// Highest sequence sent per origin.
    sent: BTreeMap<NodeId, u64>,
    /// Since when its acknowledgements have not moved while writes sent to
    /// it are outstanding: when it last acknowledged more, or this replica
    /// last resent, or last sent with nothing outstanding. Resends wait for
    /// `resend-ms` of this, not of silence from this side, so a replica
    /// whose own rounds stalled does not resend what its peers acknowledged
    /// meanwhile.
    progress_nanos: u64,
    /// How long its acknowledgements of own writes take (the resend
    /// timeout).
    ack_timer: AckTimer,
    last_probe_nanos: Option<u64>,
    /// When this replica last told the peer its vector.
    last_vector_nanos: u64,
    heard_nanos: u64,
    carrier: Carrier,
    /// Per other origin: (since when, up to which sequence) the peer has
    /// lacked writes held here. The mark moves on once the peer holds
    /// everything up to that sequence, so a peer that keeps receiving an
    /// origin's writes while new ones arrive is never counted behind for
    /// long: only writes missing for `relay-after-ms` are relayed.
    behind: BTreeMap<NodeId, (u64, u64)>,
    /// The peer's own (sequence, clock) reports, oldest first.
    reports: VecDeque<(u64, u64)>,
    /// Its latest report said it is sealed.
    sealed: bool,
    /// Its latest reported vector, as it was (not merged with older ones).
    reported: Option<BTreeMap<NodeId, u64>>,
}

impl Peer {
    fn new(now: u64, carrier: Carrier) -> Peer {
        Peer {
            acked: None,
            sent: BTreeMap::new(),
            progress_nanos: now,
            ack_timer: AckTimer::default(),
            last_probe_nanos: None,
            last_vector_nanos: now,
            heard_nanos: now,
            carrier,
            behind: BTreeMap::new(),
            reports: VecDeque::new(),
            sealed: false,
            reported: None,
        }
    }

    fn acked(&self, origin: NodeId) -> u64 {
        self.acked
            .as_ref()
            .and_then(|v| v.get(&origin))
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Clone, Debug, Default)]
struct Counters {
    writes_accepted: u64,
    entries_received: u64,
    duplicates: u64,
    gaps: u64,
    resends: u64,
    relayed: u64,
    states_shipped: u64,
    states_merged: u64,
    snapshots: u64,
}

fn vector(map: &BTreeMap<NodeId, u64>) -> Vector {
    map.iter().map(|(o, s)| (*o, *s)).collect()
}

fn unvector(vector: &Vector) -> BTreeMap<NodeId, u64> {
    vector.iter().copied().collect()
}

impl<const FLAW: u8> MultiMasterWith<FLAW> {
    /// The applied position: canonical, so replicas holding the same
    /// writes report the same one (the seal compares them).
    fn position(&self) -> u64 {
        self.offset + self.have.values().sum::<u64>()
    }

    fn held(&self, origin: NodeId) -> u64 {
        self.have.get(&origin).copied().unwrap_or(0)
    }

    fn vector_message(&self, reply: bool) -> Message {
        Message::Vector {
            have: vector(&self.have),
            hlc: self.hlc,
            reply,
            offset: self.offset,
            sealed: self.sealed,
        }
    }

    fn send<H: Host>(host: &mut H, to: NodeId, message: &Message) {
        host.send(to, &Batch::from_items([message.encode()]));
    }

    /// Applies accepted entries (from the log on replay or from a peer).
    fn apply_entries<H: Host>(&mut self, host: &mut H, entries: &[Entry<'_>], remote: bool) {
        if entries.is_empty() {
            return;
        }
        let position = self.position();
        let mut applies = Applies::default();
        let mut stamps = Vec::with_capacity(entries.len());
        for entry in entries {
            if FLAW == 1 && remote {
                self.flaw_count += 1;
                if self.flaw_count.is_multiple_of(5) {
                    continue;
                }
            }
            applies.push(entry.id, entry.command);
            stamps.push(entry.stamp());
        }
        if applies.is_empty() {
            return;
        }
        if FLAW == 2 && remote {
            host.apply(&applies, position);
        } else {
            host.apply_stamped(&applies, &stamps, position);
        }
    }

    fn append<H: Host>(&mut self, host: &mut H, entries: &Batch) -> Result<(), StorageError> {
        let first = self.log_last + 1;
        let mut appended = host.log_append(first, entries);
        if let Err(StorageError::Failed(why)) = &appended
            && why.starts_with("quota exceeded:")
            && self.log_last >= self.log_first
        {
            self.snapshot_now(host);
            appended = host.log_append(first, entries);
        }
        appended?;
        self.log_last += entries.len() as u64;
        self.since_snapshot += entries.len() as u64;
        Ok(())
    }

    /// Takes a snapshot and records what it covers, then compacts.
    fn snapshot_now<H: Host>(&mut self, host: &mut H) {
        match host.snapshot() {
            Ok(_) => {
                self.base = Base {
                    log_position: self.log_last,
                    have: vector(&self.have),
                    hlc: self.hlc,
                    offset: self.offset,
                };
                if let Err(error) = host.kv_put(BASE_KEY, &encode(&self.base)) {
                    host.log(
                        Level::Warn,
                        &format!("multi-master: recording the snapshot failed: {error}"),
                    );
                }
                self.since_snapshot = 0;
                self.counters.snapshots += 1;
                self.compact(host);
            }
            Err(error) => host.log(
                Level::Warn,
                &format!("multi-master: snapshot failed: {error}"),
            ),
        }
    }

    fn maybe_snapshot<H: Host>(&mut self, host: &mut H) {
        let interval = self.params.snapshot_interval_entries;
        if interval > 0 && self.since_snapshot >= interval {
            self.snapshot_now(host);
        }
    }

    /// Drops log entries the snapshot covers that no peer on the log
    /// carrier still needs.
    fn compact<H: Host>(&mut self, host: &mut H) {
        let mut through = self.base.log_position;
        for peer in self.peers.values() {
            if peer.carrier != Carrier::Log {
                continue;
            }
            if let Some(entry) = self.own_entry(peer.acked(self.self_id) + 1) {
                through = through.min(entry.position - 1);
            }
        }
        if through < self.log_first {
            return;
        }
        if let Err(error) = host.log_compact_prefix(through) {
            host.log(
                Level::Warn,
                &format!("multi-master: log compaction failed: {error}"),
            );
            return;
        }
        self.log_first = through + 1;
        while self.own.front().is_some_and(|e| e.position <= through) {
            self.own.pop_front();
        }
        self.index.retain(|_, position| *position > through);
    }

    /// Records the vector of a state the host merged since the last callback.
    fn finish_merge<H: Host>(&mut self, host: &mut H) {
        let Some(shipped) = self.pending_merge.take() else {
            return;
        };
        for (origin, seq) in shipped.have {
            let held = self.have.entry(origin).or_insert(0);
            *held = (*held).max(seq);
        }
        self.hlc = self.hlc.max(shipped.hlc);
        self.offset = self.offset.max(shipped.offset);
        self.counters.states_merged += 1;
        self.snapshot_now(host);
        let message = self.vector_message(false);
        for peer in self.peers.keys().copied().collect::<Vec<_>>() {
            Self::send(host, peer, &message);
        }
    }

    fn ship_state<H: Host>(&mut self, host: &mut H, to: NodeId, now: u64) {
        if self.base.log_position != self.log_last || unvector(&self.base.have) != self.have {
            self.snapshot_now(host);
        }
        let shipped = ShippedState {
            have: self.base.have.clone(),
            hlc: self.base.hlc,
            offset: self.offset,
        };
        host.send_snapshot(to, &encode(&shipped));
        self.counters.states_shipped += 1;
        if let Some(peer) = self.peers.get_mut(&to) {
            peer.carrier = Carrier::State {
                shipped_nanos: Some(now),
                covers: unvector(&shipped.have),
            };
        }
    }

    /// Own writes a peer has not acknowledged: (entries, bytes, oldest
    /// acceptance time).
    fn backlog(&self, peer: &Peer) -> (u64, u64, Option<u64>) {
        let acked = peer.acked(self.self_id);
        let entries = self.held(self.self_id).saturating_sub(acked);
        let (Some(front), Some(back)) = (self.own.front(), self.own.back()) else {
            return (entries, 0, None);
        };
        // Constant time: entries are dense by seq and carry running sums.
        let first = acked.max(front.seq - 1) + 1;
        let Some(oldest) = self.own.get((first - front.seq) as usize) else {
            return (entries, 0, None);
        };
        let bytes = back.total_bytes - (oldest.total_bytes - oldest.bytes);
        (entries, bytes, Some(oldest.accepted_nanos))
    }

    /// The retained own entry with sequence `seq`.
    fn own_entry(&self, seq: u64) -> Option<&OwnEntry> {
        let front = self.own.front()?.seq;
        self.own.get(usize::try_from(seq.checked_sub(front)?).ok()?)
    }

    fn push_own(&mut self, seq: u64, position: u64, bytes: u64, accepted_nanos: u64) {
        let total_bytes = self.own.back().map_or(0, |e| e.total_bytes) + bytes;
        self.own.push_back(OwnEntry {
            seq,
            position,
            bytes,
            total_bytes,
            accepted_nanos,
        });
    }

    /// Whether a peer's backlog of own writes is past the budget, or
    /// needs writes no longer in the log.
    fn over_budget(&self, peer: &Peer) -> bool {
        let (entries, bytes, _) = self.backlog(peer);
        let front = self
            .own
            .front()
            .map_or(self.held(self.self_id) + 1, |e| e.seq);
        entries > self.params.backlog_entries
            || bytes > self.params.backlog_bytes
            || (entries > 0 && peer.acked(self.self_id) + 1 < front)
    }

    /// Sends `origin`'s writes `from..=to` to `peer` from the log; false if
    /// some of them are no longer in the log.
    fn send_range<H: Host>(
        &mut self,
        host: &mut H,
        peer: NodeId,
        origin: NodeId,
        from: u64,
        to: u64,
    ) -> bool {
        let positions: Option<(u64, u64)> = if origin == self.self_id {
            let front = match self.own.front() {
                Some(front) => front.seq,
                None => return from > to,
            };
            if from < front {
                return false;
            }
            let first = self.own.get((from - front) as usize).map(|e| e.position);
            let last = self.own.get((to - front) as usize).map(|e| e.position);
            first.zip(last)
        } else {
            let first = self.index.get(&(origin, from)).copied();
            let last = self.index.get(&(origin, to)).copied();
            first.zip(last)
        };
        let Some((mut next, last)) = positions else {
            return false;
        };
        while next <= last {
            let batch = match host.log_read(next, last, self.params.max_batch_bytes) {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => return false,
                Err(_) => return false,
            };
            next += batch.len() as u64;
            let mut data = Vec::with_capacity(batch.byte_len());
            let mut ends = Vec::new();
            for bytes in batch.iter() {
                if let Some(entry) = Entry::decode(bytes)
                    && entry.origin == origin
                    && entry.seq >= from
                    && entry.seq <= to
                {
                    data.extend_from_slice(bytes);
                    ends.push(data.len() as u32);
                }
            }
            if !ends.is_empty() {
                Self::send(host, peer, &Message::Entries { data, ends });
            }
        }
        true
    }

    /// Everything each peer should get now: own writes in a window past
    /// what it acknowledged, resends after `resend-ms`, relays, state.
    fn ship<H: Host>(&mut self, host: &mut H, now: u64) {
        // Time this replica stalled does not count towards a peer's
        // resend clock: the peer's answers were waiting here meanwhile.
        let gap = now.saturating_sub(self.last_ship_nanos);
        if gap > self.params.tick_nanos {
            let paused = gap - self.params.tick_nanos;
            for peer in self.peers.values_mut() {
                peer.progress_nanos = peer.progress_nanos.saturating_add(paused).min(now);
            }
        }
        self.last_ship_nanos = now;
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for to in peers {
            let Some(peer) = self.peers.get(&to).cloned() else {
                continue;
            };
            let silent = now.saturating_sub(peer.heard_nanos) > self.params.silent_nanos;
            if peer.carrier == Carrier::Log && peer.acked.is_some() && self.over_budget(&peer) {
                // Stop keeping writes for it, dead or alive: it gets the
                // state when it answers.
                if let Some(p) = self.peers.get_mut(&to) {
                    p.carrier = Carrier::State {
                        shipped_nanos: None,
                        covers: BTreeMap::new(),
                    };
                }
                self.compact(host);
            }
            let Some(peer) = self.peers.get(&to).cloned() else {
                continue;
            };
            if peer.acked.is_none() || silent {
                // Unknown or silent: probe only, so a dead peer costs a
                // message per `resend-ms`.
                if peer
                    .last_probe_nanos
                    .is_none_or(|at| now.saturating_sub(at) >= self.params.resend_nanos)
                {
                    Self::send(host, to, &self.vector_message(true));
                    if let Some(peer) = self.peers.get_mut(&to) {
                        peer.last_probe_nanos = Some(now);
                    }
                }
                if !matches!(
                    peer.carrier,
                    Carrier::State {
                        shipped_nanos: None,
                        ..
                    }
                ) {
                    continue;
                }
            }
            if let Carrier::State { shipped_nanos, .. } = &peer.carrier {
                if shipped_nanos
                    .is_none_or(|at| now.saturating_sub(at) >= self.params.state_retry_nanos)
                {
                    self.ship_state(host, to, now);
                }
                continue;
            }

            let resend = now.saturating_sub(peer.progress_nanos)
                >= peer.ack_timer.timeout(self.params.resend_nanos);
            // (origin, highest sequence to send): own writes up to all held,
            // another origin's only up to what the peer has lacked too long.
            let mut origins: Vec<(NodeId, u64)> = vec![(self.self_id, self.held(self.self_id))];
            for (&origin, &held) in &self.have {
                if origin == self.self_id || origin == to {
                    continue;
                }
                let acked = peer.acked(origin);
                let Some(p) = self.peers.get_mut(&to) else {
                    continue;
                };
                if held <= acked {
                    p.behind.remove(&origin);
                    continue;
                }
                let mark = p.behind.entry(origin).or_insert((now, held));
                if acked >= mark.1 {
                    // It caught up with the old mark: newer writes are new.
                    *mark = (now, held);
                }
                if now.saturating_sub(mark.0) >= self.params.relay_nanos {
                    origins.push((origin, mark.1));
                }
            }
            let outstanding = origins.iter().any(|(origin, _)| {
                peer.sent.get(origin).copied().unwrap_or(0) > peer.acked(*origin)
            });
            let mut resent = false;
            for (origin, up_to) in origins {
                let acked = peer.acked(origin);
                let mut sent = peer.sent.get(&origin).copied().unwrap_or(0).max(acked);
                if resend && sent > acked {
                    sent = acked;
                    resent = true;
                    self.counters.resends += 1;
                }
                let to_seq = up_to.min(acked + self.params.max_inflight_entries);
                if sent >= to_seq {
                    continue;
                }
                if !self.send_range(host, to, origin, sent + 1, to_seq) {
                    self.ship_state(host, to, now);
                    break;
                }
                if origin != self.self_id {
                    self.counters.relayed += to_seq - sent;
                }
                if let Some(p) = self.peers.get_mut(&to) {
                    p.sent.insert(origin, to_seq);
                    if origin == self.self_id {
                        if resent {
                            p.ack_timer.on_resend();
                        } else {
                            p.ack_timer.on_send(to_seq, now);
                        }
                    }
                }
            }
            if let Some(p) = self.peers.get_mut(&to)
                && (resent || !outstanding)
            {
                p.progress_nanos = now;
            }
            if resend || now.saturating_sub(peer.last_vector_nanos) >= self.params.resend_nanos {
                // A heartbeat, also while entries flow (they do not carry
                // the vector): the peer learns this vector and clock, so
                // its view of what this replica holds is never older than
                // `resend-ms` and it relays nothing this replica has.
                Self::send(host, to, &self.vector_message(false));
                self.record_own_report();
                if let Some(p) = self.peers.get_mut(&to) {
                    p.last_vector_nanos = now;
                }
            }
        }
    }

    fn record_own_report(&mut self) {
        let report = (self.held(self.self_id), self.hlc);
        if self.own_reports.back() != Some(&report) {
            self.own_reports.push_back(report);
            if self.own_reports.len() > REPORTS_MAX {
                self.own_reports.pop_front();
            }
        }
    }

    /// A time below which every replica holds every write, from the
    /// vectors peers acknowledged and the (sequence, clock) each origin
    /// reported: every write of origin `o` stamped at or below a report's
    /// clock has a sequence at or below the report's, so once every replica
    /// holds that sequence, nothing older than the clock can still arrive.
    fn tombstone_bound(&self) -> Option<u64> {
        let mut bound = u64::MAX;
        for &origin in &self.members {
            let mut everywhere = self.held(origin);
            for peer in self.peers.values() {
                everywhere =
                    everywhere.min(peer.acked.as_ref()?.get(&origin).copied().unwrap_or(0));
            }
            let reports = if origin == self.self_id {
                &self.own_reports
            } else {
                &self.peers.get(&origin)?.reports
            };
            let clock = reports
                .iter()
                .filter(|(seq, _)| *seq <= everywhere)
                .map(|(_, clock)| *clock)
                .max()?;
            bound = bound.min(clock.saturating_add(1));
        }
        (bound != u64::MAX).then_some(bound)
    }

    fn collect_tombstones<H: Host>(&mut self, host: &mut H, now: u64) {
        if now.saturating_sub(self.last_gc_nanos) < self.params.tombstone_gc_nanos {
            return;
        }
        self.last_gc_nanos = now;
        if let Some(below) = self.tombstone_bound()
            && below > self.gc_below
        {
            host.compact_tombstones(below);
            self.gc_below = below;
        }
    }

    fn accept_entries<H: Host>(&mut self, host: &mut H, data: &[u8], ends: &[u32]) {
        let mut accepted: Vec<Entry<'_>> = Vec::new();
        let mut batch = Batch::new();
        let mut start = 0usize;
        let mut next: BTreeMap<NodeId, u64> = BTreeMap::new();
        for &end in ends {
            let end = end as usize;
            if end < start || end > data.len() {
                self.counters.gaps += 1;
                break;
            }
            let bytes = &data[start..end];
            start = end;
            let Some(entry) = Entry::decode(bytes) else {
                self.counters.gaps += 1;
                continue;
            };
            self.counters.entries_received += 1;
            if entry.origin == self.self_id {
                self.counters.duplicates += 1;
                continue;
            }
            let held = *next
                .entry(entry.origin)
                .or_insert_with(|| self.have.get(&entry.origin).copied().unwrap_or(0));
            if entry.seq <= held {
                self.counters.duplicates += 1;
                continue;
            }
            if entry.seq != held + 1 {
                self.counters.gaps += 1;
                continue;
            }
            next.insert(entry.origin, entry.seq);
            batch.push(bytes);
            accepted.push(entry);
        }
        if accepted.is_empty() {
            return;
        }
        if let Err(error) = self.append(host, &batch) {
            host.log(
                Level::Warn,
                &format!("multi-master: storing peers' writes failed: {error}"),
            );
            return;
        }
        let first = self.log_last + 1 - accepted.len() as u64;
        for (offset, entry) in accepted.iter().enumerate() {
            self.index
                .insert((entry.origin, entry.seq), first + offset as u64);
            self.hlc = self.hlc.max(entry.time);
        }
        for (origin, seq) in next {
            self.have.insert(origin, seq);
        }
        self.apply_entries(host, &accepted, true);
    }

    fn on_vector(&mut self, from: NodeId, have: &Vector, hlc: u64, offset: u64, now: u64) {
        let own = self.self_id;
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if offset < self.offset && peer.carrier == Carrier::Log {
            // It joined at a swap without the state this replica started from.
            peer.carrier = Carrier::State {
                shipped_nanos: None,
                covers: BTreeMap::new(),
            };
        }
        let acked = peer.acked.get_or_insert_with(BTreeMap::new);
        let mut progressed = false;
        for (origin, seq) in have {
            let slot = acked.entry(*origin).or_insert(0);
            progressed |= *seq > *slot;
            *slot = (*slot).max(*seq);
        }
        if progressed {
            peer.progress_nanos = now;
        }
        let own_acked = acked.get(&own).copied().unwrap_or(0);
        peer.ack_timer.on_ack(own_acked, now);
        let acked = acked.clone();
        for (origin, seq) in &acked {
            let sent = peer.sent.entry(*origin).or_insert(0);
            *sent = (*sent).max(*seq);
        }
        let theirs = acked.get(&from).copied().unwrap_or(0);
        if peer
            .reports
            .back()
            .is_none_or(|(seq, clock)| *seq != theirs || *clock != hlc)
        {
            peer.reports.push_back((theirs, hlc));
            if peer.reports.len() > REPORTS_MAX {
                peer.reports.pop_front();
            }
        }
        if let Carrier::State {
            covers,
            shipped_nanos: Some(_),
        } = &peer.carrier
            && offset >= self.offset
            && covers
                .iter()
                .all(|(origin, seq)| acked.get(origin).copied().unwrap_or(0) >= *seq)
        {
            peer.carrier = Carrier::Log;
        }
    }

    fn add_peer(&mut self, peer: NodeId, now: u64, by_state: bool) {
        let carrier = if by_state {
            Carrier::State {
                shipped_nanos: None,
                covers: BTreeMap::new(),
            }
        } else {
            Carrier::Log
        };
        self.peers
            .entry(peer)
            .or_insert_with(|| Peer::new(now, carrier));
    }

    /// The seal is reached when every peer heard from recently has
    /// reported itself sealed with exactly the writes this replica holds:
    /// sealed origins take no more writes, so that set is final.
    fn seal_reached(&self, now: u64) -> bool {
        let nonzero = |v: &BTreeMap<NodeId, u64>| -> BTreeMap<NodeId, u64> {
            v.iter()
                .filter(|(_, s)| **s > 0)
                .map(|(o, s)| (*o, *s))
                .collect()
        };
        let mine = nonzero(&self.have);
        self.pending_merge.is_none()
            && self.peers.values().all(|peer| {
                let silent = now.saturating_sub(peer.heard_nanos) > self.params.silent_nanos;
                silent
                    || (peer.sealed
                        && peer
                            .reported
                            .as_ref()
                            .is_some_and(|theirs| nonzero(theirs) == mine))
            })
    }

    fn tick<H: Host>(&mut self, host: &mut H) {
        let now = host.now();
        self.ship(host, now);
        self.collect_tombstones(host, now);
        self.compact(host);
        host.set_timer(TICK, self.params.tick_nanos);
    }
}

impl<const FLAW: u8> Protocol for MultiMasterWith<FLAW> {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "multi-master".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: Consistency::Eventual,
            capabilities: Capabilities {
                replication: true,
                membership_change: true,
                seal: true,
                snapshots: true,
                ..Capabilities::default()
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        let (params, warnings) = Params::parse(&config.params);
        for warning in warnings {
            host.log(Level::Warn, &format!("multi-master: {warning}"));
        }
        let now = host.now();
        let members: BTreeSet<NodeId> = host
            .kv_get(MEMBERS_KEY)
            .and_then(|bytes| decode::<Vec<NodeId>>(&bytes))
            .map(|m| m.into_iter().collect())
            .unwrap_or_else(|| {
                config
                    .membership
                    .voters
                    .iter()
                    .chain(&config.membership.learners)
                    .copied()
                    .collect()
            });
        let base: Option<Base> = host.kv_get(BASE_KEY).and_then(|bytes| decode(&bytes));
        // A first start over an existing state (a swap) continues its position.
        let base = base.unwrap_or(Base {
            log_position: 0,
            have: Vec::new(),
            hlc: 0,
            offset: config.applied_position,
        });
        let mut bounds = host.log_bounds();
        if bounds.last < base.log_position {
            // An empty log after the snapshot (a swap start): continue after it.
            if let Err(error) = host.log_compact_prefix(base.log_position) {
                panic!(
                    "multi-master: cannot start the log after {}: {error}",
                    base.log_position
                );
            }
            bounds = host.log_bounds();
        }
        let mut protocol = MultiMasterWith {
            self_id: config.self_id,
            members: members.clone(),
            params,
            hlc: base.hlc.max(now),
            have: unvector(&base.have),
            offset: base.offset,
            log_first: bounds.first,
            log_last: bounds.last,
            base: base.clone(),
            own: VecDeque::new(),
            index: BTreeMap::new(),
            peers: BTreeMap::new(),
            since_snapshot: 0,
            pending_merge: None,
            sealed: false,
            own_reports: VecDeque::new(),
            last_gc_nanos: now,
            last_ship_nanos: now,
            gc_below: 0,
            counters: Counters::default(),
            flaw_count: 0,
        };
        protocol.replay(host, config.applied_position, now);
        for member in members {
            if member != config.self_id {
                protocol.add_peer(member, now, false);
            }
        }
        protocol.record_own_report();
        host.set_timer(TICK, protocol.params.tick_nanos);
        protocol
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        self.finish_merge(host);
        if commands.is_empty() {
            return;
        }
        if self.sealed {
            host.reject(&commands.ids, &Rejection::Sealed);
            return;
        }
        let now = host.now();
        let first_seq = self.held(self.self_id) + 1;
        let mut batch = Batch {
            data: Vec::with_capacity(commands.payloads.byte_len() + 32 * commands.len()),
            ends: Vec::with_capacity(commands.len()),
        };
        let mut stamps = Vec::with_capacity(commands.len());
        let mut scratch = Vec::new();
        for (offset, (id, payload)) in commands
            .ids
            .iter()
            .zip(commands.payloads.iter())
            .enumerate()
        {
            self.hlc = (self.hlc + 1).max(now);
            let entry = Entry {
                origin: self.self_id,
                seq: first_seq + offset as u64,
                time: self.hlc,
                id: *id,
                command: payload,
            };
            scratch.clear();
            entry.encode_into(&mut scratch);
            batch.push(&scratch);
            stamps.push(entry.stamp());
        }
        let first_position = self.log_last + 1;
        if let Err(error) = self.append(host, &batch) {
            host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
            return;
        }
        for (offset, payload) in commands.payloads.iter().enumerate() {
            let offset = offset as u64;
            self.push_own(
                first_seq + offset,
                first_position + offset,
                payload.len() as u64,
                now,
            );
        }
        let count = commands.len() as u64;
        self.have.insert(self.self_id, first_seq - 1 + count);
        self.counters.writes_accepted += count;
        let applies = Applies {
            ids: commands.ids,
            payloads: commands.payloads,
        };
        host.apply_stamped(&applies, &stamps, self.position());
        // Peers that are caught up get the batch as it is (no log read);
        // it leaves once this callback's log append is durable.
        let last_seq = first_seq - 1 + count;
        let message = Message::Entries {
            data: batch.data,
            ends: batch.ends,
        }
        .encode();
        for (to, peer) in self.peers.iter_mut() {
            let acked = peer.acked(self.self_id);
            let live = now.saturating_sub(peer.heard_nanos) <= self.params.silent_nanos;
            if peer.carrier == Carrier::Log
                && peer.acked.is_some()
                && live
                && peer
                    .sent
                    .get(&self.self_id)
                    .copied()
                    .unwrap_or(0)
                    .max(acked)
                    == first_seq - 1
                && last_seq <= acked + self.params.max_inflight_entries
            {
                host.send(*to, &Batch::from_items([message.as_slice()]));
                peer.sent.insert(self.self_id, last_seq);
                peer.ack_timer.on_send(last_seq, now);
                if acked >= first_seq - 1 {
                    // Nothing was outstanding: the resend clock starts now.
                    peer.progress_nanos = now;
                }
            }
        }
        self.maybe_snapshot(host);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        self.finish_merge(host);
        let mut local = Vec::new();
        let mut strong = Vec::new();
        for (id, level) in reads.ids.iter().zip(&reads.levels) {
            if *level == ReadLevel::Local {
                local.push(*id);
            } else {
                strong.push(*id);
            }
        }
        host.complete_reads(&local);
        if !strong.is_empty() {
            host.reject(
                &strong,
                &Rejection::Invalid(
                    "multi-master answers local reads only: no replica knows it holds every acknowledged write".into(),
                ),
            );
        }
    }

    fn on_messages<H: Host>(&mut self, host: &mut H, messages: Messages) {
        self.finish_merge(host);
        let now = host.now();
        let mut answer: BTreeSet<NodeId> = BTreeSet::new();
        for (from, payload) in messages.senders.iter().zip(messages.payloads.iter()) {
            if !self.peers.contains_key(from) {
                continue;
            }
            let Some(message) = Message::decode(payload) else {
                host.log(
                    Level::Warn,
                    &format!("multi-master: undecodable message from {from}"),
                );
                continue;
            };
            if let Some(peer) = self.peers.get_mut(from) {
                peer.heard_nanos = now;
            }
            match message {
                Message::Entries { data, ends } => {
                    self.accept_entries(host, &data, &ends);
                    answer.insert(*from);
                }
                Message::Vector {
                    have,
                    hlc,
                    reply,
                    offset,
                    sealed,
                } => {
                    if let Some(peer) = self.peers.get_mut(from) {
                        peer.sealed = sealed;
                        peer.reported = Some(unvector(&have));
                    }
                    self.on_vector(*from, &have, hlc, offset, now);
                    if reply {
                        answer.insert(*from);
                    }
                }
            }
        }
        if !answer.is_empty() {
            // Sent normally: it leaves once the entries it acknowledges are durable.
            let message = self.vector_message(false);
            for to in answer {
                Self::send(host, to, &message);
                if let Some(peer) = self.peers.get_mut(&to) {
                    peer.last_vector_nanos = now;
                }
            }
            self.record_own_report();
        }
        self.ship(host, now);
        self.maybe_snapshot(host);
    }

    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
        self.finish_merge(host);
        if timers.contains(&TICK) {
            self.tick(host);
        }
    }

    fn on_membership<H: Host>(
        &mut self,
        host: &mut H,
        membership: Membership,
    ) -> Result<(), String> {
        self.finish_merge(host);
        let target: BTreeSet<NodeId> = membership
            .voters
            .iter()
            .chain(&membership.learners)
            .copied()
            .collect();
        if target.is_empty() {
            return Err("multi-master needs at least one replica".into());
        }
        if target == self.members {
            return Ok(());
        }
        let now = host.now();
        self.peers.retain(|peer, _| target.contains(peer));
        for &member in &target {
            if member != self.self_id && !self.peers.contains_key(&member) {
                // A new replica starts from this one's state.
                self.add_peer(member, now, true);
            }
        }
        self.members = target;
        host.kv_put(
            MEMBERS_KEY,
            &encode(&self.members.iter().copied().collect::<Vec<_>>()),
        )
        .map_err(|error| format!("recording the membership failed: {error}"))?;
        self.ship(host, now);
        Ok(())
    }

    fn on_snapshot<H: Host>(&mut self, host: &mut H, offer: SnapshotOffer) -> bool {
        self.finish_merge(host);
        let Some(shipped) = decode::<ShippedState>(&offer.metadata) else {
            host.log(
                Level::Warn,
                &format!(
                    "multi-master: undecodable snapshot metadata from {}",
                    offer.sender
                ),
            );
            return false;
        };
        if let Some(peer) = self.peers.get_mut(&offer.sender) {
            peer.heard_nanos = host.now();
        }
        let lacking = shipped.offset > self.offset
            || shipped
                .have
                .iter()
                .any(|(origin, seq)| *seq > self.held(*origin));
        if lacking {
            // Its vector is claimed only in the next callback, once the
            // host has saved and merged the image: this callback's replies
            // may leave before the image is on disk.
            self.pending_merge = Some(shipped);
        } else {
            // Nothing new: the sender resumes the log carrier from here.
            Self::send(host, offer.sender, &self.vector_message(false));
        }
        lacking
    }

    fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
        self.finish_merge(host);
        self.sealed = true;
        let now = host.now();
        if self.seal_reached(now) {
            return SealProgress::Sealed(self.position());
        }
        // Ask everyone for their vectors; entries keep flowing meanwhile.
        for peer in self.peers.keys().copied().collect::<Vec<_>>() {
            Self::send(host, peer, &self.vector_message(true));
        }
        self.ship(host, now);
        SealProgress::Pending
    }

    fn status<H: Host>(&mut self, host: &mut H) -> Status {
        let now = host.now();
        let mut counters = vec![
            ("writes-accepted".to_string(), self.counters.writes_accepted),
            ("entries-received".into(), self.counters.entries_received),
            ("duplicates".into(), self.counters.duplicates),
            ("gaps".into(), self.counters.gaps),
            ("resends".into(), self.counters.resends),
            ("relayed".into(), self.counters.relayed),
            ("states-shipped".into(), self.counters.states_shipped),
            ("states-merged".into(), self.counters.states_merged),
            ("snapshots".into(), self.counters.snapshots),
            ("tombstones-below".into(), self.gc_below),
            (
                "log-entries".into(),
                (self.log_last + 1).saturating_sub(self.log_first),
            ),
        ];
        let mut peers = Vec::new();
        for (&id, peer) in &self.peers {
            let (entries, bytes, oldest) = self.backlog(peer);
            let others: u64 = self
                .have
                .iter()
                .filter(|(origin, _)| **origin != self.self_id)
                .map(|(origin, held)| held.saturating_sub(peer.acked(*origin)))
                .sum();
            let lag_ms = oldest.map_or(0, |at| now.saturating_sub(at) / 1_000_000);
            counters.push((format!("peer-{id}-lag-entries"), entries + others));
            counters.push((format!("peer-{id}-lag-bytes"), bytes));
            counters.push((format!("peer-{id}-lag-ms"), lag_ms));
            counters.push((
                format!("peer-{id}-carrier-state"),
                u64::from(peer.carrier != Carrier::Log),
            ));
            peers.push(PeerProgress {
                peer: id,
                match_position: self.offset
                    + peer.acked.as_ref().map_or(0, |v| v.values().sum::<u64>()),
            });
        }
        Status {
            role: if self.sealed {
                Role::Sealed
            } else {
                Role::Replica
            },
            leader: None,
            term: 0,
            commit_position: self.position(),
            applied_position: self.position(),
            peers,
            counters,
        }
    }
}

impl<const FLAW: u8> MultiMasterWith<FLAW> {
    /// Rebuilds the vector and indexes from the log, and re-applies what
    /// the state machine lacks (entries after its applied position).
    fn replay<H: Host>(&mut self, host: &mut H, applied_position: u64, now: u64) {
        let mut next = self.log_first;
        while next <= self.log_last {
            let batch = match host.log_read(next, self.log_last, READ_BYTES_MAX) {
                Ok(batch) if !batch.is_empty() => batch,
                Ok(_) => panic!("multi-master: log read at {next} returned nothing"),
                Err(error) => panic!("multi-master: replay read at {next} failed: {error}"),
            };
            let mut pending: Vec<Entry<'_>> = Vec::new();
            for (offset, bytes) in batch.iter().enumerate() {
                let position = next + offset as u64;
                let Some(entry) = Entry::decode(bytes) else {
                    panic!("multi-master: log entry {position} is not an entry");
                };
                if entry.origin == self.self_id {
                    self.push_own(entry.seq, position, entry.command.len() as u64, now);
                } else {
                    self.index.insert((entry.origin, entry.seq), position);
                }
                self.hlc = self.hlc.max(entry.time);
                if position <= self.base.log_position {
                    continue; // The snapshot's vector counts it.
                }
                let held = self.held(entry.origin);
                if entry.seq != held + 1 {
                    continue; // Never appended out of order; tolerate.
                }
                self.have.insert(entry.origin, entry.seq);
                if self.position() > applied_position {
                    pending.push(entry);
                }
            }
            if !pending.is_empty() {
                let remote: Vec<Entry<'_>> = pending;
                // Positions are canonical, so the batch ends at `position()`.
                let mut applies = Applies::default();
                let mut stamps = Vec::new();
                for entry in &remote {
                    applies.push(entry.id, entry.command);
                    stamps.push(entry.stamp());
                }
                host.apply_stamped(&applies, &stamps, self.position());
            }
            next += batch.len() as u64;
        }
        self.since_snapshot = self.log_last.saturating_sub(self.base.log_position);
    }
}

export_protocol!(MultiMaster);
