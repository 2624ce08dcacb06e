//! The standalone protocol gives identical results compiled to a Wasm
//! component and linked natively, on the same command sequence: the same
//! replies, the same journal records, the same state digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use synod::clock::SystemClock;
use synod::engine::{PluginEngine, SandboxLimits};
use synod::journal::JournalRecord;
use synod::node::NodeConfig;
use synod::plugin::{Call, PluginSource};
use synod::region::core::{Output, RegionCore, Reply};
use synod::region::{RegionLog, RegionName};
use synod::state_machine::{KvCommand, KvQuery, KvStateMachine};
use synod_guest_sdk::{Commands, InitConfig, Membership, ReadLevel, Reads};
use synod_tests::TestNode;

/// A deterministic mixed workload: puts, deletes, CAS hits and misses,
/// and one payload that does not decode.
fn workload() -> Vec<Vec<Vec<u8>>> {
    let mut batches = Vec::new();
    let mut state = 0x1234_5678u64;
    for batch_index in 0..40 {
        let mut batch = Vec::new();
        for i in 0..(1 + batch_index % 7) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (state >> 33) % 12).into_bytes();
            let value = format!("v{batch_index}-{i}").into_bytes();
            let command = match (state >> 20) % 4 {
                0 => KvCommand::Delete { key },
                1 => KvCommand::Cas {
                    key,
                    expected: None,
                    new: Some(value.into()),
                },
                _ => KvCommand::Put { key, value },
            };
            batch.push(command.encode());
        }
        if batch_index == 13 {
            batch.push(vec![0xff, 0xfe, 0xfd]);
        }
        batches.push(batch);
    }
    batches
}

type Trace = (Vec<(u64, Reply)>, Vec<JournalRecord>, [u8; 32], String);

fn run(source: &PluginSource) -> Trace {
    let mut core = RegionCore::new(
        RegionName::new("same").expect("name"),
        1,
        RegionLog::default(),
        BTreeMap::new(),
        KvStateMachine::default(),
        Arc::new(SystemClock::new()),
        42,
    );
    let mut instance = source.instantiate().expect("instantiate");
    let init = InitConfig {
        self_id: 1,
        membership: Membership {
            voters: vec![1],
            learners: vec![],
        },
        params: vec![("snapshot-interval".into(), "25".into())],
        recovering: false,
        applied_position: 0,
    };
    instance.call(&mut core, Call::Init(init)).expect("init");
    core.commit_callback();
    let mut replies = Vec::new();
    let mut records = Vec::new();
    let mut next_id = 0u64;
    for batch in workload() {
        let mut commands = Commands::default();
        for payload in &batch {
            next_id += 1;
            commands.ids.push(next_id);
            commands.payloads.push(payload);
            commands.key_ends.push(0);
        }
        instance
            .call(&mut core, Call::Commands(commands))
            .expect("commands");
        let mut effects = core.commit_callback();
        // Reads of every key after each batch.
        let mut reads = Reads::default();
        for k in 0..12 {
            next_id += 1;
            core.register_read(
                next_id,
                KvQuery::Get {
                    key: format!("k{k}").into_bytes(),
                }
                .encode(),
            );
            reads.ids.push(next_id);
            reads.levels.push(ReadLevel::Linearizable);
        }
        instance.call(&mut core, Call::Reads(reads)).expect("reads");
        let read_effects = core.commit_callback();
        effects.outputs.extend(read_effects.outputs);
        for output in effects.outputs {
            if let Output::Reply { id, reply } = output {
                replies.push((id, reply));
            }
        }
        records.extend(effects.records);
    }
    let bounds = core.log_view().bounds();
    (
        replies,
        records,
        core.state().digest(),
        format!("{bounds:?}"),
    )
}

