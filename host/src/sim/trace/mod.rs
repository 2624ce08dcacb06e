//! What happened in a simulated run, per node over virtual time: as a hash
//! (replays must match bit for bit), a readable text log, and a
//! self-contained HTML page (a space-time diagram of the run).
//!
//! - [`Trace::record`] takes the text events; every event is hashed, kept
//!   or not;
//! - the other recording methods fill the structured [`model`] the page
//!   draws, and cost nothing but a branch when no trace is kept;
//! - [`text`] and [`html`] render a kept trace.

pub mod html;
pub mod kinds;
pub mod model;
pub mod text;

use synod_guest_sdk::NodeId;

use crate::checker::{OpInput, OpOutput, Operation};
use model::{
    ClientOp, Fate, LogLine, Mark, MarkKind, Message, Model, NodeChange, NodeMark, OpOutcome,
    Partition, RoleMark, Sending,
};

/// One traced event; node 0 means the simulated world itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub nanos: u64,
    pub node: NodeId,
    pub what: String,
}

#[derive(Debug)]
pub struct Trace {
    keep: bool,
    events: Vec<TraceEvent>,
    hash: u64,
    model: Model,
}

impl Trace {
    pub fn new(keep: bool) -> Self {
        Self {
            keep,
            events: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            model: Model::default(),
        }
    }

    /// Whether events are kept: callers skip building what only a kept
    /// trace needs (message kinds, operation descriptions).
    pub fn keeping(&self) -> bool {
        self.keep
    }

    pub fn record(&mut self, nanos: u64, node: NodeId, what: String) {
        // FNV-1a over every event, kept or not, so any divergence shows.
        let mut hasher = Fnv(self.hash);
        hasher.bytes(&nanos.to_le_bytes());
        hasher.bytes(&node.to_le_bytes());
        hasher.bytes(what.as_bytes());
        self.hash = hasher.0;
        if self.keep {
            self.events.push(TraceEvent { nanos, node, what });
        }
    }

    /// [`Trace::record`] of formatted text, which is only built when the
    /// trace is kept: otherwise the text streams into the hash (the same
    /// hash), so an untraced run allocates nothing per event.
    pub fn record_args(&mut self, nanos: u64, node: NodeId, what: std::fmt::Arguments<'_>) {
        if self.keep {
            self.record(nanos, node, what.to_string());
            return;
        }
        let mut hasher = Fnv(self.hash);
        hasher.bytes(&nanos.to_le_bytes());
        hasher.bytes(&node.to_le_bytes());
        // Writing to the hasher cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut hasher, what);
        self.hash = hasher.0;
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn into_recorded(self) -> Option<Trace> {
        self.keep.then_some(self)
    }

    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }

    /// The structured events the page draws.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// A message batch (or snapshot) leaves `from` for `to`. Returns its
    /// id for [`Trace::arrived`], 0 when no trace is kept. `kind` is only
    /// called when a trace is kept.
    pub fn send(
        &mut self,
        nanos: u64,
        sending: Sending,
        fate: Fate,
        kind: impl FnOnce() -> String,
    ) -> u32 {
        if !self.keep {
            return 0;
        }
        self.model.messages.push(Message {
            from: sending.from,
            to: sending.to,
            sent: nanos,
            arrived: None,
            fate,
            kind: kind(),
            bytes: sending.bytes,
            duplicate: sending.duplicate,
        });
        u32::try_from(self.model.messages.len()).unwrap_or(0)
    }

    /// Message `id` reached its receiver's side at `nanos` with `fate`.
    pub fn arrived(&mut self, nanos: u64, id: u32, fate: Fate) {
        let Some(index) = (id as usize).checked_sub(1) else {
            return;
        };
        if let Some(message) = self.model.messages.get_mut(index) {
            message.arrived = Some(nanos);
            message.fate = fate;
        }
    }

    /// A node boots, crashes, pauses or resumes.
    pub fn node(&mut self, nanos: u64, node: NodeId, change: NodeChange) {
        if !self.keep {
            return;
        }
        if matches!(change, NodeChange::Crash { .. } | NodeChange::Boot { .. }) {
            // A new process reports its role afresh.
            self.model.last_role.remove(&node);
        }
        self.model.nodes.push(NodeMark {
            nanos,
            node,
            change,
        });
    }

