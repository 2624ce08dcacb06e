//! Operator parameters (`--param name=value`), parsed once in `init`. A
//! value that does not parse is replaced by the default and reported as a
//! warning through the host log; unknown names are ignored.

const NANOS_PER_MS: u64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// `backlog-entries`: own writes kept for one lagging peer before it
    /// is caught up by state shipping instead.
    pub backlog_entries: u64,
    /// `backlog-bytes`: the same bound in command bytes.
    pub backlog_bytes: u64,
    /// `tick-ms`: how often unacknowledged writes are resent, peers probed
    /// and relays considered.
    pub tick_nanos: u64,
    /// `resend-ms`: unacknowledged writes are sent again after this long.
    pub resend_nanos: u64,
    /// `peer-silent-ms`: a peer not heard from for this long gets probes
    /// only (no entries) until it answers, so a dead peer costs nothing.
    pub silent_nanos: u64,
    /// `relay-after-ms`: a peer that lacks another origin's writes this
    /// replica holds for this long gets them relayed (the origin may be down).
    pub relay_nanos: u64,
    /// `state-retry-ms`: a shipped snapshot not answered is shipped again.
    pub state_retry_nanos: u64,
    /// `max-batch-bytes`: entry bytes per message.
    pub max_batch_bytes: u32,
    /// `max-inflight-entries`: entries sent and not acknowledged per peer
    /// and origin.
    pub max_inflight_entries: u64,
    /// `snapshot-interval`: entries appended between snapshots (0 = never).
    pub snapshot_interval_entries: u64,
    /// `tombstone-gc-ms`: how often tombstones every replica has are dropped.
    pub tombstone_gc_nanos: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            backlog_entries: 100_000,
            backlog_bytes: 64 << 20,
            tick_nanos: 20 * NANOS_PER_MS,
            resend_nanos: 200 * NANOS_PER_MS,
            silent_nanos: 1_000 * NANOS_PER_MS,
            relay_nanos: 1_000 * NANOS_PER_MS,
            state_retry_nanos: 1_000 * NANOS_PER_MS,
            max_batch_bytes: 1 << 20,
            max_inflight_entries: 8_192,
            snapshot_interval_entries: 10_000,
            tombstone_gc_nanos: 5_000 * NANOS_PER_MS,
        }
    }
}

impl Params {
    pub fn parse(params: &[(String, String)]) -> (Params, Vec<String>) {
        let mut parsed = Params::default();
        let mut warnings = Vec::new();
        for (name, value) in params {
            let Some(slot) = (match name.as_str() {
                "backlog-entries" => Some((&mut parsed.backlog_entries, 1)),
                "backlog-bytes" => Some((&mut parsed.backlog_bytes, 1)),
                "tick-ms" => Some((&mut parsed.tick_nanos, NANOS_PER_MS)),
                "resend-ms" => Some((&mut parsed.resend_nanos, NANOS_PER_MS)),
                "peer-silent-ms" => Some((&mut parsed.silent_nanos, NANOS_PER_MS)),
                "relay-after-ms" => Some((&mut parsed.relay_nanos, NANOS_PER_MS)),
                "state-retry-ms" => Some((&mut parsed.state_retry_nanos, NANOS_PER_MS)),
                "max-inflight-entries" => Some((&mut parsed.max_inflight_entries, 1)),
                "snapshot-interval" => Some((&mut parsed.snapshot_interval_entries, 1)),
                "tombstone-gc-ms" => Some((&mut parsed.tombstone_gc_nanos, NANOS_PER_MS)),
                "max-batch-bytes" => {
                    match value.trim().parse::<u32>() {
                        Ok(bytes) if bytes > 0 => parsed.max_batch_bytes = bytes.min(64 << 20),
                        _ => warnings.push(format!(
                            "{name} = {value:?} is not a positive u32; using the default"
                        )),
                    }
                    None
                }
                _ => None,
            }) else {
                continue;
            };
            let (field, unit) = slot;
            // snapshot-interval may be 0 (never); every other value must be positive.
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 || name == "snapshot-interval" => *field = n.saturating_mul(unit),
                _ => warnings.push(format!(
                    "{name} = {value:?} is not a positive integer; using the default"
                )),
            }
        }
        (parsed, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_replaces_bad_values() {
        let (params, warnings) = Params::parse(&[
            ("backlog-entries".into(), "10".into()),
            ("tick-ms".into(), "5".into()),
            ("resend-ms".into(), "zero".into()),
            ("snapshot-interval".into(), "0".into()),
        ]);
        assert_eq!(params.backlog_entries, 10);
        assert_eq!(params.tick_nanos, 5_000_000);
        assert_eq!(params.resend_nanos, Params::default().resend_nanos);
        assert_eq!(params.snapshot_interval_entries, 0);
        assert_eq!(warnings.len(), 1);
    }
}
