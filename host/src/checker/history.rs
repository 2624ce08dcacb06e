//! The data model of a client history and a small builder to record one.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Return time of an operation whose outcome was never observed (timeout,
/// crash): it may take effect at any time after its call, or never.
pub const UNKNOWN_RETURN: u64 = u64::MAX;

/// What a client asked the store to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpInput {
    /// Unconditional write.
    Put { value: String },
    /// Read of the current value.
    Get,
    /// Removal; the store says whether the key existed.
    Delete,
    /// Compare-and-set. `expected: None` requires the key to be absent;
    /// `new: None` deletes the key on success.
    Cas {
        expected: Option<String>,
        new: Option<String>,
    },
}

impl OpInput {
    /// Reads cannot change state, so an unobserved read can simply be dropped.
    pub fn is_read_only(&self) -> bool {
        matches!(self, OpInput::Get)
    }
}

/// What the client observed as the result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpOutput {
    /// Result of `Put`.
    Ok,
    /// Result of `Get`: `None` means the key was absent.
    Value(Option<String>),
    /// Result of `Delete`.
    Deleted { existed: bool },
    /// Result of `Cas`. `current` is the value seen on failure; it is not
    /// checked on success because stores differ in what they report there.
    Cas {
        succeeded: bool,
        current: Option<String>,
    },
    /// Never observed; only legal together with `ret == UNKNOWN_RETURN`.
    Unknown,
}

/// One client operation on one key, with real-time call/return timestamps
/// taken from a single monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    /// When the client issued the request.
    pub call: u64,
    /// When the client saw the response, or [`UNKNOWN_RETURN`].
    pub ret: u64,
    pub input: OpInput,
    pub output: OpOutput,
}

impl Operation {
    /// True when the client never learnt what happened.
    pub fn is_outcome_unknown(&self) -> bool {
        self.output == OpOutput::Unknown
    }

    /// Rejects operations the checker cannot interpret, so that a recording
    /// bug is never mistaken for a consistency violation.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.ret < self.call {
            return Err(HistoryError::ReturnBeforeCall {
                client: self.client,
                key: self.key.clone(),
                call: self.call,
                ret: self.ret,
            });
        }
        if self.output == OpOutput::Unknown && self.ret != UNKNOWN_RETURN {
            return Err(HistoryError::UnknownOutputWithReturn {
                client: self.client,
                key: self.key.clone(),
                ret: self.ret,
            });
        }
        let matching = matches!(
            (&self.input, &self.output),
            (_, OpOutput::Unknown)
                | (OpInput::Put { .. }, OpOutput::Ok)
                | (OpInput::Get, OpOutput::Value(_))
                | (OpInput::Delete, OpOutput::Deleted { .. })
                | (OpInput::Cas { .. }, OpOutput::Cas { .. })
        );
        if !matching {
            return Err(HistoryError::MismatchedOutput {
                client: self.client,
                key: self.key.clone(),
                input: self.input.to_string(),
                output: self.output.to_string(),
            });
        }
        Ok(())
    }
}

/// Checks every operation with [`Operation::validate`]; the first problem wins.
pub fn validate_history(history: &[Operation]) -> Result<(), HistoryError> {
    history.iter().try_for_each(Operation::validate)
}

/// A malformed history or a misuse of the [`History`] builder.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error("client {client} key {key:?}: return time {ret} is before call time {call}")]
    ReturnBeforeCall {
        client: u64,
        key: String,
        call: u64,
        ret: u64,
    },
    #[error(
        "client {client} key {key:?}: unknown output needs ret = u64::MAX, got {ret} \
         (an unobserved outcome has no return time)"
    )]
    UnknownOutputWithReturn { client: u64, key: String, ret: u64 },
    #[error("client {client} key {key:?}: output {output} does not answer input {input}")]
    MismatchedOutput {
        client: u64,
        key: String,
        input: String,
        output: String,
    },
    #[error("no operation with id {0:?} was recorded")]
    NoSuchOperation(OpId),
    #[error("operation {0:?} already has its outcome recorded")]
    AlreadyCompleted(OpId),
}

