/// glibc malloc was the top item in profiles of a loaded node (many small,
/// short-lived buffers across threads); mimalloc handles that pattern well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    synod::tools::cli::main()
}
