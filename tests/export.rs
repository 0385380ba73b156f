//! `sparsec export` on fixtures: the exported inference model computes what the trained graph
//! computed in eval mode (masked fp32 within 1e-4; int8 QDQ equal to the fake-quant graph under
//! ORT's rounding-preserving optimisations), carries int8 weights and the recipe in its metadata,
//! runs in ORT (Rust and Python) and tract, passes the ONNX checker, and bad inputs fail clearly.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use ndarray::ArrayD;
use serde_json::Value;
use sparsec::ir::DType;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

fn sparsec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsec")).args(args).output().expect("run sparsec")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "sparsec failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Compiles and trains the bert fixture with `recipe` (recipe args `args`); returns the trained folder.
fn trained(dir: &Path, recipe: &Path, args: &str) -> PathBuf {
    let compiled = dir.join("compiled");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(recipe), "--recipe-args", args, "-o", s(&compiled)]));
    let out = dir.join("trained");
    let data = root().join("fixtures/squad-tiny.json");
    ok(&sparsec(&[
        "train",
        "--model",
        s(&compiled),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&out),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "8",
        "--threads",
        "1",
    ]));
    out
}

fn inputs() -> Vec<(String, HostTensor)> {
    let mut by_case: std::collections::BTreeMap<String, Vec<(String, HostTensor)>> = Default::default();
    for (name, t) in read_safetensors(&fixture_dir("bert").join("reference.safetensors")) {
        let (case, field) = name.split_once('.').unwrap();
        by_case.entry(case.into()).or_default().push((field.into(), t));
    }
    let (_, fields) = by_case.into_iter().next().unwrap();
    fields
        .into_iter()
        .filter(|(f, _)| ["input_ids", "attention_mask", "token_type_ids"].contains(&f.as_str()))
        .collect()
}

fn logits(path: &Path, engine: EngineKind, basic: bool) -> HashMap<String, ArrayD<f32>> {
    let opts = EngineOptions { basic_optimizations_only: basic, threads: Some(1) };
    let mut b = runtime::load_file(path, engine, &opts).unwrap();
    let owned = inputs();
    let feeds: Vec<(&str, HostTensor)> = owned.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    b.run(&feeds)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n.ends_with("_logits"))
        .map(|(n, t)| (n, t.into_f32().unwrap()))
        .collect()
}

fn max_diff(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>) -> f32 {
    assert_eq!(a.len(), 2, "start and end logits");
    a.iter().map(|(k, x)| x.iter().zip(b[k].iter()).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)).fold(0.0, f32::max)
}

fn export(trained: &Path, out: &Path) -> Value {
    serde_json::from_str(&ok(&sparsec(&["export", "--model", s(trained), "-o", s(out), "--json"]))).unwrap()
}

