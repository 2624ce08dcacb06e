//! Closed-loop client workloads over the HTTP API or the binary wire
//! protocol, recording every operation into a [`History`] for the
//! linearizability checker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checker::{History, OpInput, OpOutput};
use crate::client::{ApiClient, ApiClientError};
use crate::wire::{Consistency, WireClient, WireClientError};

/// Where a workload's clients send their requests.
#[derive(Clone)]
pub enum Endpoint {
    Http(ApiClient),
    Wire(WireClient),
}

impl From<ApiClient> for Endpoint {
    fn from(client: ApiClient) -> Self {
        Endpoint::Http(client)
    }
}

impl From<WireClient> for Endpoint {
    fn from(client: WireClient) -> Self {
        Endpoint::Wire(client)
    }
}

/// A failed request, as much as the workload needs of it.
#[derive(Debug)]
struct RequestFailure {
    message: String,
    /// The failure proves the request never took effect.
    never_applied: bool,
    /// The node did not answer: try another.
    unreachable: bool,
    /// API address of a node to try instead.
    redirect: Option<String>,
}

impl From<ApiClientError> for RequestFailure {
    fn from(error: ApiClientError) -> Self {
        Self {
            never_applied: never_applied(&error),
            unreachable: error.status().is_none(),
            redirect: None,
            message: error.to_string(),
        }
    }
}

impl From<WireClientError> for RequestFailure {
    fn from(error: WireClientError) -> Self {
        Self {
            never_applied: error.never_applied(),
            unreachable: error.is_unreachable(),
            redirect: match &error {
                WireClientError::Failed(failure) => failure.redirect.clone(),
                _ => None,
            },
            message: error.to_string(),
        }
    }
}

fn consistency(name: &str) -> Consistency {
    match name {
        "lease" => Consistency::Lease,
        "local" => Consistency::Local,
        _ => Consistency::Linearizable,
    }
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl Endpoint {
    /// The API address (`host:port`) this endpoint talks to.
    fn address(&self) -> &str {
        match self {
            Endpoint::Http(client) => client
                .base()
                .trim_start_matches("https://")
                .trim_start_matches("http://"),
            Endpoint::Wire(client) => client.address(),
        }
    }

    async fn execute(
        &self,
        workload: &Workload,
        key: &str,
        input: &OpInput,
    ) -> Result<OpOutput, RequestFailure> {
        let region = &workload.region;
        match self {
            Endpoint::Http(api) => Ok(match input {
                OpInput::Get => OpOutput::Value(api.get(region, key, &workload.consistency).await?),
                OpInput::Put { value } => {
                    api.put(region, key, value).await?;
                    OpOutput::Ok
                }
                OpInput::Cas { expected, new } => {
                    let outcome = api
                        .cas(region, key, expected.as_deref(), new.as_deref())
                        .await?;
                    OpOutput::Cas {
                        succeeded: outcome.succeeded,
                        current: outcome.current,
                    }
                }
                OpInput::Delete => OpOutput::Deleted {
                    existed: api.delete(region, key).await?,
                },
            }),
            Endpoint::Wire(wire) => {
                let key = key.as_bytes();
                Ok(match input {
                    OpInput::Get => OpOutput::Value(text(
                        wire.get(region, key, consistency(&workload.consistency))
                            .await?,
                    )),
                    OpInput::Put { value } => {
                        wire.put(region, key, value.as_bytes()).await?;
                        OpOutput::Ok
                    }
                    OpInput::Cas { expected, new } => {
                        let (succeeded, current) = wire
                            .cas(
                                region,
                                key,
                                expected.as_deref().map(str::as_bytes),
                                new.as_deref().map(str::as_bytes),
                            )
                            .await?;
                        OpOutput::Cas {
                            succeeded,
                            current: text(current),
                        }
                    }
                    OpInput::Delete => OpOutput::Deleted {
                        existed: wire.delete(region, key).await?,
                    },
                })
            }
        }
    }
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct Workload {
    pub region: String,
    pub clients: usize,
    /// Keys per region; fewer keys mean more contention.
    pub keys: usize,
    pub value_bytes: usize,
    /// Percent of operations that are reads, and compare-and-swaps; the
    /// rest are puts.
    pub read_percent: u64,
    pub cas_percent: u64,
    pub consistency: String,
    /// Added to client ids in the history, so several workloads can share
    /// one recorder without their clients colliding.
    pub client_id_base: u64,
}

impl Workload {
    pub fn new(region: &str, clients: usize) -> Self {
        Self {
            region: region.to_string(),
            clients,
            keys: 32,
            value_bytes: 16,
            read_percent: 30,
            cas_percent: 10,
            consistency: "linearizable".into(),
            client_id_base: 0,
        }
    }
}

/// Shared by all clients of a run: the clock origin and the history.
pub struct Recorder {
    origin: Instant,
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            history: Mutex::new(History::new()),
        }
    }
}

impl Recorder {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nanoseconds since the recorder was made: the clock of the history's
    /// call and return times, for marking events (a swap) on it.
    pub fn elapsed_ns(&self) -> u64 {
        self.now()
    }

