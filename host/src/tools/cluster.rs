//! A cluster of `synod serve` processes on loopback, for the demo, the
//! benchmarks and the multi-process tests: generates configs, starts, kills
//! (SIGKILL), pauses (SIGSTOP) and restarts nodes, and adds new ones.
//!
//! Secure by default: [`LocalCluster::start`] runs `cluster init` into
//! `<dir>/secrets` and every node serves TLS with tokens; clients get the
//! admin token. [`LocalCluster::start_insecure`] (loopback only) exists
//! for the TLS-cost comparison of `synod bench --cluster --insecure`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use synod_guest_sdk::NodeId;

use crate::client::{ApiClient, Credentials};
use crate::config::{ConfigFile, LimitsEntry, NodeEntry, SecurityEntry};
use crate::security::init::{self as secrets, Initialized};

/// How long a node may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node process of a [`LocalCluster`].
pub struct LocalNode {
    pub id: NodeId,
    pub api: String,
    pub peer: String,
    pub client: ApiClient,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// Extra environment of the next start (e.g. `SYNOD_FAILPOINTS`).
    env: BTreeMap<String, String>,
}

impl LocalNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    /// The cluster's CA, certificates and admin token; `None`: insecure.
    secrets: Option<Initialized>,
    /// What the cluster's clients present (the admin token).
    credentials: Credentials,
    pub nodes: BTreeMap<NodeId, LocalNode>,
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());

/// Where [`free_port`] looks: below Linux's default ephemeral range
/// (32768–60999), so an outgoing connection of another node, which takes
/// an ephemeral port, cannot grab a port between its choice and its bind.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port that is free now, outside the ephemeral range and not
/// handed out before by this process.
pub fn free_port() -> Result<u16> {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = rand::random_range(PORT_RANGE);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {PORT_RANGE:?}")
}

/// The last `lines` lines of a node log, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(unreadable: {error})"),
    }
}

fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        bail!(
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

impl LocalCluster {
    /// Starts `size` nodes (ids 1..=size) running `binary serve --config`.
    pub async fn start(binary: &Path, dir: &Path, size: u64) -> Result<Self> {
        Self::start_with_env(binary, dir, size, &[]).await
    }

    /// Like [`LocalCluster::start`], every node with these extra
    /// environment variables (until it is restarted).
    pub async fn start_with_env(
        binary: &Path,
        dir: &Path,
        size: u64,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_with(binary, dir, size, env, true).await
    }

    /// Nodes in the clear without tokens: only to measure what TLS and
    /// authentication cost.
    pub async fn start_insecure(binary: &Path, dir: &Path, size: u64) -> Result<Self> {
        Self::start_with(binary, dir, size, &[], false).await
    }

    async fn start_with(
        binary: &Path,
        dir: &Path,
        size: u64,
        env: &[(&str, &str)],
        secure: bool,
    ) -> Result<Self> {
        let (secrets, credentials) = if secure {
            let ids: Vec<NodeId> = (1..=size).collect();
            let made = secrets::init(&dir.join("secrets"), &ids, &["127.0.0.1".to_string()])
                .context("generating the cluster's certificates and tokens")?;
            let credentials = Credentials::new(&made.ca, &made.admin_token)
                .with_context(|| format!("reading {}", made.ca.display()))?;
            (Some(made), credentials)
        } else {
            (None, Credentials::none())
        };
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            secrets,
            credentials,
            nodes: BTreeMap::new(),
        };
        for id in 1..=size {
            cluster.allocate(id)?;
            cluster.node_mut(id)?.env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        for id in 1..=size {
            cluster.write_config(id)?;
            cluster.spawn(id)?;
        }
        for id in 1..=size {
            cluster.wait_ready(id).await?;
        }
        Ok(cluster)
    }

    /// The cluster's secrets (CA, tokens file, admin token), if secure.
    pub fn secrets(&self) -> Option<&Initialized> {
        self.secrets.as_ref()
    }

    /// What clients of this cluster present (CA and admin token).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The base URL of node `id`'s API (`https://` when secure).
    pub fn url(&self, id: NodeId) -> Result<String> {
        Ok(format!(
            "{}://{}",
            self.credentials.scheme(),
            self.node(id)?.api
        ))
    }

    /// A wire-protocol client of node `id`, with the cluster's credentials.
    pub async fn wire_client(
        &self,
        id: NodeId,
        timeout: Duration,
    ) -> Result<crate::wire::WireClient> {
        let api = &self.node(id)?.api;
        Ok(crate::wire::WireClient::connect_with(api, timeout, &self.credentials).await?)
    }

    /// An HTTP client of node `id` keeping `idle_connections` open.
    pub fn client_with_pool(&self, id: NodeId, idle_connections: usize) -> Result<ApiClient> {
        Ok(ApiClient::secure_with_pool(
            &self.url(id)?,
            idle_connections,
            &self.credentials,
        )?)
    }

    fn allocate(&mut self, id: NodeId) -> Result<()> {
        let api = format!("127.0.0.1:{}", free_port()?);
        let peer = format!("127.0.0.1:{}", free_port()?);
        let base = format!("{}://{api}", self.credentials.scheme());
        let client = ApiClient::secure(&base, &self.credentials)?;
        self.nodes.insert(
            id,
            LocalNode {
                id,
                client,
                api,
                peer,
                config_path: self.dir.join(format!("node{id}.toml")),
                log_path: self.dir.join(format!("node{id}.log")),
                child: None,
                env: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn write_config(&self, id: NodeId) -> Result<()> {
        let node = self.node(id)?;
        let security = self.secrets.as_ref().map(|made| {
            let (cert, key) = secrets::node_files(&made.dir, id);
            SecurityEntry {
                ca: made.ca.clone(),
                cert,
                key,
                tokens: made.tokens.clone(),
            }
        });
        let config = ConfigFile {
            node_id: id,
            data_dir: self.dir.join(format!("data{id}")),
            api: node.api.parse()?,
            peer: node.peer.parse()?,
            security,
            nodes: self
                .nodes
                .values()
                .map(|n| NodeEntry {
                    id: n.id,
                    api: n.api.clone(),
                    peer: n.peer.clone(),
                })
                .collect(),
            limits: LimitsEntry::default(),
            fairness: Default::default(),
            request_timeout_ms: Some(5000),
            wal_checkpoint_min_bytes: None,
            transport: Default::default(),
            connections: Default::default(),
            control: Default::default(),
            swap: Default::default(),
        };
        std::fs::write(&node.config_path, config.to_toml())
            .with_context(|| format!("writing {}", node.config_path.display()))?;
        Ok(())
    }

    fn spawn(&mut self, id: NodeId) -> Result<()> {
        let binary = self.binary.clone();
        let node = self.node_mut(id)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .env(
                "RUST_LOG",
                std::env::var("SYNOD_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(&node.env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning node {id} ({})", binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `id` answers on its API; fails early if the
    /// process exits, and either way quotes the end of its log.
    async fn wait_ready(&mut self, id: NodeId) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let node = self.node_mut(id)?;
            if node.client.status().await.is_ok() {
                return Ok(());
            }
            let exited = match node.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => bail!("node {id} is not running"),
            };
            let problem = match exited {
                Some(status) => Some(format!("node {id} exited ({status}) before it was ready")),
                None if tokio::time::Instant::now() >= deadline => {
                    Some(format!("node {id} did not answer within {READY_TIMEOUT:?}"))
                }
                None => None,
            };
            if let Some(problem) = problem {
                if exited.is_some() {
                    node.child = None;
                }
                bail!(
                    "{problem}; end of {}:\n{}",
                    node.log_path.display(),
                    log_tail(&node.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn node(&self, id: NodeId) -> Result<&LocalNode> {
        self.nodes.get(&id).with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut LocalNode> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))
    }

    pub fn client(&self, id: NodeId) -> Result<ApiClient> {
        Ok(self.node(id)?.client.clone())
    }

    /// Clients of every running node.
    pub fn clients(&self) -> Vec<ApiClient> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.client.clone())
            .collect()
    }

    /// SIGKILL: nothing is flushed, as in a power cut of the process.
    pub fn kill(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Restarts node `id` (SIGKILL first if it runs) with no extra
    /// environment: armed failpoints are cleared.
    pub async fn restart(&mut self, id: NodeId) -> Result<()> {
        self.restart_with_env(id, &[]).await
    }

    /// Restarts node `id` with exactly these extra environment variables.
    pub async fn restart_with_env(&mut self, id: NodeId, env: &[(&str, &str)]) -> Result<()> {
        self.kill(id)?;
        self.node_mut(id)?.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn(id)?;
        self.wait_ready(id).await
    }

    /// Restarts node `id` with these crash points armed (`SYNOD_FAILPOINTS`).
    pub async fn restart_with_failpoints(&mut self, id: NodeId, points: &[&str]) -> Result<()> {
        let points = points.join(",");
        self.restart_with_env(id, &[("SYNOD_FAILPOINTS", &points)])
            .await
    }

    /// Waits until node `id`'s process exits by itself (a failpoint
    /// aborted it) and returns how it ended; the node is then down.
    pub async fn wait_exit(
        &mut self,
        id: NodeId,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let node = self.node_mut(id)?;
            let child = node
                .child
                .as_mut()
                .with_context(|| format!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "node {id} still runs after {timeout:?}; end of {}:\n{}",
                    node.log_path.display(),
                    log_tail(&node.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether node `id`'s process has exited by itself (then it is
    /// marked down, to be restarted).
    pub fn reap(&mut self, id: NodeId) -> Result<Option<std::process::ExitStatus>> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            node.child = None;
        }
        Ok(status)
    }

    /// The node log's path (what `SYNOD_NODE_LOG` lets through).
    pub fn log_path(&self, id: NodeId) -> Result<&Path> {
        Ok(&self.node(id)?.log_path)
    }

    /// The node's data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("data{id}"))
    }

    /// The control-plane leader as running node `via` sees it.
    pub async fn control_leader(&self, via: NodeId) -> Option<NodeId> {
        let status = self.node(via).ok()?.client.status().await.ok()?;
        status["control"]["leader"].as_u64()
    }

    /// Waits until every running node names the same control-plane leader.
    pub async fn wait_for_control_leader(&self, timeout: Duration) -> Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut seen = BTreeSet::new();
            let mut all = true;
            for node in self.nodes.values().filter(|n| n.is_running()) {
                match self.control_leader(node.id).await {
                    Some(leader) => {
                        seen.insert(leader);
                    }
                    None => all = false,
                }
            }
            if all
                && seen.len() == 1
                && let Some(leader) = seen.first().copied()
                && self.node(leader).is_ok_and(LocalNode::is_running)
            {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no agreed control-plane leader within {timeout:?} (seen {seen:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&self, id: NodeId) -> Result<()> {
        let pid = self.node(id)?.pid().context("node is not running")?;
        signal(pid, libc::SIGSTOP)
    }

    pub fn resume(&self, id: NodeId) -> Result<()> {
        let pid = self.node(id)?.pid().context("node is not running")?;
        signal(pid, libc::SIGCONT)
    }

    /// Starts node `id` with a config listing every node, and announces it
    /// to the cluster through `via`.
    pub async fn add_node(&mut self, id: NodeId, via: NodeId) -> Result<()> {
        if let Some(made) = &self.secrets {
            secrets::issue_node_certificate(&made.dir, id, &["127.0.0.1".to_string()])
                .with_context(|| format!("issuing node {id}'s certificate"))?;
        }
        self.allocate(id)?;
        self.write_config(id)?;
        self.spawn(id)?;
        self.wait_ready(id).await?;
        let node = self.node(id)?;
        let (api, peer) = (node.api.clone(), node.peer.clone());
        self.client(via)?.add_node(id, &api, &peer).await?;
        Ok(())
    }

    /// The leader of `region`: of the replicas that report leading, the one
    /// with the highest term (a deposed leader may not know it yet).
    pub async fn leader_of(&self, region: &str) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for node in self.nodes.values().filter(|n| n.is_running()) {
            if let Ok(status) = node.client.region_status(region).await
                && status["plugin"]["role"] == "leader"
            {
                let term = status["plugin"]["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(best_term, _)| term > best_term) {
                    best = Some((term, node.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until some replica of `region` is leader.
    pub async fn wait_for_leader(&self, region: &str, timeout: Duration) -> Result<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader_of(region).await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("region {region} elected no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// State digests of `region` on every running node hosting it. Each
    /// node is asked about its own replica only: a node that does not host
    /// one (yet) redirects the status to a node that does, and following
    /// that redirect would report the other node's digest under this id.
    pub async fn digests(&self, region: &str) -> BTreeMap<NodeId, String> {
        let mut digests = BTreeMap::new();
        for node in self.nodes.values().filter(|n| n.is_running()) {
            let Ok(own) = node.client.sibling_without_redirects(&node.api) else {
                continue;
            };
            if let Ok(status) = own.region_status(region).await
                && let Some(digest) = status["state_machine"]["digest"].as_str()
            {
                digests.insert(node.id, digest.to_string());
            }
        }
        digests
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
