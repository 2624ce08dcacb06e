//! Node-to-node transport over TCP.
//!
//! One connection per pair of nodes: the node with the lower id dials, the
//! other accepts; both then send on it. A [`PeerLink`] task per peer owns
//! the connection and reconnects with exponential backoff. Reading and
//! writing run side by side, so a node busy writing still reads (two nodes
//! writing to each other cannot deadlock on full socket buffers).
//!
//! Outgoing frames wait in the link's [`LinkQueue`]: control-plane frames
//! first, then the regions' frames in deficit round robin, each region
//! within a byte budget. A region that sends more than its share has its
//! own frames dropped and counted; the others are not held up. While a peer
//! is unreachable its frames are dropped: delivery is unreliable by
//! contract and plugins retransmit.
//!
//! With TLS configured (always, outside loopback tests of the bare
//! transport) every connection is mutual TLS: both ends present a
//! certificate from the cluster's CA. The dialer checks the acceptor's
//! certificate names the node it dialed (`node-<id>.synod`); the acceptor
//! checks the id the dialer claims in its `Hello` is named by the
//! dialer's certificate, is not its own and is a known peer, all before
//! it answers or reads any other frame.
//!
//! Garbage, truncated, oversized or unauthenticated input closes that
//! connection with a log line; it never panics the node or stalls others.
//! Before the handshake a frame may be at most
//! [`HANDSHAKE_FRAME_BYTES_MAX`], and only `handshakes_max` connections may
//! wait for their handshake at once.

mod chunks;
mod frame;
mod link;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_bytes::ByteBuf;
use synod_guest_sdk::{Batch, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use self::chunks::{
    ArrivedSnapshot, Chunk, ChunkError, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES, SnapshotAssembler,
};
pub use self::frame::{FRAME_BYTES_MAX, Frame, HANDSHAKE_FRAME_BYTES_MAX, TRANSPORT_VERSION};
pub use self::link::{Dropped, LinkBudget, LinkQueue, QUANTUM_BYTES};
use crate::network::Network;
use crate::region::RegionName;
use crate::security::NodeTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Redial delays to an unreachable peer: doubling from the first, capped
/// low so a restarted peer is reached within about 100 ms of listening
/// again (a refused dial costs a few syscalls; a failover waits on it).
const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Bytes written before a flush, at most.
const FLUSH_BYTES: usize = 256 * 1024;

/// The transport's limits; `[transport]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Queued outgoing bytes per region per link; beyond it that region's
    /// new frames are dropped. Also the largest message batch a region can
    /// send.
    pub region_queue_bytes_max: usize,
    /// Queued outgoing bytes per link, all regions together.
    pub link_queue_bytes_max: usize,
    /// Connections on the peer port that may be in their handshake at once;
    /// more are closed at once.
    pub handshakes_max: usize,
    /// Time a connection has to complete the handshake.
    pub handshake_timeout: Duration,
    /// A frame whose write does not complete in this time (the peer does
    /// not read) closes the connection.
    pub write_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            region_queue_bytes_max: 8 << 20,
            link_queue_bytes_max: 64 << 20,
            handshakes_max: 64,
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl TransportLimits {
    fn budget(&self) -> LinkBudget {
        LinkBudget {
            region_bytes_max: self.region_queue_bytes_max,
            link_bytes_max: self.link_queue_bytes_max,
        }
    }
}

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
    refused_connections: AtomicU64,
    /// Per region; keyed by local regions' names only (outgoing traffic).
    regions: Mutex<BTreeMap<String, RegionTraffic>>,
}

impl Counters {
    fn dropped(&self, dropped: &Dropped) {
        self.frames_dropped
            .fetch_add(dropped.frames, Ordering::Relaxed);
        let mut regions = lock(&self.regions);
        let region = regions.entry(dropped.region.clone()).or_default();
        region.frames_dropped += dropped.frames;
        region.bytes_dropped += dropped.bytes;
    }
}

