//! Protocol-independent oracles over a finished run: they need nothing from
//! the plugin beyond the contract (the state machine and `status`), so they
//! hold a third party's protocol to the same standard as Raft.

use std::collections::BTreeSet;

use crate::checker::{OpInput, OpOutput, Operation};
use crate::state_machine::KvStateMachine;

/// Acknowledged writes survive: one read of every key the history touched,
/// taken from the converged state after everything else, as a client that
/// arrives last would see it. A write that was acknowledged and later lost
/// (a lost commit, a rolled-back leader) then makes the history
/// non-linearizable even when no client read the key again.
pub fn final_reads(
    history: &[Operation],
    end: u64,
    state: Option<&KvStateMachine>,
) -> Vec<Operation> {
    let Some(state) = state else {
        return Vec::new();
    };
    let keys: BTreeSet<&str> = history.iter().map(|op| op.key.as_str()).collect();
    keys.into_iter()
        .enumerate()
        .map(|(index, key)| Operation {
            // Clients of their own, one per key, after every real one.
            client: u64::MAX - index as u64,
            key: key.to_string(),
            call: end,
            ret: end + 1,
            input: OpInput::Get,
            output: OpOutput::Value(
                state
                    .get(key.as_bytes())
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            ),
        })
        .collect()
}

/// The liveness oracle's verdict on terms: a protocol whose terms rise far
/// faster than leaders are elected disrupts itself (a pre-vote that raises
/// the real term, candidates that never win). `max_term` is the highest
/// term reported, `leader_terms` the terms in which a leader was seen.
/// Returns the complaint, if any.
pub fn term_churn(max_term: u64, leader_terms: u64, bound: &LivenessBound) -> Option<String> {
    let idle = max_term.saturating_sub(leader_terms);
    (idle > bound.leaderless_terms_max).then(|| {
        format!(
            "liveness: terms reached {max_term} but a leader was seen in only {leader_terms} of them (more than {} terms without a leader)",
            bound.leaderless_terms_max
        )
    })
}

/// Bounds of the liveness oracle.
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessBound {
    /// Terms without an observed leader allowed per seed.
    pub leaderless_terms_max: u64,
}

impl LivenessBound {
    /// The bound for a run with this fault phase: 8 terms, plus one per
    /// second of faults. Correct Raft (pre-vote, `election-timeout-ms=300`)
    /// stays at 5 or below over thousands of seeds; a short-lived leader
    /// that no 50 ms observation saw counts as a leaderless term.
    pub fn for_run(fault_phase: std::time::Duration) -> Self {
        LivenessBound {
            leaderless_terms_max: 8 + fault_phase.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{CheckOptions, Outcome, check_linearizable};
    use crate::state_machine::KvCommand;

    fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            key: key.into(),
            call,
            ret,
            input: OpInput::Put {
                value: value.into(),
            },
            output: OpOutput::Ok,
        }
    }

    #[test]
    fn a_lost_acknowledged_write_fails_the_history_with_the_final_read() {
        let history = vec![put(0, "k", "a", 1, 2), put(1, "k", "b", 3, 4)];
        // The converged state lost "b".
        let mut state = KvStateMachine::default();
        let command = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"a".to_vec(),
        };
        let _ = state.apply(&command.encode(), 1);
        let mut checked = history.clone();
        assert!(matches!(
            check_linearizable(&checked, &CheckOptions::default()),
            Outcome::Linearizable
        ));
        checked.extend(final_reads(&history, 10, Some(&state)));
        assert!(matches!(
            check_linearizable(&checked, &CheckOptions::default()),
            Outcome::Violation(_)
        ));
    }

    #[test]
    fn terms_far_beyond_the_leaders_seen_are_churn() {
        let bound = LivenessBound {
            leaderless_terms_max: 4,
        };
        assert_eq!(term_churn(6, 2, &bound), None);
        assert!(term_churn(9, 2, &bound).is_some());
    }
}