#[test]
fn masked_fp32_export_equals_the_trained_graph() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained(dir.path(), &root().join("tests/data/recipes/gmp50-fp32.yaml"), "{}");
    let dep = dir.path().join("deployment");
    let report = export(&t, &dep);
    let sp = report["pruned_layers_sparsity"].as_f64().unwrap();
    assert!((sp - 0.5).abs() < 0.005, "pruned layers are 50% zeros: {sp}");
    for f in ["model.onnx", "tokenizer.json", "config.json", "recipe.yaml", "sparsity.json"] {
        assert!(dep.join(f).exists(), "deployment has {f}");
    }
    let m = sparsec::onnx::load(dep.join("model.onnx")).unwrap();
    let g = &m.graph;
    assert!(g.nodes().all(|(_, n)| !n.name.starts_with("sparsec.")), "no training nodes left");
    let ins: Vec<String> = g.inputs().iter().map(|&v| g.value(v).name.clone()).collect();
    assert_eq!(ins, vec!["input_ids", "attention_mask", "token_type_ids"]);
    let outs: Vec<String> = g.outputs().iter().map(|&v| g.value(v).name.clone()).collect();
    assert_eq!(outs, vec!["start_logits", "end_logits"]);
    assert!(m.metadata_props.iter().any(|(k, v)| k == "sparsec.recipe" && v.contains("GMPruningModifier")));
    let d = max_diff(
        &logits(&t.join("model.onnx"), EngineKind::Ort, false),
        &logits(&dep.join("model.onnx"), EngineKind::Ort, false),
    );
    println!("masked fp32: exported vs trained graph max |Δlogit| = {d:e}");
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn int8_export_equals_the_fake_quant_graph_and_runs_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained(dir.path(), &root().join("recipes/gmp80-unstructured-qat-distill.yaml"), r#"{"num_epochs": 6}"#);
    let dep = dir.path().join("deployment");
    let report = export(&t, &dep);
    let exported = dep.join("model.onnx");
    let m = sparsec::onnx::load(&exported).unwrap();
    let g = &m.graph;
    let int8: usize = g
        .initializers()
        .iter()
        .filter(|(&v, t)| t.dtype == DType::I8 && g.value(v).name.ends_with(".int8"))
        .map(|(_, t)| t.numel())
        .sum();
    assert_eq!(report["int8_weights"].as_u64().unwrap() as usize, int8, "{report}");
    let int8_dq = g
        .nodes()
        .filter(|(_, n)| n.op_type == "DequantizeLinear")
        .filter(|(_, n)| n.input(0).and_then(|v| g.initializer(v)).is_some_and(|t| t.dtype == DType::I8))
        .count();
    assert_eq!(int8_dq, 13, "12 encoder linears + qa_outputs have int8 weights");
    let sp = report["pruned_layers_sparsity"].as_f64().unwrap();
    assert!((sp - 0.8).abs() < 0.005, "{sp}");

    // Same rounding: with ORT's basic optimisations both graphs dequantize identical int8 values.
    let fq = logits(&t.join("model.onnx"), EngineKind::Ort, true);
    let d = max_diff(&fq, &logits(&exported, EngineKind::Ort, true));
    println!("int8: exported QDQ vs fake-quant graph (ORT basic optimisations) max |Δlogit| = {d:e}");
    assert!(d <= 1e-4, "{d}");
    let fused = logits(&exported, EngineKind::Ort, false);
    let d_fused = max_diff(&fq, &fused);
    let tract = logits(&exported, EngineKind::Tract, false);
    let d_tract = max_diff(&fq, &tract);
    println!("int8 with ORT's QDQ fusions: {d_fused:e}; tract: {d_tract:e}");
    let range = fq["start_logits"].iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(d_fused <= 0.05 * range.max(1.0) && d_tract <= 0.05 * range.max(1.0), "integer kernels stay close");

    // Python onnxruntime (CI installs it) and, where the onnx package is present, the ONNX checker.
    let py = r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = {i.name: np.ones((1, 16), dtype=np.int64) for i in s.get_inputs()}
out = s.run(None, feeds)
assert out[0].shape == (1, 16), out[0].shape
try:
    import onnx
except ImportError:
    print("SKIPPED: onnx checker (python onnx package absent)"); sys.exit(0)
onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)
print("checker ok")
"#;
    match Command::new("python3").args(["-c", py, s(&exported)]).output() {
        Ok(o) if o.status.success() => println!("python: {}", String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => {
            let e = String::from_utf8_lossy(&o.stderr);
            if e.contains("No module named 'onnxruntime'") {
                eprintln!("SKIPPED: python onnxruntime absent");
            } else {
                panic!("python onnxruntime/checker failed: {e}");
            }
        }
        Err(_) => eprintln!("SKIPPED: no python3"),
    }
}

#[test]
fn exporting_an_untrained_compile_folder_needs_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("c");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let recipe = root().join("tests/data/recipes/gmp50-fp32.yaml");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let o = sparsec(&["export", "--model", s(&compiled), "-o", s(&dir.path().join("d"))]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--one-shot") && e.contains(".mask"), "{e}");
    assert!(!dir.path().join("d").exists(), "nothing written on failure");
    let out = dir.path().join("d");
    let data = root().join("fixtures/squad-tiny.json");
    let r: Value = serde_json::from_str(&ok(&sparsec(&[
        "export",
        "--model",
        s(&compiled),
        "-o",
        s(&out),
        "--one-shot",
        "16",
        "--calibration-file",
        s(&data),
        "--json",
    ])))
    .unwrap();
    assert!((r["pruned_layers_sparsity"].as_f64().unwrap() - 0.5).abs() < 0.005, "{r}");
}
