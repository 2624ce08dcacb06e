//! Egalitarian Paxos (Moraru, Andersen, Kaminsky, SOSP 2013) as a Synod
//! protocol plugin, with the corrections the reference implementation
//! (efficient/epaxos) lacks.
//!
//! Every replica leads commands in its own instance space. A command
//! leader pre-accepts an instance with attributes (seq, deps) computed
//! from the interfering instances it knows, sends PreAccept to every peer,
//! and commits on the fast path when a fast quorum of `F + ⌊(F+1)/2⌋`
//! replicas (itself included) answered with unchanged attributes — only at
//! the instance's initial ballot. Otherwise it takes the union of a
//! majority's answers and runs Accept on a majority. Commits are
//! broadcast.
//!
//! - Interference: two client writes interfere when their conflict keys
//!   intersect. Linearizable (and lease) reads do not reach
//!   `on-commands`, so each `on-reads` batch is ordered by a *barrier*
//!   instance that interferes with every write; the reads are answered
//!   when the barrier executes at this replica (so they observe every
//!   write committed before they arrived). `local` reads are answered at
//!   once from the applied state.
//! - Ballots: each instance record keeps the promised ballot and the
//!   last-voted ballot apart (Sutra 2019); recovery ranks accepted votes
//!   by the ballot they were cast at.
//! - Durability: every reply is a plain `send` made after the record it
//!   reveals was written; the host's output commit holds it until durable.
//!   Records live in the kv area (`epaxos/i/<space><slot>`) with
//!   `epaxos/meta` naming the slots to reload on `init(recovering)`.
//! - Execution: an instance executes once every instance its deps name is
//!   committed; strongly connected components (Tarjan, iterative) run in
//!   dependency order, inside a component by (seq, replica id, slot).
//!   Writes are answered by the host when they execute at the replica that
//!   received them.
//! - Recovery: an instance that stays uncommitted (or that execution waits
//!   for) past `recovery-timeout-ms` plus a random share is taken over with
//!   Explicit Prepare at a higher ballot and the paper's case analysis:
//!   committed → commit; accepted → Accept the highest-ballot vote;
//!   `⌊(F+1)/2⌋` non-leaders pre-accepted the leader's attributes
//!   unchanged at the initial ballot → TryPreAccept (a blocking uncommitted
//!   conflict rules its leader out of the possible fast quorum); otherwise
//!   a known command → Phase 1 again (slow path); nothing known → commit a
//!   no-op.
//! - Seal: a seal instance interferes with everything; every replica
//!   applies exactly what is ordered before the first executed seal and
//!   reports `sealed` at that position.
//!
//! See `docs/PLUGIN-GUIDE.md` (EPaxos section) for parameters and limits.

pub mod epaxos;
pub mod exec;
pub mod message;
pub mod params;
pub mod quorum;
pub mod types;

#[cfg(test)]
mod tests;

pub use epaxos::{Epaxos, META_KEY, RECORD_PREFIX, TIMER_TICK, record_key};
pub use params::Params;

synod_guest_sdk::export_protocol!(Epaxos);
