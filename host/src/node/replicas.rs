//! This node's region replicas: starting new ones, restarting recovered
//! ones, and stopping and deleting the ones the record says go away.

use synod_guest_sdk::{InitConfig, Membership};

use super::{Node, NodeError, seed_for};
use crate::journal::{JournalRecord, RecoveredRegion};
use crate::plugin::PluginSource;
use crate::region::RegionName;
use crate::region::RegionSpec;
use crate::region::core::RegionCore;
use crate::region::driver::{RegionDriver, RegionHandle};
use crate::region::quota::{QUOTA_PARAM_PREFIX, RegionLimits};
use crate::region::replica::RegionReplica;
use crate::state_machine::KvStateMachine;

/// The component a source runs (native sources are not kept: they cost
/// nothing to make again).
fn source_protocol(source: &PluginSource) -> Option<crate::region::ProtocolRef> {
    match source {
        PluginSource::Wasm { component, .. } => Some(crate::region::ProtocolRef::Component {
            digest: component.digest.clone(),
        }),
        _ => None,
    }
}

/// Host parameter naming the fresh replica the host expects to hold the
/// newest state; a leader protocol may let it campaign at once (see
/// docs/PLUGIN-GUIDE.md, "Host parameters").
pub const FIRST_LEADER_PARAM: &str = "synod.first-leader";

