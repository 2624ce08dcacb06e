//! `synod serve --config <file>`: the node's TOML configuration.
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/synod/n1"
//! api = "127.0.0.1:7071"        # HTTP API
//! peer = "127.0.0.1:7171"       # node-to-node transport
//!
//! [security]                    # TLS on both ports and bearer tokens
//! ca = "/etc/synod/ca.pem"      # CA bundle: peers' certificates chain to it
//! cert = "/etc/synod/node-1.pem"  # names this node: node-1.synod
//! key = "/etc/synod/node-1.key"
//! tokens = "/etc/synod/tokens.toml"  # hashed tokens and their roles
//!
//! # The initial cluster (bootstrap); include this node.
//! [[nodes]]
//! id = 1
//! api = "127.0.0.1:7071"
//! peer = "127.0.0.1:7171"
//!
//! [limits]                      # optional
//! fuel_per_call = 2000000000
//! deadline_per_call_ms = 2000
//! memory_bytes_max = 268435456
//! instances_max = 64
//! regions_max = 64                     # region replicas admitted (default instances_max)
//! hibernate_after_ms = 30000            # idle replicas drop their instance (default: never)
//! region_log_bytes_max = 1073741824     # per region (quota.log-bytes)
//! region_kv_bytes_max = 67108864        # per region (quota.kv-bytes)
//! region_kv_keys_max = 65536            # per region (quota.kv-keys)
//! region_staged_bytes_max = 67108864    # per region and WAL entry (quota.staged-bytes)
//! region_timers_max = 4096              # per region (quota.timers)
//! disk_reserve_bytes = 268435456        # node-wide free-disk reserve
//!
//! [fairness]                    # optional: CPU fairness between regions
//! enabled = true
//! cpu_share_percent = 50        # sustained share of one core per region
//! burst_ms = 100                # CPU a region may use beyond its share
//! heavy_call_ms = 20            # one call above this is heavy at once
//! cooldown_ms = 5000            # light this long to run inline again
//!
//! [transport]                   # optional; peer port
//! region_queue_bytes_max = 8388608
//! link_queue_bytes_max = 67108864
//! handshakes_max = 64
//! handshake_timeout_ms = 5000
//! write_timeout_ms = 10000
//!
//! [control]                     # optional; the replicated control plane
//! voters = [1, 2, 3]            # who votes (default: every [[nodes]] entry)
//! heartbeat_ms = 100
//! election_timeout_min_ms = 500
//! election_timeout_max_ms = 1000
//!
//! [swap]                        # optional; live protocol swap
//! hold_requests_max = 10000     # requests a sealing region queues
//!
//! [connections]                 # optional; API port (HTTP and wire)
//! connections_max = 1024
//! http_header_timeout_ms = 20000
//! wire_frame_timeout_ms = 10000
//! wire_idle_timeout_ms = 300000
//! wire_in_flight_bytes_max = 16777216
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use synod_guest_sdk::NodeId;

use crate::control::record::NodeRecord;
use crate::node::NodeConfig;
use crate::region::quota::RegionLimits;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub peer: SocketAddr,
    /// TLS and tokens (`synod cluster init` writes them). Without it the
    /// node runs in the clear without authentication, which is refused
    /// unless both addresses are loopback ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityEntry>,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub limits: LimitsEntry,
    #[serde(default)]
    pub fairness: FairnessEntry,
    /// Client request timeout in milliseconds.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Rewrite the WAL as a checkpoint past this size (and 4x live state).
    #[serde(default)]
    pub wal_checkpoint_min_bytes: Option<u64>,
    /// Byte budgets and limits of the peer transport.
    #[serde(default)]
    pub transport: TransportEntry,
    /// Caps and timeouts of the API port.
    #[serde(default)]
    pub connections: ConnectionsEntry,
    /// Who votes in the control plane, and its timings.
    #[serde(default)]
    pub control: ControlEntry,
    /// Live swap limits.
    #[serde(default)]
    pub swap: SwapEntry,
}

/// `[security]`: file paths of the node's TLS material and tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEntry {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tokens: PathBuf,
}

/// `[control]`: see [`crate::control::ControlOptions`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlEntry {
    pub voters: Option<Vec<NodeId>>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
}

/// `[swap]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapEntry {
    pub hold_requests_max: Option<usize>,
}

/// `[transport]`: see [`crate::transport::TransportLimits`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportEntry {
    pub region_queue_bytes_max: Option<usize>,
    pub link_queue_bytes_max: Option<usize>,
    pub handshakes_max: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
}

