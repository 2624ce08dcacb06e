//! Components as cluster objects: validated and stored by digest on this
//! node, recorded in the control plane on publish, fetched from a peer by
//! digest (and verified) when a replica needs one this node lacks, and
//! resolved from the names operators type.
//!
//! Name resolution (recorded in the region's epoch as `requested` beside
//! the digest it resolved to):
//! - `sha256:<digest>`: exactly that component;
//! - `<name>@<version>`: the component of that name and version;
//! - `<name>`: of the components of that name, the highest version
//!   (versions compare as dot-separated numbers, then as text), the first
//!   published on a tie;
//! - `native:<name>`: a protocol linked into the binary (tests, baselines).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use synod_guest_sdk::NodeId;

use super::{Node, NodeError};
use crate::control::ControlError;
use crate::control::network::{ControlReply, ControlRpc};
use crate::control::record::{ComponentRecord, ControlCommand};
use crate::engine::PluginEngine;
use crate::plugin::PluginSource;
use crate::region::{ProtocolRef, RegionSpec};

pub(crate) const COMPONENTS_DIR: &str = "components";
/// How long one peer may take to send a component.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Components built into this binary, stored at every start and published
/// into the control plane's record.
pub fn builtin_components() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("standalone", synod_plugin_artifacts::STANDALONE_WASM),
        ("raft", synod_plugin_artifacts::RAFT_WASM),
        ("multi-master", synod_plugin_artifacts::MULTI_MASTER_WASM),
        ("epaxos", synod_plugin_artifacts::EPAXOS_WASM),
    ]
}

/// A protocol linked into the binary, by name.
pub fn native_protocol(name: &str) -> Option<PluginSource> {
    native_protocols().remove(name)
}

/// Protocols linked into the binary that run without Wasm.
fn native_protocols() -> HashMap<&'static str, PluginSource> {
    HashMap::from([
        (
            "standalone",
            PluginSource::native::<synod_plugin_standalone::Standalone>(),
        ),
        ("raft", PluginSource::native::<synod_plugin_raft::Raft>()),
        (
            "multi-master",
            PluginSource::native::<synod_plugin_multi_master::MultiMaster>(),
        ),
        (
            "epaxos",
            PluginSource::native::<synod_plugin_epaxos::Epaxos>(),
        ),
    ])
}

/// A component stored on this node, as listed by the API.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentSummary {
    pub digest: String,
    pub name: String,
    pub version: String,
    pub consistency: &'static str,
    pub capabilities: Vec<&'static str>,
    pub size_bytes: usize,
    /// Who published it (from the control plane's record), if recorded.
    pub published_by: Option<NodeId>,
    pub published_at_ms: Option<u64>,
    /// The token that published it (its name), if recorded.
    pub published_by_token: Option<String>,
}

/// Compares two version strings: dot-separated numbers numerically, any
/// other part as text.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// The component `requested` names among `components` (see the module docs).
pub fn resolve_name<'a>(
    components: impl Iterator<Item = &'a ComponentRecord>,
    requested: &str,
) -> Option<&'a ComponentRecord> {
    let (name, version) = match requested.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (requested, None),
    };
    components
        .filter(|c| c.name == name && version.is_none_or(|v| c.version == v))
        .reduce(|best, c| {
            match compare_versions(&c.version, &best.version)
                .then(best.published_at_ms.cmp(&c.published_at_ms))
            {
                Ordering::Greater => c,
                _ => best,
            }
        })
}

