//! The swap coordinator: runs on whichever node leads the control plane,
//! reads the swap's step from the record and proposes the next one. It
//! keeps no state of its own, so a new leader picks up where the old one
//! stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use synod_guest_sdk::NodeId;

use crate::control::record::{
    ControlCommand, RegionPhase, RegionRecord, SealReportRecord, SwapRecord, SwapStep,
};
use crate::node::Node;

/// How long members may take to fetch and compile the target component.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);
/// After this, a majority of the new voters prepared is enough to seal: a
/// member that is down prepares when it is back, and enters the new epoch
/// by the new protocol's catch-up.
pub const PREPARE_GRACE: Duration = Duration::from_secs(3);

/// Seal reports hosts sent straight to this node as coordinator, by
/// (region, epoch sealed): they count like recorded ones and go into the
/// record with the commit, which saves a control-plane commit per swap. A
/// new coordinator starts empty; hosts re-send until the swap ends.
#[derive(Default)]
pub struct SealReports {
    reports: Mutex<BTreeMap<(String, u64), BTreeMap<NodeId, SealReportRecord>>>,
}

impl SealReports {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, u64), BTreeMap<NodeId, SealReportRecord>>>
    {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn note(&self, region: &str, epoch: u64, node: NodeId, report: SealReportRecord) {
        self.lock()
            .entry((region.to_string(), epoch))
            .or_default()
            .insert(node, report);
    }

    fn of(&self, region: &str, epoch: u64) -> BTreeMap<NodeId, SealReportRecord> {
        self.lock()
            .get(&(region.to_string(), epoch))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets reports of swaps that are no longer sealing at that epoch.
    fn retain(&self, live: &BTreeSet<(String, u64)>) {
        self.lock().retain(|key, _| live.contains(key));
    }
}

/// What the coordinator does next for one swap.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Wait(String),
    Seal,
    Abort(String),
    Commit {
        start_position: u64,
        rollback: Option<String>,
    },
}

