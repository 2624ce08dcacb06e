//! The Raft state machine: roles, elections, replication, commitment,
//! reads, snapshots, membership change, leadership transfer and seal.
//!
//! Section numbers cite the Raft paper (Ongaro & Ousterhout, 2014) as
//! "§5.x" and Ongaro's thesis (2014) as "thesis §x".
//!
//! Every host callback runs `begin`, the handler, then `end`: `begin` reads
//! the clock and finishes a snapshot install the host performed since the
//! previous callback; `end` sends the callback's messages, at most one host
//! `send` (and one `send-eager`) per peer. Storage writes go to the host
//! before the messages that depend on them are queued; the host's output
//! commit then guarantees that a message never leaves before the writes it
//! reflects are durable.
//!
//! The one exception is AppendEntries from the leader, sent with
//! `send-eager` so that followers persist entries while the leader does
//! (thesis §10.2.1). The entries in it may be lost by the leader: nothing
//! that depends on them being durable on the leader leaves early (heartbeats
//! carrying the commit index, client answers and read answers wait for its
//! log like any other output). The leader's *term*, which the message also
//! reveals, must be durable first: a leader that loses its term in a crash
//! can win the same term again and write different entries at the same
//! indexes, and a receiver that took the first ones (log matching compares
//! terms only) would acknowledge and later apply an entry the leader never
//! had. A leader elected with another voter's vote knows its term is
//! durable (that vote answered a RequestVote sent after the term was
//! persisted). A leader whose own vote was the quorum (a single voter, with
//! learners) sends appends normally until a peer acknowledges one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A mutation point: with feature `mutants`, whether this replica runs the
/// named deliberate bug (counted as reached when it does); without the
/// feature the constant `false`, so no mutant code is compiled in.
#[cfg(feature = "mutants")]
macro_rules! mutant {
    ($self:ident, $name:ident) => {
        $self.mutant_is(crate::mutants::Mutant::$name)
    };
}
#[cfg(not(feature = "mutants"))]
macro_rules! mutant {
    ($self:ident, $name:ident) => {
        false
    };
}

use synod_guest_sdk::{
    Batch, Commands, Host, InitConfig, Level, Membership, NodeId, PeerProgress, ReadLevel, Reads,
    Rejection, RequestId, Role, SealProgress, SnapshotOffer, Status, StorageError, TimerId,
};

use crate::entry::{self, Entry, KIND_CONFIG, KIND_SEAL};
use crate::log_index::LogIndex;
use crate::membership::{Config, MembershipStep, next_membership_step};
use crate::message::{Entries, HardState, Message, ShippedSnapshot, SnapshotMeta};
use crate::params::Params;
use crate::progress::{Progress, ProgressState};

/// Kv key of the [`HardState`] (term and vote).
pub const HARD_STATE_KEY: &[u8] = b"raft/hard-state";
/// Kv key of the latest [`SnapshotMeta`].
pub const SNAPSHOT_KEY: &[u8] = b"raft/snapshot";
/// Host parameter naming the fresh replica that should campaign first.
pub const FIRST_LEADER_PARAM: &str = "synod.first-leader";

/// Kv key of the applied seal index (`u64`, postcard).
pub const SEALED_KEY: &[u8] = b"raft/sealed";
/// Kv key of a snapshot accepted but not yet finished: `(SnapshotMeta,
/// sender)`. If the replica restarts before its next callback, recovery
/// finishes the install when the host state machine holds the snapshot.
pub const INSTALLING_KEY: &[u8] = b"raft/installing";

/// Election timeout (non-leaders) and check-quorum interval (leader).
pub const TIMER_ELECTION: TimerId = 1;
/// Leader heartbeat.
pub const TIMER_HEARTBEAT: TimerId = 2;
/// Continues applying committed entries left over by a callback that hit
/// [`APPLY_ENTRIES_PER_CALLBACK_MAX`].
pub const TIMER_APPLY: TimerId = 3;
/// Fired by the host once a `snapshot-async` save is durable.
pub const TIMER_SNAPSHOT_DURABLE: TimerId = 4;

/// Bytes read from the host log per call while applying. A larger single
/// entry is still read (the host returns at least one entry).
pub const APPLY_READ_BYTES_MAX: u32 = 4 << 20;
/// Entries applied per callback. When reached, the rest is applied from a
/// zero-delay timer, so one callback never runs unboundedly long (the host
/// traps callbacks that exceed their fuel or deadline).
pub const APPLY_ENTRIES_PER_CALLBACK_MAX: u64 = 10_000;
/// Bytes read per host call while rebuilding the term index on recovery.
pub const SCAN_READ_BYTES_MAX: u32 = 4 << 20;
/// Appended but uncommitted entries a leader accepts. When reached, new
/// writes are refused with `Overloaded` until commitment catches up (a
/// leader cut off from its quorum stops growing its log).
pub const UNCOMMITTED_ENTRIES_MAX: u64 = 100_000;
/// Linearizable and lease reads a leader holds unanswered. When reached,
/// further reads are refused with `Overloaded`.
pub const READS_PENDING_MAX: usize = 100_000;
/// A learner that should become a voter is promoted once its match index
/// is within this many entries of the leader's last index; until then the
/// membership change waits (if writes outpace the learner forever, it
/// stays a learner and the target stays pending).
pub const LEARNER_CATCH_UP_ENTRIES_MAX: u64 = 128;
/// Heartbeat round start times the leader remembers for lease renewal.
/// When exceeded the oldest are forgotten; an acknowledgement of a
/// forgotten round then renews nothing (conservative).
pub const HEARTBEAT_ROUNDS_TRACKED_MAX: usize = 64;
/// Heartbeat intervals without any acknowledgement progress after which a
/// pipelined follower (`Replicate`) is assumed to have lost messages and is
/// probed again from its match index.
pub const REPLICATE_STALL_HEARTBEATS: u64 = 3;
/// Election timeouts a leader waits for a follower to report a shipped
/// snapshot before shipping it again.
pub const SNAPSHOT_RESEND_ELECTION_TIMEOUTS: u64 = 2;

/// A node's role. Learners (and nodes outside the configuration) never
/// vote, never campaign and are not counted in quorums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRole {
    Follower,
    /// Collecting pre-votes (thesis §9.6) before raising its term.
    PreCandidate,
    Candidate,
    Leader,
    Learner,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Poll {
    Won,
    Lost,
    Pending,
}

/// Reads that wait for heartbeat round `round` to be acknowledged by a
/// quorum; then they wait for `read_index` to be applied (thesis §6.4).
#[derive(Clone, Debug)]
struct ReadRound {
    round: u64,
    read_index: u64,
    ids: Vec<RequestId>,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    deadline_nanos: u64,
}

/// State only a leader has; reset by `become_leader`.
#[derive(Debug, Default)]
pub(crate) struct LeaderState {
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Index of this term's noop: reads and configuration changes wait
    /// until it commits (§5.4.2, thesis §4.1 and §6.4).
    pub(crate) term_start_index: u64,
    /// Latest heartbeat round started.
    heartbeat_round: u64,
    /// Latest round acknowledged by a quorum.
    quorum_round: u64,
    /// `(round, start time)` of recent rounds.
    round_starts: VecDeque<(u64, u64)>,
    /// The lease holds until this time (leader clock, nanoseconds).
    lease_until_nanos: u64,
    /// A leadership transfer was started this term: a TimeoutNow may be in
    /// flight, letting another node win an election without waiting out
    /// its followers' leases, so this term never serves lease reads again.
    lease_forbidden: bool,
    /// Linearizable reads not yet assigned to a heartbeat round.
    reads_unsent: Vec<RequestId>,
    read_rounds: VecDeque<ReadRound>,
    /// `(read index, ids)` of reads whose leadership check passed.
    reads_ready: VecDeque<(u64, Vec<RequestId>)>,
    transfer: Option<Transfer>,
    pub(crate) membership_target: Option<Config>,
    /// This leader knows its term and vote are durable, so AppendEntries
    /// may leave with `send-eager` (see [`Raft::send_append`]). True when
    /// another voter granted its vote (that answered a RequestVote which
    /// left only once the term was durable), or once a peer acknowledged
    /// an append or heartbeat of this term (sent normally, hence after).
    /// A leader whose own vote was the quorum starts without it.
    pub(crate) term_durable: bool,
}

impl LeaderState {
    fn pending_reads(&self) -> usize {
        self.reads_unsent.len()
            + self.read_rounds.iter().map(|r| r.ids.len()).sum::<usize>()
            + self
                .reads_ready
                .iter()
                .map(|(_, ids)| ids.len())
                .sum::<usize>()
    }
}

/// Event counts reported by `status`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pre_votes_started: u64,
    pub(crate) elections_started: u64,
    pub(crate) elections_won: u64,
    pub(crate) leader_changes_seen: u64,
    pub(crate) votes_ignored_in_lease: u64,
    pub(crate) messages_sent: u64,
    pub(crate) messages_received: u64,
    pub(crate) messages_malformed: u64,
    /// Appends refused because an entry had the term of the one we hold at
    /// its index but other bytes: a leader lost its term in a crash and
    /// wrote that term again (log matching broken; never in a correct run).
    pub(crate) append_term_conflicts: u64,
    pub(crate) entries_appended: u64,
    pub(crate) commands_rejected: u64,
    pub(crate) snapshots_taken: u64,
    pub(crate) snapshots_sent: u64,
    pub(crate) snapshot_sends_deferred: u64,
    pub(crate) snapshots_installed: u64,
    pub(crate) snapshot_offers_refused: u64,
    pub(crate) replication_stalls: u64,
    pub(crate) appends_resent: u64,
    pub(crate) read_rounds_started: u64,
    pub(crate) reads_local: u64,
    pub(crate) reads_lease: u64,
    pub(crate) reads_completed: u64,
    pub(crate) reads_rejected: u64,
    pub(crate) check_quorum_step_downs: u64,
    pub(crate) config_changes_proposed: u64,
    pub(crate) transfers_started: u64,
    pub(crate) transfers_aborted: u64,
    pub(crate) timeout_now_received: u64,
}

