//! The parts of `synod bench --cluster` for a leaderless protocol
//! (`--protocol multi-master`): writers spread over every node, a Raft
//! region on the same cluster measured right after it at each client count
//! for comparison, and the figure with one replica killed.

use std::time::Duration;

use anyhow::{Result, bail};

use super::bench::BenchArgs;
use crate::tools::cluster::LocalCluster;
use crate::tools::workload::{Endpoint, Workload};

/// One measured point.
#[derive(Clone, Debug)]
pub struct Point {
    pub writes_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
}

impl Point {
    pub fn print(&self, clients: usize, floor: Duration) {
        println!(
            "  {clients:>5} clients: {:>8.0} writes/s   p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms   ({} errors)   p50/floor {:.2}x",
            self.writes_per_second,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.errors,
            self.p50_ms / (floor.as_secs_f64() * 1e3)
        );
    }
}

/// Waits until every node runs `region`; true if its protocol is
/// leaderless (every replica reports `role: replica`).
pub async fn wait_for_replicas(cluster: &LocalCluster, region: &str) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut roles = Vec::new();
        for id in cluster.nodes.keys() {
            if let Ok(status) = cluster.client(*id)?.region_status(region).await {
                roles.push(status["plugin"]["role"].as_str().unwrap_or("").to_string());
            }
        }
        if roles.len() == cluster.nodes.len() && roles.iter().all(|r| r == "replica") {
            return Ok(true);
        }
        if roles.iter().any(|r| r == "leader") {
            return Ok(false);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("region {region} did not start on every node: roles {roles:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `clients` closed-loop writers of 256 B (or `--value-bytes`) values,
/// their connections spread round-robin over `nodes`.
pub async fn measure(
    cluster: &LocalCluster,
    region: &str,
    nodes: &[u64],
    clients: usize,
    args: &BenchArgs,
) -> Result<Point> {
    let mut workload = Workload::new(region, clients);
    workload.read_percent = 0;
    workload.cas_percent = 0;
    workload.keys = 10_000;
    workload.value_bytes = args.value_bytes;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    if args.api_is_wire() {
        for i in 0..args
            .connections()
            .min(clients)
            .max(nodes.len().min(clients))
        {
            let node = nodes[i % nodes.len()];
            endpoints.push(
                cluster
                    .wire_client(node, Duration::from_secs(30))
                    .await?
                    .into(),
            );
        }
    } else {
        for node in nodes {
            endpoints.push(cluster.client_with_pool(*node, clients + 16)?.into());
        }
    }
    // Warm up connections and pipelines.
    crate::tools::workload::run(
        endpoints.clone(),
        workload.clone(),
        Duration::from_millis(500),
        None,
    )
    .await;
    let report = crate::tools::workload::run(
        endpoints,
        workload,
        Duration::from_secs_f64(args.seconds()),
        None,
    )
    .await;
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    Ok(Point {
        writes_per_second: report.completed() as f64 / seconds,
        p50_ms: report.percentile_ms(0.50),
        p99_ms: report.percentile_ms(0.99),
        p999_ms: report.percentile_ms(0.999),
        errors: report.errors,
    })
}

/// A Raft region on the same cluster, measured at each client count right
/// after the leaderless one (interleaved, so both see the same machine
/// load): returns its leader, to which its writers go (Raft's best case).
pub async fn raft_beside(cluster: &LocalCluster) -> Result<u64> {
    cluster
        .client(1)?
        .create_region("bench-raft", "raft", &[])
        .await?;
    cluster
        .wait_for_leader("bench-raft", Duration::from_secs(20))
        .await
}

/// Measures the Raft region at `clients` and prints it beside `point`.
pub async fn measure_raft_beside(
    cluster: &LocalCluster,
    leader: u64,
    clients: usize,
    point: &Point,
    args: &BenchArgs,
    floor: Duration,
) -> Result<()> {
    let raft = measure(cluster, "bench-raft", &[leader], clients, args).await?;
    print!("    raft");
    raft.print(clients, floor);
    println!(
        "         {}: {:.2}x raft's writes/s, p50 {:.2}x raft's, p50/floor {:.2}x",
        args.protocol,
        point.writes_per_second / raft.writes_per_second.max(1e-9),
        point.p50_ms / raft.p50_ms.max(1e-9),
        point.p50_ms / (floor.as_secs_f64() * 1e3)
    );
    Ok(())
}

/// Node 3 killed (kill -9): the leaderless region measured again at the
/// largest client count with writers on the other two nodes, against the
/// same count with all up.
pub async fn one_down(
    cluster: &mut LocalCluster,
    points: &[(usize, Point)],
    args: &BenchArgs,
    floor: Duration,
) -> Result<()> {
    let Some((clients, all_up)) = points.iter().max_by_key(|(c, _)| *c) else {
        return Ok(());
    };
    cluster.kill(3)?;
    println!(
        "== {} with node 3 killed (kill -9), writers on nodes 1 and 2 ==",
        args.protocol
    );
    let down = measure(cluster, "bench", &[1, 2], *clients, args).await?;
    down.print(*clients, floor);
    println!(
        "         one replica down: {:.2}x the writes/s with all up",
        down.writes_per_second / all_up.writes_per_second.max(1e-9)
    );
    Ok(())
}
