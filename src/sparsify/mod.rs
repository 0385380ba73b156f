//! `sparsec sparsify`: SparseML's one-command workflow over the same library functions the single
//! commands call — [`crate::compile`] → [`crate::train`] → [`crate::export`] →
//! [`crate::qa::evaluate`] (the deployment and the dense starting model) → [`crate::bench`] (the
//! deployment against the starting model) → [`report`] — into one output folder:
//!
//! ```text
//! D/sparsify_args.json   what the run was asked (a --resume must ask the same)
//! D/compiled/            the compile output
//! D/training/            checkpoints/, train_log.jsonl, tensorboard/, train_summary.json, model.onnx
//! D/deployment/          the exported folder (qa, eval, bench, serve)
//! D/eval_results.json    with --do-eval: EM/F1 of the deployment and of the dense model
//! D/report.html          curves and per-layer sparsity (inline SVG, no JavaScript)
//! D/sparsify_summary.json
//! ```
//!
//! Everything is validated before any work starts; `--resume` reuses the compiled folder and
//! continues training from the newest checkpoint.

pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bench::{BenchModel, BenchResult, BenchSettings};
use crate::export::{ExportOptions, ExportReport, Format};
use crate::qa::evaluate::{EvalReport, EvalSettings};
use crate::qa::Decoder;
use crate::recipe::builtin::RecipeText;
use crate::runtime::{EngineKind, Kernels};
use crate::train::config::{Teacher, TrainConfig};
use crate::train::log::{Progress, StepLog, TrainSummary};

pub const ARGS_FILE: &str = "sparsify_args.json";
pub const COMPILED: &str = "compiled";
pub const TRAINING: &str = "training";
pub const DEPLOYMENT: &str = "deployment";
pub const EVAL_RESULTS: &str = "eval_results.json";
pub const REPORT: &str = "report.html";
pub const SUMMARY: &str = "sparsify_summary.json";

/// Everything one flow needs; `train`'s folders are set by [`SparsifyConfig::new`].
pub struct SparsifyConfig {
    /// The dense starting model (a `.onnx` with `tokenizer.json` beside it).
    pub model: PathBuf,
    pub recipe: RecipeText,
    pub recipe_args: serde_json::Map<String, serde_json::Value>,
    pub output_dir: PathBuf,
    pub train: TrainConfig,
    /// Final evaluation of the deployment and the dense model (needs `train.eval_file`).
    pub do_eval: bool,
    /// Replace what an earlier run left in `output_dir`.
    pub overwrite: bool,
    pub export_format: Format,
    /// The short speed comparison; `None` skips it.
    pub bench: Option<BenchSettings>,
}

impl SparsifyConfig {
    /// Points `train` at `output_dir/compiled` and `output_dir/training`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: PathBuf,
        recipe: RecipeText,
        recipe_args: serde_json::Map<String, serde_json::Value>,
        output_dir: PathBuf,
        mut train: TrainConfig,
        do_eval: bool,
        overwrite: bool,
        export_format: Format,
        bench: Option<BenchSettings>,
    ) -> SparsifyConfig {
        train.compiled = output_dir.join(COMPILED);
        train.output_dir = output_dir.join(TRAINING);
        SparsifyConfig { model, recipe, recipe_args, output_dir, train, do_eval, overwrite, export_format, bench }
    }

    /// What a `--resume` must repeat: the model, the recipe text and its arguments, and the
    /// training settings (the checkpoint's own fingerprint checks the rest).
    fn record(&self) -> serde_json::Value {
        let t = &self.train;
        serde_json::json!({
            "model": std::fs::canonicalize(&self.model).unwrap_or(self.model.clone()),
            "recipe": self.recipe.path,
            "recipe_text": self.recipe.text,
            "recipe_args": self.recipe_args,
            "train_file": std::fs::canonicalize(&t.train_file).unwrap_or(t.train_file.clone()),
            "validation_file": t.eval_file.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())),
            "batch_size": t.batch_size,
            "learning_rate": t.learning_rate,
            "max_seq_length": t.max_seq_length,
            "doc_stride": t.doc_stride,
            "seed": t.seed,
            "teacher": format!("{:?}", t.teacher),
            "one_shot": t.one_shot,
            "max_train_samples": t.max_train_samples,
            "max_steps": t.max_steps,
        })
    }
}

