//! `synod bench --swap`: what live protocol swaps cost clients on a
//! 3-process loopback cluster. Writers run throughout while the region is
//! swapped back and forth; each swap's stall is measured from the recorded
//! history (see [`crate::tools::stall`]). Prints figures, asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::tools::bench::BenchArgs;
use crate::tools::cluster::LocalCluster;
use crate::tools::stall::{SwapWindow, Windows, acknowledged_writes, analyze, quantile};
use crate::tools::workload::{Recorder, Workload};

/// The stall the brief asks swaps to stay under (p99 over the swaps).
const TARGET_P99_STALL_MS: f64 = 50.0;
/// Answers this close to a swap count as "around" it, not as a baseline.
const MARGIN: Duration = Duration::from_millis(100);

pub async fn run(args: &BenchArgs) -> Result<()> {
    if args.swaps == 0
        || args.swap_clients == 0
        || !args.swap_interval.is_finite()
        || args.swap_interval < 0.5
    {
        bail!("--swaps and --swap-clients must be positive and --swap-interval at least 0.5 s");
    }
    let mut params = Vec::new();
    for param in &args.params {
        let Some((name, value)) = param.split_once('=') else {
            bail!("--param {param:?}: expected NAME=VALUE");
        };
        params.push((name.to_string(), value.to_string()));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    // SYNOD_BENCH_KEEP keeps the nodes' directories and logs for a look.
    let _cleanup = if std::env::var_os("SYNOD_BENCH_KEEP").is_some() {
        eprintln!("cluster directory (kept): {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    let binary = std::env::current_exe()?;
    let mut cluster = LocalCluster::start(&binary, &path, 3).await?;
    let entry = cluster.client(1)?;
    entry
        .create_region("bench", &args.protocol, &params)
        .await?;
    cluster
        .wait_for_leader("bench", Duration::from_secs(20))
        .await?;
    let interval = Duration::from_secs_f64(args.swap_interval);
    println!(
        "== Live swap: 3-process cluster, {} closed-loop HTTP writers ({} B values), \
         {} swaps {} <-> {} every {:.1}s ==",
        args.swap_clients,
        args.value_bytes,
        args.swaps,
        args.protocol,
        args.swap_to,
        args.swap_interval
    );

    let mut workload = Workload::new("bench", args.swap_clients);
    workload.read_percent = 0;
    workload.cas_percent = 0;
    workload.keys = 10_000;
    workload.value_bytes = args.value_bytes;
    // Warm up connections and the leader's pipeline, unrecorded.
    crate::tools::workload::run(
        cluster.clients(),
        workload.clone(),
        Duration::from_millis(500),
        None,
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let duration = interval * (args.swaps as u32 + 1);
    let load = tokio::spawn(crate::tools::workload::run(
        cluster.clients(),
        workload,
        duration,
        Some(recorder.clone()),
    ));
    let started = Instant::now();
    let mut swaps = Vec::new();
    for index in 0..args.swaps {
        tokio::time::sleep_until((started + interval * (index as u32 + 1)).into()).await;
        let to = if index % 2 == 0 {
            &args.swap_to
        } else {
            &args.protocol
        };
        let start_ns = recorder.elapsed_ns();
        let outcome = entry
            .swap_region("bench", to, None, None, false, Duration::from_secs(30))
            .await;
        let end_ns = recorder.elapsed_ns();
        swaps.push((to.clone(), SwapWindow { start_ns, end_ns }, outcome));
    }
    let report = load.await?;
    cluster.stop_all();

    let writes = acknowledged_writes(&recorder.operations(), "bench");
    // Baselines stay clear of the neighbouring swaps.
    let windows = Windows {
        margin: MARGIN,
        baseline: (interval / 2).saturating_sub(MARGIN * 2),
    };
    let mut gaps = Vec::new();
    let mut in_flight = Vec::new();
    let mut failed = 0usize;
    for (index, (to, window, outcome)) in swaps.iter().enumerate() {
        let took_ms = window.end_ns.saturating_sub(window.start_ns) as f64 / 1e6;
        match outcome {
            Ok(outcome) => {
                let stall = analyze(&writes, *window, windows);
                gaps.push(stall.gap_ms);
                in_flight.push(stall.max_in_flight_ms);
                println!(
                    "  swap {:>2} to {to:<14} epoch {:<3} {:>7.1} ms{}  stall: gap {:>7.1} ms, max in flight {:>7.1} ms; \
                     p99 {:.1} ms around vs {:.1} ms before; throughput after/before {:.2}x",
                    index + 1,
                    outcome["epoch"],
                    took_ms,
                    if outcome["rolled_back"].as_bool() == Some(true) {
                        " ROLLED BACK"
                    } else {
                        ""
                    },
                    stall.gap_ms,
                    stall.max_in_flight_ms,
                    stall.p99_around_ms,
                    stall.p99_before_ms,
                    stall.throughput_ratio()
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "  swap {:>2} to {to}: FAILED after {took_ms:.1} ms: {error}",
                    index + 1
                );
            }
        }
    }
    let rate = |from: u64, to: u64| {
        let count = writes
            .iter()
            .filter(|w| w.ret_ns >= from && w.ret_ns < to)
            .count();
        count as f64 / (to.saturating_sub(from).max(1) as f64 / 1e9)
    };
    let margin_ns = MARGIN.as_nanos() as u64;
    let first = swaps.first().map_or(0, |(_, w, _)| w.start_ns);
    let last = swaps.last().map_or(0, |(_, w, _)| w.end_ns);
    let end = writes.last().map_or(last, |w| w.ret_ns);
    let before = rate(0, first.saturating_sub(margin_ns));
    let after = rate(last + margin_ns, end);
    println!(
        "  over {} swaps: stall gap p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms;  max in flight p50 {:.1} ms  p99 {:.1} ms",
        gaps.len(),
        quantile(&gaps, 0.50),
        quantile(&gaps, 0.99),
        quantile(&gaps, 1.0),
        quantile(&in_flight, 0.50),
        quantile(&in_flight, 0.99)
    );
    println!(
        "  throughput: {before:.0} writes/s before the first swap, {after:.0} after the last ({:.2}x); \
         {} writes acknowledged, {} failed or retried; {failed} swaps failed",
        if before > 0.0 { after / before } else { 0.0 },
        report.completed(),
        report.errors
    );
    let p99 = quantile(&gaps, 0.99).max(quantile(&in_flight, 0.99));
    println!(
        "  target: p99 stall <= {TARGET_P99_STALL_MS:.0} ms on loopback; measured {p99:.1} ms ({})",
        if p99 <= TARGET_P99_STALL_MS && failed == 0 {
            "within"
        } else {
            "OVER"
        }
    );
    Ok(())
}
