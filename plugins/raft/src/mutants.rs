//! Deliberate, realistic Raft bugs for measuring what the simulator
//! catches (`synod-plugin-raft` feature `mutants`, param `mutant=<name>`).
//!
//! Each mutant is one small change of the kind implementers actually make.
//! This module and the `mutant` field of [`crate::Raft`] exist only with
//! the feature; without it every mutation point in `raft.rs` expands to the
//! constant `false`, so the shipped component and the default build hold
//! no mutant code. Each mutation point counts how often it was reached
//! (status counter `mutant-reached`), so a mutant the simulator misses can
//! be told from one whose code never ran.

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// `voted_for` is not reloaded on restart: a node can vote twice in
    /// one term across a crash.
    ForgetVoteOnRestart,
    /// Adopting a higher term as a follower is not persisted.
    NoPersistTermOnFollow,
    /// The vote reply leaves with `send-eager`, before the vote is durable.
    VoteReplyEager,
    /// Commit updates (heartbeats carrying the commit index) leave with
    /// `send-eager`, before the leader's own log is durable.
    CommitUpdateEager,
    /// The follower's append acknowledgement leaves with `send-eager`,
    /// before the entries it acknowledges are durable.
    AppendAckEager,
    /// An earlier term's entry commits by counting replicas (Figure 8).
    Figure8Commit,
    /// A follower marks everything it appended as committed, and applies.
    FollowerAppliesOnAppend,
    /// ReadIndex answered at once, without a heartbeat quorum round.
    ReadIndexNoQuorum,
    /// Reads served before the new leader's noop committed.
    ReadBeforeTermCommit,
    /// A lease, once granted, never expires.
    LeaseNeverExpires,
    /// The lease is measured from when the acknowledgement arrived, not
    /// from when the heartbeat round was sent.
    LeaseFromAck,
    /// A restarted node votes at once, inside the old leader's lease.
    NoVoteFenceOnRestart,
    /// Pre-vote raises (and persists) the real term.
    PreVoteRaisesTerm,
    /// A snapshot install keeps the log after the snapshot index even when
    /// the entry there conflicts with the snapshot.
    SnapshotKeepsConflictingTail,
    /// The leader records a follower's match index one past what it
    /// acknowledged.
    MatchIndexOffByOne,
    /// Appends are accepted without the log-matching check of `prev`.
    NoLogMatchingCheck,
    /// Votes are granted without the log up-to-date check (§5.4.1).
    VoteIgnoresLogRecency,
    /// A node votes again in a term after voting for someone else.
    VoteTwiceInTerm,
    /// Heartbeats carry the leader's commit index, not capped at the
    /// follower's match index.
    HeartbeatCommitBeyondMatch,
    /// A follower accepts appends from a leader of an older term.
    StaleTermAppendAccepted,
}

impl Mutant {
    /// Every mutant, in table order.
    pub const ALL: [Mutant; 20] = [
        Mutant::ForgetVoteOnRestart,
        Mutant::NoPersistTermOnFollow,
        Mutant::VoteReplyEager,
        Mutant::CommitUpdateEager,
        Mutant::AppendAckEager,
        Mutant::Figure8Commit,
        Mutant::FollowerAppliesOnAppend,
        Mutant::ReadIndexNoQuorum,
        Mutant::ReadBeforeTermCommit,
        Mutant::LeaseNeverExpires,
        Mutant::LeaseFromAck,
        Mutant::NoVoteFenceOnRestart,
        Mutant::PreVoteRaisesTerm,
        Mutant::SnapshotKeepsConflictingTail,
        Mutant::MatchIndexOffByOne,
        Mutant::NoLogMatchingCheck,
        Mutant::VoteIgnoresLogRecency,
        Mutant::VoteTwiceInTerm,
        Mutant::HeartbeatCommitBeyondMatch,
        Mutant::StaleTermAppendAccepted,
    ];

    /// The `mutant=` parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::ForgetVoteOnRestart => "forget-vote-on-restart",
            Mutant::NoPersistTermOnFollow => "no-persist-term-on-follow",
            Mutant::VoteReplyEager => "vote-reply-eager",
            Mutant::CommitUpdateEager => "commit-update-eager",
            Mutant::AppendAckEager => "append-ack-eager",
            Mutant::Figure8Commit => "figure8-commit",
            Mutant::FollowerAppliesOnAppend => "follower-applies-on-append",
            Mutant::ReadIndexNoQuorum => "read-index-no-quorum",
            Mutant::ReadBeforeTermCommit => "read-before-term-commit",
            Mutant::LeaseNeverExpires => "lease-never-expires",
            Mutant::LeaseFromAck => "lease-from-ack",
            Mutant::NoVoteFenceOnRestart => "no-vote-fence-on-restart",
            Mutant::PreVoteRaisesTerm => "pre-vote-raises-term",
            Mutant::SnapshotKeepsConflictingTail => "snapshot-keeps-conflicting-tail",
            Mutant::MatchIndexOffByOne => "match-index-off-by-one",
            Mutant::NoLogMatchingCheck => "no-log-matching-check",
            Mutant::VoteIgnoresLogRecency => "vote-ignores-log-recency",
            Mutant::VoteTwiceInTerm => "vote-twice-in-term",
            Mutant::HeartbeatCommitBeyondMatch => "heartbeat-commit-beyond-match",
            Mutant::StaleTermAppendAccepted => "stale-term-append-accepted",
        }
    }

    pub fn named(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name.trim())
    }

    /// The mutant the `mutant` parameter selects (`None` without one, or
    /// for an unknown name, which the caller reports).
    pub fn from_params(params: &[(String, String)]) -> Result<Option<Mutant>, String> {
        match params.iter().find(|(name, _)| name == "mutant") {
            None => Ok(None),
            Some((_, value)) => Mutant::named(value)
                .map(Some)
                .ok_or_else(|| format!("unknown mutant {value:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
        for mutant in Mutant::ALL {
            assert_eq!(Mutant::named(mutant.name()), Some(mutant));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Mutant::ALL.len());
        assert!(Mutant::from_params(&[("mutant".into(), "nope".into())]).is_err());
    }
}
