//! Output commit: a write's answer, and the answer of a read that saw it,
//! leave the node only after the write is durable. The test holds fsync
//! and checks that nothing is released until it completes.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use synod::clock::SystemClock;
use synod::network::NoPeers;
use synod::node::{NodeConfig, NodeEnvironment};
use synod::storage::disk::{Disk, FsDisk};
use synod_tests::TestNode;

/// A disk whose fsync blocks while the gate is closed.
struct GatedDisk {
    inner: FsDisk,
    open: Mutex<bool>,
    changed: Condvar,
}

impl GatedDisk {
    fn set_open(&self, open: bool) {
        *self.open.lock().expect("gate") = open;
        self.changed.notify_all();
    }
}

impl Disk for GatedDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn append(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(path, bytes)
    }
    fn sync(&self, path: &str) -> io::Result<()> {
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.changed.wait(open).expect("gate");
        }
        drop(open);
        self.inner.sync(path)
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_atomic(path, bytes)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_wait_for_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(GatedDisk {
        inner: FsDisk::new(dir.path().to_path_buf()),
        open: Mutex::new(true),
        changed: Condvar::new(),
    });
    let environment = NodeEnvironment {
        disk: disk.clone(),
        network: Arc::new(NoPeers::default()),
        clock: SystemClock::shared(),
    };
    let node = TestNode::start_with(NodeConfig::new(1, dir.path().into()), environment)
        .await
        .expect("node");
    node.client
        .create_region("r", "standalone", &[])
        .await
        .expect("region");
    node.client.put("r", "k", "1").await.expect("first write");

    disk.set_open(false);
    let write = {
        let client = node.client.clone();
        tokio::spawn(async move { client.put("r", "k", "2").await })
    };
    // Let the write reach the plugin and be applied in memory.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = {
        let client = node.client.clone();
        tokio::spawn(async move { client.get("r", "k", "linearizable").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "the write was acknowledged before fsync"
    );
    assert!(
        !read.is_finished(),
        "a read that saw an undurable write was answered"
    );
    let status = node.client.region_status("r").await.expect("status");
    assert!(
        status["held_outputs"].as_u64().unwrap_or(0) >= 2,
        "the answers are held: {status}"
    );
    assert_eq!(
        status["state_machine"]["applied_position"], 2,
        "applied in memory already"
    );

    disk.set_open(true);
    write
        .await
        .expect("join")
        .expect("write acknowledged after fsync");
    let value = read
        .await
        .expect("join")
        .expect("read answered after fsync");
    assert_eq!(value.as_deref(), Some("2"));
    node.stop().await.expect("stop");
}
