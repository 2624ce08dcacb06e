//! A Synod node: opens its storage and the control plane, recovers its
//! regions and owns the region drivers.
//!
//! - this file: start-up, accessors, status and shutdown;
//! - [`components`]: publishing, storing, fetching and resolving components;
//! - [`replicas`]: starting, restarting, stopping and deleting local replicas;
//! - [`admin`]: operator commands, turned into control-plane proposals;
//! - [`inbound`]: routing frames from peers.

mod admin;
mod admission;
mod components;
mod inbound;
mod replicas;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use synod_guest_sdk::NodeId;

pub use self::admin::{Placement, SwapOutcome};
pub use self::components::{ComponentSummary, builtin_components, native_protocol};
pub use self::replicas::FIRST_LEADER_PARAM;
use crate::clock::{Clock, SystemClock};
use crate::control::record::NodeRecord;
use crate::control::{ControlError, ControlOptions, ControlPlane, ControlStatus};
use crate::engine::{LoadError, PluginEngine, SandboxLimits};
use crate::journal::{JournalCompactor, JournalError, JournalRecord, RecoveredNode};
use crate::network::{Network, NoPeers};
use crate::region::cpu::CpuPolicy;
use crate::region::driver::{DriverContext, RegionHandle};
use crate::region::quota::{DiskReserve, FreeSpace, RegionLimits};
use crate::region::replica::FailurePolicy;
use crate::region::{InvalidRegionName, RegionSpec};
use crate::storage::commit::{CheckpointPolicy, CommitStatsSnapshot, GroupCommit};
use crate::storage::datadir;
use crate::storage::disk::{Disk, FsDisk};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::wal::{Wal, WalOptions};
use crate::transport::{SnapshotAssembler, Transport, TransportLimits, TransportStats};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub limits: SandboxLimits,
    /// Region replicas this node admits (`None`: `limits.instances_max`).
    /// Announced to the control plane, which refuses creations past it.
    pub regions_max: Option<u32>,
    /// An idle replica drops its Wasm instance after this long (`None`:
    /// never; see `region::hibernate`).
    pub hibernate_after: Option<Duration>,
    pub failure_policy: FailurePolicy,
    /// When a region's plugin calls move to the idle-priority lane.
    pub cpu_policy: CpuPolicy,
    /// How long a client request may wait for its outcome.
    pub request_timeout: Duration,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub wal_segment_bytes: u64,
    /// Largest WAL frame payload; an entry larger than this is refused at
    /// submit, and checkpoints are written in frames within it.
    pub wal_frame_bytes_max: usize,
    /// The WAL is rewritten as a checkpoint once larger than this and than
    /// 4x the live state.
    pub wal_checkpoint_min_bytes: u64,
    /// Advertised HTTP address (`host:port`) for redirects to this node.
    pub api_address: String,
    /// Node-to-node listener; `None` runs a node without peers.
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Advertised transport address (`host:port`).
    pub peer_address: String,
    /// TLS on the peer and API ports and the tokens clients present;
    /// `None`: in the clear, unauthenticated (loopback only).
    pub security: Option<crate::security::Security>,
    /// The initial member list (bootstrap): id → addresses.
    pub bootstrap: Vec<(NodeId, NodeRecord)>,
    /// Who votes in the control plane and its timings.
    pub control: ControlOptions,
    /// Client requests a region queues while a swap seals it; past this,
    /// new ones are refused as overloaded.
    pub swap_hold_requests_max: usize,
    /// Every region's storage and timer limits, unless its `quota.*`
    /// parameters say otherwise.
    pub region_limits: RegionLimits,
    /// While the data directory's disk has less free space than this, no
    /// region may grow its storage (0: no reserve).
    pub disk_reserve_bytes: u64,
    /// Where the free space comes from (`statvfs`; tests inject their own).
    pub free_space: FreeSpace,
    /// Byte budgets, handshake and write limits of the peer transport.
    pub transport: TransportLimits,
    /// Connection caps and timeouts of the API port (HTTP and wire).
    pub connections: crate::api::ConnectionLimits,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            limits: SandboxLimits::default(),
            regions_max: None,
            hibernate_after: None,
            failure_policy: FailurePolicy::default(),
            cpu_policy: CpuPolicy::default(),
            request_timeout: Duration::from_secs(10),
            key_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            wal_segment_bytes: 64 << 20,
            wal_frame_bytes_max: crate::storage::wal::FRAME_BYTES_MAX,
            wal_checkpoint_min_bytes: 64 << 20,
            api_address: String::new(),
            peer_listen: None,
            peer_address: String::new(),
            security: None,
            bootstrap: Vec::new(),
            control: ControlOptions::default(),
            swap_hold_requests_max: 10_000,
            region_limits: RegionLimits::default(),
            disk_reserve_bytes: 256 << 20,
            free_space: FreeSpace::default(),
            transport: TransportLimits::default(),
            connections: crate::api::ConnectionLimits::default(),
        }
    }
}

