//! Cluster metadata every node holds: the nodes and their addresses, and
//! the regions with the nodes that host them.
//!
//! Nodes exchange their whole catalog periodically and merge what they
//! receive (anti-entropy), so a node that was down when a region was created
//! or a node was added learns it when it comes back. Every entry carries a
//! version; a merge keeps the higher one, and equal versions with different
//! contents resolve the same way on every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

use crate::region::RegionSpec;

/// Parameters a region spec may carry.
pub const REGION_PARAMS_MAX: usize = 64;
/// Bytes of one parameter name.
pub const REGION_PARAM_NAME_BYTES_MAX: usize = 128;
/// Bytes of all parameter names and values of one spec together.
pub const REGION_PARAMS_BYTES_MAX: usize = 64 * 1024;
/// Voters, learners and membership-target entries of one spec, each.
pub const REGION_MEMBERS_MAX: usize = 1024;

/// Why a region spec was refused: it is over a size limit. Specs travel in
/// every catalog push to every node, so an oversized one would cost every
/// link, every 500 ms, forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecTooLarge {
    #[error("region name {name:?} is not 1..=64 characters of [A-Za-z0-9_-]")]
    Name { name: String },
    #[error("{count} params; the limit is {REGION_PARAMS_MAX}")]
    ParamCount { count: usize },
    #[error("param name of {bytes} bytes; the limit is {REGION_PARAM_NAME_BYTES_MAX}")]
    ParamName { bytes: usize },
    #[error("params hold {bytes} bytes; the limit is {REGION_PARAMS_BYTES_MAX}")]
    ParamBytes { bytes: usize },
    #[error("{count} {what}; the limit is {REGION_MEMBERS_MAX}")]
    Members { what: &'static str, count: usize },
}

impl SpecTooLarge {
    /// The API's error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SpecTooLarge::Name { .. } => "invalid_region_name",
            SpecTooLarge::ParamCount { .. } => "too_many_params",
            SpecTooLarge::ParamName { .. } | SpecTooLarge::ParamBytes { .. } => "params_too_large",
            SpecTooLarge::Members { .. } => "too_many_replicas",
        }
    }
}

/// Checks `params` against the size limits.
pub fn check_params<'a>(
    params: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), SpecTooLarge> {
    let count = params.len();
    if count > REGION_PARAMS_MAX {
        return Err(SpecTooLarge::ParamCount { count });
    }
    let mut bytes = 0;
    for (name, value) in params {
        if name.len() > REGION_PARAM_NAME_BYTES_MAX {
            return Err(SpecTooLarge::ParamName { bytes: name.len() });
        }
        bytes += name.len() + value.len();
    }
    if bytes > REGION_PARAMS_BYTES_MAX {
        return Err(SpecTooLarge::ParamBytes { bytes });
    }
    Ok(())
}

impl RegionSpec {
    /// Checks the spec against the size limits (name, params, members).
    pub fn check_size(&self) -> Result<(), SpecTooLarge> {
        if crate::region::RegionName::new(&self.name).is_err() {
            return Err(SpecTooLarge::Name {
                name: self.name.chars().take(80).collect(),
            });
        }
        check_params(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let target = self.membership_target.as_ref();
        for (what, count) in [
            ("voters", self.voters.len()),
            ("learners", self.learners.len()),
            ("target voters", target.map_or(0, |t| t.voters.len())),
            ("target learners", target.map_or(0, |t| t.learners.len())),
        ] {
            if count > REGION_MEMBERS_MAX {
                return Err(SpecTooLarge::Members { what, count });
            }
        }
        Ok(())
    }
}

/// Where to reach a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// HTTP API, `host:port`.
    pub api: String,
    /// Node-to-node transport, `host:port`.
    pub peer: String,
    pub version: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub nodes: BTreeMap<NodeId, NodeAddress>,
    pub regions: BTreeMap<String, RegionSpec>,
}

/// What a merge changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CatalogChanges {
    pub nodes: Vec<(NodeId, NodeAddress)>,
    pub regions: Vec<RegionSpec>,
}

impl CatalogChanges {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.regions.is_empty()
    }
}

/// Deterministic tie-break between two entries of equal version.
fn wins<T: Serialize>(candidate: &T, current: &T) -> bool {
    let a = postcard::to_allocvec(candidate).unwrap_or_default();
    let b = postcard::to_allocvec(current).unwrap_or_default();
    a > b
}

