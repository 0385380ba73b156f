//! `sparsec sparsify MODEL --recipe R --train-file F --output-dir D [...]`: SparseML's one-command
//! workflow (compile → train → export → eval → bench → report, see [`crate::sparsify`]). Accepts
//! SparseML's / Hugging Face's underscore spellings, so a `sparseml.transformers.question_answering`
//! command line runs with only its program name changed.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::train::{Bar, TrainFlags};
use crate::bench::BenchSettings;
use crate::export::Format;
use crate::recipe::builtin::RecipeText;
use crate::sparsify::{sparsify, SparsifyConfig, SparsifySummary};

#[derive(clap::Args)]
pub struct SparsifyArgs {
    /// The dense QA model: a model.onnx with tokenizer.json beside it, or a folder holding both.
    #[arg(required_unless_present = "model_name_or_path")]
    model: Option<PathBuf>,
    /// The same as MODEL (SparseML's / HF's spelling); a local path, nothing is downloaded.
    #[arg(long, alias = "model_name_or_path", alias = "model", conflicts_with = "model")]
    model_name_or_path: Option<PathBuf>,
    /// SparseML recipe: a file, a built-in name (`sparsec recipes`), or a SparseZoo stub that a
    /// built-in reproduces.
    #[arg(long)]
    recipe: String,
    /// SQuAD-format training data (JSON, plain or gzip).
    #[arg(long, alias = "train_file")]
    train_file: Option<PathBuf>,
    /// SQuAD-format validation data: scored at each epoch end, and with --do-eval at the end
    /// (deployment and dense model).
    #[arg(long, alias = "validation_file", alias = "eval-file", alias = "eval_file")]
    validation_file: Option<PathBuf>,
    /// Output folder: compiled/, training/ (checkpoints, train_log.jsonl, tensorboard/),
    /// deployment/, eval_results.json, report.html, sparsify_summary.json.
    #[arg(long, alias = "output_dir")]
    output_dir: PathBuf,
    /// Accepted for SparseML command lines: sparsify always trains (or prunes with --one-shot).
    #[arg(long, alias = "do_train")]
    do_train: bool,
    /// Evaluate the deployment and the dense model on --validation-file into eval_results.json.
    #[arg(long, alias = "do_eval")]
    do_eval: bool,
    /// Not supported: nothing is downloaded; pass --train-file and --validation-file.
    #[arg(long, alias = "dataset_name", hide = true)]
    dataset_name: Option<String>,
    /// Accepted for SparseML command lines and ignored (nothing is downloaded or cached).
    #[arg(long, alias = "cache_dir")]
    cache_dir: Option<PathBuf>,
    /// Replace what an earlier run left in --output-dir (otherwise a used folder is an error
    /// unless --resume).
    #[arg(long, alias = "overwrite_output_dir")]
    overwrite_output_dir: bool,
    /// Deployment format (see `sparsec export --format`).
    #[arg(long, value_enum, default_value_t = Format::Qdq)]
    export_format: Format,
    /// Seconds per model of the closing speed comparison against the starting model (0 skips it).
    #[arg(long, default_value_t = 2.0)]
    bench_seconds: f64,
    /// Batch size of the speed comparison (its sequence length is --max-seq-length).
    #[arg(long, default_value_t = 1)]
    bench_batch_size: usize,
    #[command(flatten)]
    flags: TrainFlags,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SparsifyArgs) -> Result<()> {
    if let Some(name) = &args.dataset_name {
        bail!(
            "--dataset-name '{name}': sparsec downloads no datasets; pass the data as files: --train-file \
             train.json --validation-file dev.json (SQuAD-format JSON, plain or .gz, e.g. SQuAD v1.1's \
             train-v1.1.json and dev-v1.1.json)"
        );
    }
    let Some(train_file) = args.train_file.clone() else {
        bail!("--train-file is required (SQuAD-format JSON, plain or .gz)");
    };
    if let Some(c) = &args.cache_dir {
        eprintln!("note: --cache-dir '{}' is ignored: sparsec downloads and caches nothing", c.display());
    }
    if args.bench_seconds < 0.0 || !args.bench_seconds.is_finite() {
        bail!("--bench-seconds must be 0 or more");
    }
    if args.flags.resume && args.overwrite_output_dir {
        bail!("--resume and --overwrite-output-dir contradict each other");
    }
    if args.flags.fork_from.is_some() {
        bail!("--fork-from is a `sparsec train` flag: branch a run with `train --fork-from`, then `export`");
    }
    let model = args.model.clone().or(args.model_name_or_path.clone()).expect("clap requires one");
    let spec = model.to_string_lossy();
    if spec.starts_with("zoo:") {
        bail!(
            "model '{spec}': SparseZoo's service is gone and sparsec downloads nothing; pass a local ONNX QA model \
             (a model.onnx with tokenizer.json beside it)"
        );
    }
    let model = super::resolve_model_path(&model);
    let recipe = RecipeText::resolve(&args.recipe)?;
    if let Some(note) = &recipe.note {
        eprintln!("{note}");
    }
    let recipe_args = super::parse_recipe_args(args.flags.recipe_args.as_deref())?;
    let mut flags = args.flags.clone();
    flags.recipe_args = None;
    let train = flags.config(PathBuf::new(), train_file, args.validation_file.clone(), PathBuf::new())?;
    let bench = (args.bench_seconds > 0.0).then(|| BenchSettings {
        batch_size: args.bench_batch_size,
        seq_len: args.flags.max_seq_length,
        threads: args.flags.threads,
        seconds: args.bench_seconds,
        warmup: (args.bench_seconds / 4.0).min(1.0),
        profile: None,
    });
    let cfg = SparsifyConfig::new(
        model,
        recipe,
        recipe_args,
        args.output_dir.clone(),
        train,
        args.do_eval,
        args.overwrite_output_dir,
        args.export_format,
        bench,
    );
    let mut bar = Bar::default();
    let summary = sparsify(&cfg, &mut bar)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &SparsifySummary) {
    println!("sparsified into {}", s.output_dir);
    if s.one_shot {
        println!("  one-shot   pruned once and calibrated, no training ({:.1} s)", s.train_seconds);
    } else {
        println!(
            "  trained    {} steps, {} epochs in {:.1} s{}",
            s.steps,
            s.epochs,
            s.train_seconds,
            s.resumed_from_step.map(|x| format!(" (resumed at step {x})")).unwrap_or_default()
        );
    }
    println!(
        "  sparsity   {:.2}% of the pruned layers' weights ({:.2}% of all weights)",
        s.pruned_layers_sparsity * 100.0,
        s.overall_sparsity * 100.0
    );
    match &s.eval {
        Some(e) => println!(
            "  F1         {:.2} (dense {:.2}, {:+.2}); exact match {:.2}",
            e.f1, e.dense_f1, e.f1_delta, e.exact_match
        ),
        None => println!("  F1         not measured (pass --do-eval with --validation-file)"),
    }
    println!(
        "  size       {:.2} MB ({:.2} MB gzipped){}",
        s.model_bytes as f64 / 1e6,
        s.model_gzip_bytes as f64 / 1e6,
        s.dense_model_bytes.map(|d| format!(", dense {:.2} MB", d as f64 / 1e6)).unwrap_or_default()
    );
    match &s.speed {
        Some(x) => println!(
            "  speed      {:.1} items/s, dense {:.1} items/s: {:.2}x (batch {}, seq {})",
            x.deployment_items_per_second, x.dense_items_per_second, x.ratio, x.batch_size, x.seq_len
        ),
        None => println!("  speed      not measured (--bench-seconds 0)"),
    }
    println!("  deployment {}  (sparsec qa --model {} ...)", s.deployment, s.deployment);
    println!("  report     {}", s.report);
}