/// Why a node could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    InvalidName(#[from] InvalidRegionName),
    #[error("region {0} already exists")]
    RegionExists(String),
    #[error("no region named {0}")]
    UnknownRegion(String),
    #[error(
        "unknown protocol {0:?}: use a built-in name (standalone), a published component's name or sha256:<digest>, or native:<name>"
    )]
    UnknownProtocol(String),
    #[error("component rejected: {0}")]
    Component(#[from] LoadError),
    #[error("component {digest} of region {region} is missing from {path}")]
    MissingComponent {
        region: String,
        digest: String,
        path: String,
    },
    #[error("snapshot of region {region} is unusable: {reason}")]
    Snapshot { region: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("region spec refused: {0}")]
    SpecTooLarge(#[from] crate::region::spec_limits::SpecTooLarge),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The outside world a node runs against.
pub struct NodeEnvironment {
    pub disk: Arc<dyn Disk>,
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn Clock>,
}

/// Node-wide status.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub incarnation: u64,
    pub uptime_seconds: f64,
    pub regions: usize,
    pub wal: CommitStatsSnapshot,
    pub transport: Option<TransportStats>,
    /// Connections on the API port.
    pub api: crate::api::ApiStats,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub control: ControlStatus,
    /// Local replicas of regions the control plane does not record (kept).
    pub orphaned_regions: Vec<String>,
}

/// The cluster as the control plane records it (`GET /v1/cluster`).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub control: ControlStatus,
    pub components: usize,
    pub regions: BTreeMap<String, RegionSpec>,
}

pub struct Node {
    config: NodeConfig,
    /// The free-disk reserve every region's imports check.
    disk_reserve: Arc<DiskReserve>,
    engine: Arc<PluginEngine>,
    context: DriverContext,
    commit: Arc<GroupCommit>,
    disk: Arc<dyn Disk>,
    regions: std::sync::RwLock<BTreeMap<String, RegionHandle>>,
    control: Arc<ControlPlane>,
    /// Serializes the reconciler's changes to local replicas.
    reconciling: tokio::sync::Mutex<()>,
    /// Swap steps under way on this node (region, epoch, step), so a step
    /// is not started twice.
    swap_work: std::sync::Mutex<BTreeSet<(String, u64, &'static str)>>,
    /// Regions this node holds writes for (a swap is sealing them).
    held: std::sync::Mutex<BTreeSet<String>>,
    /// Local replicas of regions the record does not know.
    orphans: std::sync::Mutex<BTreeSet<String>>,
    /// The spec version each local replica last journaled.
    spec_versions: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Target protocols compiled by a swap's prepare step, by region.
    #[allow(clippy::type_complexity)]
    prepared: std::sync::Mutex<
        BTreeMap<
            String,
            (
                u64,
                Option<crate::region::ProtocolRef>,
                crate::plugin::PluginSource,
            ),
        >,
    >,
    /// Seal reports sent to this node as swap coordinator.
    seal_reports: crate::swap::coordinator::SealReports,
    /// Peer messages for an epoch or replica this node has not reached yet.
    early: inbound::EarlyMessages,
    /// This node, for tasks it spawns.
    this: std::sync::OnceLock<std::sync::Weak<Node>>,
    transport: Option<Arc<Transport>>,
    components: std::sync::Mutex<BTreeMap<String, ComponentSummary>>,
    started: Instant,
    api_counters: Arc<crate::api::ApiCounters>,
}

impl Node {
    /// Opens (or creates) the node's data directory, replays the WAL and
    /// restarts every region recorded there.
    pub async fn open(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| NodeError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(config.data_dir.clone()));
        let (network, transport): (Arc<dyn Network>, _) = match config.peer_listen {
            Some(listen) => {
                let transport = Transport::start(
                    config.node_id,
                    config.security.as_ref().map(|s| s.tls.clone()),
                    listen,
                    config.transport.clone(),
                )
                .await
                .map_err(|e| {
                    NodeError::Storage(format!("binding the peer listener {listen}: {e}"))
                })?;
                (Arc::new(transport.clone()), Some(transport))
            }
            None => (Arc::new(NoPeers::default()), None),
        };
        let environment = NodeEnvironment {
            disk,
            network,
            clock: SystemClock::shared(),
        };
        Self::open_inner(config, environment, transport).await
    }