    pub fn operations(&self) -> Vec<crate::checker::Operation> {
        self.lock().operations().to_vec()
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct WorkloadReport {
    /// Latencies of successful operations.
    pub latencies: Vec<Duration>,
    pub writes: u64,
    pub reads: u64,
    pub cas: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl WorkloadReport {
    pub fn completed(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn absorb(&mut self, other: WorkloadReport) {
        self.latencies.extend(other.latencies);
        self.writes += other.writes;
        self.reads += other.reads;
        self.cas += other.cas;
        self.errors += other.errors;
    }

    /// Milliseconds at quantile `q` (latencies must be sorted).
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)].as_secs_f64() * 1e3
    }
}

/// Runs `workload` against `endpoints` (any node; redirects reach the
/// leader) for `duration`, recording into `recorder` if given.
pub async fn run<E: Into<Endpoint>>(
    endpoints: Vec<E>,
    workload: Workload,
    duration: Duration,
    recorder: Option<Arc<Recorder>>,
) -> WorkloadReport {
    let started = Instant::now();
    let deadline = started + duration;
    let endpoints: Arc<Vec<Endpoint>> = Arc::new(endpoints.into_iter().map(Into::into).collect());
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        tasks.push(tokio::spawn(client_loop(
            client as u64,
            endpoints.clone(),
            workload.clone(),
            deadline,
            recorder.clone(),
        )));
    }
    let mut report = WorkloadReport::default();
    for task in tasks {
        if let Ok(client_report) = task.await {
            report.absorb(client_report);
        }
    }
    report.latencies.sort_unstable();
    report.elapsed = started.elapsed();
    report
}

/// Errors that prove a request was refused before it was ordered, so it
/// can never take effect: no leader to take it, overloaded, sealed, or a
/// client error. Anything else (timeouts, lost connections, storage
/// failures) leaves the outcome unknown.
fn never_applied(error: &ApiClientError) -> bool {
    matches!(error.code(), Some("not_leader" | "overloaded" | "sealed"))
        || error
            .status()
            .is_some_and(|status| (400..500).contains(&status))
}

async fn client_loop(
    client: u64,
    endpoints: Arc<Vec<Endpoint>>,
    workload: Workload,
    deadline: Instant,
    recorder: Option<Arc<Recorder>>,
) -> WorkloadReport {
    let mut report = WorkloadReport::default();
    if endpoints.is_empty() {
        return report;
    }
    let mut endpoint = client as usize % endpoints.len();
    let mut sequence = 0u64;
    let mut rng = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let padding = "x".repeat(workload.value_bytes.saturating_sub(16));
    while Instant::now() < deadline {
        sequence += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = format!("k{}", rng % workload.keys.max(1) as u64);
        // Unique values let the checker tell every write apart.
        let value = format!("c{client}s{sequence}{padding}");
        let roll = (rng >> 32) % 100;
        let input = if roll < workload.read_percent {
            OpInput::Get
        } else if roll < workload.read_percent + workload.cas_percent {
            let expected = if rng & 1 == 0 {
                None
            } else {
                Some(format!(
                    "c{}s{}{padding}",
                    (rng >> 8) % workload.clients as u64,
                    sequence.saturating_sub(1)
                ))
            };
            OpInput::Cas {
                expected,
                new: Some(value.clone()),
            }
        } else {
            OpInput::Put {
                value: value.clone(),
            }
        };
        let endpoint_now = &endpoints[endpoint];
        // History keys name the region: regions are independent objects.
        let history_key = format!("{}/{key}", workload.region);
        let history_client = workload.client_id_base + client;
        // The call is recorded once its outcome is known (with the time it
        // was made), so refusals that prove it never happened can be left out.
        let call_time = recorder.as_ref().map(|r| r.now());
        let started = Instant::now();
        match &input {
            OpInput::Get => report.reads += 1,
            OpInput::Put { .. } | OpInput::Delete => report.writes += 1,
            OpInput::Cas { .. } => report.cas += 1,
        }
        match endpoint_now.execute(&workload, &key, &input).await {
            Ok(output) => {
                report.latencies.push(started.elapsed());
                if let (Some(recorder), Some(call)) = (&recorder, call_time) {
                    let mut history = recorder.lock();
                    let id = history.record_call(history_client, history_key, input, call);
                    let _ = history.record_return(id, output, recorder.now());
                }
            }
            Err(failure) => {
                report.errors += 1;
                if let (Some(recorder), Some(call)) = (&recorder, call_time)
                    && !failure.never_applied
                {
                    // The outcome is unknown: it may still take effect.
                    let mut history = recorder.lock();
                    let id = history.record_call(history_client, history_key, input, call);
                    let _ = history.record_unknown(id);
                }
                tracing::debug!(client, failure = %failure.message, "workload request failed");
                let redirected = failure
                    .redirect
                    .as_deref()
                    .and_then(|to| endpoints.iter().position(|e| e.address() == to));
                if let Some(target) = redirected {
                    endpoint = target;
                } else if failure.unreachable {
                    // The node is unreachable: try another.
                    endpoint = (endpoint + 1) % endpoints.len();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    report
}
