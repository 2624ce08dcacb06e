//! Control-plane RPCs over the node transport: openraft's append, vote and
//! snapshot calls, proposals forwarded to the leader, read-index requests
//! and component fetches. Requests and replies are `Frame::Control` frames
//! matched by id; a request with no reply within its deadline fails (the
//! caller retries: openraft does so by itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use synod_guest_sdk::NodeId;
use tokio::sync::oneshot;

use super::record::{ControlRequest, ControlResponse};
use super::{ControlConfig, ControlNode};
use crate::transport::{Frame, Transport};

type C = ControlConfig;

/// A request from one node's control plane to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRpc {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<C>),
    /// Commit this command (sent to the leader).
    Propose(ControlRequest),
    /// The leader's commit index, confirmed by a quorum (a linearizable
    /// read point for a follower).
    ReadIndex,
    /// The bytes of a published component.
    FetchComponent {
        digest: String,
    },
    /// A host sealed its replica for a swap (sent to the coordinator, the
    /// control-plane leader).
    SealReport {
        region: String,
        from_epoch: u64,
        node: NodeId,
        report: crate::control::record::SealReportRecord,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlReply {
    Append(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(InstallSnapshotResponse<NodeId>),
    /// The record's answer and the log index it was committed at.
    Proposed(ControlResponse, u64),
    ReadIndex(u64),
    Component(ByteBuf),
    /// A seal report was noted by the coordinator.
    Noted,
    /// This node is not the leader (the hint names the one it knows).
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// Why an RPC got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("node {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("node {0} is not reachable: no transport")]
    NoTransport(NodeId),
    #[error("node {node} answered: {why}")]
    Failed { node: NodeId, why: String },
    #[error("node {node} sent an answer that does not decode: {why}")]
    Garbled { node: NodeId, why: String },
}

/// Outstanding requests, by id.
pub struct RpcTable {
    transport: Option<Arc<Transport>>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
}

impl RpcTable {
    pub fn new(transport: Option<Arc<Transport>>) -> Arc<Self> {
        Arc::new(Self {
            transport,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Vec<u8>>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `rpc` to `to` and waits up to `timeout` for its reply.
    pub async fn call(
        &self,
        to: NodeId,
        rpc: &ControlRpc,
        timeout: Duration,
    ) -> Result<ControlReply, RpcError> {
        let transport = self.transport.as_ref().ok_or(RpcError::NoTransport(to))?;
        let body = postcard::to_allocvec(rpc).map_err(|e| RpcError::Failed {
            node: to,
            why: format!("request does not encode: {e}"),
        })?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.lock().insert(id, reply);
        transport.send_frame(
            to,
            Frame::Control {
                id,
                reply: false,
                body: ByteBuf::from(body),
            },
        );
        let outcome = tokio::time::timeout(timeout, answer).await;
        self.lock().remove(&id);
        let bytes = match outcome {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) | Err(_) => return Err(RpcError::Timeout(to, timeout)),
        };
        postcard::from_bytes(&bytes).map_err(|e| RpcError::Garbled {
            node: to,
            why: e.to_string(),
        })
    }

    /// A reply frame arrived.
    pub fn complete(&self, id: u64, body: Vec<u8>) {
        if let Some(waiter) = self.lock().remove(&id) {
            let _ = waiter.send(body);
        }
    }

    /// Sends the reply to request `id` of `to`.
    pub fn reply(&self, to: NodeId, id: u64, reply: &ControlReply) {
        let Some(transport) = &self.transport else {
            return;
        };
        match postcard::to_allocvec(reply) {
            Ok(body) => transport.send_frame(
                to,
                Frame::Control {
                    id,
                    reply: true,
                    body: ByteBuf::from(body),
                },
            ),
            Err(error) => tracing::error!(%error, "control reply does not encode"),
        }
    }
}

/// openraft's view of the network.
pub struct ControlNetworkFactory {
    pub rpc: Arc<RpcTable>,
}

impl RaftNetworkFactory<C> for ControlNetworkFactory {
    type Network = ControlPeer;

    async fn new_client(&mut self, target: NodeId, _node: &ControlNode) -> Self::Network {
        ControlPeer {
            target,
            rpc: self.rpc.clone(),
        }
    }
}

/// One peer, as openraft calls it.
pub struct ControlPeer {
    target: NodeId,
    rpc: Arc<RpcTable>,
}

fn network_error<E: std::error::Error>(
    target: NodeId,
    error: RpcError,
) -> RPCError<NodeId, ControlNode, E> {
    match error {
        RpcError::Timeout(..) | RpcError::NoTransport(_) => {
            tracing::trace!(target, %error, "control peer unreachable");
            RPCError::Unreachable(Unreachable::new(&error))
        }
        RpcError::Failed { .. } | RpcError::Garbled { .. } => {
            RPCError::Network(NetworkError::new(&error))
        }
    }
}

impl ControlPeer {
    async fn call<E: std::error::Error>(
        &self,
        rpc: ControlRpc,
        option: &RPCOption,
    ) -> Result<ControlReply, RPCError<NodeId, ControlNode, E>> {
        let reply = self
            .rpc
            .call(self.target, &rpc, option.hard_ttl())
            .await
            .map_err(|e| network_error(self.target, e))?;
        match reply {
            ControlReply::Failed(why) => Err(network_error(
                self.target,
                RpcError::Failed {
                    node: self.target,
                    why,
                },
            )),
            other => Ok(other),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        reply: ControlReply,
    ) -> RPCError<NodeId, ControlNode, E> {
        network_error(
            self.target,
            RpcError::Garbled {
                node: self.target,
                why: format!("unexpected reply {reply:?}"),
            },
        )
    }
}

impl RaftNetwork<C> for ControlPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ControlNode, RaftError<NodeId>>>
    {
        match self.call(ControlRpc::Append(rpc), &option).await? {
            ControlReply::Append(response) => Ok(response),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ControlNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(ControlRpc::Snapshot(rpc), &option).await? {
            ControlReply::Snapshot(response) => Ok(response),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ControlNode, RaftError<NodeId>>> {
        match self.call(ControlRpc::Vote(rpc), &option).await? {
            ControlReply::Vote(response) => Ok(response),
            other => Err(self.unexpected(other)),
        }
    }
}