    /// Opens a node over an explicit disk, network and clock (tests). The
    /// compile cache still lives in `data_dir`; the control plane has this
    /// node as its only member.
    pub async fn open_with(
        config: NodeConfig,
        environment: NodeEnvironment,
    ) -> Result<Arc<Self>, NodeError> {
        Self::open_inner(config, environment, None).await
    }

    async fn open_inner(
        mut config: NodeConfig,
        environment: NodeEnvironment,
        transport: Option<Arc<Transport>>,
    ) -> Result<Arc<Self>, NodeError> {
        if config.node_id == 0 || config.node_id > 0xFFFF {
            return Err(NodeError::Invalid(format!(
                "node id {} is outside 1..=65535 (request ids embed it in 16 bits)",
                config.node_id
            )));
        }
        let NodeEnvironment {
            disk,
            network,
            clock,
        } = environment;
        let options = WalOptions {
            segment_bytes_target: config.wal_segment_bytes,
            frame_bytes_max: config.wal_frame_bytes_max,
        };
        let data_dir = config.data_dir.display().to_string();
        // A damaged WAL names its segment and offset and the repair command.
        let (wal, replay) = Wal::open(disk.clone(), "wal", options)
            .map_err(|e| NodeError::Storage(e.to_string().replace("<data dir>", &data_dir)))?;
        let data_dir_state = datadir::check(&*disk, config.node_id, replay.entries.is_empty())
            .map_err(|e| NodeError::Storage(format!("{data_dir}: {e}")))?;
        if replay.torn_tail_bytes > 0 {
            tracing::warn!(
                bytes = replay.torn_tail_bytes,
                "truncated a torn write at the WAL tail"
            );
        }
        let mut recovered = RecoveredNode::rebuild(&replay.entries)?;
        let incarnation = recovered.incarnation + 1;
        let shadow = RecoveredNode::rebuild(&replay.entries)?;
        let commit = Arc::new(GroupCommit::start_with_compactor(
            wal,
            Box::new(JournalCompactor::new(shadow)),
            CheckpointPolicy {
                min_wal_bytes: config.wal_checkpoint_min_bytes,
                wal_to_live_ratio: 4,
            },
        ));
        let boot = JournalRecord::encode_all(&[JournalRecord::NodeBoot { incarnation }]);
        let ticket = commit
            .submit(boot)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        commit
            .wait_durable(ticket)
            .map_err(|e| NodeError::Storage(e.to_string()))?;

        // The bootstrap address book, with this node's own addresses.
        let mut bootstrap: BTreeMap<NodeId, NodeRecord> =
            config.bootstrap.iter().cloned().collect();
        bootstrap.insert(
            config.node_id,
            NodeRecord {
                api: config.api_address.clone(),
                peer: config.peer_address.clone(),
            },
        );
        if transport.is_none() {
            // Without peers, this node is the whole control plane.
            config.control.voters = vec![config.node_id];
        } else if config.control.voters.is_empty() {
            config.control.voters = bootstrap.keys().copied().collect();
        }
        if let Some(transport) = &transport {
            for (id, address) in &bootstrap {
                if *id != config.node_id {
                    transport.set_peer(*id, &address.peer);
                }
            }
        }
        let control = ControlPlane::open(
            config.node_id,
            disk.clone(),
            transport.clone(),
            config.control.clone(),
            &bootstrap,
        )
        .await
        .map_err(|error| match error {
            ControlError::Storage(why) => NodeError::Storage(format!(
                "control plane WAL ({data_dir}/control): {}",
                why.replace("<data dir>", &data_dir)
            )),
            other => other.into(),
        })?;
        if data_dir_state == datadir::DataDirState::Unmarked {
            datadir::write_marker(&*disk, config.node_id)
                .map_err(|e| NodeError::Storage(format!("{data_dir}: {e}")))?;
        }

        // Every replica that ran before the restart gets an instance, even
        // if `regions_max` was lowered meanwhile: a restart never changes
        // which regions run.
        let recovered_here = recovered
            .regions
            .values()
            .filter(|region| {
                region
                    .spec
                    .as_ref()
                    .is_some_and(|spec| spec.hosted_on(config.node_id))
            })
            .count();
        let engine = Arc::new(PluginEngine::new(
            admission::engine_limits(&config, recovered_here),
            Some(config.data_dir.join("cache")),
        )?);
        let snapshots = Arc::new(SnapshotStore::new(disk.clone(), "snapshots"));
        let context = DriverContext {
            node_id: config.node_id,
            incarnation,
            commit: commit.clone(),
            snapshots,
            network,
            clock,
        };
        let disk_reserve = Arc::new(DiskReserve::new(
            config.data_dir.clone(),
            config.disk_reserve_bytes,
            config.free_space.clone(),
        ));
        let node = Arc::new(Node {
            disk_reserve,
            config,
            engine,
            context,
            commit,
            disk,
            regions: std::sync::RwLock::new(BTreeMap::new()),
            control,
            reconciling: tokio::sync::Mutex::new(()),
            swap_work: std::sync::Mutex::new(BTreeSet::new()),
            held: std::sync::Mutex::new(BTreeSet::new()),
            spec_versions: std::sync::Mutex::new(BTreeMap::new()),
            orphans: std::sync::Mutex::new(BTreeSet::new()),
            early: inbound::EarlyMessages::default(),
            seal_reports: crate::swap::coordinator::SealReports::default(),
            prepared: std::sync::Mutex::new(BTreeMap::new()),
            this: std::sync::OnceLock::new(),
            transport,
            components: std::sync::Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            api_counters: Arc::new(crate::api::ApiCounters::default()),
        });
        let _ = node.this.set(Arc::downgrade(&node));
        for (_, bytes) in builtin_components() {
            node.store_component(bytes)?;
        }
        node.load_published()?;

        let mut names: Vec<String> = recovered.regions.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(region) = recovered.regions.remove(&name) else {
                continue;
            };
            if region
                .spec
                .as_ref()
                .is_some_and(|spec| spec.hosted_on(node.config.node_id))
            {
                node.restart_region(region)?;
            }
        }
        if let Some(transport) = &node.transport {
            transport.set_inbound(Arc::new(inbound::NodeInbound {
                node: Arc::downgrade(&node),
                snapshots: std::sync::Mutex::new(SnapshotAssembler::default()),
            }));
        }
        if node.config.control.voters == [node.config.node_id] {
            // The only voter: the record is usable as soon as this returns.
            let announced = admin::announce(Arc::downgrade(&node), bootstrap);
            if tokio::time::timeout(node.config.control.request_timeout, announced)
                .await
                .is_err()
            {
                tracing::warn!("the control plane took too long to accept this node's address");
            }
        } else {
            tokio::spawn(admin::announce(Arc::downgrade(&node), bootstrap));
        }
        tokio::spawn(crate::control::reconcile::run(Arc::downgrade(&node)));
        tokio::spawn(crate::control::reconcile::renew_membership_targets(
            Arc::downgrade(&node),
        ));
        tracing::info!(
            node = node.config.node_id,
            incarnation,
            regions = node.read_regions().len(),
            "node started"
        );
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub(crate) fn read_regions(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RegionHandle>> {
        self.regions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn write_regions(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, RegionHandle>> {
        self.regions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Another node hosting a replica of `region`, with its API address:
    /// where to send a client that asked a node without one.
    pub fn region_host_elsewhere(&self, region: &str) -> Option<(NodeId, String)> {
        let spec = self.region_spec(region)?;
        self.other_host(&spec)
    }

    /// Like [`Node::region_host_elsewhere`], but a region this node's view
    /// of the control record does not hold yet (created a moment ago) is
    /// looked up again with a linearizable read, so a region that exists
    /// is never answered as unknown.
    pub async fn region_host_elsewhere_agreed(&self, region: &str) -> Option<(NodeId, String)> {
        if let Some(found) = self.region_host_elsewhere(region) {
            return Some(found);
        }
        let state = self.control.read().await.ok()?;
        let spec = &state.regions.get(region)?.spec;
        self.other_host(spec)
    }

    /// A node other than this one hosting `spec`, with its API address.
    fn other_host(&self, spec: &RegionSpec) -> Option<(NodeId, String)> {
        spec.voters
            .iter()
            .chain(spec.learners.iter())
            .copied()
            .filter(|id| *id != self.config.node_id)
            .find_map(|id| self.api_address_of(id).map(|api| (id, api)))
    }

    /// The HTTP address of `node`, if known.
    pub fn api_address_of(&self, node: NodeId) -> Option<String> {
        let from_record = self
            .control
            .local()
            .nodes
            .get(&node)
            .map(|address| address.api.clone());
        from_record
            .or_else(|| {
                self.config
                    .bootstrap
                    .iter()
                    .find(|(id, _)| *id == node)
                    .map(|(_, address)| address.api.clone())
            })
            .filter(|api| !api.is_empty())
    }

    /// Connection counters of the API port (kept by `api` and `wire`).
    pub fn api_counters(&self) -> &Arc<crate::api::ApiCounters> {
        &self.api_counters
    }

    pub fn transport(&self) -> Option<&Arc<Transport>> {
        self.transport.as_ref()
    }

    pub(crate) async fn journal(&self, records: &[JournalRecord]) -> Result<(), NodeError> {
        let ticket = self
            .context
            .commit
            .submit(JournalRecord::encode_all(records))
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let mut durable = self.commit.durable();
        durable
            .wait_for(|d| *d >= ticket)
            .await
            .map_err(|_| NodeError::Storage("the write-ahead log stopped".into()))?;
        Ok(())
    }

    /// The spec of a region as this node's copy of the record has it.
    pub fn region_spec(&self, name: &str) -> Option<RegionSpec> {
        self.control
            .local()
            .regions
            .get(name)
            .map(|record| record.spec.clone())
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    pub async fn region(&self, name: &str) -> Result<RegionHandle, NodeError> {
        self.read_regions()
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::UnknownRegion(name.to_string()))
    }

    pub async fn regions(&self) -> Vec<RegionHandle> {
        self.read_regions().values().cloned().collect()
    }

    pub async fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.config.node_id,
            incarnation: self.context.incarnation,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            regions: self.read_regions().len(),
            wal: self.commit.stats(),
            transport: self.transport.as_ref().map(|t| t.stats()),
            api: self.api_counters.stats(),
            nodes: self.control.local().nodes.clone(),
            control: self.control.status(),
            orphaned_regions: self
                .orphans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// The cluster as the control plane records it, read linearizably.
    pub async fn cluster(&self) -> Result<ClusterView, NodeError> {
        let state = self.control.read().await?;
        Ok(ClusterView {
            nodes: state.nodes.clone(),
            control: self.control.status(),
            components: state.components.len(),
            regions: state
                .regions
                .iter()
                .map(|(name, record)| (name.clone(), record.spec.clone()))
                .collect(),
        })
    }

    pub fn wal_stats(&self) -> CommitStatsSnapshot {
        self.commit.stats()
    }

    /// Stops every region driver, the control plane, and flushes the WALs.
    pub async fn shutdown(&self) {
        let regions: Vec<RegionHandle> = self.write_regions().values().cloned().collect();
        for region in regions {
            region.shutdown().await;
        }
        self.control.shutdown().await;
        self.commit.shutdown();
    }
}

/// Per-region random seed: distinct per node, region and run, so replays
/// under the simulator can fix it and real runs do not repeat it.
fn seed_for(node_id: NodeId, region: &str, incarnation: u64) -> u64 {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(node_id.to_le_bytes());
    hasher.update(region.as_bytes());
    hasher.update(incarnation.to_le_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}