/// Outgoing traffic of one region, over all links.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RegionTraffic {
    /// Frames dropped: over the region's budget, or the peer unreachable.
    pub frames_dropped: u64,
    pub bytes_dropped: u64,
    /// Inbound message frames refused because the region's inbox was full
    /// (in bytes or entries).
    pub inbound_frames_dropped: u64,
    pub inbound_bytes_dropped: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Every frame dropped, all regions (and control frames to unknown peers).
    pub frames_dropped: u64,
    pub connections: u64,
    /// Connections whose handshake failed.
    pub rejected_connections: u64,
    /// Connections closed at once because `handshakes_max` were waiting.
    pub refused_connections: u64,
    /// Outgoing bytes queued now, all links.
    pub queued_bytes: u64,
    /// Per region: what the byte budgets dropped.
    pub regions: BTreeMap<String, RegionTraffic>,
}

/// A peer connection's byte stream: TLS over TCP, or bare TCP.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PeerIo for T {}

type Connection = Framed<Box<dyn PeerIo>, LengthDelimitedCodec>;

struct PeerLink {
    queue: Arc<LinkQueue>,
    /// Where to dial; empty while unknown (we accept instead).
    address: Arc<Mutex<String>>,
    /// Accepted connections from this peer, handed over by the listener.
    accepted: mpsc::Sender<Connection>,
}

/// The node's transport endpoint.
pub struct Transport {
    node_id: NodeId,
    /// Mutual TLS with the cluster's CA; `None` runs bare TCP (loopback).
    tls: Option<Arc<NodeTls>>,
    limits: TransportLimits,
    peers: Mutex<HashMap<NodeId, PeerLink>>,
    inbound: OnceLock<Arc<dyn InboundHandler>>,
    counters: Arc<Counters>,
    local_address: SocketAddr,
}

/// Until the handshake is done a frame may be tiny: nothing is buffered
/// for an unauthenticated peer beyond [`HANDSHAKE_FRAME_BYTES_MAX`].
fn handshake_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(HANDSHAKE_FRAME_BYTES_MAX)
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
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer claims node id {claimed}, which its certificate does not name")]
    CertificateMismatch { claimed: NodeId },
    #[error("the peer claims this node's own id {0}")]
    SelfId(NodeId),
    #[error("the peer claims node id {0}, which is not a known peer")]
    UnknownPeer(NodeId),
    #[error("connected to node {found}, expected node {expected}")]
    WrongPeer { expected: NodeId, found: NodeId },
    #[error("the peer's certificate names no known peer of this node")]
    CertificateNamesNoPeer,
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

/// After the handshake, frames may be as large as [`FRAME_BYTES_MAX`].
fn authenticated(mut connection: Connection) -> Connection {
    connection.codec_mut().set_max_frame_length(FRAME_BYTES_MAX);
    connection
}

/// How a served connection ended.
enum Ended {
    Closed(String),
    Replaced(Connection),
    Stopping,
}

impl Transport {
    /// Binds the peer listener and starts accepting.
    pub async fn start(
        node_id: NodeId,
        tls: Option<Arc<NodeTls>>,
        listen: SocketAddr,
        limits: TransportLimits,
    ) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(listen).await?;
        let local_address = listener.local_addr()?;
        let transport = Arc::new(Transport {
            node_id,
            tls,
            limits,
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
        let queued_bytes = lock(&self.peers)
            .values()
            .map(|link| link.queue.queued_bytes() as u64)
            .sum();
        TransportStats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            rejected_connections: c.rejected_connections.load(Ordering::Relaxed),
            refused_connections: c.refused_connections.load(Ordering::Relaxed),
            queued_bytes,
            regions: lock(&c.regions).clone(),
        }
    }

