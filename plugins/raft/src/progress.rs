//! The leader's view of one follower's log (etcd's `tracker.Progress`).
//!
//! - `Probe`: the leader does not know where the follower's log matches
//!   its own. It sends one AppendEntries at a time and waits for the answer
//!   (or the next heartbeat) before sending another.
//! - `Replicate`: the follower's log matches up to `match_index` and the
//!   leader streams entries optimistically from `next_index`, keeping at
//!   most [`INFLIGHT_MESSAGES_MAX`] messages and `max-inflight-bytes` bytes
//!   unacknowledged.
//! - `Snapshot`: the entries the follower needs were compacted; a snapshot
//!   was shipped and the leader waits for the follower to report it.

use std::collections::VecDeque;

/// Unacknowledged AppendEntries messages per follower in `Replicate`. When
/// reached, the leader sends nothing more to that follower until an
/// acknowledgement frees a slot; it bounds the leader's bookkeeping and the
/// burst a slow follower receives when entries are tiny.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    /// Waiting for the follower to install the snapshot at `index`.
    Snapshot {
        index: u64,
    },
}

/// One unacknowledged AppendEntries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// Last index it carries.
    pub last_index: u64,
    /// Entry bytes it carries.
    pub bytes: u64,
    /// The leader's heartbeat round when it was sent: a heartbeat of a later
    /// round was sent after it.
    pub round: u64,
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    pub state: ProgressState,
    /// `Probe`: a probe is outstanding; cleared by its answer or the next
    /// heartbeat.
    pub probe_sent: bool,
    /// `Replicate`: each unacknowledged message, oldest first.
    pub inflight: VecDeque<Inflight>,
    pub inflight_bytes: u64,
    /// Heard from since the last check-quorum (§6.2 of the thesis).
    pub recent_active: bool,
    /// Highest heartbeat round this follower acknowledged.
    pub acked_round: u64,
    /// When `match_index` last advanced, replication (re)started or a
    /// snapshot was shipped: the clock for stall and resend decisions.
    pub last_progress_nanos: u64,
    /// Highest commit index sent to this follower.
    pub commit_sent: u64,
}

impl Progress {
    pub fn new(next_index: u64, now_nanos: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: true,
            acked_round: 0,
            last_progress_nanos: now_nanos,
            commit_sent: 0,
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    pub fn become_replicate(&mut self, now_nanos: u64) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
        self.last_progress_nanos = now_nanos;
    }

    pub fn become_snapshot(&mut self, index: u64, now_nanos: u64) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.clear_inflight();
        self.last_progress_nanos = now_nanos;
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Records a message carrying entries through `last_index` (`bytes` of
    /// entries), sent during heartbeat round `round`, in `Replicate`.
    pub fn sent_entries(&mut self, last_index: u64, bytes: u64, round: u64) {
        assert_eq!(self.state, ProgressState::Replicate);
        assert!(last_index >= self.next_index, "sent nothing new");
        self.next_index = last_index + 1;
        self.inflight.push_back(Inflight {
            last_index,
            bytes,
            round,
        });
        self.inflight_bytes += bytes;
    }

    /// Whether the follower, whose log ended at `follower_last` when it
    /// answered a heartbeat of round `round`, is missing a message sent
    /// before that heartbeat: probably lost (or overtaken; resending is
    /// harmless either way).
    pub fn is_missing_before(&self, follower_last: u64, round: u64) -> bool {
        self.state == ProgressState::Replicate
            && self
                .inflight
                .iter()
                .find(|inflight| inflight.last_index > follower_last)
                .is_some_and(|inflight| inflight.round < round)
    }

    /// Whether no more may be sent in `Replicate` until acks free room.
    pub fn is_inflight_full(&self, max_inflight_bytes: u64) -> bool {
        self.inflight.len() >= INFLIGHT_MESSAGES_MAX || self.inflight_bytes >= max_inflight_bytes
    }

    /// The follower's log matches through `index`. Returns whether
    /// `match_index` advanced.
    pub fn maybe_update(&mut self, index: u64, now_nanos: u64) -> bool {
        while let Some(&inflight) = self.inflight.front() {
            if inflight.last_index > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= inflight.bytes;
        }
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.last_progress_nanos = now_nanos;
            self.probe_sent = false;
        }
        if self.next_index <= index {
            self.next_index = index + 1;
        }
        advanced
    }

    /// The follower refused entries after `rejected`; `match_hint` is the
    /// last index that may match. Returns false for a stale refusal.
    pub fn maybe_decrease_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
            }
            ProgressState::Probe => {
                // Only the answer to the outstanding probe counts.
                if self.next_index.checked_sub(1) != Some(rejected) {
                    return false;
                }
            }
            ProgressState::Snapshot { .. } => return false,
        }
        self.next_index = rejected
            .min(match_hint.saturating_add(1))
            .max(self.match_index + 1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_backs_up_with_the_hint_and_ignores_stale_refusals() {
        let mut progress = Progress::new(11, 0);
        progress.probe_sent = true;
        assert!(
            !progress.maybe_decrease_to(7, 3),
            "not the outstanding probe"
        );
        assert!(progress.maybe_decrease_to(10, 4));
        assert_eq!(progress.next_index, 5);
        assert!(!progress.probe_sent);
        assert!(progress.maybe_update(6, 1));
        assert_eq!((progress.match_index, progress.next_index), (6, 7));
    }

    #[test]
    fn replicate_streams_and_frees_inflight_on_acks() {
        let mut progress = Progress::new(1, 0);
        progress.become_replicate(0);
        progress.sent_entries(5, 100, 1);
        progress.sent_entries(9, 100, 2);
        assert!(!progress.is_missing_before(4, 1), "heartbeat not after it");
        assert!(progress.is_missing_before(4, 2));
        assert!(
            !progress.is_missing_before(5, 2),
            "the second one may be in flight"
        );
        assert!(progress.is_missing_before(5, 3));
        assert!(progress.is_inflight_full(200));
        assert!(!progress.is_inflight_full(201));
        assert!(progress.maybe_update(5, 1));
        assert_eq!(progress.inflight_bytes, 100);
        assert_eq!(progress.next_index, 10);
        // A refusal after the match falls back to probing from the hint.
        assert!(progress.maybe_decrease_to(9, 7));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 8);
        assert_eq!(progress.inflight_bytes, 0);
        // A stale refusal below the match is ignored.
        progress.become_replicate(2);
        assert!(!progress.maybe_decrease_to(4, 0));
    }
}
