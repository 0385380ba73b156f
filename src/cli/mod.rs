//! Command-line front end: clap-derived arguments, one file per subcommand, errors mapped to exit
//! codes with the whole context chain on one line.

mod bench;
mod compile;
mod eval;
mod export;
mod info;
mod qa;
mod recipes;
mod serve;
mod sparsify;
mod train;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use qa::{settings_from_flags, FlagsError, QaSettings};

/// sparsec's version, as `sparsec --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(name = "sparsec", version, about = "ONNX-native sparsification compiler for transformer QA models")]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SparseML's workflow in one command: compile, train, export, eval, bench and a report.
    Sparsify(Box<sparsify::SparsifyArgs>),
    /// List the built-in recipes, or print one (`recipes show NAME`).
    Recipes(recipes::RecipesArgs),
    /// Summarise a model: opset, ops, parameters and its prunable linear layers.
    Info(info::InfoArgs),
    /// Rewrite a model per a SparseML recipe into a training graph and a plan.
    Compile(compile::CompileArgs),
    /// Answer questions about a context like the Hugging Face question-answering pipeline.
    Qa(qa::QaArgs),
    /// Score a QA model on a SQuAD file with the official v1.1/v2.0 metric.
    Eval(eval::EvalArgs),
    /// Train a compiled model per its recipe: pruning, QAT, distillation; or prune one-shot.
    Train(train::TrainArgs),
    /// Lower a trained model to a sparse int8 inference ONNX and a deployment folder.
    Export(export::ExportArgs),
    /// Latency percentiles and throughput of a model (optionally against a second one).
    Bench(bench::BenchArgs),
    /// Serve question answering over HTTP with dynamic batching (DeepSparse server's routes).
    Serve(serve::ServeArgs),
}

/// The `sparsec` binary's entry: [`run`] on the process's arguments.
pub fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os()))
}

/// Runs one command line (`args[0]` is the program name) and returns its exit status: 0, 1 for
/// an error (printed with its whole context chain), 2 for a usage error (clap's message),
/// 130 / 143 for a training run stopped by SIGINT / SIGTERM. The `sparsec` binary and the Python
/// package's `sparsec` command both run this, so they behave alike; `--help` and `--version`
/// print and return 0 instead of exiting the process.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let _ = std::io::stdout().flush();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Sparsify(args) => sparsify::run(*args),
        Command::Recipes(args) => recipes::run(args),
        Command::Info(args) => info::run(args),
        Command::Compile(args) => compile::run(args),
        Command::Qa(args) => qa::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    };
    // A host process (Python) may outlive this call without running Rust's exit-time flush.
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// 130 / 143 (128 + the signal's number, as a shell reports it) for a training run that stopped on
/// SIGINT / SIGTERM after writing its checkpoint, so that a scheduler can tell "resume me" from a
/// failure; 1 for every other error.
fn exit_code(e: &anyhow::Error) -> u8 {
    let stopped = e.chain().find_map(|c| c.downcast_ref::<crate::train::interrupt::Interrupted>());
    match stopped.map(|i| i.signal) {
        Some("SIGINT") => 130,
        Some("SIGTERM") => 143,
        _ => 1,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// A model argument: a `.onnx` file, or a folder holding `model.onnx`.
pub fn resolve_model_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("model.onnx")
    } else {
        p.to_path_buf()
    }
}

/// Parses `--recipe-args`: a JSON object of recipe variables.
pub(crate) fn parse_recipe_args(text: Option<&str>) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match text {
        None => Ok(serde_json::Map::new()),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => anyhow::bail!("--recipe-args must be a JSON object like '{{\"num_epochs\": 8}}'"),
            Err(e) => anyhow::bail!("--recipe-args is not valid JSON: {e}"),
        },
    }
}
