//! Regions: replicated shards, each run on this node by one plugin instance.
//!
//! - [`core`]: the effects a plugin has during a callback (the `Host`
//!   implementation), staged so a trapped callback leaves no trace.
//! - [`replica`]: one plugin instance plus failure containment.
//! - [`cpu`]: CPU fairness: expensive regions run their calls at idle priority.
//! - [`driver`]: the tokio task feeding events to a replica in batches and
//!   releasing its outputs after they are durable (output commit).
//! - [`epoch`]: a replica's side of a live protocol swap (hold, seal,
//!   switch epoch).

pub mod core;
pub mod cpu;
pub mod driver;
pub mod epoch;
#[cfg(test)]
mod epoch_tests;
pub mod hibernate;
mod log;
pub mod pending;
pub mod quota;
pub mod replica;
mod snapshot_save;
#[cfg(test)]
mod snapshot_tests;
pub mod spec_limits;
pub mod weak;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

pub use self::log::{LogUndo, POSITION_MAX, READ_BYTES_MAX, RegionLog};

/// A validated region name: 1–64 of `[A-Za-z0-9_-]`, so it is safe in file
/// names and URLs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionName(Arc<str>);

#[derive(Debug, thiserror::Error)]
#[error("invalid region name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
pub struct InvalidRegionName(pub String);

impl RegionName {
    pub fn new(name: &str) -> Result<Self, InvalidRegionName> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(Arc::from(name)))
        } else {
            Err(InvalidRegionName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which protocol a region runs: a component digest, or a native protocol
/// linked into the host (for tests and to measure what Wasm costs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolRef {
    /// `sha256` hex of the component bytes.
    Component { digest: String },
    /// A protocol compiled into this binary, by name.
    Native { name: String },
}

/// A region as recorded durably: what it is and how to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub name: String,
    pub protocol: ProtocolRef,
    /// Protocol parameters passed to `init`.
    pub params: Vec<(String, String)>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Changes at every swap or reconfiguration (epoch fencing).
    pub epoch: u64,
    /// The membership an operator last asked for and the protocol
    /// accepted. Whichever replica leads later is asked for it again, so a
    /// change survives the loss of the leader that took it.
    pub membership_target: Option<MembershipTarget>,
    /// Bumped at every change of this spec, so catalog merges keep the newest.
    pub version: u64,
}

/// Voters and learners an operator asked a region's protocol to move to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipTarget {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl RegionSpec {
    /// A native Raft region at epoch 1, version 1 (unit tests).
    #[cfg(test)]
    pub(crate) fn test_raft(name: &str, voters: Vec<NodeId>) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            protocol: ProtocolRef::Native {
                name: "raft".into(),
            },
            params: vec![],
            voters,
            learners: vec![],
            epoch: 1,
            membership_target: None,
            version: 1,
        }
    }

    /// Whether `node` hosts a replica of this region.
    pub fn hosted_on(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}
