//! Operator parameters (`--param name=value`), parsed once in `init`.
//!
//! Every parameter is optional. A value that does not parse, or that breaks
//! a relation between parameters, is replaced by a safe value and reported
//! as a warning through the host log; unknown names are ignored.

/// Default `election-timeout-ms`: the minimum election timeout. Followers
/// wait a random time in `[timeout, 2 × timeout)` without hearing from a
/// leader before they start a pre-vote.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Default `heartbeat-ms`: how often a leader sends heartbeats (and retries
/// probes, stalled pipelines and lost snapshots).
pub const HEARTBEAT_MS_DEFAULT: u64 = 100;
/// Default `max-batch-bytes`: entry bytes per AppendEntries message. A
/// single entry larger than this still goes, alone in its message.
pub const MAX_BATCH_BYTES_DEFAULT: u32 = 1 << 20;
/// Default `max-inflight-bytes`: unacknowledged entry bytes per follower.
/// When reached, the leader stops sending to that follower until acks free
/// room (the follower catches up from later messages).
pub const MAX_INFLIGHT_BYTES_DEFAULT: u64 = 4 << 20;
/// Default `snapshot-interval`: applied entries between snapshots
/// (0 = never snapshot or compact).
pub const SNAPSHOT_INTERVAL_DEFAULT: u64 = 10_000;
/// Default `clock-drift-ms`: the bound assumed on clock-rate difference
/// between nodes over one election timeout; subtracted from lease length.
pub const CLOCK_DRIFT_MS_DEFAULT: u64 = 50;
/// Largest accepted `max-batch-bytes`; larger values are clamped (host
/// batches are indexed by `u32`, and one message should stay well below it).
pub const MAX_BATCH_BYTES_LIMIT: u32 = 64 << 20;

const NANOS_PER_MS: u64 = 1_000_000;

/// Parsed protocol parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Minimum election timeout (`election-timeout-ms`), in nanoseconds.
    pub election_timeout_nanos: u64,
    /// Leader heartbeat interval (`heartbeat-ms`), in nanoseconds.
    pub heartbeat_nanos: u64,
    /// Entry bytes per AppendEntries message (`max-batch-bytes`).
    pub max_batch_bytes: u32,
    /// Unacknowledged entry bytes per follower (`max-inflight-bytes`).
    pub max_inflight_bytes: u64,
    /// Applied entries between snapshots (`snapshot-interval`, 0 = never).
    pub snapshot_interval_entries: u64,
    /// Whether `lease` reads may be answered from the leader lease
    /// (`lease-reads`); when false they take the ReadIndex path.
    pub lease_reads: bool,
    /// Clock drift bound (`clock-drift-ms`), in nanoseconds.
    pub clock_drift_nanos: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            election_timeout_nanos: ELECTION_TIMEOUT_MS_DEFAULT * NANOS_PER_MS,
            heartbeat_nanos: HEARTBEAT_MS_DEFAULT * NANOS_PER_MS,
            max_batch_bytes: MAX_BATCH_BYTES_DEFAULT,
            max_inflight_bytes: MAX_INFLIGHT_BYTES_DEFAULT,
            snapshot_interval_entries: SNAPSHOT_INTERVAL_DEFAULT,
            lease_reads: false,
            clock_drift_nanos: CLOCK_DRIFT_MS_DEFAULT * NANOS_PER_MS,
        }
    }
}

