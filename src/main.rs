//! The `sparsec` binary: hands the command line to [`sparsec::cli::main`], which maps every error
//! to an exit code.

fn main() -> std::process::ExitCode {
    sparsec::cli::main()
}
