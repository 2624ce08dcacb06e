//! Component glue: the generated bindings, the import-backed [`Host`] and
//! the functions [`crate::export_protocol!`] expands into.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::host::Host;
use crate::protocol::Protocol;
use crate::types::*;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__synod_export_plugin",
        default_bindings_module: "::synod_guest_sdk::wasm::bindings",
        with: {
            "synod:protocol/types@0.1.2/batch": crate::types::Batch,
            "synod:protocol/types@0.1.2/commands": crate::types::Commands,
            "synod:protocol/types@0.1.2/applies": crate::types::Applies,
            "synod:protocol/types@0.1.2/read-level": crate::types::ReadLevel,
            "synod:protocol/types@0.1.2/reads": crate::types::Reads,
            "synod:protocol/types@0.1.2/messages": crate::types::Messages,
            "synod:protocol/types@0.1.2/membership": crate::types::Membership,
            "synod:protocol/types@0.1.2/init-config": crate::types::InitConfig,
            "synod:protocol/types@0.1.2/consistency": crate::types::Consistency,
            "synod:protocol/types@0.1.2/rejection": crate::types::Rejection,
            "synod:protocol/types@0.1.2/role": crate::types::Role,
            "synod:protocol/types@0.1.2/peer-progress": crate::types::PeerProgress,
            "synod:protocol/types@0.1.2/replica-status": crate::types::Status,
            "synod:protocol/types@0.1.2/seal-progress": crate::types::SealProgress,
            "synod:protocol/types@0.1.2/storage-error": crate::types::StorageError,
            "synod:protocol/types@0.1.2/log-bounds": crate::types::LogBounds,
            "synod:protocol/types@0.1.2/snapshot-offer": crate::types::SnapshotOffer,
            "synod:protocol/types@0.1.2/level": crate::types::Level,
            "synod:protocol/types@0.1.2/stamp": crate::types::Stamp,
        },
    });
}

use bindings::synod::protocol as imports;

/// The WIT plugin-info record as generated (its `capabilities` are bitflags).
pub type WitPluginInfo = bindings::synod::protocol::types::PluginInfo;

/// [`Host`] backed by the component's imports.
pub struct ImportHost;

impl Host for ImportHost {
    fn log_append(&mut self, first: u64, entries: &Batch) -> Result<(), StorageError> {
        imports::log::append(first, entries)
    }
    fn log_read(&mut self, first: u64, last: u64, max_bytes: u32) -> Result<Batch, StorageError> {
        imports::log::read(first, last, max_bytes)
    }
    fn log_bounds(&mut self) -> LogBounds {
        imports::log::bounds()
    }
    fn log_truncate_suffix(&mut self, from: u64) -> Result<(), StorageError> {
        imports::log::truncate_suffix(from)
    }
    fn log_compact_prefix(&mut self, through: u64) -> Result<(), StorageError> {
        imports::log::compact_prefix(through)
    }
    fn kv_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        imports::kv::get(key)
    }
    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        imports::kv::put(key, value)
    }
    fn kv_delete(&mut self, key: &[u8]) {
        imports::kv::delete(key)
    }
    fn send(&mut self, to: NodeId, messages: &Batch) {
        imports::network::send(to, messages)
    }
    fn send_eager(&mut self, to: NodeId, messages: &Batch) {
        imports::network::send_eager(to, messages)
    }
    fn now(&mut self) -> u64 {
        imports::clock::now()
    }
    fn set_timer(&mut self, id: TimerId, after_nanos: u64) {
        imports::clock::set_timer(id, after_nanos)
    }
    fn cancel_timer(&mut self, id: TimerId) {
        imports::clock::cancel_timer(id)
    }
    fn random(&mut self) -> u64 {
        imports::clock::random()
    }
    fn apply(&mut self, commands: &Applies, position: u64) {
        imports::state_machine::apply(commands, position)
    }
    fn apply_stamped(&mut self, commands: &Applies, stamps: &[Stamp], position: u64) {
        imports::state_machine::apply_stamped(commands, stamps, position)
    }
    fn compact_tombstones(&mut self, below: u64) {
        imports::state_machine::compact_tombstones(below)
    }
    fn query(&mut self, query: &[u8]) -> Vec<u8> {
        imports::state_machine::query(query)
    }
    fn snapshot(&mut self) -> Result<u64, StorageError> {
        imports::state_machine::snapshot()
    }
    fn snapshot_async(&mut self, notify: TimerId) -> Result<u64, StorageError> {
        imports::state_machine::snapshot_async(notify)
    }
    fn send_snapshot(&mut self, to: NodeId, metadata: &[u8]) {
        imports::state_machine::send_snapshot(to, metadata)
    }
    fn digest(&mut self) -> Vec<u8> {
        imports::state_machine::digest()
    }
    fn complete_reads(&mut self, ids: &[RequestId]) {
        imports::client::complete_reads(ids)
    }
    fn reject(&mut self, ids: &[RequestId], reason: &Rejection) {
        imports::client::reject(ids, reason)
    }
    fn log(&mut self, level: Level, message: &str) {
        imports::logging::log(level, message)
    }
}

/// Where an exported protocol's single instance lives.
pub type Slot<P> = RefCell<Option<P>>;

fn with_instance<P: Protocol, R>(
    slot: &'static LocalKey<Slot<P>>,
    f: impl FnOnce(&mut P, &mut ImportHost) -> R,
) -> R {
    slot.with(|cell| {
        let mut guard = cell.borrow_mut();
        let protocol = guard
            .as_mut()
            .expect("synod host contract violated: event delivered before init");
        f(protocol, &mut ImportHost)
    })
}

