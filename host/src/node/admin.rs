//! Operator commands on regions and nodes. Each becomes a control-plane
//! proposal; the record validates it at apply time and every host's
//! reconciler carries it out (see `control::reconcile`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use synod_guest_sdk::NodeId;

use super::{Node, NodeError};
use crate::control::ControlError;
use crate::control::record::{ControlCommand, ControlState, NodeRecord, RegionPhase, RegionRecord};
use crate::region::driver::RegionHandle;
use crate::region::quota::QUOTA_PARAM_PREFIX;
use crate::region::{MembershipTarget, RegionName, RegionSpec};

/// How long an admin command waits for its effect on this node.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a new region's replicas go.
#[derive(Clone, Debug, Default)]
pub enum Placement {
    /// Every node for a replicating protocol, this node otherwise.
    #[default]
    Default,
    /// Exactly these nodes.
    Nodes(Vec<NodeId>),
    /// This many nodes, the least loaded first (fewest replicas, then id).
    Count(usize),
}

/// What a swap ended as (or, `done: false`, where it is when the wait
/// ran out: it goes on, and `GET /v1/regions/{r}/record` follows it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SwapOutcome {
    pub done: bool,
    /// The swap's step while not done.
    pub step: Option<String>,
    /// What the swap waits for while not done.
    pub waiting_for: Option<String>,
    pub region: String,
    pub epoch: u64,
    pub start_position: u64,
    pub requested: String,
    /// How the epoch came to be: swapped, or rolled back (and why).
    pub note: String,
    pub rolled_back: bool,
    pub seconds: f64,
}

impl Node {
    /// Creates a region replicated on `replicas` (default: every node for a
    /// replicating protocol, else just this node) and waits until this
    /// node's replica runs. This node must be among the replicas.
    pub async fn create_region(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
    ) -> Result<RegionHandle, NodeError> {
        self.create_region_on(name, protocol, params, None).await
    }

    pub async fn create_region_on(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
        replicas: Option<Vec<NodeId>>,
    ) -> Result<RegionHandle, NodeError> {
        let placement = replicas.map_or(Placement::Default, Placement::Nodes);
        let spec = self
            .create_region_placed(name, protocol, params, placement)
            .await?;
        if !spec.hosted_on(self.config.node_id) {
            return Err(NodeError::Invalid(
                "create the region on one of its replicas (this node is not among them)".into(),
            ));
        }
        self.wait_for_local_replica(name).await
    }

    /// Records a new region and returns its spec; the hosts start their
    /// replicas as they apply the record.
    pub async fn create_region_placed(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
        placement: Placement,
    ) -> Result<RegionSpec, NodeError> {
        let name = RegionName::new(name)?;
        self.config
            .region_limits
            .with_overrides(&params)
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        self.announce_once(&self.bootstrap_book()).await?;
        let state = self.control.read().await?;
        if state.regions.contains_key(name.as_str()) {
            return Err(NodeError::RegionExists(name.to_string()));
        }
        let resolved = self.resolve_protocol(protocol)?;
        let replicates = self.protocol_replicates(&resolved);
        let known: Vec<NodeId> = state.nodes.keys().copied().collect();
        let mut voters = match placement {
            Placement::Nodes(nodes) => nodes,
            Placement::Default if replicates => known.clone(),
            Placement::Default => vec![self.config.node_id],
            Placement::Count(count) => {
                if count == 0 || count > known.len() {
                    return Err(NodeError::Invalid(format!(
                        "{count} replicas asked, the cluster has {} node(s)",
                        known.len()
                    )));
                }
                let chosen = least_loaded(&state, &known, count);
                if chosen.len() < count {
                    return Err(NodeError::Control(ControlError::Refused {
                        code: crate::control::record::NODE_FULL.into(),
                        message: format!(
                            "{count} replicas asked, but only {} node(s) have room for another region (see [limits] regions_max)",
                            chosen.len()
                        ),
                    }));
                }
                chosen
            }
        };
        voters.sort_unstable();
        voters.dedup();
        if !replicates && voters.len() > 1 {
            return Err(NodeError::Invalid(
                "this protocol keeps a single copy (no replication capability): give it exactly one replica".into(),
            ));
        }
        if voters.is_empty() {
            return Err(NodeError::Invalid(
                "a region needs at least one replica".into(),
            ));
        }
        if let Some(unknown) = voters.iter().find(|id| !known.contains(id)) {
            return Err(NodeError::Invalid(format!(
                "replica {unknown} is not a known node"
            )));
        }
        let spec = RegionSpec {
            name: name.to_string(),
            protocol: resolved,
            params,
            voters,
            learners: Vec::new(),
            epoch: 1,
            membership_target: None,
            version: 1,
        };
        spec.check_size()?;
        self.control
            .propose(ControlCommand::CreateRegion {
                spec: spec.clone(),
                requested: protocol.to_string(),
            })
            .await
            .map_err(|error| match error {
                ControlError::Refused { code, .. } if code == "region_exists" => {
                    NodeError::RegionExists(name.to_string())
                }
                other => other.into(),
            })?;
        crate::failpoint::hit("create-after-record");
        crate::control::reconcile::reconcile_once(self).await;
        tracing::info!(region = %name, "region created");
        Ok(spec)
    }

