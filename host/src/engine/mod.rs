//! The Wasm engine: loads, validates and caches plugin components and
//! instantiates them inside a sandbox (fuel and a wall-clock deadline per
//! call, a memory limit per instance, no ambient authority).

mod bindings;
pub mod cache;
mod convert;
mod imports;
mod wasi;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use synod_guest_sdk::PluginInfo;
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use self::bindings::{Plugin, PluginPre};
use self::imports::{ContractViolation, MemoryLimiter, StoreData};
use crate::plugin::{Call, CallResult, PluginFailure, PluginInstance};
use crate::region::core::RegionCore;

/// The contract this host implements.
pub const WIT_PACKAGE: &str = "synod:protocol";
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 2);

/// How often the engine's epoch advances; the per-call deadline is counted
/// in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Pool slots kept beyond `instances_max` for the probe instance that
/// loading a component makes (one at a time, see `PluginEngine::probing`):
/// publishing never fails because regions use every instance.
pub const PROBE_SLOTS: u32 = 1;

/// Sandbox limits applied to every plugin instance.
#[derive(Clone, Debug)]
pub struct SandboxLimits {
    /// Fuel (roughly Wasm instructions) one export call may burn.
    pub fuel_per_call: u64,
    /// Wall-clock time one export call may take.
    pub deadline_per_call: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes_max: usize,
    /// Region instances alive at once (sizes the pooling allocator, which
    /// holds [`PROBE_SLOTS`] more for loading components).
    pub instances_max: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            fuel_per_call: 2_000_000_000,
            deadline_per_call: Duration::from_secs(2),
            memory_bytes_max: 256 << 20,
            instances_max: 64,
        }
    }
}

/// Why a component was refused at load time.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly binary (it does not start with the \\0asm magic)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build it with `synod plugin build` (or encode it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("unknown WebAssembly binary version/layer {0:02x?}")]
    UnknownLayer([u8; 4]),
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "component does not implement the synod:protocol plugin world: expected it to export `synod:protocol/protocol@{expected}`, but it exports [{exports}]"
    )]
    WrongWorld { expected: String, exports: String },
    #[error(
        "component was built against {found}, which is incompatible with this host's synod:protocol@{supported} (different major version)"
    )]
    IncompatibleVersion { found: String, supported: String },
    #[error(
        "component imports `{0}`, which Synod does not provide: plugins get the synod:protocol imports and a virtual WASI 0.2 (no files, sockets, environment or real clocks)"
    )]
    UnsupportedImport(String),
    #[error("component could not be prepared: {0}")]
    Link(String),
    #[error("component's info() failed: {0}")]
    Info(String),
}

