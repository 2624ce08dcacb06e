//! A Synod node: opens its storage, recovers its regions, runs the engine
//! and owns the region drivers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use synod_guest_sdk::{InitConfig, Membership, NodeId};
use tokio::sync::RwLock;

use crate::clock::{Clock, SystemClock};
use crate::engine::{LoadError, PluginEngine, SandboxLimits};
use crate::journal::{JournalError, JournalRecord, RecoveredNode, RecoveredRegion};
use crate::network::{Network, NoPeers};
use crate::plugin::PluginSource;
use crate::region::core::RegionCore;
use crate::region::driver::{DriverContext, RegionDriver, RegionHandle};
use crate::region::replica::{FailurePolicy, RegionReplica};
use crate::region::{InvalidRegionName, ProtocolRef, RegionName, RegionSpec};
use crate::state_machine::KvStateMachine;
use crate::storage::commit::{CommitStatsSnapshot, GroupCommit};
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
    /// How long a client request may wait for its outcome.
    pub request_timeout: Duration,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub wal_segment_bytes: u64,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            limits: SandboxLimits::default(),
            failure_policy: FailurePolicy::default(),
            request_timeout: Duration::from_secs(10),
            key_bytes_max: 4096,
            value_bytes_max: 1 << 20,
            wal_segment_bytes: 64 << 20,
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
}

/// Components built into this binary, published at every start.
pub fn builtin_components() -> Vec<(&'static str, &'static [u8])> {
    vec![("standalone", synod_plugin_artifacts::STANDALONE_WASM)]
}

/// Protocols linked into the binary that run without Wasm.
fn native_protocols() -> HashMap<&'static str, PluginSource> {
    HashMap::from([(
        "standalone",
        PluginSource::native::<synod_plugin_standalone::Standalone>(),
    )])
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
}

pub struct Node {
    config: NodeConfig,
    engine: Arc<PluginEngine>,
    context: DriverContext,
    disk: Arc<dyn Disk>,
    regions: RwLock<BTreeMap<String, RegionHandle>>,
    components: std::sync::Mutex<BTreeMap<String, ComponentSummary>>,
    started: Instant,
}

const COMPONENTS_DIR: &str = "components";

