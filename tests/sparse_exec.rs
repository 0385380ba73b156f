//! Sparse execution: models lowered in memory to sparsec's kernels (`LowerSparseLinear`,
//! `FuseAttention`, `FuseQkv`, `LowerLayerNorm` → `ai.sparsec` ops on ONNX Runtime) compute what the standard export
//! computes on ONNX Runtime (its QDQ semantics: level-1 optimisations), on every fixture and on
//! every instruction set this CPU has (`SPARSEC_ISA` forced), and layers that are not sparse
//! enough stay on ORT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use ndarray::{Array2, ArrayD};
use sparsec::passes::{PassReport, SparseExecution};
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};
use sparsec_kernels::Isa;

/// Compiles `model` with `recipe` and exports it one-shot (final-sparsity magnitude masks, int8
/// calibration on the tiny SQuAD sample): the deployment folder.
fn one_shot(model: &Path, recipe: &Path, dir: &Path) -> PathBuf {
    let compiled = dir.join("compiled");
    ok(&sparsec(&["compile", s(model), "--recipe", s(recipe), "-o", s(&compiled)]));
    let dep = dir.join("deploy");
    let data = root().join("fixtures/squad-tiny.json");
    ok(&sparsec(&[
        "export",
        "--model",
        s(&compiled),
        "-o",
        s(&dep),
        "--one-shot",
        "16",
        "--calibration-file",
        s(&data),
    ]));
    dep
}

/// Two windows of 23 tokens, the second padded after 15 (its attention mask 0 there).
fn feeds(names: &[String]) -> Vec<(String, HostTensor)> {
    let (b, t) = (2, 23);
    names
        .iter()
        .map(|n| {
            let a = match n.as_str() {
                "input_ids" => Array2::from_shape_fn((b, t), |(i, j)| (5 + (i * 131 + j * 37) % 900) as i64),
                "attention_mask" => Array2::from_shape_fn((b, t), |(i, j)| i64::from(i == 0 || j < 15)),
                "token_type_ids" => Array2::from_shape_fn((b, t), |(_, j)| i64::from(j >= 9)),
                other => panic!("unexpected model input {other}"),
            };
            (n.clone(), HostTensor::I64(a.into_dyn()))
        })
        .collect()
}

fn run(path: &Path, sparse: Option<SparseExecution>) -> (HashMap<String, ArrayD<f32>>, Vec<PassReport>) {
    // ORT's basic level on both sides: its fused int8 kernels (level 3) on a CPU without VNNI
    // saturate u8×s8 pair sums (`vpmaddubsw`) and are not the QDQ semantics the export means
    // (benches/int8_exactness.py measures it); at level 1 it dequantizes and multiplies in f32.
    let opts = EngineOptions { threads: Some(2), basic_optimizations_only: true, ..Default::default() };
    let (mut b, reports) = load_lowered(path, EngineKind::Ort, sparse, &opts);
    let owned = feeds(b.input_names());
    let f: Vec<(&str, HostTensor)> = owned.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let out = b.run(&f).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    (
        out.into_iter().filter(|(n, _)| n.ends_with("_logits")).map(|(n, t)| (n, t.into_f32().unwrap())).collect(),
        reports,
    )
}

fn max_diff(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>) -> f32 {
    assert_eq!(a.len(), 2, "start and end logits");
    a.iter().map(|(k, x)| max_abs_diff(x, &b[k])).fold(0.0, f32::max)
}

fn rewritten(reports: &[PassReport], pass: &str) -> usize {
    reports.iter().filter(|r| r.pass == pass).map(|r| r.rewritten).sum()
}

