//! The control-plane region commands of the CLI: `region swap` (with
//! progress), `region status` (the record plus every replica's view),
//! `region history` and `region delete`.
//!
//! Rendering is kept in pure functions over the API's JSON documents so it
//! is tested against the record types themselves.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::client::ApiClient;

/// How often `region swap` polls the record while it waits.
pub const SWAP_POLL: Duration = Duration::from_millis(200);

/// `region delete`: deletes and says which hosts have not confirmed.
pub async fn delete(client: &ApiClient, name: &str, wait: Duration) -> Result<()> {
    let answer = client.delete_region(name, wait).await?;
    println!("{}", render_delete(&answer));
    Ok(())
}

/// `region swap`: sends the swap and, while waiting for its outcome, prints
/// every change of step and of what the swap waits for.
pub async fn swap(
    client: &ApiClient,
    name: &str,
    to: &str,
    params: Option<Vec<(String, String)>>,
    replicas: Option<Vec<u64>>,
    force: bool,
    wait: Duration,
) -> Result<()> {
    let started = Instant::now();
    let request = {
        let client = client.clone();
        let name = name.to_string();
        let to = to.to_string();
        tokio::spawn(async move {
            client
                .swap_region(
                    &name,
                    &to,
                    params.as_deref(),
                    replicas.as_deref(),
                    force,
                    wait,
                )
                .await
        })
    };
    tokio::pin!(request);
    println!("swapping region {name} to {to}");
    let mut ticker = tokio::time::interval(SWAP_POLL);
    let mut last: Option<String> = None;
    let outcome = loop {
        tokio::select! {
            joined = &mut request => break joined.context("the swap request task failed")??,
            _ = ticker.tick() => {
                // Progress is best effort: a failed poll is shown once and
                // the swap's own answer decides the command's result.
                let line = match client.region_record(name).await {
                    Ok(document) => swap_progress(&document),
                    Err(error) => Some(format!("cannot read the record: {error}")),
                };
                if let Some(line) = line && last.as_deref() != Some(line.as_str()) {
                    println!("  {:>6.2}s  {line}", started.elapsed().as_secs_f64());
                    last = Some(line);
                }
            }
        }
    };
    println!("{}", render_outcome(&outcome));
    Ok(())
}

/// `region status`: the record's view, then each replica's own.
pub async fn status(client: &ApiClient, name: &str) -> Result<()> {
    let document = client.region_record(name).await?;
    let cluster = client.cluster().await?;
    let mut replicas = Vec::new();
    for id in hosts(&document["record"]) {
        let answer = match cluster["nodes"][id.to_string()]["api"].as_str() {
            Some(api) => match client.sibling_without_redirects(api) {
                Ok(sibling) => sibling
                    .region_status(name)
                    .await
                    .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            },
            None => Err("the cluster record has no address for this node".to_string()),
        };
        replicas.push((id, answer));
    }
    print!("{}", render_status(&document, &replicas));
    Ok(())
}

/// `region history`: epochs and audit lines.
pub async fn history(client: &ApiClient, name: &str) -> Result<()> {
    let document = client.region_record(name).await?;
    print!("{}", render_history(&document));
    Ok(())
}

/// Voters then learners of the record's current spec.
fn hosts(record: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = ["voters", "learners"]
        .iter()
        .flat_map(|list| record["spec"][list].as_array().cloned().unwrap_or_default())
        .filter_map(|id| id.as_u64())
        .collect();
    ids.dedup();
    ids
}

