fn main() -> std::process::ExitCode {
    sparsec::cli::main()
}