impl Counters {
    fn list(&self) -> Vec<(String, u64)> {
        [
            ("pre-votes-started", self.pre_votes_started),
            ("elections-started", self.elections_started),
            ("elections-won", self.elections_won),
            ("leader-changes-seen", self.leader_changes_seen),
            ("votes-ignored-in-lease", self.votes_ignored_in_lease),
            ("messages-sent", self.messages_sent),
            ("messages-received", self.messages_received),
            ("messages-malformed", self.messages_malformed),
            ("append-term-conflicts", self.append_term_conflicts),
            ("entries-appended", self.entries_appended),
            ("commands-rejected", self.commands_rejected),
            ("snapshots-taken", self.snapshots_taken),
            ("snapshots-sent", self.snapshots_sent),
            ("snapshot-sends-deferred", self.snapshot_sends_deferred),
            ("snapshots-installed", self.snapshots_installed),
            ("snapshot-offers-refused", self.snapshot_offers_refused),
            ("replication-stalls", self.replication_stalls),
            ("appends-resent", self.appends_resent),
            ("read-rounds-started", self.read_rounds_started),
            ("reads-local", self.reads_local),
            ("reads-lease", self.reads_lease),
            ("reads-completed", self.reads_completed),
            ("reads-rejected", self.reads_rejected),
            ("check-quorum-step-downs", self.check_quorum_step_downs),
            ("config-changes-proposed", self.config_changes_proposed),
            ("transfers-started", self.transfers_started),
            ("transfers-aborted", self.transfers_aborted),
            ("timeout-now-received", self.timeout_now_received),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }
}

/// One Raft replica of a region.
pub struct Raft {
    pub(crate) id: NodeId,
    pub(crate) params: Params,
    pub(crate) role: RaftRole,
    /// Current term (persisted, §5.1).
    pub(crate) term: u64,
    /// Candidate voted for in `term` (persisted).
    pub(crate) voted_for: Option<NodeId>,
    /// Leader of `term`, if known.
    pub(crate) leader: Option<NodeId>,
    /// Terms of the host log.
    pub(crate) log: LogIndex,
    /// Configuration entries after the snapshot, `(index, config)`.
    pub(crate) configs: Vec<(u64, Config)>,
    /// What the latest snapshot covers (index 0 and the initial
    /// configuration when there is none).
    pub(crate) snapshot_meta: SnapshotMeta,
    /// Configuration in effect: the last one in the log, appended or not
    /// (thesis §4.1).
    pub(crate) config: Config,
    /// First seal entry in the log (committed or not).
    pub(crate) log_seal_index: Option<u64>,
    /// Index of the applied seal entry: nothing is applied after it.
    pub(crate) sealed_index: Option<u64>,
    pub(crate) commit: u64,
    /// Last log index applied (commands, noops and configurations alike).
    pub(crate) applied: u64,
    /// Position of the host state machine (last command applied).
    pub(crate) host_applied: u64,
    /// `applied` when the last snapshot was attempted.
    snapshot_attempt_applied: u64,
    /// The metadata of the snapshot the host is saving (`snapshot-async`),
    /// recorded and compacted through once the host says it is durable.
    pub(crate) snapshot_saving: Option<SnapshotMeta>,
    /// Clock reading at the start of the current callback.
    now: u64,
    /// Followers, candidates and learners: when to campaign. Leader: when
    /// to check the quorum.
    election_deadline: u64,
    /// When the armed election timer fires (`None` when not armed).
    election_timer_at: Option<u64>,
    /// No vote for another candidate before this time unless asked by a
    /// leadership transfer: set to one election timeout after hearing from
    /// a leader (thesis §4.2.3) and after starting. Leader leases rest on it.
    vote_fence_until: u64,
    /// Pre-vote or vote answers in the current round.
    votes: BTreeMap<NodeId, bool>,
    pub(crate) lead: LeaderState,
    /// A snapshot accepted in `on_snapshot`, finished at the next callback
    /// (after the host replaced its state machine): `(meta, sender)`.
    pending_install: Option<(SnapshotMeta, NodeId)>,
    /// Messages of the current callback, by destination.
    outbox: BTreeMap<NodeId, Batch>,
    /// AppendEntries of the current callback, sent with `send-eager`.
    eager_outbox: BTreeMap<NodeId, Batch>,
    pub(crate) counters: Counters,
    /// The deliberate bug this replica runs, and how often its mutation
    /// points were reached (feature `mutants` only).
    #[cfg(feature = "mutants")]
    mutant: Option<crate::mutants::Mutant>,
    #[cfg(feature = "mutants")]
    mutant_reached: std::cell::Cell<u64>,
}

impl Raft {
    // ------------------------------------------------------------------
    // Construction and recovery
    // ------------------------------------------------------------------

    /// Builds the replica, reloading term, vote, snapshot metadata and the
    /// log's terms and configurations from host storage.
    pub fn new<H: Host>(host: &mut H, init: InitConfig) -> Raft {
        let (params, warnings) = Params::parse(&init.params);
        for warning in &warnings {
            host.log(Level::Warn, &format!("raft: {warning}"));
        }
        #[cfg(feature = "mutants")]
        let mutant = crate::mutants::Mutant::from_params(&init.params).unwrap_or_else(|error| {
            host.log(Level::Error, &format!("raft: {error}; running unmutated"));
            None
        });
        let now = host.now();
        let initial = Config::from_membership(&init.membership);
        let hard: HardState = host
            .kv_get(HARD_STATE_KEY)
            .map(|bytes| {
                postcard::from_bytes(&bytes)
                    .unwrap_or_else(|error| panic!("raft hard state does not decode: {error}"))
            })
            .unwrap_or_default();
        let mut stored_meta: Option<SnapshotMeta> = host.kv_get(SNAPSHOT_KEY).map(|bytes| {
            postcard::from_bytes(&bytes)
                .unwrap_or_else(|error| panic!("raft snapshot metadata does not decode: {error}"))
        });
        let bounds = host.log_bounds();
        if stored_meta.is_none() && bounds.is_empty() && init.applied_position >= bounds.first {
            // The host state machine already holds commands (for example
            // from a protocol this one replaced): start the log after them,
            // as if a snapshot at that position existed. Every replica
            // starts from the same position, so the boundary agrees.
            let meta = SnapshotMeta {
                index: init.applied_position,
                term: 0,
                config: initial.clone(),
                sealed: None,
            };
            put_or_panic(host, SNAPSHOT_KEY, &meta);
            if let Err(error) = host.log_compact_prefix(meta.index) {
                panic!(
                    "cannot start the log after position {}: {error}",
                    meta.index
                );
            }
            stored_meta = Some(meta);
        }
        let meta = stored_meta.unwrap_or(SnapshotMeta {
            index: 0,
            term: 0,
            config: initial,
            sealed: None,
        });
        let applied = init.applied_position;
        let mut raft = Raft {
            id: init.self_id,
            params,
            role: RaftRole::Follower,
            term: hard.term,
            voted_for: hard.voted_for,
            leader: None,
            log: LogIndex::new(meta.index, meta.term),
            configs: Vec::new(),
            config: meta.config.clone(),
            log_seal_index: None,
            sealed_index: meta.sealed,
            commit: applied.max(meta.index),
            applied,
            host_applied: applied,
            snapshot_attempt_applied: meta.index,
            snapshot_saving: None,
            snapshot_meta: meta,
            now,
            election_deadline: now,
            election_timer_at: None,
            vote_fence_until: now,
            votes: BTreeMap::new(),
            lead: LeaderState::default(),
            pending_install: None,
            outbox: BTreeMap::new(),
            eager_outbox: BTreeMap::new(),
            counters: Counters::default(),
            #[cfg(feature = "mutants")]
            mutant,
            #[cfg(feature = "mutants")]
            mutant_reached: std::cell::Cell::new(0),
        };
        if init.recovering && mutant!(raft, ForgetVoteOnRestart) {
            raft.voted_for = None;
        }
        raft.rebuild_log_index(host);
        if let Some(bytes) = host.kv_get(SEALED_KEY) {
            let sealed: u64 = postcard::from_bytes(&bytes)
                .unwrap_or_else(|error| panic!("raft seal marker does not decode: {error}"));
            raft.sealed_index = Some(sealed);
        }
        // An applied seal was committed, and so was everything before it:
        // a restarted sealed replica re-applies through the seal on its
        // own. During a protocol swap it may never hear from a leader again
        // (the others moved to the next epoch), yet it must report, and
        // switch from, the sealed state.
        if let Some(seal) = raft.sealed_index
            && seal > raft.commit
            && seal <= raft.log.last_index()
        {
            raft.commit = seal;
        }
        if let Some(bytes) = host.kv_get(INSTALLING_KEY) {
            let (meta, sender): (SnapshotMeta, NodeId) = postcard::from_bytes(&bytes)
                .unwrap_or_else(|error| panic!("raft install marker does not decode: {error}"));
            if applied == meta.index && meta.index > raft.snapshot_meta.index {
                // The host installed the snapshot but this replica stopped
                // before finishing: finish now.
                raft.finish_snapshot_install(host, meta, sender);
            } else {
                host.kv_delete(INSTALLING_KEY);
            }
        }
        assert!(
            raft.log.last_term() <= raft.term,
            "log holds term {} beyond the persisted term {}",
            raft.log.last_term(),
            raft.term
        );
        assert!(
            applied <= raft.log.last_index(),
            "state machine at {applied} is ahead of the log ending at {}",
            raft.log.last_index()
        );
        raft.role = if raft.config.is_voter(raft.id) {
            RaftRole::Follower
        } else {
            RaftRole::Learner
        };
        // A restarted node may have acknowledged a leader just before it
        // stopped: it must not vote for another candidate within that
        // leader's lease, so the fence starts full. A fresh instance (a new
        // region, or a new epoch after a swap) never acknowledged anyone.
        raft.vote_fence_until = if init.recovering && !mutant!(raft, NoVoteFenceOnRestart) {
            now + raft.params.election_timeout_nanos
        } else {
            now
        };
        raft.reset_election_deadline(host);
        // The host names the fresh replica it expects to hold the newest
        // state (`synod.first-leader`): it campaigns at once rather than
        // after an election timeout, so a swapped region is not leaderless
        // for a second. Anyone else still may, after its timeout.
        let first_leader = init
            .params
            .iter()
            .find(|(name, _)| name == FIRST_LEADER_PARAM)
            .and_then(|(_, value)| value.trim().parse::<NodeId>().ok());
        if !init.recovering && first_leader == Some(raft.id) && raft.config.is_voter(raft.id) {
            raft.election_deadline = now;
            raft.arm_election_timer(host);
        }
        host.log(
            Level::Info,
            &format!(
                "raft: node {} starts in term {} (log {}..={}, commit {}, applied {}, recovering {})",
                raft.id,
                raft.term,
                raft.log.snapshot_index() + 1,
                raft.log.last_index(),
                raft.commit,
                raft.applied,
                init.recovering
            ),
        );
        raft.maybe_apply(host);
        raft.flush(host);
        raft
    }

    /// Rebuilds the term index, configurations and seal position from the
    /// host log after the snapshot.
    fn rebuild_log_index<H: Host>(&mut self, host: &mut H) {
        let meta = self.snapshot_meta.clone();
        let bounds = host.log_bounds();
        assert!(
            bounds.first <= meta.index + 1,
            "log compacted through {} beyond the snapshot metadata at {}",
            bounds.first - 1,
            meta.index
        );
        if self.applied < meta.index {
            assert!(
                bounds.first <= self.applied + 1,
                "state machine at {} cannot catch up: the log starts at {}",
                self.applied,
                bounds.first
            );
        }
        if meta.index > 0 && bounds.first <= meta.index && meta.index <= bounds.last {
            // A snapshot install that stopped before compacting: if the
            // entry at the snapshot index disagrees with it, the rest of the
            // log is from a diverged history and cannot be committed.
            let at = read_or_panic(host, meta.index, meta.index, 1);
            if entry::term_of(at.get(0).expect("one entry")) != meta.term {
                assert!(self.applied >= meta.index);
                truncate_or_panic(host, bounds.first);
                if let Err(error) = host.log_compact_prefix(meta.index) {
                    panic!("cannot compact through {}: {error}", meta.index);
                }
            }
        }
        let bounds = host.log_bounds();
        let mut next = bounds.first.max(meta.index + 1);
        'scan: while next <= bounds.last {
            let batch = read_or_panic(host, next, bounds.last, SCAN_READ_BYTES_MAX);
            for (offset, raw) in batch.iter().enumerate() {
                let index = next + offset as u64;
                let (term, kind) = entry::check_header(raw)
                    .unwrap_or_else(|error| panic!("corrupt log entry at {index}: {}", error.0));
                if term < self.log.last_term() {
                    // Only a diverged suffix left by an interrupted snapshot
                    // install can follow a higher term; it was never
                    // committable.
                    host.log(
                        Level::Warn,
                        &format!("raft: dropping log suffix from {index}: term {term} after a higher term"),
                    );
                    truncate_or_panic(host, index);
                    break 'scan;
                }
                self.log.push(index, term);
                match kind {
                    KIND_CONFIG => {
                        if let (_, Entry::Config(config)) = entry::decode_own(raw) {
                            self.configs.push((index, config));
                        }
                    }
                    KIND_SEAL => {
                        self.log_seal_index.get_or_insert(index);
                    }
                    _ => {}
                }
            }
            next += batch.len() as u64;
        }
        self.config = self
            .configs
            .last()
            .map_or_else(|| meta.config.clone(), |(_, config)| config.clone());
    }

