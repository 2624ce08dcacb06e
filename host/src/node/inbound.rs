//! Routes authenticated frames from peers into the node: region messages
//! and snapshots to their drivers (fenced by epoch), control-plane RPCs to
//! the control plane.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use synod_guest_sdk::NodeId;

use super::Node;
use crate::control::network::{ControlReply, ControlRpc};
use crate::transport::{Frame, InboundHandler, SnapshotAssembler};

/// Batches kept per region for an epoch (or a replica) this node has not
/// reached yet, and the bytes they may take.
const EARLY_BATCHES_MAX: usize = 256;
const EARLY_BYTES_MAX: usize = 8 << 20;
/// Regions that may have early messages kept at once.
const EARLY_REGIONS_MAX: usize = 64;
/// Early messages older than this are stale by the time they could be used.
const EARLY_TTL: Duration = Duration::from_secs(5);

/// Messages that arrived for a region's next epoch, or for a region whose
/// replica this node has not started yet: the first messages of a new
/// epoch (a vote request of the replica that campaigns first) would
/// otherwise be dropped by a node a few milliseconds behind, and the new
/// protocol would wait an election timeout. Bounded; delivered when the
/// replica enters that epoch, dropped otherwise.
#[derive(Default)]
pub(crate) struct EarlyMessages {
    regions: Mutex<HashMap<String, EarlyQueue>>,
}

#[derive(Default)]
struct EarlyQueue {
    batches: VecDeque<(Instant, NodeId, u64, synod_guest_sdk::Batch)>,
    bytes: usize,
}

impl EarlyMessages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EarlyQueue>> {
        self.regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a batch; false when over a bound (the batch is dropped).
    pub(crate) fn keep(
        &self,
        region: &str,
        from: NodeId,
        epoch: u64,
        batch: synod_guest_sdk::Batch,
    ) -> bool {
        let mut regions = self.lock();
        if !regions.contains_key(region) && regions.len() >= EARLY_REGIONS_MAX {
            regions.retain(|_, queue| {
                queue
                    .batches
                    .back()
                    .is_some_and(|(at, ..)| at.elapsed() < EARLY_TTL)
            });
            if regions.len() >= EARLY_REGIONS_MAX {
                return false;
            }
        }
        let queue = regions.entry(region.to_string()).or_default();
        let bytes = batch.data.len() + 4 * batch.ends.len();
        if queue.batches.len() >= EARLY_BATCHES_MAX || queue.bytes + bytes > EARLY_BYTES_MAX {
            return false;
        }
        queue.bytes += bytes;
        queue
            .batches
            .push_back((Instant::now(), from, epoch, batch));
        true
    }

    /// The fresh batches kept for `region` at `epoch`; everything kept for
    /// the region is forgotten.
    pub(crate) fn take(&self, region: &str, epoch: u64) -> Vec<(NodeId, synod_guest_sdk::Batch)> {
        let Some(queue) = self.lock().remove(region) else {
            return Vec::new();
        };
        queue
            .batches
            .into_iter()
            .filter(|(at, _, e, _)| *e == epoch && at.elapsed() < EARLY_TTL)
            .map(|(_, from, _, batch)| (from, batch))
            .collect()
    }
}

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
                let payloads = synod_guest_sdk::Batch {
                    data: data.into_vec(),
                    ends,
                };
                if !payloads.is_well_formed() {
                    tracing::warn!(%region, from, "malformed message batch dropped");
                    return;
                }
                let handle = node.read_regions().get(&region).cloned();
                let current = handle.as_ref().map(|h| h.spec().epoch);
                if current.is_none_or(|current| epoch > current) {
                    // Ahead of this node: kept for when it gets there.
                    if !node.early_messages().keep(&region, from, epoch, payloads) {
                        tracing::debug!(%region, from, epoch, "early messages dropped: over the bound");
                    }
                    return;
                }
                let Some(handle) = handle else { return };
                if current != Some(epoch) {
                    tracing::debug!(%region, from, epoch, "messages from another epoch dropped");
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
                        ControlRpc::SealReport {
                            region,
                            from_epoch,
                            node: reporter,
                            report,
                        } => {
                            if node.control().is_leader() {
                                node.seal_reports()
                                    .note(&region, from_epoch, reporter, report);
                                crate::swap::coordinator::drive(&node).await;
                                ControlReply::Noted
                            } else {
                                ControlReply::NotLeader(node.control().leader())
                            }
                        }
                        other => node.control().handle(other).await,
                    };
                    node.control().rpc().reply(from, id, &answer);
                });
            }
            Frame::Hello { .. } | Frame::Welcome { .. } => {}
        }
    }
}
