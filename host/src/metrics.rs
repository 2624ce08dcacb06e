//! The Prometheus endpoint (`GET /metrics`, `GET /v1/metrics`): the
//! per-region request instruments, and the scrape that gathers every figure
//! and renders it in the text exposition format.
//!
//! Most figures already exist and are only read at scrape time: the group
//! commit's stats, the transport's and the API port's counters, and each
//! region's status (quota use, plugin CPU, fuel and protocol counters). The
//! request path adds only [`RegionMetrics`]: per region, writes and reads
//! answered, failed, and their latency histograms, a few relaxed atomic
//! additions per request (no lock, no allocation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::node::{Node, NodeStatus};
use crate::region::driver::RegionStatus;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for one region's status.
const REGION_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the latency buckets, in nanoseconds: 100 µs to 10 s.
const LATENCY_BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_NANOS.len() + 1;

/// A latency histogram with fixed buckets: one relaxed addition to a
/// bucket and one to the sum per observation.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, count)` per bucket, `f64::MAX` for `+Inf`.
    fn bounds(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = LATENCY_BOUNDS_NANOS
                    .get(i)
                    .map_or(f64::MAX, |nanos| *nanos as f64 / 1e9);
                (bound, *count)
            })
            .collect()
    }
}

/// One kind of client request to a region: how many were answered, how
/// many failed (rejected, redirected, timed out, overloaded), and the
/// latency of the answered ones.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    ok: AtomicU64,
    failed: AtomicU64,
    latency: Histogram,
}

