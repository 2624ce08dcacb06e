//! Scenarios that the unsafe fixture builds get wrong. Each is a plain
//! script; the tests assert that the correct build agrees on every commit
//! and that the fixture build's violation is detected.

use super::harness::{Cluster, is};
use super::inst;

/// 1.1 ends accepted at two ballots: its value W is chosen at ballot
/// (2,3) by nodes 1 and 3, while node 2 holds a no-op accepted at the
/// lower ballot (1,2) but has since promised higher ballots (its own
/// failed recoveries). Node 2 then recovers with node 1's answer. Ranking
/// votes by the ballot they were cast at keeps W; ranking by the promise
/// (the reference's single ballot) picks the no-op.
pub fn accepted_at_two_ballots() -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.write(1, 100, 7);
    cluster.drop_where(|_| true);
    // Node 2 finds nothing with node 3 and accepts a no-op alone.
    cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 1);
    cluster.deliver_where(|e| is(e, "prepare") || is(e, "prepare-ok"));
    cluster.drop_where(|_| true);
    // Node 3 recovers with the live leader 1 and chooses W at (2,3).
    cluster.on(3, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 2);
    cluster.deliver_where(|e| (e.to == 1 || e.to == 3) && !is(e, "commit"));
    cluster.drop_where(|_| true);
    assert!(
        cluster
            .record(3, inst(1, 1))
            .is_some_and(|r| r.is_committed())
    );
    // Node 2's next two attempts are lost: its promise grows, its vote not.
    for _ in 0..2 {
        cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
        cluster.drop_where(|_| true);
    }
    cluster.on(2, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 3);
    cluster.deliver_all();
    cluster
}

/// N = 7: 1.1 reaches 2, 3, 4 — a fast quorum only under the reference's
/// majority rule — while 5.1 (same key) is pre-accepted at 5, 6, 7. The
/// leader commits (and executes) 1.1 with no deps and crashes; node 7
/// recovers it with 4, 5, 6 answering, sees one matching pre-accept, and
/// orders 1.1 after 5.1.
pub fn fast_commit_seen_by_one_recoverer() -> Cluster {
    let mut cluster = Cluster::new(7);
    cluster.write(5, 500, 7);
    cluster.deliver_where(|e| (e.to == 6 || e.to == 7) && is(e, "pre-accept"));
    cluster.drop_where(|_| true);
    cluster.write(1, 100, 7);
    cluster.deliver_where(|e| (e.to == 2 || e.to == 3 || e.to == 4) && is(e, "pre-accept"));
    cluster.deliver_where(|e| e.to == 1);
    cluster.drop_where(|_| true);
    cluster.crash(1);
    cluster.on(7, |r, h| r.recover(h, inst(1, 1)));
    cluster.drop_where(|e| e.to == 2 || e.to == 3);
    cluster.deliver_all();
    cluster.restart(1, false);
    cluster.run(3000);
    cluster
}

#[cfg(not(feature = "fixture-no-last-voted-ballot"))]
#[test]
fn without_the_fixture_votes_at_two_ballots_keep_the_chosen_value() {
    let cluster = accepted_at_two_ballots();
    assert!(cluster.commit_disagreements().is_empty());
}

#[cfg(feature = "fixture-no-last-voted-ballot")]
#[test]
fn fixture_without_last_voted_ballot_chooses_two_values() {
    let cluster = accepted_at_two_ballots();
    let found = cluster.commit_disagreements();
    assert!(!found.is_empty(), "the violation went undetected");
}

#[cfg(not(feature = "fixture-majority-fast-quorum"))]
#[test]
fn the_optimized_fast_quorum_does_not_commit_on_a_majority_at_seven() {
    let cluster = fast_commit_seen_by_one_recoverer();
    cluster.check();
}

#[cfg(feature = "fixture-majority-fast-quorum")]
#[test]
fn fixture_majority_fast_quorum_at_seven_breaks_agreement() {
    let cluster = fast_commit_seen_by_one_recoverer();
    let found = cluster.commit_disagreements();
    assert!(!found.is_empty(), "the violation went undetected");
}
