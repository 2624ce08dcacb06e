//! What a host does to make its replicas match the control record: start
//! the replicas it should host, delete the ones of deleted regions or that
//! it no longer hosts (and confirm), follow a region into a new epoch, and
//! take its part in a swap (`crate::swap`).
//!
//! It runs whenever this node applies a committed command, and every
//! second, so a node that restarts or missed a change catches up. Every
//! action is idempotent.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use synod_guest_sdk::Membership;

use super::record::{ControlCommand, RegionPhase, RegionRecord};
use crate::node::Node;
use crate::plugin::{Call, CallResult};
use crate::region::MembershipTarget;

/// The reconciler's heartbeat when nothing is committed.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the reconciler until the node is gone.
pub async fn run(node: Weak<Node>) {
    let mut applied = match node.upgrade() {
        Some(node) => node.control().watch(),
        None => return,
    };
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            reconcile_once(&node).await;
            crate::swap::coordinator::drive(&node).await;
        }
        let _ = tokio::time::timeout(RECONCILE_INTERVAL, applied.changed()).await;
    }
}

/// One pass over the record.
pub async fn reconcile_once(node: &Node) {
    let _serial = node.reconciling_lock().await;
    let state = node.control().local();
    let me = node.config().node_id;
    if let Some(transport) = node.transport() {
        for (id, address) in &state.nodes {
            if *id != me && !address.peer.is_empty() {
                transport.set_peer(*id, &address.peer);
            }
        }
    }
    for (name, record) in &state.regions {
        let must_delete = match &record.phase {
            RegionPhase::Deleting { pending } => pending.contains(&me),
            RegionPhase::Active => record.retired.contains(&me),
        };
        if must_delete {
            // Clients held by a swap are sent to a replica of the new epoch.
            let handle = node.read_regions().get(name).cloned();
            if let Some(handle) = handle
                && node.is_holding(name)
            {
                let to = record.spec.voters.first().copied();
                if let Err(error) = handle.redirect_held(to).await {
                    tracing::debug!(region = %name, %error, "could not redirect held requests");
                }
                node.set_holding(name, false);
            }
            delete_and_confirm(node, name).await;
            continue;
        }
        if record.phase != RegionPhase::Active {
            continue;
        }
        let hosted = record.spec.hosted_on(me);
        let running = node.read_regions().get(name).cloned();
        match running {
            None if hosted => start_replica(node, record).await,
            None => {}
            Some(handle) => {
                if handle.spec().epoch < record.spec.epoch {
                    crate::swap::host::enter_epoch(node, record).await;
                } else if handle.spec().epoch == record.spec.epoch
                    && node
                        .spec_version(name)
                        .is_some_and(|v| v < record.spec.version)
                {
                    node.record_spec_locally(&record.spec).await;
                }
            }
        }
        crate::swap::host::take_part(node, record).await;
    }
    // A local replica of a region the record does not know at all is kept
    // and reported, never deleted: a deletion always leaves this node
    // pending in the record until it confirms, so absence means the record
    // lost entries (a repaired control WAL) or a bug, and data is only ever
    // deleted on the record's positive word.
    let orphans: Vec<String> = node
        .read_regions()
        .keys()
        .filter(|name| !state.regions.contains_key(*name))
        .cloned()
        .collect();
    node.note_orphans(orphans);
}

async fn delete_and_confirm(node: &Node, region: &str) {
    if let Err(error) = node.delete_local_replica(region).await {
        tracing::error!(%region, %error, "could not delete the local replica; will retry");
        return;
    }
    let confirm = ControlCommand::ReplicaDeleted {
        region: region.to_string(),
        node: node.config().node_id,
    };
    if let Err(error) = node.control().propose(confirm).await {
        tracing::debug!(%region, %error, "could not confirm the deletion yet; will retry");
    }
}