/// Dense model against the deployment.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResults {
    pub data: String,
    pub questions: usize,
    pub exact_match: f64,
    pub f1: f64,
    pub dense_exact_match: f64,
    pub dense_f1: f64,
    /// F1 of the deployment minus the dense model's, in points.
    pub f1_delta: f64,
    pub deployment: EvalReport,
    pub dense: EvalReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct Speed {
    pub batch_size: usize,
    pub seq_len: usize,
    pub deployment_items_per_second: f64,
    pub dense_items_per_second: f64,
    /// Deployment over dense items/s.
    pub ratio: f64,
    pub results: Vec<BenchResult>,
}

/// `sparsify_summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct SparsifySummary {
    pub output_dir: String,
    pub deployment: String,
    pub recipe: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe_note: Option<String>,
    pub resumed_from_step: Option<u64>,
    /// Pruned once by the recipe's algorithm and calibrated (`--one-shot N`), no training.
    pub one_shot: bool,
    pub steps: u64,
    pub epochs: f64,
    pub train_seconds: f64,
    /// Zeros over the pruned layers' weights of the deployment.
    pub pruned_layers_sparsity: f64,
    pub overall_sparsity: f64,
    pub model_bytes: u64,
    pub dense_model_bytes: Option<u64>,
    pub model_gzip_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<SpeedSummary>,
    pub report: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    pub exact_match: f64,
    pub f1: f64,
    pub dense_f1: f64,
    pub f1_delta: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedSummary {
    pub deployment_items_per_second: f64,
    pub dense_items_per_second: f64,
    pub ratio: f64,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Fails, naming the flag or file, on anything that would stop the flow later: missing or
/// unreadable files, a recipe that does not parse with its arguments, a teacher that is not there,
/// an output folder in use.
pub fn validate(cfg: &SparsifyConfig) -> Result<()> {
    let m = &cfg.model;
    if !m.is_file() {
        bail!(
            "model '{}' is not a file: pass a local ONNX QA model (or a folder holding model.onnx); sparsec downloads \
             nothing from a model hub",
            m.display()
        );
    }
    let tok = m.parent().unwrap_or(Path::new(".")).join("tokenizer.json");
    if !tok.exists() {
        bail!("model '{}' has no tokenizer.json beside it ('{}')", m.display(), tok.display());
    }
    cfg.recipe.parse(&cfg.recipe_args).with_context(|| format!("--recipe '{}'", cfg.recipe.path.display()))?;
    let t = &cfg.train;
    crate::qa::squad::load(&t.train_file).with_context(|| format!("--train-file '{}'", t.train_file.display()))?;
    match &t.eval_file {
        Some(v) => {
            crate::qa::squad::load(v).with_context(|| format!("--validation-file '{}'", v.display()))?;
        }
        None if cfg.do_eval => bail!("--do-eval needs --validation-file (SQuAD-format JSON)"),
        None => {}
    }
    if let Teacher::Path(p) = &t.teacher {
        if !p.is_file() {
            bail!("--distill-teacher '{}' is not a file", p.display());
        }
    }
    if t.batch_size == 0 {
        bail!("--per-device-train-batch-size must be at least 1");
    }
    if t.doc_stride >= t.max_seq_length {
        bail!("--doc-stride {} must be smaller than --max-seq-length {}", t.doc_stride, t.max_seq_length);
    }
    let d = &cfg.output_dir;
    if d.exists() && !d.is_dir() {
        bail!("--output-dir '{}' is a file", d.display());
    }
    let used = d.is_dir() && std::fs::read_dir(d).map(|mut r| r.next().is_some()).unwrap_or(false);
    if t.resume {
        if let Ok(bytes) = std::fs::read(d.join(ARGS_FILE)) {
            let before: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("'{}' is not valid JSON", d.join(ARGS_FILE).display()))?;
            if before != cfg.record() {
                bail!(
                    "--resume: '{}' was started with different settings; now {}, then {}",
                    d.display(),
                    cfg.record(),
                    before
                );
            }
        } else if used {
            bail!("--resume: '{}' holds no {ARGS_FILE}, so it is not a sparsify output folder", d.display());
        }
    } else if used && !cfg.overwrite {
        bail!(
            "--output-dir '{}' exists and is not empty: pass --resume to continue its run, or --overwrite-output-dir",
            d.display()
        );
    }
    Ok(())
}

