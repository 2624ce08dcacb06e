//! The node's side: a listener that tells wire connections from HTTP ones
//! on the shared API port, and one reader and one writer per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use std::sync::atomic::Ordering;
use synod_guest_sdk::Rejection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::{CONNECTION_ERROR_ID, Failure, Hello, IN_FLIGHT_MAX, MAGIC, Op, Request, Response};
use crate::api::ApiError;
use crate::node::{Node, NodeError};
use crate::region::driver::ClientError;
use crate::security::{Permission, Principal};
use crate::state_machine::KvOutcome;

/// How long a new connection may take to show its first bytes before it
/// is handed to HTTP (which has its own idle handling).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Responses gathered into one write, at most.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A client connection's byte stream: TLS over TCP, or bare TCP.
pub trait ApiIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ApiIo for T {}

/// A boxed client stream.
pub type ApiStream = Box<dyn ApiIo>;

/// An HTTP connection handed over by [`SharedPortListener`]; `permit`
/// holds its place under `connections_max` until dropped. The stream
/// replays the bytes read while telling wire from HTTP.
pub struct HttpConnection {
    pub stream: Prefixed<ApiStream>,
    pub remote: SocketAddr,
    pub permit: ConnectionPlace,
}

/// A connection's place under `connections_max`, given back on drop.
pub struct ConnectionPlace {
    _permit: OwnedSemaphorePermit,
    counters: Arc<crate::api::ApiCounters>,
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts on the API port, at most `connections_max` connections at once
/// (more are closed at once and counted). Wire connections are served
/// here; the rest are handed to the HTTP server ([`Self::accept_http`]).
/// Dropping it stops accepting and ends the wire connections.
pub struct SharedPortListener {
    http: mpsc::Receiver<HttpConnection>,
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

