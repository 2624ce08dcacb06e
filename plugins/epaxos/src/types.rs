//! Instance identities, ballots, commands and the per-instance record that
//! is persisted in the host kv area.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synod_guest_sdk::{NodeId, RequestId};

/// One slot of one replica's instance space. Slots start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    pub space: NodeId,
    pub slot: u64,
}

/// A ballot: `(round, node)` ordered lexicographically. The initial ballot
/// of instance `L.i` is `(0, L)`; recoveries use rounds above 0, so only
/// the command leader ever votes at round 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    pub fn initial(leader: NodeId) -> Ballot {
        Ballot {
            round: 0,
            node: leader,
        }
    }

    pub fn is_initial_for(&self, instance: InstanceId) -> bool {
        *self == Ballot::initial(instance.space)
    }
}

/// One client write carried by an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub id: RequestId,
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
    pub keys: Vec<u64>,
}

/// What an instance orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Chosen by a recovery when nothing can have been chosen; interferes
    /// with nothing and applies nothing.
    Noop,
    /// Client writes (a batch); interferes with any instance sharing a key.
    Writes(Vec<Write>),
    /// Orders linearizable reads: interferes with every write (and every
    /// barrier), applies nothing; reads waiting on it are answered when it
    /// executes at its command leader.
    Barrier,
    /// Ends the protocol for a live swap: interferes with everything;
    /// nothing ordered after it is applied.
    Seal,
}

impl Command {
    /// True when the two commands must be ordered relative to each other.
    pub fn interferes(&self, other: &Command) -> bool {
        match (self, other) {
            (Command::Noop, _) | (_, Command::Noop) => false,
            (Command::Writes(a), Command::Writes(b)) => a
                .iter()
                .flat_map(|w| w.keys.iter())
                .any(|key| b.iter().any(|w| w.keys.contains(key))),
            _ => true,
        }
    }

    /// Conflict keys, for the attribute indexes (barriers and seals have
    /// none: they interfere with everything).
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        let writes: &[Write] = match self {
            Command::Writes(writes) => writes,
            _ => &[],
        };
        writes.iter().flat_map(|w| w.keys.iter().copied())
    }

    pub fn is_global(&self) -> bool {
        matches!(self, Command::Barrier | Command::Seal)
    }
}

/// Dependencies: for each instance space, the highest slot this instance
/// depends on. It depends on every instance of that space at or below the
/// slot that interferes with it (the paper's meaning of `deps`).
pub type Deps = BTreeMap<NodeId, u64>;

/// Attributes agreed for an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub seq: u64,
    pub deps: Deps,
}

impl Attributes {
    /// Union: the larger seq and the per-space maximum of the deps.
    pub fn merge(&mut self, other: &Attributes) {
        self.seq = self.seq.max(other.seq);
        for (space, slot) in &other.deps {
            let entry = self.deps.entry(*space).or_insert(0);
            *entry = (*entry).max(*slot);
        }
    }

    /// True when `instance` (of another space or slot) is among the deps.
    pub fn covers(&self, instance: InstanceId) -> bool {
        self.deps
            .get(&instance.space)
            .is_some_and(|slot| *slot >= instance.slot)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Known only through a Prepare (a promise, no vote yet).
    None,
    PreAccepted,
    Accepted,
    Committed,
    Executed,
}

/// What a replica durably knows about one instance. `promised` and
/// `voted` are kept apart (Sutra 2019): a Prepare raises `promised` only,
/// while `voted` is the ballot at which `command`/`attributes` were
/// pre-accepted or accepted, which is what recovery must rank votes by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub status: Status,
    pub command: Option<Command>,
    pub attributes: Attributes,
    pub promised: Ballot,
    pub voted: Ballot,
    /// Pre-accepted at the initial ballot with exactly the attributes the
    /// command leader proposed: only such votes can have formed a fast
    /// quorum, so only they count as a possible fast commit in recovery.
    pub unchanged: bool,
    /// Conflict keys of every command this record ever held, and whether
    /// one was a barrier or seal: a record overwritten by a no-op still
    /// counts in the conflict index after a restart.
    pub seen_keys: Vec<u64>,
    pub seen_global: bool,
    /// The apply position this instance executed at (0 until executed).
    pub executed_at: u64,
}

impl Record {
    pub fn empty(instance: InstanceId) -> Record {
        Record {
            status: Status::None,
            command: None,
            attributes: Attributes {
                seq: 0,
                deps: Deps::new(),
            },
            promised: Ballot::initial(instance.space),
            voted: Ballot::initial(instance.space),
            unchanged: false,
            seen_keys: Vec::new(),
            seen_global: false,
            executed_at: 0,
        }
    }

    /// Sets the command, remembering its conflict keys.
    pub fn hold(&mut self, command: Command) {
        self.seen_global |= command.is_global();
        for key in command.keys() {
            if !self.seen_keys.contains(&key) {
                self.seen_keys.push(key);
            }
        }
        self.command = Some(command);
    }

    pub fn is_committed(&self) -> bool {
        self.status >= Status::Committed
    }

    /// The ballot recovery ranks this replica's vote by. The fixture
    /// without a last-voted ballot reports the promise instead, as the
    /// reference implementation does.
    pub fn vote_ballot(&self) -> Ballot {
        if cfg!(feature = "fixture-no-last-voted-ballot") {
            self.promised
        } else {
            self.voted
        }
    }
}

/// Keeps `Vec<u8>` compact in postcard (a plain byte string).
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(deserializer)?;
        Ok(bytes.to_vec())
    }
}