/// Runs the whole flow per `cfg`; `progress` gets one line per stage. `--overwrite-output-dir`
/// first removes everything an earlier run wrote there, so that no stale result sits beside new
/// outputs.
pub fn sparsify(cfg: &SparsifyConfig, progress: &mut dyn Progress) -> Result<SparsifySummary> {
    validate(cfg)?;
    let d = &cfg.output_dir;
    if cfg.overwrite && !cfg.train.resume {
        for sub in [COMPILED, TRAINING, DEPLOYMENT] {
            let p = d.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("cannot remove '{}'", p.display()))?;
            }
        }
        for file in [EVAL_RESULTS, REPORT, SUMMARY] {
            let p = d.join(file);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot remove '{}'", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(d).with_context(|| format!("cannot create '{}'", d.display()))?;
    crate::files::write_atomic(&d.join(ARGS_FILE), &serde_json::to_vec_pretty(&cfg.record())?)?;

    let compiled = d.join(COMPILED);
    if cfg.train.resume && compiled.join("plan.json").exists() {
        progress.message(&format!("compile: reusing '{}'", compiled.display()));
    } else {
        progress.message(&format!("compile: {} with {}", cfg.model.display(), cfg.recipe.path.display()));
        let mut warn = |f: &crate::recipe::support::Finding| progress.message(&format!("warning: {f}"));
        crate::compile::compile_folder(&cfg.model, &cfg.recipe, &cfg.recipe_args, &compiled, &mut warn)?;
    }

    progress.message("train");
    let trained: TrainSummary = crate::train::train(&cfg.train, progress)?;

    let deployment = d.join(DEPLOYMENT);
    progress.message(&format!("export: {}", deployment.display()));
    let export: ExportReport = crate::export::export_folder(&ExportOptions {
        model: cfg.train.output_dir.clone(),
        output: deployment.clone(),
        quantize_embeddings: false,
        format: cfg.export_format,
    })?;

    let eval = match (&cfg.train.eval_file, cfg.do_eval) {
        (Some(data), true) => Some(evaluate_both(cfg, data, &deployment, progress)?),
        _ => None,
    };
    if let Some(e) = &eval {
        crate::files::write_atomic(&d.join(EVAL_RESULTS), &(serde_json::to_string_pretty(e)? + "\n").into_bytes())?;
    }

    let speed = match &cfg.bench {
        Some(b) => Some(bench_both(cfg, b, &deployment, progress)?),
        None => None,
    };

    let log = crate::train::tensorboard::read_log(&cfg.train.output_dir.join("train_log.jsonl"));
    let html = report::render(&report::ReportData {
        title: format!("sparsec sparsify: {}", cfg.model.display()),
        recipe: cfg.recipe.path.display().to_string(),
        log: &log,
        evals: &trained.evals,
        layers: &trained.sparsity,
        export: &export,
        eval: eval.as_ref(),
        speed: speed.as_ref(),
    })?;
    crate::files::write_atomic(&d.join(REPORT), html.as_bytes())?;

    let summary = SparsifySummary {
        output_dir: d.display().to_string(),
        deployment: deployment.display().to_string(),
        recipe: cfg.recipe.path.display().to_string(),
        recipe_note: cfg.recipe.note.clone(),
        resumed_from_step: trained.resumed_from_step,
        one_shot: trained.one_shot,
        steps: trained.steps,
        epochs: trained.epochs,
        train_seconds: trained.seconds,
        pruned_layers_sparsity: export.pruned_layers_sparsity,
        overall_sparsity: export.overall_sparsity,
        model_bytes: export.model_bytes,
        dense_model_bytes: export.dense_model_bytes,
        model_gzip_bytes: export.model_gzip_bytes,
        eval: eval.as_ref().map(|e| EvalSummary {
            exact_match: e.exact_match,
            f1: e.f1,
            dense_f1: e.dense_f1,
            f1_delta: e.f1_delta,
        }),
        speed: speed.as_ref().map(|s| SpeedSummary {
            deployment_items_per_second: s.deployment_items_per_second,
            dense_items_per_second: s.dense_items_per_second,
            ratio: s.ratio,
            batch_size: s.batch_size,
            seq_len: s.seq_len,
        }),
        report: d.join(REPORT).display().to_string(),
    };
    crate::files::write_atomic(&d.join(SUMMARY), &(serde_json::to_string_pretty(&summary)? + "\n").into_bytes())?;
    Ok(summary)
}