    /// Counts an inbound frame of a region hosted here that its inbox
    /// refused.
    pub fn count_inbound_dropped(&self, region: &str, bytes: u64) {
        self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        let mut regions = lock(&self.counters.regions);
        let traffic = regions.entry(region.to_string()).or_default();
        traffic.inbound_frames_dropped += 1;
        traffic.inbound_bytes_dropped += bytes;
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
        let queue = Arc::new(LinkQueue::new(self.limits.budget()));
        let (accepted, connections) = mpsc::channel(4);
        let address = Arc::new(Mutex::new(String::new()));
        peers.insert(
            peer,
            PeerLink {
                queue: queue.clone(),
                address: address.clone(),
                accepted,
            },
        );
        tokio::spawn(
            self.clone()
                .run_link(peer, address.clone(), queue, connections),
        );
        address
    }

    fn queue_of(&self, to: NodeId) -> Option<Arc<LinkQueue>> {
        lock(&self.peers).get(&to).map(|link| link.queue.clone())
    }

    /// Queues a frame for `to`; drops it (counted against its region) if
    /// `to` is not a known peer (a plugin must not make the host allocate
    /// per invented node id) or the region's or link's budget is full.
    pub fn send_frame(self: &Arc<Self>, to: NodeId, frame: Frame) {
        if to == self.node_id {
            return;
        }
        let region = match &frame {
            Frame::Messages { region, .. } => region.clone(),
            Frame::SnapshotChunk(chunk) => chunk.region.clone(),
            Frame::Control { .. } => {
                let bytes = frame.encode();
                if bytes.len() > FRAME_BYTES_MAX {
                    // The peer would close the link on it; keep the link.
                    tracing::error!(
                        bytes = bytes.len(),
                        limit = FRAME_BYTES_MAX,
                        "a control frame is larger than one frame; not sent"
                    );
                    self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let queued = self
                    .queue_of(to)
                    .is_some_and(|queue| queue.push_control(Bytes::from(bytes)));
                if !queued {
                    self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            // Handshake frames never travel through the queue.
            Frame::Hello { .. } | Frame::Welcome { .. } => return,
        };
        let bytes = Bytes::from(frame.encode());
        let pushed = match self.queue_of(to) {
            Some(queue) => queue.push_frame(&region, bytes),
            None => Err(Dropped {
                region,
                frames: 1,
                bytes: bytes.len() as u64,
            }),
        };
        if let Err(dropped) = pushed {
            self.counters.dropped(&dropped);
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let handshakes = Arc::new(Semaphore::new(self.limits.handshakes_max));
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "peer listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                self.counters
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %remote,
                    limit = self.limits.handshakes_max,
                    "refused a peer connection: too many handshakes in progress"
                );
                drop(stream);
                continue;
            };
            let transport = self.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let handshake = tokio::time::timeout(
                    transport.limits.handshake_timeout,
                    transport.accept_handshake(stream),
                );
                let outcome = handshake.await.unwrap_or(Err(HandshakeError::Timeout));
                drop(permit);
                match outcome {
                    Ok((peer, connection)) => {
                        transport.link(peer);
                        let handoff = lock(&transport.peers)
                            .get(&peer)
                            .map(|link| link.accepted.clone());
                        if let Some(handoff) = handoff {
                            let _ = handoff.send(authenticated(connection)).await;
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

    /// The acceptor's side: TLS first (the dialer's certificate must
    /// chain to the CA and name a known peer other than this node, checked
    /// before any frame is read), then the dialer's `Hello`, whose id must
    /// be named by that certificate, be a known peer and not this node.
    /// Only then does this node answer.
    async fn accept_handshake(
        &self,
        stream: TcpStream,
    ) -> Result<(NodeId, Connection), HandshakeError> {
        let (stream, certificate): (Box<dyn PeerIo>, _) = match &self.tls {
            Some(tls) => {
                let stream = tls
                    .peer_acceptor()
                    .accept(stream)
                    .await
                    .map_err(HandshakeError::Tls)?;
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .cloned()
                    .ok_or(HandshakeError::NoCertificate)?;
                let names_a_peer = lock(&self.peers).keys().any(|id| {
                    *id != self.node_id
                        && crate::security::tls::certificate_names_node(&certificate, *id)
                });
                if !names_a_peer {
                    return Err(HandshakeError::CertificateNamesNoPeer);
                }
                (Box::new(stream), Some(certificate))
            }
            None => (Box::new(stream), None),
        };
        let mut connection = Framed::new(stream, handshake_codec());
        let Frame::Hello {
            version,
            node_id: peer,
        } = next_frame(&mut connection).await?
        else {
            return Err(HandshakeError::Unexpected);
        };
        if version != TRANSPORT_VERSION {
            return Err(HandshakeError::Version(version));
        }
        if peer == self.node_id {
            return Err(HandshakeError::SelfId(peer));
        }
        if let Some(certificate) = &certificate
            && !crate::security::tls::certificate_names_node(certificate, peer)
        {
            return Err(HandshakeError::CertificateMismatch { claimed: peer });
        }
        if !lock(&self.peers).contains_key(&peer) {
            return Err(HandshakeError::UnknownPeer(peer));
        }
        let welcome = Frame::Welcome {
            node_id: self.node_id,
        };
        send_frame(&mut connection, &welcome).await?;
        Ok((peer, authenticated(connection)))
    }

    /// The dialer's side: TLS verifying the acceptor's certificate names
    /// `peer`, then `Hello` and the acceptor's `Welcome`.
    async fn dial(&self, peer: NodeId, address: &str) -> Result<Connection, HandshakeError> {
        let exchange = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| HandshakeError::Timeout)??;
            let _ = stream.set_nodelay(true);
            let stream: Box<dyn PeerIo> = match &self.tls {
                Some(tls) => {
                    let name = rustls_pki_types::ServerName::try_from(
                        crate::security::tls::node_name(peer),
                    )
                    .map_err(|e| {
                        HandshakeError::Tls(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            e.to_string(),
                        ))
                    })?;
                    let stream = tls
                        .peer_connector()
                        .connect(name, stream)
                        .await
                        .map_err(HandshakeError::Tls)?;
                    Box::new(stream)
                }
                None => Box::new(stream),
            };
            let mut connection = Framed::new(stream, handshake_codec());
            let hello = Frame::Hello {
                version: TRANSPORT_VERSION,
                node_id: self.node_id,
            };
            send_frame(&mut connection, &hello).await?;
            let Frame::Welcome { node_id } = next_frame(&mut connection).await? else {
                return Err(HandshakeError::Unexpected);
            };
            if node_id != peer {
                return Err(HandshakeError::WrongPeer {
                    expected: peer,
                    found: node_id,
                });
            }
            Ok(connection)
        };
        let connection = tokio::time::timeout(self.limits.handshake_timeout, exchange)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
        Ok(authenticated(connection))
    }

    fn drop_queued(&self, queue: &LinkQueue) {
        for dropped in queue.clear() {
            self.counters.dropped(&dropped);
        }
    }

    /// Owns the connection to one peer for the node's lifetime.
    async fn run_link(
        self: Arc<Self>,
        peer: NodeId,
        address: Arc<Mutex<String>>,
        queue: Arc<LinkQueue>,
        mut accepted: mpsc::Receiver<Connection>,
    ) {
        let dialer = self.node_id < peer;
        let mut backoff = BACKOFF_INITIAL;
        let mut next: Option<Connection> = None;
        loop {
            let connection = if let Some(connection) = next.take() {
                connection
            } else if dialer {
                let target = lock(&address).clone();
                if target.is_empty() {
                    self.drop_queued(&queue);
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
                match self.dial(peer, &target).await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::debug!(peer, %target, %error, "dial failed; retrying");
                        self.drop_queued(&queue);
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
                            self.drop_queued(&queue);
                        }
                    }
                }
            };
            backoff = BACKOFF_INITIAL;
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer, "peer connected");
            match self.serve(peer, connection, &queue, &mut accepted).await {
                Ended::Closed(reason) => tracing::info!(peer, %reason, "peer connection closed"),
                // The peer reconnected (e.g. it restarted): use the new one.
                Ended::Replaced(connection) => next = Some(connection),
                Ended::Stopping => return,
            }
        }
    }

