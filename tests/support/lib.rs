//! Helpers shared by Synod's node-level tests: an in-process node with its
//! HTTP API, and a node running as a separate process that can be killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use synod::client::{ApiClient, Credentials};
use synod::node::{Node, NodeConfig, NodeEnvironment};
use tokio::sync::oneshot;

/// How long a node may take to come up in a test.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A node running inside the test process, serving HTTP on loopback.
pub struct TestNode {
    pub node: Arc<Node>,
    pub client: ApiClient,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestNode {
    pub async fn start(config: NodeConfig) -> Result<Self> {
        let node = Node::open(config).await?;
        Self::serve(node).await
    }

    pub async fn start_with(config: NodeConfig, environment: NodeEnvironment) -> Result<Self> {
        let node = Node::open_with(config, environment).await?;
        Self::serve(node).await
    }

    async fn serve(node: Arc<Node>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve_on(node, listener, &Credentials::none()).await
    }

    /// A node with `config.security` set (see [`secure`]); its client
    /// presents `credentials`. `api` binds the API (`127.0.0.1:0`: any).
    pub async fn start_secure(
        config: NodeConfig,
        api: &str,
        credentials: &Credentials,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(api).await?;
        let node = Node::open(config).await?;
        Self::serve_on(node, listener, credentials).await
    }

    async fn serve_on(
        node: Arc<Node>,
        listener: tokio::net::TcpListener,
        credentials: &Credentials,
    ) -> Result<Self> {
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(synod::api::serve(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = ApiClient::secure(
            &format!("{}://{address}", credentials.scheme()),
            credentials,
        )?;
        client.wait_ready(READY_TIMEOUT).await?;
        Ok(Self {
            node,
            client,
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        self.node.shutdown().await;
        Ok(())
    }
}

pub use synod::tools::cluster::free_port;

/// Gives `config` the TLS material and tokens of the cluster secrets in
/// `secrets` (made by `cluster init` for `ids` on first use) and returns
/// the admin's credentials.
pub fn secure(config: &mut NodeConfig, secrets: &Path, ids: &[u64]) -> Result<Credentials> {
    use synod::security::init;
    if !secrets.join(init::CA_KEY).exists() {
        init::init(secrets, ids, &["127.0.0.1".to_string()])?;
    }
    let (cert, key) = init::node_files(secrets, config.node_id);
    let tls = synod::security::NodeTls::load(&secrets.join(init::CA_CERT), &cert, &key)?;
    let tokens = synod::security::TokenStore::load(&secrets.join(init::TOKENS))?;
    config.security = Some(synod::security::Security {
        tls: Arc::new(tls),
        tokens: Arc::new(tokens),
    });
    Ok(Credentials::from_profile(&secrets.join(init::PROFILE))?)
}

/// Path of the node binary; only integration tests know it at compile time.
#[macro_export]
macro_rules! node_binary {
    () => {
        env!("CARGO_BIN_EXE_synod-test-node")
    };
}

/// A `synod serve` process over a data directory.
pub struct NodeProcess {
    child: Child,
    pub client: ApiClient,
    pub data_dir: PathBuf,
    pub port: u16,
}

impl NodeProcess {
    /// `binary` is [`node_binary!`] expanded in the test.
    pub async fn start(binary: &str, data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with_args(binary, data_dir, port, &[]).await
    }

    /// Like [`NodeProcess::start`] with extra `serve` flags.
    pub async fn start_with_args(
        binary: &str,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<Self> {
        let child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a node process")?;
        let client = ApiClient::new(&format!("http://127.0.0.1:{port}"));
        let mut process = Self {
            child,
            client,
            data_dir: data_dir.to_path_buf(),
            port,
        };
        if let Err(error) = process.client.wait_ready(READY_TIMEOUT).await {
            process.kill();
            return Err(error).context("node process did not become ready");
        }
        Ok(process)
    }

    /// SIGKILL: no shutdown path runs, unsynced data is whatever the OS has.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Helpers for tests on a [`LocalCluster`] of node processes: start one,
/// run a recorded workload, check the history and the replicas.
pub mod cluster {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use synod::checker::{CheckOptions, Outcome, check_linearizable};
    use synod::tools::cluster::LocalCluster;
    use synod::tools::workload::{Recorder, Workload, WorkloadReport};

    /// Starts `size` node processes of `binary` (give it [`node_binary!`]).
    pub async fn start(binary: &str, size: u64) -> (LocalCluster, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = LocalCluster::start(std::path::Path::new(binary), dir.path(), size)
            .await
            .expect("cluster starts");
        (cluster, dir)
    }

    /// Runs a recorded HTTP workload over every running node on 16 keys.
    pub fn start_workload(
        cluster: &LocalCluster,
        region: &str,
        clients: usize,
        seconds: f64,
        recorder: &Arc<Recorder>,
    ) -> tokio::task::JoinHandle<WorkloadReport> {
        let mut workload = Workload::new(region, clients);
        workload.keys = 16;
        tokio::spawn(synod::tools::workload::run(
            cluster.clients(),
            workload,
            Duration::from_secs_f64(seconds),
            Some(recorder.clone()),
        ))
    }

    /// The recorded history is linearizable (which also proves no
    /// acknowledged write was lost: a lost write makes a later read
    /// impossible to order).
    pub fn assert_linearizable(recorder: &Recorder) {
        let operations = recorder.operations();
        assert!(
            operations.len() > 50,
            "the workload ran ({} ops)",
            operations.len()
        );
        match check_linearizable(&operations, &CheckOptions::default()) {
            Outcome::Linearizable => {}
            Outcome::Violation(violation) => panic!(
                "history is not linearizable on key {}: {}",
                violation.key, violation.explanation
            ),
            Outcome::Unknown { key, reason } => panic!("checker undecided on {key}: {reason}"),
        }
    }

    /// Waits until `members` all report the same state digest of `region`.
    pub async fn assert_converged(cluster: &LocalCluster, region: &str, members: &[u64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let digests = cluster.digests(region).await;
            let distinct: BTreeSet<_> = members.iter().filter_map(|id| digests.get(id)).collect();
            if distinct.len() == 1 && members.iter().all(|id| digests.contains_key(id)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replicas {members:?} of {region} did not converge: {digests:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until node `id` no longer runs a replica of `region` (its own
    /// list, not a status that would redirect to a node that has one).
    pub async fn assert_replica_deleted(cluster: &LocalCluster, region: &str, id: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let listed = cluster
                .client(id)
                .expect("client")
                .regions()
                .await
                .expect("regions");
            let hosted = listed["regions"]
                .as_array()
                .is_some_and(|all| all.iter().any(|r| r["name"] == region));
            if !hosted {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} still runs a replica of {region}: {listed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `component` with a wasm custom section (id 0) appended: a rebuilt
/// component, with a new digest and the same code.
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb128(body.len(), &mut bytes);
    bytes.extend_from_slice(&body);
    bytes
}

/// sha256 hex of `bytes`, computed here rather than by the host.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
