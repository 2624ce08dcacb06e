//! A Synod node: opens its storage, recovers its regions, runs the engine
//! and owns the region drivers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, NodeAddress};
use crate::transport::{
    Frame, InboundHandler, SnapshotAssembler, Transport, TransportLimits, TransportStats,
};
use serde::Serialize;
use synod_guest_sdk::{InitConfig, Membership, NodeId};

use crate::clock::{Clock, SystemClock};
use crate::engine::{LoadError, PluginEngine, SandboxLimits};
use crate::journal::{
    JournalCompactor, JournalError, JournalRecord, RecoveredNode, RecoveredRegion,
};
use crate::network::{Network, NoPeers};
use crate::plugin::{Call, CallResult, PluginSource};
use crate::region::core::RegionCore;
use crate::region::cpu::CpuPolicy;
use crate::region::driver::{DriverContext, RegionDriver, RegionHandle};
use crate::region::quota::{DiskReserve, FreeSpace, QUOTA_PARAM_PREFIX, RegionLimits};
use crate::region::replica::{FailurePolicy, RegionReplica};
use crate::region::{InvalidRegionName, MembershipTarget, ProtocolRef, RegionName, RegionSpec};
use crate::state_machine::KvStateMachine;
use crate::storage::commit::{CheckpointPolicy, CommitStatsSnapshot, GroupCommit};
use crate::storage::datadir;
use crate::storage::disk::{Disk, FsDisk};
use crate::storage::snapshot::SnapshotStore;
use crate::storage::wal::{Wal, WalOptions};

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub limits: SandboxLimits,
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
    /// Shared by every node of the cluster; a peer without it is refused.
    pub secret: Vec<u8>,
    /// The initial member list (bootstrap): id → addresses.
    pub bootstrap: Vec<(NodeId, NodeAddress)>,
    /// How often the catalog is pushed to every peer.
    pub catalog_interval: Duration,
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
            secret: Vec::new(),
            bootstrap: Vec::new(),
            catalog_interval: Duration::from_millis(500),
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
    SpecTooLarge(#[from] crate::catalog::SpecTooLarge),
}

/// Components built into this binary, published at every start.
pub fn builtin_components() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("standalone", synod_plugin_artifacts::STANDALONE_WASM),
        ("raft", synod_plugin_artifacts::RAFT_WASM),
    ]
}

/// A protocol linked into the binary, by name.
pub fn native_protocol(name: &str) -> Option<PluginSource> {
    native_protocols().remove(name)
}

/// Protocols linked into the binary that run without Wasm.
fn native_protocols() -> HashMap<&'static str, PluginSource> {
    HashMap::from([
        (
            "standalone",
            PluginSource::native::<synod_plugin_standalone::Standalone>(),
        ),
        ("raft", PluginSource::native::<synod_plugin_raft::Raft>()),
    ])
}

/// The outside world a node runs against.
pub struct NodeEnvironment {
    pub disk: Arc<dyn Disk>,
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn Clock>,
}

/// A published component as listed by the API.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentSummary {
    pub digest: String,
    pub name: String,
    pub version: String,
    pub consistency: &'static str,
    pub capabilities: Vec<&'static str>,
    pub size_bytes: usize,
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
    pub nodes: BTreeMap<NodeId, NodeAddress>,
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
    catalog: std::sync::Mutex<Catalog>,
    /// Serializes catalog changes that journal and spawn regions.
    catalog_changes: tokio::sync::Mutex<()>,
    transport: Option<Arc<Transport>>,
    components: std::sync::Mutex<BTreeMap<String, ComponentSummary>>,
    started: Instant,
    api_counters: Arc<crate::api::ApiCounters>,
}