    /// Waits until this node runs a replica of `name`.
    pub async fn wait_for_local_replica(&self, name: &str) -> Result<RegionHandle, NodeError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if let Some(handle) = self.read_regions().get(name).cloned() {
                return Ok(handle);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Invalid(format!(
                    "region {name} is recorded but its replica did not start here within {SETTLE_TIMEOUT:?}; see the node log"
                )));
            }
            crate::control::reconcile::reconcile_once(self).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts deleting a region (two phases: recorded, then each host
    /// deletes its data and confirms) and waits up to `wait` for every
    /// host. Returns the hosts that have not confirmed yet.
    pub async fn delete_region(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<BTreeSet<NodeId>, NodeError> {
        self.control
            .propose(ControlCommand::DeleteRegion {
                region: name.to_string(),
            })
            .await
            .map_err(|error| match error {
                ControlError::Refused { code, .. } if code == "unknown_region" => {
                    NodeError::UnknownRegion(name.to_string())
                }
                other => other.into(),
            })?;
        crate::failpoint::hit("delete-after-record");
        let deadline = Instant::now() + wait;
        loop {
            crate::control::reconcile::reconcile_once(self).await;
            let state = self.control.read().await?;
            let pending = match state.regions.get(name).map(|r| &r.phase) {
                None => return Ok(BTreeSet::new()),
                Some(RegionPhase::Deleting { pending }) => pending.clone(),
                Some(RegionPhase::Active) => {
                    return Err(NodeError::Invalid(format!(
                        "region {name} was re-created while being deleted"
                    )));
                }
            };
            if Instant::now() >= deadline {
                return Ok(pending);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The region's record, read linearizably.
    pub async fn region_record(&self, name: &str) -> Result<RegionRecord, NodeError> {
        self.control
            .read()
            .await?
            .regions
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::UnknownRegion(name.to_string()))
    }

    /// Sets a region's hosts and the membership its protocol is asked for.
    /// Nodes dropped from the hosts delete their replica once the record
    /// says so.
    pub async fn set_region_members(
        &self,
        name: &str,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        target: Option<MembershipTarget>,
    ) -> Result<(), NodeError> {
        for _ in 0..5 {
            let record = self.region_record(name).await?;
            let outcome = self
                .control
                .propose(ControlCommand::SetMembers {
                    region: name.to_string(),
                    expect_version: record.spec.version,
                    voters: voters.clone(),
                    learners: learners.clone(),
                    target: target.clone(),
                })
                .await;
            match outcome {
                Err(ControlError::Refused { code, .. }) if code == "conflict" => continue,
                other => return other.map_err(NodeError::from),
            }
        }
        Err(NodeError::Invalid(format!(
            "region {name} kept changing; retry"
        )))
    }

    /// Adds (or re-addresses) a node of the cluster.
    pub async fn add_node(&self, id: NodeId, api: String, peer: String) -> Result<(), NodeError> {
        if id == 0 || id > 0xFFFF {
            return Err(NodeError::Invalid(format!(
                "node id {id} is outside 1..=65535"
            )));
        }
        if id == self.config.node_id {
            return Err(NodeError::Invalid(
                "a node cannot re-address itself; restart it with the new address".into(),
            ));
        }
        if let Some(transport) = &self.transport {
            transport.set_peer(id, &peer);
        }
        self.control
            .propose(ControlCommand::SetNode { id, api, peer })
            .await?;
        Ok(())
    }

    /// Swaps a live region to another protocol (or version) and waits for
    /// the outcome. `replicas` are the new epoch's members (default: the
    /// current ones, or one of them for a single-copy protocol).
    pub async fn swap_region(
        &self,
        name: &str,
        to: &str,
        params: Option<Vec<(String, String)>>,
        replicas: Option<Vec<NodeId>>,
        force: bool,
        wait: Duration,
    ) -> Result<SwapOutcome, NodeError> {
        let started = Instant::now();
        self.announce_once(&self.bootstrap_book()).await?;
        let record = self.region_record(name).await?;
        if record.phase != RegionPhase::Active {
            return Err(NodeError::Invalid(format!(
                "region {name} is being deleted"
            )));
        }
        let target = self.resolve_protocol(to)?;
        let replicates = self.protocol_replicates(&target);
        let mut voters = match replicas {
            Some(nodes) => nodes,
            None if replicates => record.spec.voters.clone(),
            None => {
                let keep = if record.spec.voters.contains(&self.config.node_id) {
                    self.config.node_id
                } else {
                    record
                        .spec
                        .voters
                        .first()
                        .copied()
                        .unwrap_or(self.config.node_id)
                };
                vec![keep]
            }
        };
        voters.sort_unstable();
        voters.dedup();
        if !replicates && voters.len() != 1 {
            return Err(NodeError::Invalid(format!(
                "{to} keeps a single copy (no replication capability): swap to it with exactly one replica"
            )));
        }
        // Quotas stay with the region; protocol parameters do not carry
        // over to another protocol unless given.
        let params = params.unwrap_or_else(|| {
            record
                .spec
                .params
                .iter()
                .filter(|(k, _)| k.starts_with(QUOTA_PARAM_PREFIX))
                .cloned()
                .collect()
        });
        crate::region::spec_limits::check_params(
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        self.config
            .region_limits
            .with_overrides(&params)
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        let from_epoch = record.spec.epoch;
        self.control
            .propose(ControlCommand::SwapBegin {
                region: name.to_string(),
                to: target,
                requested: to.to_string(),
                params,
                voters,
                force,
            })
            .await?;
        tracing::info!(region = %name, to, from_epoch, "swap started");
        crate::failpoint::hit("swap-after-begin");
        let deadline = Instant::now() + wait;
        loop {
            let state = self.control.local();
            match state.regions.get(name) {
                None => {
                    return Err(NodeError::UnknownRegion(name.to_string()));
                }
                Some(record) if record.spec.epoch > from_epoch => {
                    let epoch = record.epochs.last().cloned();
                    let note = epoch.as_ref().map(|e| e.note.clone()).unwrap_or_default();
                    return Ok(SwapOutcome {
                        done: true,
                        step: None,
                        waiting_for: None,
                        region: name.to_string(),
                        epoch: record.spec.epoch,
                        start_position: epoch.as_ref().map_or(0, |e| e.start_position),
                        requested: epoch.map(|e| e.requested).unwrap_or_default(),
                        rolled_back: note.contains("rolled back"),
                        note,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                Some(record) if record.swap.is_none() => {
                    let why = state
                        .audit
                        .iter()
                        .rev()
                        .find(|a| {
                            a.action
                                .starts_with(&format!("region {name}: swap abandoned"))
                        })
                        .map(|a| a.action.clone())
                        .unwrap_or_else(|| "the swap was abandoned".into());
                    return Err(NodeError::Invalid(why));
                }
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                let record = state.regions.get(name);
                let step = record
                    .and_then(|r| r.swap.as_ref())
                    .map(|s| s.step.name().to_string());
                return Ok(SwapOutcome {
                    done: false,
                    step,
                    waiting_for: record
                        .and_then(|r| crate::swap::coordinator::waiting_for(self, r)),
                    region: name.to_string(),
                    epoch: from_epoch,
                    start_position: 0,
                    requested: to.to_string(),
                    note: format!(
                        "still in progress after {wait:?}; `synod region status {name}` follows it"
                    ),
                    rolled_back: false,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            let mut watch = self.control.watch();
            let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        }
    }
}

/// The `count` nodes hosting the fewest replicas (then lowest id).
fn least_loaded(state: &ControlState, known: &[NodeId], count: usize) -> Vec<NodeId> {
    let mut load: BTreeMap<NodeId, usize> = known
        .iter()
        .filter(|id| state.has_room(**id))
        .map(|id| (*id, 0))
        .collect();
    for record in state.regions.values() {
        for id in record.all_hosts() {
            if let Some(n) = load.get_mut(&id) {
                *n += 1;
            }
        }
    }
    let mut nodes: Vec<(usize, NodeId)> = load.into_iter().map(|(id, n)| (n, id)).collect();
    nodes.sort_unstable();
    nodes.into_iter().take(count).map(|(_, id)| id).collect()
}

/// Puts this node's address, the bootstrap addresses and the built-in
/// components into the record, retrying until a leader takes them.
pub(crate) async fn announce(node: Weak<Node>, bootstrap: BTreeMap<NodeId, NodeRecord>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        match node.announce_once(&bootstrap).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, "announcing to the control plane; will retry");
            }
        }
        drop(node);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Node {
    /// The bootstrap address book (with this node's own addresses).
    pub(crate) fn bootstrap_book(&self) -> BTreeMap<NodeId, NodeRecord> {
        let mut book: BTreeMap<NodeId, NodeRecord> =
            self.config.bootstrap.iter().cloned().collect();
        book.insert(
            self.config.node_id,
            NodeRecord {
                api: self.config.api_address.clone(),
                peer: self.config.peer_address.clone(),
            },
        );
        book
    }

    /// Records whatever of this node's address, the bootstrap addresses
    /// and the built-in components the record lacks.
    pub(crate) async fn announce_once(
        &self,
        bootstrap: &BTreeMap<NodeId, NodeRecord>,
    ) -> Result<(), ControlError> {
        let state = self.control.local();
        let mut commands = Vec::new();
        for (id, address) in bootstrap {
            let known = state.nodes.get(id);
            // Only this node decides its own address; others are filled in
            // when missing.
            let stale = if *id == self.config.node_id {
                known != Some(address)
            } else {
                known.is_none()
            };
            if stale {
                commands.push(ControlCommand::SetNode {
                    id: *id,
                    api: address.api.clone(),
                    peer: address.peer.clone(),
                });
            }
        }
        let regions_max = super::admission::regions_max(&self.config);
        if state.capacity.get(&self.config.node_id) != Some(&regions_max) {
            commands.push(ControlCommand::SetCapacity {
                id: self.config.node_id,
                regions_max,
            });
        }
        for (_, bytes) in super::builtin_components() {
            let digest = crate::engine::PluginEngine::digest(bytes);
            if !state.components.contains_key(&digest) {
                match self.store_component(bytes) {
                    Ok(record) => commands.push(ControlCommand::Publish(record)),
                    Err(error) => tracing::error!(%error, "a built-in component does not load"),
                }
            }
        }
        for command in commands {
            self.control.propose(command).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::record::ControlRequest;

    #[test]
    fn placement_by_count_skips_full_nodes() {
        let mut state = ControlState::default();
        let commands = (1..=3)
            .map(|id| ControlCommand::SetNode {
                id,
                api: String::new(),
                peer: String::new(),
            })
            .chain([ControlCommand::SetCapacity {
                id: 1,
                regions_max: 0,
            }]);
        for (nonce, command) in commands.enumerate() {
            let request = ControlRequest {
                actor: 1,
                nonce: nonce as u64,
                at_ms: 0,
                command,
            };
            state.apply(nonce as u64 + 1, &request);
        }
        assert_eq!(least_loaded(&state, &[1, 2, 3], 2), vec![2, 3]);
        assert_eq!(least_loaded(&state, &[1, 2, 3], 3).len(), 2);
    }
}