impl Node {
    fn lock_components(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, ComponentSummary>> {
        self.components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates a component and stores it by digest on this node only.
    pub fn store_component(&self, bytes: &[u8]) -> Result<ComponentRecord, NodeError> {
        let loaded = self.engine.load(bytes)?;
        let path = format!("{COMPONENTS_DIR}/{}.wasm", loaded.digest);
        if self.disk.read(&path).is_err() {
            self.disk
                .write_atomic(&path, bytes)
                .map_err(|e| NodeError::Storage(format!("{path}: {e}")))?;
        }
        let summary = ComponentSummary {
            digest: loaded.digest.clone(),
            name: loaded.info.name.clone(),
            version: loaded.info.version.clone(),
            consistency: loaded.info.consistency.as_str(),
            capabilities: loaded.info.capabilities.names(),
            size_bytes: loaded.size_bytes,
            published_by: None,
            published_at_ms: None,
            published_by_token: None,
        };
        self.lock_components()
            .insert(loaded.digest.clone(), summary.clone());
        let (major, minor, patch) = crate::engine::WIT_VERSION;
        Ok(ComponentRecord {
            digest: summary.digest,
            name: summary.name,
            version: summary.version,
            wit: format!("{}@{major}.{minor}.{patch}", crate::engine::WIT_PACKAGE),
            consistency: summary.consistency.into(),
            capabilities: summary.capabilities.iter().map(|c| c.to_string()).collect(),
            size_bytes: summary.size_bytes as u64,
            published_by: self.config.node_id,
            published_at_ms: crate::control::wall_clock_ms(),
            published_by_token: None,
        })
    }

    /// Validates a component, stores it here and records it in the control
    /// plane; other nodes fetch the bytes when they need them.
    pub async fn publish(&self, bytes: &[u8]) -> Result<ComponentSummary, NodeError> {
        let record = self.store_component(bytes)?;
        self.publish_record(record).await
    }

    /// Records a component stored here by [`Node::store_component`].
    pub async fn publish_record(
        &self,
        record: ComponentRecord,
    ) -> Result<ComponentSummary, NodeError> {
        let digest = record.digest.clone();
        self.control
            .propose(ControlCommand::Publish(record))
            .await?;
        self.components()
            .into_iter()
            .find(|c| c.digest == digest)
            .ok_or_else(|| NodeError::Storage(format!("component {digest} vanished")))
    }

    /// Loads every component stored earlier.
    pub(crate) fn load_published(&self) -> Result<(), NodeError> {
        let files = self
            .disk
            .list(COMPONENTS_DIR)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        for file in files.iter().filter(|f| f.ends_with(".wasm")) {
            let path = format!("{COMPONENTS_DIR}/{file}");
            let bytes = self
                .disk
                .read(&path)
                .map_err(|e| NodeError::Storage(format!("{path}: {e}")))?;
            let digest = PluginEngine::digest(&bytes);
            if file.strip_suffix(".wasm") != Some(digest.as_str()) {
                tracing::warn!(%path, sha256 = %digest, "skipping a stored component whose bytes do not match its name (damaged)");
                continue;
            }
            if let Err(error) = self.store_component(&bytes) {
                tracing::warn!(%path, %error, "skipping a stored component that no longer loads");
            }
        }
        Ok(())
    }

    /// Components published in the cluster (from this node's copy of the
    /// record) and any stored here that are not yet recorded.
    pub fn components(&self) -> Vec<ComponentSummary> {
        let state = self.control.local();
        let mut local = self.lock_components().clone();
        for (digest, record) in &state.components {
            if let Some(summary) = local.get_mut(digest) {
                summary.published_by = Some(record.published_by);
                summary.published_at_ms = Some(record.published_at_ms);
                summary.published_by_token = record.published_by_token.clone();
            }
        }
        let mut list: Vec<ComponentSummary> = local.into_values().collect();
        for (digest, record) in &state.components {
            if list.iter().all(|c| &c.digest != digest) {
                list.push(ComponentSummary {
                    digest: digest.clone(),
                    name: record.name.clone(),
                    version: record.version.clone(),
                    consistency: consistency_name(&record.consistency),
                    capabilities: Vec::new(),
                    size_bytes: record.size_bytes as usize,
                    published_by: Some(record.published_by),
                    published_at_ms: Some(record.published_at_ms),
                    published_by_token: record.published_by_token.clone(),
                });
            }
        }
        list
    }

    /// Turns a protocol name from a request into a durable reference (see
    /// the module docs for the rule).
    pub fn resolve_protocol(&self, protocol: &str) -> Result<ProtocolRef, NodeError> {
        if let Some(name) = protocol.strip_prefix("native:") {
            return if native_protocols().contains_key(name) {
                Ok(ProtocolRef::Native { name: name.into() })
            } else {
                Err(NodeError::UnknownProtocol(protocol.into()))
            };
        }
        let state = self.control.local();
        if let Some(digest) = protocol.strip_prefix("sha256:") {
            return if state.components.contains_key(digest) {
                Ok(ProtocolRef::Component {
                    digest: digest.into(),
                })
            } else {
                Err(NodeError::UnknownProtocol(protocol.into()))
            };
        }
        resolve_name(state.components.values(), protocol)
            .map(|c| ProtocolRef::Component {
                digest: c.digest.clone(),
            })
            .ok_or_else(|| NodeError::UnknownProtocol(protocol.into()))
    }

    /// Whether the protocol replicates (more than one replica makes sense).
    pub(crate) fn protocol_replicates(&self, protocol: &ProtocolRef) -> bool {
        match protocol {
            ProtocolRef::Native { name } => {
                native_protocol(name).is_some_and(|s| s.info().capabilities.replication)
            }
            ProtocolRef::Component { digest } => self
                .control
                .local()
                .components
                .get(digest)
                .is_some_and(|c| c.capabilities.iter().any(|n| n == "replication")),
        }
    }

    /// The declared consistency of a protocol (`eventual` ones need every
    /// replica sealed before a swap).
    pub(crate) fn protocol_consistency(&self, protocol: &ProtocolRef) -> String {
        match protocol {
            ProtocolRef::Native { name } => native_protocol(name)
                .map(|s| s.info().consistency.as_str().to_string())
                .unwrap_or_default(),
            ProtocolRef::Component { digest } => self
                .control
                .local()
                .components
                .get(digest)
                .map(|c| c.consistency.clone())
                .unwrap_or_default(),
        }
    }

    /// The bytes of a component stored here, verified against its digest.
    pub(crate) fn component_bytes(&self, digest: &str) -> Option<Vec<u8>> {
        let path = format!("{COMPONENTS_DIR}/{digest}.wasm");
        let bytes = self.disk.read(&path).ok()?;
        (PluginEngine::digest(&bytes) == digest).then_some(bytes)
    }

    /// Makes sure the component of `protocol` is stored here, fetching it
    /// from peers (and verifying its hash) if not.
    pub(crate) async fn ensure_component(&self, protocol: &ProtocolRef) -> Result<(), NodeError> {
        let ProtocolRef::Component { digest } = protocol else {
            return Ok(());
        };
        if self.component_bytes(digest).is_some() {
            return Ok(());
        }
        let state = self.control.local();
        let mut peers: Vec<NodeId> = state
            .components
            .get(digest)
            .map(|c| c.published_by)
            .into_iter()
            .collect();
        peers.extend(state.nodes.keys().copied());
        peers.retain(|id| *id != self.config.node_id);
        peers.dedup();
        let mut reasons = Vec::new();
        for peer in peers {
            let reply = self
                .control
                .rpc()
                .call(
                    peer,
                    &ControlRpc::FetchComponent {
                        digest: digest.clone(),
                    },
                    FETCH_TIMEOUT,
                )
                .await;
            match reply {
                Ok(ControlReply::Component(bytes)) => {
                    let found = PluginEngine::digest(&bytes);
                    if found != *digest {
                        reasons.push(format!("node {peer} sent bytes hashing to {found}"));
                        tracing::warn!(peer, %digest, %found, "a peer sent a component that does not match its digest");
                        continue;
                    }
                    self.store_component(&bytes)?;
                    tracing::info!(peer, %digest, "fetched a component from a peer");
                    return Ok(());
                }
                Ok(other) => reasons.push(format!("node {peer}: {other:?}")),
                Err(error) => reasons.push(error.to_string()),
            }
        }
        Err(NodeError::Control(ControlError::NoLeader(format!(
            "component sha256:{digest} is not stored here and no peer sent it ({})",
            reasons.join("; ")
        ))))
    }

    pub(crate) fn plugin_source(&self, spec: &RegionSpec) -> Result<PluginSource, NodeError> {
        self.source_of(&spec.name, &spec.protocol)
    }

    /// A runnable source for `protocol` (its component must be stored here).
    pub(crate) fn source_of(
        &self,
        region: &str,
        protocol: &ProtocolRef,
    ) -> Result<PluginSource, NodeError> {
        match protocol {
            ProtocolRef::Native { name } => native_protocols()
                .remove(name.as_str())
                .ok_or_else(|| NodeError::UnknownProtocol(format!("native:{name}"))),
            ProtocolRef::Component { digest } => {
                let path = format!("{COMPONENTS_DIR}/{digest}.wasm");
                let bytes = self
                    .disk
                    .read(&path)
                    .map_err(|_| NodeError::MissingComponent {
                        region: region.to_string(),
                        digest: digest.clone(),
                        path: path.clone(),
                    })?;
                // Content-addressed: bytes that do not hash to their name
                // are damaged, and must not run in place of the original.
                let found = PluginEngine::digest(&bytes);
                if found != *digest {
                    return Err(NodeError::Storage(format!(
                        "component file {path} of region {region} is damaged: its sha256 is {found}; \
                         publish the original component again"
                    )));
                }
                let component = self.engine.load(&bytes)?;
                Ok(PluginSource::Wasm {
                    engine: self.engine.clone(),
                    component,
                })
            }
        }
    }
}

fn consistency_name(name: &str) -> &'static str {
    match name {
        "linearizable" => "linearizable",
        "sequential" => "sequential",
        "eventual" => "eventual",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str, at: u64) -> ComponentRecord {
        ComponentRecord {
            digest: format!("{name}-{version}-{at}"),
            name: name.into(),
            version: version.into(),
            wit: String::new(),
            consistency: "linearizable".into(),
            capabilities: vec![],
            size_bytes: 1,
            published_by: 1,
            published_by_token: None,
            published_at_ms: at,
        }
    }

    #[test]
    fn a_bare_name_resolves_to_the_highest_version() {
        let all = [
            record("raft", "0.1.10", 1),
            record("raft", "0.1.9", 2),
            record("raft", "0.1.10", 3),
            record("other", "9.0.0", 4),
        ];
        let best = resolve_name(all.iter(), "raft").map(|c| c.digest.as_str());
        assert_eq!(
            best,
            Some("raft-0.1.10-1"),
            "numeric order, first published on a tie"
        );
        let exact = resolve_name(all.iter(), "raft@0.1.9").map(|c| c.digest.as_str());
        assert_eq!(exact, Some("raft-0.1.9-2"));
        assert!(resolve_name(all.iter(), "raft@2.0").is_none());
        assert!(resolve_name(all.iter(), "nothing").is_none());
    }
}
