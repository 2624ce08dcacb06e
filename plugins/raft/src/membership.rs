//! Cluster configurations and the single-server change planner (§4.1 of
//! the Raft thesis).
//!
//! A configuration lists voters and learners. Changing it one server at a
//! time guarantees that any majority of the old voters and any majority of
//! the new voters intersect, so no two leaders can be elected for one term
//! across the change, without the joint consensus of §4.3.

use serde::{Deserialize, Serialize};
use synod_guest_sdk::{Membership, NodeId};

/// Voters and learners, each sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Config {
    /// Normalizes a membership: sorted, deduplicated, and a node listed as
    /// both voter and learner counts as a voter.
    pub fn from_membership(membership: &Membership) -> Config {
        let mut voters = membership.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let mut learners: Vec<NodeId> = membership
            .learners
            .iter()
            .copied()
            .filter(|learner| voters.binary_search(learner).is_err())
            .collect();
        learners.sort_unstable();
        learners.dedup();
        Config { voters, learners }
    }

    pub fn to_membership(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Votes (or acknowledgements) needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn with_voter(&self, id: NodeId) -> Config {
        let mut voters = self.voters.clone();
        voters.push(id);
        voters.sort_unstable();
        Config {
            voters,
            learners: self.learners.iter().copied().filter(|&l| l != id).collect(),
        }
    }

    fn with_learner(&self, id: NodeId) -> Config {
        let mut learners = self.learners.clone();
        learners.push(id);
        learners.sort_unstable();
        Config {
            voters: self.voters.iter().copied().filter(|&v| v != id).collect(),
            learners,
        }
    }

    fn without(&self, id: NodeId) -> Config {
        Config {
            voters: self.voters.iter().copied().filter(|&v| v != id).collect(),
            learners: self.learners.iter().copied().filter(|&l| l != id).collect(),
        }
    }
}

/// What the leader should do next to move from the current configuration
/// towards the operator's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// The target is reached.
    Done,
    /// A learner that must become a voter is still catching up.
    Wait,
    /// Append this configuration (it differs from the current one by one
    /// server).
    Propose(Config),
}

/// Plans the next single-server change from `current` to `target`.
///
/// Order, chosen to keep fault tolerance during the change: add missing
/// nodes as learners; promote learners that caught up (`caught_up`); only
/// once every target voter votes, remove or demote other voters; then drop
/// learners that are not in the target; the leader (`self_id`) leaves last,
/// because it steps down once that change commits.
pub fn next_membership_step(
    current: &Config,
    target: &Config,
    self_id: NodeId,
    caught_up: impl Fn(NodeId) -> bool,
) -> MembershipStep {
    // 1. Every target member that is not a member yet joins as a learner.
    if let Some(new) = target.members().find(|&id| !current.is_member(id)) {
        return MembershipStep::Propose(current.with_learner(new));
    }
    // 2. Promote target voters that are learners, once caught up.
    let mut waiting = false;
    for &id in &target.voters {
        if current.is_learner(id) {
            if caught_up(id) {
                return MembershipStep::Propose(current.with_voter(id));
            }
            waiting = true;
        }
    }
    if waiting {
        return MembershipStep::Wait;
    }
    // 3. Voters not in the target's voters leave (or become learners),
    //    the leader itself last.
    let leaving = |id: NodeId| {
        if target.is_learner(id) {
            current.with_learner(id)
        } else {
            current.without(id)
        }
    };
    if let Some(old) = current
        .voters
        .iter()
        .copied()
        .find(|&id| id != self_id && !target.is_voter(id))
    {
        return MembershipStep::Propose(leaving(old));
    }
    // 4. Learners not in the target leave.
    if let Some(old) = current
        .learners
        .iter()
        .copied()
        .find(|&id| !target.is_member(id))
    {
        return MembershipStep::Propose(current.without(old));
    }
    // 5. Finally the leader, if it is not a target voter.
    if current.is_voter(self_id) && !target.is_voter(self_id) {
        return MembershipStep::Propose(leaving(self_id));
    }
    debug_assert_eq!(current, target);
    MembershipStep::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(voters: &[NodeId], learners: &[NodeId]) -> Config {
        Config::from_membership(&Membership {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
        })
    }

    /// Applies the planner until done, asserting every step changes one server.
    fn plan(current: &Config, target: &Config, self_id: NodeId) -> Vec<Config> {
        let mut steps = Vec::new();
        let mut at = current.clone();
        for _ in 0..32 {
            match next_membership_step(&at, target, self_id, |_| true) {
                MembershipStep::Done => return steps,
                MembershipStep::Wait => panic!("waits although every learner caught up"),
                MembershipStep::Propose(next) => {
                    let changed = at
                        .members()
                        .chain(next.members())
                        .filter(|&id| {
                            at.is_voter(id) != next.is_voter(id)
                                || at.is_member(id) != next.is_member(id)
                        })
                        .collect::<std::collections::BTreeSet<_>>();
                    assert_eq!(changed.len(), 1, "{at:?} -> {next:?} changes {changed:?}");
                    assert!(!next.voters.is_empty());
                    steps.push(next.clone());
                    at = next;
                }
            }
        }
        panic!("planner does not terminate");
    }

    #[test]
    fn normalizes_memberships() {
        let normalized = config(&[3, 1, 3], &[2, 1, 2]);
        assert_eq!(normalized.voters, vec![1, 3]);
        assert_eq!(normalized.learners, vec![2]);
        assert_eq!(normalized.quorum(), 2);
        assert_eq!(config(&[1, 2, 3, 4], &[]).quorum(), 3);
    }

    #[test]
    fn adding_a_voter_goes_through_a_learner() {
        let steps = plan(&config(&[1, 2, 3], &[]), &config(&[1, 2, 3, 4], &[]), 1);
        assert_eq!(
            steps,
            vec![config(&[1, 2, 3], &[4]), config(&[1, 2, 3, 4], &[])]
        );
    }

    #[test]
    fn promotion_waits_for_catch_up() {
        let step = next_membership_step(
            &config(&[1, 2, 3], &[4]),
            &config(&[1, 2, 3, 4], &[]),
            1,
            |_| false,
        );
        assert_eq!(step, MembershipStep::Wait);
    }

    #[test]
    fn replacement_adds_before_removing_and_leader_leaves_last() {
        let steps = plan(&config(&[1, 2, 3], &[]), &config(&[2, 4, 5], &[]), 1);
        assert_eq!(
            steps,
            vec![
                config(&[1, 2, 3], &[4]),
                config(&[1, 2, 3], &[4, 5]),
                config(&[1, 2, 3, 4], &[5]),
                config(&[1, 2, 3, 4, 5], &[]),
                config(&[1, 2, 4, 5], &[]),
                config(&[2, 4, 5], &[]),
            ]
        );
    }

    #[test]
    fn demotion_and_learner_removal() {
        let steps = plan(&config(&[1, 2, 3], &[7]), &config(&[1, 2], &[3]), 1);
        assert_eq!(steps, vec![config(&[1, 2], &[3, 7]), config(&[1, 2], &[3])]);
    }
}
