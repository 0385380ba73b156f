//! `sparsec eval`: runs a QA model over a SQuAD file and scores it with the official v1.1 (or
//! v2.0) metric.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::qa::metric::{evaluate_v1, evaluate_v2, Scored, V1Result, V2Result};
use crate::qa::{squad, DecodeOptions, Decoder, QaPipeline, QaRequest, WindowOptions};
use crate::runtime::{EngineKind, EngineOptions, Kernels};

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

#[derive(Serialize)]
struct EvalReport {
    model: String,
    data: String,
    engine: EngineKind,
    decoder: Decoder,
    questions: usize,
    windows: usize,
    seconds: f64,
    features_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    v1: Option<V1Result>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v2: Option<V2Result>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let model = super::resolve_model_path(&args.model);
    let mut examples = squad::load(&args.data)?;
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let mut pipeline = QaPipeline::load(
        &model,
        args.engine,
        &EngineOptions {
            threads: args.threads,
            sparse: args.kernels.sparse_execution(),
            basic_optimizations_only: args.ort_basic,
            ..Default::default()
        },
    )?;
    let windower = pipeline.windower(WindowOptions {
        max_seq_len: args.max_seq_len,
        doc_stride: args.doc_stride,
        max_question_len: 64,
    })?;
    let dopts = DecodeOptions {
        top_k: if args.version_2 { args.n_best + 1 } else { 1 },
        max_answer_len: args.max_answer_length,
        handle_impossible_answer: args.version_2,
        align_to_words: true,
        n_best: args.n_best,
        null_score_diff_threshold: args.null_score_diff_threshold,
    };

    let bar = ProgressBar::new(examples.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} questions [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut windows = 0usize;
    let mut predictions: Vec<String> = Vec::with_capacity(examples.len());
    let mut na_probs: Vec<f64> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(args.batch_size * 8) {
        let reqs: Vec<QaRequest> =
            chunk.iter().map(|e| QaRequest { question: e.question.clone(), context: e.context.clone() }).collect();
        let results = pipeline.answer(&windower, &reqs, args.batch_size, args.decoder, &dopts, |n| {
            windows += n;
            bar.set_message(format!("{:.1} windows/s", windows as f64 / started.elapsed().as_secs_f64()));
        })?;
        for (e, r) in chunk.iter().zip(results) {
            let r = r.with_context(|| format!("question '{}'", e.id))?;
            let best = r.answers.first().map(|a| a.answer.clone()).unwrap_or_default();
            let na =
                r.answers.iter().find(|a| a.answer.is_empty() && a.start == 0 && a.end == 0).map_or(0.0, |a| a.score);
            predictions.push(best);
            na_probs.push(na);
        }
        bar.inc(chunk.len() as u64);
        tracing::info!(
            questions = bar.position(),
            windows,
            windows_per_second = windows as f64 / started.elapsed().as_secs_f64(),
            "eval progress"
        );
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let references: Vec<Vec<String>> =
        examples.iter().map(|e| e.answers.iter().map(|a| a.text.clone()).collect()).collect();
    let scored: Vec<Scored> = examples
        .iter()
        .zip(&references)
        .zip(&predictions)
        .map(|((e, r), p)| Scored { id: &e.id, references: r, prediction: Some(p) })
        .collect();
    let (v1, v2) =
        if args.version_2 { (None, Some(evaluate_v2(&scored, &na_probs))) } else { (Some(evaluate_v1(&scored)), None) };

    if let Some(path) = &args.predictions {
        let map: BTreeMap<&str, &str> =
            examples.iter().zip(&predictions).map(|(e, p)| (e.id.as_str(), p.as_str())).collect();
        crate::files::write_atomic(path, &serde_json::to_vec_pretty(&map)?)?;
    }
    let report = EvalReport {
        model: model.display().to_string(),
        data: args.data.display().to_string(),
        engine: args.engine,
        decoder: args.decoder,
        questions: examples.len(),
        windows,
        seconds,
        features_per_second: windows as f64 / seconds,
        v1,
        v2,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
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
