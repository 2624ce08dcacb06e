//! A multiplexed wire client: one connection, any number of concurrent
//! callers, requests and responses coalesced into as few writes as the
//! load allows. A lost connection fails the calls in flight (their outcome
//! is unknown) and the next call dials again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio_util::codec::FramedRead;

use super::{ApiStream, CONNECTION_ERROR_ID, Consistency, Failure, Op, Response};
use crate::client::Credentials;
use crate::state_machine::KvOutcome;

#[derive(Debug, thiserror::Error)]
pub enum WireClientError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The request may or may not have taken effect.
    #[error("the connection ended before an answer ({0}); the outcome is unknown")]
    ConnectionLost(String),
    /// The request may or may not have taken effect.
    #[error("no answer within {0:?}; the outcome is unknown")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(#[from] Failure),
    #[error("the request did not encode: {0}")]
    Encode(postcard::Error),
    #[error("unexpected outcome {0:?}")]
    Unexpected(KvOutcome),
}

impl WireClientError {
    /// Whether the request certainly never took effect.
    pub fn never_applied(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Encode(_) => true,
            Self::Failed(failure) => failure.never_applied(),
            Self::ConnectionLost(_) | Self::Timeout(_) | Self::Unexpected(_) => false,
        }
    }

    /// Whether the node could not be reached or stopped answering.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectionLost(_))
    }
}

type Answer = oneshot::Sender<Result<KvOutcome, WireClientError>>;

struct Shared {
    pending: Mutex<HashMap<u64, Answer>>,
    /// Set once the connection has ended, with why; read under `pending`.
    closed: Mutex<Option<Closed>>,
    /// Encoded requests waiting for the writer.
    outbox: Mutex<Vec<u8>>,
    wake_writer: Notify,
    next_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a connection ended, and the node's refusal if it refused it (a
/// later call gets that refusal too: it proves the call never ran).
#[derive(Clone)]
struct Closed {
    why: String,
    failure: Option<Failure>,
}

impl Closed {
    fn error(&self) -> WireClientError {
        match &self.failure {
            Some(failure) => WireClientError::Failed(failure.clone()),
            None => WireClientError::ConnectionLost(self.why.clone()),
        }
    }
}

impl Shared {
    /// Ends the connection for every caller waiting on it.
    fn close(&self, why: String) {
        self.close_with(why, None);
    }

    /// Ends the connection; with `failure` (the node refused the
    /// connection, e.g. its token) the callers get that failure, which
    /// proves their requests never ran.
    fn close_with(&self, why: String, failure: Option<Failure>) {
        let mut pending = lock(&self.pending);
        let closed = lock(&self.closed)
            .get_or_insert(Closed { why, failure })
            .clone();
        for (_, answer) in pending.drain() {
            let _ = answer.send(Err(closed.error()));
        }
    }
}

/// Aborts the connection's tasks when the last client clone goes.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One open connection and its reader and writer tasks.
struct Connection {
    shared: Arc<Shared>,
    _tasks: Tasks,
}

impl Connection {
    async fn open(address: &str, credentials: &Credentials) -> Result<Self, WireClientError> {
        let failed = |source| WireClientError::Connect {
            address: address.to_string(),
            source,
        };
        let tcp = TcpStream::connect(address).await.map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        let mut stream: ApiStream = match &credentials.ca_pem {
            Some(ca) => {
                let invalid = |why: String| {
                    failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
                };
                let config =
                    crate::security::tls::client_config(ca).map_err(|e| invalid(e.to_string()))?;
                let host = address
                    .rsplit_once(':')
                    .map_or(address, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| invalid(format!("{host:?}: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(failed)?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        let opening = super::opening(credentials.token.as_deref());
        stream.write_all(&opening).await.map_err(failed)?;
        stream.flush().await.map_err(failed)?;
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            outbox: Mutex::new(Vec::new()),
            wake_writer: Notify::new(),
            next_id: AtomicU64::new(1),
        });
        let tasks = Tasks(vec![
            tokio::spawn(read_responses(read, shared.clone())),
            tokio::spawn(write_requests(write, shared.clone())),
        ]);
        Ok(Self {
            shared,
            _tasks: tasks,
        })
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.closed).is_some()
    }

    async fn call(
        &self,
        region: &str,
        op: &Op,
        timeout: Duration,
    ) -> Result<KvOutcome, WireClientError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = lock(&shared.pending);
            if let Some(closed) = lock(&shared.closed).as_ref() {
                return Err(closed.error());
            }
            pending.insert(id, answer);
        }
        let encoded =
            super::encode_frame(&RequestRef { id, region, op }, &mut lock(&shared.outbox));
        if let Err(error) = encoded {
            lock(&shared.pending).remove(&id);
            return Err(WireClientError::Encode(error));
        }
        shared.wake_writer.notify_one();
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WireClientError::ConnectionLost("client shut down".into())),
            Err(_) => {
                lock(&shared.pending).remove(&id);
                Err(WireClientError::Timeout(timeout))
            }
        }
    }
}

