//! # Synod host
//!
//! The native runtime that runs consensus protocols as sandboxed
//! WebAssembly components. Where things live:
//!
//! - [`engine`]: wasmtime, component validation, the compile cache, limits;
//! - [`plugin`]: one running instance (Wasm or native) behind one trait;
//! - [`region`]: a region replica's effects, failure containment and driver
//!   (where a client write goes: `api` → `region::driver` → plugin →
//!   `region::core` → `storage::commit`);
//! - [`storage`]: the disk abstraction, WAL, group commit and snapshots;
//! - [`journal`]: what the WAL holds and how a node is rebuilt from it;
//! - [`state_machine`]: the host-owned key-value state machine;
//! - [`control`]: the replicated control plane (openraft) holding nodes,
//!   components and regions, and the reconciler that makes hosts match it;
//! - [`swap`]: live protocol swap (coordinator and a host's steps);
//! - [`node`]: start-up, recovery, components, replicas, admin commands;
//! - [`api`] and [`client`]: HTTP/JSON API and its client; [`wire`]: the
//!   binary client protocol on the same port;
//! - [`metrics`]: the Prometheus endpoint's instruments and rendering;
//! - [`tools`]: built on the runtime, not part of it: the `synod` command
//!   line, the demo, benchmarks, the local cluster launcher, workloads.

pub mod api;
pub mod checker;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod engine;
pub mod failpoint;
pub mod journal;
pub mod metrics;
pub mod network;
pub mod node;
pub mod plugin;
pub mod region;
pub mod security;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod swap;
pub mod tools;
pub mod transport;
pub mod wire;