/// A validated, compiled component ready to instantiate.
pub struct LoadedComponent {
    /// sha256 hex of the component bytes.
    pub digest: String,
    pub info: PluginInfo,
    pub size_bytes: usize,
    /// Whether it imports (virtual) WASI.
    pub uses_wasi: bool,
    pre: PluginPre<StoreData>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not configure the Wasm engine: {0}")]
pub struct EngineError(String);

/// wasmtime configured for plugins, with a compile cache on disk.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<StoreData>,
    limits: SandboxLimits,
    cache_dir: Option<PathBuf>,
    cache_stats: cache::CacheStats,
    /// Loaded components by digest: loading the same bytes twice is free.
    loaded: Mutex<HashMap<String, Arc<LoadedComponent>>>,
    /// Held while a probe instance lives, so probes use at most
    /// [`PROBE_SLOTS`] pool slots.
    probing: Mutex<()>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// `cache_dir` holds precompiled components; `None` disables the cache.
    pub fn new(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Result<Self, EngineError> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = limits.instances_max.saturating_add(PROBE_SLOTS);
        // A component holds its module plus wit-component's small shim
        // modules (each with a table), hence the multipliers.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 4)
            .total_memories(instances)
            .total_tables(instances * 4)
            .max_memory_size(limits.memory_bytes_max);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        Plugin::add_to_linker::<StoreData, wasmtime::component::HasSelf<StoreData>>(
            &mut linker,
            |data| data,
        )
        .map_err(|e| EngineError(format!("{e:#}")))?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| EngineError(format!("{e:#}")))?;

        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| EngineError(format!("cache dir {}: {e}", dir.display())))?;
            cache::remove_stale_temps(dir);
        }

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("synod-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| EngineError(format!("epoch thread: {e}")))?;

        Ok(Self {
            engine,
            linker,
            limits,
            cache_dir,
            cache_stats: cache::CacheStats::default(),
            loaded: Mutex::new(HashMap::new()),
            probing: Mutex::new(()),
            ticker_stop,
        })
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Compile cache outcomes since this engine started.
    pub fn cache_stats(&self) -> cache::CacheStatsSnapshot {
        self.cache_stats.snapshot()
    }

    /// sha256 hex of component bytes.
    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Validates and compiles a component (or takes it from the cache).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        let digest = Self::digest(bytes);
        if let Some(loaded) = self.lock_loaded().get(&digest) {
            return Ok(loaded.clone());
        }
        check_header(bytes)?;
        let component = self.compile(bytes, &digest)?;
        let uses_wasi = check_contract(&self.engine, &component)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(root_cause(&e)))?;
        let pre = PluginPre::new(instance_pre).map_err(|e| LoadError::Link(root_cause(&e)))?;
        let mut probe = LoadedComponent {
            digest: digest.clone(),
            info: unknown_info(),
            size_bytes: bytes.len(),
            uses_wasi,
            pre,
        };
        {
            // A poisoned lock guards nothing but the slot count.
            let _slot = self
                .probing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut instance = self
                .instantiate(&probe)
                .map_err(|e| LoadError::Info(e.to_string()))?;
            probe.info = instance
                .info()
                .map_err(|e| LoadError::Info(e.to_string()))?;
        }
        let loaded = Arc::new(probe);
        self.lock_loaded().insert(digest, loaded.clone());
        Ok(loaded)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedComponent>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Some(dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish())))
    }

    fn compile(&self, bytes: &[u8], digest: &str) -> Result<Component, LoadError> {
        let cache_path = self.cache_path(digest);
        if let Some(path) = &cache_path
            && cache::verified(path, &self.cache_stats)
        {
            // SAFETY: the file at `path` passed the cache's trust rule: it is
            // the file this node wrote (same identity, crc32 intact) or its
            // sha256 matches what was written, so these are the bytes
            // wasmtime produced; the file name includes the engine's
            // compatibility hash, so a compatible engine produced them. The
            // node never modifies a cache file after writing it.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => {
                    self.cache_stats
                        .hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(component);
                }
                Err(error) => cache::reject(path, &root_cause(&error), &self.cache_stats),
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(root_cause(&e)))?;
        // SAFETY: `compiled` was just produced by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| LoadError::Invalid(root_cause(&e)))?;
        if let Some(path) = cache_path
            && let Err(error) = cache::write(&path, &compiled, &self.cache_stats)
        {
            tracing::warn!(path = %path.display(), %error, "could not write compile cache");
        }
        Ok(component)
    }

    /// A fresh sandboxed instance of `component`.
    pub fn instantiate(&self, component: &LoadedComponent) -> Result<WasmInstance, PluginFailure> {
        let seed = u64::from_str_radix(component.digest.get(..16).unwrap_or("0"), 16).unwrap_or(0);
        let data = StoreData {
            core: RegionCore::default(),
            limiter: MemoryLimiter {
                limit_bytes: self.limits.memory_bytes_max,
                hit: false,
            },
            wasi: wasi::virtual_context(seed),
            table: wasmtime::component::ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limiter);
        let mut instance = WasmInstance {
            store,
            plugin: None,
            limits: self.limits.clone(),
            uses_wasi: component.uses_wasi,
            fuel_used: 0,
        };
        instance
            .arm()
            .map_err(|e| PluginFailure::Instantiate(e.to_string()))?;
        let instantiated = outside_async(component.uses_wasi, || {
            component.pre.instantiate(&mut instance.store)
        });
        let plugin = instantiated.map_err(|e| instance.classify(e, None))?;
        instance.plugin = Some(plugin);
        Ok(instance)
    }
}

/// What a component is known to be before its `info` export is called.
fn unknown_info() -> PluginInfo {
    PluginInfo {
        name: String::new(),
        version: String::new(),
        consistency: synod_guest_sdk::Consistency::Eventual,
        capabilities: Default::default(),
    }
}

