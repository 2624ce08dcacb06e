//! Routes authenticated frames from peers into the node: region messages
//! and snapshots to their drivers (fenced by epoch), control-plane RPCs to
//! the control plane.

use std::sync::{Mutex, Weak};

use serde_bytes::ByteBuf;
use synod_guest_sdk::NodeId;

use super::Node;
use crate::control::network::{ControlReply, ControlRpc};
use crate::transport::{Frame, InboundHandler, SnapshotAssembler};

pub(crate) struct NodeInbound {
    pub(crate) node: Weak<Node>,
    pub(crate) snapshots: Mutex<SnapshotAssembler>,
}

impl InboundHandler for NodeInbound {
    fn on_frame(&self, from: NodeId, frame: Frame) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        match frame {
            Frame::Messages {
                region,
                epoch,
                data,
                ends,
            } => {
                let Some(handle) = node.read_regions().get(&region).cloned() else {
                    tracing::debug!(%region, from, "messages for a region not hosted here");
                    return;
                };
                if handle.spec().epoch != epoch {
                    tracing::debug!(%region, from, epoch, "messages from another epoch dropped");
                    return;
                }
                let payloads = synod_guest_sdk::Batch {
                    data: data.into_vec(),
                    ends,
                };
                if !payloads.is_well_formed() {
                    tracing::warn!(%region, from, "malformed message batch dropped");
                    return;
                }
                let bytes = payloads.data.len() as u64;
                if let Err(error) = handle.deliver_messages(from, epoch, payloads) {
                    tracing::debug!(%region, from, %error, "inbound messages dropped");
                    if let Some(transport) = node.transport() {
                        transport.count_inbound_dropped(&region, bytes);
                    }
                }
            }
            Frame::SnapshotChunk(chunk) => {
                let arrived = self
                    .snapshots
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .accept(from, chunk);
                let snapshot = match arrived {
                    Ok(Some(snapshot)) => snapshot,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(from, %error, "snapshot transfer abandoned");
                        return;
                    }
                };
                let Some(handle) = node.read_regions().get(&snapshot.region).cloned() else {
                    return;
                };
                if handle.spec().epoch == snapshot.epoch {
                    let _ = handle.offer_snapshot(
                        from,
                        snapshot.epoch,
                        snapshot.metadata,
                        snapshot.image,
                    );
                } else {
                    tracing::debug!(region = %snapshot.region, from, epoch = snapshot.epoch, "snapshot from another epoch dropped");
                }
            }
            Frame::Control { id, reply, body } => {
                if reply {
                    node.control().rpc().complete(id, body.into_vec());
                    return;
                }
                let rpc: ControlRpc = match postcard::from_bytes(&body) {
                    Ok(rpc) => rpc,
                    Err(error) => {
                        tracing::warn!(from, %error, "undecodable control request dropped");
                        return;
                    }
                };
                tokio::spawn(async move {
                    let answer = match rpc {
                        ControlRpc::FetchComponent { digest } => {
                            match node.component_bytes(&digest) {
                                Some(bytes) => ControlReply::Component(ByteBuf::from(bytes)),
                                None => ControlReply::Failed(format!(
                                    "component sha256:{digest} is not stored on node {}",
                                    node.config().node_id
                                )),
                            }
                        }
                        other => node.control().handle(other).await,
                    };
                    node.control().rpc().reply(from, id, &answer);
                });
            }
            Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Proof { .. } => {}
        }
    }
}
