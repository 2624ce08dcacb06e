//! Live protocol swap: moving a running region from one protocol (or
//! protocol version) to another without losing or refusing a write.
//!
//! The swap is a state machine recorded in the control plane (so any node
//! can crash, the coordinator included, and the swap resumes from the
//! record when it is back):
//!
//! 1. **Preparing** (`SwapBegin`): every member of the new epoch fetches
//!    and compiles the target component and reports `SwapPrepared`. Writes
//!    still flow. Every member prepared (or, after [`coordinator::PREPARE_GRACE`],
//!    a majority: one that is down prepares when it is back) moves on; a
//!    refusal, or no majority within [`coordinator::PREPARE_TIMEOUT`],
//!    abandons the swap (`SwapAbort`): nothing was sealed, nothing changes.
//! 2. **Sealing** (`SwapSeal`): every host of the current epoch holds new
//!    writes in a bounded queue (past it: `overloaded`), calls the plugin's
//!    `seal` until it answers `sealed(p)`, and reports `SwapSealed` with p
//!    and its state digest.
//! 3. **Commit** (`SwapCommit`): once a quorum of the current epoch's voters
//!    (all of them for an eventually consistent protocol, unless forced)
//!    has reported, all at the same position and digest, and the reporters
//!    are a majority of the new epoch's voters, the coordinator records
//!    epoch + 1 starting at p. Reports that disagree roll the swap back:
//!    the next epoch runs the old protocol again (the old instance is
//!    sealed for good, so rolling back is a new epoch too).
//! 4. **Enter** (every host, on seeing the new epoch): save the state
//!    machine as the boundary snapshot, drop the old epoch's log and kv,
//!    start the new protocol with `init(applied_position)`, release the
//!    held writes into it. A host that was down enters when it is back, and
//!    the new protocol catches it up by snapshot. Messages, snapshots and
//!    storage of another epoch never reach a plugin.
//!
//! The reporters being a majority of the new voters is what makes a
//! lagging replica harmless: it starts the new protocol below p, and a
//! protocol that elects only up-to-date replicas (Raft) cannot elect it.
//!
//! - [`coordinator`]: the decisions, made by the control-plane leader;
//! - [`host`]: one host's part (prepare, hold and seal, enter).

pub mod coordinator;
pub mod host;