/// A client of one node; cheap to clone, all clones share its connection.
#[derive(Clone)]
pub struct WireClient {
    address: Arc<str>,
    timeout: Duration,
    connection: Arc<RwLock<Arc<Connection>>>,
    credentials: Credentials,
    /// Held while dialling, so callers that find the connection lost at
    /// once dial once between them, not once each.
    dialling: Arc<tokio::sync::Mutex<()>>,
}

/// [`super::Request`] without owning its region name, to encode in place.
#[derive(Serialize)]
struct RequestRef<'a> {
    id: u64,
    region: &'a str,
    op: &'a Op,
}

impl WireClient {
    /// Connects to a node's API address (`host:port`); each call waits at
    /// most `timeout` for its answer.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Self, WireClientError> {
        Self::connect_with(address, timeout, &Credentials::none()).await
    }

    /// Like [`WireClient::connect`], over TLS with the credentials' CA
    /// and presenting their token.
    pub async fn connect_with(
        address: &str,
        timeout: Duration,
        credentials: &Credentials,
    ) -> Result<Self, WireClientError> {
        let connection = Connection::open(address, credentials).await?;
        Ok(Self {
            address: address.into(),
            timeout,
            credentials: credentials.clone(),
            connection: Arc::new(RwLock::new(Arc::new(connection))),
            dialling: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The node's API address this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn current(&self) -> Arc<Connection> {
        self.connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The open connection, dialling again if the last one ended.
    async fn open_connection(&self) -> Result<Arc<Connection>, WireClientError> {
        let current = self.current();
        if !current.is_closed() {
            return Ok(current);
        }
        let _dialling = self.dialling.lock().await;
        let current = self.current();
        if !current.is_closed() {
            // Another caller dialled while this one waited.
            return Ok(current);
        }
        let fresh = Arc::new(Connection::open(&self.address, &self.credentials).await?);
        *self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// Sends `op` for `region` and waits for its outcome.
    pub async fn call(&self, region: &str, op: &Op) -> Result<KvOutcome, WireClientError> {
        self.open_connection()
            .await?
            .call(region, op, self.timeout)
            .await
    }

    pub async fn put(&self, region: &str, key: &[u8], value: &[u8]) -> Result<(), WireClientError> {
        match self.call(region, &Op::put(key, value)).await? {
            KvOutcome::Written | KvOutcome::WrittenStamped { .. } => Ok(()),
            other => Err(WireClientError::Unexpected(other)),
        }
    }

    /// Whether the key existed.
    pub async fn delete(&self, region: &str, key: &[u8]) -> Result<bool, WireClientError> {
        match self.call(region, &Op::delete(key)).await? {
            KvOutcome::Deleted { existed } | KvOutcome::DeletedStamped { existed, .. } => {
                Ok(existed)
            }
            other => Err(WireClientError::Unexpected(other)),
        }
    }

    /// Whether it succeeded, and the value the key held.
    pub async fn cas(
        &self,
        region: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), WireClientError> {
        match self.call(region, &Op::cas(key, expected, new)).await? {
            KvOutcome::Cas { succeeded, current } => {
                Ok((succeeded, current.map(serde_bytes::ByteBuf::into_vec)))
            }
            other => Err(WireClientError::Unexpected(other)),
        }
    }

    pub async fn get(
        &self,
        region: &str,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, WireClientError> {
        match self.call(region, &Op::get(key, consistency)).await? {
            KvOutcome::Value(value) => Ok(value.map(serde_bytes::ByteBuf::into_vec)),
            other => Err(WireClientError::Unexpected(other)),
        }
    }
}

async fn write_requests(mut write: WriteHalf<ApiStream>, shared: Arc<Shared>) {
    let mut sending = Vec::new();
    loop {
        shared.wake_writer.notified().await;
        std::mem::swap(&mut sending, &mut *lock(&shared.outbox));
        if sending.is_empty() {
            continue;
        }
        // Flushed too: over TLS a write may leave records buffered in the
        // session when the socket is full, until a flush pushes them.
        let written = match write.write_all(&sending).await {
            Ok(()) => write.flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            shared.close(format!("write failed: {error}"));
            return;
        }
        sending.clear();
    }
}

async fn read_responses(read: ReadHalf<ApiStream>, shared: Arc<Shared>) {
    let mut frames = FramedRead::new(read, super::codec());
    let why = loop {
        let bytes = match frames.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(error)) => break format!("read failed: {error}"),
            None => break "the node closed the connection".to_string(),
        };
        let response: Response = match postcard::from_bytes(&bytes) {
            Ok(response) => response,
            Err(error) => break format!("a response did not decode: {error}"),
        };
        if response.id == CONNECTION_ERROR_ID {
            match response.result {
                Err(failure) => {
                    let why = format!("the node ended the connection: {failure}");
                    let refused = matches!(
                        failure.code.as_str(),
                        "unauthenticated" | "invalid_token" | "token_expired"
                    );
                    shared.close_with(why, refused.then_some(failure));
                    return;
                }
                Ok(outcome) => break format!("the node ended the connection ({outcome:?})"),
            }
        }
        let answer = lock(&shared.pending).remove(&response.id);
        if let Some(answer) = answer {
            let _ = answer.send(response.result.map_err(WireClientError::Failed));
        }
    };
    shared.close(why);
}
