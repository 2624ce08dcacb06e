//! The workspace's plugins as Wasm components, built by `build.rs`.
//!
//! - `STANDALONE_*`: the single-copy protocol.
//! - `MISBEHAVE_*`: a fixture that loops, allocates or panics on demand.
//! - `FUTURE_MAJOR_*`: a component built against `synod:protocol@9.0.0`.
//! - `OTHER_WORLD_*`: a valid component of an unrelated world.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
