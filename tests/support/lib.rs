//! Helpers shared by Synod's node-level tests: an in-process node with its
//! HTTP API, and a node running as a separate process that can be killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use synod::client::ApiClient;
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
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(synod::api::serve(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = ApiClient::new(&format!("http://{address}"));
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