impl Catalog {
    /// Merges `other` into `self`; returns the entries that changed here.
    pub fn merge(&mut self, other: &Catalog) -> CatalogChanges {
        let mut changes = CatalogChanges::default();
        for (id, address) in &other.nodes {
            let take = match self.nodes.get(id) {
                None => true,
                Some(current) => {
                    address.version > current.version
                        || (address.version == current.version
                            && address != current
                            && wins(address, current))
                }
            };
            if take {
                self.nodes.insert(*id, address.clone());
                changes.nodes.push((*id, address.clone()));
            }
        }
        for spec in other.regions.values() {
            if self.absorb_region(spec) {
                changes.regions.push(spec.clone());
            }
        }
        changes
    }

    /// Takes `spec` if it is newer than what is known; returns whether it did.
    pub fn absorb_region(&mut self, spec: &RegionSpec) -> bool {
        let take = match self.regions.get(&spec.name) {
            None => true,
            Some(current) => {
                spec.version > current.version
                    || (spec.version == current.version && spec != current && wins(spec, current))
            }
        };
        if take {
            self.regions.insert(spec.name.clone(), spec.clone());
        }
        take
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::ProtocolRef;

    fn spec(name: &str, version: u64, voters: Vec<NodeId>) -> RegionSpec {
        RegionSpec {
            name: name.into(),
            protocol: ProtocolRef::Native {
                name: "standalone".into(),
            },
            params: vec![],
            voters,
            learners: vec![],
            epoch: 1,
            membership_target: None,
            version,
        }
    }

    fn address(port: u16, version: u64) -> NodeAddress {
        NodeAddress {
            api: format!("127.0.0.1:{port}"),
            peer: format!("127.0.0.1:{}", port + 100),
            version,
        }
    }

    #[test]
    fn merge_takes_new_and_newer_entries_only() {
        let mut a = Catalog::default();
        a.nodes.insert(1, address(1, 1));
        a.regions.insert("r".into(), spec("r", 2, vec![1, 2]));
        let mut b = Catalog::default();
        b.nodes.insert(1, address(9, 0));
        b.nodes.insert(2, address(2, 1));
        b.regions.insert("r".into(), spec("r", 1, vec![1]));
        b.regions.insert("s".into(), spec("s", 1, vec![2]));
        let changes = a.merge(&b);
        assert_eq!(changes.nodes.len(), 1, "only the unknown node");
        assert_eq!(changes.regions.len(), 1, "only the unknown region");
        assert_eq!(a.regions["r"].voters, vec![1, 2], "the newer spec stays");
        assert!(a.merge(&b).is_empty(), "merging again changes nothing");
    }

    #[test]
    fn oversized_specs_are_refused() {
        assert_eq!(spec("r", 1, vec![1]).check_size(), Ok(()));
        let mut big = spec("r", 1, vec![1]);
        big.params = vec![("p".into(), "x".repeat(REGION_PARAMS_BYTES_MAX))];
        assert!(matches!(
            big.check_size(),
            Err(SpecTooLarge::ParamBytes { .. })
        ));
        big.params = (0..=REGION_PARAMS_MAX)
            .map(|i| (format!("p{i}"), String::new()))
            .collect();
        assert!(matches!(
            big.check_size(),
            Err(SpecTooLarge::ParamCount { .. })
        ));
        big.params = vec![];
        big.name = "x".repeat(65);
        assert!(matches!(big.check_size(), Err(SpecTooLarge::Name { .. })));
        let mut crowded = spec("r", 1, vec![1; REGION_MEMBERS_MAX + 1]);
        assert!(crowded.check_size().is_err());
        crowded.voters = vec![1];
        assert_eq!(crowded.check_size(), Ok(()));
    }

    #[test]
    fn equal_versions_resolve_identically_everywhere() {
        let x = spec("r", 3, vec![1, 2]);
        let y = spec("r", 3, vec![1, 3]);
        let mut a = Catalog::default();
        a.absorb_region(&x);
        a.absorb_region(&y);
        let mut b = Catalog::default();
        b.absorb_region(&y);
        b.absorb_region(&x);
        assert_eq!(a, b);
    }
}
