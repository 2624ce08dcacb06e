//! One running plugin instance, Wasm or native, behind one trait.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use synod_guest_sdk::{
    Commands, InitConfig, Membership, Messages, NodeId, PluginInfo, Protocol, Reads, SealProgress,
    SnapshotOffer, Status, TimerId,
};

use crate::region::core::RegionCore;

/// One event for a plugin instance: one export call.
#[derive(Debug)]
pub enum Call {
    Init(InitConfig),
    Commands(Commands),
    Reads(Reads),
    Messages(Messages),
    Timers(Vec<TimerId>),
    Membership(Membership),
    Snapshot(SnapshotOffer),
    TransferLeader(Option<NodeId>),
    Seal,
    Status,
}

impl Call {
    pub fn name(&self) -> &'static str {
        match self {
            Call::Init(_) => "init",
            Call::Commands(_) => "on-commands",
            Call::Reads(_) => "on-reads",
            Call::Messages(_) => "on-messages",
            Call::Timers(_) => "on-timers",
            Call::Membership(_) => "on-membership",
            Call::Snapshot(_) => "on-snapshot",
            Call::TransferLeader(_) => "transfer-leader",
            Call::Seal => "seal",
            Call::Status => "status",
        }
    }
}

/// What an export returned.
#[derive(Debug)]
pub enum CallResult {
    Unit,
    Membership(Result<(), String>),
    Snapshot(bool),
    TransferLeader(Result<(), String>),
    Seal(SealProgress),
    Status(Status),
}

/// Why a plugin call failed. Every variant fences the replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginFailure {
    #[error("plugin panicked: {0}")]
    Panic(String),
    #[error("plugin ran out of fuel ({0} units per call)")]
    OutOfFuel(u64),
    #[error("plugin exceeded the {0} ms time limit of one call")]
    Deadline(u64),
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin broke the host contract: {0}")]
    Contract(String),
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

/// A live plugin instance. `call` lends it the region's core for the
/// duration of one export call.
pub trait PluginInstance: Send {
    fn call(&mut self, core: &mut RegionCore, call: Call) -> Result<CallResult, PluginFailure>;

    /// Wasm fuel consumed since the last time this was asked (0 for
    /// instances that do not meter fuel).
    fn take_fuel_used(&mut self) -> u64 {
        0
    }
}

/// How to (re)build a region's plugin instance.
#[derive(Clone)]
pub enum PluginSource {
    Wasm {
        engine: Arc<crate::engine::PluginEngine>,
        component: Arc<crate::engine::LoadedComponent>,
    },
    Native {
        info: PluginInfo,
        factory: Arc<dyn Fn() -> Box<dyn PluginInstance> + Send + Sync>,
    },
}

impl PluginSource {
    /// A protocol linked into the host, run without Wasm.
    pub fn native<P: Protocol + Send>() -> Self {
        PluginSource::Native {
            info: P::info(),
            factory: Arc::new(|| Box::new(NativeInstance::<P> { protocol: None })),
        }
    }

    pub fn info(&self) -> PluginInfo {
        match self {
            PluginSource::Wasm { component, .. } => component.info.clone(),
            PluginSource::Native { info, .. } => info.clone(),
        }
    }

    /// `sha256:<hex>` for components, `native:<name>` otherwise.
    pub fn id(&self) -> String {
        match self {
            PluginSource::Wasm { component, .. } => format!("sha256:{}", component.digest),
            PluginSource::Native { info, .. } => format!("native:{}", info.name),
        }
    }

    pub fn instantiate(&self) -> Result<Box<dyn PluginInstance>, PluginFailure> {
        match self {
            PluginSource::Wasm { engine, component } => {
                Ok(Box::new(engine.instantiate(component)?))
            }
            PluginSource::Native { factory, .. } => Ok(factory()),
        }
    }
}

/// A protocol running natively through the same trait as in Wasm. It has
/// no fuel, time or memory limits: native protocols are trusted code.
pub struct NativeInstance<P> {
    protocol: Option<P>,
}

impl<P: Protocol + Send> PluginInstance for NativeInstance<P> {
    fn call(&mut self, core: &mut RegionCore, call: Call) -> Result<CallResult, PluginFailure> {
        let protocol = &mut self.protocol;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Call::Init(config) = call {
                *protocol = Some(P::init(core, config));
                return Ok(CallResult::Unit);
            }
            let Some(p) = protocol.as_mut() else {
                return Err(PluginFailure::Contract("event before init".into()));
            };
            Ok(match call {
                Call::Init(_) => CallResult::Unit,
                Call::Commands(commands) => {
                    p.on_commands(core, commands);
                    CallResult::Unit
                }
                Call::Reads(reads) => {
                    p.on_reads(core, reads);
                    CallResult::Unit
                }
                Call::Messages(messages) => {
                    p.on_messages(core, messages);
                    CallResult::Unit
                }
                Call::Timers(timers) => {
                    p.on_timers(core, timers);
                    CallResult::Unit
                }
                Call::Membership(m) => CallResult::Membership(p.on_membership(core, m)),
                Call::Snapshot(offer) => CallResult::Snapshot(p.on_snapshot(core, offer)),
                Call::TransferLeader(target) => {
                    CallResult::TransferLeader(p.transfer_leader(core, target))
                }
                Call::Seal => CallResult::Seal(p.seal(core)),
                Call::Status => CallResult::Status(p.status(core)),
            })
        }));
        match outcome {
            Ok(result) => result,
            Err(payload) => {
                self.protocol = None;
                Err(PluginFailure::Panic(panic_message(payload.as_ref())))
            }
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic payload".into()
    }
}