#[test]
fn same_commands_same_results() {
    let engine = Arc::new(PluginEngine::new(SandboxLimits::default(), None).expect("engine"));
    let component = engine
        .load(synod_plugin_artifacts::STANDALONE_WASM)
        .expect("load");
    let wasm = run(&PluginSource::Wasm { engine, component });
    let native = run(&PluginSource::native::<synod_plugin_standalone::Standalone>());
    assert!(wasm.0.len() > 500, "the workload produced replies");
    assert!(
        wasm.1
            .iter()
            .any(|r| matches!(r, JournalRecord::LogCompact { .. })),
        "the workload crossed a snapshot and compaction"
    );
    assert_eq!(wasm.0, native.0, "replies");
    assert_eq!(wasm.1, native.1, "journal records");
    assert_eq!(wasm.2, native.2, "state digest");
    assert_eq!(wasm.3, native.3, "log bounds");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_and_wasm_regions_converge_on_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(NodeConfig::new(1, dir.path().into()))
        .await
        .expect("node");
    node.client
        .create_region("w", "standalone", &[])
        .await
        .expect("wasm region");
    node.client
        .create_region("n", "native:standalone", &[])
        .await
        .expect("native region");
    for i in 0..200 {
        let key = format!("k{}", i % 17);
        for region in ["w", "n"] {
            node.client
                .put(region, &key, &format!("v{i}"))
                .await
                .expect("put");
            if i % 5 == 0 {
                node.client
                    .cas(region, &key, Some("nope"), Some("x"))
                    .await
                    .expect("cas");
            }
        }
    }
    let wasm = node.client.region_status("w").await.expect("status");
    let native = node.client.region_status("n").await.expect("status");
    assert_eq!(
        wasm["state_machine"]["digest"],
        native["state_machine"]["digest"]
    );
    assert_eq!(native["protocol"]["id"], "native:standalone");
    node.stop().await.expect("stop");
}