    /// A partition starts (`side` cut off from `rest`).
    pub fn partition(&mut self, nanos: u64, side: &[NodeId], rest: &[NodeId], one_way: bool) {
        if !self.keep {
            return;
        }
        self.healed(nanos);
        self.model.partitions.push(Partition {
            start: nanos,
            end: None,
            side: side.to_vec(),
            rest: rest.to_vec(),
            one_way,
        });
    }

    /// Every partition heals.
    pub fn healed(&mut self, nanos: u64) {
        if let Some(open) = self.model.partitions.last_mut()
            && open.end.is_none()
        {
            open.end = Some(nanos);
        }
    }

    /// A node's status: kept when its role, term or epoch changed.
    pub fn role(&mut self, nanos: u64, node: NodeId, role: &'static str, term: u64, epoch: u64) {
        if !self.keep {
            return;
        }
        let now = (role, term, epoch);
        if self.model.last_role.insert(node, now) == Some(now) {
            return;
        }
        self.model.roles.push(RoleMark {
            nanos,
            node,
            role,
            term,
            epoch,
        });
    }

    /// Client operation `index` (its place in the history) is sent to
    /// `node`.
    pub fn client_call(&mut self, nanos: u64, index: usize, node: NodeId, op: &Operation) {
        if !self.keep {
            return;
        }
        let what = match &op.input {
            OpInput::Get => format!("get {}", op.key),
            OpInput::Put { value } => format!("put {} = {value}", op.key),
            OpInput::Delete => format!("delete {}", op.key),
            OpInput::Cas { expected, new } => format!(
                "cas {} {} → {}",
                op.key,
                expected.as_deref().unwrap_or("∅"),
                new.as_deref().unwrap_or("∅")
            ),
        };
        self.model.op_index.insert(index, self.model.ops.len());
        self.model.ops.push(ClientOp {
            client: op.client,
            node,
            key: op.key.clone(),
            call: nanos,
            ret: None,
            what,
            outcome: OpOutcome::Pending,
            result: String::new(),
        });
    }

    /// Client operation `index` ended with `outcome`; `op` holds what came
    /// back, `why` says why when there is no answer.
    pub fn client_return(
        &mut self,
        nanos: u64,
        index: usize,
        op: &Operation,
        outcome: OpOutcome,
        why: &str,
    ) {
        if !self.keep {
            return;
        }
        let Some(traced) = self
            .model
            .op_index
            .get(&index)
            .and_then(|at| self.model.ops.get_mut(*at))
        else {
            return;
        };
        let (outcome, result) = match (&op.output, outcome) {
            (OpOutput::Ok, OpOutcome::Ok) => (OpOutcome::Ok, "ok".to_string()),
            (OpOutput::Value(value), OpOutcome::Ok) => (
                OpOutcome::Ok,
                format!("= {}", value.as_deref().unwrap_or("∅")),
            ),
            (OpOutput::Deleted { existed }, OpOutcome::Ok) => {
                (OpOutcome::Ok, format!("deleted (existed: {existed})"))
            }
            (
                OpOutput::Cas {
                    succeeded: true, ..
                },
                OpOutcome::Ok,
            ) => (OpOutcome::Ok, "cas ok".to_string()),
            (OpOutput::Cas { current, .. }, OpOutcome::Ok) => (
                OpOutcome::Failed,
                format!("cas failed (current {})", current.as_deref().unwrap_or("∅")),
            ),
            (_, outcome) => (outcome, why.to_string()),
        };
        traced.ret = Some(nanos);
        traced.outcome = outcome;
        traced.result = result;
    }

    /// A plugin's `logging.log` line (`level: text`), also a text event.
    pub fn plugin_log(&mut self, nanos: u64, node: NodeId, line: String) {
        self.record_args(nanos, node, format_args!("plugin {line}"));
        if self.keep {
            self.model.logs.push(LogLine { nanos, node, line });
        }
    }

    /// A moment marked on the page (violation, swap step, quiet phase),
    /// also a text event (`text`, or `VIOLATION: text` for a violation).
    pub fn mark(&mut self, nanos: u64, node: NodeId, kind: MarkKind, text: String) {
        let event = match kind {
            MarkKind::Violation => format!("VIOLATION: {text}"),
            _ => text.clone(),
        };
        self.record(nanos, node, event);
        if self.keep {
            self.model.marks.push(Mark {
                nanos,
                node,
                kind,
                text,
            });
        }
    }
}

#[cfg(test)]
mod tests;

/// FNV-1a, fed byte by byte (so text can stream into it).
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.bytes(text.as_bytes());
        Ok(())
    }
}