impl HistoryError {
    /// The key involved, if any; used to attribute the error in an `Outcome`.
    pub fn key(&self) -> Option<&str> {
        match self {
            HistoryError::ReturnBeforeCall { key, .. }
            | HistoryError::UnknownOutputWithReturn { key, .. }
            | HistoryError::MismatchedOutput { key, .. } => Some(key),
            HistoryError::NoSuchOperation(_) | HistoryError::AlreadyCompleted(_) => None,
        }
    }
}

/// Handle returned by [`History::record_call`] to attach the outcome later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId(usize);

impl OpId {
    /// Position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Append-only recorder of a history. Not synchronised on purpose: callers
/// share it behind their own `Mutex`, which also orders timestamps sanely.
///
/// Operations still pending when the history is checked are treated exactly
/// like [`History::record_unknown`] ones (a crashed client never returns).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: Vec<Operation>,
    /// Whether an outcome (possibly "unknown") was recorded, to catch double
    /// completion, which would silently corrupt the history.
    completed: Vec<bool>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps already complete operations (e.g. loaded from a dump).
    pub fn from_operations(ops: Vec<Operation>) -> Self {
        let completed = vec![true; ops.len()];
        Self { ops, completed }
    }

    /// Records an invocation; the operation stays pending (unknown outcome)
    /// until [`History::record_return`] or [`History::record_unknown`].
    pub fn record_call(
        &mut self,
        client: u64,
        key: impl Into<String>,
        input: OpInput,
        call_time: u64,
    ) -> OpId {
        self.ops.push(Operation {
            client,
            key: key.into(),
            call: call_time,
            ret: UNKNOWN_RETURN,
            input,
            output: OpOutput::Unknown,
        });
        self.completed.push(false);
        OpId(self.ops.len() - 1)
    }

    /// Records the observed response. Errors leave the operation pending.
    pub fn record_return(
        &mut self,
        id: OpId,
        output: OpOutput,
        ret_time: u64,
    ) -> Result<(), HistoryError> {
        let op = self.pending_mut(id)?;
        let candidate = Operation {
            output,
            ret: ret_time,
            ..op.clone()
        };
        candidate.validate()?;
        *op = candidate;
        self.mark_completed(id);
        Ok(())
    }

    /// Records that the outcome will never be known (timeout, crash).
    pub fn record_unknown(&mut self, id: OpId) -> Result<(), HistoryError> {
        let op = self.pending_mut(id)?;
        op.ret = UNKNOWN_RETURN;
        op.output = OpOutput::Unknown;
        self.mark_completed(id);
        Ok(())
    }

    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    pub fn into_operations(self) -> Vec<Operation> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Convenience for `check_linearizable(self.operations(), options)`.
    pub fn check(&self, options: &super::linearizability::CheckOptions) -> super::Outcome {
        super::linearizability::check_linearizable(&self.ops, options)
    }

    fn pending_mut(&mut self, id: OpId) -> Result<&mut Operation, HistoryError> {
        match self.completed.get(id.0) {
            None => Err(HistoryError::NoSuchOperation(id)),
            Some(true) => Err(HistoryError::AlreadyCompleted(id)),
            Some(false) => self
                .ops
                .get_mut(id.0)
                .ok_or(HistoryError::NoSuchOperation(id)),
        }
    }

    fn mark_completed(&mut self, id: OpId) {
        if let Some(done) = self.completed.get_mut(id.0) {
            *done = true;
        }
    }
}

/// Renders an optional value the same way everywhere in reports.
pub(crate) fn fmt_value(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "<absent>".to_string(),
    }
}

impl fmt::Display for OpInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpInput::Put { value } => write!(f, "put({value:?})"),
            OpInput::Get => write!(f, "get()"),
            OpInput::Delete => write!(f, "delete()"),
            OpInput::Cas { expected, new } => {
                write!(f, "cas({} -> {})", fmt_value(expected), fmt_value(new))
            }
        }
    }
}