    /// The next HTTP connection; `None` once the acceptor has stopped.
    pub async fn accept_http(&mut self) -> Option<HttpConnection> {
        self.http.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for SharedPortListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(listener: TcpListener, node: Arc<Node>, http: mpsc::Sender<HttpConnection>) {
    // Owned here so that aborting the acceptor ends every wire connection.
    let mut connections = JoinSet::new();
    let limit = node.config().connections.connections_max;
    let places = Arc::new(Semaphore::new(limit));
    let counters = node.api_counters().clone();
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
        let Ok(permit) = places.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, limit, "refused an API connection: connections_max reached");
            drop(stream);
            continue;
        };
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        let place = ConnectionPlace {
            _permit: permit,
            counters: counters.clone(),
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let http = http.clone();
        connections.spawn(async move {
            let stream: ApiStream = match &node.config().security {
                Some(security) => {
                    let accept = security.tls.api_acceptor().accept(stream);
                    match tokio::time::timeout(SNIFF_TIMEOUT, accept).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "API TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => Box::new(stream),
            };
            let (opening, stream) = sniff(stream).await;
            if opening == MAGIC[..] {
                serve_connection(node, stream, peer).await;
                drop(place);
            } else {
                let _ = http
                    .send(HttpConnection {
                        stream: Prefixed::new(opening, stream),
                        remote: peer,
                        permit: place,
                    })
                    .await;
            }
        });
    }
}

/// Reads the connection's first bytes until they are [`MAGIC`] or stop
/// being a prefix of it (an HTTP request does at its first byte), the
/// client closes, or [`SNIFF_TIMEOUT`] passes. Returns what was read.
async fn sniff(mut stream: ApiStream) -> (Vec<u8>, ApiStream) {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut opening = Vec::with_capacity(MAGIC.len());
    while opening.len() < MAGIC.len() && MAGIC.starts_with(&opening) {
        let mut buffer = [0u8; MAGIC.len()];
        let want = MAGIC.len() - opening.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => opening.extend_from_slice(&buffer[..read]),
        }
    }
    (opening, stream)
}

/// A stream that first replays `prefix`, then reads from `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let count = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..count]);
            self.offset += count;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The largest request frame this node accepts: the largest operation
/// its key and value limits allow (a cas carries two values), with room
/// for the region name and encoding, and never over [`super::FRAME_BYTES_MAX`].
pub fn request_frame_bytes_max(node: &Node) -> usize {
    let config = node.config();
    (2 * config.value_bytes_max + config.key_bytes_max + 4096).min(super::FRAME_BYTES_MAX)
}

/// Serves one wire connection (its [`MAGIC`] already read) until the client
/// closes it, sends something undecodable, takes longer than
/// `wire_frame_timeout` to complete a frame or to take a batch of answers,
/// or stays idle past `wire_idle_timeout`. One task reads requests, drives them all, and
/// writes each batch of answers that is ready: an answer wakes this task
/// directly, with no hop through another. It stops reading while
/// `wire_in_flight_bytes_max` bytes of requests await their answers.
pub async fn serve_connection(node: Arc<Node>, stream: ApiStream, peer: SocketAddr) {
    let peer = Some(peer);
    let limits = node.config().connections.clone();
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, RequestDecoder::new(request_frame_bytes_max(&node)));
    let mut running = FuturesUnordered::new();
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut reading = true;
    // The first frame authenticates the connection, once.
    let principal = match hello(&node, &mut frames, limits.wire_frame_timeout).await {
        Ok(principal) => principal.map(Arc::new),
        Err(failure) => {
            tracing::info!(?peer, code = %failure.code, "refused a wire connection");
            push(
                &Response {
                    id: CONNECTION_ERROR_ID,
                    result: Err(failure),
                },
                &mut buffer,
            );
            let _ = tokio::time::timeout(limits.wire_frame_timeout, write_out(&mut write, &buffer))
                .await;
            let _ = write.shutdown().await;
            return;
        }
    };
    let mut in_flight_bytes = 0usize;
    // The last request read or answer written (idle timer), and when the
    // frame being read was first seen partial (frame timer).
    let mut since = tokio::time::Instant::now();
    let mut partial_since: Option<tokio::time::Instant> = None;
    let check_every = (limits.wire_frame_timeout.min(limits.wire_idle_timeout) / 4)
        .max(Duration::from_millis(10));
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let may_read = reading
            && running.len() < IN_FLIGHT_MAX
            && in_flight_bytes < limits.wire_in_flight_bytes_max;
        tokio::select! {
            frame = frames.next(), if may_read => {
                since = tokio::time::Instant::now();
                partial_since = None;
                match decode(frame) {
                    Ok(Some((request, bytes))) => {
                        in_flight_bytes += bytes;
                        node.api_counters()
                            .wire_in_flight_bytes_peak
                            .fetch_max(in_flight_bytes as u64, Ordering::Relaxed);
                        running.push(answer(node.clone(), principal.clone(), request, bytes));
                    }
                    Ok(None) => reading = false,
                    Err(failure) => {
                        tracing::warn!(?peer, %failure, "closing a client connection");
                        push(&Response { id: CONNECTION_ERROR_ID, result: Err(failure) }, &mut buffer);
                        reading = false;
                    }
                }
            }
            Some((response, bytes)) = running.next(), if !running.is_empty() => {
                in_flight_bytes -= bytes;
                push(&response, &mut buffer);
                // Replies of one commit complete together: send them as one.
                while buffer.len() < WRITE_BATCH_BYTES {
                    match running.next().now_or_never() {
                        Some(Some((response, bytes))) => {
                            in_flight_bytes -= bytes;
                            push(&response, &mut buffer);
                        }
                        _ => break,
                    }
                }
                since = tokio::time::Instant::now();
            }
            _ = check.tick(), if reading => {
                let now = tokio::time::Instant::now();
                let partial = !frames.read_buffer().is_empty();
                partial_since = if partial && may_read {
                    Some(partial_since.unwrap_or(now))
                } else {
                    // Not reading (in-flight bound): the client is not late.
                    None
                };
                let expired = if partial_since
                    .is_some_and(|started| now - started > limits.wire_frame_timeout)
                {
                    Some(format!(
                        "a request frame was not completed within {:?}",
                        limits.wire_frame_timeout
                    ))
                } else if !partial && running.is_empty() && now - since > limits.wire_idle_timeout {
                    Some(format!("idle for {:?}", limits.wire_idle_timeout))
                } else {
                    None
                };
                if let Some(why) = expired {
                    tracing::debug!(?peer, %why, "closing a client connection");
                    node.api_counters().wire_timeouts.fetch_add(1, Ordering::Relaxed);
                    push(
                        &Response {
                            id: CONNECTION_ERROR_ID,
                            result: Err(Failure::new("timeout", why)),
                        },
                        &mut buffer,
                    );
                    reading = false;
                }
            }
            else => break,
        }
        if !buffer.is_empty() {
            // A client that stops reading its answers is not waited for
            // longer than it may take to send a frame.
            match tokio::time::timeout(limits.wire_frame_timeout, write_out(&mut write, &buffer))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "a client connection closed while answering");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        ?peer,
                        "closing a client connection that does not read its answers"
                    );
                    node.api_counters()
                        .wire_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            buffer.clear();
            buffer.shrink_to(WRITE_BATCH_BYTES * 2);
        }
    }
    let _ = write.shutdown().await;
}

