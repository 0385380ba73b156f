//! A batch run as one-sequence pieces on several single-thread sessions (`EngineOptions::streams`,
//! `sparsec bench --streams`) gives the same outputs as the whole batch in one session.

use std::path::Path;

use ndarray::Array2;
use sparsec::passes::SparseExecution;
use sparsec::runtime::{EngineKind, EngineOptions, HostTensor};

use crate::common::*;

/// `rows` sequences of `seq` tokens, each different, with padding on some.
fn batch(names: &[String], rows: usize, seq: usize) -> Vec<(String, HostTensor)> {
    names
        .iter()
        .map(|n| {
            let a = match n.as_str() {
                "input_ids" => Array2::from_shape_fn((rows, seq), |(i, j)| (5 + (i * 131 + j * 37) % 900) as i64),
                "attention_mask" => Array2::from_shape_fn((rows, seq), |(i, j)| i64::from(j < seq - (i % 3) * 4)),
                "token_type_ids" => Array2::from_shape_fn((rows, seq), |(_, j)| i64::from(j >= seq / 3)),
                other => panic!("unexpected model input {other}"),
            };
            (n.clone(), HostTensor::I64(a.into_dyn()))
        })
        .collect()
}

/// Runs `path` lowered to sparsec's kernels on a batch of 5 with `streams` sessions.
fn outputs(path: &Path, streams: usize, seq: usize) -> Vec<(String, HostTensor)> {
    let opts = EngineOptions { threads: Some(2), streams, ..Default::default() };
    let (mut b, reports) = load_lowered(path, EngineKind::Ort, Some(SparseExecution::default()), &opts);
    assert!(
        reports.iter().any(|r| r.rewritten > 0),
        "{}: nothing ran on sparsec's kernels: {reports:?}",
        path.display()
    );
    let feed = batch(b.input_names(), 5, seq);
    let f: Vec<(&str, HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    b.run(&f).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// Per-row products are the same whatever the batch around them; the only difference allowed is
/// ONNX Runtime's own f32 kernels choosing another blocking for a smaller batch (1e-5 relative).
fn assert_same(path: &Path, seq: usize) {
    let whole = outputs(path, 0, seq);
    let split = outputs(path, 2, seq);
    assert_eq!(whole.len(), split.len());
    for ((n1, a), (n2, b)) in whole.iter().zip(&split) {
        assert_eq!(n1, n2);
        let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        assert_eq!(a.shape(), b.shape(), "{n1}");
        let worst = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0f32, f32::max);
        println!("{} {n1}: max relative difference {worst:e}", path.display());
        assert!(worst <= 1e-5, "{}: output '{n1}' differs by {worst:e} when split into streams", path.display());
    }
}

#[test]
fn a_batch_split_into_streams_gives_the_whole_batch_outputs() {
    assert_same(&fixture_dir("bert").join("model.legacy.onnx"), 23);
}

#[test]
fn a_sparseml_export_split_into_streams_gives_the_whole_batch_outputs() {
    let p = root().join("../shared/models/sparseml/minilm-sml-80block4-int8-seq128/model.onnx");
    if !p.exists() {
        skip("../shared/models/sparseml is absent");
        return;
    }
    assert_same(&p, 128);
}

/// `sparsec eval --streams 2` predicts exactly what one session predicts.
#[test]
fn eval_with_streams_predicts_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let data = root().join("fixtures/squad-tiny.json");
    let run = |streams: &str| {
        let preds = dir.path().join(format!("preds-{streams}.json"));
        let out = ok(&sparsec(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "4",
            "--streams",
            streams,
            "--predictions",
            preds.to_str().unwrap(),
            "--json",
        ]));
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        (report["v1"]["exact_match"].clone(), report["v1"]["f1"].clone(), std::fs::read_to_string(preds).unwrap())
    };
    let (em1, f11, p1) = run("0");
    let (em2, f12, p2) = run("2");
    assert!(em1.is_number() && f11.is_number(), "{em1} {f11}");
    assert_eq!((em1, f11), (em2, f12));
    assert_eq!(p1, p2, "the same predictions");
}