fn root_cause(error: &wasmtime::Error) -> String {
    format!("{:#}", error.root_cause())
}

/// Tells a core module or garbage from a component before compiling.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    let layer = [bytes[4], bytes[5], bytes[6], bytes[7]];
    match layer {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        other => Err(LoadError::UnknownLayer(other)),
    }
}

/// `synod:protocol/<interface>@<version>` → version triple.
fn contract_version(name: &str) -> Option<(u64, u64, u64)> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    let (_, version) = rest.split_once('@')?;
    let mut parts = version.split(['.', '-', '+']).map(str::parse::<u64>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// Semver compatibility: same major, and for 0.x the same minor.
fn compatible(version: (u64, u64, u64)) -> bool {
    let (major, minor, _) = WIT_VERSION;
    version.0 == major && (major != 0 || version.1 == minor)
}

fn supported_version() -> String {
    let (major, minor, patch) = WIT_VERSION;
    format!("{major}.{minor}.{patch}")
}

/// Checks the component's exports and imports name this contract at a
/// compatible version, so the error says exactly what is wrong. Returns
/// whether it imports WASI (satisfied by virtual versions).
fn check_contract(engine: &Engine, component: &Component) -> Result<bool, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let protocol_export = exports
        .iter()
        .find(|name| name.starts_with("synod:protocol/protocol@"));
    match protocol_export {
        None => {
            return Err(LoadError::WrongWorld {
                expected: supported_version(),
                exports: exports.join(", "),
            });
        }
        Some(name) => {
            let version = contract_version(name).unwrap_or((u64::MAX, 0, 0));
            if !compatible(version) {
                return Err(LoadError::IncompatibleVersion {
                    found: name.clone(),
                    supported: supported_version(),
                });
            }
        }
    }
    let mut uses_wasi = false;
    for (name, item) in ty.imports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Err(LoadError::UnsupportedImport(name.to_string()));
        }
        if name.starts_with("wasi:") {
            // Satisfied by the virtual WASI of `wasi.rs` (or refused when
            // linking if it names an interface or version not provided).
            uses_wasi = true;
            continue;
        }
        match contract_version(name) {
            Some(version) if compatible(version) => {}
            Some(_) => {
                return Err(LoadError::IncompatibleVersion {
                    found: name.to_string(),
                    supported: supported_version(),
                });
            }
            None => return Err(LoadError::UnsupportedImport(name.to_string())),
        }
    }
    Ok(uses_wasi)
}

