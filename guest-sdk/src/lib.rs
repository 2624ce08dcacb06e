//! # Synod guest SDK
//!
//! Write a consensus protocol as a plain Rust type implementing
//! [`Protocol`], then export it as a Wasm component with one macro:
//!
//! ```
//! use synod_guest_sdk::*;
//!
//! /// Applies every write at once: a single copy, no replication.
//! struct Echo {
//!     position: u64,
//! }
//!
//! impl Protocol for Echo {
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             name: "echo".into(),
//!             version: "0.1.0".into(),
//!             consistency: Consistency::Linearizable,
//!             capabilities: Capabilities::default(),
//!         }
//!     }
//!     fn init<H: Host>(_host: &mut H, config: InitConfig) -> Self {
//!         Echo { position: config.applied_position }
//!     }
//!     fn on_commands<H: Host>(&mut self, host: &mut H, commands: Commands) {
//!         self.position += commands.len() as u64;
//!         let applies = Applies { ids: commands.ids, payloads: commands.payloads };
//!         host.apply(&applies, self.position);
//!     }
//!     fn on_reads<H: Host>(&mut self, host: &mut H, reads: Reads) {
//!         host.complete_reads(&reads.ids);
//!     }
//!     fn seal<H: Host>(&mut self, _host: &mut H) -> SealProgress {
//!         SealProgress::Sealed(self.position)
//!     }
//!     fn status<H: Host>(&mut self, _host: &mut H) -> Status {
//!         Status {
//!             role: Role::Leader, leader: None, term: 0,
//!             commit_position: self.position, applied_position: self.position,
//!             peers: vec![], counters: vec![],
//!         }
//!     }
//! }
//!
//! export_protocol!(Echo);
//!
//! // The same type runs natively against an in-memory host for unit tests:
//! let mut host = testing::MemoryHost::new(1);
//! let mut echo = Echo::init(&mut host, InitConfig::default());
//! echo.on_commands(&mut host, testing::commands(&[(7, b"put x")]));
//! assert_eq!(host.applied_ids(), vec![7]);
//! ```
//!
//! Build the crate for `wasm32-unknown-unknown` (with `crate-type =
//! ["cdylib", "rlib"]`) and encode the module as a component with
//! `wit-component`; `plugins/artifacts/build.rs` in the Synod repository
//! shows the two steps. See `docs/PLUGIN-GUIDE.md` for the whole contract.

mod host;
mod protocol;
pub mod testing;
mod types;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use host::Host;
pub use protocol::Protocol;
pub use types::*;

/// Outside `wasm32` the export macro has nothing to export.
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_protocol {
    ($protocol:ty) => {
        const _: fn() = || {
            fn assert_protocol<P: $crate::Protocol>() {}
            assert_protocol::<$protocol>();
        };
    };
}
