//! Evaluation during training: the compiled model run on ONNX Runtime with the current weights,
//! masks and quantization parameters bound, scored with SQuAD v1.1 EM/F1 on the eval questions.

use anyhow::{Context, Result};

use super::config::TrainConfig;
use crate::compile::Compiled;
use crate::qa::metric::{evaluate_v1, Scored, V1Result};
use crate::qa::{squad, DecodeOptions, Decoder, QaPipeline, QaRequest, QaTokenizer, WindowOptions};
use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor, WithInputs};

/// Runs the training graph's inference half (the compiled model) with bound inputs.
pub(super) fn eval_backend(
    compiled: &Compiled,
    bound: Vec<(String, HostTensor)>,
    threads: Option<usize>,
) -> Result<WithInputs> {
    let bytes = crate::onnx::encode_model(&compiled.model);
    let backend = runtime::load_bytes(&bytes, EngineKind::Ort, &EngineOptions { threads, ..Default::default() })
        .context("cannot load the compiled model for evaluation")?;
    Ok(WithInputs::new(backend, bound))
}

/// SQuAD v1.1 EM/F1 of `backend` on `examples`.
pub(super) fn evaluate(
    backend: Box<dyn Backend>,
    tokenizer: QaTokenizer,
    cfg: &TrainConfig,
    examples: &[squad::Example],
) -> Result<V1Result> {
    let mut pipeline = QaPipeline::new(backend, tokenizer)?;
    let windower = pipeline.windower(WindowOptions {
        max_seq_len: cfg.max_seq_length,
        doc_stride: cfg.doc_stride,
        max_question_len: 64,
    })?;
    let opts = DecodeOptions {
        top_k: 1,
        max_answer_len: 30,
        handle_impossible_answer: false,
        align_to_words: true,
        n_best: 20,
        null_score_diff_threshold: 0.0,
    };
    let reqs: Vec<QaRequest> =
        examples.iter().map(|e| QaRequest { question: e.question.clone(), context: e.context.clone() }).collect();
    let results = pipeline.answer(&windower, &reqs, cfg.eval_batch_size, Decoder::Squad, &opts, |_| {})?;
    let mut preds = Vec::with_capacity(examples.len());
    for (e, r) in examples.iter().zip(results) {
        let r = r.with_context(|| format!("eval question '{}'", e.id))?;
        preds.push(r.answers.first().map(|a| a.answer.clone()).unwrap_or_default());
    }
    let refs: Vec<Vec<String>> = examples.iter().map(|e| e.answers.iter().map(|a| a.text.clone()).collect()).collect();
    let scored: Vec<Scored> = examples
        .iter()
        .zip(&refs)
        .zip(&preds)
        .map(|((e, r), p)| Scored { id: &e.id, references: r, prediction: Some(p) })
        .collect();
    Ok(evaluate_v1(&scored))
}
