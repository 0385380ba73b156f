//! SQuAD evaluation of a model file, behind `sparsec eval` and `sparsec sparsify`: the QA pipeline
//! over every question with `run_qa.py`'s post-processing, scored with the official v1.1 (or
//! v2.0) metric.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::qa::metric::{evaluate_v1, evaluate_v2, Scored, V1Result, V2Result};
use crate::qa::{squad, DecodeOptions, Decoder, QaPipeline, QaRequest, WindowOptions};
use crate::runtime::{EngineKind, EngineOptions, Kernels};

/// The settings of one evaluation (the flags of `sparsec eval`).
#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub version_2: bool,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub engine: EngineKind,
    pub kernels: Kernels,
    pub threads: Option<usize>,
    /// Single-thread sessions sharing each batch's windows ([`crate::runtime::Streams`]).
    pub streams: usize,
    /// ONNX Runtime's basic graph rewrites only (`--ort-basic`).
    pub ort_basic: bool,
    pub decoder: Decoder,
    pub max_seq_len: usize,
    pub doc_stride: usize,
    pub max_answer_length: usize,
    pub n_best: usize,
    pub null_score_diff_threshold: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub engine: EngineKind,
    pub decoder: Decoder,
    pub questions: usize,
    pub windows: usize,
    pub seconds: f64,
    pub features_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v1: Option<V1Result>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v2: Option<V2Result>,
}

impl EvalReport {
    /// (exact match, F1): v1's, or v2's over all questions.
    pub fn em_f1(&self) -> (f64, f64) {
        match (&self.v1, &self.v2) {
            (Some(r), _) => (r.exact_match, r.f1),
            (_, Some(r)) => (r.exact, r.f1),
            _ => (0.0, 0.0),
        }
    }
}

/// Evaluates `model` on the SQuAD file `data`; `progress(questions done, questions, windows, seconds)` is called after
/// each chunk. Returns the report and the `(id, answer)` predictions.
pub fn evaluate_file(
    model: &Path,
    data: &Path,
    args: &EvalSettings,
    progress: &mut dyn FnMut(usize, usize, usize, f64),
) -> Result<(EvalReport, Vec<(String, String)>)> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut examples = squad::load(data)?;
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let mut pipeline = QaPipeline::load(
        model,
        args.engine,
        args.kernels,
        &EngineOptions {
            threads: args.threads,
            streams: args.streams,
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

    let started = Instant::now();
    let mut windows = 0usize;
    let mut done = 0usize;
    let mut predictions: Vec<String> = Vec::with_capacity(examples.len());
    let mut na_probs: Vec<f64> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(args.batch_size * 8) {
        let reqs: Vec<QaRequest> =
            chunk.iter().map(|e| QaRequest { question: e.question.clone(), context: e.context.clone() }).collect();
        let results = pipeline.answer(&windower, &reqs, args.batch_size, args.decoder, &dopts, |n| {
            windows += n;
        })?;
        for (e, r) in chunk.iter().zip(results) {
            let r = r.with_context(|| format!("question '{}'", e.id))?;
            let best = r.answers.first().map(|a| a.answer.clone()).unwrap_or_default();
            let na =
                r.answers.iter().find(|a| a.answer.is_empty() && a.start == 0 && a.end == 0).map_or(0.0, |a| a.score);
            predictions.push(best);
            na_probs.push(na);
        }
        done += chunk.len();
        progress(done, examples.len(), windows, started.elapsed().as_secs_f64());
        tracing::info!(
            questions = done,
            windows,
            windows_per_second = windows as f64 / started.elapsed().as_secs_f64(),
            "eval progress"
        );
    }
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
    let report = EvalReport {
        model: model.display().to_string(),
        data: data.display().to_string(),
        engine: args.engine,
        decoder: args.decoder,
        questions: examples.len(),
        windows,
        seconds,
        features_per_second: windows as f64 / seconds,
        v1,
        v2,
    };
    let predictions = examples.iter().map(|e| e.id.clone()).zip(predictions).collect();
    Ok((report, predictions))
}
