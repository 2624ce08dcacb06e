//! The tools built on the runtime library: the `synod` command line, the
//! demo (the README's main job), benchmarks, the local cluster launcher,
//! client workloads and the simulator's command. Nothing in the runtime
//! (`control`, `node`, `region`, `storage`, …) depends on this module.

pub mod bench;
pub mod bench_mm;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod dev;
pub mod plugin_kit;
pub mod region_admin;
pub mod sim_cli;
pub mod stall;
pub mod swap_bench;
pub mod workload;