impl Params {
    /// Parses `params`, returning the parameters and warnings about values
    /// that were replaced.
    pub fn parse(params: &[(String, String)]) -> (Params, Vec<String>) {
        let mut parsed = Params::default();
        let mut warnings = Vec::new();
        for (name, value) in params {
            let value = value.trim();
            match name.as_str() {
                "election-timeout-ms" => {
                    if let Some(ms) = positive(name, value, &mut warnings) {
                        parsed.election_timeout_nanos = ms.saturating_mul(NANOS_PER_MS);
                    }
                }
                "heartbeat-ms" => {
                    if let Some(ms) = positive(name, value, &mut warnings) {
                        parsed.heartbeat_nanos = ms.saturating_mul(NANOS_PER_MS);
                    }
                }
                "max-batch-bytes" => {
                    if let Some(bytes) = positive(name, value, &mut warnings) {
                        let clamped = bytes.min(u64::from(MAX_BATCH_BYTES_LIMIT));
                        if clamped != bytes {
                            warnings.push(format!(
                                "max-batch-bytes {bytes} clamped to {MAX_BATCH_BYTES_LIMIT}"
                            ));
                        }
                        parsed.max_batch_bytes = clamped as u32;
                    }
                }
                "max-inflight-bytes" => {
                    if let Some(bytes) = positive(name, value, &mut warnings) {
                        parsed.max_inflight_bytes = bytes;
                    }
                }
                "snapshot-interval" => match value.parse::<u64>() {
                    Ok(entries) => parsed.snapshot_interval_entries = entries,
                    Err(_) => warnings.push(format!(
                        "snapshot-interval {value:?} is not a number; using {SNAPSHOT_INTERVAL_DEFAULT}"
                    )),
                },
                "lease-reads" => match value {
                    "true" | "1" | "yes" | "on" => parsed.lease_reads = true,
                    "false" | "0" | "no" | "off" => parsed.lease_reads = false,
                    _ => warnings.push(format!(
                        "lease-reads {value:?} is not a boolean; lease reads stay off"
                    )),
                },
                "clock-drift-ms" => match value.parse::<u64>() {
                    Ok(ms) => parsed.clock_drift_nanos = ms.saturating_mul(NANOS_PER_MS),
                    Err(_) => warnings.push(format!(
                        "clock-drift-ms {value:?} is not a number; using {CLOCK_DRIFT_MS_DEFAULT}"
                    )),
                },
                _ => {}
            }
        }
        // Relations between parameters.
        if parsed.heartbeat_nanos >= parsed.election_timeout_nanos {
            let heartbeat = (parsed.election_timeout_nanos / 10).max(1);
            warnings.push(format!(
                "heartbeat ({} ns) must be shorter than the election timeout ({} ns); using {} ns",
                parsed.heartbeat_nanos, parsed.election_timeout_nanos, heartbeat
            ));
            parsed.heartbeat_nanos = heartbeat;
        }
        if parsed.max_inflight_bytes < u64::from(parsed.max_batch_bytes) {
            warnings.push(format!(
                "max-inflight-bytes {} is below max-batch-bytes {}; raised to it",
                parsed.max_inflight_bytes, parsed.max_batch_bytes
            ));
            parsed.max_inflight_bytes = u64::from(parsed.max_batch_bytes);
        }
        if parsed.lease_reads && parsed.clock_drift_nanos >= parsed.election_timeout_nanos {
            warnings.push(
                "clock-drift-ms is not below election-timeout-ms: leases never hold, lease reads use ReadIndex"
                    .to_string(),
            );
        }
        (parsed, warnings)
    }

    /// How long a leader lease lasts after the start of the heartbeat round
    /// a quorum acknowledged: `election timeout − clock drift` (0 when the
    /// drift bound swallows the timeout).
    pub fn lease_nanos(&self) -> u64 {
        self.election_timeout_nanos
            .saturating_sub(self.clock_drift_nanos)
    }
}

fn positive(name: &str, value: &str, warnings: &mut Vec<String>) -> Option<u64> {
    match value.parse::<u64>() {
        Ok(number) if number > 0 => Some(number),
        _ => {
            warnings.push(format!(
                "{name} {value:?} is not a positive number; using the default"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let (parsed, warnings) = Params::parse(&[]);
        assert_eq!(parsed, Params::default());
        assert!(warnings.is_empty());
        assert_eq!(parsed.election_timeout_nanos, 1_000_000_000);
        assert_eq!(parsed.lease_nanos(), 950_000_000);
    }

    #[test]
    fn values_parse_and_unknown_names_are_ignored() {
        let (parsed, warnings) = Params::parse(&params(&[
            ("election-timeout-ms", "150"),
            ("heartbeat-ms", "15"),
            ("max-batch-bytes", "1000"),
            ("max-inflight-bytes", "5000"),
            ("snapshot-interval", "0"),
            ("lease-reads", "true"),
            ("clock-drift-ms", "10"),
            ("colour", "blue"),
        ]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(parsed.election_timeout_nanos, 150_000_000);
        assert_eq!(parsed.heartbeat_nanos, 15_000_000);
        assert_eq!(parsed.max_batch_bytes, 1000);
        assert_eq!(parsed.max_inflight_bytes, 5000);
        assert_eq!(parsed.snapshot_interval_entries, 0);
        assert!(parsed.lease_reads);
        assert_eq!(parsed.clock_drift_nanos, 10_000_000);
    }

    #[test]
    fn bad_values_fall_back_with_warnings() {
        let (parsed, warnings) = Params::parse(&params(&[
            ("election-timeout-ms", "0"),
            ("heartbeat-ms", "5000"),
            ("max-inflight-bytes", "10"),
            ("lease-reads", "maybe"),
        ]));
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert_eq!(parsed.election_timeout_nanos, 1_000_000_000);
        assert_eq!(parsed.heartbeat_nanos, 100_000_000);
        assert_eq!(
            parsed.max_inflight_bytes,
            u64::from(MAX_BATCH_BYTES_DEFAULT)
        );
        assert!(!parsed.lease_reads);
    }
}
