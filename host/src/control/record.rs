//! The replicated control record: which nodes, components and regions the
//! cluster has agreed on, and the commands that change it.
//!
//! [`ControlState::apply`] is a pure function of the state and one command
//! (with the log index it was committed at), so every control-plane member
//! folds the same log into the same state. Commands are validated here, at
//! apply time, not only where they were proposed: two admins racing to
//! create the same region both get an answer, and exactly one wins.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

use crate::region::{MembershipTarget, ProtocolRef, RegionSpec};

/// Audit entries kept in the record (older ones are dropped).
pub const AUDIT_ENTRIES_MAX: usize = 1000;
/// Past epochs kept per region.
pub const EPOCHS_KEPT_MAX: usize = 256;
/// The refusal code when a node admits no more region replicas.
pub const NODE_FULL: &str = "node_full";
/// Answers to recent requests kept for retries (see [`ControlRequest::nonce`]).
pub const ANSWERS_KEPT_MAX: usize = 4096;

/// Where to reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// HTTP API, `host:port`.
    pub api: String,
    /// Node-to-node transport, `host:port`.
    pub peer: String,
}

/// A published component: the bytes live on nodes' disks by digest, the
/// record says what they are and who published them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub digest: String,
    pub name: String,
    pub version: String,
    /// The WIT package the component was built against.
    pub wit: String,
    pub consistency: String,
    pub capabilities: Vec<String>,
    pub size_bytes: u64,
    pub published_by: NodeId,
    pub published_at_ms: u64,
    /// The name of the token that published it (audit; `None` on a node
    /// without security).
    pub published_by_token: Option<String>,
}

/// Where a region is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionPhase {
    Active,
    /// Deletion recorded; these hosts have not yet confirmed their data is
    /// gone. The record disappears when the set is empty.
    Deleting {
        pending: BTreeSet<NodeId>,
    },
}

/// One epoch of a region: a protocol run from a start position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub protocol: ProtocolRef,
    /// What the operator asked for (`raft`, `raft@0.1.1`, `sha256:…`).
    pub requested: String,
    pub params: Vec<(String, String)>,
    pub voters: Vec<NodeId>,
    /// State-machine position the epoch started from (0 for the first).
    pub start_position: u64,
    pub began_at_ms: u64,
    /// Set when a later epoch replaced this one.
    pub ended_at_ms: Option<u64>,
    /// How the epoch came to be (created, swapped, rolled back: why).
    pub note: String,
    /// The replica hosts suggest should lead first (one that sealed at the
    /// start position), so the new protocol need not wait for an election
    /// timeout.
    pub first_leader: Option<NodeId>,
}

/// The step a live swap is at. The steps and their transitions are
/// described in docs/ARCHITECTURE.md ("Live swap").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapStep {
    /// Hosts fetch and compile the target component; writes still flow.
    Preparing,
    /// Hosts hold new writes and seal the running protocol.
    Sealing,
}

impl SwapStep {
    pub fn name(&self) -> &'static str {
        match self {
            SwapStep::Preparing => "preparing",
            SwapStep::Sealing => "sealing",
        }
    }
}

/// A seal report: the position a replica sealed at and its state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealReportRecord {
    pub position: u64,
    /// Hex of the host state machine's digest at `position`.
    pub digest: String,
}

/// A swap in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub from_epoch: u64,
    pub to: ProtocolRef,
    pub requested: String,
    pub params: Vec<(String, String)>,
    /// Members of the new epoch.
    pub voters: Vec<NodeId>,
    /// Proceed without every replica of a weakly consistent region.
    pub force: bool,
    pub step: SwapStep,
    pub prepared: BTreeSet<NodeId>,
    pub refused: BTreeMap<NodeId, String>,
    pub sealed: BTreeMap<NodeId, SealReportRecord>,
    pub began_at_ms: u64,
    pub step_at_ms: u64,
    pub actor: NodeId,
}

/// A region as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// The current epoch's spec (protocol, params, members, epoch).
    pub spec: RegionSpec,
    pub phase: RegionPhase,
    /// Every epoch, oldest first; the last is the current one.
    pub epochs: Vec<EpochRecord>,
    pub swap: Option<SwapRecord>,
    /// Nodes removed from the region that have not yet confirmed their
    /// data is deleted.
    pub retired: BTreeSet<NodeId>,
    pub created_at_ms: u64,
}

