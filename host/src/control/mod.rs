//! The control plane: a cluster-wide, agreed record of nodes, published
//! components, regions and their epochs, replicated with `openraft` by a
//! configured set of voting nodes (every other node follows as a learner,
//! so every node holds a current copy to reconcile against).
//!
//! - [`record`]: the replicated state and the commands that change it;
//! - [`store`]: the Raft log, vote and snapshots in the node's `control/` WAL;
//! - [`network`]: control RPCs over the node transport;
//! - [`reconcile`]: what a host does to make its replicas match the record.
//!
//! Admin commands go through [`ControlPlane::propose`] (forwarded to the
//! leader) and reads through [`ControlPlane::read`] (linearizable: a
//! quorum-confirmed read index, waited for locally).

pub mod network;
pub mod reconcile;
pub mod record;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;
use tokio::sync::watch;

use self::network::{ControlNetworkFactory, ControlReply, ControlRpc, RpcTable};
use self::record::{ControlCommand, ControlRequest, ControlResponse, ControlState, NodeRecord};
use self::store::{StoreCompactor, StoreImage};
use crate::storage::commit::{CheckpointPolicy, GroupCommit};
use crate::storage::disk::Disk;
use crate::storage::wal::{Wal, WalOptions};
use crate::transport::Transport;

openraft::declare_raft_types!(
    /// openraft's types for the control plane.
    pub ControlConfig:
        D = ControlRequest,
        R = ControlResponse,
        NodeId = NodeId,
        Node = ControlNode,
        Entry = openraft::Entry<ControlConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A control-plane member as openraft records it (routing goes by node id
/// through the transport; the addresses are informative).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlNode {
    pub api: String,
    pub peer: String,
}

impl std::fmt::Display for ControlNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api {} peer {}", self.api, self.peer)
    }
}

/// The directory of the control plane's WAL inside the data directory.
pub const CONTROL_WAL_DIR: &str = "control";

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// The nodes that vote (IoTDB's partition-table group); every other
    /// node is a learner. Default: every bootstrap node. The lowest id
    /// among them initializes the group at its first start.
    pub voters: Vec<NodeId>,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Committed entries between two snapshots.
    pub snapshot_every: u64,
    /// How long a proposal or read may wait for a leader.
    pub request_timeout: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            voters: Vec::new(),
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            snapshot_every: 1000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a control-plane operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The record refused the command (it changed nothing).
    #[error("{message}")]
    Refused { code: String, message: String },
    #[error("the control plane has no reachable leader: {0}")]
    NoLeader(String),
    #[error("control plane storage: {0}")]
    Storage(String),
    #[error("the control plane stopped")]
    Stopped,
}

/// What `GET /v1/cluster` shows about the control plane itself.
#[derive(Clone, Debug, Serialize)]
pub struct ControlStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub state: &'static str,
}

/// This node's member of the control plane.
pub struct ControlPlane {
    node_id: NodeId,
    raft: openraft::Raft<ControlConfig>,
    state: Arc<RwLock<Arc<ControlState>>>,
    applied: watch::Receiver<u64>,
    rpc: Arc<RpcTable>,
    commit: Arc<GroupCommit>,
    options: ControlOptions,
}

impl ControlPlane {
    /// Opens the control WAL in `disk`, starts the Raft member and, on a
    /// voter's first start, initializes the group with the voters.
    pub async fn open(
        node_id: NodeId,
        disk: Arc<dyn Disk>,
        transport: Option<Arc<Transport>>,
        options: ControlOptions,
        bootstrap: &BTreeMap<NodeId, NodeRecord>,
    ) -> Result<Arc<Self>, ControlError> {
        let wal_options = WalOptions {
            segment_bytes_target: 8 << 20,
            frame_bytes_max: crate::storage::wal::FRAME_BYTES_MAX,
        };
        let (wal, replay) = Wal::open(disk, CONTROL_WAL_DIR, wal_options)
            .map_err(|e| ControlError::Storage(e.to_string()))?;
        let image = StoreImage::replay(&replay.entries).map_err(ControlError::Storage)?;
        let fresh = image.is_empty();
        let commit = Arc::new(GroupCommit::start_with_compactor(
            wal,
            Box::new(StoreCompactor::new(image.clone())),
            CheckpointPolicy {
                min_wal_bytes: 4 << 20,
                wal_to_live_ratio: 4,
            },
        ));
        let state = Arc::new(RwLock::new(Arc::new(ControlState::default())));
        let (applied_tx, applied) = watch::channel(0);
        let (log, machine) = store::open(image, commit.clone(), state.clone(), applied_tx)
            .map_err(ControlError::Storage)?;
        let config = openraft::Config {
            cluster_name: "synod-control".into(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_min.as_millis() as u64,
            election_timeout_max: options.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_every),
            max_in_snapshot_log_to_keep: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::Storage(format!("control plane options: {e}")))?;
        let rpc = RpcTable::new(transport);
        let raft = openraft::Raft::new(
            node_id,
            Arc::new(config),
            ControlNetworkFactory { rpc: rpc.clone() },
            log,
            machine,
        )
        .await
        .map_err(|e| ControlError::Storage(e.to_string()))?;
        let plane = Arc::new(ControlPlane {
            node_id,
            raft,
            state,
            applied,
            rpc,
            commit,
            options,
        });
        // The lowest-id voter initializes the group at its first start; a
        // node that joins later (any other fresh node) waits to be added.
        let initializer = plane.options.voters.iter().min() == Some(&node_id);
        if fresh && initializer {
            let members: BTreeMap<NodeId, ControlNode> = plane
                .options
                .voters
                .iter()
                .map(|id| {
                    let record = bootstrap.get(id).cloned().unwrap_or_default();
                    (
                        *id,
                        ControlNode {
                            api: record.api,
                            peer: record.peer,
                        },
                    )
                })
                .collect();
            if let Err(error) = plane.raft.initialize(members).await {
                tracing::debug!(%error, "control plane already initialized");
            }
        }
        tokio::spawn(leader_duties(Arc::downgrade(&plane)));
        Ok(plane)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The record as this node has applied it (may lag the leader).
    pub fn local(&self) -> Arc<ControlState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes whenever this node applies a committed command.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn rpc(&self) -> &Arc<RpcTable> {
        &self.rpc
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    pub fn status(&self) -> ControlStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        ControlStatus {
            leader: metrics.current_leader,
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            voters,
            learners,
            state: match metrics.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shutdown",
            },
        }
    }

