//! `sparsec sparsify` end to end on the bert fixture: the deployment folder answers questions,
//! SparseML's underscore spellings give the same run, a run killed mid-training and resumed ends
//! equal to an uninterrupted one, TensorBoard reads back exactly the scalars of train_log.jsonl,
//! report.html is self-contained, and bad flags or files fail before any work starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn model() -> PathBuf {
    fixture_dir("bert").join("model.legacy.onnx")
}

fn squad() -> PathBuf {
    root().join("fixtures/squad-tiny.json")
}

/// The README's bundled example: 80% GMP + QAT + distillation shortened to 6 epochs (66 steps of
/// 8 windows), evaluated on the same 20 questions, in `out`.
fn dashed_args(out: &Path, bench_seconds: &str) -> Vec<String> {
    let (m, d) = (model(), squad());
    [
        "sparsify",
        s(&m),
        "--recipe",
        "gmp80-unstructured-qat-distill",
        "--recipe-args",
        r#"{"num_epochs": 6}"#,
        "--train-file",
        s(&d),
        "--validation-file",
        s(&d),
        "--do-eval",
        "--output-dir",
        s(out),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "8",
        "--threads",
        "1",
        "--bench-seconds",
        bench_seconds,
        "--json",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn run(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    sparsec(&a)
}

fn scratch() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sparsify");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The uninterrupted run every comparison is against (run once per test binary).
fn reference_run() -> &'static (PathBuf, Value) {
    static RUN: OnceLock<(PathBuf, Value)> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = scratch().join("reference");
        let _ = std::fs::remove_dir_all(&out);
        let summary: Value = serde_json::from_str(&ok(&run(&dashed_args(&out, "0.3")))).unwrap();
        (out, summary)
    })
}

