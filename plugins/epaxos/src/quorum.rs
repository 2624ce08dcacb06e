//! Quorum sizes for `N = 2F + 1` replicas.

/// Failures tolerated by `n` replicas.
pub fn failures(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// A classic (slow-path and recovery) quorum: `F + 1`.
pub fn majority(n: usize) -> usize {
    failures(n) + 1
}

/// The fast quorum, command leader included: `F + ⌊(F + 1) / 2⌋` (EPaxos
/// with the optimized recovery). A plain majority, as the reference
/// implementation uses, is only as large for `N ≤ 5`; the
/// `fixture-majority-fast-quorum` feature reproduces that mistake.
pub fn fast(n: usize) -> usize {
    let f = failures(n);
    if cfg!(feature = "fixture-majority-fast-quorum") {
        return majority(n);
    }
    // ⌊(F + 1) / 2⌋ = ⌈F / 2⌉; N = 1: the leader alone.
    (f + f.div_ceil(2)).max(1)
}

/// How many identical initial-ballot pre-accepts (command leader excluded)
/// a recovery must see among a majority before it may keep those
/// attributes: `⌊(F + 1) / 2⌋`. Any fast quorum leaves at least this many
/// in every majority that excludes the leader.
pub fn recovery_group(n: usize) -> usize {
    failures(n).div_ceil(2).max(1)
}

#[cfg(all(test, not(feature = "fixture-majority-fast-quorum")))]
mod tests {
    use super::*;

    #[test]
    fn fast_quorum_table() {
        let table: Vec<(usize, usize, usize)> = [1, 3, 5, 7, 9]
            .into_iter()
            .map(|n| (n, majority(n), fast(n)))
            .collect();
        assert_eq!(
            table,
            vec![(1, 1, 1), (3, 2, 2), (5, 3, 3), (7, 4, 5), (9, 5, 6)]
        );
    }

    #[test]
    fn every_majority_without_the_leader_meets_a_fast_quorum_in_the_recovery_group() {
        for n in [3usize, 5, 7, 9] {
            // Fast quorum minus the leader, within the other n - 1 replicas;
            // a majority of responders that excludes the leader.
            let others = n - 1;
            let overlap = (fast(n) - 1 + majority(n)).saturating_sub(others);
            assert!(overlap >= recovery_group(n), "n = {n}");
        }
    }
}
