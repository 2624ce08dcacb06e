//! Messages between region replicas on different nodes, as a trait so the
//! TCP transport and the simulator's network are interchangeable.

use synod_guest_sdk::{Batch, NodeId};

use crate::region::RegionName;

/// Where region drivers hand messages for peers. Delivery is unreliable by
/// contract: an implementation may drop, duplicate or reorder.
pub trait Network: Send + Sync + 'static {
    /// Sends each item of `messages` from `from` to the replica of `region`
    /// at `epoch` on node `to`.
    fn send(&self, region: &RegionName, epoch: u64, from: NodeId, to: NodeId, messages: Batch);

    /// Ships a state-machine snapshot image with the plugin's metadata; the
    /// receiver offers it to its plugin (`on-snapshot`).
    fn send_snapshot(
        &self,
        region: &RegionName,
        epoch: u64,
        from: NodeId,
        to: NodeId,
        metadata: Vec<u8>,
        image: Vec<u8>,
    );
}

/// The network of a node that has no peers yet: every message is dropped
/// (and counted). Single-copy regions never send.
#[derive(Debug, Default)]
pub struct NoPeers {
    dropped: std::sync::atomic::AtomicU64,
}

impl NoPeers {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Network for NoPeers {
    fn send(&self, region: &RegionName, _epoch: u64, _from: NodeId, to: NodeId, messages: Batch) {
        self.dropped
            .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%region, to, count = messages.len(), "no route to peer; messages dropped");
    }

    fn send_snapshot(
        &self,
        region: &RegionName,
        _epoch: u64,
        _from: NodeId,
        to: NodeId,
        _metadata: Vec<u8>,
        _image: Vec<u8>,
    ) {
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%region, to, "no route to peer; snapshot dropped");
    }
}
