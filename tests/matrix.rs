//! Every recipe family on every fixture: 3 architectures (bert, distilbert, roberta) × 3 exporters
//! (torch legacy at opset 17, torch dynamo at its native opset 18 — bert's with external data —
//! and Hugging Face Optimum at opset 18). Each cell runs
//! `compile` → `train` 2 steps (or `--one-shot`) → `export` QDQ and QOperator → the ONNX checker
//! (`full_check`, where the python `onnx` package is present) → ORT and tract logits of each
//! export against the trained graph (the trained folder's `model.onnx`, what training computed in
//! eval mode). The recipes (`tests/data/recipes/matrix/`) start every modifier at step 0, so two
//! steps reach masks and fake quantization.
//!
//! Tolerances are those of `tests/export.rs`: fp32 exports within 1e-4 on every engine; int8 QDQ
//! within 1e-4 of the fake-quant graph under ORT's basic optimisations (the same int8 values
//! dequantized in float) and within 5% of the logit range on tract; QOperator (integer sums,
//! float rescale) within 1% on tract. ORT's integer kernels are printed, not asserted: on an x86
//! CPU without VNNI (this machine shows only AVX2), ORT's u8·s8 `MatMulInteger` (and the fused
//! kernels its extended optimisations put in place of QDQ MatMuls) saturates 16-bit pair sums —
//! a 4×32 × 32×8 `MatMulInteger` of random u8/s8 values is off by up to 22807 against exact
//! integer arithmetic — so on these random models its logits differ by about 10% of their range
//! (0.28 of 2.5 on bert).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::common::*;
use ndarray::ArrayD;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what}: sparsec failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The model inputs of `case0` (batch 2 × 24, one padded row) of the fixture's references.
fn inputs(model: &str) -> Vec<(String, HostTensor)> {
    read_safetensors(&fixture_dir(model).join("reference.safetensors"))
        .into_iter()
        .filter_map(|(name, t)| {
            let field = name.strip_prefix("case0.")?;
            ["input_ids", "attention_mask", "token_type_ids"].contains(&field).then(|| (field.to_string(), t))
        })
        .collect()
}

fn logits(path: &Path, model: &str, engine: EngineKind, basic: bool) -> HashMap<String, ArrayD<f32>> {
    let opts = EngineOptions { basic_optimizations_only: basic, threads: Some(1), ..Default::default() };
    let mut b = runtime::load_file(path, engine, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let owned = inputs(model);
    let feeds: Vec<(&str, HostTensor)> = owned.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    b.run(&feeds)
        .unwrap_or_else(|e| panic!("{} on {engine:?}: {e:#}", path.display()))
        .into_iter()
        .filter(|(n, _)| n.ends_with("_logits"))
        .map(|(n, t)| (n, t.into_f32().unwrap()))
        .collect()
}

fn max_diff(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>) -> f32 {
    assert_eq!(a.len(), 2, "start and end logits");
    a.iter().map(|(k, x)| x.iter().zip(b[k].iter()).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)).fold(0.0, f32::max)
}

#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// `sparsec train --max-steps 2`.
    TwoSteps,
    /// `sparsec train --one-shot 4`: final-sparsity masks and calibration, no training.
    OneShot,
}