/// Every initializer of the deployment's model.onnx, by name, as raw bytes.
fn deployment_weights(out: &Path) -> Vec<(String, Vec<u8>)> {
    let m = sparsec::onnx::load(out.join("deployment/model.onnx")).unwrap();
    let g = &m.graph;
    let mut v: Vec<(String, Vec<u8>)> =
        g.initializers().iter().map(|(&id, t)| (g.value(id).name.clone(), t.raw().to_vec())).collect();
    v.sort();
    v
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn log(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("training/train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same deployment weights, the same step log and the same EM/F1.
fn assert_same_run(a: &Path, b: &Path) {
    let (wa, wb) = (deployment_weights(a), deployment_weights(b));
    assert_eq!(wa.len(), wb.len());
    for (x, y) in wa.iter().zip(&wb) {
        assert_eq!(x.0, y.0);
        assert!(x.1 == y.1, "deployment initializer '{}' differs between {} and {}", x.0, a.display(), b.display());
    }
    let (la, lb) = (log(a), log(b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        for k in ["step", "loss", "loss_span", "loss_distill", "lr", "grad_norm", "sparsity"] {
            assert_eq!(x[k], y[k], "{k} at step {}", x["step"]);
        }
    }
    let (ea, eb) = (json(&a.join("eval_results.json")), json(&b.join("eval_results.json")));
    for k in ["exact_match", "f1", "dense_exact_match", "dense_f1", "questions"] {
        assert_eq!(ea[k], eb[k], "eval_results.json {k}");
    }
}

#[test]
fn sparsify_writes_a_deployment_that_qa_answers_from() {
    let (out, summary) = reference_run();
    let sparsity = summary["pruned_layers_sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.8).abs() < 0.005, "the recipe prunes the encoder linears to 80%: {sparsity}");
    assert_eq!(summary["steps"], 66);
    let eval = json(&out.join("eval_results.json"));
    assert_eq!(eval["questions"], 20);
    let (f1, dense) = (eval["f1"].as_f64().unwrap(), eval["dense_f1"].as_f64().unwrap());
    assert!((0.0..=100.0).contains(&f1) && (0.0..=100.0).contains(&dense));
    assert_eq!(summary["eval"]["f1"], eval["f1"]);
    assert!((eval["f1_delta"].as_f64().unwrap() - (f1 - dense)).abs() < 1e-9);
    let speed = &summary["speed"];
    assert!(speed["deployment_items_per_second"].as_f64().unwrap() > 0.0);
    assert!(speed["dense_items_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(speed["seq_len"], 64);
    let sp = json(&out.join("deployment/sparsity.json"));
    assert!(sp["int8_weights"].as_u64().unwrap() > 0, "the deployment is int8 (QAT ran)");
    assert!(out.join("training/checkpoints").is_dir());
    for f in ["tokenizer.json", "recipe.yaml", "config.json"] {
        assert!(out.join("deployment").join(f).exists(), "deployment/{f}");
    }

    let deployment = out.join("deployment");
    let qa = ok(&sparsec(&[
        "qa",
        "--model",
        s(&deployment),
        "--question",
        "Who founded the company?",
        "--context",
        "The company was founded by Ada Lovelace in London.",
        "--json",
    ]));
    let answers: Value = serde_json::from_str(&qa).unwrap();
    let answer = answers["answer"].as_str().or(answers[0]["answer"].as_str()).unwrap_or_else(|| panic!("{qa}"));
    assert!("The company was founded by Ada Lovelace in London.".contains(answer), "a span of the context: {qa}");

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 5, "loss, sparsity, lr, F1 and per-layer charts");
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("@import"), "no JS, no CDN");
    assert!(!html.contains("src=") && !html.contains("href="), "nothing fetched");
    for needle in ["Training loss", "Sparsity per layer", "bert.encoder.layer.0.attention.self.query.weight"] {
        assert!(html.contains(needle), "report.html shows '{needle}'");
    }
}

#[test]
fn underscore_spellings_give_the_same_run() {
    let (reference, _) = reference_run();
    let out = scratch().join("underscore");
    let _ = std::fs::remove_dir_all(&out);
    let (m, d) = (model(), squad());
    ok(&sparsec(&[
        "sparsify",
        "--model_name_or_path",
        s(&m),
        "--recipe",
        "gmp80-unstructured-qat-distill",
        "--recipe_args",
        r#"{"num_epochs": 6}"#,
        "--train_file",
        s(&d),
        "--validation_file",
        s(&d),
        "--do_train",
        "--do_eval",
        "--output_dir",
        s(&out),
        "--distill_teacher",
        "self",
        "--num_train_epochs",
        "6",
        "--max_seq_length",
        "64",
        "--doc_stride",
        "32",
        "--per_device_train_batch_size",
        "8",
        "--threads",
        "1",
        "--bench-seconds",
        "0",
        "--json",
    ]));
    assert_same_run(reference, &out);
}

#[test]
fn killed_sparsify_resumes_and_ends_equal_to_an_uninterrupted_run() {
    let (reference, _) = reference_run();
    let out = scratch().join("killed");
    let _ = std::fs::remove_dir_all(&out);
    let args = dashed_args(&out, "0");
    let mut child =
        crate::common::sparsec_command().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // SIGKILL as soon as the second checkpoint (end of epoch 2, step 22) is there.
    let ckpt = out.join("training/checkpoints/step-000000022");
    let t = Instant::now();
    while !ckpt.exists() {
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "sparsify ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("deployment").exists(), "killed during training: no deployment yet");

    let rerun = run(&dashed_args(&out, "0"));
    assert!(!rerun.status.success(), "a used output folder without --resume is an error");
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("--resume"));

    let mut resume = dashed_args(&out, "0");
    resume.push("--resume".into());
    let summary: Value = serde_json::from_str(&ok(&run(&resume))).unwrap();
    let from = summary["resumed_from_step"].as_u64().expect("the run resumed from a checkpoint");
    assert!((22..66).contains(&from), "resumed mid-run at step {from}");
    assert_same_run(reference, &out);
    assert_tensorboard_equals_log(&out);
}

/// Python's TensorBoard (EventAccumulator) reads the event files, and every scalar equals the
/// step log's value as f32, eval EM/F1 included.
fn assert_tensorboard_equals_log(out: &Path) {
    let probe = Command::new("python3").args(["-c", "import tensorboard"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("Python's tensorboard is not installed (pip install tensorboard); events not read back");
        return;
    }
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
"#;
    let dir = out.join("training/tensorboard");
    let py = Command::new("python3").args(["-c", script, s(&dir)]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let tb: Value = serde_json::from_slice(&py.stdout).unwrap();
    let series = |tag: &str| -> Vec<(u64, f32)> {
        tb[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no '{tag}' in {dir:?}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect()
    };
    let lines = log(out);
    for (tag, key) in [
        ("train/loss", "loss"),
        ("train/loss_span", "loss_span"),
        ("train/loss_distill", "loss_distill"),
        ("train/learning_rate", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("train/sparsity", "sparsity"),
        ("train/epoch", "epoch"),
    ] {
        let got = series(tag);
        assert_eq!(got.len(), lines.len(), "{tag}: one scalar per logged step");
        for (g, l) in got.iter().zip(&lines) {
            assert_eq!(g.0, l["step"].as_u64().unwrap(), "{tag}");
            assert_eq!(g.1, l[key].as_f64().unwrap() as f32, "{tag} at step {}", g.0);
        }
    }
    let evals = json(&out.join("training/train_summary.json"))["evals"].as_array().unwrap().clone();
    assert_eq!(evals.len(), 6, "one evaluation per epoch");
    for (tag, key) in [("eval/f1", "f1"), ("eval/exact_match", "exact_match")] {
        let got = series(tag);
        assert_eq!(got.len(), evals.len(), "{tag}");
        for (g, e) in got.iter().zip(&evals) {
            assert_eq!(g.0, e["step"].as_u64().unwrap());
            assert_eq!(g.1, e[key].as_f64().unwrap() as f32, "{tag} at step {}", g.0);
        }
    }
}

#[test]
fn tensorboard_reads_back_the_logged_scalars() {
    let (out, _) = reference_run();
    assert_tensorboard_equals_log(out);
}

#[test]
fn bad_flags_and_files_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (m, d) = (model(), squad());
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{not json").unwrap();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["sparsify", s(&m), "--recipe", "gmp80-unstructured-qat-distill", "--output-dir", s(&out)]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let missing = dir.path().join("missing.json");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(&["--train-file", s(&missing)]), "missing.json"),
        (base(&["--train-file", s(&bad_json)]), "--train-file"),
        (base(&["--train-file", s(&d), "--validation-file", s(&missing)]), "--validation-file"),
        (base(&["--train-file", s(&d), "--do-eval"]), "--do-eval needs --validation-file"),
        (base(&["--train-file", s(&d), "--recipe-args", "{oops"]), "--recipe-args is not valid JSON"),
        (base(&["--train-file", s(&d), "--recipe_args", r#"{"no_such_var": 1}"#]), "no_such_var"),
        (base(&["--dataset_name", "squad"]), "--train-file"),
        (base(&["--train-file", s(&d), "--distill-teacher", s(&missing)]), "--distill-teacher"),
        (
            base(&["--train-file", s(&d), "--distill_teacher", "zoo:nlp/question_answering/bert-base/x"]),
            "downloads nothing",
        ),
        (base(&["--train-file", s(&d), "--no-such-flag"]), "--no-such-flag"),
        (base(&["--train-file", s(&d), "--fork-from", s(&missing)]), "--fork-from is a `sparsec train` flag"),
        (base(&["--train-file", s(&d), "--per_device_train_batch_size", "eight"]), "eight"),
        (
            vec![
                "sparsify".into(),
                s(&missing).into(),
                "--recipe".into(),
                "dense-finetune".into(),
                "--train-file".into(),
                s(&d).into(),
                "--output-dir".into(),
                s(&out).into(),
            ],
            "missing.json",
        ),
        (
            vec![
                "sparsify".into(),
                s(&m).into(),
                "--recipe".into(),
                "gmp80-unstrctured".into(),
                "--train-file".into(),
                s(&d).into(),
                "--output-dir".into(),
                s(&out).into(),
            ],
            "did you mean 'gmp80-unstructured-qat-distill'",
        ),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(needle), "{args:?}: the error names '{needle}': {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?}: nothing written before the error");
    }
    let o = run(&base(&["--dataset_name", "squad", "--train-file", s(&d)]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("downloads no datasets"), "{err}");
}

#[test]
fn one_shot_sparsify_prunes_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("oneshot");
    // Over the folder of an earlier run that evaluated: its results must not survive.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("eval_results.json"), r#"{"f1": 99.9}"#).unwrap();
    let (m, d) = (model(), squad());
    let summary: Value = serde_json::from_str(&ok(&sparsec(&[
        "sparsify",
        s(&m),
        "--overwrite-output-dir",
        "--recipe",
        "obs80-oneshot",
        "--one-shot",
        "16",
        "--train-file",
        s(&d),
        "--output-dir",
        s(&out),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--threads",
        "1",
        "--bench-seconds",
        "0",
        "--json",
    ])))
    .unwrap();
    assert_eq!(summary["one_shot"], true);
    let sparsity = summary["pruned_layers_sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.8).abs() < 0.005, "{sparsity}");
    assert!(summary.get("eval").is_none() && summary.get("speed").is_none(), "neither asked for");
    assert!(out.join("deployment/model.onnx").exists() && out.join("report.html").exists());
    assert!(!out.join("eval_results.json").exists(), "a stale eval_results.json survived --overwrite-output-dir");
}