/// `[connections]`: see [`crate::api::ConnectionLimits`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsEntry {
    pub connections_max: Option<usize>,
    pub http_header_timeout_ms: Option<u64>,
    pub wire_frame_timeout_ms: Option<u64>,
    pub wire_idle_timeout_ms: Option<u64>,
    pub wire_in_flight_bytes_max: Option<usize>,
}

/// `[fairness]`: when a region's plugin calls run at idle priority
/// (`region::cpu`). Absent keys keep the defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairnessEntry {
    pub enabled: Option<bool>,
    pub cpu_share_percent: Option<u32>,
    pub burst_ms: Option<u64>,
    pub heavy_call_ms: Option<u64>,
    pub cooldown_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: NodeId,
    pub api: String,
    pub peer: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsEntry {
    pub fuel_per_call: Option<u64>,
    pub deadline_per_call_ms: Option<u64>,
    pub memory_bytes_max: Option<usize>,
    pub instances_max: Option<u32>,
    pub regions_max: Option<u32>,
    pub hibernate_after_ms: Option<u64>,
    pub region_log_bytes_max: Option<u64>,
    pub region_kv_bytes_max: Option<u64>,
    pub region_kv_keys_max: Option<u64>,
    pub region_staged_bytes_max: Option<u64>,
    pub region_timers_max: Option<u64>,
    pub disk_reserve_bytes: Option<u64>,
}

