//! The `synod` binary under another name, so tests in this crate can spawn
//! and kill -9 real node processes (`CARGO_BIN_EXE_synod-test-node`).

fn main() -> std::process::ExitCode {
    synod::cli::main()
}
