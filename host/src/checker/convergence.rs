//! End-of-run checks for weakly consistent protocols, where linearizability
//! is not promised but replicas must converge without losing acknowledged
//! writes once the system is quiescent.
//!
//! [`check_convergence`] is for single-writer-per-key workloads.
//! [`check_lww_convergence`] allows any number of writers per key and
//! judges the survivor by the last-writer-wins rule: each write carries the
//! stamp its origin gave it (see `state-machine.apply-stamped`), and the
//! write with the greatest stamp must be what every replica holds.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::history::fmt_value;
use crate::state_machine::Stamp;

/// Why replicas have not converged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvergenceError {
    /// Nothing to compare: almost certainly a harness bug.
    #[error("no replica states were supplied")]
    NoReplicas,
    /// The first key (in key order) on which replicas disagree, with every
    /// replica's value for it (`None` = absent).
    #[error("replicas diverge on key {key:?}: {}", render_values(.values))]
    Diverged {
        key: String,
        values: Vec<(u64, Option<String>)>,
    },
    /// The replicas agree, but not on the last acknowledged write.
    #[error(
        "acknowledged write lost on key {key:?}: expected {}, replicas hold {}",
        fmt_value(.expected),
        fmt_value(.actual)
    )]
    LostWrite {
        key: String,
        expected: Option<String>,
        actual: Option<String>,
    },
    /// Replicas agree on a key's stamp, but hold a value that the write
    /// carrying that stamp did not write: the rule was applied to the wrong
    /// write.
    #[error(
        "key {key:?} holds {} stamped {stamp:?}, but the write with that stamp wrote {}",
        fmt_value(.held),
        fmt_value(.written)
    )]
    WrongWinner {
        key: String,
        stamp: (u64, u64),
        held: Option<String>,
        written: Option<String>,
    },
}

/// One replica's keys under last-writer-wins: value (`None`: deleted) and
/// the stamp versioning it (`None`: unversioned, or a collected tombstone).
pub type LwwState = BTreeMap<String, (Option<String>, Option<Stamp>)>;

/// One write of the history, for [`check_lww_convergence`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LwwWrite {
    pub key: String,
    /// The value put, `None` for a delete.
    pub value: Option<String>,
    /// The stamp its acknowledgement named; `None` when the client never
    /// learnt the outcome (it may or may not have happened).
    pub stamp: Option<Stamp>,
}

fn render_lww(value: &(Option<String>, Option<Stamp>)) -> Option<String> {
    match value {
        (Some(v), Some(s)) => Some(format!("{v}@({},{})", s.time, s.origin)),
        (Some(v), None) => Some(v.clone()),
        (None, _) => None,
    }
}

/// Checks that all replicas hold the same values with the same stamps (a
/// deleted key's tombstone stamp is not compared: replicas may collect
/// tombstones at different times), and that for every key the survivor is
/// the acknowledged write with the greatest stamp or a write ordered after
/// it by the rule (acknowledged with a greater stamp, or of unknown outcome).
/// Values must be unique per write, so a value names its write.
pub fn check_lww_convergence(
    replica_states: &[(u64, LwwState)],
    writes: &[LwwWrite],
) -> Result<(), ConvergenceError> {
    let Some((_, reference)) = replica_states.first() else {
        return Err(ConvergenceError::NoReplicas);
    };
    let visible = |entry: Option<&(Option<String>, Option<Stamp>)>| match entry {
        Some((Some(v), stamp)) => (Some(v.clone()), *stamp),
        _ => (None, None),
    };
    let keys: BTreeSet<&String> = replica_states
        .iter()
        .flat_map(|(_, state)| state.keys())
        .collect();
    for key in &keys {
        let expected = visible(reference.get(*key));
        if replica_states
            .iter()
            .any(|(_, state)| visible(state.get(*key)) != expected)
        {
            return Err(ConvergenceError::Diverged {
                key: (*key).clone(),
                values: replica_states
                    .iter()
                    .map(|(replica, state)| (*replica, render_lww(&visible(state.get(*key)))))
                    .collect(),
            });
        }
    }

    let mut by_key: BTreeMap<&str, Vec<&LwwWrite>> = BTreeMap::new();
    for write in writes {
        by_key.entry(write.key.as_str()).or_default().push(write);
    }
    for (key, writes) in by_key {
        let Some(newest) = writes
            .iter()
            .filter(|w| w.stamp.is_some())
            .max_by_key(|w| w.stamp)
        else {
            continue; // No acknowledged write: anything issued may survive.
        };
        let floor = newest.stamp.unwrap_or_default();
        let (held, held_stamp) = reference.get(key).cloned().unwrap_or((None, None));
        let lost = || ConvergenceError::LostWrite {
            key: key.to_string(),
            expected: newest.value.clone(),
            actual: held.clone(),
        };
        match held_stamp {
            Some(stamp) => {
                if stamp < floor {
                    return Err(lost());
                }
                match writes.iter().find(|w| w.stamp == Some(stamp)) {
                    Some(write) if write.value != held => {
                        return Err(ConvergenceError::WrongWinner {
                            key: key.to_string(),
                            stamp: (stamp.time, stamp.origin),
                            held,
                            written: write.value.clone(),
                        });
                    }
                    Some(_) => {}
                    // Only a write of unknown outcome can carry a stamp no
                    // acknowledgement named.
                    None => {
                        if !writes.iter().any(|w| w.stamp.is_none() && w.value == held) {
                            return Err(lost());
                        }
                    }
                }
            }
            None => {
                // Absent with its tombstone collected (or a value with no
                // stamp): only a delete at or after the floor explains it.
                let deleted_later = held.is_none()
                    && writes
                        .iter()
                        .any(|w| w.value.is_none() && w.stamp.is_none_or(|stamp| stamp >= floor));
                if !deleted_later {
                    return Err(lost());
                }
            }
        }
    }
    Ok(())
}