impl Node {
    /// Opens (or creates) the node's data directory, replays the WAL and
    /// restarts every region recorded there.
    pub async fn open(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| NodeError::Storage(format!("{}: {e}", config.data_dir.display())))?;
        let environment = NodeEnvironment {
            disk: Arc::new(FsDisk::new(config.data_dir.clone())),
            network: Arc::new(NoPeers::default()),
            clock: SystemClock::shared(),
        };
        Self::open_with(config, environment).await
    }

    /// Opens a node over an explicit disk, network and clock (tests, and
    /// later the simulator). The compile cache still lives in `data_dir`.
    pub async fn open_with(
        config: NodeConfig,
        environment: NodeEnvironment,
    ) -> Result<Arc<Self>, NodeError> {
        let NodeEnvironment {
            disk,
            network,
            clock,
        } = environment;
        let options = WalOptions {
            segment_bytes_target: config.wal_segment_bytes,
        };
        let (wal, replay) = Wal::open(disk.clone(), "wal", options)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        if replay.torn_tail_bytes > 0 {
            tracing::warn!(
                bytes = replay.torn_tail_bytes,
                "truncated a torn write at the WAL tail"
            );
        }
        let mut recovered = RecoveredNode::rebuild(&replay.entries)?;
        let incarnation = recovered.incarnation + 1;
        let commit = Arc::new(GroupCommit::start(wal));
        let boot = JournalRecord::encode_all(&[JournalRecord::NodeBoot { incarnation }]);
        let ticket = commit
            .submit(boot)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        commit
            .wait_durable(ticket)
            .map_err(|e| NodeError::Storage(e.to_string()))?;

        let engine = Arc::new(PluginEngine::new(
            config.limits.clone(),
            Some(config.data_dir.join("cache")),
        )?);
        let snapshots = Arc::new(SnapshotStore::new(disk.clone(), "snapshots"));
        let context = DriverContext {
            node_id: config.node_id,
            incarnation,
            commit,
            snapshots,
            network,
            clock,
        };
        let node = Arc::new(Node {
            config,
            engine,
            context,
            disk,
            regions: RwLock::new(BTreeMap::new()),
            components: std::sync::Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        });
        for (_, bytes) in builtin_components() {
            node.publish(bytes)?;
        }
        node.load_published()?;

        let mut names: Vec<String> = recovered.regions.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(region) = recovered.regions.remove(&name) else {
                continue;
            };
            node.restart_region(region).await?;
        }
        tracing::info!(
            node = node.config.node_id,
            incarnation,
            regions = node.regions.read().await.len(),
            "node started"
        );
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
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
                let component = self.engine.load(&bytes)?;
                Ok(PluginSource::Wasm {
                    engine: self.engine.clone(),
                    component,
                })
            }
        }
    }

    /// Creates a region replicated on this node only (multi-node regions
    /// come with the cluster transport).
    pub async fn create_region(
        &self,
        name: &str,
        protocol: &str,
        params: Vec<(String, String)>,
    ) -> Result<RegionHandle, NodeError> {
        let name = RegionName::new(name)?;
        if self.regions.read().await.contains_key(name.as_str()) {
            return Err(NodeError::RegionExists(name.to_string()));
        }
        let protocol = self.resolve_protocol(protocol)?;
        let spec = RegionSpec {
            name: name.to_string(),
            protocol,
            params,
            voters: vec![self.config.node_id],
            learners: Vec::new(),
            epoch: 1,
        };
        let source = self.plugin_source(&spec)?;
        let mut regions = self.regions.write().await;
        if regions.contains_key(name.as_str()) {
            return Err(NodeError::RegionExists(name.to_string()));
        }
        let record =
            JournalRecord::encode_all(&[JournalRecord::RegionCreated { spec: spec.clone() }]);
        let ticket = self
            .context
            .commit
            .submit(record)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let mut durable = self.context.commit.durable();
        durable
            .wait_for(|d| *d >= ticket)
            .await
            .map_err(|_| NodeError::Storage("the write-ahead log stopped".into()))?;
        let handle = self.spawn_driver(
            spec,
            source,
            RecoveredRegion::default(),
            KvStateMachine::default(),
            false,
        );
        regions.insert(name.to_string(), handle.clone());
        tracing::info!(region = %name, "region created");
        Ok(handle)
    }

    async fn restart_region(&self, region: RecoveredRegion) -> Result<(), NodeError> {
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
        self.regions.write().await.insert(name, handle);
        Ok(())
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
        let core = RegionCore::new(
            name,
            self.config.node_id,
            storage.log,
            storage.meta,
            state,
            self.context.clock.clone(),
            seed,
        );
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
        let replica = RegionReplica::new(
            source,
            core,
            init,
            self.config.failure_policy.clone(),
            self.context.clock.clone(),
        );
        RegionDriver::spawn(spec, replica, self.context.clone(), recovering)
    }

    pub async fn region(&self, name: &str) -> Result<RegionHandle, NodeError> {
        self.regions
            .read()
            .await
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::UnknownRegion(name.to_string()))
    }

    pub async fn regions(&self) -> Vec<RegionHandle> {
        self.regions.read().await.values().cloned().collect()
    }

    pub async fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.config.node_id,
            incarnation: self.context.incarnation,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            regions: self.regions.read().await.len(),
            wal: self.context.commit.stats(),
        }
    }

    pub fn wal_stats(&self) -> CommitStatsSnapshot {
        self.context.commit.stats()
    }

    /// Stops every region driver and flushes the WAL.
    pub async fn shutdown(&self) {
        let regions: Vec<RegionHandle> = self.regions.write().await.values().cloned().collect();
        for region in regions {
            region.shutdown().await;
        }
        self.context.commit.shutdown();
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