/// Runs `f`, leaving tokio's async context first when the component uses
/// WASI: wasmtime-wasi's synchronous bindings block on a runtime, which
/// tokio forbids on a worker thread.
fn outside_async<R: Send>(uses_wasi: bool, f: impl FnOnce() -> R + Send) -> R {
    if !uses_wasi {
        return f();
    }
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        // A current-thread runtime cannot step aside: run the call on a
        // short-lived thread that has no runtime.
        Ok(_) => std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// One sandboxed plugin instance. After any failure it must be dropped:
/// wasmtime refuses to re-enter a trapped component.
pub struct WasmInstance {
    store: Store<StoreData>,
    plugin: Option<Plugin>,
    limits: SandboxLimits,
    uses_wasi: bool,
    /// Fuel consumed by calls since [`PluginInstance::take_fuel_used`].
    fuel_used: u64,
}

impl WasmInstance {
    /// Refuels and re-arms the deadline before entering the guest.
    fn arm(&mut self) -> wasmtime::Result<()> {
        self.store.set_fuel(self.limits.fuel_per_call)?;
        let ticks = self.limits.deadline_per_call.as_millis() / EPOCH_TICK.as_millis();
        self.store
            .set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        self.store.data_mut().limiter.hit = false;
        Ok(())
    }

    fn classify(&mut self, error: wasmtime::Error, panic: Option<String>) -> PluginFailure {
        let data = self.store.data_mut();
        if let Some(violation) = error.downcast_ref::<ContractViolation>() {
            return PluginFailure::Contract(violation.0.clone());
        }
        if data.limiter.hit {
            return PluginFailure::MemoryLimit(self.limits.memory_bytes_max as u64);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => PluginFailure::OutOfFuel(self.limits.fuel_per_call),
            Some(Trap::Interrupt) => {
                PluginFailure::Deadline(self.limits.deadline_per_call.as_millis() as u64)
            }
            Some(trap) => match panic {
                Some(message) => PluginFailure::Panic(message),
                None => PluginFailure::Trap(trap.to_string()),
            },
            None => PluginFailure::Trap(root_cause(&error)),
        }
    }

    /// The plugin's static description.
    pub fn info(&mut self) -> Result<PluginInfo, PluginFailure> {
        let Some(plugin) = self.plugin.as_ref() else {
            return Err(PluginFailure::Contract(
                "instance is not initialized".into(),
            ));
        };
        let guest = plugin.synod_protocol_protocol().clone();
        self.arm().map_err(|e| PluginFailure::Trap(e.to_string()))?;
        let store = &mut self.store;
        match outside_async(self.uses_wasi, || guest.call_info(store)) {
            Ok(info) => Ok(convert::info_from_wit(info)),
            Err(error) => Err(self.classify(error, None)),
        }
    }
}

impl PluginInstance for WasmInstance {
    fn call(&mut self, core: &mut RegionCore, call: Call) -> Result<CallResult, PluginFailure> {
        let Some(plugin) = self.plugin.as_ref() else {
            return Err(PluginFailure::Contract(
                "instance is not initialized".into(),
            ));
        };
        let guest = plugin.synod_protocol_protocol().clone();
        self.arm().map_err(|e| PluginFailure::Trap(e.to_string()))?;
        std::mem::swap(core, &mut self.store.data_mut().core);
        let store = &mut self.store;
        let result = outside_async(self.uses_wasi, || match call {
            Call::Init(config) => guest
                .call_init(&mut *store, &convert::init_config_to_wit(config))
                .map(|()| CallResult::Unit),
            Call::Commands(commands) => guest
                .call_on_commands(&mut *store, &convert::commands_to_wit(commands))
                .map(|()| CallResult::Unit),
            Call::Reads(reads) => guest
                .call_on_reads(&mut *store, &convert::reads_to_wit(reads))
                .map(|()| CallResult::Unit),
            Call::Messages(messages) => guest
                .call_on_messages(&mut *store, &convert::messages_to_wit(messages))
                .map(|()| CallResult::Unit),
            Call::Timers(timers) => guest
                .call_on_timers(&mut *store, &timers)
                .map(|()| CallResult::Unit),
            Call::Membership(membership) => guest
                .call_on_membership(&mut *store, &convert::membership_to_wit(membership))
                .map(CallResult::Membership),
            Call::Snapshot(offer) => guest
                .call_on_snapshot(&mut *store, &convert::snapshot_offer_to_wit(offer))
                .map(CallResult::Snapshot),
            Call::TransferLeader(target) => guest
                .call_transfer_leader(&mut *store, target)
                .map(CallResult::TransferLeader),
            Call::Seal => guest
                .call_seal(&mut *store)
                .map(|p| CallResult::Seal(convert::seal_from_wit(p))),
            Call::Status => guest
                .call_status(&mut *store)
                .map(|s| CallResult::Status(convert::status_from_wit(s))),
        });
        std::mem::swap(core, &mut self.store.data_mut().core);
        if let Ok(left) = self.store.get_fuel() {
            self.fuel_used += self.limits.fuel_per_call.saturating_sub(left);
        }
        match result {
            Ok(result) => Ok(result),
            // A panic message, if any, was logged into the real core.
            Err(error) => Err(self.classify(error, core.take_last_panic())),
        }
    }

    fn take_fuel_used(&mut self) -> u64 {
        std::mem::take(&mut self.fuel_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(
            contract_version("synod:protocol/log@0.1.0"),
            Some((0, 1, 0))
        );
        assert_eq!(
            contract_version("synod:protocol/log@0.1.3-pre"),
            Some((0, 1, 3))
        );
        assert_eq!(contract_version("wasi:io/poll@0.2.0"), None);
        assert!(compatible((0, 1, 7)));
        assert!(!compatible((0, 2, 0)));
        assert!(!compatible((9, 0, 0)));
    }

    #[test]
    fn headers_are_classified() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
