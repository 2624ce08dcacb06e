fn main() -> std::process::ExitCode {
    synod::cli::main()
}
