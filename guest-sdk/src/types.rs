//! Plain Rust mirrors of the WIT types in `wit/synod.wit`.
//!
//! Field and variant names match what `wit-bindgen` would generate, so inside
//! a Wasm component these types *are* the bindings' types (no conversion copy)
//! and in native mode the host builds them directly.

/// A node of the cluster.
pub type NodeId = u64;
/// Host-assigned id of a client request, unique within a region.
pub type RequestId = u64;
/// Plugin-chosen timer name.
pub type TimerId = u64;

/// Many byte strings in one flat buffer; see [`Batch::get`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub data: Vec<u8>,
    pub ends: Vec<u32>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a batch from items.
    pub fn from_items<I, T>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut batch = Self::new();
        for item in items {
            batch.push(item.as_ref());
        }
        batch
    }

    /// Appends one item. Panics if the batch would exceed 4 GiB, which no
    /// host accepts anyway.
    pub fn push(&mut self, item: &[u8]) {
        self.data.extend_from_slice(item);
        let end = u32::try_from(self.data.len()).expect("batch larger than 4 GiB");
        self.ends.push(end);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Item `index`, or `None` if out of range or if `ends` is malformed.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)? as usize;
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        self.data.get(start..end)
    }

    /// Items in order. Stops at the first malformed item.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map_while(|i| self.get(i))
    }

    /// True when `ends` is non-decreasing and within `data`.
    pub fn is_well_formed(&self) -> bool {
        let mut previous = 0u32;
        for &end in &self.ends {
            if end < previous {
                return false;
            }
            previous = end;
        }
        previous as usize <= self.data.len()
    }

    /// Total payload bytes.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
}

/// Client writes to order (see the WIT `commands` record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commands {
    pub ids: Vec<RequestId>,
    pub payloads: Batch,
    pub key_ends: Vec<u32>,
    pub keys: Vec<u64>,
}

impl Commands {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Conflict keys of command `index`.
    pub fn keys_of(&self, index: usize) -> &[u64] {
        let end = self.key_ends.get(index).copied().unwrap_or(0) as usize;
        let start = if index == 0 {
            0
        } else {
            self.key_ends.get(index - 1).copied().unwrap_or(0) as usize
        };
        self.keys.get(start..end).unwrap_or(&[])
    }
}

/// Commands to execute against the state machine, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applies {
    pub ids: Vec<RequestId>,
    pub payloads: Batch,
}

impl Applies {
    pub fn push(&mut self, id: RequestId, payload: &[u8]) {
        self.ids.push(id);
        self.payloads.push(payload);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Version of one write under last-writer-wins (WIT `stamp`, since 0.1.1).
/// The derived order is the rule's: `time` first, then `origin`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Hybrid logical clock value.
    pub time: u64,
    /// The node that accepted the write.
    pub origin: NodeId,
}

/// The consistency a client asks for on a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    Linearizable,
    Lease,
    Local,
}

/// Client reads to answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub ids: Vec<RequestId>,
    pub levels: Vec<ReadLevel>,
}

/// Messages from peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Messages {
    pub senders: Vec<NodeId>,
    pub payloads: Batch,
}

impl Messages {
    /// `(sender, payload)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &[u8])> + '_ {
        self.senders.iter().copied().zip(self.payloads.iter())
    }
}

/// Voting members and non-voting learners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// What `init` receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitConfig {
    pub self_id: NodeId,
    pub membership: Membership,
    pub params: Vec<(String, String)>,
    pub recovering: bool,
    pub applied_position: u64,
}

impl InitConfig {
    /// The value of parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What a protocol guarantees to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    Linearizable,
    Sequential,
    Eventual,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Sequential => "sequential",
            Consistency::Eventual => "eventual",
        }
    }
}

/// What a protocol supports (the WIT `capabilities` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    pub replication: bool,
    pub linearizable_reads: bool,
    pub lease_reads: bool,
    pub membership_change: bool,
    pub leader_transfer: bool,
    pub seal: bool,
    pub snapshots: bool,
}

impl Capabilities {
    /// Names of the set flags, for status output.
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [
            (self.replication, "replication"),
            (self.linearizable_reads, "linearizable-reads"),
            (self.lease_reads, "lease-reads"),
            (self.membership_change, "membership-change"),
            (self.leader_transfer, "leader-transfer"),
            (self.seal, "seal"),
            (self.snapshots, "snapshots"),
        ];
        flags
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name)
            .collect()
    }
}

/// Static description of a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub consistency: Consistency,
    pub capabilities: Capabilities,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    NotLeader(Option<NodeId>),
    Sealed,
    Overloaded,
    Invalid(String),
    Unavailable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Replica,
    Sealed,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Replica => "replica",
            Role::Sealed => "sealed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub peer: NodeId,
    pub match_position: u64,
}

/// What `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_position: u64,
    pub applied_position: u64,
    pub peers: Vec<PeerProgress>,
    pub counters: Vec<(String, u64)>,
}

/// Progress of a seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealProgress {
    Pending,
    Sealed(u64),
}

/// A storage call that could not be performed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    Compacted(u64),
    OutOfRange(String),
    Failed(String),
}

impl core::fmt::Display for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StorageError::Compacted(first) => {
                write!(f, "position compacted; first retained is {first}")
            }
            StorageError::OutOfRange(why) => write!(f, "out of range: {why}"),
            StorageError::Failed(why) => write!(f, "storage failed: {why}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// Log bounds: `first` is the first retained position, `last` the last
/// (`first - 1` when empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub first: u64,
    pub last: u64,
}

impl LogBounds {
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// A snapshot shipped by a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotOffer {
    pub sender: NodeId,
    pub position: u64,
    pub metadata: Vec<u8>,
}

/// Severity of a plugin log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// `wit-bindgen` lifts WIT enums through `_lift`; these are the remapped
/// enums' versions. The host only ever sends valid discriminants.
#[cfg(target_arch = "wasm32")]
mod lift {
    use super::*;

    macro_rules! lift_enum {
        ($name:ident { $($index:literal => $variant:ident),+ $(,)? }) => {
            impl $name {
                #[doc(hidden)]
                pub unsafe fn _lift(value: u8) -> Self {
                    match value {
                        $($index => $name::$variant,)+
                        other => panic!("invalid {} discriminant {}", stringify!($name), other),
                    }
                }
            }
        };
    }

    lift_enum!(ReadLevel { 0 => Linearizable, 1 => Lease, 2 => Local });
    lift_enum!(Consistency { 0 => Linearizable, 1 => Sequential, 2 => Eventual });
    lift_enum!(Role { 0 => Leader, 1 => Follower, 2 => Candidate, 3 => Learner, 4 => Replica, 5 => Sealed });
    lift_enum!(Level { 0 => Trace, 1 => Debug, 2 => Info, 3 => Warn, 4 => Error });
}
