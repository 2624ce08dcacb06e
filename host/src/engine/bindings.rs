//! The generated host side of `wit/synod.wit`. Only `bindgen!` lives here;
//! the adapters are in `imports.rs` and `convert.rs`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    // Imports may trap: a plugin that breaks the contract (malformed batch,
    // non-advancing apply) is stopped rather than trusted.
    imports: { default: trappable },
});

pub use self::synod::protocol::types;