fn eval_settings(t: &TrainConfig) -> EvalSettings {
    EvalSettings {
        version_2: false,
        batch_size: t.eval_batch_size,
        limit: t.max_eval_samples,
        engine: EngineKind::Ort,
        kernels: Kernels::Auto,
        threads: t.threads,
        streams: 0,
        ort_basic: false,
        decoder: Decoder::Squad,
        max_seq_len: t.max_seq_length,
        doc_stride: t.doc_stride,
        max_answer_length: 30,
        n_best: 20,
        null_score_diff_threshold: 0.0,
    }
}

/// SQuAD EM/F1 of the deployment and of the dense starting model, on the same questions and
/// windows.
fn evaluate_both(
    cfg: &SparsifyConfig,
    data: &Path,
    deployment: &Path,
    progress: &mut dyn Progress,
) -> Result<EvalResults> {
    let settings = eval_settings(&cfg.train);
    progress.message(&format!("eval: deployment and dense model on {}", data.display()));
    let (sparse, _) =
        crate::qa::evaluate::evaluate_file(&deployment.join("model.onnx"), data, &settings, &mut |_, _, _, _| {})?;
    let dense_settings = EvalSettings { kernels: Kernels::Off, ..settings };
    let (dense, _) = crate::qa::evaluate::evaluate_file(&cfg.model, data, &dense_settings, &mut |_, _, _, _| {})?;
    let ((em, f1), (dem, df1)) = (sparse.em_f1(), dense.em_f1());
    Ok(EvalResults {
        data: data.display().to_string(),
        questions: sparse.questions,
        exact_match: em,
        f1,
        dense_exact_match: dem,
        dense_f1: df1,
        f1_delta: f1 - df1,
        deployment: sparse,
        dense,
    })
}

/// The deployment (sparsec's kernels) against the dense starting model (plain ONNX Runtime),
/// alternating in one process.
fn bench_both(
    cfg: &SparsifyConfig,
    settings: &BenchSettings,
    deployment: &Path,
    progress: &mut dyn Progress,
) -> Result<Speed> {
    progress.message(&format!(
        "bench: deployment against the dense model, batch {} seq {}, {} s each",
        settings.batch_size, settings.seq_len, settings.seconds
    ));
    let models = [
        BenchModel {
            path: deployment.join("model.onnx"),
            engine: EngineKind::Ort,
            kernels: Kernels::Auto,
            streams: 0,
            profile: false,
        },
        BenchModel {
            path: cfg.model.clone(),
            engine: EngineKind::Ort,
            kernels: Kernels::Off,
            profile: false,
            streams: 0,
        },
    ];
    let results = crate::bench::bench(&models, settings)?;
    let (s, dn) = (results[0].items_per_second, results[1].items_per_second);
    Ok(Speed {
        batch_size: settings.batch_size,
        seq_len: settings.seq_len,
        deployment_items_per_second: s,
        dense_items_per_second: dn,
        ratio: s / dn,
        results,
    })
}

/// `sparsec export --one-shot N`: prunes the compiled folder `compiled` once by its recipe and
/// calibrates on `n` windows of `calibration_file` (into a temporary folder), then exports that.
pub fn one_shot_export(
    compiled: &Path,
    calibration_file: Option<PathBuf>,
    n: usize,
    export: &ExportOptions,
) -> Result<ExportReport> {
    let staging = tempfile::tempdir().context("cannot create a temporary folder")?;
    let data = calibration_file.context("--one-shot needs --calibration-file (SQuAD-format data)")?;
    let trained = staging.path().join("one-shot");
    let cfg = TrainConfig {
        teacher: Teacher::Disabled,
        max_train_samples: Some(n),
        one_shot: Some(n),
        ..TrainConfig::new(compiled.to_path_buf(), data, trained.clone())
    };
    crate::train::train(&cfg, &mut Quiet)?;
    crate::export::export_folder(&ExportOptions { model: trained, ..export.clone() })
}

/// Progress that prints messages only.
struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64, _: u64) {}
    fn step(&mut self, _: &StepLog) {}
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&mut self) {}
}
