//! Node-to-node transport over TCP.
//!
//! One connection per pair of nodes: the node with the lower id dials, the
//! other accepts; both then send on it. A [`PeerLink`] task per peer owns
//! the connection, reconnects with exponential backoff, and drains a bounded
//! queue of outgoing frames, coalescing whatever is queued into one flush
//! (per-destination batching). While a peer is unreachable its frames are
//! dropped: delivery is unreliable by contract and plugins retransmit.
//!
//! Garbage, truncated, oversized or unauthenticated input closes that
//! connection with a log line; it never panics the node or stalls others.

mod chunks;
mod frame;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use serde::Serialize;
use serde_bytes::ByteBuf;
use synod_guest_sdk::{Batch, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use self::chunks::{
    ArrivedSnapshot, Chunk, ChunkError, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES, SnapshotAssembler,
};
pub use self::frame::{FRAME_BYTES_MAX, Frame, TRANSPORT_VERSION};
use crate::network::Network;
use crate::region::RegionName;

/// Frames queued per peer; beyond it new frames are dropped.
const PEER_QUEUE_FRAMES_MAX: usize = 16 * 1024;
/// Frames written before one flush.
const FLUSH_FRAMES_MAX: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where inbound frames go once a connection is authenticated.
pub trait InboundHandler: Send + Sync + 'static {
    fn on_frame(&self, from: NodeId, frame: Frame);
}

/// Transport counters, for status and tests.
#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped: AtomicU64,
    connections: AtomicU64,
    rejected_connections: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_dropped: u64,
    pub connections: u64,
    pub rejected_connections: u64,
}

type Connection = Framed<TcpStream, LengthDelimitedCodec>;

struct PeerLink {
    queue: mpsc::Sender<Frame>,
    /// Where to dial; empty while unknown (we accept instead).
    address: Arc<Mutex<String>>,
    /// Accepted connections from this peer, handed over by the listener.
    accepted: mpsc::Sender<Connection>,
}

/// The node's transport endpoint.
pub struct Transport {
    node_id: NodeId,
    secret: Vec<u8>,
    peers: Mutex<HashMap<NodeId, PeerLink>>,
    inbound: OnceLock<Arc<dyn InboundHandler>>,
    counters: Arc<Counters>,
    local_address: SocketAddr,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("connection closed during the handshake")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable handshake frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("unexpected frame during the handshake")]
    Unexpected,
    #[error("peer speaks transport version {0}, this node {TRANSPORT_VERSION}")]
    Version(u32),
    #[error("peer does not know the cluster secret")]
    BadProof,
    #[error("connected to node {found}, expected node {expected}")]
    WrongPeer { expected: NodeId, found: NodeId },
}

async fn next_frame(connection: &mut Connection) -> Result<Frame, HandshakeError> {
    match connection.next().await {
        Some(Ok(bytes)) => Ok(Frame::decode(&bytes)?),
        Some(Err(error)) => Err(HandshakeError::Io(error)),
        None => Err(HandshakeError::Closed),
    }
}

async fn send_frame(connection: &mut Connection, frame: &Frame) -> Result<(), HandshakeError> {
    connection.send(Bytes::from(frame.encode())).await?;
    Ok(())
}

fn nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

