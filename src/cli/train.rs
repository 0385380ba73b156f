//! `sparsec train --model COMPILED --train-file SQUAD --output-dir DIR [...]`: trains a compiled
//! model per its recipe (see [`crate::train`]); `--one-shot N` prunes and calibrates
//! without training. Argument names follow SparseML's / Hugging Face's `run_qa.py`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::train::config::{Teacher, TrainConfig};
use crate::train::log::{Progress, StepLog};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A folder written by `sparsec compile` (model.onnx, plan.json, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// SQuAD-format training data (JSON, plain or gzip).
    #[arg(long, alias = "train_file")]
    train_file: PathBuf,
    /// SQuAD-format evaluation data, scored (EM/F1) at the end of every epoch.
    #[arg(long)]
    eval_file: Option<PathBuf>,
    /// Output folder: checkpoints/, train_log.jsonl, tensorboard/, and at the end the trained model.onnx.
    #[arg(long, alias = "output_dir")]
    output_dir: PathBuf,
    #[command(flatten)]
    flags: TrainFlags,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The training settings `sparsec train` and `sparsec sparsify` share: same flags, same defaults,
/// with Hugging Face's / SparseML's underscore spellings as aliases.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct TrainFlags {
    /// Must equal the recipe's epochs when given; change those with --recipe-args.
    #[arg(long, alias = "num_train_epochs")]
    pub num_train_epochs: Option<f64>,
    #[arg(long, alias = "per_device_train_batch_size", default_value_t = 16)]
    pub per_device_train_batch_size: usize,
    #[arg(long, alias = "per_device_eval_batch_size", default_value_t = 32)]
    pub per_device_eval_batch_size: usize,
    /// Peak learning rate when the recipe has no learning-rate modifier (linear warmup and decay).
    #[arg(long, alias = "learning_rate", default_value_t = 5e-5)]
    pub learning_rate: f32,
    #[arg(long, alias = "warmup_steps", default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, alias = "weight_decay", default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Gradient clipping by global norm (0 disables).
    #[arg(long, alias = "max_grad_norm", default_value_t = 1.0)]
    pub max_grad_norm: f32,
    #[arg(long, alias = "max_seq_length", default_value_t = 384)]
    pub max_seq_length: usize,
    #[arg(long, alias = "doc_stride", default_value_t = 128)]
    pub doc_stride: usize,
    /// Pad every batch to --max-seq-length (HF's default) instead of to its longest window.
    #[arg(long, alias = "pad_to_max_length")]
    pub pad_to_max_length: bool,
    /// Batch windows of similar length together (HF's `--group_by_length`): far less padding.
    #[arg(long, alias = "group_by_length")]
    pub group_by_length: bool,
    /// Teacher ONNX for the recipe's distillation, or `disable`; default: the model compile started from.
    #[arg(long, alias = "distill_teacher")]
    pub distill_teacher: Option<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime's allocation of each step's tensors: `lean` (no memory pattern, no CPU arena, freed
    /// memory kept by the C allocator for the next step) holds the peak near what one step needs;
    /// `arena` is ONNX Runtime's default (on 16 x 384 MiniLM batches 2.5x lean's peak, no faster).
    #[arg(long, value_enum, default_value = "lean")]
    pub ort_memory: crate::runtime::OrtMemory,
    /// Masked linear layers (pruned weights not fake-quantized) on sparsec's block-sparse
    /// training kernels, forward and both gradients costing the masks' kept [4, 1] blocks: `auto`
    /// once the masks keep at most 60% of their blocks, `on` always, `off` never (ONNX Runtime's
    /// dense MatMul/Gemm).
    #[arg(long, value_enum, default_value = "auto")]
    pub sparse_train: crate::train::graphs::SparseTrain,
    /// Attention and GELU in the training graphs: `on` (sparsec's fused training operators: the
    /// attention probabilities are recomputed in the backward instead of kept, the softmax and GELU
    /// gradients are one pass each) or `off` (the exported nodes and their gradients on ONNX Runtime).
    #[arg(long, value_enum, default_value = "on")]
    pub fused_ops: crate::train::graphs::FusedOps,
    /// Products of the masked linears on sparsec's training operators: `f32`, or `bf16` (operands
    /// rounded to bf16, products summed in f32 by AVX-512 BF16's vdpbf16ps; master weights, the
    /// optimizer and every other operator stay f32). bf16 runs those operators at any mask density
    /// (ONNX Runtime's dense path has no bf16) and needs a CPU with AVX-512 BF16. QAT steps keep
    /// their fake-quantized linears dense and f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub linear_precision: crate::passes::LinearPrecision,
    /// ONNX Runtime profiles the training-step session: a JSON trace of every node run, written to
    /// PREFIX_<time>.json when the session ends (a new file at each graph switch); summarise it with
    /// benches/ort_profile.py.
    #[arg(long, value_name = "PREFIX")]
    pub ort_profile: Option<std::path::PathBuf>,
    #[arg(long, alias = "max_train_samples")]
    pub max_train_samples: Option<usize>,
    /// Fail when a training answer does not match its context (default: warn and train on it).
    #[arg(long, alias = "strict_data")]
    pub strict_data: bool,
    #[arg(long, alias = "max_eval_samples")]
    pub max_eval_samples: Option<usize>,
    /// JSON object overriding recipe variables, e.g. '{"num_epochs": 2}' (`sparsify` compiles with
    /// them; `train` follows the plan its folder was compiled with, so there it is an error).
    #[arg(long, alias = "recipe_args")]
    pub recipe_args: Option<String>,
    /// Continue from the newest checkpoint in --output-dir.
    #[arg(long)]
    pub resume: bool,
    /// Branch another run at one of its checkpoints (a `step-*` folder): continue its schedule,
    /// weights, optimizer, masks and pruner state in this --output-dir with this --model, which
    /// may be a recompile of the same recipe that adds quantization sites (e.g.
    /// `quantize_attention_matmuls`) if QAT had not started at that step. Every other setting must
    /// match the checkpoint's. For A/B runs of a late phase without repeating the early ones.
    #[arg(long, conflicts_with = "resume")]
    pub fork_from: Option<PathBuf>,
    /// Stop after N optimizer steps (the recipe's schedule is not compressed).
    #[arg(long, alias = "max_steps")]
    pub max_steps: Option<u64>,
    /// Also checkpoint every N steps.
    #[arg(long, alias = "save_steps")]
    pub save_steps: Option<u64>,
    /// Also evaluate on --eval-file every N steps, besides each epoch end (an F1-over-time curve for long runs).
    #[arg(long, alias = "eval_steps")]
    pub eval_steps: Option<u64>,
    #[arg(long, alias = "save_total_limit", default_value_t = 2)]
    pub save_total_limit: usize,
    /// No training: prune each modifier's layers to its final sparsity once with the recipe's
    /// algorithm (magnitude, OBS, SparseGPT from N calibration windows) and calibrate
    /// quantization on N training windows (SparseML's one-shot).
    #[arg(long, alias = "one_shot", value_name = "N")]
    pub one_shot: Option<usize>,
    /// Largest state a pruner may build (OBS Fisher inverses, SparseGPT Hessians), in MB.
    #[arg(long, alias = "prune_memory_limit_mb", default_value_t = 4096)]
    pub prune_memory_limit_mb: u64,
}

/// The step progress bar of `train` and `sparsify`.
#[derive(Default)]
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn start(&mut self, total: u64, first: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_position(first);
        self.bar = Some(bar);
    }

    fn step(&mut self, log: &StepLog) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(format!(
                "loss {:.4} lr {:.2e} sparsity {:.1}%{} {:.2} samples/s",
                log.loss,
                log.lr,
                log.sparsity * 100.0,
                if log.qat { " qat" } else { "" },
                log.samples_per_second
            ));
        }
    }

    /// Above the bar on a terminal; a plain stderr line otherwise (indicatif's `println` drops the
    /// text when the bar is hidden, as it is when stderr goes to a file or a pipe).
    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(text),
            _ => eprintln!("{text}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl TrainFlags {
    /// The run's configuration: these flags with the folders and files it reads and writes.
    pub fn config(
        &self,
        compiled: PathBuf,
        train_file: PathBuf,
        eval_file: Option<PathBuf>,
        output_dir: PathBuf,
    ) -> Result<TrainConfig> {
        let args = self;
        if let Some(json) = &args.recipe_args {
            bail!(
                "--recipe-args '{json}': recipe variables are resolved when compiling, into the plan.json of '{}' \
                 that training follows; pass them to `sparsec compile --recipe-args` instead",
                compiled.display()
            );
        }
        let teacher = match args.distill_teacher.as_deref() {
            None => Teacher::Original,
            Some("disable") | Some("disabled") => Teacher::Disabled,
            Some("self") => Teacher::Original,
            Some(p) if p.starts_with("zoo:") => bail!(
                "--distill-teacher '{p}': SparseZoo's service is gone and sparsec downloads nothing; pass a local \
             teacher ONNX (file or folder), `self` (the model compile started from) or `disable`"
            ),
            Some(p) => Teacher::Path(super::resolve_model_path(std::path::Path::new(p))),
        };
        Ok(TrainConfig {
            eval_file,
            batch_size: args.per_device_train_batch_size,
            eval_batch_size: args.per_device_eval_batch_size,
            learning_rate: args.learning_rate,
            warmup_steps: args.warmup_steps,
            weight_decay: args.weight_decay,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            max_seq_length: args.max_seq_length,
            doc_stride: args.doc_stride,
            pad_to_max_length: args.pad_to_max_length,
            group_by_length: args.group_by_length,
            teacher,
            seed: args.seed,
            threads: args.threads,
            ort_memory: args.ort_memory,
            sparse_train: args.sparse_train,
            fused_ops: args.fused_ops,
            linear_precision: args.linear_precision,
            ort_profile: args.ort_profile.clone(),
            max_train_samples: args.max_train_samples,
            strict_data: args.strict_data,
            max_eval_samples: args.max_eval_samples,
            resume: args.resume,
            fork_from: args.fork_from.clone(),
            save_steps: args.save_steps,
            eval_steps: args.eval_steps,
            save_total_limit: args.save_total_limit,
            one_shot: args.one_shot,
            prune_memory_limit: args.prune_memory_limit_mb.saturating_mul(1 << 20),
            num_train_epochs: args.num_train_epochs,
            max_steps: args.max_steps,
            stop_on_signals: true,
            ..TrainConfig::new(compiled, train_file, output_dir)
        })
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let cfg = args.flags.config(args.model, args.train_file, args.eval_file, args.output_dir)?;
    let mut bar = Bar::default();
    let summary = crate::train::train(&cfg, &mut bar)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    if summary.one_shot {
        println!(
            "one-shot: sparsity {:.2}% over {} masked weights{}; wrote {}",
            summary.overall_sparsity * 100.0,
            summary.sparsity.len(),
            if summary.quantized { format!(", calibrated on {} windows", summary.samples_seen) } else { String::new() },
            summary.output_dir
        );
    } else {
        println!(
            "trained {} steps ({} epochs, {} windows from {} questions) in {:.1} s ({:.2} samples/s); final loss {:.4}; \
             sparsity {:.2}%{}{}",
            summary.steps,
            summary.epochs,
            summary.train_windows,
            summary.train_examples,
            summary.seconds,
            summary.samples_per_second,
            summary.final_loss.unwrap_or(f32::NAN),
            summary.overall_sparsity * 100.0,
            if summary.quantized { ", int8 QAT" } else { "" },
            if summary.distillation { ", distilled" } else { "" },
        );
    }
    for e in &summary.evals {
        println!("epoch {:.2}: exact_match {:.2} f1 {:.2} ({} questions)", e.epoch, e.exact_match, e.f1, e.questions);
    }
    println!("wrote {}/model.onnx", summary.output_dir);
    Ok(())
}
