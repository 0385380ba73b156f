//! `sparsec eval`: runs a QA model over a SQuAD file and scores it with the official v1.1 (or
//! v2.0) metric ([`crate::qa::evaluate`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::qa::evaluate::{evaluate_file, EvalSettings};
use crate::qa::Decoder;
use crate::runtime::{EngineKind, Kernels};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A model.onnx with tokenizer.json beside it, or a folder holding both.
    #[arg(long)]
    model: PathBuf,
    /// SQuAD JSON, plain or gzip-compressed.
    #[arg(long)]
    data: PathBuf,
    /// SQuAD v2.0: allow the empty answer; report HasAns/NoAns and best thresholds.
    #[arg(long)]
    version_2: bool,
    /// Windows per model run.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Evaluate only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Write `{id: answer}` (the official scripts' prediction format) here.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = EngineKind::Ort)]
    engine: EngineKind,
    /// sparsec's sparse linear and fused attention kernels on ONNX Runtime (`off` for A/B runs).
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    kernels: Kernels,
    #[arg(long)]
    threads: Option<usize>,
    /// Run each batch of windows as one-window pieces on this many single-thread sessions at once
    /// (0 or 1: one session runs the whole batch with all threads); same answers.
    #[arg(long, default_value_t = 0)]
    streams: usize,

    /// ONNX Runtime's basic graph rewrites only (level 1): a QDQ model then dequantizes and
    /// multiplies in f32, its exact semantics (the fused int8 kernels of the default level
    /// saturate on CPUs without VNNI).
    #[arg(long)]
    ort_basic: bool,
    /// Post-processing: run_qa.py's n-best logit sums (as SQuAD numbers are reported), or the HF pipeline's.
    #[arg(long, value_enum, default_value_t = Decoder::Squad)]
    decoder: Decoder,
    #[arg(long, default_value_t = 384)]
    max_seq_len: usize,
    #[arg(long, default_value_t = 128)]
    doc_stride: usize,
    #[arg(long, default_value_t = 30)]
    max_answer_length: usize,
    #[arg(long, default_value_t = 20)]
    n_best: usize,
    /// v2: predict no answer when null score minus best span score exceeds this.
    #[arg(long, default_value_t = 0.0)]
    null_score_diff_threshold: f32,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let model = super::resolve_model_path(&args.model);
    let settings = EvalSettings {
        version_2: args.version_2,
        batch_size: args.batch_size,
        limit: args.limit,
        engine: args.engine,
        kernels: args.kernels,
        threads: args.threads,
        streams: args.streams,
        ort_basic: args.ort_basic,
        decoder: args.decoder,
        max_seq_len: args.max_seq_len,
        doc_stride: args.doc_stride,
        max_answer_length: args.max_answer_length,
        n_best: args.n_best,
        null_score_diff_threshold: args.null_score_diff_threshold,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} questions [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    let (report, predictions) = evaluate_file(&model, &args.data, &settings, &mut |done, total, windows, secs| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{:.1} windows/s", windows as f64 / secs));
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.predictions {
        let map: BTreeMap<&str, &str> = predictions.iter().map(|(id, p)| (id.as_str(), p.as_str())).collect();
        crate::files::write_atomic(path, &serde_json::to_vec_pretty(&map)?)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let (windows, seconds) = (report.windows, report.seconds);
    println!(
        "{} questions, {} windows in {:.1} s ({:.1} windows/s, {})",
        report.questions, windows, seconds, report.features_per_second, args.engine
    );
    if let Some(r) = &report.v1 {
        println!("exact_match {:.2}  f1 {:.2}", r.exact_match, r.f1);
    }
    if let Some(r) = &report.v2 {
        println!("exact {:.2}  f1 {:.2}  (total {})", r.exact, r.f1, r.total);
        if let (Some(e), Some(f)) = (r.has_ans_exact, r.has_ans_f1) {
            println!("HasAns exact {e:.2}  f1 {f:.2}  (total {})", r.has_ans_total);
        }
        if let (Some(e), Some(f)) = (r.no_ans_exact, r.no_ans_f1) {
            println!("NoAns  exact {e:.2}  f1 {f:.2}  (total {})", r.no_ans_total);
        }
        println!(
            "best_exact {:.2} (thresh {:.4})  best_f1 {:.2} (thresh {:.4})",
            r.best_exact, r.best_exact_thresh, r.best_f1, r.best_f1_thresh
        );
    }
    Ok(())
}