/// One cell: compile, train (or one-shot), export both formats; checks the exports' logits and
/// returns their paths for the ONNX checker.
fn cell(dir: &Path, model: &str, exporter: &str, recipe: &str, run: Run, quantized: bool) -> Vec<PathBuf> {
    let label = format!("{model}.{exporter} {recipe}");
    let src = fixture_dir(model).join(format!("model.{exporter}.onnx"));
    let recipe_path = root().join("tests/data/recipes/matrix").join(recipe);
    let compiled = dir.join("compiled");
    ok(&label, sparsec(&["compile", s(&src), "--recipe", s(&recipe_path), "-o", s(&compiled)]));
    let trained = dir.join("trained");
    let data = root().join("fixtures/squad-tiny.json");
    let mut args = vec![
        "train",
        "--model",
        s(&compiled),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&trained),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "4",
        "--threads",
        "1",
    ];
    match run {
        Run::TwoSteps => args.extend(["--max-steps", "2"]),
        Run::OneShot => args.extend(["--one-shot", "4"]),
    }
    ok(&label, sparsec(&args));
    let reference = trained.join("model.onnx");
    let fq_basic = logits(&reference, model, EngineKind::Ort, true);
    let range = fq_basic["start_logits"].iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1.0);
    let mut exports = Vec::new();
    for format in ["qdq", "qoperator"] {
        let dep = dir.join(format!("deploy-{format}"));
        ok(&label, sparsec(&["export", "--model", s(&trained), "-o", s(&dep), "--format", format]));
        let exported = dep.join("model.onnx");
        let basic = max_diff(&fq_basic, &logits(&exported, model, EngineKind::Ort, true));
        let fused = max_diff(&fq_basic, &logits(&exported, model, EngineKind::Ort, false));
        let tract = max_diff(&fq_basic, &logits(&exported, model, EngineKind::Tract, false));
        println!("{label} {format}: |Δlogit| ORT basic {basic:.2e}, ORT full {fused:.2e}, tract {tract:.2e} (range {range:.2})");
        assert!(fused.is_finite(), "{label} {format}: ORT with full optimisations gives non-finite logits");
        if !quantized {
            assert!(basic <= 1e-4 && fused <= 1e-4 && tract <= 1e-4, "{label} {format}: fp32 export differs");
        } else if format == "qdq" {
            assert!(basic <= 1e-4, "{label} qdq: {basic} under ORT basic optimisations");
            assert!(tract <= 0.05 * range, "{label} qdq: tract {tract}");
        } else {
            assert!(tract <= 0.01 * range, "{label} qoperator: tract {tract}");
        }
        exports.push(exported);
    }
    exports
}

/// `onnx.checker.check_model(full_check=True)` on every path in one python process; skipped with
/// a message when python or its `onnx` package is absent.
fn onnx_checker(paths: &[PathBuf]) {
    let py = r#"
import sys
try:
    import onnx
except ImportError:
    print("SKIPPED: onnx checker (python onnx package absent)"); sys.exit(0)
for p in sys.argv[1:]:
    onnx.checker.check_model(onnx.load(p), full_check=True)
print(f"checker ok: {len(sys.argv) - 1} models")
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", py]).args(paths);
    match cmd.output() {
        Ok(o) if o.status.success() => {
            let said = String::from_utf8_lossy(&o.stdout);
            match said.trim().strip_prefix("SKIPPED: ") {
                Some(why) => skip(why),
                None => println!("{}", said.trim()),
            }
        }
        Ok(o) => panic!("ONNX checker rejected an export: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => skip("onnx checker (no python3)"),
    }
}

/// Runs one recipe family on all nine fixtures.
fn family(recipe: &str, run: Run, quantized: bool) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut exports = Vec::new();
    let mut cells = 0;
    for (model, exporter, _) in fixture_exports() {
        let dir = tmp.path().join(format!("{model}.{exporter}"));
        exports.extend(cell(&dir, &model, &exporter, recipe, run, quantized));
        cells += 1;
    }
    assert_eq!(cells, 9, "3 architectures x 3 exporters");
    onnx_checker(&exports);
    println!("{recipe}: {cells} fixtures in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn gmp_unstructured_on_every_fixture() {
    family("gmp-unstructured.yaml", Run::TwoSteps, false);
}

#[test]
fn gmp_block_on_every_fixture() {
    family("gmp-block.yaml", Run::TwoSteps, false);
}

#[test]
fn gmp_n_m_on_every_fixture() {
    family("gmp-nm.yaml", Run::TwoSteps, false);
}

#[test]
fn qat_on_every_fixture() {
    family("qat.yaml", Run::TwoSteps, true);
}

/// Must-show: QAT + distillation on the native opset-18 dynamo exports and the Optimum exports
/// (and legacy), to int8 exports that pass the checker and match the training graph.
#[test]
fn gmp_qat_distillation_on_every_fixture() {
    family("qat-distill.yaml", Run::TwoSteps, true);
}

#[test]
fn constant_pruning_with_distillation_on_every_fixture() {
    family("constant.yaml", Run::TwoSteps, false);
}

#[test]
fn one_shot_on_every_fixture() {
    family("qat-distill.yaml", Run::OneShot, true);
}
