//! The resend timeout per peer, after TCP's (RFC 6298): a smoothed
//! acknowledgement delay plus four deviations, never below `resend-ms`. A
//! peer that is slow but alive (its rounds late on a loaded machine)
//! acknowledges later than `resend-ms`; resending everything in flight to
//! it then only doubles its work. One timing sample at a time, none taken
//! over a resend (Karn), so a sample always measures a first delivery;
//! each resend doubles the timeout until a sample arrives, so a peer that
//! only ever answers late is still learnt.

/// Longest timeout, in multiples of `resend-ms`: a lost message is
/// recovered within this many intervals even behind a very slow peer.
const MAX_FACTOR: u64 = 10;

#[derive(Clone, Debug, Default)]
pub struct AckTimer {
    /// (sequence, when it was sent): the write being timed.
    probe: Option<(u64, u64)>,
    /// Smoothed delay and its mean deviation, nanoseconds (0: no sample).
    srtt: u64,
    rttvar: u64,
    /// Resends since the last sample: the timeout is doubled this often.
    backoff: u32,
}

impl AckTimer {
    /// Own writes up to `seq` were sent now for the first time.
    pub fn on_send(&mut self, seq: u64, now: u64) {
        if self.probe.is_none() {
            self.probe = Some((seq, now));
        }
    }

    /// The peer acknowledged own writes up to `acked`.
    pub fn on_ack(&mut self, acked: u64, now: u64) {
        let Some((seq, at)) = self.probe else {
            return;
        };
        if acked < seq {
            return;
        }
        self.probe = None;
        self.backoff = 0;
        let sample = now.saturating_sub(at);
        if self.srtt == 0 {
            self.srtt = sample.max(1);
            self.rttvar = sample / 2;
        } else {
            let deviation = self.srtt.abs_diff(sample);
            self.rttvar = (3 * self.rttvar + deviation) / 4;
            self.srtt = ((7 * self.srtt + sample) / 8).max(1);
        }
    }

    /// Writes were resent: the next acknowledgement may answer either copy.
    pub fn on_resend(&mut self) {
        self.probe = None;
        self.backoff = (self.backoff + 1).min(4);
    }

    /// How long acknowledgements may stand still before a resend.
    pub fn timeout(&self, resend_nanos: u64) -> u64 {
        let estimate = self
            .srtt
            .saturating_add(self.rttvar.saturating_mul(4))
            .max(resend_nanos);
        (estimate << self.backoff).min(resend_nanos.saturating_mul(MAX_FACTOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_timeout_follows_a_slow_peer_within_bounds() {
        let mut timer = AckTimer::default();
        assert_eq!(timer.timeout(200 * MS), 200 * MS, "no sample: resend-ms");
        for i in 0..20 {
            timer.on_send(i + 1, i * 1_000 * MS);
            timer.on_ack(i + 1, i * 1_000 * MS + 600 * MS);
        }
        let timeout = timer.timeout(200 * MS);
        assert!((600 * MS..=2_000 * MS).contains(&timeout), "{timeout}");
        // Fast acknowledgements: back to the floor.
        for i in 20..60 {
            timer.on_send(i + 1, i * 1_000 * MS);
            timer.on_ack(i + 1, i * 1_000 * MS + MS);
        }
        assert_eq!(timer.timeout(200 * MS), 200 * MS);
    }

    #[test]
    fn no_sample_is_taken_over_a_resend_and_resends_back_off() {
        let mut timer = AckTimer::default();
        timer.on_send(5, 0);
        timer.on_resend();
        timer.on_ack(5, 5_000 * MS);
        assert_eq!(timer.timeout(200 * MS), 400 * MS, "doubled, no sample");
        timer.on_resend();
        assert_eq!(timer.timeout(200 * MS), 800 * MS);
        timer.on_send(9, 6_000 * MS);
        timer.on_ack(9, 6_000 * MS + MS);
        assert_eq!(timer.timeout(200 * MS), 200 * MS, "a sample resets it");
    }
}