pub fn info<P: Protocol>() -> WitPluginInfo {
    use bindings::synod::protocol::types::Capabilities as Flags;
    let info = P::info();
    let caps = info.capabilities;
    let mut flags = Flags::empty();
    for (set, flag) in [
        (caps.replication, Flags::REPLICATION),
        (caps.linearizable_reads, Flags::LINEARIZABLE_READS),
        (caps.lease_reads, Flags::LEASE_READS),
        (caps.membership_change, Flags::MEMBERSHIP_CHANGE),
        (caps.leader_transfer, Flags::LEADER_TRANSFER),
        (caps.seal, Flags::SEAL),
        (caps.snapshots, Flags::SNAPSHOTS),
    ] {
        if set {
            flags |= flag;
        }
    }
    WitPluginInfo {
        name: info.name,
        version: info.version,
        consistency: info.consistency,
        capabilities: flags,
    }
}

pub fn init<P: Protocol>(slot: &'static LocalKey<Slot<P>>, config: InitConfig) {
    install_panic_hook();
    let protocol = P::init(&mut ImportHost, config);
    slot.with(|cell| *cell.borrow_mut() = Some(protocol));
}

pub fn on_commands<P: Protocol>(slot: &'static LocalKey<Slot<P>>, commands: Commands) {
    with_instance(slot, |p, h| p.on_commands(h, commands))
}

pub fn on_reads<P: Protocol>(slot: &'static LocalKey<Slot<P>>, reads: Reads) {
    with_instance(slot, |p, h| p.on_reads(h, reads))
}

pub fn on_messages<P: Protocol>(slot: &'static LocalKey<Slot<P>>, messages: Messages) {
    with_instance(slot, |p, h| p.on_messages(h, messages))
}

pub fn on_timers<P: Protocol>(slot: &'static LocalKey<Slot<P>>, timers: Vec<TimerId>) {
    with_instance(slot, |p, h| p.on_timers(h, timers))
}

pub fn on_membership<P: Protocol>(
    slot: &'static LocalKey<Slot<P>>,
    membership: Membership,
) -> Result<(), String> {
    with_instance(slot, |p, h| p.on_membership(h, membership))
}

pub fn on_snapshot<P: Protocol>(slot: &'static LocalKey<Slot<P>>, offer: SnapshotOffer) -> bool {
    with_instance(slot, |p, h| p.on_snapshot(h, offer))
}

pub fn transfer_leader<P: Protocol>(
    slot: &'static LocalKey<Slot<P>>,
    target: Option<NodeId>,
) -> Result<(), String> {
    with_instance(slot, |p, h| p.transfer_leader(h, target))
}

pub fn seal<P: Protocol>(slot: &'static LocalKey<Slot<P>>) -> SealProgress {
    with_instance(slot, |p, h| p.seal(h))
}

pub fn status<P: Protocol>(slot: &'static LocalKey<Slot<P>>) -> Status {
    with_instance(slot, |p, h| p.status(h))
}

/// Routes panic messages through the `logging` import: without WASI there
/// is no stderr, and the host should say *why* a replica trapped.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|panic| {
        imports::logging::log(Level::Error, &format!("plugin panicked: {panic}"));
    }));
}

/// Exports a [`Protocol`] type as the component's `protocol` interface.
/// Expands to nothing outside `wasm32`, so the same crate builds natively.
#[macro_export]
macro_rules! export_protocol {
    ($protocol:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::wasm::bindings::exports::synod::protocol::protocol as __wit;
            use $crate::wasm as __rt;

            ::std::thread_local! {
                static __SYNOD_INSTANCE: __rt::Slot<$protocol> = const { ::std::cell::RefCell::new(None) };
            }

            struct __SynodExport;

            impl __wit::Guest for __SynodExport {
                fn info() -> __rt::WitPluginInfo {
                    __rt::info::<$protocol>()
                }
                fn init(config: $crate::InitConfig) {
                    __rt::init(&__SYNOD_INSTANCE, config)
                }
                fn on_commands(commands: $crate::Commands) {
                    __rt::on_commands(&__SYNOD_INSTANCE, commands)
                }
                fn on_reads(reads: $crate::Reads) {
                    __rt::on_reads(&__SYNOD_INSTANCE, reads)
                }
                fn on_messages(messages: $crate::Messages) {
                    __rt::on_messages(&__SYNOD_INSTANCE, messages)
                }
                fn on_timers(timers: ::std::vec::Vec<$crate::TimerId>) {
                    __rt::on_timers(&__SYNOD_INSTANCE, timers)
                }
                fn on_membership(membership: $crate::Membership) -> ::std::result::Result<(), ::std::string::String> {
                    __rt::on_membership(&__SYNOD_INSTANCE, membership)
                }
                fn on_snapshot(offer: $crate::SnapshotOffer) -> bool {
                    __rt::on_snapshot(&__SYNOD_INSTANCE, offer)
                }
                fn transfer_leader(target: ::std::option::Option<$crate::NodeId>) -> ::std::result::Result<(), ::std::string::String> {
                    __rt::transfer_leader(&__SYNOD_INSTANCE, target)
                }
                fn seal() -> $crate::SealProgress {
                    __rt::seal(&__SYNOD_INSTANCE)
                }
                fn status() -> $crate::Status {
                    __rt::status(&__SYNOD_INSTANCE)
                }
            }

            $crate::wasm::bindings::__synod_export_plugin!(__SynodExport with_types_in $crate::wasm::bindings);
        };
    };
}