/// Runs `model` lowered on every available ISA against ORT's own kernels; returns the reports.
fn check_every_isa(model: &Path, bound: f32) -> Vec<PassReport> {
    let (base, none) = run(model, None);
    assert!(none.is_empty());
    let mut last = Vec::new();
    let mut worst = Vec::new();
    for isa in Isa::available() {
        // SAFETY of the environment: this binary's tests read SPARSEC_ISA only when kernels are
        // created; any forced ISA computes the same integers, and the tests whose kernels must see
        // this CPU's own ISA hold `own_isa`, which `force_isa` waits for; the `sparsec` children that
        // other tests start get the value this binary started with (`common::sparsec_env`).
        let forced = force_isa(isa.name());
        let (lowered, reports) = run(model, Some(SparseExecution::default()));
        drop(forced);
        let d = max_diff(&base, &lowered);
        println!("{} [{isa}]: max |Δlogit| {d:.3e} ({reports:?})", model.display());
        worst.push((isa, d));
        last = reports;
    }
    assert!(worst.iter().all(|&(_, d)| d <= bound), "{}: max |Δlogit| per ISA {worst:?} > {bound}", model.display());
    last
}

#[test]
fn int8_block4x1_exports_lowered_match_ort_on_every_fixture_and_isa() {
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    for (m, e, path) in fixture_exports() {
        let dir = tempfile::tempdir().unwrap();
        let dep = one_shot(&path, &recipe, dir.path());
        let reports = check_every_isa(&dep.join("model.onnx"), 1e-3);
        let layers = if m == "distilbert" || m == "roberta" || m == "bert" { 2 } else { 0 };
        assert_eq!(rewritten(&reports, "LowerSparseLinear"), 6 * layers, "{m}/{e}: every encoder linear lowered");
        assert_eq!(rewritten(&reports, "FuseAttention"), layers, "{m}/{e}: every attention fused");
        assert_eq!(rewritten(&reports, "FuseQkv"), layers, "{m}/{e}: Q, K, V merged");
    }
}

#[test]
fn fp32_block4x1_exports_lowered_match_ort() {
    let recipe = root().join("tests/data/recipes/block4x1-80-fp32.yaml");
    let dir = tempfile::tempdir().unwrap();
    let dep = one_shot(&fixture_dir("bert").join("model.legacy.onnx"), &recipe, dir.path());
    let reports = check_every_isa(&dep.join("model.onnx"), 1e-4);
    assert_eq!(rewritten(&reports, "LowerSparseLinear"), 12, "every encoder linear on the fp32 sparse kernel");
}

#[test]
fn dense_int8_layers_stay_on_ort_and_still_match() {
    let recipe = root().join("recipes/quantization-only.yaml");
    let dir = tempfile::tempdir().unwrap();
    let dep = one_shot(&fixture_dir("bert").join("model.legacy.onnx"), &recipe, dir.path());
    let reports = check_every_isa(&dep.join("model.onnx"), 1e-3);
    assert_eq!(rewritten(&reports, "LowerSparseLinear"), 0, "dense layers are not worth the sparse kernel");
    assert_eq!(rewritten(&reports, "FuseAttention"), 2);
}

#[test]
fn dense_fp32_models_fuse_attention_only() {
    for (m, e, path) in fixture_exports() {
        let (base, _) = run(&path, None);
        let (lowered, reports) = run(&path, Some(SparseExecution::default()));
        let d = max_diff(&base, &lowered);
        println!("{m}/{e}: fused attention max |Δlogit| {d:.3e}");
        assert!(d <= 1e-4, "{m}/{e}: {d}");
        assert_eq!(rewritten(&reports, "LowerSparseLinear"), 0);
        assert_eq!(rewritten(&reports, "FuseAttention"), 2, "{m}/{e}");
    }
}