impl RegionRecord {
    /// The replica suggested to lead the current epoch first.
    pub fn first_leader(&self) -> Option<NodeId> {
        self.epochs.last().and_then(|epoch| epoch.first_leader)
    }

    /// The current spec as a fresh replica starts it: with the host
    /// parameter naming the replica that should lead first.
    pub fn spec_to_start(&self) -> RegionSpec {
        let mut spec = self.spec.clone();
        if let Some(first) = self.first_leader() {
            spec.params
                .retain(|(name, _)| name != crate::node::FIRST_LEADER_PARAM);
            spec.params.push((
                crate::node::FIRST_LEADER_PARAM.to_string(),
                first.to_string(),
            ));
        }
        spec
    }

    /// Every node that holds or must delete a replica.
    pub fn all_hosts(&self) -> BTreeSet<NodeId> {
        let mut hosts: BTreeSet<NodeId> = self
            .spec
            .voters
            .iter()
            .chain(self.spec.learners.iter())
            .copied()
            .collect();
        hosts.extend(self.retired.iter().copied());
        hosts
    }
}

/// One line of the audit history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub at_ms: u64,
    pub actor: NodeId,
    pub action: String,
}

/// The whole replicated record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub components: BTreeMap<String, ComponentRecord>,
    pub regions: BTreeMap<String, RegionRecord>,
    pub audit: VecDeque<AuditEntry>,
    /// Answers to the most recent requests, by (actor, nonce), oldest
    /// first: a proposal retried after a lost reply gets its first answer
    /// instead of being applied twice.
    pub answers: VecDeque<((NodeId, u64), ControlResponse)>,
    /// How many region replicas each node admits (`[limits] regions_max`,
    /// announced by the node itself); a node not listed admits any number.
    /// Checked when a command adds replicas, so every member refuses the
    /// same creations and a node never holds more than it announced.
    #[serde(default)]
    pub capacity: BTreeMap<NodeId, u32>,
}

/// A command with who sent it and when (the proposer's wall clock, for
/// people reading the history; nothing orders by it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub actor: NodeId,
    /// Random per request; a retry of the same request keeps it.
    pub nonce: u64,
    pub at_ms: u64,
    pub command: ControlCommand,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlCommand {
    /// Adds or re-addresses a node.
    SetNode {
        id: NodeId,
        api: String,
        peer: String,
    },
    Publish(ComponentRecord),
    /// A node announces how many region replicas it admits.
    SetCapacity {
        id: NodeId,
        regions_max: u32,
    },
    CreateRegion {
        spec: RegionSpec,
        requested: String,
    },
    /// New hosts and protocol membership target of a region (add, remove
    /// or move a replica). `expect_version` guards against a lost update.
    SetMembers {
        region: String,
        expect_version: u64,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        target: Option<MembershipTarget>,
    },
    DeleteRegion {
        region: String,
    },
    /// A host confirms it deleted its replica's data.
    ReplicaDeleted {
        region: String,
        node: NodeId,
    },
    SwapBegin {
        region: String,
        to: ProtocolRef,
        requested: String,
        params: Vec<(String, String)>,
        voters: Vec<NodeId>,
        force: bool,
    },
    /// A host has (or cannot get) the target component compiled.
    SwapPrepared {
        region: String,
        from_epoch: u64,
        node: NodeId,
        result: Result<(), String>,
    },
    /// Coordinator: every host is prepared; hold and seal now.
    SwapSeal {
        region: String,
        from_epoch: u64,
    },
    SwapSealed {
        region: String,
        from_epoch: u64,
        node: NodeId,
        report: SealReportRecord,
    },
    /// Coordinator: the next epoch starts at `start_position`, on the
    /// target protocol, or (`rollback`) on the old one again.
    SwapCommit {
        region: String,
        from_epoch: u64,
        start_position: u64,
        rollback: Option<String>,
        /// Seal reports the coordinator had besides the recorded ones
        /// (hosts send them straight to it, to save a commit).
        sealed: BTreeMap<NodeId, SealReportRecord>,
    },
    /// Coordinator: abandon a swap before anything was sealed.
    SwapAbort {
        region: String,
        from_epoch: u64,
        why: String,
    },
}

/// The answer to a command, as every member computes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Done,
    Refused { code: String, message: String },
}