const COMPONENTS_DIR: &str = "components";

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
                    &config.secret,
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

    /// Opens a node over an explicit disk, network and clock (tests, and
    /// later the simulator). The compile cache still lives in `data_dir`.
    pub async fn open_with(
        config: NodeConfig,
        environment: NodeEnvironment,
    ) -> Result<Arc<Self>, NodeError> {
        Self::open_inner(config, environment, None).await
    }

    async fn open_inner(
        config: NodeConfig,
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
        if data_dir_state == datadir::DataDirState::Unmarked {
            datadir::write_marker(&*disk, config.node_id)
                .map_err(|e| NodeError::Storage(format!("{data_dir}: {e}")))?;
        }

        let engine = Arc::new(PluginEngine::new(
            config.limits.clone(),
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
        let mut catalog = Catalog {
            nodes: recovered.nodes.clone(),
            ..Catalog::default()
        };
        for (id, address) in &config.bootstrap {
            catalog.nodes.entry(*id).or_insert_with(|| address.clone());
        }
        if config.peer_listen.is_some() {
            let me = NodeAddress {
                api: config.api_address.clone(),
                peer: config.peer_address.clone(),
                version: 0,
            };
            let stale = catalog
                .nodes
                .get(&config.node_id)
                .is_none_or(|known| known.api != me.api || known.peer != me.peer);
            if stale {
                let version = catalog
                    .nodes
                    .get(&config.node_id)
                    .map_or(0, |k| k.version + 1);
                catalog
                    .nodes
                    .insert(config.node_id, NodeAddress { version, ..me });
            }
        }
        for region in recovered.regions.values() {
            if let Some(spec) = &region.spec {
                catalog.absorb_region(spec);
            }
        }
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
            catalog: std::sync::Mutex::new(catalog),
            catalog_changes: tokio::sync::Mutex::new(()),
            transport,
            components: std::sync::Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            api_counters: Arc::new(crate::api::ApiCounters::default()),
        });
        for (_, bytes) in builtin_components() {
            node.publish(bytes)?;
        }
        node.load_published()?;

        node.journal_catalog_nodes().await?;
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
            for (id, address) in node.lock_catalog().nodes.clone() {
                transport.set_peer(id, &address.peer);
            }
            transport.set_inbound(Arc::new(NodeInbound {
                node: Arc::downgrade(&node),
                snapshots: std::sync::Mutex::new(SnapshotAssembler::default()),
            }));
            tokio::spawn(push_catalog_periodically(
                Arc::downgrade(&node),
                node.config.catalog_interval,
            ));
            tokio::spawn(reconcile_membership_periodically(Arc::downgrade(&node)));
        }
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

    fn read_regions(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RegionHandle>> {
        self.regions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_regions(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, RegionHandle>> {
        self.regions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cluster metadata as this node knows it.
    pub fn catalog(&self) -> Catalog {
        self.lock_catalog().clone()
    }

    /// The HTTP address of `node`, if known.
    /// Another node hosting a replica of `region`, with its API address:
    /// where to send a client that asked a node without one.
    pub fn region_host_elsewhere(&self, region: &str) -> Option<(NodeId, String)> {
        let spec = self.region_spec(region)?;
        spec.voters
            .iter()
            .chain(spec.learners.iter())
            .copied()
            .filter(|id| *id != self.config.node_id)
            .find_map(|id| self.api_address_of(id).map(|api| (id, api)))
    }

    pub fn api_address_of(&self, node: NodeId) -> Option<String> {
        self.lock_catalog()
            .nodes
            .get(&node)
            .map(|address| address.api.clone())
            .filter(|api| !api.is_empty())
    }

    /// Connection counters of the API port (kept by `api` and `wire`).
    pub fn api_counters(&self) -> &Arc<crate::api::ApiCounters> {
        &self.api_counters
    }

    pub fn transport(&self) -> Option<&Arc<Transport>> {
        self.transport.as_ref()
    }

    async fn journal(&self, records: &[JournalRecord]) -> Result<(), NodeError> {
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

    /// Records the catalog's node addresses (bootstrap and self) durably.
    async fn journal_catalog_nodes(&self) -> Result<(), NodeError> {
        let records: Vec<JournalRecord> = self
            .lock_catalog()
            .nodes
            .iter()
            .map(|(id, address)| JournalRecord::NodeAddress {
                id: *id,
                address: address.clone(),
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.journal(&records).await
    }

    /// Sends this node's catalog to every peer now.
    pub fn push_catalog(&self) {
        let Some(transport) = &self.transport else {
            return;
        };
        let catalog = self.catalog();
        for id in catalog.nodes.keys() {
            if *id != self.config.node_id {
                transport.send_frame(*id, Frame::Catalog(catalog.clone()));
            }
        }
    }

    /// Merges a peer's catalog: new node addresses are dialled, new or
    /// updated regions are journaled and, if hosted here, started.
    pub async fn absorb_catalog(&self, other: Catalog) -> Result<(), NodeError> {
        let _serial = self.catalog_changes.lock().await;
        let changes =
            {
                let mut catalog = self.lock_catalog();
                let mut incoming = other;
                // Nobody else decides this node's own address.
                incoming.nodes.remove(&self.config.node_id);
                // A spec over the size limits is refused, whoever sent it.
                incoming.regions.retain(|name, spec| match spec.check_size() {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(region = %name, %error, "refused a region spec from a peer");
                    false
                }
            });
                catalog.merge(&incoming)
            };
        if changes.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for (id, address) in &changes.nodes {
            if let Some(transport) = &self.transport {
                transport.set_peer(*id, &address.peer);
            }
            records.push(JournalRecord::NodeAddress {
                id: *id,
                address: address.clone(),
            });
        }
        let mut to_start = Vec::new();
        for spec in &changes.regions {
            let running = self.read_regions().contains_key(&spec.name);
            records.push(if running {
                JournalRecord::RegionUpdated { spec: spec.clone() }
            } else {
                JournalRecord::RegionCreated { spec: spec.clone() }
            });
            if !running && spec.hosted_on(self.config.node_id) {
                to_start.push(spec.clone());
            }
        }
        self.journal(&records).await?;
        for spec in to_start {
            let source = match self.plugin_source(&spec) {
                Ok(source) => source,
                Err(error) => {
                    tracing::error!(region = %spec.name, %error, "cannot start a replica learned from a peer");
                    continue;
                }
            };
            let name = spec.name.clone();
            self.start_new_replica(spec, source);
            tracing::info!(region = %name, "started a replica learned from a peer");
        }
        Ok(())
    }

    /// Adds (or re-addresses) a node of the cluster.
    pub async fn add_node(&self, id: NodeId, api: String, peer: String) -> Result<(), NodeError> {
        if id == 0 || id > 0xFFFF {
            return Err(NodeError::Invalid(format!(
                "node id {id} is outside 1..=65535"
            )));
        }
        let mut update = Catalog::default();
        let version = self
            .lock_catalog()
            .nodes
            .get(&id)
            .map_or(0, |k| k.version + 1);
        update.nodes.insert(id, NodeAddress { api, peer, version });
        if id == self.config.node_id {
            return Err(NodeError::Invalid(
                "a node cannot re-address itself; restart it with the new address".into(),
            ));
        }
        self.absorb_catalog(update).await?;
        self.push_catalog();
        Ok(())
    }

    /// Publishes a new version of a region's spec (e.g. more replicas).
    pub async fn update_region_spec(&self, spec: RegionSpec) -> Result<(), NodeError> {
        let mut update = Catalog::default();
        update.regions.insert(spec.name.clone(), spec);
        self.absorb_catalog(update).await?;
        self.push_catalog();
        Ok(())
    }

    /// The spec of a region as the catalog knows it.
    pub fn region_spec(&self, name: &str) -> Option<RegionSpec> {
        self.lock_catalog().regions.get(name).cloned()
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    fn lock_components(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ComponentSummary>> {
        self.components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates a component and stores it by digest.
    pub fn publish(&self, bytes: &[u8]) -> Result<ComponentSummary, NodeError> {
        let loaded = self.engine.load(bytes)?;
        let path = format!("{COMPONENTS_DIR}/{}.wasm", loaded.digest);
        if self.disk.read(&path).is_err() {
            self.disk
                .write_atomic(&path, bytes)
                .map_err(|e| NodeError::Storage(format!("{path}: {e}")))?;
        }
        let summary = ComponentSummary {
            digest: loaded.digest.clone(),
            name: loaded.info.name.clone(),
            version: loaded.info.version.clone(),
            consistency: loaded.info.consistency.as_str(),
            capabilities: loaded.info.capabilities.names(),
            size_bytes: loaded.size_bytes,
        };
        self.lock_components()
            .insert(loaded.digest.clone(), summary.clone());
        Ok(summary)
    }

    /// Loads every component published earlier (so names resolve).
    fn load_published(&self) -> Result<(), NodeError> {
        let files = self
            .disk
            .list(COMPONENTS_DIR)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        for file in files.iter().filter(|f| f.ends_with(".wasm")) {
            let path = format!("{COMPONENTS_DIR}/{file}");
            let bytes = self
                .disk
                .read(&path)
                .map_err(|e| NodeError::Storage(format!("{path}: {e}")))?;
            let digest = PluginEngine::digest(&bytes);
            if file.strip_suffix(".wasm") != Some(digest.as_str()) {
                tracing::warn!(%path, sha256 = %digest, "skipping a stored component whose bytes do not match its name (damaged)");
                continue;
            }
            if let Err(error) = self.publish(&bytes) {
                tracing::warn!(%path, %error, "skipping a stored component that no longer loads");
            }
        }
        Ok(())
    }

    pub fn components(&self) -> Vec<ComponentSummary> {
        self.lock_components().values().cloned().collect()
    }

    /// Turns a protocol name from a request into a durable reference.
    pub fn resolve_protocol(&self, protocol: &str) -> Result<ProtocolRef, NodeError> {
        if let Some(name) = protocol.strip_prefix("native:") {
            return if native_protocols().contains_key(name) {
                Ok(ProtocolRef::Native { name: name.into() })
            } else {
                Err(NodeError::UnknownProtocol(protocol.into()))
            };
        }
        let components = self.lock_components();
        if let Some(digest) = protocol.strip_prefix("sha256:") {
            return if components.contains_key(digest) {
                Ok(ProtocolRef::Component {
                    digest: digest.into(),
                })
            } else {
                Err(NodeError::UnknownProtocol(protocol.into()))
            };
        }
        // By name: prefer the built-in, else any published one.
        let builtin = builtin_components()
            .into_iter()
            .find(|(name, _)| *name == protocol)
            .map(|(_, bytes)| PluginEngine::digest(bytes));
        let digest = builtin.or_else(|| {
            components
                .values()
                .find(|c| c.name == protocol)
                .map(|c| c.digest.clone())
        });
        digest
            .map(|digest| ProtocolRef::Component { digest })
            .ok_or_else(|| NodeError::UnknownProtocol(protocol.into()))
    }

    fn plugin_source(&self, spec: &RegionSpec) -> Result<PluginSource, NodeError> {
        match &spec.protocol {
            ProtocolRef::Native { name } => native_protocols()
                .remove(name.as_str())
                .ok_or_else(|| NodeError::UnknownProtocol(format!("native:{name}"))),
            ProtocolRef::Component { digest } => {
                let path = format!("{COMPONENTS_DIR}/{digest}.wasm");
                let bytes = self
                    .disk
                    .read(&path)
                    .map_err(|_| NodeError::MissingComponent {
                        region: spec.name.clone(),
                        digest: digest.clone(),
                        path: path.clone(),
                    })?;
                // Content-addressed: bytes that do not hash to their name
                // are damaged, and must not run in place of the original.
                let found = PluginEngine::digest(&bytes);
                if found != *digest {
                    return Err(NodeError::Storage(format!(
                        "component file {path} of region {} is damaged: its sha256 is {found}; \
                         publish the original component again",
                        spec.name
                    )));
                }
                let component = self.engine.load(&bytes)?;
                Ok(PluginSource::Wasm {
                    engine: self.engine.clone(),
                    component,
                })
            }
        }
    }

    /// Creates a region replicated on `replicas` (default: every node this
    /// node knows, or just itself without peers). Peers learn it from the
    /// catalog and start their replicas.
    pub async fn create_region(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
    ) -> Result<RegionHandle, NodeError> {
        self.create_region_on(name, protocol, params, None).await
    }

    pub async fn create_region_on(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
        replicas: Option<Vec<NodeId>>,
    ) -> Result<RegionHandle, NodeError> {
        let name = RegionName::new(name)?;
        self.config
            .region_limits
            .with_overrides(&params)
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        if self.lock_catalog().regions.contains_key(name.as_str()) {
            return Err(NodeError::RegionExists(name.to_string()));
        }
        let protocol = self.resolve_protocol(protocol)?;
        let known: Vec<NodeId> = {
            let catalog = self.lock_catalog();
            let mut nodes: Vec<NodeId> = catalog.nodes.keys().copied().collect();
            if !nodes.contains(&self.config.node_id) {
                nodes.push(self.config.node_id);
            }
            nodes
        };
        let replicates = match &protocol {
            ProtocolRef::Native { name } => {
                native_protocol(name).is_some_and(|s| s.info().capabilities.replication)
            }
            ProtocolRef::Component { digest } => self
                .lock_components()
                .get(digest)
                .is_some_and(|c| c.capabilities.contains(&"replication")),
        };
        // A single-copy protocol gets one replica, here, unless told otherwise.
        let default = if replicates {
            known.clone()
        } else {
            vec![self.config.node_id]
        };
        let mut voters = replicas.unwrap_or(default);
        voters.sort_unstable();
        voters.dedup();
        if !replicates && voters.len() > 1 {
            return Err(NodeError::Invalid(
                "this protocol keeps a single copy (no replication capability): give it exactly one replica".into(),
            ));
        }
        if voters.is_empty() {
            return Err(NodeError::Invalid(
                "a region needs at least one replica".into(),
            ));
        }
        if let Some(unknown) = voters.iter().find(|id| !known.contains(id)) {
            return Err(NodeError::Invalid(format!(
                "replica {unknown} is not a known node"
            )));
        }
        if !voters.contains(&self.config.node_id) {
            return Err(NodeError::Invalid(
                "create the region on one of its replicas (this node is not among them)".into(),
            ));
        }
        let spec = RegionSpec {
            name: name.to_string(),
            protocol,
            params,
            voters,
            learners: Vec::new(),
            epoch: 1,
            membership_target: None,
            version: 1,
        };
        spec.check_size()?;
        let source = self.plugin_source(&spec)?;
        let _serial = self.catalog_changes.lock().await;
        if !self.lock_catalog().absorb_region(&spec)
            || self.read_regions().contains_key(name.as_str())
        {
            return Err(NodeError::RegionExists(name.to_string()));
        }
        self.journal(&[JournalRecord::RegionCreated { spec: spec.clone() }])
            .await?;
        let handle = self.start_new_replica(spec, source);
        drop(_serial);
        self.push_catalog();
        tracing::info!(region = %name, "region created");
        Ok(handle)
    }

    fn restart_region(&self, region: RecoveredRegion) -> Result<(), NodeError> {
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
        let handle = self.spawn_driver(spec, source, region, state, true);
        self.write_regions().insert(name, handle);
        Ok(())
    }

    /// Starts a brand-new replica (empty storage and state) and registers it.
    fn start_new_replica(&self, spec: RegionSpec, source: PluginSource) -> RegionHandle {
        let name = spec.name.clone();
        let handle = self.spawn_driver(
            spec,
            source,
            RecoveredRegion::default(),
            KvStateMachine::default(),
            false,
        );
        self.write_regions().insert(name, handle.clone());
        handle
    }

    fn spawn_driver(
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
        let init = InitConfig {
            self_id: self.config.node_id,
            membership: Membership {
                voters: spec.voters.clone(),
                learners: spec.learners.clone(),
            },
            params: spec.params.clone(),
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
        RegionDriver::spawn(
            spec,
            replica,
            self.context.clone(),
            self.commit.durable(),
            recovering,
        )
    }

    /// A region's limits: the node's, with the spec's `quota.*` parameters.
    /// A spec learned from a peer with values this node refuses keeps the
    /// node's limits (and says so).
    fn region_limits(&self, spec: &RegionSpec) -> RegionLimits {
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
            nodes: self.lock_catalog().nodes.clone(),
        }
    }

    pub fn wal_stats(&self) -> CommitStatsSnapshot {
        self.commit.stats()
    }

    /// Stops every region driver and flushes the WAL.
    pub async fn shutdown(&self) {
        let regions: Vec<RegionHandle> = self.write_regions().values().cloned().collect();
        for region in regions {
            region.shutdown().await;
        }
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

/// Routes authenticated frames from peers into the node, reassembling
/// chunked snapshots on the way.
struct NodeInbound {
    node: std::sync::Weak<Node>,
    snapshots: std::sync::Mutex<SnapshotAssembler>,
}

impl InboundHandler for NodeInbound {
    fn on_frame(&self, from: NodeId, frame: Frame) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        match frame {
            Frame::Messages {
                region,
                epoch,
                data,
                ends,
            } => {
                let Some(handle) = node.read_regions().get(&region).cloned() else {
                    tracing::debug!(%region, from, "messages for a region not hosted here");
                    return;
                };
                if handle.spec().epoch != epoch {
                    tracing::debug!(%region, from, epoch, "messages from another epoch dropped");
                    return;
                }
                let payloads = synod_guest_sdk::Batch {
                    data: data.into_vec(),
                    ends,
                };
                if !payloads.is_well_formed() {
                    tracing::warn!(%region, from, "malformed message batch dropped");
                    return;
                }
                let bytes = payloads.data.len() as u64;
                if let Err(error) = handle.deliver_messages(from, epoch, payloads) {
                    tracing::debug!(%region, from, %error, "inbound messages dropped");
                    if let Some(transport) = node.transport() {
                        transport.count_inbound_dropped(&region, bytes);
                    }
                }
            }
            Frame::SnapshotChunk(chunk) => {
                let arrived = self
                    .snapshots
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .accept(from, chunk);
                let snapshot = match arrived {
                    Ok(Some(snapshot)) => snapshot,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(from, %error, "snapshot transfer abandoned");
                        return;
                    }
                };
                let Some(handle) = node.read_regions().get(&snapshot.region).cloned() else {
                    return;
                };
                if handle.spec().epoch == snapshot.epoch {
                    let _ = handle.offer_snapshot(
                        from,
                        snapshot.epoch,
                        snapshot.metadata,
                        snapshot.image,
                    );
                }
            }
            Frame::Catalog(catalog) => {
                tokio::spawn(async move {
                    if let Err(error) = node.absorb_catalog(catalog).await {
                        tracing::warn!(from, %error, "could not merge a peer's catalog");
                    }
                });
            }
            Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Proof { .. } => {}
        }
    }
}

/// How often a node checks that the regions it leads are moving to the
/// membership their spec asks for.
const MEMBERSHIP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Asks each local replica that leads a region for the spec's membership
/// target, once per term it leads in: the leader that accepted the target
/// may have failed before finishing it. Plugins treat a repeated target as
/// a no-op.
async fn reconcile_membership_periodically(node: std::sync::Weak<Node>) {
    let mut asked: HashMap<String, (u64, MembershipTarget)> = HashMap::new();
    loop {
        tokio::time::sleep(MEMBERSHIP_CHECK_INTERVAL).await;
        let Some(node) = node.upgrade() else { return };
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
}

/// Anti-entropy: pushes the catalog to every peer at a fixed interval.
async fn push_catalog_periodically(node: std::sync::Weak<Node>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(node) = node.upgrade() else { return };
        node.push_catalog();
    }
}