    // ------------------------------------------------------------------
    // Callback framing and sending
    // ------------------------------------------------------------------

    fn begin<H: Host>(&mut self, host: &mut H) {
        self.now = host.now();
        if let Some((meta, sender)) = self.pending_install.take() {
            self.finish_snapshot_install(host, meta, sender);
        }
    }

    fn end<H: Host>(&mut self, host: &mut H) {
        if self.role == RaftRole::Leader {
            self.send_commit_updates();
        }
        self.flush(host);
    }

    fn flush<H: Host>(&mut self, host: &mut H) {
        for (to, batch) in std::mem::take(&mut self.eager_outbox) {
            host.send_eager(to, &batch);
        }
        for (to, batch) in std::mem::take(&mut self.outbox) {
            host.send(to, &batch);
        }
    }

    fn send(&mut self, to: NodeId, message: &Message) {
        if to == self.id {
            return;
        }
        self.outbox.entry(to).or_default().push(&message.encode());
        self.counters.messages_sent += 1;
    }

    /// Whether this replica runs `which`; counts the mutation point.
    #[cfg(feature = "mutants")]
    fn mutant_is(&self, which: crate::mutants::Mutant) -> bool {
        let hit = self.mutant == Some(which);
        if hit {
            self.mutant_reached.set(self.mutant_reached.get() + 1);
        }
        hit
    }

    /// A mutant's eager send of a message that must wait for durability.
    fn send_eager_unchecked(&mut self, to: NodeId, message: &Message) {
        if to == self.id {
            return;
        }
        self.eager_outbox
            .entry(to)
            .or_default()
            .push(&message.encode());
        self.counters.messages_sent += 1;
    }

    /// Queues an AppendEntries for `send-eager` (see the module docs).
    fn send_eager(&mut self, to: NodeId, message: &Message) {
        assert!(matches!(message, Message::Append { .. }));
        if to == self.id {
            return;
        }
        self.eager_outbox
            .entry(to)
            .or_default()
            .push(&message.encode());
        self.counters.messages_sent += 1;
    }

    fn persist_hard_state<H: Host>(&mut self, host: &mut H) {
        let hard = HardState {
            term: self.term,
            voted_for: self.voted_for,
        };
        put_or_panic(host, HARD_STATE_KEY, &hard);
    }

    // ------------------------------------------------------------------
    // Role transitions
    // ------------------------------------------------------------------

