//! The node's side: a listener that tells wire connections from HTTP ones
//! on the shared API port, and one reader and one writer per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use synod_guest_sdk::Rejection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::{CONNECTION_ERROR_ID, Failure, IN_FLIGHT_MAX, MAGIC, Op, Request, Response};
use crate::api::ApiError;
use crate::node::{Node, NodeError};
use crate::region::driver::ClientError;
use crate::state_machine::KvOutcome;

/// How long a new connection may take to show its first bytes before it
/// is handed to HTTP (which has its own idle handling).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Responses gathered into one write, at most.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Accepts on the API port. Wire connections are served here; the rest
/// are handed to the HTTP server through [`axum::serve::Listener`].
/// Dropping it stops accepting and ends the wire connections.
pub struct SharedPortListener {
    http: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl SharedPortListener {
    pub fn new(listener: TcpListener, node: Arc<Node>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (http, handed_over) = mpsc::channel(256);
        let acceptor = tokio::spawn(accept_loop(listener, node, http));
        Ok(Self {
            http: handed_over,
            local,
            acceptor,
        })
    }
}

impl Drop for SharedPortListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for SharedPortListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.http.recv().await {
            Some(connection) => connection,
            // The acceptor is gone only once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    http: mpsc::Sender<(TcpStream, SocketAddr)>,
) {
    // Owned here so that aborting the acceptor ends every wire connection.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let http = http.clone();
        connections.spawn(async move {
            if speaks_wire(&stream).await {
                serve_connection(node, stream).await;
            } else {
                let _ = http.send((stream, peer)).await;
            }
        });
    }
}

/// Whether the connection opens with [`MAGIC`], judged from the bytes
/// available without consuming them.
async fn speaks_wire(stream: &TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut opening = [0u8; MAGIC.len()];
    loop {
        let seen = match tokio::time::timeout_at(deadline, stream.peek(&mut opening)).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(_)) | Err(_) => return false,
        };
        if seen == 0 || opening[..seen] != MAGIC[..seen] {
            return false;
        }
        if seen == MAGIC.len() {
            return true;
        }
        // A prefix of the magic so far: peek returns at once while any
        // byte is buffered, so wait a little for the rest.
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves one wire connection (opening with [`MAGIC`]) until the client
/// closes it or sends something undecodable. One task reads requests,
/// drives them all, and writes each batch of answers that is ready: an
/// answer wakes this task directly, with no hop through another.
pub async fn serve_connection(node: Arc<Node>, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let mut opening = [0u8; MAGIC.len()];
    if stream.read_exact(&mut opening).await.is_err() || &opening != MAGIC {
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, super::codec());
    let mut running = FuturesUnordered::new();
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut reading = true;
    loop {
        tokio::select! {
            frame = frames.next(), if reading && running.len() < IN_FLIGHT_MAX => {
                match decode(frame) {
                    Ok(Some(request)) => running.push(answer(node.clone(), request)),
                    Ok(None) => reading = false,
                    Err(failure) => {
                        tracing::warn!(?peer, %failure, "closing a client connection");
                        push(&Response { id: CONNECTION_ERROR_ID, result: Err(failure) }, &mut buffer);
                        reading = false;
                    }
                }
            }
            Some(response) = running.next(), if !running.is_empty() => {
                push(&response, &mut buffer);
                // Replies of one commit complete together: send them as one.
                while buffer.len() < WRITE_BATCH_BYTES {
                    match running.next().now_or_never() {
                        Some(Some(response)) => push(&response, &mut buffer),
                        _ => break,
                    }
                }
            }
            else => break,
        }
        if !buffer.is_empty() {
            if let Err(error) = write.write_all(&buffer).await {
                tracing::debug!(%error, "a client connection closed while answering");
                return;
            }
            buffer.clear();
            buffer.shrink_to(WRITE_BATCH_BYTES * 2);
        }
    }
    let _ = write.shutdown().await;
}

/// The next request; `None` once the client has closed its side.
fn decode(frame: Option<std::io::Result<impl AsRef<[u8]>>>) -> Result<Option<Request>, Failure> {
    match frame {
        None => Ok(None),
        Some(Ok(bytes)) => postcard::from_bytes::<Request>(bytes.as_ref())
            .map(Some)
            .map_err(|error| {
                Failure::new(
                    "malformed_request",
                    format!("a request frame did not decode: {error}"),
                )
            }),
        Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Some(Err(error)) => Err(Failure::new(
            "malformed_frame",
            format!(
                "{error} (frames are at most {} bytes)",
                super::FRAME_BYTES_MAX
            ),
        )),
    }
}

async fn answer(node: Arc<Node>, request: Request) -> Response {
    let result = execute(&node, &request.region, request.op).await;
    Response {
        id: request.id,
        result,
    }
}

fn push(response: &Response, buffer: &mut Vec<u8>) {
    if let Err(error) = super::encode_frame(response, buffer) {
        tracing::error!(%error, id = response.id, "a response did not encode");
    }
}

/// Checks `op` against the node's limits, then runs it on the local
/// replica of `region`.
async fn execute(node: &Node, region: &str, op: Op) -> Result<KvOutcome, Failure> {
    check_limits(node, &op)?;
    let handle = match node.region(region).await {
        Ok(handle) => handle,
        Err(error) => return Err(region_failure(node, region, error)),
    };
    let timeout = node.config().request_timeout;
    let reply = match op {
        Op::Write(command) => handle.write(&command, timeout).await,
        Op::Read { query, consistency } => handle.read(&query, consistency.into(), timeout).await,
    };
    match reply {
        Ok(KvOutcome::Invalid(why)) => Err(Failure::new("invalid_request", why)),
        Ok(outcome) => Ok(outcome),
        Err(error) => Err(client_failure(node, error)),
    }
}

fn check_limits(node: &Node, op: &Op) -> Result<(), Failure> {
    let config = node.config();
    let key = op.key();
    if key.is_empty() {
        return Err(Failure::new("invalid_key", "the key is empty"));
    }
    if key.len() > config.key_bytes_max {
        return Err(Failure::new(
            "key_too_large",
            format!(
                "the key is {} bytes; the limit is {}",
                key.len(),
                config.key_bytes_max
            ),
        ));
    }
    if let Some(value) = op.values().find(|v| v.len() > config.value_bytes_max) {
        return Err(Failure::new(
            "value_too_large",
            format!(
                "the value is {} bytes; the limit is {}",
                value.len(),
                config.value_bytes_max
            ),
        ));
    }
    Ok(())
}

/// The region is not here: point at a node that hosts it, if known.
fn region_failure(node: &Node, region: &str, error: NodeError) -> Failure {
    match node.region_host_elsewhere(region) {
        Some((id, api)) => Failure {
            code: "region_not_hosted".into(),
            message: format!("region {region} has no replica here; node {id} hosts it"),
            redirect: Some(api),
        },
        None => failure_of(ApiError::from(error)),
    }
}

/// Maps a driver error to the HTTP API's code, pointing at the leader for
/// `not_leader` when its address is known.
fn client_failure(node: &Node, error: ClientError) -> Failure {
    let redirect = match &error {
        ClientError::Rejected(Rejection::NotLeader(Some(leader)))
            if *leader != node.config().node_id =>
        {
            node.api_address_of(*leader)
        }
        _ => None,
    };
    Failure {
        redirect,
        ..failure_of(ApiError::from(error))
    }
}

fn failure_of(error: ApiError) -> Failure {
    Failure::new(error.code, error.message)
}