    /// Moves frames both ways until the connection fails or is replaced.
    /// Reading and writing run concurrently: a write blocked on a full
    /// socket never stops this node from reading what the peer sends.
    async fn serve(
        &self,
        peer: NodeId,
        connection: Connection,
        queue: &LinkQueue,
        accepted: &mut mpsc::Receiver<Connection>,
    ) -> Ended {
        let (sink, stream) = connection.split();
        tokio::select! {
            reason = self.write_frames(sink, queue) => Ended::Closed(reason),
            reason = self.read_frames(peer, stream) => Ended::Closed(reason),
            replacement = accepted.recv() => match replacement {
                Some(replacement) => Ended::Replaced(replacement),
                None => Ended::Stopping,
            },
        }
    }

    async fn write_frames(
        &self,
        mut sink: futures_util::stream::SplitSink<Connection, Bytes>,
        queue: &LinkQueue,
    ) -> String {
        let timeout = self.limits.write_timeout;
        let mut unflushed = 0usize;
        loop {
            let Some(frame) = queue.pop() else {
                if unflushed > 0 {
                    match tokio::time::timeout(timeout, sink.flush()).await {
                        Ok(Ok(())) => unflushed = 0,
                        Ok(Err(error)) => return format!("write failed: {error}"),
                        Err(_) => return format!("peer did not read for {timeout:?}"),
                    }
                }
                queue.ready().await;
                continue;
            };
            let length = frame.len();
            match tokio::time::timeout(timeout, sink.feed(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return format!("write failed: {error}"),
                Err(_) => return format!("peer did not read for {timeout:?}"),
            }
            self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
            unflushed += length;
            if unflushed >= FLUSH_BYTES {
                match tokio::time::timeout(timeout, sink.flush()).await {
                    Ok(Ok(())) => unflushed = 0,
                    Ok(Err(error)) => return format!("write failed: {error}"),
                    Err(_) => return format!("peer did not read for {timeout:?}"),
                }
            }
        }
    }

    async fn read_frames(
        &self,
        peer: NodeId,
        mut stream: futures_util::stream::SplitStream<Connection>,
    ) -> String {
        loop {
            let bytes = match stream.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(error)) => return format!("bad or oversized frame: {error}"),
                None => return "closed by peer".into(),
            };
            let frame = match Frame::decode(&bytes) {
                Ok(frame) => frame,
                Err(error) => return format!("undecodable frame: {error}"),
            };
            if matches!(frame, Frame::Hello { .. } | Frame::Welcome { .. }) {
                return "handshake frame after the handshake".into();
            }
            self.counters
                .frames_received
                .fetch_add(1, Ordering::Relaxed);
            if let Some(handler) = self.inbound.get() {
                handler.on_frame(peer, frame);
            }
        }
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
        if to == self.node_id {
            return;
        }
        let pushed = match self.queue_of(to) {
            Some(queue) => queue.push_snapshot(region.as_str(), epoch, metadata, image),
            None => Err(Dropped {
                region: region.to_string(),
                frames: 1,
                bytes: image.len() as u64,
            }),
        };
        if let Err(dropped) = pushed {
            self.counters.dropped(&dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A dialer whose peer was away long enough for the backoff to grow
    /// reaches it soon after it listens again (before: up to 2 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_back_from_a_restart_is_reached_within_a_fraction_of_a_second()
    -> anyhow::Result<()> {
        let port = crate::tools::cluster::free_port()?;
        let peer_address = format!("127.0.0.1:{port}");
        let dialer =
            Transport::start(1, None, "127.0.0.1:0".parse()?, TransportLimits::default()).await?;
        dialer.set_peer(2, &peer_address);
        // Away for long enough that an unbounded doubling would wait ~2 s.
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        let back =
            Transport::start(2, None, peer_address.parse()?, TransportLimits::default()).await?;
        back.set_peer(1, &dialer.local_address().to_string());
        let listening = Instant::now();
        while dialer.stats().connections == 0 {
            anyhow::ensure!(
                listening.elapsed() < Duration::from_millis(700),
                "the dialer did not reconnect within 700 ms of the peer listening again"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}