/// `LowerLayerNorm` alone (linears and attention left on ONNX Runtime): every last-axis
/// `LayerNormalization` on sparsec's kernel, logits bit-identical to ORT's own, on every fixture
/// export and on the dense MiniLM when `../shared` is present, on every ISA.
#[test]
fn layer_norm_lowering_is_bit_identical_to_ort_on_every_fixture_and_isa() {
    let only_ln = SparseExecution { no_linear: true, no_attention: true, ..Default::default() };
    let mut models: Vec<(String, PathBuf)> =
        fixture_exports().into_iter().map(|(m, e, p)| (format!("{m}/{e}"), p)).collect();
    if let Some(minilm) = shared_minilm() {
        models.push(("minilm-l6-squad".into(), minilm.join("model.onnx")));
    }
    let mut lowered_in = 0;
    for (name, path) in &models {
        let (base, _) = run(path, None);
        for isa in Isa::available() {
            // SAFETY of the environment: as in `check_every_isa`.
            let forced = force_isa(isa.name());
            let (lowered, reports) = run(path, Some(only_ln.clone()));
            drop(forced);
            let n = rewritten(&reports, "LowerLayerNorm");
            println!("{name} [{isa}]: {n} LayerNormalization lowered");
            assert_eq!(rewritten(&reports, "LowerSparseLinear") + rewritten(&reports, "FuseAttention"), 0);
            assert!(bit_identical(&base, &lowered), "{name} [{isa}]: logits differ from ORT's");
            lowered_in += usize::from(n > 0);
        }
        if name == "minilm-l6-squad" {
            let (_, reports) = run(path, Some(only_ln.clone()));
            assert_eq!(rewritten(&reports, "LowerLayerNorm"), 13, "embeddings + 2 per layer");
        }
    }
    assert!(lowered_in > 0, "no model had a LayerNormalization to lower");
}

/// A deployment folder exported again (`export --model DEPLOY --format sparse`: a QDQ deployment
/// packed, or a packed one given a newer sparsec's lowerings, here `LowerLayerNorm`) computes the
/// same logits bit for bit, and the report says the source held no pruning masks.
#[test]
fn a_deployment_exported_again_as_sparse_equals_the_original_bit_for_bit() {
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    let dir = tempfile::tempdir().unwrap();
    let qdq = one_shot(&fixture_dir("bert").join("model.legacy.onnx"), &recipe, dir.path());
    let packed = dir.path().join("packed");
    let out = ok(&sparsec(&["export", "--model", s(&qdq), "-o", s(&packed), "--format", "sparse"]));
    assert!(out.contains("no pruning masks in the source"), "{out}");
    let again = dir.path().join("again");
    ok(&sparsec(&["export", "--model", s(&packed), "-o", s(&again), "--format", "sparse"]));
    let (base, _) = run(&qdq.join("model.onnx"), Some(export_lowering()));
    for folder in [&packed, &again] {
        let m = sparsec::onnx::load(folder.join("model.onnx")).unwrap();
        let count = |op: &str| m.graph.nodes().filter(|(_, n)| n.op_type == op).count();
        assert_eq!((count("LayerNorm"), count("LayerNormalization")), (5, 0), "{}", folder.display());
        let (lowered, reports) = run(&folder.join("model.onnx"), Some(export_lowering()));
        assert!(reports.iter().filter(|r| r.pass != "RemoveDead").all(|r| r.rewritten == 0), "{reports:?}");
        assert!(bit_identical(&base, &lowered), "{}", folder.display());
    }
}

/// `libsparsec_ops.so`, built beside this test binary (the cdylib of the `sparsec-ops` dependency).
fn ops_library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [deps.join("libsparsec_ops.so"), deps.parent()?.join("libsparsec_ops.so")].into_iter().find(|p| p.exists())
}

