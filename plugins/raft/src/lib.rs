//! Raft consensus as a Synod protocol plugin.
//!
//! One [`Raft`] value is one replica of a region. It is a sans-IO event
//! handler: the host delivers commands, reads, peer messages, timers,
//! membership targets, snapshot offers, transfer and seal requests, and the
//! replica answers through the host's log, kv, network, clock, state
//! machine and client imports.
//!
//! What it implements (sections cite the Raft paper as §5.x and Ongaro's
//! thesis as "thesis §x"):
//!
//! - Leader election (§5.2) with randomized timeouts in
//!   `[election-timeout-ms, 2 × election-timeout-ms)`, pre-vote (thesis
//!   §9.6), check-quorum (thesis §6.2) and the leader-stickiness rule of
//!   thesis §4.2.3: a node that heard from a leader within an election
//!   timeout ignores vote requests.
//! - Log replication (§5.3) with the conflict hint that skips whole terms,
//!   pipelined per follower (probe / replicate / snapshot states, bounded by
//!   `max-batch-bytes` per message and `max-inflight-bytes` per follower).
//! - Commitment by quorum of match indexes, for entries of the current term
//!   only (§5.4.2, Figure 8); a new leader appends a noop to commit.
//! - Linearizable reads by ReadIndex (thesis §6.4), optional leader-lease
//!   reads (thesis §6.4.1) and local reads.
//! - Snapshots and log compaction every `snapshot-interval` entries, and
//!   snapshot shipping to followers that need compacted entries (§7).
//! - Single-server membership changes (thesis §4.1), driven step by step
//!   towards an operator target, with learners that catch up before they
//!   are promoted.
//! - Leadership transfer (thesis §3.10) and seal.
//!
//! Learners (and nodes outside the configuration) never campaign and never
//! count towards a quorum of their own configuration. A node still answers
//! vote requests whatever its own configuration says (thesis §4.2.2): its
//! answer counts only if the candidate's configuration lists it as a voter,
//! which keeps a cluster live when a promotion reached the candidate but not
//! yet the promoted node.
//!
//! # Messages and durability
//!
//! Peer messages are postcard-encoded [`message::Message`] values, several
//! to the same peer in one `send`. Every storage write that a message
//! depends on (term, vote, log entries acknowledged) is made before the
//! message is queued, and the host's output commit holds the message until
//! those writes are durable. AppendEntries from the leader go out with
//! `send-eager` instead, so followers persist entries while the leader does
//! (thesis §10.2.1): they carry no commit index, and everything that does
//! depend on the leader's own durability (heartbeats carrying the commit
//! index, client answers, read answers) is sent normally. An eager append
//! still reveals the leader's term, so it is used only once that term is
//! known durable: at once for a leader elected with another voter's vote,
//! and, for a leader whose own vote was the quorum (one voter plus
//! learners), after a peer acknowledged a normally sent append. A follower
//! refuses an entry with the term of the entry it holds at that index but
//! other bytes (counter `append-term-conflicts`) rather than acknowledge it.
//!
//! # Parameters
//!
//! | name | default | meaning |
//! |------|---------|---------|
//! | `election-timeout-ms` | 1000 | minimum election timeout |
//! | `heartbeat-ms` | 100 | leader heartbeat interval |
//! | `max-batch-bytes` | 1 MiB | entry bytes per AppendEntries |
//! | `max-inflight-bytes` | 4 MiB | unacknowledged entry bytes per follower |
//! | `snapshot-interval` | 10000 | applied entries between snapshots (0 = never) |
//! | `lease-reads` | false | serve `lease` reads from the leader lease |
//! | `clock-drift-ms` | 50 | clock drift bound subtracted from the lease |
//!
//! # Storage layout
//!
//! - Log: one Raft entry per host log position (layout in [`entry`]).
//! - Kv: `raft/hard-state` (term and vote), `raft/snapshot` (what the
//!   latest snapshot covers), `raft/sealed` (applied seal index).
//! - State machine: commands are applied at their log index; snapshots are
//!   the host's.
//!
//! # Lease reads
//!
//! With `lease-reads=true`, a leader answers `lease` reads without a
//! heartbeat round while `now < start + election-timeout − clock-drift`,
//! where `start` is when the newest heartbeat round that a quorum
//! acknowledged was sent. This holds because every node refuses to vote
//! (except in a leader-ordered transfer) for an election timeout after it
//! last heard from a leader, including after a restart; a term in which a
//! transfer was started never serves lease reads again. The bound assumes
//! clocks whose rates differ by less than `clock-drift-ms` per election
//! timeout.

pub mod entry;
mod log_index;
pub mod membership;
pub mod message;
#[cfg(feature = "mutants")]
pub mod mutants;
pub mod params;
mod progress;
mod raft;

#[cfg(test)]
mod tests;

pub use membership::Config;
pub use params::Params;
pub use progress::INFLIGHT_MESSAGES_MAX;
pub use raft::{
    APPLY_ENTRIES_PER_CALLBACK_MAX, HARD_STATE_KEY, HEARTBEAT_ROUNDS_TRACKED_MAX, INSTALLING_KEY,
    LEARNER_CATCH_UP_ENTRIES_MAX, READS_PENDING_MAX, REPLICATE_STALL_HEARTBEATS, Raft, RaftRole,
    SEALED_KEY, SNAPSHOT_KEY, SNAPSHOT_RESEND_ELECTION_TIMEOUTS, TIMER_APPLY, TIMER_ELECTION,
    TIMER_HEARTBEAT, UNCOMMITTED_ENTRIES_MAX,
};

synod_guest_sdk::export_protocol!(Raft);
