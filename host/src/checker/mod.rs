//! Consistency checkers for client histories of a key-value store.
//!
//! * [`check_linearizable`] decides whether a recorded history of `put`/`get`/
//!   `delete`/`cas` operations is linearizable, key by key (linearizability is
//!   compositional, so independent keys never need to be searched together).
//! * [`check_convergence`] is the much weaker end-of-test check for eventually
//!   consistent protocols: replicas agree and acknowledged writes survived.
//!
//! Record operations with [`History`] (wrap it in a `Mutex` when several client
//! tasks share it), then hand [`History::operations`] to the checker.

pub mod convergence;
pub mod history;
pub mod linearizability;

pub use convergence::{
    ConvergenceError, LwwState, LwwWrite, check_convergence, check_lww_convergence,
};
pub use history::{
    History, HistoryError, OpId, OpInput, OpOutput, Operation, UNKNOWN_RETURN, validate_history,
};
pub use linearizability::{
    CheckOptions, DEFAULT_MAX_STATES, Outcome, Violation, check_each_key, check_linearizable,
};