fn render_values(values: &[(u64, Option<String>)]) -> String {
    values
        .iter()
        .map(|(replica, value)| format!("replica {replica} = {}", fmt_value(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that all replicas hold identical state and that each key's final
/// acknowledged write (`None` = the last acknowledged op deleted the key) is
/// what they hold. Meant for single-writer-per-key workloads, where the final
/// acknowledged value is unambiguous.
pub fn check_convergence(
    replica_states: &[(u64, BTreeMap<String, String>)],
    acknowledged_writes: &[(String, Option<String>)],
) -> Result<(), ConvergenceError> {
    let Some((_, reference)) = replica_states.first() else {
        return Err(ConvergenceError::NoReplicas);
    };

    if replica_states.iter().any(|(_, state)| state != reference) {
        let keys: BTreeSet<&String> = replica_states
            .iter()
            .flat_map(|(_, state)| state.keys())
            .collect();
        for key in keys {
            let expected = reference.get(key);
            if replica_states
                .iter()
                .any(|(_, state)| state.get(key) != expected)
            {
                return Err(ConvergenceError::Diverged {
                    key: key.clone(),
                    values: replica_states
                        .iter()
                        .map(|(replica, state)| (*replica, state.get(key).cloned()))
                        .collect(),
                });
            }
        }
    }

    for (key, expected) in acknowledged_writes {
        let actual = reference.get(key).cloned();
        if actual != *expected {
            return Err(ConvergenceError::LostWrite {
                key: key.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn identical_replicas_with_acknowledged_writes_converge() {
        let s = state(&[("a", "1"), ("b", "2")]);
        let replicas = vec![(1, s.clone()), (2, s.clone()), (3, s)];
        let acked = vec![
            ("a".to_string(), Some("1".to_string())),
            ("b".to_string(), Some("2".to_string())),
            ("gone".to_string(), None),
        ];
        assert_eq!(check_convergence(&replicas, &acked), Ok(()));
    }

    #[test]
    fn divergence_reports_first_differing_key_and_all_values() {
        let replicas = vec![
            (1, state(&[("a", "1"), ("b", "2"), ("c", "3")])),
            (2, state(&[("a", "1"), ("b", "X"), ("c", "Y")])),
            (3, state(&[("a", "1"), ("c", "3")])),
        ];
        let err = check_convergence(&replicas, &[]).unwrap_err();
        assert_eq!(
            err,
            ConvergenceError::Diverged {
                key: "b".into(),
                values: vec![(1, Some("2".into())), (2, Some("X".into())), (3, None),],
            }
        );
        assert_eq!(
            err.to_string(),
            "replicas diverge on key \"b\": replica 1 = \"2\", replica 2 = \"X\", replica 3 = <absent>"
        );
    }

    #[test]
    fn key_missing_only_on_a_later_replica_is_divergence() {
        let replicas = vec![(1, state(&[])), (2, state(&[("z", "1")]))];
        assert!(matches!(
            check_convergence(&replicas, &[]),
            Err(ConvergenceError::Diverged { key, .. }) if key == "z"
        ));
    }

    #[test]
    fn lost_or_resurrected_acknowledged_write_is_reported() {
        let s = state(&[("a", "old")]);
        let replicas = vec![(1, s.clone()), (2, s)];
        assert_eq!(
            check_convergence(&replicas, &[("a".into(), Some("new".into()))]),
            Err(ConvergenceError::LostWrite {
                key: "a".into(),
                expected: Some("new".into()),
                actual: Some("old".into()),
            })
        );
        // A deleted key that came back.
        assert!(matches!(
            check_convergence(&replicas, &[("a".into(), None)]),
            Err(ConvergenceError::LostWrite { expected: None, .. })
        ));
        // A write that vanished entirely.
        assert!(matches!(
            check_convergence(&replicas, &[("b".into(), Some("1".into()))]),
            Err(ConvergenceError::LostWrite { actual: None, .. })
        ));
    }

    fn stamp(time: u64, origin: u64) -> Stamp {
        Stamp { time, origin }
    }

    fn write(key: &str, value: Option<&str>, stamp: Option<(u64, u64)>) -> LwwWrite {
        LwwWrite {
            key: key.into(),
            value: value.map(str::to_string),
            stamp: stamp.map(|(t, o)| Stamp { time: t, origin: o }),
        }
    }

    type Row<'a> = (&'a str, Option<&'a str>, Option<(u64, u64)>);

    fn lww(pairs: &[Row<'_>]) -> LwwState {
        pairs
            .iter()
            .map(|(k, v, s)| {
                (
                    k.to_string(),
                    (v.map(str::to_string), s.map(|(t, o)| stamp(t, o))),
                )
            })
            .collect()
    }

    /// Goal: with several writers per key the survivor is judged by stamp,
    /// not by which acknowledgement came last.
    #[test]
    fn lww_accepts_the_greatest_stamp_whatever_the_ack_order() {
        let writes = vec![
            write("k", Some("a"), Some((20, 1))),
            write("k", Some("b"), Some((10, 2))),
            write("k", Some("c"), None),
            write("d", Some("x"), Some((5, 1))),
            write("d", None, Some((6, 2))),
        ];
        let s = lww(&[("k", Some("a"), Some((20, 1))), ("d", None, Some((6, 2)))]);
        let collected = lww(&[("k", Some("a"), Some((20, 1)))]);
        assert_eq!(
            check_lww_convergence(&[(1, s.clone()), (2, collected)], &writes),
            Ok(()),
            "a collected tombstone is the same state"
        );
        // A later write of unknown outcome may win.
        let c = lww(&[("k", Some("c"), Some((30, 3))), ("d", None, None)]);
        assert_eq!(
            check_lww_convergence(&[(1, c.clone()), (2, c)], &writes),
            Ok(())
        );
    }

    #[test]
    fn lww_reports_a_lost_write_a_wrong_winner_and_divergence() {
        let writes = vec![
            write("k", Some("a"), Some((20, 1))),
            write("k", Some("b"), Some((10, 2))),
        ];
        let older = lww(&[("k", Some("b"), Some((10, 2)))]);
        assert!(matches!(
            check_lww_convergence(&[(1, older.clone()), (2, older)], &writes),
            Err(ConvergenceError::LostWrite { expected: Some(e), .. }) if e == "a"
        ));
        let swapped = lww(&[("k", Some("b"), Some((20, 1)))]);
        assert!(matches!(
            check_lww_convergence(&[(1, swapped)], &writes),
            Err(ConvergenceError::WrongWinner { stamp: (20, 1), .. })
        ));
        let gone = lww(&[]);
        assert!(matches!(
            check_lww_convergence(&[(1, gone)], &writes),
            Err(ConvergenceError::LostWrite { actual: None, .. })
        ));
        let a = lww(&[("k", Some("a"), Some((20, 1)))]);
        let other_stamp = lww(&[("k", Some("a"), Some((20, 2)))]);
        assert!(matches!(
            check_lww_convergence(&[(1, a), (2, other_stamp)], &writes),
            Err(ConvergenceError::Diverged { .. })
        ));
        assert_eq!(
            check_lww_convergence(&[], &writes),
            Err(ConvergenceError::NoReplicas)
        );
    }

    #[test]
    fn no_replicas_is_an_error() {
        assert_eq!(
            check_convergence(&[], &[]),
            Err(ConvergenceError::NoReplicas)
        );
    }
}
