//! Models exported with fixed input dims (SparseML's and DeepSparse's convention): the bert
//! fixture exported at `[batch, 128]` and at `[1, 384]` (`fixtures/generate_static.py`) answers
//! `qa` and `eval` like its dynamic twin (`model.legacy.onnx`, the same weights): windows are
//! split at the fixed length and padded to it, and the last batch is padded to the fixed batch
//! size. Requests the shape cannot take fail with an error naming it.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use serde_json::Value;

fn ok(out: Output) -> String {
    assert!(out.status.success(), "sparsec failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn bert(file: &str) -> PathBuf {
    fixture_dir("bert").join(file)
}

/// Every question of `fixtures/squad-tiny.json` as `qa --file` JSONL.
fn questions(dir: &Path) -> PathBuf {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/squad-tiny.json")).unwrap()).unwrap();
    let mut lines = String::new();
    for a in d["data"].as_array().unwrap() {
        for p in a["paragraphs"].as_array().unwrap() {
            for q in p["qas"].as_array().unwrap() {
                let r = serde_json::json!({"id": q["id"], "question": q["question"], "context": p["context"]});
                lines.push_str(&format!("{r}\n"));
            }
        }
    }
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

/// The same answers (text and character span) in the same order; scores equal up to the float
/// rounding that a longer padded sequence brings (measured: about 3e-7 relative).
fn assert_same_answers(a: &str, b: &str, label: &str) {
    let (a, b): (Vec<Value>, Vec<Value>) = (
        a.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
        b.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
    );
    assert_eq!(a.len(), 20, "{label}");
    assert_eq!(a.len(), b.len(), "{label}");
    let mut worst: f64 = 0.0;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["id"], y["id"]);
        let (xs, ys) = (x["answers"].as_array().unwrap(), y["answers"].as_array().unwrap());
        assert_eq!(xs.len(), ys.len(), "{label} {}", x["id"]);
        for (p, q) in xs.iter().zip(ys) {
            for k in ["answer", "start", "end"] {
                assert_eq!(p[k], q[k], "{label} {} {k}", x["id"]);
            }
            let (ps, qs) = (p["score"].as_f64().unwrap(), q["score"].as_f64().unwrap());
            let rel = (ps - qs).abs() / ps.abs().max(1e-12);
            worst = worst.max(rel);
            assert!(rel <= 1e-5, "{label} {}: score {ps} vs {qs}", x["id"]);
        }
    }
    println!("{label}: same answers; scores within {worst:.1e} relative");
}

fn eval(model: &Path, extra: &[&str]) -> Value {
    let data = root().join("fixtures/squad-tiny.json");
    let mut args = vec!["eval", "--model", s(model), "--data", s(&data), "--json"];
    args.extend(extra);
    serde_json::from_str(&ok(sparsec(&args))).unwrap()
}

#[test]
fn fixed_1x384_model_answers_like_its_dynamic_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let q = questions(tmp.path());
    for engine in ["ort", "tract"] {
        let args = |m: &Path| -> Vec<String> {
            ["qa", "--model", s(m), "--file", s(&q), "--top-k", "3", "--batch-size", "4", "--engine", engine]
                .map(String::from)
                .to_vec()
        };
        let run = |m: &Path| ok(sparsec(&args(m).iter().map(String::as_str).collect::<Vec<_>>()));
        let dynamic = run(&bert("model.legacy.onnx"));
        let fixed = run(&bert("model.static-1x384.onnx"));
        assert_same_answers(&dynamic, &fixed, &format!("qa [1, 384] {engine}"));
    }
    let (d, f) =
        (eval(&bert("model.legacy.onnx"), &[]), eval(&bert("model.static-1x384.onnx"), &["--batch-size", "5"]));
    assert_eq!(d["v1"], f["v1"], "EM/F1");
    assert_eq!(d["windows"], f["windows"]);
}

#[test]
fn fixed_length_128_model_answers_like_its_dynamic_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let q = questions(tmp.path());
    let win = ["--max-seq-len", "128", "--doc-stride", "64"];
    let run = |m: &Path| {
        let mut a = vec!["qa", "--model", s(m), "--file", s(&q), "--top-k", "3", "--batch-size", "3"];
        a.extend(win);
        ok(sparsec(&a))
    };
    assert_same_answers(&run(&bert("model.legacy.onnx")), &run(&bert("model.static-b128.onnx")), "qa [batch, 128]");
    let d = eval(&bert("model.legacy.onnx"), &win);
    let f = eval(&bert("model.static-b128.onnx"), &win);
    assert_eq!(d["v1"], f["v1"], "EM/F1");
    assert!(d["windows"].as_u64().unwrap() > 20, "contexts are split into several 128-token windows");
    assert_eq!(d["windows"], f["windows"]);
}

#[test]
fn requests_a_fixed_shape_cannot_take_fail_naming_the_shape() {
    let m = bert("model.static-b128.onnx");
    let long_question = "why ".repeat(130);
    let o = sparsec(&["qa", "--model", s(&m), "--question", &long_question, "--context", "It is in Paris."]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("the model's inputs are fixed at [batch, 128]"), "{e}");

    let o = sparsec(&["qa", "--model", s(&m), "--question", "Who?", "--context", "Ada.", "--doc-stride", "128"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("the model's inputs are fixed at [batch, 128]") && e.contains("--doc-stride 128"), "{e}");

    let o =
        sparsec(&["bench", "--model", s(&bert("model.static-1x384.onnx")), "--batch-size", "2", "--seconds", "0.1"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--batch-size 2 --seq-len 384 do not fit") && e.contains("fixed at [1, 384]"), "{e}");
}

#[test]
fn bench_runs_a_fixed_shape_model_at_its_shape() {
    let out = ok(sparsec(&[
        "bench",
        "--model",
        s(&bert("model.static-b128.onnx")),
        "--batch-size",
        "3",
        "--seq-len",
        "128",
        "--seconds",
        "0.2",
        "--warmup",
        "0",
        "--json",
    ]));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["results"][0]["seq_len"], 128);
    assert!(r["results"][0]["iterations"].as_u64().unwrap() >= 1);
}

#[test]
fn training_a_fixed_length_model_needs_that_length_padded() {
    let tmp = tempfile::tempdir().unwrap();
    let compiled = tmp.path().join("compiled");
    let recipe = root().join("tests/data/recipes/gmp50-fp32.yaml");
    ok(sparsec(&["compile", s(&bert("model.static-b128.onnx")), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let data = root().join("fixtures/squad-tiny.json");
    let train = |extra: &[&str], out: &str| {
        let out = tmp.path().join(out);
        let mut a = vec![
            "train",
            "--model",
            s(&compiled),
            "--train-file",
            s(&data),
            "--output-dir",
            s(&out),
            "--doc-stride",
            "64",
            "--max-steps",
            "2",
            "--threads",
            "1",
        ];
        a.extend(extra);
        sparsec(&a.iter().map(|x| x.to_string()).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = train(&["--max-seq-length", "64"], "t1");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("the model's inputs are fixed at [batch, 128]: train with --max-seq-length 128 --pad-to-max-length"),
        "{e}"
    );
    ok(train(&["--max-seq-length", "128", "--pad-to-max-length"], "t2"));
}