impl LimitsEntry {
    /// The node's default region limits this section describes.
    fn region_limits(&self) -> RegionLimits {
        let mut limits = RegionLimits::default();
        let pairs = [
            (&mut limits.log_bytes, self.region_log_bytes_max),
            (&mut limits.kv_bytes, self.region_kv_bytes_max),
            (&mut limits.kv_keys, self.region_kv_keys_max),
            (&mut limits.staged_bytes, self.region_staged_bytes_max),
            (&mut limits.timers, self.region_timers_max),
        ];
        for (slot, value) in pairs {
            if let Some(value) = value {
                *slot = value;
            }
        }
        limits
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: ConfigFile = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_string(),
            message: error.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        if self.node_id == 0 || self.node_id > 0xFFFF {
            return Err(invalid(format!(
                "node_id {} must be in 1..=65535",
                self.node_id
            )));
        }
        if self.security.is_none() && !crate::security::all_loopback([&self.api, &self.peer]) {
            return Err(invalid(format!(
                "api {} / peer {} are not loopback addresses: a [security] section (TLS and tokens; `synod cluster init` writes them) is required",
                self.api, self.peer
            )));
        }
        self.limits
            .region_limits()
            .validate(|name| format!("[limits] region_{}_max", name.replace('-', "_")))
            .map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for node in &self.nodes {
            if node.id == 0 || node.id > 0xFFFF {
                return Err(invalid(format!(
                    "nodes: id {} must be in 1..=65535",
                    node.id
                )));
            }
            if !seen.insert(node.id) {
                return Err(invalid(format!("nodes: id {} appears twice", node.id)));
            }
        }
        if let Some(voters) = &self.control.voters {
            if voters.is_empty() {
                return Err(invalid("[control] voters must not be empty".into()));
            }
            if let Some(unknown) = voters.iter().find(|id| !seen.contains(*id)) {
                return Err(invalid(format!(
                    "[control] voters: node {unknown} is not among [[nodes]]"
                )));
            }
        }
        let (min, max) = (
            self.control.election_timeout_min_ms.unwrap_or(500),
            self.control.election_timeout_max_ms.unwrap_or(1000),
        );
        let heartbeat = self.control.heartbeat_ms.unwrap_or(100);
        if heartbeat == 0 || min <= heartbeat || max <= min {
            return Err(invalid(format!(
                "[control] needs 0 < heartbeat_ms ({heartbeat}) < election_timeout_min_ms ({min}) < election_timeout_max_ms ({max})"
            )));
        }
        if self.swap.hold_requests_max == Some(0) {
            return Err(invalid(
                "[swap] hold_requests_max must be at least 1".into(),
            ));
        }
        let chunk = crate::transport::SNAPSHOT_CHUNK_BYTES;
        if let Some(bytes) = self.transport.region_queue_bytes_max
            && bytes < chunk + (64 << 10)
        {
            return Err(invalid(format!(
                "transport.region_queue_bytes_max {bytes} must be at least {} (one snapshot chunk and room beside it)",
                chunk + (64 << 10)
            )));
        }
        let positive = [
            ("transport.handshakes_max", self.transport.handshakes_max),
            (
                "connections.connections_max",
                self.connections.connections_max,
            ),
            (
                "connections.wire_in_flight_bytes_max",
                self.connections.wire_in_flight_bytes_max,
            ),
            (
                "transport.link_queue_bytes_max",
                self.transport.link_queue_bytes_max,
            ),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                return Err(invalid(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }

    /// The node configuration this file describes.
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(self.node_id, self.data_dir.clone());
        config.api_address = self.api.to_string();
        config.peer_listen = Some(self.peer);
        config.peer_address = self.peer.to_string();
        config.bootstrap = self
            .nodes
            .iter()
            .map(|node| {
                (
                    node.id,
                    NodeRecord {
                        api: node.api.clone(),
                        peer: node.peer.clone(),
                    },
                )
            })
            .collect();
        let limits = &self.limits;
        if let Some(fuel) = limits.fuel_per_call {
            config.limits.fuel_per_call = fuel;
        }
        if let Some(ms) = limits.deadline_per_call_ms {
            config.limits.deadline_per_call = Duration::from_millis(ms);
        }
        if let Some(bytes) = limits.memory_bytes_max {
            config.limits.memory_bytes_max = bytes;
        }
        if let Some(instances) = limits.instances_max {
            config.limits.instances_max = instances;
        }
        config.regions_max = limits.regions_max;
        config.hibernate_after = limits.hibernate_after_ms.map(Duration::from_millis);
        let fairness = &self.fairness;
        if let Some(enabled) = fairness.enabled {
            config.cpu_policy.enabled = enabled;
        }
        if let Some(percent) = fairness.cpu_share_percent {
            config.cpu_policy.share = f64::from(percent) / 100.0;
        }
        if let Some(ms) = fairness.burst_ms {
            config.cpu_policy.burst = Duration::from_millis(ms);
        }
        if let Some(ms) = fairness.heavy_call_ms {
            config.cpu_policy.heavy_call = Duration::from_millis(ms);
        }
        if let Some(ms) = fairness.cooldown_ms {
            config.cpu_policy.cooldown = Duration::from_millis(ms);
        }
        config.region_limits = limits.region_limits();
        if let Some(bytes) = limits.disk_reserve_bytes {
            config.disk_reserve_bytes = bytes;
        }
        if let Some(bytes) = self.wal_checkpoint_min_bytes {
            config.wal_checkpoint_min_bytes = bytes;
        }
        if let Some(ms) = self.request_timeout_ms {
            config.request_timeout = Duration::from_millis(ms);
        }
        let transport = &self.transport;
        let limits = &mut config.transport;
        if let Some(bytes) = transport.region_queue_bytes_max {
            limits.region_queue_bytes_max = bytes;
        }
        if let Some(bytes) = transport.link_queue_bytes_max {
            limits.link_queue_bytes_max = bytes;
        }
        if let Some(count) = transport.handshakes_max {
            limits.handshakes_max = count;
        }
        if let Some(ms) = transport.handshake_timeout_ms {
            limits.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = transport.write_timeout_ms {
            limits.write_timeout = Duration::from_millis(ms);
        }
        let connections = &self.connections;
        let limits = &mut config.connections;
        if let Some(count) = connections.connections_max {
            limits.connections_max = count;
        }
        if let Some(ms) = connections.http_header_timeout_ms {
            limits.http_header_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = connections.wire_frame_timeout_ms {
            limits.wire_frame_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = connections.wire_idle_timeout_ms {
            limits.wire_idle_timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = connections.wire_in_flight_bytes_max {
            limits.wire_in_flight_bytes_max = bytes;
        }
        let control = &self.control;
        if let Some(voters) = &control.voters {
            config.control.voters = voters.clone();
        }
        if let Some(ms) = control.heartbeat_ms {
            config.control.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = control.election_timeout_min_ms {
            config.control.election_min = Duration::from_millis(ms);
        }
        if let Some(ms) = control.election_timeout_max_ms {
            config.control.election_max = Duration::from_millis(ms);
        }
        if let Some(count) = self.swap.hold_requests_max {
            config.swap_hold_requests_max = count;
        }
        config
    }

    /// Loads the TLS material and tokens `[security]` names (`None`
    /// without the section).
    pub fn load_security(&self) -> Result<Option<crate::security::Security>, ConfigError> {
        let Some(entry) = &self.security else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: "[security]".into(),
            message,
        };
        let tls = crate::security::NodeTls::load(&entry.ca, &entry.cert, &entry.key)
            .map_err(|e| invalid(e.to_string()))?;
        let tokens =
            crate::security::TokenStore::load(&entry.tokens).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(crate::security::Security {
            tls: std::sync::Arc::new(tls),
            tokens: std::sync::Arc::new(tokens),
        }))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 2
data_dir = "/tmp/n2"
api = "127.0.0.1:7072"
peer = "127.0.0.1:7172"

[[nodes]]
id = 1
api = "127.0.0.1:7071"
peer = "127.0.0.1:7171"

[[nodes]]
id = 2
api = "127.0.0.1:7072"
peer = "127.0.0.1:7172"
"#;

    #[test]
    fn parses_a_cluster_config() {
        let config = ConfigFile::parse(GOOD, "n2.toml").expect("parses");
        let node = config.node_config();
        assert_eq!(node.node_id, 2);
        assert_eq!(node.bootstrap.len(), 2);
        assert_eq!(node.api_address, "127.0.0.1:7072");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let error = ConfigFile::parse("node_id = \"two\"", "x.toml").expect_err("refused");
        assert!(error.to_string().contains("x.toml"), "{error}");
        let error = ConfigFile::parse(
            &GOOD.replace("api = \"127.0.0.1:7072\"", "api = \"0.0.0.0:7072\""),
            "x.toml",
        )
        .expect_err("a non-loopback address without [security] is refused");
        assert!(error.to_string().contains("[security]"), "{error}");
        let error = ConfigFile::parse(&format!("{GOOD}\nunknown_key = 1\n"), "x.toml")
            .expect_err("refused");
        assert!(error.to_string().contains("unknown"), "{error}");
        let error =
            ConfigFile::parse(&GOOD.replace("id = 1", "id = 2"), "x.toml").expect_err("refused");
        assert!(error.to_string().contains("twice"), "{error}");
    }

    #[test]
    fn region_limits_come_from_the_limits_section() {
        let text = format!(
            "{GOOD}\n[limits]\nregion_log_bytes_max = 1048576\nregion_timers_max = 10\ndisk_reserve_bytes = 0\n"
        );
        let node = ConfigFile::parse(&text, "n2.toml")
            .expect("parses")
            .node_config();
        assert_eq!(node.region_limits.log_bytes, 1 << 20);
        assert_eq!(node.region_limits.timers, 10);
        assert_eq!(node.region_limits.kv_keys, RegionLimits::default().kv_keys);
        assert_eq!(node.disk_reserve_bytes, 0);
        let bad = format!("{GOOD}\n[limits]\nregion_staged_bytes_max = 1073741824\n");
        let error = ConfigFile::parse(&bad, "x.toml").expect_err("refused");
        assert!(
            error.to_string().contains("region_staged_bytes_max"),
            "{error}"
        );
        let bad = format!("{GOOD}\n[limits]\nregion_kv_keys_max = 0\n");
        let error = ConfigFile::parse(&bad, "x.toml").expect_err("refused");
        assert!(error.to_string().contains("region_kv_keys_max"), "{error}");
    }

    #[test]
    fn transport_and_connection_limits_are_read() {
        let text = format!(
            "{GOOD}\n[transport]\nregion_queue_bytes_max = 5000000\nhandshakes_max = 3\n\n[connections]\nconnections_max = 7\nhttp_header_timeout_ms = 1500\nwire_frame_timeout_ms = 250\n"
        );
        let node = ConfigFile::parse(&text, "n2.toml")
            .expect("parses")
            .node_config();
        assert_eq!(node.transport.region_queue_bytes_max, 5_000_000);
        assert_eq!(node.transport.handshakes_max, 3);
        assert_eq!(node.connections.connections_max, 7);
        assert_eq!(
            node.connections.http_header_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            node.connections.wire_frame_timeout,
            Duration::from_millis(250)
        );
        let error = ConfigFile::parse(
            &format!("{GOOD}\n[transport]\nregion_queue_bytes_max = 1000\n"),
            "x.toml",
        )
        .expect_err("a budget below one snapshot chunk is refused");
        assert!(
            error.to_string().contains("region_queue_bytes_max"),
            "{error}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let config = ConfigFile::parse(GOOD, "n2.toml").expect("parses");
        let again = ConfigFile::parse(&config.to_toml(), "again.toml").expect("parses");
        assert_eq!(again.node_config().bootstrap.len(), 2);
    }
}