impl fmt::Display for OpOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpOutput::Ok => write!(f, "ok"),
            OpOutput::Value(v) => write!(f, "{}", fmt_value(v)),
            OpOutput::Deleted { existed } => write!(f, "deleted(existed={existed})"),
            OpOutput::Cas {
                succeeded: true, ..
            } => write!(f, "cas succeeded"),
            OpOutput::Cas {
                succeeded: false,
                current,
            } => write!(f, "cas failed(current={})", fmt_value(current)),
            OpOutput::Unknown => write!(f, "unknown"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} {} -> {} [call {}, ret ",
            self.client, self.input, self.output, self.call
        )?;
        if self.ret == UNKNOWN_RETURN {
            write!(f, "never]")
        } else {
            write!(f, "{}]", self.ret)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_records_calls_returns_and_unknowns() {
        let mut h = History::new();
        let a = h.record_call(1, "x", OpInput::Put { value: "1".into() }, 10);
        let b = h.record_call(2, "x", OpInput::Get, 11);
        let c = h.record_call(3, "y", OpInput::Delete, 12);
        h.record_return(a, OpOutput::Ok, 20).unwrap();
        h.record_unknown(b).unwrap();
        assert_eq!(h.len(), 3);
        let ops = h.operations();
        assert_eq!(ops[0].ret, 20);
        assert_eq!(ops[0].output, OpOutput::Ok);
        assert_eq!(ops[1].ret, UNKNOWN_RETURN);
        assert!(ops[1].is_outcome_unknown());
        // Still pending: looks exactly like an unknown outcome.
        assert_eq!(ops[2].ret, UNKNOWN_RETURN);
        assert_eq!(c.index(), 2);
    }

    #[test]
    fn builder_rejects_misuse() {
        let mut h = History::new();
        let a = h.record_call(1, "x", OpInput::Get, 10);
        assert!(matches!(
            h.record_return(a, OpOutput::Value(None), 5),
            Err(HistoryError::ReturnBeforeCall { .. })
        ));
        assert!(matches!(
            h.record_return(a, OpOutput::Ok, 15),
            Err(HistoryError::MismatchedOutput { .. })
        ));
        assert!(matches!(
            h.record_return(a, OpOutput::Unknown, 15),
            Err(HistoryError::UnknownOutputWithReturn { .. })
        ));
        // Failed attempts leave it pending, so a correct return still works.
        h.record_return(a, OpOutput::Value(None), 15).unwrap();
        assert_eq!(
            h.record_return(a, OpOutput::Value(None), 16),
            Err(HistoryError::AlreadyCompleted(a))
        );
        assert_eq!(h.record_unknown(a), Err(HistoryError::AlreadyCompleted(a)));
        let bogus = OpId(99);
        assert_eq!(
            h.record_unknown(bogus),
            Err(HistoryError::NoSuchOperation(bogus))
        );
    }

    #[test]
    fn from_operations_round_trips_through_json() {
        let ops = vec![
            Operation {
                client: 1,
                key: "k".into(),
                call: 1,
                ret: 2,
                input: OpInput::Cas {
                    expected: None,
                    new: Some("a".into()),
                },
                output: OpOutput::Cas {
                    succeeded: true,
                    current: None,
                },
            },
            Operation {
                client: 2,
                key: "k".into(),
                call: 3,
                ret: UNKNOWN_RETURN,
                input: OpInput::Delete,
                output: OpOutput::Unknown,
            },
        ];
        let h = History::from_operations(ops.clone());
        let json = serde_json::to_string(&h).unwrap();
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(back.operations(), &ops[..]);
        let json_ops = serde_json::to_string(&ops).unwrap();
        let back_ops: Vec<Operation> = serde_json::from_str(&json_ops).unwrap();
        assert_eq!(back_ops, ops);
    }

    #[test]
    fn display_is_readable() {
        let op = Operation {
            client: 7,
            key: "k".into(),
            call: 5,
            ret: UNKNOWN_RETURN,
            input: OpInput::Cas {
                expected: Some("a".into()),
                new: None,
            },
            output: OpOutput::Unknown,
        };
        assert_eq!(
            op.to_string(),
            "client 7 cas(\"a\" -> <absent>) -> unknown [call 5, ret never]"
        );
    }
}
