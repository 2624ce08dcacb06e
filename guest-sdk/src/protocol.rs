//! The trait a protocol implements.

use crate::host::Host;
use crate::types::{
    Commands, InitConfig, Membership, Messages, NodeId, PluginInfo, Reads, SealProgress,
    SnapshotOffer, Status, TimerId,
};

/// A consensus protocol: a plain Rust type driven by events.
///
/// Every handler receives the effects handle `host`. Handlers must not
/// block; long work is split across timer firings. Panicking is allowed for
/// broken invariants: in a component it traps, which fences only this
/// region replica and rebuilds it with `init(recovering = true)`.
pub trait Protocol: Sized + 'static {
    /// Static description (name, version, guarantees).
    fn info() -> PluginInfo;

    /// Builds the protocol for one region replica. When
    /// `config.recovering` is true, reload state from `host`'s log and kv
    /// and continue applying after `config.applied_position`.
    fn init<H: Host>(host: &mut H, config: InitConfig) -> Self;

    /// Writes to order; each ends as an `apply` or a `reject`.
    fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands);

    /// Reads to answer with `complete_reads` or `reject`.
    fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads);

    /// Messages from peers. The default ignores them (single-copy protocols).
    fn on_messages<H: Host>(&mut self, host: &mut H, messages: Messages) {
        let _ = (host, messages);
    }

    /// Timers that fired.
    fn on_timers<H: Host>(&mut self, host: &mut H, timers: Vec<TimerId>) {
        let _ = (host, timers);
    }

    /// A new target membership. The default refuses.
    fn on_membership<H: Host>(
        &mut self,
        host: &mut H,
        membership: Membership,
    ) -> Result<(), String> {
        let _ = (host, membership);
        Err(format!(
            "{} does not support membership change",
            Self::info().name
        ))
    }

    /// A peer shipped a snapshot; return true to install it. The default refuses.
    fn on_snapshot<H: Host>(&mut self, host: &mut H, offer: SnapshotOffer) -> bool {
        let _ = (host, offer);
        false
    }

    /// Operator request to hand leadership to `target` (or to the best
    /// peer). The default refuses.
    fn transfer_leader<H: Host>(
        &mut self,
        host: &mut H,
        target: Option<NodeId>,
    ) -> Result<(), String> {
        let _ = (host, target);
        Err(format!("{} has no leader to transfer", Self::info().name))
    }

    /// Stops accepting writes and reports whether the applied state is final.
    fn seal<H: Host>(&mut self, host: &mut H) -> SealProgress;

    fn status<H: Host>(&mut self, host: &mut H) -> Status;
}