    /// Follows `leader` (if known) in `term`; a node outside the voters
    /// becomes a learner instead.
    fn become_follower<H: Host>(&mut self, host: &mut H, term: u64, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "term must never decrease ({term} < {})",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            if !mutant!(self, NoPersistTermOnFollow) {
                self.persist_hard_state(host);
            }
        }
        if self.role == RaftRole::Leader {
            self.leave_leadership(host, leader);
        }
        self.role = if self.config.is_voter(self.id) {
            RaftRole::Follower
        } else {
            RaftRole::Learner
        };
        self.set_leader(leader);
        self.votes.clear();
        self.reset_election_deadline(host);
    }

    /// Stops voting and campaigning: this node is not a voter of the
    /// configuration in effect.
    fn become_learner<H: Host>(&mut self, host: &mut H) {
        assert!(!self.config.is_voter(self.id));
        assert_ne!(self.role, RaftRole::Leader, "a leader steps down first");
        self.role = RaftRole::Learner;
        self.votes.clear();
        self.reset_election_deadline(host);
    }

    /// Asks the voters whether they would vote for this node in the next
    /// term, without raising its own (thesis §9.6): a node that cannot win
    /// (partitioned, or behind) never disrupts the cluster with a higher
    /// term.
    fn become_pre_candidate<H: Host>(&mut self, host: &mut H) {
        assert_ne!(self.role, RaftRole::Leader);
        assert!(self.config.is_voter(self.id));
        self.role = RaftRole::PreCandidate;
        self.set_leader(None);
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.counters.pre_votes_started += 1;
        if mutant!(self, PreVoteRaisesTerm) {
            self.term += 1;
            self.voted_for = None;
            self.persist_hard_state(host);
        }
        self.reset_election_deadline(host);
        if self.tally() == Poll::Won {
            self.campaign(host, false);
            return;
        }
        let message = Message::PreVote {
            term: self.term + 1,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        };
        for voter in self.config.voters.clone() {
            self.send(voter, &message);
        }
    }

    fn become_candidate<H: Host>(&mut self, host: &mut H) {
        assert_ne!(self.role, RaftRole::Leader);
        assert!(self.config.is_voter(self.id));
        self.term += 1;
        self.voted_for = Some(self.id);
        self.persist_hard_state(host);
        self.role = RaftRole::Candidate;
        self.set_leader(None);
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.counters.elections_started += 1;
        self.reset_election_deadline(host);
    }

    /// Starts an election (§5.2): a new term, a vote for itself (persisted
    /// before any request leaves), then RequestVote to every voter.
    /// `transfer` marks an election ordered by the leader (thesis §3.10).
    pub(crate) fn campaign<H: Host>(&mut self, host: &mut H, transfer: bool) {
        self.become_candidate(host);
        if self.tally() == Poll::Won {
            self.become_leader(host);
            return;
        }
        let message = Message::Vote {
            term: self.term,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        for voter in self.config.voters.clone() {
            self.send(voter, &message);
        }
    }

    /// Test hook: one callback that starts an election at once, as a
    /// TimeoutNow would.
    #[cfg(test)]
    pub(crate) fn campaign_now<H: Host>(&mut self, host: &mut H) {
        self.begin(host);
        self.campaign(host, true);
        self.end(host);
    }

    fn become_leader<H: Host>(&mut self, host: &mut H) {
        assert_eq!(self.role, RaftRole::Candidate);
        self.role = RaftRole::Leader;
        self.set_leader(Some(self.id));
        self.counters.elections_won += 1;
        let next = self.log.last_index() + 1;
        self.lead = LeaderState::default();
        self.lead.term_durable = self
            .votes
            .iter()
            .any(|(&voter, &granted)| granted && voter != self.id);
        for member in self.config.members() {
            if member != self.id {
                self.lead
                    .progress
                    .insert(member, Progress::new(next, self.now));
            }
        }
        host.log(
            Level::Info,
            &format!("raft: node {} is leader for term {}", self.id, self.term),
        );
        // A leader knows which entries are committed only once an entry of
        // its own term commits (§5.4.2, thesis §6.4): append a noop now.
        let mut noop = Batch::new();
        entry::push_noop(&mut noop, self.term);
        if let Err(error) = self.append_as_leader(host, &noop) {
            panic!("a new leader cannot append its noop: {error}");
        }
        self.lead.term_start_index = self.log.last_index();
        self.election_deadline = self.now + self.params.election_timeout_nanos;
        self.arm_election_timer(host);
        host.set_timer(TIMER_HEARTBEAT, self.params.heartbeat_nanos);
        self.bcast_append(host);
        self.maybe_commit(host);
    }

    /// Leader bookkeeping ends: unanswered reads are refused (their clients
    /// retry at `new_leader`).
    fn leave_leadership<H: Host>(&mut self, host: &mut H, new_leader: Option<NodeId>) {
        let mut ids = std::mem::take(&mut self.lead.reads_unsent);
        for round in self.lead.read_rounds.drain(..) {
            ids.extend(round.ids);
        }
        for (_, ready) in self.lead.reads_ready.drain(..) {
            ids.extend(ready);
        }
        if !ids.is_empty() {
            self.counters.reads_rejected += ids.len() as u64;
            host.reject(&ids, &Rejection::NotLeader(new_leader));
        }
        self.lead = LeaderState::default();
        host.cancel_timer(TIMER_HEARTBEAT);
        host.log(
            Level::Info,
            &format!("raft: node {} steps down in term {}", self.id, self.term),
        );
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if leader.is_some() && leader != self.leader {
            self.counters.leader_changes_seen += 1;
        }
        self.leader = leader;
    }

    /// Whether this node must refuse to help elect another leader now: it
    /// leads, or heard from a leader less than an election timeout ago.
    fn in_lease(&self) -> bool {
        self.role == RaftRole::Leader || self.now < self.vote_fence_until
    }

    fn reset_election_deadline<H: Host>(&mut self, host: &mut H) {
        let timeout = self.params.election_timeout_nanos;
        // Randomized in [timeout, 2 × timeout) so that split votes resolve
        // (§5.2).
        let jitter = host.random() % timeout;
        self.election_deadline = self.now + timeout + jitter;
        self.arm_election_timer(host);
    }

    /// Makes sure the election timer fires no later than the deadline. The
    /// deadline moves on every leader message; the timer is only re-armed
    /// when it would fire too late, and an early firing re-arms it.
    fn arm_election_timer<H: Host>(&mut self, host: &mut H) {
        if self
            .election_timer_at
            .is_none_or(|at| at > self.election_deadline)
        {
            host.set_timer(
                TIMER_ELECTION,
                self.election_deadline.saturating_sub(self.now),
            );
            self.election_timer_at = Some(self.election_deadline);
        }
    }

    fn tally(&self) -> Poll {
        let quorum = self.config.quorum();
        let granted = self
            .config
            .voters
            .iter()
            .filter(|voter| self.votes.get(voter) == Some(&true))
            .count();
        let refused = self
            .config
            .voters
            .iter()
            .filter(|voter| self.votes.get(voter) == Some(&false))
            .count();
        if granted >= quorum {
            Poll::Won
        } else if self.config.voters.len() - refused < quorum {
            Poll::Lost
        } else {
            Poll::Pending
        }
    }

    fn poll(&mut self, from: NodeId, granted: bool) -> Poll {
        self.votes.entry(from).or_insert(granted);
        self.tally()
    }

    // ------------------------------------------------------------------
    // Timers
    // ------------------------------------------------------------------

    fn tick_election<H: Host>(&mut self, host: &mut H) {
        self.election_timer_at = None;
        if self.now < self.election_deadline {
            self.arm_election_timer(host);
            return;
        }
        match self.role {
            RaftRole::Leader => {
                self.check_quorum(host);
                if self.role == RaftRole::Leader {
                    self.election_deadline = self.now + self.params.election_timeout_nanos;
                    self.arm_election_timer(host);
                }
            }
            RaftRole::Learner => self.reset_election_deadline(host),
            RaftRole::Follower | RaftRole::PreCandidate | RaftRole::Candidate => {
                if self.config.is_voter(self.id) {
                    self.become_pre_candidate(host);
                } else {
                    self.become_learner(host);
                }
            }
        }
    }

    /// A leader that has not heard from a quorum within an election timeout
    /// steps down (thesis §6.2), so that a partitioned leader stops
    /// accepting work it cannot commit.
    fn check_quorum<H: Host>(&mut self, host: &mut H) {
        let active = self
            .config
            .voters
            .iter()
            .filter(|&&voter| {
                voter == self.id
                    || self
                        .lead
                        .progress
                        .get(&voter)
                        .is_some_and(|progress| progress.recent_active)
            })
            .count();
        for progress in self.lead.progress.values_mut() {
            progress.recent_active = false;
        }
        if active < self.config.quorum() {
            self.counters.check_quorum_step_downs += 1;
            host.log(
                Level::Warn,
                &format!(
                    "raft: leader {} heard from {active} of {} voters; stepping down",
                    self.id,
                    self.config.voters.len()
                ),
            );
            self.become_follower(host, self.term, None);
        }
    }

    fn tick_heartbeat<H: Host>(&mut self, host: &mut H) {
        if self.role != RaftRole::Leader {
            return;
        }
        host.set_timer(TIMER_HEARTBEAT, self.params.heartbeat_nanos);
        if let Some(transfer) = self.lead.transfer
            && self.now >= transfer.deadline_nanos
        {
            self.lead.transfer = None;
            self.counters.transfers_aborted += 1;
            host.log(
                Level::Warn,
                &format!(
                    "raft: leadership transfer to {} timed out; accepting writes again",
                    transfer.target
                ),
            );
        }
        self.start_heartbeat_round();
        let stall_nanos = REPLICATE_STALL_HEARTBEATS * self.params.heartbeat_nanos;
        let resend_nanos = SNAPSHOT_RESEND_ELECTION_TIMEOUTS * self.params.election_timeout_nanos;
        let peers: Vec<NodeId> = self.lead.progress.keys().copied().collect();
        let mut cache = None;
        for peer in peers {
            let Some(progress) = self.lead.progress.get_mut(&peer) else {
                continue;
            };
            let quiet_nanos = self.now.saturating_sub(progress.last_progress_nanos);
            match progress.state {
                ProgressState::Probe => progress.probe_sent = false,
                ProgressState::Replicate => {
                    if !progress.inflight.is_empty() && quiet_nanos >= stall_nanos {
                        progress.become_probe();
                        self.counters.replication_stalls += 1;
                    }
                }
                ProgressState::Snapshot { .. } => {
                    if quiet_nanos >= resend_nanos {
                        progress.become_probe();
                    }
                }
            }
            self.send_append(host, peer, &mut cache);
        }
        if let Some(transfer) = self.lead.transfer {
            self.maybe_send_timeout_now(transfer.target);
        }
        self.maybe_confirm_reads(host);
        self.maybe_advance_membership(host);
    }

    // ------------------------------------------------------------------
    // Messages
    // ------------------------------------------------------------------

    fn step<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        let term = message.term();
        if term > self.term {
            match &message {
                // A pre-vote never changes the receiver's term, and a granted
                // pre-vote answer carries the term the sender would run in.
                Message::PreVote { .. } | Message::PreVoteResponse { granted: true, .. } => {}
                Message::Vote { transfer, .. } => {
                    if !*transfer && self.in_lease() {
                        // Thesis §4.2.3: a node that heard from a leader
                        // recently ignores disruptive candidates.
                        self.counters.votes_ignored_in_lease += 1;
                        return;
                    }
                    self.become_follower(host, term, None);
                }
                Message::Append { .. } | Message::Heartbeat { .. } | Message::TimeoutNow { .. } => {
                    self.become_follower(host, term, Some(from));
                }
                _ => self.become_follower(host, term, None),
            }
        } else if term < self.term {
            if matches!(message, Message::Append { .. })
                && matches!(self.role, RaftRole::Follower | RaftRole::Learner)
                && mutant!(self, StaleTermAppendAccepted)
            {
                if let Message::Append {
                    prev_index,
                    prev_term,
                    entries,
                    ..
                } = message
                {
                    self.handle_append(host, from, prev_index, prev_term, entries.into_batch());
                }
                return;
            }
            self.answer_stale(from, &message);
            return;
        }
        // Same term from here on; the role selects the handler.
        match self.role {
            RaftRole::Leader => self.step_leader(host, from, message),
            RaftRole::PreCandidate | RaftRole::Candidate => {
                self.step_candidate(host, from, message)
            }
            RaftRole::Follower | RaftRole::Learner => self.step_follower(host, from, message),
        }
    }

    /// Requests every role answers the same way.
    fn step_vote_request<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        match message {
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => self.handle_pre_vote(from, term, last_index, last_term),
            Message::Vote {
                last_index,
                last_term,
                transfer,
                ..
            } => self.handle_vote(host, from, last_index, last_term, transfer),
            _ => unreachable!("not a vote request"),
        }
    }

    fn step_leader<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        match message {
            Message::AppendResponse {
                success,
                index,
                hint_index,
                hint_term,
                ..
            } => self.handle_append_response(host, from, success, index, hint_index, hint_term),
            Message::HeartbeatResponse {
                round, last_index, ..
            } => self.handle_heartbeat_response(host, from, round, last_index),
            Message::PreVote { .. } | Message::Vote { .. } => {
                self.step_vote_request(host, from, message)
            }
            Message::Append { .. } | Message::Heartbeat { .. } | Message::TimeoutNow { .. } => {
                panic!("two leaders in term {}: {} and {from}", self.term, self.id)
            }
            // Late answers to this node's own campaign.
            Message::PreVoteResponse { .. } | Message::VoteResponse { .. } => {}
        }
    }

    fn step_candidate<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        match message {
            Message::PreVoteResponse { term, granted } => {
                self.handle_pre_vote_response(host, from, term, granted)
            }
            Message::VoteResponse { granted, .. } => self.handle_vote_response(host, from, granted),
            Message::PreVote { .. } | Message::Vote { .. } => {
                self.step_vote_request(host, from, message)
            }
            // A leader exists for this term (§5.2): follow it.
            Message::Append { .. } | Message::Heartbeat { .. } => {
                self.become_follower(host, self.term, Some(from));
                self.step_follower(host, from, message);
            }
            Message::TimeoutNow { .. } => self.handle_timeout_now(host, from),
            Message::AppendResponse { .. } | Message::HeartbeatResponse { .. } => {}
        }
    }

    /// Followers and learners.
    fn step_follower<H: Host>(&mut self, host: &mut H, from: NodeId, message: Message) {
        match message {
            Message::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                self.accept_leader(host, from);
                self.handle_append(host, from, prev_index, prev_term, entries.into_batch());
            }
            Message::Heartbeat { commit, round, .. } => {
                self.accept_leader(host, from);
                self.handle_heartbeat(host, from, commit, round);
            }
            Message::TimeoutNow { .. } => self.handle_timeout_now(host, from),
            Message::PreVote { .. } | Message::Vote { .. } => {
                self.step_vote_request(host, from, message)
            }
            Message::PreVoteResponse { .. }
            | Message::VoteResponse { .. }
            | Message::AppendResponse { .. }
            | Message::HeartbeatResponse { .. } => {}
        }
    }

    /// A message from an older term: tell the sender the current term so a
    /// deposed leader or a stale pre-candidate stands down.
    fn answer_stale(&mut self, from: NodeId, message: &Message) {
        let answer = match message {
            Message::Append { .. } | Message::Heartbeat { .. } => Message::AppendResponse {
                term: self.term,
                success: false,
                index: 0,
                hint_index: 0,
                hint_term: 0,
            },
            Message::PreVote { .. } => Message::PreVoteResponse {
                term: self.term,
                granted: false,
            },
            Message::Vote { .. } => Message::VoteResponse {
                term: self.term,
                granted: false,
            },
            _ => return,
        };
        self.send(from, &answer);
    }

    /// `from` leads the current term (a follower or learner hears from it).
    fn accept_leader<H: Host>(&mut self, host: &mut H, from: NodeId) {
        assert!(
            matches!(self.role, RaftRole::Follower | RaftRole::Learner),
            "only followers and learners accept a leader"
        );
        self.set_leader(Some(from));
        self.vote_fence_until = self.now + self.params.election_timeout_nanos;
        self.reset_election_deadline(host);
    }

    fn handle_pre_vote(&mut self, from: NodeId, term: u64, last_index: u64, last_term: u64) {
        let granted =
            term > self.term && !self.in_lease() && self.log.is_up_to_date(last_index, last_term);
        self.send(
            from,
            &Message::PreVoteResponse {
                term: if granted { term } else { self.term },
                granted,
            },
        );
    }

    fn handle_pre_vote_response<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        term: u64,
        granted: bool,
    ) {
        if self.role != RaftRole::PreCandidate || (granted && term != self.term + 1) {
            return;
        }
        match self.poll(from, granted) {
            Poll::Won => self.campaign(host, false),
            Poll::Lost => self.become_follower(host, self.term, None),
            Poll::Pending => {}
        }
    }

    /// RequestVote in the current term (§5.2, §5.4.1).
    fn handle_vote<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    ) {
        let can_vote = self.voted_for == Some(from)
            || ((self.voted_for.is_none() || mutant!(self, VoteTwiceInTerm))
                && self.leader.is_none()
                && (transfer || !self.in_lease()));
        let granted = can_vote
            && (self.log.is_up_to_date(last_index, last_term)
                || mutant!(self, VoteIgnoresLogRecency));
        if granted {
            if self.voted_for != Some(from) {
                // The vote is durable before the answer can leave.
                self.voted_for = Some(from);
                self.persist_hard_state(host);
            }
            self.reset_election_deadline(host);
        }
        let reply = Message::VoteResponse {
            term: self.term,
            granted,
        };
        if granted && mutant!(self, VoteReplyEager) {
            self.send_eager_unchecked(from, &reply);
        } else {
            self.send(from, &reply);
        }
    }

    fn handle_vote_response<H: Host>(&mut self, host: &mut H, from: NodeId, granted: bool) {
        if self.role != RaftRole::Candidate {
            return;
        }
        match self.poll(from, granted) {
            Poll::Won => self.become_leader(host),
            Poll::Lost => self.become_follower(host, self.term, None),
            Poll::Pending => {}
        }
    }

    /// AppendEntries on a follower or learner (§5.3).
    fn handle_append<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Batch,
    ) {
        if !self.entries_are_valid(&entries, prev_term) {
            self.counters.messages_malformed += 1;
            host.log(
                Level::Error,
                &format!("raft: malformed entries from {from}; dropped"),
            );
            return;
        }
        let count = entries.len() as u64;
        let last_new = prev_index + count;
        let mut skip = 0u64;
        let mut check_index = prev_index;
        let mut check_term = prev_term;
        if prev_index < self.commit {
            // Entries through our commit index are committed, hence in
            // every later leader's log (§5.4.3): acknowledge them as such.
            if last_new <= self.commit {
                let commit = self.commit;
                self.send_append_success(from, commit);
                return;
            }
            skip = self.commit - prev_index;
            let at_commit = entries.get(skip as usize - 1).expect("entry at commit");
            assert_eq!(
                Some(entry::term_of(at_commit)),
                self.log.term(self.commit),
                "leader {from} disagrees with committed entry {}",
                self.commit
            );
            check_index = self.commit;
            check_term = entry::term_of(at_commit);
        }
        if self.log.term(check_index) != Some(check_term)
            && !(check_index <= self.log.last_index() && mutant!(self, NoLogMatchingCheck))
        {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            self.send(
                from,
                &Message::AppendResponse {
                    term: self.term,
                    success: false,
                    index: prev_index,
                    hint_index,
                    hint_term,
                },
            );
            return;
        }
        // Skip what we already hold; from the first missing or conflicting
        // entry on, the leader's entries replace ours (§5.3). An old,
        // duplicated message therefore never truncates newer entries.
        let first_new = (skip..count).find(|&offset| {
            let index = prev_index + 1 + offset;
            let term = entry::term_of(entries.get(offset as usize).expect("entry"));
            self.log.term(index) != Some(term)
        });
        // Log matching (§5.3) rests on one leader per term never writing
        // two different entries at one index. A leader that acts on a term
        // before it is durable can break it (it loses the term, wins it
        // again and writes anew), so the entries skipped as already held
        // are checked byte for byte. A mismatch is refused, never
        // acknowledged: acknowledging would count an entry we do not hold.
        let held_end = first_new.unwrap_or(count);
        if let Some(index) = self.first_differing(host, prev_index, &entries, skip, held_end) {
            self.counters.append_term_conflicts += 1;
            host.log(
                Level::Error,
                &format!(
                    "raft: leader {from} sent an entry at {index} with the term of ours but other bytes; refused"
                ),
            );
            return;
        }
        if let Some(offset) = first_new {
            let index = prev_index + 1 + offset;
            assert!(
                index > self.commit,
                "leader {from} would overwrite committed entry {index} (commit {})",
                self.commit
            );
            let suffix = entry::batch_suffix(&entries, offset as usize);
            if let Err(error) = host.log_append(index, &suffix) {
                host.log(
                    Level::Error,
                    &format!("raft: log append at {index} failed: {error}"),
                );
                return;
            }
            self.index_appended(host, index, &suffix);
        }
        if mutant!(self, FollowerAppliesOnAppend) {
            self.commit_to(host, last_new.min(self.log.last_index()));
        }
        if mutant!(self, AppendAckEager) {
            let ack = Message::AppendResponse {
                term: self.term,
                success: true,
                index: last_new,
                hint_index: 0,
                hint_term: 0,
            };
            self.send_eager_unchecked(from, &ack);
            return;
        }
        self.send_append_success(from, last_new);
    }

    /// The first index in offsets `from..to` of `entries` (after
    /// `prev_index`) where our log holds other bytes, if any.
    fn first_differing<H: Host>(
        &self,
        host: &mut H,
        prev_index: u64,
        entries: &Batch,
        from: u64,
        to: u64,
    ) -> Option<u64> {
        if from >= to {
            return None;
        }
        let first = prev_index + 1 + from;
        let last = prev_index + to;
        let ours = read_or_panic(host, first, last, u32::MAX);
        ours.iter().enumerate().find_map(|(offset, held)| {
            let theirs = entries.get((from as usize) + offset)?;
            (held != theirs).then_some(first + offset as u64)
        })
    }

    /// Entries from a peer are well formed, their terms never decrease and
    /// never exceed the current term.
    fn entries_are_valid(&self, entries: &Batch, prev_term: u64) -> bool {
        if !entries.is_well_formed() {
            return false;
        }
        let mut previous = prev_term;
        for raw in entries.iter() {
            match entry::decode(raw) {
                Ok((term, _)) if term >= previous && term <= self.term => previous = term,
                _ => return false,
            }
        }
        true
    }

    fn send_append_success(&mut self, to: NodeId, index: u64) {
        self.send(
            to,
            &Message::AppendResponse {
                term: self.term,
                success: true,
                index,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    fn handle_heartbeat<H: Host>(&mut self, host: &mut H, from: NodeId, commit: u64, round: u64) {
        // The leader sends at most our match index, so every entry through
        // it is the leader's.
        self.commit_to(host, commit.min(self.log.last_index()));
        if round == 0 {
            return;
        }
        self.send(
            from,
            &Message::HeartbeatResponse {
                term: self.term,
                round,
                last_index: self.log.last_index(),
            },
        );
    }

    fn handle_timeout_now<H: Host>(&mut self, host: &mut H, from: NodeId) {
        if self.role == RaftRole::Leader || !self.config.is_voter(self.id) {
            return;
        }
        self.counters.timeout_now_received += 1;
        host.log(
            Level::Info,
            &format!(
                "raft: node {} campaigns at once on leader {from}'s request",
                self.id
            ),
        );
        // Thesis §3.10: skip pre-vote and the leader-lease check.
        self.campaign(host, true);
    }

    fn handle_append_response<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    ) {
        let last_index = self.log.last_index();
        if !success {
            let mut match_hint = hint_index;
            if hint_term > 0 {
                match_hint = self.log.find_conflict_by_term(hint_index, hint_term).0;
            }
            let Some(progress) = self.lead.progress.get_mut(&from) else {
                return;
            };
            progress.recent_active = true;
            if progress.maybe_decrease_to(index, match_hint) {
                self.send_append(host, from, &mut None);
            }
            return;
        }
        assert!(
            index <= last_index,
            "{from} acknowledges {index} beyond the leader's last index {last_index}"
        );
        // Only an append or snapshot of this term is acknowledged, and
        // while the term was not known durable those were sent normally.
        self.lead.term_durable = true;
        let index = if index < last_index && mutant!(self, MatchIndexOffByOne) {
            index + 1
        } else {
            index
        };
        let Some(progress) = self.lead.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if progress.maybe_update(index, self.now) {
            match progress.state {
                ProgressState::Probe => progress.become_replicate(self.now),
                ProgressState::Snapshot { index } if progress.match_index >= index => {
                    progress.become_replicate(self.now)
                }
                _ => {}
            }
            self.maybe_commit(host);
            if self.role != RaftRole::Leader {
                return;
            }
            if self.lead.transfer.is_some_and(|t| t.target == from) {
                self.maybe_send_timeout_now(from);
            }
            if self.config.is_learner(from) {
                self.maybe_advance_membership(host);
            }
        }
        self.send_append(host, from, &mut None);
    }

    fn handle_heartbeat_response<H: Host>(
        &mut self,
        host: &mut H,
        from: NodeId,
        round: u64,
        last_index: u64,
    ) {
        let mut resend = false;
        // Heartbeats are sent normally: this one left after our term was
        // durable.
        self.lead.term_durable = true;
        if let Some(progress) = self.lead.progress.get_mut(&from) {
            progress.recent_active = true;
            progress.acked_round = progress.acked_round.max(round);
            // An append sent before this heartbeat has not arrived: resend
            // from the match index now rather than after a stall.
            if progress.is_missing_before(last_index, round) {
                progress.become_probe();
                self.counters.appends_resent += 1;
                resend = true;
            }
        }
        if resend {
            self.send_append(host, from, &mut None);
        }
        self.maybe_confirm_reads(host);
    }

    // ------------------------------------------------------------------
    // Log and commitment
    // ------------------------------------------------------------------

    /// Appends `entries` after the last index (leader only).
    fn append_as_leader<H: Host>(
        &mut self,
        host: &mut H,
        entries: &Batch,
    ) -> Result<(), StorageError> {
        assert_eq!(self.role, RaftRole::Leader);
        let first = self.log.last_index() + 1;
        host.log_append(first, entries)?;
        self.counters.entries_appended += entries.len() as u64;
        self.index_appended(host, first, entries);
        Ok(())
    }

    /// Updates the in-memory index after the host log took `entries` at
    /// `first` (replacing everything from `first` on).
    fn index_appended<H: Host>(&mut self, host: &mut H, first: u64, entries: &Batch) {
        let mut config_changed = false;
        if first <= self.log.last_index() {
            self.log.truncate_from(first);
            let before = self.configs.len();
            self.configs.retain(|(index, _)| *index < first);
            config_changed = self.configs.len() != before;
            if self.log_seal_index.is_some_and(|seal| seal >= first) {
                self.log_seal_index = None;
            }
        }
        for (offset, raw) in entries.iter().enumerate() {
            let index = first + offset as u64;
            let (term, decoded) = entry::decode_own(raw);
            self.log.push(index, term);
            match decoded {
                Entry::Config(config) => {
                    self.configs.push((index, config));
                    config_changed = true;
                }
                Entry::Seal => {
                    self.log_seal_index.get_or_insert(index);
                }
                Entry::Command { .. } | Entry::Noop => {}
            }
        }
        if config_changed {
            self.on_config_changed(host);
        }
    }

    /// A configuration takes effect as soon as it is in the log (thesis
    /// §4.1), and reverts if a conflicting leader truncates it.
    fn on_config_changed<H: Host>(&mut self, host: &mut H) {
        self.config = self.configs.last().map_or_else(
            || self.snapshot_meta.config.clone(),
            |(_, config)| config.clone(),
        );
        host.log(
            Level::Info,
            &format!(
                "raft: node {} configuration: voters {:?} learners {:?}",
                self.id, self.config.voters, self.config.learners
            ),
        );
        match self.role {
            RaftRole::Leader => {
                let next = self.log.last_index() + 1;
                let members: BTreeSet<NodeId> =
                    self.config.members().filter(|&m| m != self.id).collect();
                self.lead.progress.retain(|peer, _| members.contains(peer));
                for member in members {
                    self.lead
                        .progress
                        .entry(member)
                        .or_insert_with(|| Progress::new(next, self.now));
                }
                if self
                    .lead
                    .transfer
                    .is_some_and(|t| !self.config.is_voter(t.target))
                {
                    self.lead.transfer = None;
                }
            }
            RaftRole::Follower | RaftRole::Learner => {
                if self.config.is_voter(self.id) {
                    self.role = RaftRole::Follower;
                } else {
                    self.become_learner(host);
                }
            }
            RaftRole::PreCandidate | RaftRole::Candidate => {
                if !self.config.is_voter(self.id) {
                    self.become_follower(host, self.term, None);
                }
            }
        }
    }

    /// Index of the latest configuration entry in the log (0 if it comes
    /// from the snapshot or the initial configuration, which are committed).
    fn config_index(&self) -> u64 {
        self.configs.last().map_or(0, |(index, _)| *index)
    }

    fn config_at(&self, index: u64) -> Config {
        self.configs
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.snapshot_meta.config.clone(), |(_, c)| c.clone())
    }

    /// Commits the highest index a quorum of voters holds, if it is of the
    /// current term (§5.4.2): an older entry is committed only indirectly,
    /// by a later entry of this term. Counting replicas of an old-term entry
    /// is not enough (Figure 8).
    fn maybe_commit<H: Host>(&mut self, host: &mut H) -> bool {
        if self.role != RaftRole::Leader || self.config.voters.is_empty() {
            return false;
        }
        let mut matches: Vec<u64> = self
            .config
            .voters
            .iter()
            .map(|&voter| {
                if voter == self.id {
                    self.log.last_index()
                } else {
                    self.lead
                        .progress
                        .get(&voter)
                        .map_or(0, |progress| progress.match_index)
                }
            })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[self.config.quorum() - 1];
        if quorum_index > self.commit
            && (self.log.term(quorum_index) == Some(self.term) || mutant!(self, Figure8Commit))
        {
            self.commit = quorum_index;
            self.after_commit(host);
            return true;
        }
        false
    }

    /// A follower learns that entries through `index` are committed.
    fn commit_to<H: Host>(&mut self, host: &mut H, index: u64) {
        if index > self.commit {
            assert!(index <= self.log.last_index());
            self.commit = index;
            self.after_commit(host);
        }
    }

    fn after_commit<H: Host>(&mut self, host: &mut H) {
        self.maybe_apply(host);
        if self.role == RaftRole::Leader {
            if self.maybe_step_down_if_removed(host) {
                return;
            }
            self.maybe_confirm_reads(host);
            self.maybe_advance_membership(host);
        }
    }

    /// Applies committed entries in order: commands go to the host state
    /// machine at the position of the batch's last command; noops and
    /// configurations only advance `applied`; a seal ends application.
    fn maybe_apply<H: Host>(&mut self, host: &mut H) {
        let mut budget = APPLY_ENTRIES_PER_CALLBACK_MAX;
        while self.applied < self.commit && budget > 0 {
            let first = self.applied + 1;
            let last = self.commit.min(self.applied + budget);
            let batch = read_or_panic(host, first, last, APPLY_READ_BYTES_MAX);
            let mut applies = synod_guest_sdk::Applies::default();
            let mut position = 0;
            for (offset, raw) in batch.iter().enumerate() {
                let index = first + offset as u64;
                assert!(index <= self.commit, "never apply an uncommitted entry");
                match entry::decode_own(raw).1 {
                    Entry::Command { id, command } => {
                        assert!(
                            self.sealed_index.is_none_or(|seal| index < seal),
                            "command at {index} after the seal at {:?}",
                            self.sealed_index
                        );
                        applies.push(id, command);
                        position = index;
                    }
                    Entry::Seal => {
                        if self.sealed_index.is_none() {
                            self.sealed_index = Some(index);
                            put_or_warn(host, SEALED_KEY, &index);
                            host.log(
                                Level::Info,
                                &format!("raft: node {} sealed at {index}", self.id),
                            );
                        }
                    }
                    Entry::Noop | Entry::Config(_) => {}
                }
            }
            if !applies.is_empty() {
                assert!(
                    position > self.host_applied,
                    "apply position {position} does not pass {}",
                    self.host_applied
                );
                host.apply(&applies, position);
                self.host_applied = position;
            }
            self.applied += batch.len() as u64;
            budget -= batch.len() as u64;
        }
        if self.applied < self.commit {
            host.set_timer(TIMER_APPLY, 0);
        }
        self.maybe_snapshot(host);
        if self.role == RaftRole::Leader {
            self.maybe_complete_reads(host);
        }
    }

    /// Every `snapshot-interval` applied entries: ask the host for a
    /// snapshot saved off the pipeline (`snapshot-async`). The log is left
    /// intact until the host reports the snapshot durable
    /// ([`Raft::snapshot_durable`]): a crash before that finds the whole
    /// log behind whichever snapshot is on disk.
    fn maybe_snapshot<H: Host>(&mut self, host: &mut H) {
        let interval = self.params.snapshot_interval_entries;
        if interval == 0
            || self.snapshot_saving.is_some()
            || self.applied < self.snapshot_attempt_applied + interval
        {
            return;
        }
        let position = match host.snapshot_async(TIMER_SNAPSHOT_DURABLE) {
            Ok(position) => position,
            Err(error) => {
                // Refused for now (a swap holds the region): retried after
                // the next apply.
                host.log(
                    Level::Debug,
                    &format!("raft: snapshot not started: {error}"),
                );
                return;
            }
        };
        self.snapshot_attempt_applied = self.applied;
        assert_eq!(
            position, self.host_applied,
            "host snapshot position differs from the applied position"
        );
        if position <= self.log.snapshot_index() {
            return;
        }
        let term = self
            .log
            .term(position)
            .expect("the snapshot position is in the log");
        self.snapshot_saving = Some(SnapshotMeta {
            index: position,
            term,
            config: self.config_at(position),
            sealed: self.sealed_index.filter(|&seal| seal <= position),
        });
    }

    /// The host saved the snapshot asked for in [`Raft::maybe_snapshot`]:
    /// record what it covers, then compact the log through it. A snapshot
    /// installed from the leader meanwhile supersedes it.
    fn snapshot_durable<H: Host>(&mut self, host: &mut H) {
        let Some(meta) = self.snapshot_saving.take() else {
            return;
        };
        let position = meta.index;
        if position <= self.log.snapshot_index() {
            return;
        }
        if let Err(error) = host.kv_put(SNAPSHOT_KEY, &encode(&meta)) {
            host.log(
                Level::Warn,
                &format!("raft: cannot record snapshot metadata: {error}"),
            );
            return;
        }
        if let Err(error) = host.log_compact_prefix(position) {
            host.log(
                Level::Warn,
                &format!("raft: log compaction failed: {error}"),
            );
        }
        self.log.compact_through(position, meta.term);
        self.configs.retain(|(index, _)| *index > position);
        self.snapshot_meta = meta;
        self.counters.snapshots_taken += 1;
    }

    // ------------------------------------------------------------------
    // Replication (leader)
    // ------------------------------------------------------------------

    fn bcast_append<H: Host>(&mut self, host: &mut H) {
        let peers: Vec<NodeId> = self.lead.progress.keys().copied().collect();
        let mut cache = None;
        for peer in peers {
            self.send_append(host, peer, &mut cache);
        }
    }

    /// Sends `to` what its progress state allows: one probe, or as many
    /// pipelined messages as the in-flight bounds admit, or a snapshot when
    /// the entries it needs were compacted. `cache` holds the last batch
    /// read so peers at the same position share one host read.
    fn send_append<H: Host>(&mut self, host: &mut H, to: NodeId, cache: &mut Option<(u64, Batch)>) {
        loop {
            let last_index = self.log.last_index();
            let Some(progress) = self.lead.progress.get(&to) else {
                return;
            };
            match progress.state {
                ProgressState::Snapshot { .. } => return,
                ProgressState::Probe if progress.probe_sent => return,
                ProgressState::Replicate
                    if progress.next_index > last_index
                        || progress.is_inflight_full(self.params.max_inflight_bytes) =>
                {
                    return;
                }
                _ => {}
            }
            let next = progress.next_index;
            let prev = next - 1;
            let Some(prev_term) = self.log.term(prev) else {
                self.send_snapshot(host, to);
                return;
            };
            let entries = if next > last_index {
                Batch::new()
            } else {
                match cache {
                    Some((first, batch)) if *first == next => batch.clone(),
                    _ => match host.log_read(next, last_index, self.params.max_batch_bytes) {
                        Ok(batch) => {
                            *cache = Some((next, batch.clone()));
                            batch
                        }
                        Err(StorageError::Compacted(_)) => {
                            self.send_snapshot(host, to);
                            return;
                        }
                        Err(error) => {
                            host.log(
                                Level::Error,
                                &format!("raft: log read at {next} failed: {error}"),
                            );
                            return;
                        }
                    },
                }
            };
            let count = entries.len() as u64;
            let bytes = entries.byte_len() as u64;
            let message = Message::Append {
                term: self.term,
                prev_index: prev,
                prev_term,
                entries: Entries::from_batch(entries),
            };
            // An eager append reveals this leader's term (and its entries)
            // before they are durable. That is safe only once the term is:
            // a leader that loses its term in a crash can win that term
            // again and write different entries at the same indexes, which
            // a receiver comparing by term would take for the same ones.
            if self.lead.term_durable {
                self.send_eager(to, &message);
            } else {
                self.send(to, &message);
            }
            let progress = self.lead.progress.get_mut(&to).expect("progress exists");
            match progress.state {
                ProgressState::Replicate => {
                    progress.sent_entries(prev + count, bytes, self.lead.heartbeat_round)
                }
                _ => {
                    progress.probe_sent = true;
                    return;
                }
            }
        }
    }

    /// Ships the latest snapshot; replication resumes when `to` reports
    /// it (or the shipment is retried after
    /// [`SNAPSHOT_RESEND_ELECTION_TIMEOUTS`]).
    fn send_snapshot<H: Host>(&mut self, host: &mut H, to: NodeId) {
        if self.snapshot_saving.is_some() {
            // The host ships nothing while a save is in flight (the file
            // may change under it); the next heartbeat or ack retries.
            self.counters.snapshot_sends_deferred += 1;
            return;
        }
        let index = self.log.snapshot_index();
        assert!(index > 0, "entries are missing but there is no snapshot");
        if let Some(progress) = self.lead.progress.get_mut(&to) {
            progress.become_snapshot(index, self.now);
        }
        let shipped = ShippedSnapshot {
            leader_term: self.term,
            meta: self.snapshot_meta.clone(),
        };
        host.send_snapshot(to, &encode(&shipped));
        self.counters.snapshots_sent += 1;
    }

    /// Tells followers whose commit index lags about committed entries they
    /// hold, at the end of every leader callback (a normal send: it leaves
    /// only once the log this commit index counted is durable).
    fn send_commit_updates(&mut self) {
        let mut updates = Vec::new();
        let beyond = mutant!(self, HeartbeatCommitBeyondMatch);
        for (&peer, progress) in self.lead.progress.iter_mut() {
            let commit = if beyond {
                self.commit
            } else {
                progress.match_index.min(self.commit)
            };
            if commit > progress.commit_sent {
                progress.commit_sent = commit;
                updates.push((peer, commit));
            }
        }
        for (peer, commit) in updates {
            // Round 0: a commit update, not a leadership check; it needs
            // no answer.
            let message = Message::Heartbeat {
                term: self.term,
                commit,
                round: 0,
            };
            if mutant!(self, CommitUpdateEager) {
                self.send_eager_unchecked(peer, &message);
            } else {
                self.send(peer, &message);
            }
        }
    }

    // ------------------------------------------------------------------
    // Reads (leader)
    // ------------------------------------------------------------------

    /// Sends a heartbeat to every peer for a new round; linearizable reads
    /// waiting for a round join it (thesis §6.4: one round serves every
    /// read that arrived before it).
    fn start_heartbeat_round(&mut self) {
        self.lead.heartbeat_round += 1;
        let round = self.lead.heartbeat_round;
        self.lead.round_starts.push_back((round, self.now));
        while self.lead.round_starts.len() > HEARTBEAT_ROUNDS_TRACKED_MAX {
            self.lead.round_starts.pop_front();
        }
        let mut heartbeats = Vec::with_capacity(self.lead.progress.len());
        let beyond = mutant!(self, HeartbeatCommitBeyondMatch);
        for (&peer, progress) in self.lead.progress.iter_mut() {
            let commit = if beyond {
                self.commit
            } else {
                progress.match_index.min(self.commit)
            };
            progress.commit_sent = progress.commit_sent.max(commit);
            heartbeats.push((peer, commit));
        }
        for (peer, commit) in heartbeats {
            let message = Message::Heartbeat {
                term: self.term,
                commit,
                round,
            };
            self.send(peer, &message);
        }
        if self.committed_in_term() && !self.lead.reads_unsent.is_empty() {
            self.lead.read_rounds.push_back(ReadRound {
                round,
                read_index: self.commit,
                ids: std::mem::take(&mut self.lead.reads_unsent),
            });
            self.counters.read_rounds_started += 1;
        }
    }

    fn committed_in_term(&self) -> bool {
        (self.lead.term_start_index > 0 && self.commit >= self.lead.term_start_index)
            || mutant!(self, ReadBeforeTermCommit)
    }

    /// Highest heartbeat round acknowledged by a quorum of voters.
    fn quorum_round(&self) -> u64 {
        let mut rounds: Vec<u64> = self
            .config
            .voters
            .iter()
            .map(|&voter| {
                if voter == self.id {
                    self.lead.heartbeat_round
                } else {
                    self.lead
                        .progress
                        .get(&voter)
                        .map_or(0, |progress| progress.acked_round)
                }
            })
            .collect();
        if rounds.is_empty() {
            return 0;
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds[self.config.quorum() - 1]
    }

    /// Moves reads whose round a quorum acknowledged to the ready queue,
    /// renews the lease, starts a round for reads that wait when none is
    /// outstanding, and answers ready reads whose index is applied.
    fn maybe_confirm_reads<H: Host>(&mut self, host: &mut H) {
        if self.role != RaftRole::Leader {
            return;
        }
        loop {
            let acked = self.quorum_round();
            if acked > self.lead.quorum_round {
                self.lead.quorum_round = acked;
                if let Some(&(_, start)) = self.lead.round_starts.iter().find(|(r, _)| *r == acked)
                    && self.params.lease_reads
                    && !self.lead.lease_forbidden
                {
                    // Lease (thesis §6.4.1): every voter of the quorum
                    // acknowledged a heartbeat sent after `start`, and
                    // refuses to vote for anyone else for an election
                    // timeout after receiving it (`vote_fence_until`). So no
                    // other leader can exist before `start + election
                    // timeout` by their clocks; `clock-drift-ms` covers
                    // clocks running at different rates.
                    let until = if mutant!(self, LeaseFromAck) {
                        self.now + self.params.lease_nanos()
                    } else {
                        start + self.params.lease_nanos()
                    };
                    self.lead.lease_until_nanos = self.lead.lease_until_nanos.max(until);
                }
                self.lead.round_starts.retain(|(r, _)| *r >= acked);
            }
            while self
                .lead
                .read_rounds
                .front()
                .is_some_and(|round| round.round <= acked)
            {
                let round = self.lead.read_rounds.pop_front().expect("front exists");
                self.lead
                    .reads_ready
                    .push_back((round.read_index, round.ids));
            }
            if self.lead.read_rounds.is_empty()
                && !self.lead.reads_unsent.is_empty()
                && self.committed_in_term()
            {
                self.start_heartbeat_round();
                continue;
            }
            break;
        }
        self.maybe_complete_reads(host);
    }

    fn lease_is_valid(&self) -> bool {
        self.params.lease_reads
            && !self.lead.lease_forbidden
            && (self.now < self.lead.lease_until_nanos
                || (self.lead.lease_until_nanos > 0 && mutant!(self, LeaseNeverExpires)))
    }

    fn maybe_complete_reads<H: Host>(&mut self, host: &mut H) {
        let mut ids = Vec::new();
        while self
            .lead
            .reads_ready
            .front()
            .is_some_and(|(index, _)| *index <= self.applied)
        {
            ids.extend(self.lead.reads_ready.pop_front().expect("front exists").1);
        }
        if !ids.is_empty() {
            self.counters.reads_completed += ids.len() as u64;
            host.complete_reads(&ids);
        }
    }

    fn handle_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        let mut local = Vec::new();
        let mut linearizable = Vec::new();
        let mut lease = Vec::new();
        for (&id, &level) in reads.ids.iter().zip(reads.levels.iter()) {
            match level {
                ReadLevel::Local => local.push(id),
                ReadLevel::Linearizable => linearizable.push(id),
                ReadLevel::Lease => lease.push(id),
            }
        }
        if !local.is_empty() {
            // Whatever this replica has applied, in any role.
            self.counters.reads_local += local.len() as u64;
            host.complete_reads(&local);
        }
        if linearizable.is_empty() && lease.is_empty() {
            return;
        }
        if self.role != RaftRole::Leader {
            linearizable.extend(lease);
            self.counters.reads_rejected += linearizable.len() as u64;
            host.reject(&linearizable, &Rejection::NotLeader(self.leader));
            return;
        }
        if self.lead.pending_reads() + linearizable.len() + lease.len() > READS_PENDING_MAX {
            linearizable.extend(lease);
            self.counters.reads_rejected += linearizable.len() as u64;
            host.reject(&linearizable, &Rejection::Overloaded);
            return;
        }
        if !lease.is_empty() {
            if self.committed_in_term() && self.lease_is_valid() {
                self.counters.reads_lease += lease.len() as u64;
                self.lead.reads_ready.push_back((self.commit, lease));
            } else {
                linearizable.extend(lease);
            }
        }
        if !linearizable.is_empty() && mutant!(self, ReadIndexNoQuorum) {
            self.lead.reads_ready.push_back((self.commit, linearizable));
            self.maybe_complete_reads(host);
            return;
        }
        // ReadIndex (thesis §6.4): the read index is the commit index when
        // the round starts, which is at least the commit index when the
        // read arrived.
        self.lead.reads_unsent.extend(linearizable);
        self.maybe_confirm_reads(host);
    }

    // ------------------------------------------------------------------
    // Snapshots (follower)
    // ------------------------------------------------------------------

    fn handle_snapshot_offer<H: Host>(&mut self, host: &mut H, offer: SnapshotOffer) -> bool {
        let shipped: ShippedSnapshot = match postcard::from_bytes(&offer.metadata) {
            Ok(shipped) => shipped,
            Err(error) => {
                self.counters.messages_malformed += 1;
                host.log(
                    Level::Error,
                    &format!(
                        "raft: snapshot metadata from {} does not decode: {error}",
                        offer.sender
                    ),
                );
                return false;
            }
        };
        if shipped.leader_term < self.term {
            self.counters.snapshot_offers_refused += 1;
            return false;
        }
        if shipped.leader_term > self.term {
            self.become_follower(host, shipped.leader_term, Some(offer.sender));
        }
        match self.role {
            RaftRole::Leader => panic!(
                "two leaders in term {}: {} and {}",
                self.term, self.id, offer.sender
            ),
            RaftRole::PreCandidate | RaftRole::Candidate => {
                self.become_follower(host, self.term, Some(offer.sender))
            }
            RaftRole::Follower | RaftRole::Learner => {}
        }
        self.accept_leader(host, offer.sender);
        let meta = shipped.meta;
        if offer.position != meta.index {
            self.counters.snapshot_offers_refused += 1;
            host.log(
                Level::Warn,
                &format!(
                    "raft: snapshot at {} arrived with metadata for {}; refused",
                    offer.position, meta.index
                ),
            );
            return false;
        }
        if meta.index <= self.commit || self.log.term(meta.index) == Some(meta.term) {
            // Nothing to install: our log already holds (a prefix matching)
            // the snapshot. Report the match so replication resumes.
            self.counters.snapshot_offers_refused += 1;
            let matched = if meta.index <= self.commit {
                self.commit
            } else {
                meta.index
            };
            self.send_append_success(offer.sender, matched);
            return false;
        }
        put_or_panic(host, INSTALLING_KEY, &(&meta, offer.sender));
        self.pending_install = Some((meta, offer.sender));
        true
    }

    /// Completes a snapshot install once the host state machine holds it:
    /// snapshot it locally (so our own durable snapshot matches our
    /// metadata), drop log entries that conflict with it, record the
    /// metadata, compact, and tell the leader where to resume.
    fn finish_snapshot_install<H: Host>(
        &mut self,
        host: &mut H,
        meta: SnapshotMeta,
        sender: NodeId,
    ) {
        match host.snapshot() {
            Ok(position) if position == meta.index => {}
            Ok(position) => {
                host.kv_delete(INSTALLING_KEY);
                host.log(
                    Level::Warn,
                    &format!(
                        "raft: host state is at {position} after installing the snapshot at {}; install abandoned",
                        meta.index
                    ),
                );
                return;
            }
            Err(error) => {
                host.kv_delete(INSTALLING_KEY);
                host.log(
                    Level::Warn,
                    &format!("raft: cannot snapshot the installed state: {error}"),
                );
                return;
            }
        }
        // Writes after `snapshot()` become durable only after the snapshot
        // itself: the install marker is deleted last, so a restart that
        // loses the metadata finishes the install again.
        assert!(
            meta.index >= self.commit,
            "installing a snapshot behind commit"
        );
        // If our entry at the snapshot index matches, the entries after it
        // may be kept (§7); otherwise the whole log is from another history.
        let keep = self.log.term(meta.index) == Some(meta.term)
            || mutant!(self, SnapshotKeepsConflictingTail);
        let bounds = host.log_bounds();
        if !keep && !bounds.is_empty() {
            truncate_or_panic(host, bounds.first);
        }
        put_or_panic(host, SNAPSHOT_KEY, &meta);
        if let Err(error) = host.log_compact_prefix(meta.index) {
            host.log(
                Level::Warn,
                &format!("raft: log compaction failed: {error}"),
            );
        }
        host.kv_delete(INSTALLING_KEY);
        if keep {
            self.log.compact_through(meta.index, meta.term);
            self.configs.retain(|(index, _)| *index > meta.index);
        } else {
            self.log = LogIndex::new(meta.index, meta.term);
            self.configs.clear();
            self.log_seal_index = None;
        }
        if let Some(seal) = meta.sealed
            && self.sealed_index.is_none()
        {
            self.sealed_index = Some(seal);
            put_or_warn(host, SEALED_KEY, &seal);
        }
        self.commit = meta.index;
        self.applied = meta.index;
        self.host_applied = meta.index;
        self.snapshot_attempt_applied = meta.index;
        self.snapshot_meta = meta;
        self.counters.snapshots_installed += 1;
        self.on_config_changed(host);
        host.log(
            Level::Info,
            &format!(
                "raft: node {} installed the snapshot at {}",
                self.id, self.snapshot_meta.index
            ),
        );
        if self.term > 0 && self.role != RaftRole::Leader {
            let index = self.snapshot_meta.index;
            self.send_append_success(sender, index);
        }
    }

    // ------------------------------------------------------------------
    // Membership change, transfer (leader)
    // ------------------------------------------------------------------

    /// Takes the next single-server step towards the membership target when
    /// no configuration change is uncommitted (thesis §4.1) and this term's
    /// noop has committed (the fix of thesis §4.1 for single-server changes
    /// across leader changes).
    fn maybe_advance_membership<H: Host>(&mut self, host: &mut H) {
        if self.role != RaftRole::Leader {
            return;
        }
        let Some(target) = self.lead.membership_target.clone() else {
            return;
        };
        if self.log_seal_index.is_some() || self.sealed_index.is_some() {
            self.lead.membership_target = None;
            return;
        }
        if !self.committed_in_term()
            || self.config_index() > self.commit
            || self.lead.transfer.is_some()
        {
            return;
        }
        let last_index = self.log.last_index();
        let progress = &self.lead.progress;
        // Caught up: it answered lately and holds nearly the whole log. A
        // learner that never answered is not promoted, however short the
        // log: a silent voter would only cost the quorum.
        let step = next_membership_step(&self.config, &target, self.id, |learner| {
            progress.get(&learner).is_some_and(|p| {
                p.recent_active
                    && p.match_index > 0
                    && p.match_index + LEARNER_CATCH_UP_ENTRIES_MAX >= last_index
            })
        });
        match step {
            MembershipStep::Done => {
                self.lead.membership_target = None;
                host.log(Level::Info, "raft: membership change complete");
            }
            MembershipStep::Wait => {}
            MembershipStep::Propose(next) => {
                let mut batch = Batch::new();
                entry::push_config(&mut batch, self.term, &next);
                if let Err(error) = self.append_as_leader(host, &batch) {
                    host.log(
                        Level::Error,
                        &format!("raft: cannot append a configuration: {error}"),
                    );
                    return;
                }
                self.counters.config_changes_proposed += 1;
                self.bcast_append(host);
                self.maybe_commit(host);
            }
        }
    }

    /// Thesis §4.2.2: a leader removed from the voters keeps managing the
    /// cluster until the configuration removing it commits, then steps
    /// down, handing over to the most up-to-date voter at once.
    fn maybe_step_down_if_removed<H: Host>(&mut self, host: &mut H) -> bool {
        if self.role != RaftRole::Leader
            || self.config.is_voter(self.id)
            || self.config_index() > self.commit
        {
            return false;
        }
        let last_index = self.log.last_index();
        let successor = self
            .config
            .voters
            .iter()
            .filter_map(|voter| {
                self.lead
                    .progress
                    .get(voter)
                    .map(|p| (p.match_index, *voter))
            })
            .max_by_key(|&(matched, voter)| (matched, std::cmp::Reverse(voter)));
        if let Some((matched, voter)) = successor
            && matched == last_index
        {
            self.send(voter, &Message::TimeoutNow { term: self.term });
        }
        host.log(
            Level::Info,
            &format!(
                "raft: leader {} is no longer a voter; stepping down",
                self.id
            ),
        );
        self.become_follower(host, self.term, None);
        true
    }

    fn maybe_send_timeout_now(&mut self, target: NodeId) {
        let caught_up = self
            .lead
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(target, &Message::TimeoutNow { term: self.term });
        }
    }

    fn not_leader_error(&self) -> String {
        match self.leader {
            Some(leader) => format!("node {} is not the leader; node {leader} is", self.id),
            None => format!("node {} is not the leader and knows no leader", self.id),
        }
    }

    fn handle_membership<H: Host>(
        &mut self,
        host: &mut H,
        membership: Membership,
    ) -> Result<(), String> {
        if self.role != RaftRole::Leader {
            return Err(self.not_leader_error());
        }
        if membership.voters.is_empty() {
            return Err("the target membership has no voters".into());
        }
        if let Some(both) = membership
            .voters
            .iter()
            .find(|voter| membership.learners.contains(voter))
        {
            return Err(format!("node {both} is listed as both voter and learner"));
        }
        if self.log_seal_index.is_some() || self.sealed_index.is_some() {
            return Err("the region is sealed".into());
        }
        if self.lead.transfer.is_some() {
            return Err("a leadership transfer is in progress".into());
        }
        let target = Config::from_membership(&membership);
        host.log(
            Level::Info,
            &format!(
                "raft: membership target voters {:?} learners {:?}",
                target.voters, target.learners
            ),
        );
        self.lead.membership_target = Some(target);
        self.maybe_advance_membership(host);
        Ok(())
    }

    fn handle_transfer<H: Host>(
        &mut self,
        host: &mut H,
        target: Option<NodeId>,
    ) -> Result<(), String> {
        if self.role != RaftRole::Leader {
            return Err(self.not_leader_error());
        }
        if self.lead.transfer.is_some() {
            return Err("a leadership transfer is already in progress".into());
        }
        let target = match target {
            Some(target) if target == self.id => return Ok(()),
            Some(target) if self.config.is_voter(target) => target,
            Some(target) => return Err(format!("node {target} is not a voter")),
            None => self
                .config
                .voters
                .iter()
                .filter(|&&voter| voter != self.id)
                .filter_map(|voter| {
                    self.lead
                        .progress
                        .get(voter)
                        .map(|p| (p.match_index, *voter))
                })
                .max_by_key(|&(matched, voter)| (matched, std::cmp::Reverse(voter)))
                .map(|(_, voter)| voter)
                .ok_or_else(|| "there is no other voter to transfer to".to_string())?,
        };
        host.log(
            Level::Info,
            &format!("raft: leader {} transfers leadership to {target}", self.id),
        );
        self.counters.transfers_started += 1;
        self.lead.transfer = Some(Transfer {
            target,
            deadline_nanos: self.now + self.params.election_timeout_nanos,
        });
        self.lead.lease_forbidden = true;
        self.lead.lease_until_nanos = 0;
        self.maybe_send_timeout_now(target);
        self.send_append(host, target, &mut None);
        Ok(())
    }

    fn handle_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        if commands.is_empty() {
            return;
        }
        let rejection = if commands.ids.len() != commands.payloads.len() {
            Some(Rejection::Invalid(format!(
                "{} ids for {} payloads",
                commands.ids.len(),
                commands.payloads.len()
            )))
        } else if self.role != RaftRole::Leader {
            Some(if self.sealed_index.is_some() {
                Rejection::Sealed
            } else {
                Rejection::NotLeader(self.leader)
            })
        } else if self.sealed_index.is_some() || self.log_seal_index.is_some() {
            Some(Rejection::Sealed)
        } else if self.lead.transfer.is_some() {
            Some(Rejection::Unavailable(
                "leadership transfer in progress".into(),
            ))
        } else if self.log.last_index() - self.commit + commands.len() as u64
            > UNCOMMITTED_ENTRIES_MAX
        {
            Some(Rejection::Overloaded)
        } else {
            None
        };
        if let Some(rejection) = rejection {
            self.counters.commands_rejected += commands.len() as u64;
            host.reject(&commands.ids, &rejection);
            return;
        }
        let mut entries = Batch {
            data: Vec::with_capacity(
                commands.payloads.byte_len() + commands.len() * (entry::HEADER_BYTES + 8),
            ),
            ends: Vec::with_capacity(commands.len()),
        };
        for (&id, command) in commands.ids.iter().zip(commands.payloads.iter()) {
            entry::push_command(&mut entries, self.term, id, command);
        }
        if let Err(error) = self.append_as_leader(host, &entries) {
            self.counters.commands_rejected += commands.len() as u64;
            host.reject(&commands.ids, &Rejection::Unavailable(error.to_string()));
            return;
        }
        self.bcast_append(host);
        self.maybe_commit(host);
    }

    fn handle_seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
        if let Some(seal) = self.sealed_index {
            return SealProgress::Sealed(seal);
        }
        if self.role == RaftRole::Leader
            && self.log_seal_index.is_none()
            && self.lead.transfer.is_none()
        {
            let mut batch = Batch::new();
            entry::push_seal(&mut batch, self.term);
            match self.append_as_leader(host, &batch) {
                Ok(()) => {
                    host.log(Level::Info, "raft: seal appended");
                    self.bcast_append(host);
                    self.maybe_commit(host);
                }
                Err(error) => host.log(
                    Level::Error,
                    &format!("raft: cannot append the seal: {error}"),
                ),
            }
        }
        match self.sealed_index {
            Some(seal) => SealProgress::Sealed(seal),
            None => SealProgress::Pending,
        }
    }

    fn report_status(&self) -> Status {
        let role = if self.sealed_index.is_some() {
            Role::Sealed
        } else {
            match self.role {
                RaftRole::Leader => Role::Leader,
                RaftRole::Follower => Role::Follower,
                RaftRole::PreCandidate | RaftRole::Candidate => Role::Candidate,
                RaftRole::Learner => Role::Learner,
            }
        };
        let peers = self
            .lead
            .progress
            .iter()
            .map(|(&peer, progress)| PeerProgress {
                peer,
                match_position: progress.match_index,
            })
            .collect();
        let mut counters = self.counters.list();
        #[cfg(feature = "mutants")]
        counters.push(("mutant-reached".into(), self.mutant_reached.get()));
        counters.push(("last-index".into(), self.log.last_index()));
        counters.push(("snapshot-index".into(), self.log.snapshot_index()));
        counters.push((
            "membership-change-pending".into(),
            u64::from(self.lead.membership_target.is_some()),
        ));
        counters.push((
            "transfer-in-progress".into(),
            u64::from(self.lead.transfer.is_some()),
        ));
        Status {
            role,
            leader: self.leader,
            term: self.term,
            commit_position: self.commit,
            applied_position: self.applied,
            peers,
            counters,
        }
    }
}

