//! The `synod` binary under another name, so tests in this crate can spawn
//! and kill -9 real node processes (`CARGO_BIN_EXE_synod-test-node`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    synod::tools::cli::main()
}