async fn start_replica(node: &Node, record: &RegionRecord) {
    let spec = &record.spec_to_start();
    if let Err(error) = node.ensure_component(&spec.protocol).await {
        tracing::warn!(region = %spec.name, %error, "cannot start the replica yet");
        return;
    }
    let source = match node.plugin_source(spec) {
        Ok(source) => source,
        Err(error) => {
            tracing::error!(region = %spec.name, %error, "cannot start the replica");
            return;
        }
    };
    match node.start_new_replica(spec.clone(), source).await {
        Ok(_) => {
            tracing::info!(region = %spec.name, epoch = spec.epoch, "started a replica the record assigns here")
        }
        Err(error) => tracing::error!(region = %spec.name, %error, "could not start the replica"),
    }
}

/// Once the protocol's leader has committed the target membership (it
/// reports no membership change pending and exactly the target's members
/// as peers), the record's hosts shrink to the target: nodes dropped from
/// it are retired and delete their replicas (no idle replica is left).
async fn shrink_to_target(
    node: &Node,
    region: &str,
    target: &MembershipTarget,
    plugin: &crate::region::driver::PluginStatus,
) {
    let Some(spec) = node.region_spec(region) else {
        return;
    };
    let pending = plugin
        .counters
        .iter()
        .find(|(name, _)| name == "membership-change-pending")
        .map(|(_, value)| *value);
    if pending != Some(0) {
        return;
    }
    let mut members: Vec<u64> = plugin.peers.iter().map(|(peer, _)| *peer).collect();
    members.push(node.config().node_id);
    members.sort_unstable();
    let mut wanted: Vec<u64> = target
        .voters
        .iter()
        .chain(target.learners.iter())
        .copied()
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    if members != wanted {
        return;
    }
    let mut hosts: Vec<u64> = spec
        .voters
        .iter()
        .chain(spec.learners.iter())
        .copied()
        .collect();
    hosts.sort_unstable();
    if hosts == wanted {
        return;
    }
    let outcome = node
        .set_region_members(
            region,
            target.voters.clone(),
            target.learners.clone(),
            Some(target.clone()),
        )
        .await;
    match outcome {
        Ok(()) => {
            tracing::info!(%region, hosts = ?wanted, "the protocol reached its target membership; hosts shrink to it")
        }
        Err(error) => tracing::debug!(%region, %error, "could not shrink the hosts yet"),
    }
}

/// How often a node checks that the regions it leads are moving to the
/// membership their spec asks for.
const MEMBERSHIP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Asks each local replica that leads a region for the spec's membership
/// target, once per term it leads in: the leader that accepted the target
/// may have failed before finishing it. Plugins treat a repeated target as
/// a no-op.
pub async fn renew_membership_targets(node: Weak<Node>) {
    let mut asked: HashMap<String, (u64, MembershipTarget)> = HashMap::new();
    loop {
        tokio::time::sleep(MEMBERSHIP_CHECK_INTERVAL).await;
        let Some(node) = node.upgrade() else { return };
        renew_once(&node, &mut asked).await;
    }
}

async fn renew_once(node: &Arc<Node>, asked: &mut HashMap<String, (u64, MembershipTarget)>) {
    for handle in node.regions().await {
        let name = handle.name().to_string();
        let Some(target) = node
            .region_spec(&name)
            .and_then(|spec| spec.membership_target)
        else {
            continue;
        };
        let Ok(status) = handle.status().await else {
            continue;
        };
        let Some(plugin) = status.plugin else {
            continue;
        };
        if plugin.role != "leader" {
            continue;
        }
        shrink_to_target(node, &name, &target, &plugin).await;
        if asked.get(&name) == Some(&(plugin.term, target.clone())) {
            continue;
        }
        let call = Call::Membership(Membership {
            voters: target.voters.clone(),
            learners: target.learners.clone(),
        });
        match handle.control(call).await {
            Ok(CallResult::Membership(Ok(()))) => {
                tracing::debug!(region = %name, term = plugin.term, "membership target renewed");
                asked.insert(name, (plugin.term, target));
            }
            Ok(CallResult::Membership(Err(why))) => {
                tracing::debug!(region = %name, %why, "membership target not taken yet");
            }
            Ok(_) | Err(_) => {}
        }
    }
}