impl Transport {
    /// Binds the peer listener and starts accepting.
    pub async fn start(
        node_id: NodeId,
        secret: &[u8],
        listen: SocketAddr,
    ) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(listen).await?;
        let local_address = listener.local_addr()?;
        let transport = Arc::new(Transport {
            node_id,
            secret: secret.to_vec(),
            peers: Mutex::new(HashMap::new()),
            inbound: OnceLock::new(),
            counters: Arc::new(Counters::default()),
            local_address,
        });
        tokio::spawn(transport.clone().accept_loop(listener));
        Ok(transport)
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Where authenticated inbound frames are delivered. Set once.
    pub fn set_inbound(&self, handler: Arc<dyn InboundHandler>) {
        let _ = self.inbound.set(handler);
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.counters;
        TransportStats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            rejected_connections: c.rejected_connections.load(Ordering::Relaxed),
        }
    }

    /// Learns or updates a peer's transport address.
    pub fn set_peer(self: &Arc<Self>, peer: NodeId, address: &str) {
        if peer == self.node_id {
            return;
        }
        let link_address = self.link(peer);
        *lock(&link_address) = address.to_string();
    }

    /// The link to `peer`, created on first use; returns its address cell.
    fn link(self: &Arc<Self>, peer: NodeId) -> Arc<Mutex<String>> {
        let mut peers = lock(&self.peers);
        if let Some(link) = peers.get(&peer) {
            return link.address.clone();
        }
        let (queue, outgoing) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
        let (accepted, connections) = mpsc::channel(4);
        let address = Arc::new(Mutex::new(String::new()));
        peers.insert(
            peer,
            PeerLink {
                queue,
                address: address.clone(),
                accepted,
            },
        );
        tokio::spawn(
            self.clone()
                .run_link(peer, address.clone(), outgoing, connections),
        );
        address
    }

    /// Queues a frame for `to`; drops it if `to` is not a known peer (a
    /// plugin must not make the host allocate per invented node id) or its
    /// queue is full.
    pub fn send_frame(self: &Arc<Self>, to: NodeId, frame: Frame) {
        if to == self.node_id {
            return;
        }
        let sent = lock(&self.peers)
            .get(&to)
            .map(|link| link.queue.try_send(frame).is_ok())
            .unwrap_or(false);
        if !sent {
            self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "peer listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let transport = self.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut connection = Framed::new(stream, codec());
                let handshake = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    transport.accept_handshake(&mut connection),
                );
                match handshake.await.unwrap_or(Err(HandshakeError::Timeout)) {
                    Ok(peer) => {
                        transport.link(peer);
                        let handoff = lock(&transport.peers)
                            .get(&peer)
                            .map(|link| link.accepted.clone());
                        if let Some(handoff) = handoff {
                            let _ = handoff.send(connection).await;
                        }
                    }
                    Err(error) => {
                        transport
                            .counters
                            .rejected_connections
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, %error, "refused a peer connection");
                    }
                }
            });
        }
    }

    async fn accept_handshake(
        &self,
        connection: &mut Connection,
    ) -> Result<NodeId, HandshakeError> {
        let Frame::Hello {
            version,
            node_id: peer,
            nonce: peer_nonce,
        } = next_frame(connection).await?
        else {
            return Err(HandshakeError::Unexpected);
        };
        if version != TRANSPORT_VERSION {
            return Err(HandshakeError::Version(version));
        }
        let my_nonce = nonce();
        let welcome = Frame::Welcome {
            node_id: self.node_id,
            proof: frame::proof(&self.secret, "accept", self.node_id, &peer_nonce),
            nonce: my_nonce,
        };
        send_frame(connection, &welcome).await?;
        let Frame::Proof { proof } = next_frame(connection).await? else {
            return Err(HandshakeError::Unexpected);
        };
        if !frame::verify(&self.secret, "dial", peer, &my_nonce, &proof) {
            return Err(HandshakeError::BadProof);
        }
        Ok(peer)
    }

    async fn dial(&self, peer: NodeId, address: &str) -> Result<Connection, HandshakeError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| HandshakeError::Timeout)??;
        let _ = stream.set_nodelay(true);
        let mut connection = Framed::new(stream, codec());
        let my_nonce = nonce();
        let hello = Frame::Hello {
            version: TRANSPORT_VERSION,
            node_id: self.node_id,
            nonce: my_nonce,
        };
        let exchange = async {
            send_frame(&mut connection, &hello).await?;
            let Frame::Welcome {
                node_id,
                proof,
                nonce: peer_nonce,
            } = next_frame(&mut connection).await?
            else {
                return Err(HandshakeError::Unexpected);
            };
            if node_id != peer {
                return Err(HandshakeError::WrongPeer {
                    expected: peer,
                    found: node_id,
                });
            }
            if !frame::verify(&self.secret, "accept", node_id, &my_nonce, &proof) {
                return Err(HandshakeError::BadProof);
            }
            let proof = frame::proof(&self.secret, "dial", self.node_id, &peer_nonce);
            send_frame(&mut connection, &Frame::Proof { proof }).await
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
        Ok(connection)
    }

    /// Owns the connection to one peer for the node's lifetime.
    async fn run_link(
        self: Arc<Self>,
        peer: NodeId,
        address: Arc<Mutex<String>>,
        mut outgoing: mpsc::Receiver<Frame>,
        mut accepted: mpsc::Receiver<Connection>,
    ) {
        let dialer = self.node_id < peer;
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let connection = if dialer {
                let target = lock(&address).clone();
                if target.is_empty() {
                    drop_queued(&mut outgoing, &self.counters);
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
                match self.dial(peer, &target).await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::debug!(peer, %target, %error, "dial failed; retrying");
                        drop_queued(&mut outgoing, &self.counters);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            } else {
                // Wait for the peer to dial us, dropping what cannot be sent.
                loop {
                    tokio::select! {
                        connection = accepted.recv() => match connection {
                            Some(connection) => break connection,
                            None => return,
                        },
                        () = tokio::time::sleep(Duration::from_millis(100)) => {
                            drop_queued(&mut outgoing, &self.counters);
                        }
                    }
                }
            };
            backoff = BACKOFF_INITIAL;
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer, "peer connected");
            let reason = self
                .serve(peer, connection, &mut outgoing, &mut accepted)
                .await;
            tracing::info!(peer, %reason, "peer connection closed");
        }
    }

    /// Moves frames both ways until the connection fails or is replaced.
    async fn serve(
        &self,
        peer: NodeId,
        connection: Connection,
        outgoing: &mut mpsc::Receiver<Frame>,
        accepted: &mut mpsc::Receiver<Connection>,
    ) -> String {
        let (mut sink, mut stream) = connection.split();
        loop {
            tokio::select! {
                frame = outgoing.recv() => {
                    let Some(frame) = frame else { return "node stopping".into() };
                    let mut batch = vec![frame];
                    while batch.len() < FLUSH_FRAMES_MAX {
                        match outgoing.try_recv() {
                            Ok(frame) => batch.push(frame),
                            Err(_) => break,
                        }
                    }
                    let count = batch.len() as u64;
                    for frame in batch {
                        if let Err(error) = sink.feed(Bytes::from(frame.encode())).await {
                            return format!("write failed: {error}");
                        }
                    }
                    if let Err(error) = sink.flush().await {
                        return format!("write failed: {error}");
                    }
                    self.counters.frames_sent.fetch_add(count, Ordering::Relaxed);
                }
                inbound = stream.next() => {
                    let bytes = match inbound {
                        Some(Ok(bytes)) => bytes,
                        Some(Err(error)) => return format!("bad or oversized frame: {error}"),
                        None => return "closed by peer".into(),
                    };
                    let frame = match Frame::decode(&bytes) {
                        Ok(frame) => frame,
                        Err(error) => return format!("undecodable frame: {error}"),
                    };
                    if matches!(frame, Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Proof { .. }) {
                        return "handshake frame after the handshake".into();
                    }
                    self.counters.frames_received.fetch_add(1, Ordering::Relaxed);
                    if let Some(handler) = self.inbound.get() {
                        handler.on_frame(peer, frame);
                    }
                }
                replacement = accepted.recv() => {
                    // The peer reconnected (e.g. it restarted): use the new one.
                    if let Some(replacement) = replacement {
                        let (new_sink, new_stream) = replacement.split();
                        sink = new_sink;
                        stream = new_stream;
                        self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn drop_queued(outgoing: &mut mpsc::Receiver<Frame>, counters: &Counters) {
    while outgoing.try_recv().is_ok() {
        counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Network for Arc<Transport> {
    fn send(&self, region: &RegionName, epoch: u64, _from: NodeId, to: NodeId, messages: Batch) {
        self.send_frame(
            to,
            Frame::Messages {
                region: region.to_string(),
                epoch,
                data: ByteBuf::from(messages.data),
                ends: messages.ends,
            },
        );
    }

    fn send_snapshot(
        &self,
        region: &RegionName,
        epoch: u64,
        _from: NodeId,
        to: NodeId,
        metadata: Vec<u8>,
        image: Vec<u8>,
    ) {
        for frame in chunks::snapshot_frames(region.as_str(), epoch, &metadata, &image) {
            self.send_frame(to, frame);
        }
    }
}
