//! Operator parameters.

/// Tunables (`name = value` in the region spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Period of the housekeeping tick (retransmissions, timeouts).
    pub tick_ms: u64,
    /// How long a command leader waits for a full fast quorum before it
    /// settles for the slow path with a majority.
    pub fast_timeout_ms: u64,
    /// How long an uncommitted instance may make no progress before this
    /// replica recovers it (plus a random share of the same, so replicas
    /// do not duel).
    pub recovery_timeout_ms: u64,
    /// How long a phase waits before resending to peers that did not answer.
    pub retry_ms: u64,
    /// Client writes per instance.
    pub max_batch: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            tick_ms: 10,
            fast_timeout_ms: 50,
            recovery_timeout_ms: 300,
            retry_ms: 100,
            max_batch: 256,
        }
    }
}

impl Params {
    /// Parses the known names; returns warnings for bad values (which keep
    /// their defaults). Unknown names are ignored.
    pub fn parse(params: &[(String, String)]) -> (Params, Vec<String>) {
        let mut parsed = Params::default();
        let mut warnings = Vec::new();
        for (name, value) in params {
            let slot: &mut u64 = match name.as_str() {
                "tick-ms" => &mut parsed.tick_ms,
                "fast-timeout-ms" => &mut parsed.fast_timeout_ms,
                "recovery-timeout-ms" => &mut parsed.recovery_timeout_ms,
                "retry-ms" => &mut parsed.retry_ms,
                "max-batch" => {
                    match value.parse::<usize>() {
                        Ok(n) if n > 0 => parsed.max_batch = n,
                        _ => warnings.push(format!("max-batch: {value:?} is not a positive count")),
                    }
                    continue;
                }
                _ => continue,
            };
            match value.parse::<u64>() {
                Ok(n) if n > 0 => *slot = n,
                _ => warnings.push(format!("{name}: {value:?} is not a positive number")),
            }
        }
        (parsed, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_bad_ones_warn() {
        let pairs = vec![
            ("tick-ms".to_string(), "5".to_string()),
            ("recovery-timeout-ms".to_string(), "zero".to_string()),
            ("max-batch".to_string(), "0".to_string()),
        ];
        let (params, warnings) = Params::parse(&pairs);
        assert_eq!(params.tick_ms, 5);
        assert_eq!(
            params.recovery_timeout_ms,
            Params::default().recovery_timeout_ms
        );
        assert_eq!(params.max_batch, Params::default().max_batch);
        assert_eq!(warnings.len(), 2);
    }
}
