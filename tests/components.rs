//! Components that are not valid Synod plugins are refused at load time
//! with an error that says which problem it is; valid ones publish and run.

use synod::engine::{LoadError, PluginEngine, SandboxLimits};
use synod::node::NodeConfig;
use synod_tests::TestNode;

fn engine() -> PluginEngine {
    PluginEngine::new(SandboxLimits::default(), None).expect("engine")
}

#[test]
fn garbage_is_not_wasm() {
    let error = engine()
        .load(b"this is not wasm at all")
        .err()
        .expect("refused");
    assert!(matches!(error, LoadError::NotWasm), "{error}");
    assert!(error.to_string().contains("not a WebAssembly binary"));
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic + version 1.
    let error = engine().load(b"\0asm\x01\0\0\0").err().expect("refused");
    assert!(matches!(error, LoadError::CoreModule), "{error}");
    assert!(error.to_string().contains("synod plugin build"), "{error}");
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = synod_plugin_artifacts::STANDALONE_WASM;
    let error = engine()
        .load(&bytes[..bytes.len() / 2])
        .err()
        .expect("refused");
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
}

#[test]
fn a_component_of_another_world_is_refused() {
    let error = engine()
        .load(synod_plugin_artifacts::OTHER_WORLD_WASM)
        .err()
        .expect("refused");
    assert!(matches!(error, LoadError::WrongWorld { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("synod:protocol/protocol@0.1.2"),
        "{message}"
    );
    assert!(
        message.contains("run"),
        "names what it does export: {message}"
    );
}

#[test]
fn an_incompatible_major_version_is_refused() {
    let error = engine()
        .load(synod_plugin_artifacts::FUTURE_MAJOR_WASM)
        .err()
        .expect("refused");
    assert!(
        matches!(error, LoadError::IncompatibleVersion { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("9.0.0") && message.contains("0.1.2"),
        "{message}"
    );
}

#[test]
fn valid_plugins_load_with_their_info_and_hit_the_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let first =
        PluginEngine::new(SandboxLimits::default(), Some(cache.path().into())).expect("engine");
    let loaded = first
        .load(synod_plugin_artifacts::STANDALONE_WASM)
        .expect("loads");
    assert_eq!(loaded.info.name, "standalone");
    let mut cached: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    cached.sort();
    assert_eq!(cached.len(), 2, "one precompiled artifact and its seal");
    assert!(cached[1].to_string_lossy().ends_with(".cwasm.sum"));
    // A corrupt cache entry is ignored and recompiled, not trusted.
    let entry = cached[0].clone();
    assert!(entry.to_string_lossy().ends_with(".cwasm"));
    std::fs::write(&entry, b"garbage").expect("corrupt the cache");
    let second =
        PluginEngine::new(SandboxLimits::default(), Some(cache.path().into())).expect("engine");
    let reloaded = second
        .load(synod_plugin_artifacts::STANDALONE_WASM)
        .expect("recompiles");
    assert_eq!(reloaded.digest, loaded.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_over_http_validates_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(NodeConfig::new(1, dir.path().into()))
        .await
        .expect("node");
    for (bytes, fragment) in [
        (
            synod_plugin_artifacts::OTHER_WORLD_WASM,
            "does not implement",
        ),
        (synod_plugin_artifacts::FUTURE_MAJOR_WASM, "incompatible"),
        (&b"\0asm\x01\0\0\0"[..], "core WebAssembly module"),
    ] {
        let error = node
            .client
            .publish_component(bytes.to_vec())
            .await
            .expect_err("refused");
        assert_eq!(error.status(), Some(400), "{error}");
        assert_eq!(error.code(), Some("invalid_component"));
        assert!(error.to_string().contains(fragment), "{error}");
    }
    let published = node
        .client
        .publish_component(synod_plugin_artifacts::MISBEHAVE_WASM.to_vec())
        .await
        .expect("publish a valid component");
    assert_eq!(published["name"], "misbehave");
    let digest = published["digest"].as_str().expect("digest").to_string();
    node.client
        .create_region("by-digest", &format!("sha256:{digest}"), &[])
        .await
        .expect("region from a published digest");
    node.client.put("by-digest", "k", "v").await.expect("write");
    let listing = node.client.components().await.expect("list");
    assert!(
        listing["components"]
            .as_array()
            .is_some_and(|c| c.len() >= 2)
    );
    node.stop().await.expect("stop");
}

/// Counters of the WASI probe's status, by name.
fn probe_counters(engine: &PluginEngine) -> std::collections::BTreeMap<String, u64> {
    use synod::plugin::{Call, CallResult, PluginInstance};
    let loaded = engine
        .load(synod_plugin_artifacts::WASI_PROBE_WASM)
        .expect("a wasip2 component loads");
    assert!(loaded.uses_wasi, "the probe imports WASI");
    let mut instance = engine.instantiate(&loaded).expect("instantiate");
    let mut core = synod::region::core::RegionCore::default();
    instance
        .call(&mut core, Call::Init(Default::default()))
        .expect("init runs");
    match instance.call(&mut core, Call::Status).expect("status") {
        CallResult::Status(status) => status.counters.into_iter().collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wasi_is_virtual_and_deterministic() {
    let engine = engine();
    let first = probe_counters(&engine);
    assert_eq!(first["env-vars"], 0, "no environment");
    assert_eq!(first["file-readable"], 0, "no files");
    assert_eq!(first["dir-listable"], 0, "no directories");
    assert_eq!(first["tcp-connected"], 0, "no sockets");
    let wall = first["wall-seconds"];
    assert!(
        (946_684_800..946_684_900).contains(&wall),
        "virtual wall clock, not the real one: {wall}"
    );
    let second = probe_counters(&engine);
    assert_eq!(
        first, second,
        "two instances observe exactly the same world"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_component_serves_a_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(NodeConfig::new(1, dir.path().into()))
        .await
        .expect("node");
    let published = node
        .client
        .publish_component(synod_plugin_artifacts::WASI_PROBE_WASM.to_vec())
        .await
        .expect("publish");
    assert_eq!(published["name"], "wasi-probe");
    node.client
        .create_region("w", "wasi-probe", &[])
        .await
        .expect("region");
    node.client.put("w", "k", "v").await.expect("write");
    assert_eq!(
        node.client
            .get("w", "k", "linearizable")
            .await
            .expect("read"),
        Some("v".into())
    );
    node.stop().await.expect("stop");
}