// ----------------------------------------------------------------------
// Protocol entry points
// ----------------------------------------------------------------------

impl synod_guest_sdk::Protocol for Raft {
    fn info() -> synod_guest_sdk::PluginInfo {
        synod_guest_sdk::PluginInfo {
            name: "raft".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            consistency: synod_guest_sdk::Consistency::Linearizable,
            capabilities: synod_guest_sdk::Capabilities {
                replication: true,
                linearizable_reads: true,
                lease_reads: true,
                membership_change: true,
                leader_transfer: true,
                seal: true,
                snapshots: true,
            },
        }
    }

    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self {
        Raft::new(host, config)
    }

    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
        self.begin(host);
        self.handle_commands(host, commands);
        self.end(host);
    }

    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
        self.begin(host);
        self.handle_reads(host, reads);
        self.end(host);
    }

    fn on_messages<H: Host>(&mut self, host: &mut H, messages: synod_guest_sdk::Messages) {
        self.begin(host);
        for (from, payload) in messages.iter() {
            self.counters.messages_received += 1;
            match Message::decode(payload) {
                Ok(message) => self.step(host, from, message),
                Err(error) => {
                    self.counters.messages_malformed += 1;
                    host.log(
                        Level::Error,
                        &format!("raft: message from {from} does not decode: {error}"),
                    );
                }
            }
        }
        self.end(host);
    }

    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
        self.begin(host);
        for timer in timers {
            match timer {
                TIMER_ELECTION => self.tick_election(host),
                TIMER_HEARTBEAT => self.tick_heartbeat(host),
                TIMER_APPLY => self.maybe_apply(host),
                TIMER_SNAPSHOT_DURABLE => self.snapshot_durable(host),
                // Timers of a failed predecessor instance.
                _ => {}
            }
        }
        self.end(host);
    }

    fn on_membership<H: Host>(
        &mut self,
        host: &mut H,
        membership: Membership,
    ) -> Result<(), String> {
        self.begin(host);
        let result = self.handle_membership(host, membership);
        self.end(host);
        result
    }

    fn on_snapshot<H: Host>(&mut self, host: &mut H, offer: SnapshotOffer) -> bool {
        self.begin(host);
        let accepted = self.handle_snapshot_offer(host, offer);
        self.end(host);
        accepted
    }

    fn transfer_leader<H: Host>(
        &mut self,
        host: &mut H,
        target: Option<NodeId>,
    ) -> Result<(), String> {
        self.begin(host);
        let result = self.handle_transfer(host, target);
        self.end(host);
        result
    }

    fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress {
        self.begin(host);
        let progress = self.handle_seal(host);
        self.end(host);
        progress
    }

    fn status<H: Host>(&mut self, _host: &mut H) -> Status {
        self.report_status()
    }
}