impl Node {
    pub(crate) async fn reconciling_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reconciling.lock().await
    }

    /// The spec version the local replica of `region` last journaled.
    pub(crate) fn spec_version(&self, region: &str) -> Option<u64> {
        self.spec_versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(region)
            .copied()
    }

    pub(crate) fn note_spec_version(&self, region: &str, version: u64) {
        self.spec_versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_string(), version);
    }

    /// Journals a newer spec of the same epoch (new hosts or membership
    /// target), so a restart starts the replica with it.
    pub(crate) async fn record_spec_locally(&self, spec: &RegionSpec) {
        match self
            .journal(&[JournalRecord::RegionUpdated { spec: spec.clone() }])
            .await
        {
            Ok(()) => self.note_spec_version(&spec.name, spec.version),
            Err(error) => {
                tracing::error!(region = %spec.name, %error, "could not journal the region's spec")
            }
        }
    }

    /// Remembers the local replicas the record does not know, warning once
    /// for each (shown in `GET /v1/status` as `orphaned_regions`).
    pub(crate) fn note_orphans(&self, orphans: Vec<String>) {
        let mut known = self
            .orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in &orphans {
            if !known.contains(name) {
                tracing::warn!(region = %name, "this node runs a replica of a region the control plane does not record; it is kept (see docs/OPERATIONS.md, \"Orphaned regions\")");
            }
        }
        *known = orphans.into_iter().collect();
    }

    /// Keeps the target protocol a swap prepared (compiled) for the region
    /// leaving `from_epoch`.
    pub(crate) fn keep_prepared(&self, region: &str, from_epoch: u64, source: PluginSource) {
        let protocol = source_protocol(&source);
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_string(), (from_epoch, protocol, source));
    }

    /// The prepared source for the epoch after `from_epoch`, if it runs
    /// `protocol`; anything else prepared for the region is dropped.
    pub(crate) fn take_prepared(
        &self,
        region: &str,
        from_epoch: u64,
        protocol: &crate::region::ProtocolRef,
    ) -> Option<PluginSource> {
        let (epoch, prepared, source) = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(region)?;
        (epoch == from_epoch && prepared.as_ref() == Some(protocol)).then_some(source)
    }

    pub(crate) fn seal_reports(&self) -> &crate::swap::coordinator::SealReports {
        &self.seal_reports
    }

    pub(crate) fn early_messages(&self) -> &super::inbound::EarlyMessages {
        &self.early
    }

    /// Hands the replica of `region` the messages that arrived before it
    /// reached `epoch`.
    pub(crate) fn deliver_early_messages(&self, region: &str, epoch: u64) {
        let Some(handle) = self.read_regions().get(region).cloned() else {
            return;
        };
        for (from, batch) in self.early.take(region, epoch) {
            if let Err(error) = handle.deliver_messages(from, epoch, batch) {
                tracing::debug!(%region, from, %error, "early messages dropped");
            }
        }
    }

    pub(crate) fn is_holding(&self, region: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(region)
    }

    pub(crate) fn set_holding(&self, region: &str, holding: bool) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if holding {
            held.insert(region.to_string());
        } else {
            held.remove(region);
        }
    }

    /// Runs one swap step for (region, epoch) in the background unless it
    /// is already running.
    pub(crate) fn spawn_swap_step<F, Fut>(
        &self,
        region: &str,
        epoch: u64,
        step: &'static str,
        work: F,
    ) where
        F: FnOnce(std::sync::Arc<Node>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(node) = self.this.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let key = (region.to_string(), epoch, step);
        {
            let mut work_list = self
                .swap_work
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !work_list.insert(key.clone()) {
                return;
            }
        }
        let region = region.to_string();
        tokio::spawn(async move {
            work(node.clone(), region).await;
            node.swap_work
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&key);
        });
    }

    /// Restarts a replica recovered from the journal, over its storage and
    /// its last snapshot.
    pub(crate) fn restart_region(&self, region: RecoveredRegion) -> Result<(), NodeError> {
        let Some(spec) = region.spec.clone() else {
            return Ok(());
        };
        let source = self.plugin_source(&spec)?;
        let state = match self.context.snapshots.load(&spec.name) {
            Ok(Some(image)) => {
                KvStateMachine::restore(&image).map_err(|e| NodeError::Snapshot {
                    region: spec.name.clone(),
                    reason: e.to_string(),
                })?
            }
            Ok(None) => KvStateMachine::default(),
            Err(error) => {
                return Err(NodeError::Snapshot {
                    region: spec.name.clone(),
                    reason: error.to_string(),
                });
            }
        };
        let name = spec.name.clone();
        self.note_spec_version(&name, spec.version);
        let handle = self.spawn_driver(spec, source, region, state, true);
        self.write_regions().insert(name, handle);
        Ok(())
    }

    /// Records and starts a brand-new replica (empty storage and state).
    pub(crate) async fn start_new_replica(
        &self,
        spec: RegionSpec,
        source: PluginSource,
    ) -> Result<RegionHandle, NodeError> {
        self.journal(&[JournalRecord::RegionCreated { spec: spec.clone() }])
            .await?;
        let name = spec.name.clone();
        let epoch = spec.epoch;
        self.note_spec_version(&name, spec.version);
        let handle = self.spawn_driver(
            spec,
            source,
            RecoveredRegion::default(),
            KvStateMachine::default(),
            false,
        );
        self.write_regions().insert(name.clone(), handle.clone());
        self.deliver_early_messages(&name, epoch);
        Ok(handle)
    }

    /// Stops the local replica of `region` (if running) and deletes its
    /// storage and snapshot durably.
    pub(crate) async fn delete_local_replica(&self, region: &str) -> Result<(), NodeError> {
        let handle = self.write_regions().remove(region);
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
        self.journal(&[JournalRecord::RegionDropped {
            region: region.to_string(),
        }])
        .await?;
        self.context
            .snapshots
            .remove(region)
            .map_err(|e| NodeError::Storage(format!("removing the snapshot of {region}: {e}")))?;
        tracing::info!(%region, "deleted the local replica");
        Ok(())
    }

    pub(crate) fn spawn_driver(
        &self,
        spec: RegionSpec,
        source: PluginSource,
        storage: RecoveredRegion,
        state: KvStateMachine,
        recovering: bool,
    ) -> RegionHandle {
        let name =
            RegionName::new(&spec.name).unwrap_or_else(|_| unreachable!("validated at creation"));
        let seed = seed_for(self.config.node_id, &spec.name, self.context.incarnation);
        let mut core = RegionCore::new(
            name,
            self.config.node_id,
            storage.log,
            storage.meta,
            state,
            self.context.clock.clone(),
            seed,
        );
        core.set_limits(self.region_limits(&spec), Some(self.disk_reserve.clone()));
        let mut params = spec.params.clone();
        let named = params.iter().any(|(name, _)| name == FIRST_LEADER_PARAM);
        if !recovering
            && !named
            && let Some(first) = spec.voters.iter().min()
        {
            // All fresh replicas are equal: the lowest voter may lead first.
            params.push((FIRST_LEADER_PARAM.to_string(), first.to_string()));
        }
        let init = InitConfig {
            self_id: self.config.node_id,
            membership: Membership {
                voters: spec.voters.clone(),
                learners: spec.learners.clone(),
            },
            params,
            recovering,
            applied_position: 0,
        };
        let mut replica = RegionReplica::new(
            source,
            core,
            init,
            self.config.failure_policy.clone(),
            self.context.clock.clone(),
        );
        replica.set_cpu_policy(self.config.cpu_policy.clone());
        replica.set_hibernate_policy(crate::region::hibernate::HibernatePolicy {
            idle_after: self.config.hibernate_after,
        });
        RegionDriver::spawn(
            spec,
            replica,
            self.context.clone(),
            self.commit.durable(),
            recovering,
        )
    }

    /// A region's limits: the node's, with the spec's `quota.*` parameters.
    /// A spec with values this node refuses keeps the node's limits (and
    /// says so).
    pub(crate) fn region_limits(&self, spec: &RegionSpec) -> RegionLimits {
        let defaults = &self.config.region_limits;
        defaults.with_overrides(&spec.params).unwrap_or_else(|error| {
            let quota: Vec<_> = spec
                .params
                .iter()
                .filter(|(k, _)| k.starts_with(QUOTA_PARAM_PREFIX))
                .collect();
            tracing::warn!(region = %spec.name, %error, ?quota, "ignoring the region's quota parameters");
            defaults.clone()
        })
    }
}