/// The standalone component as built against contract 0.1.0, before 0.1.1
/// added `apply-stamped` (checked in, so later contract changes cannot
/// rebuild it).
const STANDALONE_CONTRACT_0_1_0: &[u8] = include_bytes!("fixtures/standalone-contract-0.1.0.wasm");

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Goal: a component built against 0.1.0 still loads on a 0.1.2 host (its
/// imports `…@0.1.0` are satisfied by the host's 0.1.2 ones, and its export
/// `synod:protocol/protocol@0.1.0` is found by the host's 0.1.2 bindings:
/// wasmtime matches names semver-compatibly both ways) and runs exactly like
/// the same protocol built today.
#[test]
fn a_component_built_against_contract_0_1_0_still_loads_and_runs() {
    assert!(contains(
        STANDALONE_CONTRACT_0_1_0,
        "synod:protocol/protocol@0.1.0"
    ));
    assert!(!contains(STANDALONE_CONTRACT_0_1_0, "@0.1.1"));
    assert!(!contains(STANDALONE_CONTRACT_0_1_0, "apply-stamped"));
    assert!(contains(
        synod_plugin_artifacts::STANDALONE_WASM,
        "synod:protocol/protocol@0.1.2"
    ));
    let engine = Arc::new(PluginEngine::new(SandboxLimits::default(), None).expect("engine"));
    let component = engine.load(STANDALONE_CONTRACT_0_1_0).expect("load 0.1.0");
    let old = run(&PluginSource::Wasm { engine, component });
    let native = run(&PluginSource::native::<synod_plugin_standalone::Standalone>());
    assert!(old.0.len() > 500, "the workload produced replies");
    assert_eq!(old.0, native.0, "replies");
    assert_eq!(old.1, native.1, "journal records");
    assert_eq!(old.2, native.2, "state digest");
}

/// The Raft component as built against contract 0.1.1, before 0.1.2 added
/// `snapshot-async` (checked in, so later contract changes cannot rebuild
/// it). It snapshots with the synchronous `snapshot()`.
const RAFT_CONTRACT_0_1_1: &[u8] = include_bytes!("fixtures/raft-contract-0.1.1.wasm");

/// What a single-voter Raft did over `workload()`: callbacks that took a
/// synchronous snapshot, callbacks that asked for an async one, the log
/// compactions, and the final state digest.
struct RaftRun {
    sync_snapshots: usize,
    async_requests: usize,
    compactions: usize,
    digest: [u8; 32],
}

fn run_raft(source: &PluginSource) -> RaftRun {
    let mut core = RegionCore::new(
        RegionName::new("raft").expect("name"),
        1,
        RegionLog::default(),
        BTreeMap::new(),
        KvStateMachine::default(),
        Arc::new(SystemClock::new()),
        7,
    );
    let mut instance = source.instantiate().expect("instantiate");
    let init = InitConfig {
        self_id: 1,
        membership: Membership {
            voters: vec![1],
            learners: vec![],
        },
        params: vec![
            ("snapshot-interval".into(), "25".into()),
            ("synod.first-leader".into(), "1".into()),
        ],
        recovering: false,
        applied_position: 0,
    };
    let mut run = RaftRun {
        sync_snapshots: 0,
        async_requests: 0,
        compactions: 0,
        digest: [0; 32],
    };
    let mut notify = Vec::new();
    let mut tally = |effects: synod::region::core::Effects, notify: &mut Vec<u64>| {
        run.sync_snapshots += usize::from(effects.snapshot.is_some());
        if let Some(request) = &effects.snapshot_request {
            run.async_requests += 1;
            // The host would save it, then fire the timer.
            notify.push(request.notify);
        }
        run.compactions += effects
            .records
            .iter()
            .filter(|r| matches!(r, JournalRecord::LogCompact { .. }))
            .count();
    };
    instance.call(&mut core, Call::Init(init)).expect("init");
    tally(core.commit_callback(), &mut notify);
    // The election timer: a single voter elects itself.
    instance
        .call(&mut core, Call::Timers(vec![1]))
        .expect("election");
    tally(core.commit_callback(), &mut notify);
    let mut next_id = 0u64;
    for batch in workload() {
        let mut commands = Commands::default();
        for payload in &batch {
            next_id += 1;
            commands.ids.push(next_id);
            commands.payloads.push(payload);
            commands.key_ends.push(0);
        }
        instance
            .call(&mut core, Call::Commands(commands))
            .expect("commands");
        tally(core.commit_callback(), &mut notify);
        // Timers Raft armed at 0 (apply continuation) and notifications.
        let mut timers = std::mem::take(&mut notify);
        timers.push(3);
        instance
            .call(&mut core, Call::Timers(timers))
            .expect("timers");
        tally(core.commit_callback(), &mut notify);
    }
    run.digest = core.state().digest();
    run
}

/// Goal: a component built against 0.1.1 (Raft, before `snapshot-async`)
/// loads on a 0.1.2 host and snapshots exactly as before: synchronously,
/// compacting in the same callback; today's build asks for async saves and
/// compacts only after the notification. Both reach the same state.
#[test]
fn a_component_built_against_contract_0_1_1_still_snapshots_synchronously() {
    assert!(contains(
        RAFT_CONTRACT_0_1_1,
        "synod:protocol/protocol@0.1.1"
    ));
    assert!(!contains(RAFT_CONTRACT_0_1_1, "snapshot-async"));
    assert!(contains(
        synod_plugin_artifacts::RAFT_WASM,
        "snapshot-async"
    ));
    let engine = Arc::new(PluginEngine::new(SandboxLimits::default(), None).expect("engine"));
    let component = engine.load(RAFT_CONTRACT_0_1_1).expect("load 0.1.1");
    let old = run_raft(&PluginSource::Wasm {
        engine: engine.clone(),
        component,
    });
    let component = engine
        .load(synod_plugin_artifacts::RAFT_WASM)
        .expect("load today's raft");
    let new = run_raft(&PluginSource::Wasm { engine, component });
    assert!(
        old.sync_snapshots >= 3,
        "old: {} snapshots",
        old.sync_snapshots
    );
    assert_eq!(old.async_requests, 0);
    assert_eq!(old.compactions, old.sync_snapshots);
    assert_eq!(new.sync_snapshots, 0);
    assert!(
        new.async_requests >= 3,
        "new: {} requests",
        new.async_requests
    );
    assert_eq!(new.compactions, new.async_requests);
    assert_eq!(old.digest, new.digest, "state digest");
}