impl ControlResponse {
    fn refused(code: &str, message: impl Into<String>) -> Self {
        ControlResponse::Refused {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl ControlState {
    /// Folds one committed command.
    pub fn apply(&mut self, index: u64, request: &ControlRequest) -> ControlResponse {
        let key = (request.actor, request.nonce);
        if let Some((_, answer)) = self.answers.iter().rev().find(|(k, _)| *k == key) {
            return answer.clone();
        }
        let response = self.apply_command(request);
        self.answers.push_back((key, response.clone()));
        while self.answers.len() > ANSWERS_KEPT_MAX {
            self.answers.pop_front();
        }
        if response == ControlResponse::Done
            && let Some(action) = audit_line(&request.command)
        {
            self.audit.push_back(AuditEntry {
                index,
                at_ms: request.at_ms,
                actor: request.actor,
                action,
            });
            while self.audit.len() > AUDIT_ENTRIES_MAX {
                self.audit.pop_front();
            }
        }
        response
    }

    fn apply_command(&mut self, request: &ControlRequest) -> ControlResponse {
        let at = request.at_ms;
        match &request.command {
            ControlCommand::SetNode { id, api, peer } => {
                self.nodes.insert(
                    *id,
                    NodeRecord {
                        api: api.clone(),
                        peer: peer.clone(),
                    },
                );
                ControlResponse::Done
            }
            ControlCommand::SetCapacity { id, regions_max } => {
                self.capacity.insert(*id, *regions_max);
                ControlResponse::Done
            }
            ControlCommand::Publish(component) => {
                // Publishing the same bytes again keeps the first record.
                self.components
                    .entry(component.digest.clone())
                    .or_insert_with(|| component.clone());
                ControlResponse::Done
            }
            ControlCommand::CreateRegion { spec, requested } => {
                // Checked here too: every node trusts what the record holds.
                if let Err(too_large) = spec.check_size() {
                    return ControlResponse::refused(too_large.code(), too_large.to_string());
                }
                if self.regions.contains_key(&spec.name) {
                    return ControlResponse::refused(
                        "region_exists",
                        format!("region {} already exists", spec.name),
                    );
                }
                if let Some(unknown) = spec.voters.iter().find(|id| !self.nodes.contains_key(id)) {
                    return ControlResponse::refused(
                        "unknown_node",
                        format!("replica {unknown} is not a node of the cluster"),
                    );
                }
                if let ProtocolRef::Component { digest } = &spec.protocol
                    && !self.components.contains_key(digest)
                {
                    return ControlResponse::refused(
                        "unknown_component",
                        format!("component sha256:{digest} is not published"),
                    );
                }
                let hosts: BTreeSet<NodeId> =
                    spec.voters.iter().chain(&spec.learners).copied().collect();
                if let Some(full) = self.refuse_full(&hosts) {
                    return full;
                }
                let first = EpochRecord {
                    epoch: spec.epoch,
                    protocol: spec.protocol.clone(),
                    requested: requested.clone(),
                    params: spec.params.clone(),
                    voters: spec.voters.clone(),
                    start_position: 0,
                    began_at_ms: at,
                    ended_at_ms: None,
                    note: "created".into(),
                    first_leader: spec.voters.iter().min().copied(),
                };
                self.regions.insert(
                    spec.name.clone(),
                    RegionRecord {
                        spec: spec.clone(),
                        phase: RegionPhase::Active,
                        epochs: vec![first],
                        swap: None,
                        retired: BTreeSet::new(),
                        created_at_ms: at,
                    },
                );
                ControlResponse::Done
            }
            ControlCommand::SetMembers {
                region,
                expect_version,
                voters,
                learners,
                target,
            } => {
                let Some(record) = self.active_region(region) else {
                    return missing_region(region);
                };
                if record.swap.is_some() {
                    return ControlResponse::refused(
                        "swap_in_progress",
                        format!("region {region} is being swapped; change members after it"),
                    );
                }
                if record.spec.version != *expect_version {
                    return ControlResponse::refused(
                        "conflict",
                        format!(
                            "region {region} changed meanwhile (version {} now, {expect_version} expected); retry",
                            record.spec.version
                        ),
                    );
                }
                if voters.is_empty() {
                    return ControlResponse::refused("invalid_membership", "no voters");
                }
                let mut changed = record.spec.clone();
                changed.voters = voters.clone();
                changed.learners = learners.clone();
                changed.membership_target = target.clone();
                if let Err(too_large) = changed.check_size() {
                    return ControlResponse::refused(too_large.code(), too_large.to_string());
                }
                let before = record.all_hosts();
                let now: BTreeSet<NodeId> = voters.iter().chain(learners.iter()).copied().collect();
                let added: BTreeSet<NodeId> = now.difference(&before).copied().collect();
                if let Some(full) = self.refuse_full(&added) {
                    return full;
                }
                let Some(record) = self.active_region(region) else {
                    return missing_region(region);
                };
                record.spec.voters = voters.clone();
                record.spec.learners = learners.clone();
                record.spec.membership_target = target.clone();
                record.spec.version += 1;
                for gone in before.difference(&now) {
                    record.retired.insert(*gone);
                }
                for back in &now {
                    record.retired.remove(back);
                }
                ControlResponse::Done
            }
            ControlCommand::DeleteRegion { region } => {
                let Some(record) = self.regions.get_mut(region) else {
                    return missing_region(region);
                };
                if let RegionPhase::Deleting { .. } = record.phase {
                    return ControlResponse::Done;
                }
                let pending = record.all_hosts();
                record.swap = None;
                record.phase = RegionPhase::Deleting { pending };
                ControlResponse::Done
            }
            ControlCommand::ReplicaDeleted { region, node } => {
                let Some(record) = self.regions.get_mut(region) else {
                    return ControlResponse::Done;
                };
                record.retired.remove(node);
                let finished = match &mut record.phase {
                    RegionPhase::Deleting { pending } => {
                        pending.remove(node);
                        pending.is_empty()
                    }
                    RegionPhase::Active => false,
                };
                if finished {
                    self.regions.remove(region);
                }
                ControlResponse::Done
            }
            ControlCommand::SwapBegin {
                region,
                to,
                requested,
                params,
                voters,
                force,
            } => {
                if let ProtocolRef::Component { digest } = to
                    && !self.components.contains_key(digest)
                {
                    return ControlResponse::refused(
                        "unknown_component",
                        format!("component sha256:{digest} is not published"),
                    );
                }
                let known = self.nodes.clone();
                if let Some(record) = self.regions.get(region) {
                    let hosts = record.all_hosts();
                    let added = voters.iter().filter(|id| !hosts.contains(id)).copied();
                    if let Some(full) = self.refuse_full(&added.collect()) {
                        return full;
                    }
                }
                let Some(record) = self.active_region(region) else {
                    return missing_region(region);
                };
                if let Some(swap) = &record.swap {
                    return ControlResponse::refused(
                        "swap_in_progress",
                        format!(
                            "region {region} is already being swapped to {} (step {})",
                            swap.requested,
                            swap.step.name()
                        ),
                    );
                }
                if voters.is_empty() {
                    return ControlResponse::refused("invalid_membership", "no voters");
                }
                if let Err(too_large) = crate::region::spec_limits::check_params(
                    params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ) {
                    return ControlResponse::refused(too_large.code(), too_large.to_string());
                }
                if let Some(unknown) = voters.iter().find(|id| !known.contains_key(id)) {
                    return ControlResponse::refused(
                        "unknown_node",
                        format!("replica {unknown} is not a node of the cluster"),
                    );
                }
                // The replicas that seal must be a majority of the new
                // voters (see swap/mod.rs), so at least that many of them
                // must be voters now.
                let kept = voters
                    .iter()
                    .filter(|id| record.spec.voters.contains(id))
                    .count();
                if kept < voters.len() / 2 + 1 {
                    return ControlResponse::refused(
                        "invalid_membership",
                        format!(
                            "a swap's new voters must be mostly current voters ({kept} of {:?} are voters of {:?} now): swap onto the current replicas, then add replicas with a membership change or a move",
                            voters, record.spec.voters
                        ),
                    );
                }
                record.swap = Some(SwapRecord {
                    from_epoch: record.spec.epoch,
                    to: to.clone(),
                    requested: requested.clone(),
                    params: params.clone(),
                    voters: voters.clone(),
                    force: *force,
                    step: SwapStep::Preparing,
                    prepared: BTreeSet::new(),
                    refused: BTreeMap::new(),
                    sealed: BTreeMap::new(),
                    began_at_ms: at,
                    step_at_ms: at,
                    actor: request.actor,
                });
                ControlResponse::Done
            }
            ControlCommand::SwapPrepared {
                region,
                from_epoch,
                node,
                result,
            } => {
                let Some(swap) = self.swap_at(region, *from_epoch) else {
                    return stale_swap(region);
                };
                match result {
                    Ok(()) => {
                        swap.prepared.insert(*node);
                    }
                    Err(why) => {
                        swap.refused.insert(*node, why.clone());
                    }
                }
                ControlResponse::Done
            }
            ControlCommand::SwapSeal { region, from_epoch } => {
                let Some(swap) = self.swap_at(region, *from_epoch) else {
                    return stale_swap(region);
                };
                if swap.step == SwapStep::Preparing {
                    swap.step = SwapStep::Sealing;
                    swap.step_at_ms = at;
                }
                ControlResponse::Done
            }
            ControlCommand::SwapSealed {
                region,
                from_epoch,
                node,
                report,
            } => {
                let Some(swap) = self.swap_at(region, *from_epoch) else {
                    return stale_swap(region);
                };
                if swap.step != SwapStep::Sealing {
                    return ControlResponse::refused("stale", "the swap is not sealing");
                }
                swap.sealed.insert(*node, report.clone());
                ControlResponse::Done
            }
            ControlCommand::SwapCommit {
                region,
                from_epoch,
                start_position,
                rollback,
                sealed,
            } => {
                let Some(record) = self.active_region(region) else {
                    return missing_region(region);
                };
                let Some(mut swap) = record.swap.take_if(|s| s.from_epoch == *from_epoch) else {
                    return stale_swap(region);
                };
                swap.sealed
                    .extend(sealed.iter().map(|(id, r)| (*id, r.clone())));
                let epoch = record.spec.epoch + 1;
                let (protocol, requested, params, voters, note) = match rollback {
                    None => (
                        swap.to.clone(),
                        swap.requested.clone(),
                        swap.params.clone(),
                        swap.voters.clone(),
                        format!("swapped from epoch {from_epoch}"),
                    ),
                    Some(why) => {
                        let current = record.epochs.last().cloned();
                        (
                            record.spec.protocol.clone(),
                            current.map_or_else(String::new, |e| e.requested),
                            record.spec.params.clone(),
                            record.spec.voters.clone(),
                            format!(
                                "swap to {} rolled back to the previous protocol: {why}",
                                swap.requested
                            ),
                        )
                    }
                };
                let first_leader = voters
                    .iter()
                    .filter(|id| swap.sealed.contains_key(id))
                    .min()
                    .copied();
                let before = record.all_hosts();
                record.spec.epoch = epoch;
                record.spec.protocol = protocol.clone();
                record.spec.params = params.clone();
                record.spec.voters = voters.clone();
                record.spec.learners.clear();
                record.spec.membership_target = None;
                record.spec.version += 1;
                let now: BTreeSet<NodeId> = voters.iter().copied().collect();
                for gone in before.difference(&now) {
                    record.retired.insert(*gone);
                }
                if let Some(last) = record.epochs.last_mut() {
                    last.ended_at_ms = Some(at);
                }
                record.epochs.push(EpochRecord {
                    epoch,
                    protocol,
                    requested,
                    params,
                    voters,
                    start_position: *start_position,
                    began_at_ms: at,
                    ended_at_ms: None,
                    note,
                    first_leader,
                });
                if record.epochs.len() > EPOCHS_KEPT_MAX {
                    record.epochs.remove(0);
                }
                ControlResponse::Done
            }
            ControlCommand::SwapAbort {
                region,
                from_epoch,
                why: _,
            } => {
                let Some(record) = self.active_region(region) else {
                    return missing_region(region);
                };
                match &record.swap {
                    Some(swap) if swap.from_epoch == *from_epoch => {
                        if swap.step == SwapStep::Sealing {
                            return ControlResponse::refused(
                                "stale",
                                "the swap is sealing; it can only commit or roll back",
                            );
                        }
                        record.swap = None;
                        ControlResponse::Done
                    }
                    _ => stale_swap(region),
                }
            }
        }
    }

    /// Region replicas `node` holds or still has to delete.
    pub fn hosted_count(&self, node: NodeId) -> usize {
        self.regions
            .values()
            .filter(|record| match &record.phase {
                RegionPhase::Active => record.all_hosts().contains(&node),
                RegionPhase::Deleting { pending } => pending.contains(&node),
            })
            .count()
    }

    /// Whether `node` admits one more region replica.
    pub fn has_room(&self, node: NodeId) -> bool {
        self.capacity
            .get(&node)
            .is_none_or(|max| self.hosted_count(node) < *max as usize)
    }

    /// The refusal when one of `adding` (nodes about to get a replica) is
    /// full.
    fn refuse_full(&self, adding: &BTreeSet<NodeId>) -> Option<ControlResponse> {
        let full: Vec<String> = adding
            .iter()
            .filter(|node| !self.has_room(**node))
            .map(|node| {
                let max = self.capacity.get(node).copied().unwrap_or_default();
                let holds = self.hosted_count(*node);
                format!("node {node} (holds {holds}, regions_max {max})")
            })
            .collect();
        (!full.is_empty()).then(|| {
            ControlResponse::refused(
                NODE_FULL,
                format!(
                    "no room for another region replica on {}: delete regions, place the region on other nodes, or raise [limits] regions_max there",
                    full.join(", ")
                ),
            )
        })
    }

    fn active_region(&mut self, name: &str) -> Option<&mut RegionRecord> {
        self.regions
            .get_mut(name)
            .filter(|r| r.phase == RegionPhase::Active)
    }

    fn swap_at(&mut self, region: &str, from_epoch: u64) -> Option<&mut SwapRecord> {
        self.active_region(region)?
            .swap
            .as_mut()
            .filter(|s| s.from_epoch == from_epoch)
    }
}

fn missing_region(region: &str) -> ControlResponse {
    ControlResponse::refused("unknown_region", format!("no region named {region}"))
}

fn stale_swap(region: &str) -> ControlResponse {
    ControlResponse::refused(
        "stale",
        format!("region {region} has no swap at that epoch"),
    )
}

/// What the audit history says about a command (progress reports of a
/// swap are left out; its begin, seal, commit and abort are kept).
fn audit_line(command: &ControlCommand) -> Option<String> {
    Some(match command {
        ControlCommand::SetNode { id, api, peer } => {
            format!("node {id} at api {api}, peer {peer}")
        }
        ControlCommand::SetCapacity { id, regions_max } => {
            format!("node {id} admits {regions_max} region replicas")
        }
        ControlCommand::Publish(c) => format!(
            "published {} {} (sha256:{}, {} bytes)",
            c.name, c.version, c.digest, c.size_bytes
        ),
        ControlCommand::CreateRegion { spec, requested } => format!(
            "created region {} with {requested} on {:?}",
            spec.name, spec.voters
        ),
        ControlCommand::SetMembers {
            region,
            voters,
            learners,
            ..
        } => format!("region {region}: replicas voters {voters:?} learners {learners:?}"),
        ControlCommand::DeleteRegion { region } => format!("region {region}: delete started"),
        ControlCommand::ReplicaDeleted { region, node } => {
            format!("region {region}: node {node} deleted its replica")
        }
        ControlCommand::SwapBegin {
            region, requested, ..
        } => format!("region {region}: swap to {requested} started"),
        ControlCommand::SwapSeal { region, from_epoch } => {
            format!("region {region}: epoch {from_epoch} sealing")
        }
        ControlCommand::SwapCommit {
            region,
            from_epoch,
            start_position,
            rollback,
            ..
        } => match rollback {
            None => format!(
                "region {region}: epoch {} began at position {start_position}",
                from_epoch + 1
            ),
            Some(why) => format!(
                "region {region}: swap rolled back into epoch {} at position {start_position}: {why}",
                from_epoch + 1
            ),
        },
        ControlCommand::SwapAbort { region, why, .. } => {
            format!("region {region}: swap abandoned: {why}")
        }
        ControlCommand::SwapPrepared { .. } | ControlCommand::SwapSealed { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: ControlCommand) -> ControlRequest {
        static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ControlRequest {
            actor: 1,
            nonce: NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at_ms: 7,
            command,
        }
    }

    #[test]
    fn a_retried_request_gets_its_first_answer() {
        let mut state = with_nodes();
        let create = request(ControlCommand::CreateRegion {
            spec: spec("r", vec![1]),
            requested: "native:raft".into(),
        });
        assert_eq!(state.apply(10, &create), ControlResponse::Done);
        assert_eq!(
            state.apply(11, &create),
            ControlResponse::Done,
            "the same request again (a retry) is answered, not applied twice"
        );
        let mut other = create.clone();
        other.nonce += 1_000_000;
        assert!(matches!(
            state.apply(12, &other),
            ControlResponse::Refused { .. }
        ));
    }

    fn spec(name: &str, voters: Vec<NodeId>) -> RegionSpec {
        RegionSpec::test_raft(name, voters)
    }

    fn with_nodes() -> ControlState {
        let mut state = ControlState::default();
        for id in 1..=3 {
            state.apply(
                id,
                &request(ControlCommand::SetNode {
                    id,
                    api: format!("127.0.0.1:{id}"),
                    peer: format!("127.0.0.1:1{id}"),
                }),
            );
        }
        state
    }

    fn refused_code(response: &ControlResponse) -> Option<&str> {
        match response {
            ControlResponse::Refused { code, .. } => Some(code),
            ControlResponse::Done => None,
        }
    }

    #[test]
    fn a_full_node_refuses_creations_until_a_deletion_completes() {
        let mut state = with_nodes();
        let cap = request(ControlCommand::SetCapacity {
            id: 2,
            regions_max: 1,
        });
        assert_eq!(state.apply(5, &cap), ControlResponse::Done);
        let first = request(ControlCommand::CreateRegion {
            spec: spec("a", vec![1, 2, 3]),
            requested: "native:raft".into(),
        });
        assert_eq!(state.apply(6, &first), ControlResponse::Done);
        let second = request(ControlCommand::CreateRegion {
            spec: spec("b", vec![1, 2, 3]),
            requested: "native:raft".into(),
        });
        let refused = state.apply(7, &second);
        assert_eq!(refused_code(&refused), Some(NODE_FULL), "{refused:?}");
        assert!(!state.regions.contains_key("b"));
        // Nodes without a capacity admit any number.
        let elsewhere = request(ControlCommand::CreateRegion {
            spec: spec("c", vec![1, 3]),
            requested: "native:raft".into(),
        });
        assert_eq!(state.apply(8, &elsewhere), ControlResponse::Done);
        // The slot is held until node 2 confirms the deletion.
        let delete = request(ControlCommand::DeleteRegion { region: "a".into() });
        assert_eq!(state.apply(9, &delete), ControlResponse::Done);
        let retry = request(second.command.clone());
        assert_eq!(refused_code(&state.apply(10, &retry)), Some(NODE_FULL));
        let confirmed = request(ControlCommand::ReplicaDeleted {
            region: "a".into(),
            node: 2,
        });
        assert_eq!(state.apply(11, &confirmed), ControlResponse::Done);
        assert!(state.has_room(2));
        let last = request(second.command.clone());
        assert_eq!(state.apply(12, &last), ControlResponse::Done);
    }

    #[test]
    fn adding_a_replica_to_a_full_node_is_refused() {
        let mut state = with_nodes();
        for (index, command) in [
            ControlCommand::SetCapacity {
                id: 3,
                regions_max: 1,
            },
            ControlCommand::CreateRegion {
                spec: spec("a", vec![1, 3]),
                requested: "native:raft".into(),
            },
            ControlCommand::CreateRegion {
                spec: spec("b", vec![1, 2]),
                requested: "native:raft".into(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                state.apply(index as u64 + 1, &request(command)),
                ControlResponse::Done
            );
        }
        let add = request(ControlCommand::SetMembers {
            region: "b".into(),
            expect_version: 1,
            voters: vec![1, 2],
            learners: vec![3],
            target: None,
        });
        assert_eq!(refused_code(&state.apply(10, &add)), Some(NODE_FULL));
        assert_eq!(state.regions["b"].spec.version, 1, "nothing changed");
        // Changing a region node 3 already hosts needs no new slot.
        let same = request(ControlCommand::SetMembers {
            region: "a".into(),
            expect_version: 1,
            voters: vec![1],
            learners: vec![3],
            target: None,
        });
        assert_eq!(state.apply(11, &same), ControlResponse::Done);
    }

    #[test]
    fn racing_creates_have_exactly_one_winner() {
        let mut state = with_nodes();
        let create = request(ControlCommand::CreateRegion {
            spec: spec("r", vec![1, 2, 3]),
            requested: "native:raft".into(),
        });
        assert_eq!(state.apply(10, &create), ControlResponse::Done);
        let again = request(create.command.clone());
        assert!(matches!(
            state.apply(11, &again),
            ControlResponse::Refused { code, .. } if code == "region_exists"
        ));
        let unknown = request(ControlCommand::CreateRegion {
            spec: spec("s", vec![1, 9]),
            requested: "native:raft".into(),
        });
        assert!(matches!(
            state.apply(12, &unknown),
            ControlResponse::Refused { .. }
        ));
    }

    #[test]
    fn a_swap_onto_mostly_new_voters_is_refused_up_front() {
        let mut state = with_nodes();
        state.apply(
            10,
            &request(ControlCommand::CreateRegion {
                spec: spec("r", vec![1]),
                requested: "native:standalone".into(),
            }),
        );
        let onto = |voters: Vec<NodeId>| {
            request(ControlCommand::SwapBegin {
                region: "r".into(),
                to: ProtocolRef::Native {
                    name: "raft".into(),
                },
                requested: "native:raft".into(),
                params: vec![],
                voters,
                force: false,
            })
        };
        assert!(matches!(
            state.apply(11, &onto(vec![1, 2, 3])),
            ControlResponse::Refused { code, .. } if code == "invalid_membership"
        ));
        assert!(matches!(
            state.apply(12, &onto(vec![2])),
            ControlResponse::Refused { .. }
        ));
        assert_eq!(state.apply(13, &onto(vec![1])), ControlResponse::Done);
    }

    #[test]
    fn delete_finishes_when_every_host_confirmed() {
        let mut state = with_nodes();
        state.apply(
            10,
            &request(ControlCommand::CreateRegion {
                spec: spec("r", vec![1, 2]),
                requested: "native:raft".into(),
            }),
        );
        let delete = request(ControlCommand::DeleteRegion { region: "r".into() });
        assert_eq!(state.apply(11, &delete), ControlResponse::Done);
        assert_eq!(
            state.apply(12, &delete),
            ControlResponse::Done,
            "idempotent"
        );
        state.apply(
            13,
            &request(ControlCommand::ReplicaDeleted {
                region: "r".into(),
                node: 1,
            }),
        );
        assert!(state.regions.contains_key("r"), "node 2 has not confirmed");
        state.apply(
            14,
            &request(ControlCommand::ReplicaDeleted {
                region: "r".into(),
                node: 2,
            }),
        );
        assert!(!state.regions.contains_key("r"));
    }

    #[test]
    fn a_swap_runs_its_steps_in_order_and_records_the_epoch() {
        let mut state = with_nodes();
        state.apply(
            10,
            &request(ControlCommand::CreateRegion {
                spec: spec("r", vec![1, 2, 3]),
                requested: "native:raft".into(),
            }),
        );
        let begin = request(ControlCommand::SwapBegin {
            region: "r".into(),
            to: ProtocolRef::Native {
                name: "standalone".into(),
            },
            requested: "native:standalone".into(),
            params: vec![],
            voters: vec![2],
            force: false,
        });
        assert_eq!(state.apply(11, &begin), ControlResponse::Done);
        let again = request(begin.command.clone());
        assert!(
            matches!(state.apply(12, &again), ControlResponse::Refused { code, .. } if code == "swap_in_progress")
        );
        let sealed = request(ControlCommand::SwapSealed {
            region: "r".into(),
            from_epoch: 1,
            node: 2,
            report: SealReportRecord {
                position: 5,
                digest: "ab".into(),
            },
        });
        assert!(
            matches!(state.apply(13, &sealed), ControlResponse::Refused { .. }),
            "no seal reports before the seal step"
        );
        state.apply(
            14,
            &request(ControlCommand::SwapSeal {
                region: "r".into(),
                from_epoch: 1,
            }),
        );
        assert_eq!(
            state.apply(15, &request(sealed.command.clone())),
            ControlResponse::Done
        );
        let abort = request(ControlCommand::SwapAbort {
            region: "r".into(),
            from_epoch: 1,
            why: "x".into(),
        });
        assert!(
            matches!(state.apply(16, &abort), ControlResponse::Refused { .. }),
            "a sealing swap cannot be abandoned"
        );
        let commit = request(ControlCommand::SwapCommit {
            region: "r".into(),
            from_epoch: 1,
            start_position: 5,
            rollback: None,
            sealed: BTreeMap::new(),
        });
        assert_eq!(state.apply(17, &commit), ControlResponse::Done);
        assert!(
            matches!(
                state.apply(18, &request(commit.command.clone())),
                ControlResponse::Refused { .. }
            ),
            "once"
        );
        let record = &state.regions["r"];
        assert_eq!(record.spec.epoch, 2);
        assert_eq!(record.spec.voters, vec![2]);
        assert_eq!(record.epochs.len(), 2);
        assert_eq!(record.epochs[1].start_position, 5);
        assert_eq!(record.retired, BTreeSet::from([1, 3]));
        assert!(record.swap.is_none());
    }
}
