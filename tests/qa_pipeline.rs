//! `sparsec qa` against the Hugging Face question-answering pipeline (transformers 4.57.6): every
//! case of every fixture's `qa_reference.json` (made by fixtures/generate.py), for both exporters
//! and both engines. Windows must equal the pipeline's features token for token; decoding the
//! pipeline's own PyTorch logits must give its answers; the full pipeline on ONNX must give the
//! same answers (text, start, end) with scores within 1e-4.

use crate::common;

use serde_json::Value;
use sparsec::qa::postprocess::{decode, WindowLogits};
use sparsec::qa::{DecodeOptions, Decoder, QaPipeline, QaTokenizer, WindowOptions};
use sparsec::runtime::{EngineKind, EngineOptions, Kernels};

const SCORE_TOL: f64 = 1e-4;

fn reference(model: &str) -> Value {
    let p = common::fixture_dir(model).join("qa_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn window_opts(kw: &Value) -> WindowOptions {
    WindowOptions {
        max_seq_len: kw["max_seq_len"].as_u64().unwrap() as usize,
        doc_stride: kw["doc_stride"].as_u64().unwrap() as usize,
        max_question_len: kw["max_question_len"].as_u64().unwrap() as usize,
    }
}

fn decode_opts(kw: &Value) -> DecodeOptions {
    DecodeOptions {
        top_k: kw["top_k"].as_u64().unwrap() as usize,
        max_answer_len: kw["max_answer_len"].as_u64().unwrap() as usize,
        handle_impossible_answer: kw["handle_impossible_answer"].as_bool().unwrap(),
        align_to_words: kw["align_to_words"].as_bool().unwrap(),
        ..DecodeOptions::default()
    }
}

/// The expected answers as (text, start, end, score), a list even for `top_k == 1`.
fn expected(case: &Value) -> Vec<(String, usize, usize, f64)> {
    let outs = match &case["outputs"] {
        Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    outs.iter()
        .map(|o| {
            (
                o["answer"].as_str().unwrap().to_string(),
                o["start"].as_u64().unwrap() as usize,
                o["end"].as_u64().unwrap() as usize,
                o["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn check_answers(what: &str, got: &[sparsec::qa::Answer], want: &[(String, usize, usize, f64)]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {} answers, want {}: {got:?} vs {want:?}", got.len(), want.len());
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.answer.as_str(), g.start, g.end), (w.0.as_str(), w.1, w.2), "{what}: {got:?} vs {want:?}");
        let d = (g.score - w.3).abs();
        assert!(d <= SCORE_TOL, "{what}: score {} vs {} (|diff| {d:e})", g.score, w.3);
        worst = worst.max(d);
    }
    worst
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn windows_equal_the_pipeline_features() {
    let mut cases = 0;
    for model in common::FIXTURE_MODELS {
        let reference = reference(model);
        let tok = QaTokenizer::from_file(&common::fixture_dir(model).join("tokenizer.json")).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let name = format!("{model}/{}", case["name"].as_str().unwrap());
            let windower = tok.windower(window_opts(&case["kwargs"])).unwrap();
            let got = windower.windows(case["question"].as_str().unwrap(), case["context"].as_str().unwrap()).unwrap();
            let want = case["windows"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{name}: window count");
            assert_eq!(got.len() as u64, case["num_windows"].as_u64().unwrap(), "{name}: num_windows");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g.input_ids, ints(&w["input_ids"]), "{name} window {i}: input_ids");
                assert_eq!(g.attention_mask, ints(&w["attention_mask"]), "{name} window {i}: attention_mask");
                if let Some(t) = w.get("token_type_ids") {
                    assert_eq!(g.type_ids, ints(t), "{name} window {i}: token_type_ids");
                }
                let offsets: Vec<(usize, usize)> = w["offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize))
                    .collect();
                assert_eq!(g.offsets, offsets, "{name} window {i}: offsets");
                let seq: Vec<Option<usize>> =
                    w["sequence_ids"].as_array().unwrap().iter().map(|s| s.as_u64().map(|x| x as usize)).collect();
                assert_eq!(g.sequence_ids, seq, "{name} window {i}: sequence_ids");
                let p_mask: Vec<bool> = ints(&w["p_mask"]).iter().map(|&x| x == 1).collect();
                assert_eq!(g.p_mask, p_mask, "{name} window {i}: p_mask");
            }
            cases += 1;
        }
    }
    assert!(cases >= 21, "only {cases} cases");
}

#[test]
fn decoding_the_pipeline_logits_gives_the_pipeline_answers() {
    let mut worst = 0.0f64;
    for model in common::FIXTURE_MODELS {
        let reference = reference(model);
        let tok = QaTokenizer::from_file(&common::fixture_dir(model).join("tokenizer.json")).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let name = format!("{model}/{}", case["name"].as_str().unwrap());
            let kw = &case["kwargs"];
            let context = case["context"].as_str().unwrap();
            let windows =
                tok.windower(window_opts(kw)).unwrap().windows(case["question"].as_str().unwrap(), context).unwrap();
            let logits: Vec<(Vec<f32>, Vec<f32>)> = case["windows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| {
                    let f = |k: &str| w[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                    (f("start_logits"), f("end_logits"))
                })
                .collect();
            let views: Vec<WindowLogits> = logits.iter().map(|(s, e)| WindowLogits { start: s, end: e }).collect();
            let got = decode(Decoder::Pipeline, &windows, &views, context, &decode_opts(kw));
            worst = worst.max(check_answers(&name, &got, &expected(case)));
        }
    }
    eprintln!("decoding the PyTorch logits: max |score diff| {worst:e}");
    assert!(worst < 1e-6, "decoding identical logits should give scores equal to f32 rounding, got {worst:e}");
}

fn run_engine(engine: EngineKind) {
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (model, exporter, path) in common::fixture_exports() {
        let reference = reference(&model);
        let mut pipe =
            QaPipeline::load(&path, engine, Kernels::Off, &EngineOptions { threads: Some(1), ..Default::default() })
                .unwrap_or_else(|e| panic!("{model}/{exporter} on {engine}: {e:#}"));
        for case in reference["cases"].as_array().unwrap() {
            let name = format!("{model}/{exporter}/{engine}/{}", case["name"].as_str().unwrap());
            let kw = &case["kwargs"];
            let got = pipe
                .answer_one(
                    case["question"].as_str().unwrap(),
                    case["context"].as_str().unwrap(),
                    window_opts(kw),
                    Decoder::Pipeline,
                    &decode_opts(kw),
                    4,
                )
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            worst = worst.max(check_answers(&name, &got, &expected(case)));
            checked += 1;
        }
    }
    eprintln!("{engine}: {checked} cases, max |score diff| vs the HF pipeline {worst:e}");
    assert_eq!(checked, 63, "3 models x 3 exporters x 7 cases");
}

#[test]
fn sparsec_qa_on_ort_equals_the_pipeline_on_every_fixture() {
    run_engine(EngineKind::Ort);
}

#[test]
fn sparsec_qa_on_tract_equals_the_pipeline_on_every_fixture() {
    run_engine(EngineKind::Tract);
}

#[test]
fn the_binary_answers_a_multi_window_question_like_the_pipeline() {
    let reference = reference("bert");
    let case = reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == "long_384").unwrap();
    assert!(case["num_windows"].as_u64().unwrap() >= 3);
    let model = common::fixture_dir("bert").join("model.legacy.onnx");
    let out = crate::common::sparsec_command()
        .args(["qa", "--model"])
        .arg(&model)
        .args(["--question", case["question"].as_str().unwrap(), "--context", case["context"].as_str().unwrap()])
        .args(["--max-answer-length", "15", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = &case["outputs"];
    assert_eq!(got["answer"], want["answer"]);
    assert_eq!(got["start"], want["start"]);
    assert_eq!(got["end"], want["end"]);
    let d = (got["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs();
    assert!(d <= SCORE_TOL, "score diff {d:e}");
}