    /// Commits `command` through the leader and waits until this node has
    /// applied it. A refusal by the record is [`ControlError::Refused`].
    pub async fn propose(&self, command: ControlCommand) -> Result<(), ControlError> {
        let request = ControlRequest {
            actor: self.node_id,
            nonce: rand::random(),
            at_ms: wall_clock_ms(),
            command,
        };
        let deadline = Instant::now() + self.options.request_timeout;
        let mut last_error = String::from("no leader elected yet");
        loop {
            if Instant::now() >= deadline {
                return Err(ControlError::NoLeader(last_error));
            }
            let outcome = match self.leader() {
                Some(leader) if leader == self.node_id => self.write_here(request.clone()).await,
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .rpc
                        .call(leader, &ControlRpc::Propose(request.clone()), left)
                        .await
                    {
                        Ok(ControlReply::Proposed(response, index)) => Ok(Some((response, index))),
                        Ok(ControlReply::NotLeader(_)) => Ok(None),
                        Ok(other) => Err(format!("leader {leader} answered {other:?}")),
                        Err(error) => Err(error.to_string()),
                    }
                }
                None => Ok(None),
            };
            match outcome {
                Ok(Some((response, index))) => {
                    self.wait_applied(index, deadline).await?;
                    return match response {
                        ControlResponse::Done => Ok(()),
                        ControlResponse::Refused { code, message } => {
                            Err(ControlError::Refused { code, message })
                        }
                    };
                }
                Ok(None) => {}
                Err(error) => last_error = error,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes on this node as leader: the response and its log index, or
    /// `None` when this node is not (or no longer) the leader.
    async fn write_here(
        &self,
        request: ControlRequest,
    ) -> Result<Option<(ControlResponse, u64)>, String> {
        match self.raft.client_write(request).await {
            Ok(written) => {
                // Followers learn the new commit index now, not at the next
                // heartbeat: hosts act on a command only once they apply it
                // (a swap step waited up to a heartbeat interval per step).
                if let Err(error) = self.raft.trigger().heartbeat().await {
                    tracing::debug!(%error, "could not hurry the commit index to followers");
                }
                Ok(Some((written.data, written.log_id.index)))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ControlError> {
        let mut applied = self.applied.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ControlError::Stopped),
            Err(_) => Err(ControlError::NoLeader(format!(
                "committed entry {index} not applied here within the timeout"
            ))),
        }
    }

    /// The record, linearizably: reflects every command committed before
    /// the call started.
    pub async fn read(&self) -> Result<Arc<ControlState>, ControlError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut last_error = String::from("no leader elected yet");
        loop {
            if Instant::now() >= deadline {
                return Err(ControlError::NoLeader(last_error));
            }
            let index = match self.leader() {
                Some(leader) if leader == self.node_id => self.read_index_here().await,
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.rpc.call(leader, &ControlRpc::ReadIndex, left).await {
                        Ok(ControlReply::ReadIndex(index)) => Ok(Some(index)),
                        Ok(ControlReply::NotLeader(_)) => Ok(None),
                        Ok(other) => Err(format!("leader {leader} answered {other:?}")),
                        Err(error) => Err(error.to_string()),
                    }
                }
                None => Ok(None),
            };
            match index {
                Ok(Some(index)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(self.local());
                }
                Ok(None) => {}
                Err(error) => last_error = error,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index a linearizable read must wait for: at least the end of
    /// this leader's log. openraft's read index is its commit index, which
    /// lags after a restart (the leader is restored in the same term, and
    /// an entry a majority committed before the crash is not yet known
    /// committed here); every committed entry is in the leader's log.
    async fn read_index_here(&self) -> Result<Option<u64>, String> {
        let floor = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        match self.raft.ensure_linearizable().await {
            Ok(read) => Ok(Some(read.map_or(0, |l| l.index).max(floor))),
            Err(RaftError::APIError(_)) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Serves a control RPC from `from` (component fetches are the node's).
    pub async fn handle(&self, rpc: ControlRpc) -> ControlReply {
        match rpc {
            ControlRpc::Append(request) => match self.raft.append_entries(request).await {
                Ok(response) => ControlReply::Append(response),
                Err(error) => ControlReply::Failed(error.to_string()),
            },
            ControlRpc::Vote(request) => match self.raft.vote(request).await {
                Ok(response) => ControlReply::Vote(response),
                Err(error) => ControlReply::Failed(error.to_string()),
            },
            ControlRpc::Snapshot(request) => match self.raft.install_snapshot(request).await {
                Ok(response) => ControlReply::Snapshot(response),
                Err(error) => ControlReply::Failed(error.to_string()),
            },
            ControlRpc::Propose(request) => match self.write_here(request).await {
                Ok(Some((response, index))) => ControlReply::Proposed(response, index),
                Ok(None) => ControlReply::NotLeader(self.leader()),
                Err(error) => ControlReply::Failed(error),
            },
            ControlRpc::ReadIndex => match self.read_index_here().await {
                Ok(Some(index)) => ControlReply::ReadIndex(index),
                Ok(None) => ControlReply::NotLeader(self.leader()),
                Err(error) => ControlReply::Failed(error),
            },
            ControlRpc::FetchComponent { .. } | ControlRpc::SealReport { .. } => {
                ControlReply::Failed("served by the node, not the control plane".into())
            }
        }
    }

    /// Stops the Raft member and flushes its WAL.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.commit.shutdown();
    }
}

/// Milliseconds since the Unix epoch (for people reading the history).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the leader keeps doing: every node of the record that is not a
/// member of the group joins it as a learner, so it receives the record.
async fn leader_duties(plane: std::sync::Weak<ControlPlane>) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(plane) = plane.upgrade() else { return };
        if !plane.is_leader() {
            continue;
        }
        let members: BTreeSet<NodeId> = {
            let metrics = plane.raft.metrics().borrow().clone();
            metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        let state = plane.local();
        for (id, record) in &state.nodes {
            if members.contains(id) {
                continue;
            }
            let node = ControlNode {
                api: record.api.clone(),
                peer: record.peer.clone(),
            };
            match plane.raft.add_learner(*id, node, false).await {
                Ok(_) => tracing::info!(node = id, "node joined the control plane as a learner"),
                Err(error) => tracing::debug!(node = id, %error, "adding a control learner failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::disk::MemDisk;

    async fn open(disk: &Arc<MemDisk>) -> Arc<ControlPlane> {
        let options = ControlOptions {
            voters: vec![1],
            snapshot_every: 20,
            ..ControlOptions::default()
        };
        let disk: Arc<dyn Disk> = disk.clone();
        ControlPlane::open(1, disk, None, options, &BTreeMap::new())
            .await
            .expect("control plane opens")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_record_survives_restarts_through_snapshots_and_purges() {
        let disk = Arc::new(MemDisk::new());
        let plane = open(&disk).await;
        for id in 1..=150u64 {
            plane
                .propose(ControlCommand::SetNode {
                    id,
                    api: format!("127.0.0.1:{id}"),
                    peer: String::new(),
                })
                .await
                .expect("proposal commits");
        }
        let before = plane.read().await.expect("linearizable read");
        assert_eq!(before.nodes.len(), 150);
        plane.shutdown().await;
        drop(plane);
        // A crash loses nothing acknowledged: every proposal was durable.
        disk.crash();
        let plane = open(&disk).await;
        let after = plane.read().await.expect("read after restart");
        assert_eq!(after.nodes, before.nodes);
        plane
            .propose(ControlCommand::SetNode {
                id: 151,
                api: String::new(),
                peer: String::new(),
            })
            .await
            .expect("the restarted member leads and commits");
        plane.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refusal_is_a_typed_error_and_changes_nothing() {
        let disk = Arc::new(MemDisk::new());
        let plane = open(&disk).await;
        let outcome = plane
            .propose(ControlCommand::DeleteRegion {
                region: "nothing".into(),
            })
            .await;
        assert!(
            matches!(&outcome, Err(ControlError::Refused { code, .. }) if code == "unknown_region"),
            "{outcome:?}"
        );
        assert!(plane.read().await.expect("read").audit.is_empty());
        plane.shutdown().await;
    }
}
