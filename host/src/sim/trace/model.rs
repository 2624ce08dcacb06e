//! The structured side of a trace: what the HTML page draws (messages with
//! their fate, node states, partitions, roles, client operations, plugin
//! log lines, violations, epoch boundaries). Only kept when a trace is
//! recorded; the text events and the hash do not depend on it.

use std::collections::BTreeMap;

use synod_guest_sdk::NodeId;

/// What became of one scheduled delivery of a message batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still in flight when the run ended.
    InFlight,
    Delivered,
    /// Lost by the network's loss fault.
    Lost,
    /// Refused at send time by a partition.
    CutAtSend,
    /// Reached a partition that formed while it was in flight.
    CutAtDelivery,
    /// The receiver was down when it arrived.
    ReceiverDown,
    /// Reached a paused receiver, which handles it when it resumes.
    Parked,
}

impl Fate {
    /// The code the page's script knows (`FATES` in `page.js`).
    pub fn code(self) -> u8 {
        match self {
            Fate::InFlight => 0,
            Fate::Delivered => 1,
            Fate::Lost => 2,
            Fate::CutAtSend => 3,
            Fate::CutAtDelivery => 4,
            Fate::ReceiverDown => 5,
            Fate::Parked => 6,
        }
    }
}

/// One scheduled delivery: a batch of messages (or a snapshot) from one node
/// to another. A duplicate is its own `Message` with `duplicate` set.
#[derive(Clone, Debug)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub sent: u64,
    pub arrived: Option<u64>,
    pub fate: Fate,
    /// The message kinds in the batch, `+`-joined (`Append+Heartbeat`).
    pub kind: String,
    pub bytes: u64,
    pub duplicate: bool,
}

/// Who sends how much to whom ([`crate::sim::Trace::send`]).
#[derive(Clone, Copy, Debug)]
pub struct Sending {
    pub from: NodeId,
    pub to: NodeId,
    pub bytes: u64,
    /// A second delivery of the same send (the duplication fault).
    pub duplicate: bool,
}

/// A change of a node's process state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeChange {
    Boot { epoch: u64, recovering: bool },
    Crash { why: String },
    Pause,
    Resume,
}

#[derive(Clone, Debug)]
pub struct NodeMark {
    pub nanos: u64,
    pub node: NodeId,
    pub change: NodeChange,
}

#[derive(Clone, Debug)]
pub struct Partition {
    pub start: u64,
    /// `None` while it lasts (until the end of the run).
    pub end: Option<u64>,
    pub side: Vec<NodeId>,
    pub rest: Vec<NodeId>,
    pub one_way: bool,
}

/// A node's role or term as its status reported it (only changes kept).
#[derive(Clone, Debug)]
pub struct RoleMark {
    pub nanos: u64,
    pub node: NodeId,
    pub role: &'static str,
    pub term: u64,
    pub epoch: u64,
}

/// How a client operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// No answer by the end of the run.
    Pending,
    /// Answered: the write took effect, or the read returned.
    Ok,
    /// Answered, without effect (a compare-and-swap that did not match).
    Failed,
    /// Timed out or failed otherwise: it may or may not have happened.
    Unknown,
    /// Refused before being ordered (not the leader): it did not happen.
    Rejected,
    /// The node was down: the request never left the client.
    Refused,
}

impl OpOutcome {
    /// The code the page's script knows (`OUTCOMES` in `page.js`).
    pub fn code(self) -> u8 {
        match self {
            OpOutcome::Pending => 0,
            OpOutcome::Ok => 1,
            OpOutcome::Failed => 2,
            OpOutcome::Unknown => 3,
            OpOutcome::Rejected => 4,
            OpOutcome::Refused => 5,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientOp {
    pub client: u64,
    pub node: NodeId,
    pub key: String,
    pub call: u64,
    pub ret: Option<u64>,
    /// `put k3 = c1s4`, `get k2`, `cas k1 c0s2 → c1s5`.
    pub what: String,
    pub outcome: OpOutcome,
    /// What came back (`= c0s3`, `timeout`, `not leader`).
    pub result: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Violation,
    /// The coordinator starts a swap.
    SwapStart,
    /// A majority sealed and the new epoch is recorded (world-wide).
    EpochRecorded,
    /// One node switched to the new epoch.
    Switched,
    QuietPhase,
}

impl MarkKind {
    /// The code the page's script knows (`MARKS` in `page.js`).
    pub fn code(self) -> u8 {
        match self {
            MarkKind::Violation => 0,
            MarkKind::SwapStart => 1,
            MarkKind::EpochRecorded => 2,
            MarkKind::Switched => 3,
            MarkKind::QuietPhase => 4,
        }
    }
}

/// A moment worth a vertical marker; node 0 is the whole world.
#[derive(Clone, Debug)]
pub struct Mark {
    pub nanos: u64,
    pub node: NodeId,
    pub kind: MarkKind,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct LogLine {
    pub nanos: u64,
    pub node: NodeId,
    pub line: String,
}

/// Everything the page draws, in recording order.
#[derive(Debug, Default)]
pub struct Model {
    pub messages: Vec<Message>,
    pub nodes: Vec<NodeMark>,
    pub partitions: Vec<Partition>,
    pub roles: Vec<RoleMark>,
    pub ops: Vec<ClientOp>,
    pub logs: Vec<LogLine>,
    pub marks: Vec<Mark>,
    /// The last role mark per node, to keep changes only.
    pub(super) last_role: BTreeMap<NodeId, (&'static str, u64, u64)>,
    /// Client operation (history index) → its entry in `ops`.
    pub(super) op_index: BTreeMap<usize, usize>,
}