/// Length-delimited request frames (4-byte big-endian length). Unlike
/// `LengthDelimitedCodec` it does not reserve room for a whole frame when
/// its header arrives: memory grows only with the bytes that do arrive.
struct RequestDecoder {
    max: usize,
}

impl RequestDecoder {
    fn new(max: usize) -> Self {
        Self { max }
    }
}

impl tokio_util::codec::Decoder for RequestDecoder {
    type Item = tokio_util::bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(
        &mut self,
        src: &mut tokio_util::bytes::BytesMut,
    ) -> Result<Option<Self::Item>, Self::Error> {
        let Some(header) = src.get(..4) else {
            return Ok(None);
        };
        let mut length = [0u8; 4];
        length.copy_from_slice(header);
        let length = u32::from_be_bytes(length) as usize;
        if length > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a frame of {length} bytes is over this node's limit of {}",
                    self.max
                ),
            ));
        }
        if src.len() < 4 + length {
            return Ok(None);
        }
        let mut frame = src.split_to(4 + length);
        let _ = frame.split_to(4);
        Ok(Some(frame))
    }
}

/// The next request; `None` once the client has closed its side.
fn decode(
    frame: Option<std::io::Result<impl AsRef<[u8]>>>,
) -> Result<Option<(Request, usize)>, Failure> {
    match frame {
        None => Ok(None),
        Some(Ok(bytes)) => postcard::from_bytes::<Request>(bytes.as_ref())
            .map(|request| Some((request, bytes.as_ref().len())))
            .map_err(|error| {
                Failure::new(
                    "malformed_request",
                    format!("a request frame did not decode: {error}"),
                )
            }),
        Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Some(Err(error)) => Err(Failure::new("malformed_frame", error.to_string())),
    }
}

/// Reads the connection's first frame, a [`Hello`], and authenticates its
/// token (a node without security takes any). The token is never logged.
async fn hello<R: AsyncRead + Unpin>(
    node: &Node,
    frames: &mut FramedRead<R, RequestDecoder>,
    timeout: Duration,
) -> Result<Option<Principal>, Failure> {
    let frame = match tokio::time::timeout(timeout, frames.next()).await {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(error))) => return Err(Failure::new("malformed_frame", error.to_string())),
        Ok(None) => return Err(Failure::new("unauthenticated", "closed before the hello")),
        Err(_) => {
            return Err(Failure::new(
                "timeout",
                format!("no hello frame within {timeout:?}"),
            ));
        }
    };
    let hello: Hello = postcard::from_bytes(&frame).map_err(|error| {
        Failure::new(
            "malformed_request",
            format!("the first frame must be a hello: {error}"),
        )
    })?;
    let Some(security) = &node.config().security else {
        return Ok(None);
    };
    security
        .tokens
        .authenticate(hello.token.as_deref())
        .map(Some)
        .map_err(|error| Failure::new(error.code(), error.to_string()))
}

/// Runs one request; returns its answer and the request's frame bytes,
/// which leave the in-flight count.
async fn answer(
    node: Arc<Node>,
    principal: Option<Arc<Principal>>,
    request: Request,
    bytes: usize,
) -> (Response, usize) {
    let result = match principal.as_deref().and_then(|p| refusal(p, &request)) {
        Some(failure) => Err(failure),
        None => execute(&node, &request.region, request.op).await,
    };
    (
        Response {
            id: request.id,
            result,
        },
        bytes,
    )
}

/// Why `principal` may not run `request`, if it may not: its token expired
/// after the connection authenticated, or its role or regions do not cover
/// the request.
fn refusal(principal: &Principal, request: &Request) -> Option<Failure> {
    if principal.is_expired() {
        return Some(Failure::new(
            "token_expired",
            format!(
                "the token {:?} expired after this connection authenticated; reconnect with a valid token",
                principal.name
            ),
        ));
    }
    let (permission, verb) = match &request.op {
        Op::Write(_) => (Permission::Write(request.region.clone()), "write"),
        Op::Read { .. } => (Permission::Read(request.region.clone()), "read"),
    };
    (!principal.may(&permission)).then(|| {
        Failure::new(
            "forbidden",
            format!(
                "the token {:?} may not {verb} region {}",
                principal.name, request.region
            ),
        )
    })
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
        Err(error) => return Err(region_failure(node, region, error).await),
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
async fn region_failure(node: &Node, region: &str, error: NodeError) -> Failure {
    match node.region_host_elsewhere_agreed(region).await {
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

/// Writes `bytes` and flushes them: over TLS a write can leave encrypted
/// records buffered in the session when the socket is full, and only a
/// flush is sure to push them out (without it answers stall under load).
async fn write_out<W: AsyncWrite + Unpin>(write: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}