/// Decides the next step of `swap` on `record` (pure: tested apart).
/// `eventual` says the current protocol is only eventually consistent.
pub fn decide(record: &RegionRecord, swap: &SwapRecord, eventual: bool, now_ms: u64) -> Decision {
    match swap.step {
        SwapStep::Preparing => {
            // Only current voters can report a seal, and the reporters must
            // be a majority of the new voters: with too few of them among
            // the new voters the swap could never commit, and sealing would
            // hold the region's writes for good. Abandon it before sealing.
            let new_majority = swap.voters.len() / 2 + 1;
            let kept = swap
                .voters
                .iter()
                .filter(|id| record.spec.voters.contains(id))
                .count();
            if kept < new_majority {
                return Decision::Abort(format!(
                    "the new voters {:?} keep {kept} of the current voters {:?}; a swap commits only when replicas holding the data are a majority ({new_majority}) of the new voters: swap to a membership keeping enough current voters, then change membership",
                    swap.voters, record.spec.voters
                ));
            }
            if let Some((node, why)) = swap.refused.iter().next() {
                return Decision::Abort(format!(
                    "node {node} cannot run {}: {why}",
                    swap.requested
                ));
            }
            let missing: Vec<NodeId> = swap
                .voters
                .iter()
                .filter(|id| !swap.prepared.contains(id))
                .copied()
                .collect();
            if missing.is_empty() {
                return Decision::Seal;
            }
            let elapsed = now_ms.saturating_sub(swap.step_at_ms);
            let majority = swap.voters.len() / 2 + 1;
            if swap.prepared.len() >= majority && elapsed > PREPARE_GRACE.as_millis() as u64 {
                return Decision::Seal;
            }
            if elapsed > PREPARE_TIMEOUT.as_millis() as u64 {
                return Decision::Abort(format!(
                    "nodes {missing:?} did not prepare {} within {PREPARE_TIMEOUT:?}",
                    swap.requested
                ));
            }
            Decision::Wait(format!(
                "waiting for nodes {missing:?} to fetch and compile {}",
                swap.requested
            ))
        }
        SwapStep::Sealing => {
            let old: BTreeSet<NodeId> = record.spec.voters.iter().copied().collect();
            let reporters: BTreeSet<NodeId> = swap
                .sealed
                .keys()
                .filter(|id| old.contains(id))
                .copied()
                .collect();
            let need_all = eventual && !swap.force;
            let quorum = if need_all {
                old.len()
            } else {
                old.len() / 2 + 1
            };
            let new_majority = swap.voters.len() / 2 + 1;
            let new_reporting = swap
                .voters
                .iter()
                .filter(|id| reporters.contains(id))
                .count();
            if reporters.len() < quorum || new_reporting < new_majority {
                let missing: Vec<NodeId> = old.difference(&reporters).copied().collect();
                let why = if need_all {
                    format!(
                        "waiting for every replica of this eventually consistent region to seal (missing {missing:?}; unreachable replicas hold writes no other has); `--force` proceeds without them and may lose those writes"
                    )
                } else {
                    format!(
                        "waiting for seal reports: have {reporters:?}, need {quorum} of {old:?} including {new_majority} of the new voters {:?}",
                        swap.voters
                    )
                };
                return Decision::Wait(why);
            }
            let reports: Vec<(&NodeId, &SealReportRecord)> = swap
                .sealed
                .iter()
                .filter(|(id, _)| reporters.contains(id))
                .collect();
            let first = reports[0].1;
            let agree = reports.iter().all(|(_, r)| *r == first);
            if agree {
                Decision::Commit {
                    start_position: first.position,
                    rollback: None,
                }
            } else {
                let seen: Vec<String> = reports
                    .iter()
                    .map(|(id, r)| {
                        format!("node {id} at {} digest {}", r.position, short(&r.digest))
                    })
                    .collect();
                let start = reports.iter().map(|(_, r)| r.position).max().unwrap_or(0);
                Decision::Commit {
                    start_position: start,
                    rollback: Some(format!("sealed replicas disagree: {}", seen.join(", "))),
                }
            }
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Proposes the next step of every swap, if this node leads the control plane.
pub async fn drive(node: &Node) {
    if !node.control().is_leader() {
        return;
    }
    let state = node.control().local();
    let now = crate::control::wall_clock_ms();
    let sealing: BTreeSet<(String, u64)> = state
        .regions
        .iter()
        .filter_map(|(name, r)| r.swap.as_ref().map(|s| (name.clone(), s.from_epoch)))
        .collect();
    node.seal_reports().retain(&sealing);
    for (name, record) in &state.regions {
        if record.phase != RegionPhase::Active {
            continue;
        }
        let Some(recorded) = &record.swap else {
            continue;
        };
        let mut swap = recorded.clone();
        let direct = node.seal_reports().of(name, swap.from_epoch);
        if swap.step == SwapStep::Sealing {
            swap.sealed
                .extend(direct.iter().map(|(id, r)| (*id, r.clone())));
        }
        let swap = &swap;
        let eventual = node.protocol_consistency(&record.spec.protocol) == "eventual";
        let command = match decide(record, swap, eventual, now) {
            Decision::Wait(why) => {
                tracing::debug!(region = %name, %why, "swap waiting");
                continue;
            }
            Decision::Seal => ControlCommand::SwapSeal {
                region: name.clone(),
                from_epoch: swap.from_epoch,
            },
            Decision::Abort(why) => {
                tracing::warn!(region = %name, %why, "swap abandoned");
                ControlCommand::SwapAbort {
                    region: name.clone(),
                    from_epoch: swap.from_epoch,
                    why,
                }
            }
            Decision::Commit {
                start_position,
                rollback,
            } => {
                if let Some(why) = &rollback {
                    tracing::error!(region = %name, %why, "swap rolled back");
                }
                ControlCommand::SwapCommit {
                    region: name.clone(),
                    from_epoch: swap.from_epoch,
                    start_position,
                    rollback,
                    sealed: swap
                        .sealed
                        .iter()
                        .filter(|(id, _)| !recorded.sealed.contains_key(id))
                        .map(|(id, r)| (*id, r.clone()))
                        .collect(),
                }
            }
        };
        let point = match &command {
            ControlCommand::SwapSeal { .. } => "swap-after-seal-step",
            ControlCommand::SwapCommit { .. } => "swap-after-commit",
            _ => "",
        };
        let proposed = std::time::Instant::now();
        match node.control().propose(command).await {
            Ok(()) => {
                tracing::debug!(region = %name, step = point, commit_ms = proposed.elapsed().as_secs_f64() * 1e3, "swap step recorded");
                crate::failpoint::hit(point)
            }
            Err(error) => {
                tracing::debug!(region = %name, %error, "swap step not recorded; will retry")
            }
        }
    }
}

/// The swap's wait reason as status shows it.
pub fn waiting_for(node: &Node, record: &RegionRecord) -> Option<String> {
    let swap = record.swap.as_ref()?;
    let eventual = node.protocol_consistency(&record.spec.protocol) == "eventual";
    match decide(record, swap, eventual, crate::control::wall_clock_ms()) {
        Decision::Wait(why) => Some(why),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::control::record::{RegionPhase, SwapStep};
    use crate::region::{ProtocolRef, RegionSpec};

    fn record(voters: Vec<NodeId>) -> RegionRecord {
        RegionRecord {
            spec: RegionSpec::test_raft("r", voters),
            phase: RegionPhase::Active,
            epochs: vec![],
            swap: None,
            retired: BTreeSet::new(),
            created_at_ms: 0,
        }
    }

    fn swap(voters: Vec<NodeId>, sealed: &[(NodeId, u64, &str)]) -> SwapRecord {
        SwapRecord {
            from_epoch: 1,
            to: ProtocolRef::Native {
                name: "raft".into(),
            },
            requested: "native:raft".into(),
            params: vec![],
            voters,
            force: false,
            step: SwapStep::Sealing,
            prepared: BTreeSet::new(),
            refused: BTreeMap::new(),
            sealed: sealed
                .iter()
                .map(|(id, p, d)| {
                    (
                        *id,
                        SealReportRecord {
                            position: *p,
                            digest: d.to_string(),
                        },
                    )
                })
                .collect(),
            began_at_ms: 0,
            step_at_ms: 0,
            actor: 1,
        }
    }

    #[test]
    fn commits_on_an_agreeing_quorum_only() {
        let r = record(vec![1, 2, 3]);
        assert!(matches!(
            decide(&r, &swap(vec![1, 2, 3], &[(1, 9, "a")]), false, 0),
            Decision::Wait(_)
        ));
        assert_eq!(
            decide(
                &r,
                &swap(vec![1, 2, 3], &[(1, 9, "a"), (3, 9, "a")]),
                false,
                0
            ),
            Decision::Commit {
                start_position: 9,
                rollback: None
            }
        );
        let disagree = decide(
            &r,
            &swap(vec![1, 2, 3], &[(1, 9, "a"), (2, 9, "b")]),
            false,
            0,
        );
        assert!(matches!(
            disagree,
            Decision::Commit {
                rollback: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn the_reporters_must_be_a_majority_of_the_new_voters() {
        // Single copy to three replicas: the two new ones start empty and
        // could out-vote the only replica that holds the data.
        let r = record(vec![1]);
        assert!(matches!(
            decide(&r, &swap(vec![1, 2, 3], &[(1, 9, "a")]), false, 0),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide(&r, &swap(vec![1], &[(1, 9, "a")]), false, 0),
            Decision::Commit { .. }
        ));
        // Three to one: the one kept must be among the reporters.
        let r = record(vec![1, 2, 3]);
        assert!(matches!(
            decide(&r, &swap(vec![3], &[(1, 9, "a"), (2, 9, "a")]), false, 0),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide(&r, &swap(vec![2], &[(1, 9, "a"), (2, 9, "a")]), false, 0),
            Decision::Commit { .. }
        ));
    }

    #[test]
    fn a_swap_that_could_never_commit_is_abandoned_before_sealing() {
        let r = record(vec![1]);
        let mut s = swap(vec![1, 2, 3], &[]);
        s.step = SwapStep::Preparing;
        s.prepared = BTreeSet::from([1, 2, 3]);
        assert!(
            matches!(decide(&r, &s, false, 0), Decision::Abort(why) if why.contains("majority"))
        );
        s.voters = vec![1];
        s.prepared = BTreeSet::from([1]);
        assert_eq!(decide(&r, &s, false, 0), Decision::Seal);
        // Three to three others: no current voter is kept.
        let r = record(vec![1, 2, 3]);
        let mut s = swap(vec![4, 5, 6], &[]);
        s.step = SwapStep::Preparing;
        assert!(matches!(decide(&r, &s, false, 0), Decision::Abort(_)));
        // Three to two of them plus one new: two of three kept.
        s.voters = vec![2, 3, 4];
        assert!(matches!(decide(&r, &s, false, 0), Decision::Wait(_)));
    }

    #[test]
    fn an_eventual_region_waits_for_every_replica_unless_forced() {
        let r = record(vec![1, 2, 3]);
        let mut s = swap(vec![1, 2, 3], &[(1, 9, "a"), (2, 9, "a")]);
        assert!(matches!(decide(&r, &s, true, 0), Decision::Wait(why) if why.contains("--force")));
        s.force = true;
        assert!(matches!(decide(&r, &s, true, 0), Decision::Commit { .. }));
    }

    #[test]
    fn preparing_aborts_on_a_refusal_or_timeout() {
        let r = record(vec![1, 2]);
        let mut s = swap(vec![1, 2], &[]);
        s.step = SwapStep::Preparing;
        assert!(matches!(decide(&r, &s, false, 0), Decision::Wait(_)));
        s.prepared = BTreeSet::from([1, 2]);
        assert_eq!(decide(&r, &s, false, 0), Decision::Seal);
        s.prepared = BTreeSet::from([1]);
        assert!(matches!(
            decide(&r, &s, false, PREPARE_TIMEOUT.as_millis() as u64 + 1),
            Decision::Abort(_)
        ));
        s.refused.insert(2, "no such component".into());
        assert!(matches!(decide(&r, &s, false, 0), Decision::Abort(_)));
    }
}