impl RequestMetrics {
    /// Counts one request that started at `started`.
    #[inline]
    pub fn record(&self, ok: bool, started: Instant) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.latency.observe(started.elapsed());
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> RequestSnapshot {
        RequestSnapshot {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestSnapshot {
    pub ok: u64,
    pub failed: u64,
    pub latency: HistogramSnapshot,
}

/// The request-path instruments of one region replica, shared by its
/// handles (the client side) and its driver (the outgoing messages).
#[derive(Debug, Default)]
pub struct RegionMetrics {
    pub writes: RequestMetrics,
    pub reads: RequestMetrics,
    /// Message frames and bytes (snapshots included) the region handed to
    /// the transport.
    sent_frames: AtomicU64,
    sent_bytes: AtomicU64,
}

impl RegionMetrics {
    #[inline]
    pub fn sent(&self, bytes: usize) {
        self.sent_frames.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RegionMetricsSnapshot {
        RegionMetricsSnapshot {
            writes: self.writes.snapshot(),
            reads: self.reads.snapshot(),
            sent_frames: self.sent_frames.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionMetricsSnapshot {
    pub writes: RequestSnapshot,
    pub reads: RequestSnapshot,
    pub sent_frames: u64,
    pub sent_bytes: u64,
}

/// One region at scrape time.
#[derive(Debug)]
pub struct RegionScrape {
    pub name: String,
    pub metrics: RegionMetricsSnapshot,
    /// Absent if the region did not answer in time (or stopped).
    pub status: Option<RegionStatus>,
}

/// Everything one scrape reports.
#[derive(Debug)]
pub struct Scrape {
    pub node: NodeStatus,
    pub regions: Vec<RegionScrape>,
}

/// Gathers the node's figures: its status, and every region's status and
/// instruments (the regions are asked at once, each for at most 2 s).
pub async fn scrape(node: &Node) -> Scrape {
    let handles = node.regions().await;
    let statuses = futures_util::future::join_all(handles.iter().map(|handle| async move {
        tokio::time::timeout(REGION_STATUS_TIMEOUT, handle.status())
            .await
            .ok()
            .and_then(Result::ok)
    }))
    .await;
    let regions = handles
        .iter()
        .zip(statuses)
        .map(|(handle, status)| RegionScrape {
            name: handle.name().to_string(),
            metrics: handle.metrics().snapshot(),
            status,
        })
        .collect();
    Scrape {
        node: node.status().await,
        regions,
    }
}

/// Renders a scrape in the OpenMetrics text format.
pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels = Vec<(&'static str, String)>;

fn region_labels(name: &str) -> Labels {
    vec![("region", name.to_string())]
}

/// Writes one metric family: its descriptor, then each sample.
fn family<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error>
where
    V: Sample,
{
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            value.encode(&mut metric, kind)?;
        } else {
            value.encode(&mut metric.encode_family(&labels)?, kind)?;
        }
    }
    Ok(())
}

/// A value one sample carries.
trait Sample {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error>;
}

impl Sample for u64 {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(self, None),
            _ => encoder.encode_gauge(self),
        }
    }
}

impl Sample for f64 {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, f64>(self, None),
            _ => encoder.encode_gauge(self),
        }
    }
}

impl Sample for HistogramSnapshot {
    fn encode(
        &self,
        encoder: &mut MetricEncoder,
        _kind: MetricType,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(
            self.sum_nanos as f64 / 1e9,
            self.count(),
            &self.bounds(),
            None,
        )
    }
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

fn one<V>(value: V) -> [(Labels, V); 1] {
    [(Vec::new(), value)]
}

impl Scrape {
    fn encode_node(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let bytes = Some(&Unit::Bytes);
        let seconds = Some(&Unit::Seconds);
        family(
            e,
            "synod_uptime",
            "Time since this node started.",
            seconds,
            GAUGE,
            one(node.uptime_seconds),
        )?;
        family(
            e,
            "synod_regions",
            "Regions hosted on this node.",
            None,
            GAUGE,
            one(node.regions as u64),
        )?;
        let wal = &node.wal;
        family(
            e,
            "synod_wal_fsyncs",
            "WAL fsyncs (one frame each) since start.",
            None,
            COUNTER,
            one(wal.fsyncs),
        )?;
        family(
            e,
            "synod_wal_entries",
            "WAL entries (about one per region per round) since start.",
            None,
            COUNTER,
            one(wal.entries),
        )?;
        family(
            e,
            "synod_wal_written",
            "Bytes written to the WAL since start.",
            bytes,
            COUNTER,
            one(wal.bytes),
        )?;
        family(
            e,
            "synod_wal_checkpoints",
            "WAL checkpoints since start.",
            None,
            COUNTER,
            one(wal.checkpoints),
        )?;
        let api = &node.api;
        family(
            e,
            "synod_api_connections_open",
            "API-port connections open now.",
            None,
            GAUGE,
            one(api.connections_open),
        )?;
        family(
            e,
            "synod_api_connections_refused",
            "API-port connections closed at once over connections_max.",
            None,
            COUNTER,
            one(api.connections_refused),
        )?;
        family(
            e,
            "synod_api_wire_timeouts",
            "Wire connections closed for a slow frame or idling.",
            None,
            COUNTER,
            one(api.wire_timeouts),
        )?;
        family(
            e,
            "synod_api_wire_in_flight_peak",
            "Most request bytes one wire connection had awaiting answers.",
            bytes,
            GAUGE,
            one(api.wire_in_flight_bytes_peak),
        )?;
        let Some(transport) = &node.transport else {
            return Ok(());
        };
        family(
            e,
            "synod_transport_frames_sent",
            "Frames written to peers.",
            None,
            COUNTER,
            one(transport.frames_sent),
        )?;
        family(
            e,
            "synod_transport_frames_received",
            "Frames received from peers.",
            None,
            COUNTER,
            one(transport.frames_received),
        )?;
        family(
            e,
            "synod_transport_frames_dropped",
            "Frames dropped, all regions and control.",
            None,
            COUNTER,
            one(transport.frames_dropped),
        )?;
        family(
            e,
            "synod_transport_queued",
            "Outgoing bytes queued on all links now.",
            bytes,
            GAUGE,
            one(transport.queued_bytes),
        )?;
        family(
            e,
            "synod_transport_connections",
            "Peer connections established, reconnects included.",
            None,
            COUNTER,
            one(transport.connections),
        )?;
        family(
            e,
            "synod_transport_rejected_connections",
            "Inbound peer connections refused in the handshake.",
            None,
            COUNTER,
            one(transport.rejected_connections),
        )?;
        family(
            e,
            "synod_transport_refused_connections",
            "Peer-port connections closed at once over handshakes_max.",
            None,
            COUNTER,
            one(transport.refused_connections),
        )?;
        let traffic = |direction: &'static str,
                       pick: fn(&crate::transport::RegionTraffic) -> u64| {
            transport.regions.iter().map(move |(region, traffic)| {
                let mut labels = region_labels(region);
                labels.push(("direction", direction.to_string()));
                (labels, pick(traffic))
            })
        };
        family(
            e,
            "synod_transport_region_dropped_frames",
            "A region's frames dropped: out (over its budget, peer unreachable) or in (its inbox full).",
            None,
            COUNTER,
            traffic("out", |t| t.frames_dropped).chain(traffic("in", |t| t.inbound_frames_dropped)),
        )?;
        family(
            e,
            "synod_transport_region_dropped",
            "A region's bytes dropped, as synod_transport_region_dropped_frames_total.",
            bytes,
            COUNTER,
            traffic("out", |t| t.bytes_dropped).chain(traffic("in", |t| t.inbound_bytes_dropped)),
        )?;
        Ok(())
    }

    fn encode_regions(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let regions = &self.regions;
        let bytes = Some(&Unit::Bytes);
        let seconds = Some(&Unit::Seconds);
        let each = |pick: fn(&RegionScrape) -> u64| {
            regions
                .iter()
                .map(move |r| (region_labels(&r.name), pick(r)))
        };
        let results = |pick: fn(&RegionMetricsSnapshot) -> &RequestSnapshot| {
            regions.iter().flat_map(move |r| {
                let requests = pick(&r.metrics);
                [("ok", requests.ok), ("error", requests.failed)].map(|(result, n)| {
                    let mut labels = region_labels(&r.name);
                    labels.push(("result", result.to_string()));
                    (labels, n)
                })
            })
        };
        family(
            e,
            "synod_region_writes",
            "Client writes to the region through this node: ok (answered) or error (rejected, redirected, timed out, overloaded).",
            None,
            COUNTER,
            results(|m| &m.writes),
        )?;
        family(
            e,
            "synod_region_reads",
            "Client reads of the region through this node, as synod_region_writes_total.",
            None,
            COUNTER,
            results(|m| &m.reads),
        )?;
        family(
            e,
            "synod_region_write_latency",
            "Latency of answered writes, from the handle to the durable reply.",
            seconds,
            MetricType::Histogram,
            regions
                .iter()
                .map(|r| (region_labels(&r.name), r.metrics.writes.latency.clone())),
        )?;
        family(
            e,
            "synod_region_read_latency",
            "Latency of answered reads.",
            seconds,
            MetricType::Histogram,
            regions
                .iter()
                .map(|r| (region_labels(&r.name), r.metrics.reads.latency.clone())),
        )?;
        family(
            e,
            "synod_transport_region_sent_frames",
            "Message and snapshot frames the region handed to the transport.",
            None,
            COUNTER,
            each(|r| r.metrics.sent_frames),
        )?;
        family(
            e,
            "synod_transport_region_sent",
            "Bytes of messages and snapshots the region handed to the transport.",
            bytes,
            COUNTER,
            each(|r| r.metrics.sent_bytes),
        )?;

        let statuses: Vec<(&str, &RegionStatus)> = regions
            .iter()
            .filter_map(|r| r.status.as_ref().map(|s| (r.name.as_str(), s)))
            .collect();
        let status = |pick: fn(&RegionStatus) -> u64| {
            statuses
                .iter()
                .map(move |(name, s)| (region_labels(name), pick(s)))
        };
        family(
            e,
            "synod_region_up",
            "1 if the replica answered the scrape and runs (quota state included), else 0.",
            None,
            GAUGE,
            regions.iter().map(|r| {
                (
                    region_labels(&r.name),
                    u64::from(
                        r.status
                            .as_ref()
                            .is_some_and(|s| matches!(s.health.state, "running" | "quota")),
                    ),
                )
            }),
        )?;
        family(
            e,
            "synod_region_failures",
            "Plugin failures (traps, limits, contract violations).",
            None,
            COUNTER,
            status(|s| s.health.failures_total),
        )?;
        family(
            e,
            "synod_region_restarts",
            "Plugin restarts after a failure.",
            None,
            COUNTER,
            status(|s| s.health.restarts),
        )?;
        family(
            e,
            "synod_region_pending_requests",
            "Client requests waiting for an outcome.",
            None,
            GAUGE,
            status(|s| s.pending_requests as u64),
        )?;
        family(
            e,
            "synod_region_held_outputs",
            "Replies and messages waiting for the WAL.",
            None,
            GAUGE,
            status(|s| s.held_outputs as u64),
        )?;
        family(
            e,
            "synod_region_commit_position",
            "How far the protocol has committed.",
            None,
            GAUGE,
            status(|s| s.plugin.as_ref().map_or(0, |p| p.commit_position)),
        )?;
        family(
            e,
            "synod_region_applied_position",
            "How far the state machine has applied.",
            None,
            GAUGE,
            status(|s| s.state_machine.applied_position),
        )?;
        family(
            e,
            "synod_region_leader",
            "1 if this replica is the region's leader.",
            None,
            GAUGE,
            status(|s| u64::from(s.plugin.as_ref().is_some_and(|p| p.role == "leader"))),
        )?;
        family(
            e,
            "synod_region_term",
            "The replica's term.",
            None,
            GAUGE,
            status(|s| s.plugin.as_ref().map_or(0, |p| p.term)),
        )?;
        family(
            e,
            "synod_region_log",
            "Retained log bytes on this node.",
            bytes,
            GAUGE,
            status(|s| s.log.bytes as u64),
        )?;
        // Quota use against its limits.
        family(
            e,
            "synod_region_quota_log",
            "Log bytes counted against the quota.",
            bytes,
            GAUGE,
            status(|s| s.health.quota.log_bytes),
        )?;
        family(
            e,
            "synod_region_quota_log_limit",
            "The log-bytes quota.",
            bytes,
            GAUGE,
            status(|s| s.health.quota.limits.log_bytes),
        )?;
        family(
            e,
            "synod_region_quota_kv",
            "Plugin kv bytes counted against the quota.",
            bytes,
            GAUGE,
            status(|s| s.health.quota.kv_bytes),
        )?;
        family(
            e,
            "synod_region_quota_kv_limit",
            "The plugin kv-bytes quota.",
            bytes,
            GAUGE,
            status(|s| s.health.quota.limits.kv_bytes),
        )?;
        family(
            e,
            "synod_region_quota_kv_keys",
            "Plugin kv keys counted against the quota.",
            None,
            GAUGE,
            status(|s| s.health.quota.kv_keys),
        )?;
        family(
            e,
            "synod_region_quota_kv_keys_limit",
            "The plugin kv-keys quota.",
            None,
            GAUGE,
            status(|s| s.health.quota.limits.kv_keys),
        )?;
        family(
            e,
            "synod_region_quota_timers",
            "Timers set, counted against the quota.",
            None,
            GAUGE,
            status(|s| s.health.quota.timers),
        )?;
        family(
            e,
            "synod_region_quota_timers_limit",
            "The timers quota.",
            None,
            GAUGE,
            status(|s| s.health.quota.limits.timers),
        )?;
        family(
            e,
            "synod_region_quota_refusals",
            "Imports a quota or the disk reserve refused.",
            None,
            COUNTER,
            status(|s| s.health.quota.refusals_total),
        )?;
        // The plugin's cost.
        family(
            e,
            "synod_plugin_calls",
            "Plugin calls since the replica was created.",
            None,
            COUNTER,
            status(|s| s.cpu.calls),
        )?;
        family(
            e,
            "synod_plugin_call_cpu",
            "CPU time plugin calls used since the replica was created.",
            seconds,
            COUNTER,
            statuses
                .iter()
                .map(|(name, s)| (region_labels(name), s.cpu.used_us as f64 / 1e6)),
        )?;
        family(
            e,
            "synod_plugin_background_calls",
            "Plugin calls run in the idle-priority lane.",
            None,
            COUNTER,
            status(|s| s.cpu.background_calls),
        )?;
        family(
            e,
            "synod_plugin_fuel",
            "Wasm fuel plugin calls consumed (0 for native plugins).",
            None,
            COUNTER,
            status(|s| s.cpu.fuel),
        )?;
        family(
            e,
            "synod_plugin_counter",
            "The plugin's own status counters, by name (see the protocol's counters).",
            None,
            GAUGE,
            statuses.iter().flat_map(|(name, s)| {
                s.plugin.iter().flat_map(move |p| {
                    p.counters.iter().map(move |(counter, value)| {
                        let mut labels = region_labels(name);
                        labels.push(("counter", counter.clone()));
                        (labels, *value)
                    })
                })
            }),
        )?;
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_node(&mut encoder)?;
        self.encode_regions(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use synod_guest_sdk::ReadLevel;

    use super::*;
    use crate::node::{Node, NodeConfig};
    use crate::state_machine::{KvCommand, KvQuery};

    /// One sample line: `name{labels} value` or `name value`.
    #[derive(Debug)]
    struct Line {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn parse_line(line: &str) -> Result<Line, String> {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .ok_or_else(|| format!("no value: {line:?}"))?;
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("bad name: {line:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner
                .find('}')
                .ok_or_else(|| format!("unclosed labels: {line:?}"))?;
            for pair in inner[..close].split(',').filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("bad label {pair:?}: {line:?}"))?;
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| format!("unquoted label {pair:?}: {line:?}"))?;
                labels.insert(key.to_string(), value.to_string());
            }
            rest = &inner[close + 1..];
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before the value: {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            value => value
                .parse()
                .map_err(|_| format!("bad value {value:?}: {line:?}"))?,
        };
        Ok(Line {
            name: name.to_string(),
            labels,
            value,
        })
    }

    fn parse(text: &str) -> Vec<Line> {
        assert!(text.ends_with("# EOF\n"), "no EOF marker");
        assert!(!text.contains("{}"), "empty label sets");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| parse_line(line).unwrap_or_else(|why| panic!("{why}")))
            .collect()
    }

    fn value(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        lines
            .iter()
            .find(|line| {
                line.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| line.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|line| line.value)
    }

    #[test]
    fn histogram_buckets_hold_each_observation_once() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 4);
        // 50 µs and exactly 100 µs fall in `le=0.0001`.
        assert_eq!(snapshot.buckets[0], 2);
        assert_eq!(snapshot.buckets[5], 1, "3 ms is in le=0.005");
        assert_eq!(snapshot.buckets[BUCKETS - 1], 1, "60 s is in +Inf");
        assert_eq!(
            snapshot.sum_nanos,
            50_000 + 100_000 + 3_000_000 + 60_000_000_000
        );
    }

    /// What the instruments add to one request: `Instant::now`, the
    /// elapsed time, and three relaxed additions. Run with `--ignored
    /// --nocapture` to print the cost per request, alone and with two
    /// threads recording into the same region at once.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_request() {
        const N: u32 = 2_000_000;
        let metrics = std::sync::Arc::new(RegionMetrics::default());
        let run = |metrics: &RegionMetrics| {
            for _ in 0..N {
                let started = Instant::now();
                metrics.writes.record(std::hint::black_box(true), started);
            }
        };
        let started = Instant::now();
        run(&metrics);
        let alone = started.elapsed().as_nanos() as f64 / f64::from(N);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| run(&metrics));
            }
        });
        let shared = started.elapsed().as_nanos() as f64 / f64::from(N);
        println!(
            "instruments per write: {alone:.1} ns alone, {shared:.1} ns per write with 2 threads (wall / N per thread)"
        );
        assert_eq!(metrics.writes.snapshot().latency.count(), u64::from(N) * 3);
    }

    /// A real node with one region: the rendered text parses line by
    /// line, and the region's request counters and histogram count what
    /// was done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rendered_text_parses_and_counts_a_regions_requests() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::open(NodeConfig::new(1, dir.path().to_path_buf()))
            .await
            .expect("node");
        let region = node
            .create_region("m", "standalone", Vec::new())
            .await
            .expect("region");
        let timeout = Duration::from_secs(10);
        for i in 0..3u8 {
            let put = KvCommand::Put {
                key: vec![b'k', i],
                value: b"v".to_vec(),
            };
            region.write(&put, timeout).await.expect("write");
        }
        let get = KvQuery::Get { key: vec![b'k', 0] };
        for _ in 0..2 {
            region
                .read(&get, ReadLevel::Linearizable, timeout)
                .await
                .expect("read");
        }
        let text = render(scrape(&node).await).expect("rendered");
        let lines = parse(&text);
        let m = [("region", "m")];
        let ok = [("region", "m"), ("result", "ok")];
        assert_eq!(
            value(&lines, "synod_region_writes_total", &ok),
            Some(3.0),
            "{text}"
        );
        assert_eq!(value(&lines, "synod_region_reads_total", &ok), Some(2.0));
        assert_eq!(
            value(&lines, "synod_region_write_latency_seconds_count", &m),
            Some(3.0)
        );
        assert_eq!(
            value(
                &lines,
                "synod_region_write_latency_seconds_bucket",
                &[("region", "m"), ("le", "+Inf")]
            ),
            Some(3.0)
        );
        assert_eq!(value(&lines, "synod_region_up", &m), Some(1.0));
        assert!(value(&lines, "synod_wal_fsyncs_total", &[]).is_some_and(|n| n >= 1.0));
        assert!(value(&lines, "synod_plugin_calls_total", &m).is_some_and(|n| n >= 1.0));
        assert!(
            value(&lines, "synod_plugin_fuel_total", &m).is_some_and(|n| n > 0.0),
            "the standalone plugin runs in Wasm and burns fuel"
        );
        // Every family has its unit and `_total` suffixes where due.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            assert!(name.starts_with("synod_"), "{line}");
            if kind == "counter" {
                assert!(
                    lines
                        .iter()
                        .all(|l| !l.name.starts_with(name) || l.name == format!("{name}_total")),
                    "{line}"
                );
            }
        }
        node.shutdown().await;
    }
}