/// A `ProtocolRef` as text: `sha256:<digest>` or `native:<name>`.
pub fn protocol_label(protocol: &Value) -> String {
    if let Some(digest) = protocol["Component"]["digest"].as_str() {
        format!("sha256:{digest}")
    } else if let Some(name) = protocol["Native"]["name"].as_str() {
        format!("native:{name}")
    } else {
        protocol.to_string()
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC).
pub fn utc_time(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

fn ids(value: &Value) -> String {
    let list: Vec<String> = match value {
        Value::Array(items) => items.iter().map(Value::to_string).collect(),
        // Maps keyed by node id (sealed, refused).
        Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    format!("[{}]", list.join(","))
}

/// A JSON value as text that honours width and alignment (a `Value`'s
/// own `Display` ignores them).
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn step_name(step: &Value) -> String {
    step.as_str()
        .map(str::to_lowercase)
        .unwrap_or_else(|| step.to_string())
}

/// One line about the swap in progress in a record document, or None.
pub fn swap_progress(document: &Value) -> Option<String> {
    let swap = &document["record"]["swap"];
    if swap.is_null() {
        return None;
    }
    let mut line = format!(
        "step {}: to {} (epoch {} -> {}), prepared {}, sealed {}",
        step_name(&swap["step"]),
        swap["requested"].as_str().unwrap_or("?"),
        swap["from_epoch"],
        swap["from_epoch"].as_u64().map_or(0, |e| e + 1),
        ids(&swap["prepared"]),
        ids(&swap["sealed"]),
    );
    if let Some(refused) = swap["refused"].as_object()
        && !refused.is_empty()
    {
        let parts: Vec<String> = refused
            .iter()
            .map(|(id, why)| format!("node {id}: {}", why.as_str().unwrap_or("?")))
            .collect();
        let _ = write!(line, ", refused ({})", parts.join("; "));
    }
    if let Some(waiting) = document["swap_waiting_for"].as_str() {
        let _ = write!(line, "; waiting for {waiting}");
    }
    Some(line)
}

/// The outcome of `POST /v1/regions/{r}/swap`.
pub fn render_outcome(outcome: &Value) -> String {
    if outcome["done"].as_bool() == Some(false) {
        return format!(
            "region {}: the swap to {} is still running after {:.3}s (step {}{}); `synod region status {}` follows it",
            outcome["region"].as_str().unwrap_or("?"),
            outcome["requested"].as_str().unwrap_or("?"),
            outcome["seconds"].as_f64().unwrap_or(0.0),
            outcome["step"].as_str().unwrap_or("?"),
            outcome["waiting_for"]
                .as_str()
                .map(|why| format!(", {why}"))
                .unwrap_or_default(),
            outcome["region"].as_str().unwrap_or("?"),
        );
    }
    let rolled_back = outcome["rolled_back"].as_bool().unwrap_or(false);
    format!(
        "{} region {}: epoch {} runs {} from position {} after {:.3}s{}",
        if rolled_back {
            "ROLLED BACK"
        } else {
            "swapped"
        },
        outcome["region"].as_str().unwrap_or("?"),
        outcome["epoch"],
        outcome["requested"].as_str().unwrap_or("?"),
        outcome["start_position"],
        outcome["seconds"].as_f64().unwrap_or(0.0),
        match outcome["note"].as_str() {
            Some(note) if !note.is_empty() => format!(" ({note})"),
            _ => String::new(),
        }
    )
}

/// The answer of `DELETE /v1/regions/{r}`.
pub fn render_delete(answer: &Value) -> String {
    let region = answer["region"].as_str().unwrap_or("?");
    if answer["deleted"].as_bool() == Some(true) {
        format!("region {region} deleted on every host")
    } else {
        format!(
            "region {region}: deletion recorded; hosts {} have not confirmed yet \
             (they delete their data when they are up)",
            ids(&answer["pending"])
        )
    }
}

fn phase(record: &Value) -> String {
    match &record["phase"] {
        Value::String(name) => name.to_lowercase(),
        Value::Object(map) => match map.get("Deleting") {
            Some(deleting) => format!("deleting (pending {})", ids(&deleting["pending"])),
            None => record["phase"].to_string(),
        },
        other => other.to_string(),
    }
}

/// `region status` from the record document and each replica's
/// `GET /v1/regions/{r}` answer (or why there is none).
pub fn render_status(document: &Value, replicas: &[(u64, Result<Value, String>)]) -> String {
    let record = &document["record"];
    let spec = &record["spec"];
    let requested = record["epochs"]
        .as_array()
        .and_then(|epochs| epochs.last())
        .and_then(|epoch| epoch["requested"].as_str())
        .unwrap_or("?");
    let mut out = String::new();
    let _ = writeln!(out, "region {}", spec["name"].as_str().unwrap_or("?"));
    let _ = writeln!(out, "  epoch     {}", spec["epoch"]);
    let _ = writeln!(
        out,
        "  protocol  {requested} ({})",
        protocol_label(&spec["protocol"])
    );
    let _ = writeln!(out, "  phase     {}", phase(record));
    let _ = writeln!(
        out,
        "  members   voters {} learners {}",
        ids(&spec["voters"]),
        ids(&spec["learners"])
    );
    match swap_progress(document) {
        Some(line) => {
            let _ = writeln!(out, "  swap      {line}");
        }
        None => {
            let _ = writeln!(out, "  swap      none in progress");
        }
    }
    // Lag is measured against the leader's applied position.
    let applied = |status: &Value| {
        status["plugin"]["applied_position"]
            .as_u64()
            .or_else(|| status["state_machine"]["applied_position"].as_u64())
    };
    let leader_applied = replicas
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok())
        .find(|status| status["plugin"]["role"].as_str() == Some("leader"))
        .and_then(applied);
    let _ = writeln!(
        out,
        "  {:<6} {:<10} {:>6} {:>10} {:>10} {:>8} {:>6} {:>5}  health",
        "node", "role", "term", "applied", "commit", "lag", "epoch", "held"
    );
    for (id, answer) in replicas {
        match answer {
            Ok(status) => {
                let plugin = &status["plugin"];
                let lag = match (leader_applied, applied(status)) {
                    (Some(leader), Some(mine)) => leader.saturating_sub(mine).to_string(),
                    _ => "?".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {:<6} {:<10} {:>6} {:>10} {:>10} {:>8} {:>6} {:>5}  {}{}",
                    id,
                    plugin["role"].as_str().unwrap_or("stopped"),
                    plugin["term"]
                        .as_u64()
                        .map_or("-".into(), |t| t.to_string()),
                    applied(status).map_or("-".into(), |a| a.to_string()),
                    plugin["commit_position"]
                        .as_u64()
                        .map_or("-".into(), |c| c.to_string()),
                    lag,
                    text(&status["epoch"]),
                    text(&status["held_requests"]),
                    status["health"]["state"].as_str().unwrap_or("?"),
                    match status["seal"].as_str() {
                        Some(seal) if seal != "none" => format!(", seal {seal}"),
                        _ => String::new(),
                    }
                );
            }
            Err(why) => {
                let _ = writeln!(out, "  {id:<6} unreachable: {why}");
            }
        }
    }
    out
}

/// `region history`: every epoch, then the audit lines.
pub fn render_history(document: &Value) -> String {
    let record = &document["record"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "region {} epochs:",
        record["spec"]["name"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "  {:>5}  {:<24} {:>10}  {:<24} {:<24} note",
        "epoch", "protocol", "start", "began", "ended"
    );
    for epoch in record["epochs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:>5}  {:<24} {:>10}  {:<24} {:<24} {}",
            text(&epoch["epoch"]),
            epoch["requested"].as_str().unwrap_or("?"),
            text(&epoch["start_position"]),
            epoch["began_at_ms"].as_u64().map_or("?".into(), utc_time),
            epoch["ended_at_ms"]
                .as_u64()
                .map_or("(current)".into(), utc_time),
            epoch["note"].as_str().unwrap_or("")
        );
    }
    let audit = document["audit"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "audit ({} lines):", audit.len());
    for entry in &audit {
        let _ = writeln!(
            out,
            "  #{:<6} {} node {}: {}",
            text(&entry["index"]),
            entry["at_ms"].as_u64().map_or("?".into(), utc_time),
            entry["actor"],
            entry["action"].as_str().unwrap_or("?")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;

    use super::*;
    use crate::control::record::{
        AuditEntry, EpochRecord, RegionPhase, RegionRecord, SealReportRecord, SwapRecord, SwapStep,
    };
    use crate::region::{ProtocolRef, RegionSpec};

    fn epoch(epoch: u64, requested: &str, start: u64, ended: Option<u64>) -> EpochRecord {
        EpochRecord {
            epoch,
            protocol: ProtocolRef::Native {
                name: "raft".into(),
            },
            requested: requested.into(),
            params: vec![],
            voters: vec![1, 2, 3],
            start_position: start,
            began_at_ms: 1_764_590_817_123,
            ended_at_ms: ended,
            note: format!("note {epoch}"),
            first_leader: Some(1),
        }
    }

    /// A record document as `GET /v1/regions/r/record` serializes it.
    fn document(swap: Option<SwapRecord>, phase: RegionPhase) -> Value {
        let record = RegionRecord {
            spec: RegionSpec {
                name: "r".into(),
                protocol: ProtocolRef::Component {
                    digest: "ab12".into(),
                },
                params: vec![],
                voters: vec![1, 2, 3],
                learners: vec![],
                epoch: 2,
                membership_target: None,
                version: 3,
            },
            phase,
            epochs: vec![
                epoch(1, "native:raft", 0, Some(1_764_590_818_000)),
                epoch(2, "raft@0.1.1", 42, None),
            ],
            swap,
            retired: BTreeSet::new(),
            created_at_ms: 0,
        };
        let audit = vec![AuditEntry {
            index: 7,
            at_ms: 1_764_590_817_123,
            actor: 2,
            action: "region r: swap to raft".into(),
        }];
        json!({ "record": record, "swap_waiting_for": "seal reports from [3]", "audit": audit })
    }

    fn sealing() -> SwapRecord {
        SwapRecord {
            from_epoch: 2,
            to: ProtocolRef::Native {
                name: "raft".into(),
            },
            requested: "native:raft".into(),
            params: vec![],
            voters: vec![1, 2, 3],
            force: false,
            step: SwapStep::Sealing,
            prepared: [1, 2, 3].into_iter().collect(),
            refused: BTreeMap::from([(3, "compile failed".to_string())]),
            sealed: BTreeMap::from([(
                1,
                SealReportRecord {
                    position: 9,
                    digest: "00".into(),
                },
            )]),
            began_at_ms: 0,
            step_at_ms: 0,
            actor: 1,
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(utc_time(1_764_590_817_123), "2025-12-01 12:06:57.123Z");
    }

    #[test]
    fn progress_shows_step_members_and_wait() {
        let line = swap_progress(&document(Some(sealing()), RegionPhase::Active))
            .expect("a swap is in progress");
        assert_eq!(
            line,
            "step sealing: to native:raft (epoch 2 -> 3), prepared [1,2,3], sealed [1], \
             refused (node 3: compile failed); waiting for seal reports from [3]"
        );
        assert_eq!(swap_progress(&document(None, RegionPhase::Active)), None);
    }

    #[test]
    fn status_shows_record_and_replicas_with_lag() {
        let replica = |role: &str, applied: u64| {
            json!({
                "epoch": 2, "held_requests": 4, "seal": "none",
                "health": { "state": "running" },
                "plugin": { "role": role, "term": 5, "commit_position": 100, "applied_position": applied },
                "state_machine": { "applied_position": applied },
            })
        };
        let replicas = vec![
            (1, Ok(replica("follower", 90))),
            (2, Ok(replica("leader", 100))),
            (3, Err("connection refused".to_string())),
        ];
        let text = render_status(
            &document(
                None,
                RegionPhase::Deleting {
                    pending: [3].into_iter().collect(),
                },
            ),
            &replicas,
        );
        assert!(text.contains("epoch     2"), "{text}");
        assert!(
            text.contains("protocol  raft@0.1.1 (sha256:ab12)"),
            "{text}"
        );
        assert!(text.contains("phase     deleting (pending [3])"), "{text}");
        assert!(text.contains("swap      none in progress"), "{text}");
        let follower = text
            .lines()
            .find(|l| l.contains("follower"))
            .expect("row for node 1");
        let columns: Vec<&str> = follower.split_whitespace().collect();
        assert_eq!(
            columns[..8],
            ["1", "follower", "5", "90", "100", "10", "2", "4"]
        );
        assert!(
            text.contains("3      unreachable: connection refused"),
            "{text}"
        );
    }

    #[test]
    fn history_lists_epochs_and_audit() {
        let text = render_history(&document(None, RegionPhase::Active));
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[2].contains("native:raft"), "{text}");
        assert!(rows[2].contains("2025-12-01 12:06:58.000Z"), "{text}");
        assert!(rows[3].contains("raft@0.1.1") && rows[3].contains("(current)"));
        assert!(rows[3].contains("42") && rows[3].contains("note 2"));
        assert!(text.contains("#7      2025-12-01 12:06:57.123Z node 2: region r: swap to raft"));
    }

    #[test]
    fn outcome_and_delete_lines() {
        let outcome = json!({
            "region": "r", "epoch": 3, "start_position": 77, "requested": "raft",
            "note": "swapped", "rolled_back": false, "seconds": 0.025,
        });
        assert_eq!(
            render_outcome(&outcome),
            "swapped region r: epoch 3 runs raft from position 77 after 0.025s (swapped)"
        );
        let mut rolled = outcome.clone();
        rolled["rolled_back"] = json!(true);
        let mut running = rolled.clone();
        running["done"] = json!(false);
        running["step"] = json!("sealing");
        running["waiting_for"] = json!("waiting for seal reports");
        assert!(render_outcome(&running).contains("still running"));
        assert!(render_outcome(&running).contains("sealing"));
        assert!(render_outcome(&rolled).starts_with("ROLLED BACK"));
        assert_eq!(
            render_delete(&json!({ "region": "r", "deleted": true })),
            "region r deleted on every host"
        );
        assert!(
            render_delete(&json!({ "region": "r", "deleted": false, "pending": [2, 3] }))
                .contains("hosts [2,3] have not confirmed")
        );
    }
}