/// Runs `script` with python3; `None` (with a SKIPPED line) when python or a module it needs is absent.
fn python(script: &str, args: &[&str]) -> Option<String> {
    let out = match Command::new("python3").arg("-c").arg(script).args(args).output() {
        Ok(o) => o,
        Err(_) => {
            skip("no python3");
            return None;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if let Some(m) = err.lines().find(|l| l.contains("No module named")) {
            skip(&format!("python {m}"));
            return None;
        }
        panic!("python failed: {err}");
    }
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn python_onnxruntime_runs_the_sparse_export_through_libsparsec_ops() {
    let Some(lib) = ops_library() else {
        panic!("libsparsec_ops.so was not built beside {:?}", std::env::current_exe())
    };
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let compiled = dir.path().join("compiled");
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let data = root().join("fixtures/squad-tiny.json");
    let (qdq, sparse) = (dir.path().join("qdq"), dir.path().join("sparse"));
    for (out, format) in [(&qdq, "qdq"), (&sparse, "sparse")] {
        ok(&sparsec(&[
            "export",
            "--model",
            s(&compiled),
            "-o",
            s(out),
            "--one-shot",
            "16",
            "--calibration-file",
            s(&data),
            "--format",
            format,
        ]));
    }
    let m = sparsec::onnx::load(sparse.join("model.onnx")).unwrap();
    let ops: Vec<&str> =
        m.graph.nodes().filter(|(_, n)| n.domain == "ai.sparsec").map(|(_, n)| n.op_type.as_str()).collect();
    assert_eq!(
        ops.iter().filter(|o| **o == "SparseLinear").count(),
        9,
        "4 linears per layer once Q, K, V are merged, and the QA head (the export lowers every int8 linear): {ops:?}"
    );
    assert_eq!(ops.iter().filter(|o| **o == "Attention").count(), 2);
    let py = r#"
import sys, numpy as np, onnxruntime as ort
lib, sparse, qdq = sys.argv[1:4]
b, t = 2, 23
i, j = np.meshgrid(np.arange(b), np.arange(t), indexing="ij")
feeds = {"input_ids": (5 + (i * 131 + j * 37) % 900).astype(np.int64),
         "attention_mask": ((i == 0) | (j < 15)).astype(np.int64),
         "token_type_ids": (j >= 9).astype(np.int64)}
so = ort.SessionOptions()
so.register_custom_ops_library(lib)
s = ort.InferenceSession(sparse, so, providers=["CPUExecutionProvider"])
out = s.run(None, {k: v for k, v in feeds.items() if k in [x.name for x in s.get_inputs()]})
base = ort.SessionOptions()
base.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
r = ort.InferenceSession(qdq, base, providers=["CPUExecutionProvider"])
ref = r.run(None, {k: v for k, v in feeds.items() if k in [x.name for x in r.get_inputs()]})
print(max(float(np.abs(a - b).max()) for a, b in zip(out, ref)))
"#;
    let Some(out) = python(py, &[s(&lib), s(&sparse.join("model.onnx")), s(&qdq.join("model.onnx"))]) else { return };
    let d: f32 = out.trim().parse().unwrap();
    println!("python onnxruntime + libsparsec_ops.so vs the QDQ export: max |Δlogit| {d:.3e}");
    assert!(d <= 1e-3, "{d}");
    // The same file from Rust (already lowered: nothing left to rewrite) gives the same logits.
    let (rust, reports) = run(&sparse.join("model.onnx"), Some(SparseExecution::default()));
    let (reference, _) = run(&qdq.join("model.onnx"), None);
    assert_eq!(rewritten(&reports, "LowerSparseLinear"), 0);
    assert!(max_diff(&rust, &reference) <= 1e-3);
}

#[test]
fn ort_quantize_static_qdq_models_are_lowered_by_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = root().join("tests/data/recipes/block4x1-80-fp32.yaml");
    let fp32 = one_shot(&fixture_dir("bert").join("model.legacy.onnx"), &recipe, dir.path());
    let peer = dir.path().join("peer.onnx");
    let py = r#"
import sys, numpy as np
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType
class Data(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = iter([{"input_ids": rng.integers(5, 900, (1, 23)).astype(np.int64),
                            "attention_mask": np.ones((1, 23), np.int64),
                            "token_type_ids": np.zeros((1, 23), np.int64)} for _ in range(4)])
    def get_next(self):
        return next(self.items, None)
quantize_static(sys.argv[1], sys.argv[2], Data(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
print("ok")
"#;
    if python(py, &[s(&fp32.join("model.onnx")), s(&peer)]).is_none() {
        return;
    }
    let reports = check_every_isa(&peer, 1e-3);
    assert!(rewritten(&reports, "LowerSparseLinear") >= 12, "ORT's QDQ linears lowered by pattern: {reports:?}");
}

/// The hidden states after every LayerNorm and the logits of `path`, at ORT's basic level.
fn hidden_states(path: &Path, sparse: Option<SparseExecution>) -> Vec<(String, ArrayD<f32>)> {
    let opts = EngineOptions { threads: Some(2), basic_optimizations_only: true, ..Default::default() };
    let (mut b, _) = load_lowered(path, EngineKind::Ort, sparse, &opts);
    let owned = feeds(b.input_names());
    let f: Vec<(&str, HostTensor)> = owned.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    b.run(&f).unwrap().into_iter().map(|(n, t)| (n, t.into_f32().unwrap())).collect()
}

/// On MiniLM the lowered int8 model is the QDQ model up to f32 rounding (≈1e-6 per layer: the
/// kernels' integer products are exact, ORT's level-1 QDQ path multiplies dequantized values in
/// f32), until a value that the next layer quantizes lands on the other side of a rounding
/// boundary: one activation then moves by one quantization step and the difference grows from
/// there. The test checks both: rounding-size differences in every hidden state up to the
/// first such flip, and that flips stay rare (logits almost all within 1e-3, all within 5e-2).
#[test]
fn minilm_80_block4x1_one_shot_lowered_matches_the_qdq_export_up_to_requantization_flips() {
    let Some(minilm) = shared_minilm() else { return };
    let Some(data) = shared_data("squad-v1.1-dev-split.json.gz") else { return };
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("compiled");
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    ok(&sparsec(&["compile", s(&minilm.join("model.onnx")), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let dep = dir.path().join("deploy");
    ok(&sparsec(&[
        "export",
        "--model",
        s(&compiled),
        "-o",
        s(&dep),
        "--one-shot",
        "8",
        "--calibration-file",
        s(&data),
    ]));
    let mut m = sparsec::onnx::load(dep.join("model.onnx")).unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    m.graph
        .edit(|p: &mut sparsec::ir::Patch| -> Result<(), sparsec::ir::IrError> {
            let g = p.graph();
            let ln: Vec<_> =
                g.nodes().filter(|(_, n)| n.op_type == "LayerNormalization").filter_map(|(_, n)| n.output(0)).collect();
            ln.into_iter().for_each(|v| p.add_output(v));
            Ok(())
        })
        .unwrap();
    let path = dir.path().join("with-hidden-states.onnx");
    sparsec::onnx::save(&m, &path, &Default::default()).unwrap();
    let base = hidden_states(&path, None);
    let lowered = hidden_states(&path, Some(SparseExecution::default()));
    let (_, reports) = run(&path, Some(SparseExecution::default()));
    assert_eq!(rewritten(&reports, "LowerSparseLinear"), 36);
    assert_eq!(rewritten(&reports, "FuseAttention"), 6);
    assert_eq!(rewritten(&reports, "FuseQkv"), 6);
    let mut flipped = false;
    for ((name, a), (_, b)) in base.iter().zip(&lowered).filter(|((n, _), _)| n.contains("LayerNorm")) {
        let d = max_abs_diff(a, b);
        println!("{name}: max |Δ| {d:.3e}");
        flipped |= d > 1e-4;
        if !flipped {
            assert!(d <= 1e-5, "{name}: {d}: more than f32 rounding before any requantization flip");
        }
    }
    let logits: Vec<(f32, f32)> = base
        .iter()
        .zip(&lowered)
        .filter(|((n, _), _)| n.ends_with("_logits"))
        .flat_map(|((_, a), (_, b))| a.iter().zip(b.iter()).map(|(x, y)| (*x, *y)).collect::<Vec<_>>())
        .collect();
    let close = logits.iter().filter(|(x, y)| (x - y).abs() <= 1e-3).count() as f64 / logits.len() as f64;
    let worst = logits.iter().map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    println!("MiniLM 80% [4,1] int8: logits within 1e-3: {:.2}%, max |Δ| {worst:.3e}", close * 100.0);
    assert!(close >= 0.95, "{close}");
    assert!(worst <= 5e-2, "{worst}");
}

/// The lowering `export --format sparse` applies: every int8 linear, dense ones too.
fn export_lowering() -> SparseExecution {
    let mut cfg = SparseExecution::default();
    cfg.linear.max_int8_density = 1.0;
    cfg
}

/// Every logit bit of `a` equals `b`'s.
fn bit_identical(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>) -> bool {
    assert_eq!(a.len(), 2, "start and end logits");
    a.iter()
        .all(|(k, x)| x.shape() == b[k].shape() && x.iter().zip(b[k].iter()).all(|(p, q)| p.to_bits() == q.to_bits()))
}

/// Exports the compiled folder `compiled` one-shot in `format` (int8 embeddings with `qemb`).
fn export_one_shot(compiled: &Path, out: &Path, format: &str, data: &Path, windows: &str, qemb: bool) {
    let mut args = vec![
        "export",
        "--model",
        s(compiled),
        "-o",
        s(out),
        "--one-shot",
        windows,
        "--calibration-file",
        s(data),
        "--format",
        format,
    ];
    if qemb {
        args.push("--quantize-embeddings");
    }
    ok(&sparsec(&args));
}

/// The `SparseLinear` nodes of a model and whether each stores its weight packed.
fn sparse_linears(path: &Path) -> Vec<(String, bool)> {
    let m = sparsec::onnx::load(path).unwrap();
    m.graph
        .nodes()
        .filter(|(_, n)| n.domain == "ai.sparsec" && n.op_type == "SparseLinear")
        .map(|(_, n)| {
            (
                n.name.clone(),
                sparsec::ir::ops::sparsec::weight_format(n).unwrap() != sparsec::ir::ops::sparsec::WeightFormat::Dense,
            )
        })
        .collect()
}

/// `export --format sparse` lowers every int8 linear and stores every sparse one's weight packed
/// (`weight_format = block4x1`; the dense QA head stays a dense matrix), and the packed file
/// computes bit for bit what the QDQ export lowered in memory the same way (dense weights,
/// packed by the kernels at load) computes, on every fixture and ISA.
#[test]
fn packed_sparse_exports_equal_the_lowered_qdq_export_bit_for_bit() {
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    let data = root().join("fixtures/squad-tiny.json");
    for (m, e, path) in fixture_exports() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = dir.path().join("compiled");
        ok(&sparsec(&["compile", s(&path), "--recipe", s(&recipe), "-o", s(&compiled)]));
        let (qdq, sparse) = (dir.path().join("qdq"), dir.path().join("sparse"));
        export_one_shot(&compiled, &qdq, "qdq", &data, "16", false);
        export_one_shot(&compiled, &sparse, "sparse", &data, "16", false);
        let linears = sparse_linears(&sparse.join("model.onnx"));
        let packed = linears.iter().filter(|(_, p)| *p).count();
        assert_eq!(
            (linears.len(), packed),
            (9, 8),
            "{m}/{e}: every int8 linear lowered, the sparse ones packed: {linears:?}"
        );
        let bytes = |d: &Path| std::fs::metadata(d.join("model.onnx")).unwrap().len();
        println!("{m}/{e}: QDQ export {} bytes, packed sparse export {} bytes", bytes(&qdq), bytes(&sparse));
        assert!(bytes(&sparse) < bytes(&qdq), "{m}/{e}");
        for isa in Isa::available() {
            let forced = force_isa(isa.name());
            let (packed, r1) = run(&sparse.join("model.onnx"), Some(SparseExecution::default()));
            let (unpacked, r2) = run(&qdq.join("model.onnx"), Some(export_lowering()));
            drop(forced);
            assert_eq!(rewritten(&r1, "LowerSparseLinear"), 0, "the packed file is already lowered");
            assert!(rewritten(&r2, "LowerSparseLinear") >= 12);
            assert!(bit_identical(&packed, &unpacked), "{m}/{e} [{isa}]: max |Δ| {:e}", max_diff(&packed, &unpacked));
        }
    }
}

/// A packed weight that does not match its mask, or a `weight_shape` that does not match the
/// stored form, is an error naming the node (sparsec's import, `sparsec info`, ONNX Runtime from
/// Python), never a crash.
#[test]
fn corrupt_packed_weights_are_errors_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    let compiled = dir.path().join("compiled");
    ok(&sparsec(&[
        "compile",
        s(&fixture_dir("bert").join("model.legacy.onnx")),
        "--recipe",
        s(&recipe),
        "-o",
        s(&compiled),
    ]));
    let sparse = dir.path().join("sparse");
    export_one_shot(&compiled, &sparse, "sparse", &root().join("fixtures/squad-tiny.json"), "16", false);
    let good = sparsec::onnx::load(sparse.join("model.onnx")).unwrap();
    let (id, node) =
        good.graph.nodes().find(|(_, n)| n.op_type == "SparseLinear").map(|(i, n)| (i, n.clone())).unwrap();
    let w = node.input(1).unwrap();
    let truncated = {
        let mut m = good.clone();
        let t = m.graph.initializer(w).unwrap().clone();
        let raw = t.raw()[..t.raw().len() - 1].to_vec();
        m.graph
            .edit(|p: &mut sparsec::ir::Patch| -> Result<(), sparsec::ir::IrError> {
                p.set_initializer(w, sparsec::ir::Tensor::from_raw(t.dtype, vec![raw.len() as i64], raw).unwrap());
                Ok(())
            })
            .unwrap();
        m
    };
    let reshaped = {
        let mut m = good.clone();
        let [k, n] = sparsec::ir::Attrs::attr_ints(&node.attrs[..], "weight_shape").unwrap().to_vec()[..] else {
            panic!()
        };
        m.graph
            .edit(|p: &mut sparsec::ir::Patch| -> Result<(), sparsec::ir::IrError> {
                p.set_attr(id, sparsec::ir::Attribute::ints("weight_shape", vec![k + 8, n]));
                Ok(())
            })
            .unwrap();
        m
    };
    for (what, m) in [("truncated", truncated), ("wrong weight_shape", reshaped)] {
        let path = dir.path().join(format!("{}.onnx", what.replace(' ', "_")));
        sparsec::onnx::save(&m, &path, &Default::default()).unwrap();
        let out = sparsec(&["info", s(&path)]);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{what}: sparsec info: {}", err.trim());
        assert!(!out.status.success(), "{what}");
        assert!(err.contains(&node.name) && err.contains("packed weight"), "{what}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let e = runtime::load_file(&path, EngineKind::Ort, &EngineOptions::default()).err().expect("load fails");
        assert!(format!("{e:#}").contains(&node.name), "{what}: {e:#}");
        let lib = ops_library().expect("libsparsec_ops.so");
        let py = r#"
import sys, onnxruntime as ort
so = ort.SessionOptions()
so.register_custom_ops_library(sys.argv[1])
try:
    ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"])
    print("LOADED")
except Exception as e:
    print("ERROR", e)
"#;
        let Some(msg) = python(py, &[s(&lib), s(&path)]) else { continue };
        println!("{what}: python onnxruntime: {}", msg.trim());
        assert!(msg.starts_with("ERROR") && msg.contains(&node.name), "{what}: {msg}");
    }
}

/// On MiniLM (80% `[4,1]` one-shot, int8 embeddings) the packed export is at most 15 MB and
/// computes bit for bit what the QDQ export lowered in memory the same way computes.
#[test]
fn minilm_packed_sparse_export_is_small_and_equals_the_lowered_qdq_export() {
    let Some(minilm) = shared_minilm() else { return };
    let Some(data) = shared_data("squad-v1.1-dev-split.json.gz") else { return };
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("compiled");
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    ok(&sparsec(&["compile", s(&minilm.join("model.onnx")), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let (qdq, sparse) = (dir.path().join("qdq"), dir.path().join("sparse"));
    export_one_shot(&compiled, &qdq, "qdq", &data, "8", true);
    export_one_shot(&compiled, &sparse, "sparse", &data, "8", true);
    let linears = sparse_linears(&sparse.join("model.onnx"));
    assert_eq!(linears.len(), 25, "4 per layer once Q, K, V are merged, and the QA head");
    assert_eq!(linears.iter().filter(|(_, p)| *p).count(), 24, "the dense QA head stays dense: {linears:?}");
    let bytes = std::fs::metadata(sparse.join("model.onnx")).unwrap().len();
    println!("MiniLM 80% [4,1] packed sparse export with int8 embeddings: {bytes} bytes");
    assert!(bytes <= 15_000_000, "{bytes}");
    let (packed, _) = run(&sparse.join("model.onnx"), Some(SparseExecution::default()));
    let (unpacked, _) = run(&qdq.join("model.onnx"), Some(export_lowering()));
    assert!(bit_identical(&packed, &unpacked), "max |Δ| {:e}", max_diff(&packed, &unpacked));
}

/// ORT's `quantize_static` in QOperator format (`QLinearMatMul` between `QuantizeLinear` and
/// `DequantizeLinear`, per-channel int8 weights; `reduce_range` 7-bit weights, so ORT's own u8×s8
/// kernels do not saturate on CPUs without VNNI) of a sparse fixture, at the fixture's opset
/// (legacy 14, dynamo 18): every linear is lowered by pattern and requantized as `QLinearMatMul`
/// does. With the linears alone lowered and nothing fused, the logits equal ORT's bit for bit;
/// lowered fully (fused epilogues, attention) within 1e-3, the f32 rounding of GELU and attention
/// that the other lowering tests allow. `sparsec info` lists the layers.
#[test]
fn ort_quantize_static_qoperator_models_are_lowered_by_pattern() {
    let recipe = root().join("tests/data/recipes/block4x1-80-fp32.yaml");
    let py = r#"
import sys, numpy as np, onnx
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType
src, dst = sys.argv[1:3]
m = onnx.load(src)
inits = {i.name for i in m.graph.initializer}
linears = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
class Data(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = iter([{"input_ids": rng.integers(5, 900, (1, 23)).astype(np.int64),
                            "attention_mask": np.ones((1, 23), np.int64),
                            "token_type_ids": np.zeros((1, 23), np.int64)} for _ in range(4)])
    def get_next(self):
        return next(self.items, None)
quantize_static(src, dst, Data(), quant_format=QuantFormat.QOperator, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=linears)
q = onnx.load(dst)
print(sum(n.op_type == "QLinearMatMul" for n in q.graph.node), [o.version for o in q.opset_import if o.domain in ("", "ai.onnx")][0])
"#;
    for (m, e, path) in fixture_exports().into_iter().filter(|(m, _, _)| m == "bert") {
        let dir = tempfile::tempdir().unwrap();
        let fp32 = one_shot(&path, &recipe, dir.path());
        let peer = dir.path().join("qoperator.onnx");
        let Some(out) = python(py, &[s(&fp32.join("model.onnx")), s(&peer)]) else { return };
        let counts: Vec<i64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
        println!("{m}/{e}: {} QLinearMatMul at opset {}", counts[0], counts[1]);
        assert_eq!(counts[0], 13, "{m}/{e}: 12 encoder linears and the QA head");
        assert!((13..=18).contains(&counts[1]));
        let (base, _) = run(&peer, None);
        let linear_only = SparseExecution {
            linear: sparsec::passes::LowerSparseLinear { fuse_epilogues: false, ..Default::default() },
            no_attention: true,
            ..Default::default()
        };
        for isa in Isa::available() {
            let forced = force_isa(isa.name());
            let (lowered, reports) = run(&peer, Some(linear_only.clone()));
            drop(forced);
            assert!(rewritten(&reports, "LowerSparseLinear") >= 12, "{reports:?}");
            println!("{m}/{e} [{isa}]: linears only, unfused: max |Δlogit| {:e}", max_diff(&base, &lowered));
            assert!(bit_identical(&base, &lowered), "{m}/{e} [{isa}]: max |Δ| {:e}", max_diff(&base, &lowered));
        }
        let reports = check_every_isa(&peer, 1e-3);
        assert!(rewritten(&reports, "LowerSparseLinear") >= 12, "{reports:?}");
        assert_eq!(rewritten(&reports, "FuseAttention"), 2, "{reports:?}");
        let info: serde_json::Value = serde_json::from_str(&ok(&sparsec(&["info", s(&peer), "--json"]))).unwrap();
        let layers = info["int8_layers"].as_array().unwrap();
        let qlinear = layers.iter().filter(|l| l["form"] == "qlinear_matmul").collect::<Vec<_>>();
        assert_eq!(qlinear.len(), 13, "{layers:?}");
        assert!(qlinear.iter().filter(|l| l["sparsity"].as_f64().unwrap() > 0.7).count() >= 12, "{qlinear:?}");
    }
}