// ----------------------------------------------------------------------
// Storage helpers
// ----------------------------------------------------------------------

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("plugin state always encodes")
}

/// Writes hard state or metadata that safety depends on: failing to persist
/// it must stop this replica (the host rebuilds it from storage).
fn put_or_panic<H: Host, T: serde::Serialize>(host: &mut H, key: &[u8], value: &T) {
    if let Err(error) = host.kv_put(key, &encode(value)) {
        panic!("cannot persist {}: {error}", String::from_utf8_lossy(key));
    }
}

fn put_or_warn<H: Host, T: serde::Serialize>(host: &mut H, key: &[u8], value: &T) {
    if let Err(error) = host.kv_put(key, &encode(value)) {
        host.log(
            Level::Warn,
            &format!(
                "raft: cannot persist {}: {error}",
                String::from_utf8_lossy(key)
            ),
        );
    }
}

fn read_or_panic<H: Host>(host: &mut H, first: u64, last: u64, max_bytes: u32) -> Batch {
    match host.log_read(first, last, max_bytes) {
        Ok(batch) if !batch.is_empty() => batch,
        Ok(_) => panic!("log read {first}..={last} returned no entries"),
        Err(error) => panic!("log read {first}..={last} failed: {error}"),
    }
}

fn truncate_or_panic<H: Host>(host: &mut H, from: u64) {
    if let Err(error) = host.log_truncate_suffix(from) {
        panic!("log truncation from {from} failed: {error}");
    }
}
