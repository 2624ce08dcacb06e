//! End-of-run checks for weakly consistent protocols, where linearizability
//! is not promised but replicas must converge without losing acknowledged
//! writes once the system is quiescent.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::history::fmt_value;

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

    #[test]
    fn no_replicas_is_an_error() {
        assert_eq!(
            check_convergence(&[], &[]),
            Err(ConvergenceError::NoReplicas)
        );
    }
}
