//! One host's part in a swap: prepare the target component, hold writes
//! and seal the running protocol, and enter the new epoch. Each step is
//! started at most once at a time per (region, epoch) and reports its
//! result into the record; a failed step is retried on the next pass.

use std::time::Duration;

use crate::control::network::{ControlReply, ControlRpc};
use crate::control::record::{ControlCommand, RegionRecord, SealReportRecord, SwapStep};
use crate::node::Node;

/// How long one seal attempt may take before it is retried.
const SEAL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Takes this node's part in the region's swap, if one is under way, and
/// gives held writes back if a swap was abandoned.
pub async fn take_part(node: &Node, record: &RegionRecord) {
    let me = node.config().node_id;
    let name = record.spec.name.clone();
    let Some(swap) = &record.swap else {
        if node.is_holding(&name) {
            let handle = node.read_regions().get(&name).cloned();
            if let Some(handle) = handle {
                match handle.release_held().await {
                    Ok(()) => {
                        tracing::info!(region = %name, "swap abandoned: held writes go to the running protocol")
                    }
                    Err(error) => {
                        tracing::warn!(region = %name, %error, "could not release held writes")
                    }
                }
            }
            node.set_holding(&name, false);
        }
        return;
    };
    let epoch = swap.from_epoch;
    match swap.step {
        SwapStep::Preparing => {
            if !swap.voters.contains(&me)
                || swap.prepared.contains(&me)
                || swap.refused.contains_key(&me)
            {
                return;
            }
            let to = swap.to.clone();
            node.spawn_swap_step(&name, epoch, "prepare", move |node, name| async move {
                let result = match node.ensure_component(&to).await {
                    Ok(()) => node
                        .source_of(&name, &to)
                        .map(|source| node.keep_prepared(&name, epoch, source))
                        .map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(why) = &result {
                    tracing::warn!(region = %name, %why, "cannot prepare the swap's target");
                }
                let report = ControlCommand::SwapPrepared { region: name.clone(), from_epoch: epoch, node: node.config().node_id, result };
                if let Err(error) = node.control().propose(report).await {
                    tracing::debug!(region = %name, %error, "prepare report not recorded; will retry");
                }
            });
        }
        SwapStep::Sealing => {
            if swap.sealed.contains_key(&me) {
                return;
            }
            let Some(handle) = node.read_regions().get(&name).cloned() else {
                return;
            };
            if handle.spec().epoch != epoch {
                return;
            }
            let capacity = node.config().swap_hold_requests_max;
            node.spawn_swap_step(&name, epoch, "seal", move |node, name| async move {
                if let Err(error) = handle.hold(capacity).await {
                    tracing::warn!(region = %name, %error, "could not hold writes for the swap");
                    return;
                }
                node.set_holding(&name, true);
                let report = match handle.seal(SEAL_ATTEMPT_TIMEOUT).await {
                    Ok(report) => report,
                    Err(error) => {
                        tracing::warn!(region = %name, %error, "seal did not finish; will retry");
                        return;
                    }
                };
                tracing::info!(region = %name, position = report.position, "sealed for the swap");
                crate::failpoint::hit("swap-after-sealed");
                let record = SealReportRecord {
                    position: report.position,
                    digest: hex::encode(&report.digest),
                };
                // The boundary snapshot is written while the report and the
                // commit are in flight, not after the commit.
                let (_, saved) = tokio::join!(
                    report_seal(&node, &name, epoch, record),
                    handle.save_boundary()
                );
                if let Err(error) = saved {
                    tracing::debug!(region = %name, %error, "boundary snapshot not saved ahead; the switch saves it");
                }
            });
        }
    }
}

/// Moves the local replica into the record's (newer) epoch.
pub async fn enter_epoch(node: &Node, record: &RegionRecord) {
    let me = node.config().node_id;
    let spec = record.spec_to_start();
    if !spec.hosted_on(me) {
        // Not a member of the new epoch: the record retires this replica
        // and the reconciler deletes it.
        return;
    }
    let Some(handle) = node.read_regions().get(&spec.name).cloned() else {
        return;
    };
    tracing::debug!(region = %spec.name, epoch = spec.epoch, "entering the new epoch");
    if let Err(error) = node.ensure_component(&spec.protocol).await {
        tracing::warn!(region = %spec.name, %error, "cannot enter the new epoch yet");
        return;
    }
    // The source compiled while preparing, when it is the epoch's protocol
    // (loading it again costs milliseconds of the swap's stall).
    let prepared = node.take_prepared(&spec.name, spec.epoch - 1, &spec.protocol);
    let source = match prepared.map_or_else(|| node.plugin_source(&spec), Ok) {
        Ok(source) => source,
        Err(error) => {
            tracing::error!(region = %spec.name, %error, "cannot run the new epoch's protocol");
            return;
        }
    };
    crate::failpoint::hit("swap-before-enter");
    match handle.switch_epoch(spec.clone(), source).await {
        Ok(report) => {
            node.set_holding(&spec.name, false);
            node.note_spec_version(&spec.name, spec.version);
            node.deliver_early_messages(&spec.name, report.epoch);
            tracing::info!(region = %spec.name, epoch = report.epoch, start = report.start_position, "entered the new epoch");
        }
        Err(error) => {
            tracing::error!(region = %spec.name, %error, "could not enter the new epoch; will retry")
        }
    }
}

/// How long the coordinator may take to note a seal report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tells the coordinator (the control-plane leader) this replica sealed:
/// straight to it, which saves a commit; if that fails, through the record.
async fn report_seal(node: &Node, region: &str, epoch: u64, report: SealReportRecord) {
    let me = node.config().node_id;
    match node.control().leader() {
        Some(leader) if leader == me => {
            node.seal_reports().note(region, epoch, me, report);
            crate::swap::coordinator::drive(node).await;
            return;
        }
        Some(leader) => {
            let rpc = ControlRpc::SealReport {
                region: region.to_string(),
                from_epoch: epoch,
                node: me,
                report: report.clone(),
            };
            match node
                .control()
                .rpc()
                .call(leader, &rpc, REPORT_TIMEOUT)
                .await
            {
                Ok(ControlReply::Noted) => return,
                Ok(other) => {
                    tracing::debug!(%region, leader, ?other, "the coordinator did not note the seal report")
                }
                Err(error) => tracing::debug!(%region, leader, %error, "seal report not sent"),
            }
        }
        None => {}
    }
    let command = ControlCommand::SwapSealed {
        region: region.to_string(),
        from_epoch: epoch,
        node: me,
        report,
    };
    if let Err(error) = node.control().propose(command).await {
        tracing::debug!(%region, %error, "seal report not recorded; will retry");
    }
}
