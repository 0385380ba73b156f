//! `sparsec export` on fixtures: the exported inference model computes what the trained graph
//! computed in eval mode (masked fp32 within 1e-4; int8 QDQ equal to the fake-quant graph under
//! ORT's rounding-preserving optimisations), carries int8 weights and the recipe in its metadata,
//! runs in ORT (Rust and Python) and tract, passes the ONNX checker, and bad inputs fail clearly;
//! likewise the `--format qoperator` and `--quantize-embeddings` variants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use ndarray::ArrayD;
use serde_json::Value;
use sparsec::ir::DType;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

/// Compiles and trains the bert fixture with `recipe` (recipe args `args`); returns the trained folder.
fn trained(dir: &Path, recipe: &Path, args: &str) -> PathBuf {
    let compiled = dir.join("compiled");
    compile_fixture(recipe, args, &compiled);
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
    logits_with(
        path,
        engine,
        None,
        EngineOptions { basic_optimizations_only: basic, threads: Some(1), ..Default::default() },
    )
}

/// The logits of ORT's own int8 kernels when they are exact on this CPU (VNNI); else of the same
/// model with every int8 linear on sparsec's exact kernels (`--kernels auto` there), since ORT's
/// u8×s8 kernels without VNNI saturate 16-bit pair sums. Says which ran.
fn integer_logits(path: &Path) -> (HashMap<String, ArrayD<f32>>, &'static str) {
    if runtime::ort_int8_is_exact() {
        return (logits(path, EngineKind::Ort, false), "ORT's int8 kernels");
    }
    let sparse = runtime::Kernels::Auto.sparse_execution();
    let opts = EngineOptions { threads: Some(1), ..Default::default() };
    (logits_with(path, EngineKind::Ort, sparse, opts), "sparsec's int8 kernels (ORT's saturate without VNNI)")
}

fn logits_with(
    path: &Path,
    engine: EngineKind,
    sparse: Option<sparsec::passes::SparseExecution>,
    opts: EngineOptions,
) -> HashMap<String, ArrayD<f32>> {
    let (mut b, _) = load_lowered(path, engine, sparse, &opts);
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

/// Python onnxruntime (CI installs it) runs the model and, where the onnx package is present, the
/// ONNX checker accepts it.
fn python_runs_and_checks(exported: &Path) {
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
    match Command::new("python3").args(["-c", py, s(exported)]).output() {
        Ok(o) if o.status.success() => {
            let said = String::from_utf8_lossy(&o.stdout);
            match said.trim().strip_prefix("SKIPPED: ") {
                Some(why) => skip(why),
                None => println!("python: {}", said.trim()),
            }
        }
        Ok(o) => {
            let e = String::from_utf8_lossy(&o.stderr);
            if e.contains("No module named 'onnxruntime'") {
                skip("python onnxruntime absent");
            } else {
                panic!("python onnxruntime/checker failed: {e}");
            }
        }
        Err(_) => skip("no python3"),
    }
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
    let d_ort_fused = max_diff(&fq, &logits(&exported, EngineKind::Ort, false));
    let (fused, which) = integer_logits(&exported);
    let d_fused = max_diff(&fq, &fused);
    let tract = logits(&exported, EngineKind::Tract, false);
    let d_tract = max_diff(&fq, &tract);
    println!("int8 with {which}: {d_fused:e}; ORT with its QDQ fusions: {d_ort_fused:e}; tract: {d_tract:e}");
    let range = fq["start_logits"].iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(d_fused <= 0.05 * range.max(1.0) && d_tract <= 0.05 * range.max(1.0), "integer kernels stay close");

    python_runs_and_checks(&exported);
}

/// `quantize_attention_matmuls: true` (int8 attention QAT): the four inputs of each attention's
/// two products are fake-quantized in training; the QDQ export equals the fake-quant graph; and
/// sparsec's lowering runs each attention as one `QuantizedAttention` (no requantization of the
/// scores or the context), within the integer kernels' bound of the fake-quant graph.
#[test]
fn int8_attention_qat_exports_attention_that_runs_on_the_int8_attention_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = int8_attention_recipe(dir.path());
    let t = trained(dir.path(), &recipe, r#"{"num_epochs": 6}"#);
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(t.join("plan.json")).unwrap()).unwrap();
    let inputs: Vec<&str> = plan["graph_inputs"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let attention_sites: Vec<&&str> =
        inputs.iter().filter(|n| n.ends_with(".input_quant.scale") && n.contains(".attention_scores.")).collect();
    let context_sites = inputs.iter().filter(|n| n.ends_with(".input_quant.scale") && n.contains(".context.")).count();
    assert!(!attention_sites.is_empty(), "attention sites in {inputs:?}");
    assert_eq!(attention_sites.len(), context_sites, "q, k and probs, v per attention");

    let dep = dir.path().join("deployment");
    export(&t, &dep);
    let exported = dep.join("model.onnx");
    let fq = logits(&t.join("model.onnx"), EngineKind::Ort, true);
    let d = max_diff(&fq, &logits(&exported, EngineKind::Ort, true));
    println!("int8 attention: exported QDQ vs fake-quant graph (ORT basic optimisations) max |Δlogit| = {d:e}");
    assert!(d <= 1e-4, "{d}");

    // sparsec's lowering: every attention becomes one QuantizedAttention, no Softmax is left.
    let mut m = sparsec::onnx::load(&exported).unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let softmaxes = m.graph.nodes().filter(|(_, n)| n.op_type == "Softmax").count();
    assert_eq!(softmaxes * 2, attention_sites.len(), "q and k sites for each attention (one Softmax each)");
    let cfg = runtime::Kernels::Auto.sparse_execution().unwrap();
    sparsec::passes::lower_for_sparse_execution(&mut m, &cfg).unwrap();
    let qattn: Vec<_> = m.graph.nodes().filter(|(_, n)| n.op_type == "QuantizedAttention").map(|(_, n)| n).collect();
    assert_eq!(qattn.len(), softmaxes, "every attention lowered to QuantizedAttention");
    assert!(m.graph.nodes().all(|(_, n)| n.op_type != "Softmax"), "no Softmax left on ONNX Runtime");
    for n in &qattn {
        assert!(n.attrs.iter().all(|a| a.name != "scores_scale" && a.name != "context_scale"), "{}", n.name);
    }
    let opts = EngineOptions { threads: Some(1), ..Default::default() };
    let ours = logits_with(&exported, EngineKind::Ort, runtime::Kernels::Auto.sparse_execution(), opts);
    let d_ours = max_diff(&fq, &ours);
    let range = fq["start_logits"].iter().fold(0.0f32, |m, x| m.max(x.abs()));
    println!("int8 attention on sparsec's kernels vs the fake-quant graph: max |Δlogit| = {d_ours:e} (range {range})");
    assert!(d_ours <= 0.05 * range.max(1.0), "integer kernels stay close: {d_ours}");
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

#[test]
fn quantized_embeddings_are_row_wise_int8_tables_looked_up_then_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained(dir.path(), &root().join("tests/data/recipes/gmp50-fp32.yaml"), "{}");
    let plain = dir.path().join("plain");
    export(&t, &plain);
    let qdir = dir.path().join("qemb");
    let report: Value = serde_json::from_str(&ok(&sparsec(&[
        "export",
        "--model",
        s(&t),
        "-o",
        s(&qdir),
        "--quantize-embeddings",
        "--json",
    ])))
    .unwrap();

    // Reference: the plain export with every embedding table replaced by its per-row int8
    // reconstruction q·s, s = max(max|row| / 127.5, f32::EPSILON), q = round-half-even(row / s).
    let tables = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    ];
    let mut reference = sparsec::onnx::load(plain.join("model.onnx")).unwrap();
    let qmodel = sparsec::onnx::load(qdir.join("model.onnx")).unwrap();
    let qg = &qmodel.graph;
    let (mut int8_total, mut rows_total) = (0, 0);
    reference
        .graph
        .edit(|p| {
            let g = p.graph();
            for name in tables {
                let v = g.value_by_name(name).unwrap_or_else(|| panic!("{name} in the plain export"));
                let table = g.initializer(v).unwrap();
                let (rows, cols) = (table.dims[0] as usize, table.dims[1] as usize);
                let w = table.as_f32s().unwrap();
                let mut q = vec![0i8; w.len()];
                let mut deq = vec![0f32; w.len()];
                for r in 0..rows {
                    let row = &w[r * cols..(r + 1) * cols];
                    let s = (row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.5).max(f32::EPSILON);
                    for c in 0..cols {
                        let x = (row[c] / s).round_ties_even().clamp(-128.0, 127.0);
                        q[r * cols + c] = x as i8;
                        deq[r * cols + c] = x * s;
                    }
                }
                let qv = qg.value_by_name(&format!("{name}.int8")).unwrap_or_else(|| panic!("{name}.int8"));
                let stored = qg.initializer(qv).unwrap();
                assert_eq!(stored.dtype, DType::I8);
                assert_eq!(stored.raw(), q.iter().map(|&x| x as u8).collect::<Vec<_>>().as_slice(), "{name}");
                assert!(qg.value_by_name(name).and_then(|v| qg.initializer(v)).is_none(), "{name} is gone");
                int8_total += w.len();
                rows_total += rows;
                p.set_initializer(v, sparsec::ir::Tensor::from_f32(table.dims.clone(), &deq));
            }
            Ok::<(), sparsec::ir::IrError>(())
        })
        .unwrap();
    let ref_path = dir.path().join("reference.onnx");
    sparsec::onnx::save(&reference, &ref_path, &Default::default()).unwrap();
    let pass = report["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "QuantizeEmbeddings").unwrap();
    assert_eq!(pass["rewritten"], 3, "{pass}");
    assert_eq!(report["int8_weights"].as_u64().unwrap() as usize, int8_total, "fp32 model: only the tables are int8");

    let want = logits(&ref_path, EngineKind::Ort, false);
    let d = max_diff(&want, &logits(&qdir.join("model.onnx"), EngineKind::Ort, false));
    let d_tract = max_diff(&want, &logits(&qdir.join("model.onnx"), EngineKind::Tract, false));
    println!("quantized embeddings vs the q·s reference: ORT {d:e}, tract {d_tract:e}");
    assert!(d <= 1e-5 && d_tract <= 1e-4, "{d} {d_tract}");
    let d_plain = max_diff(&want, &logits(&plain.join("model.onnx"), EngineKind::Ort, false));
    println!("quantized embeddings vs fp32 tables: {d_plain:e}");
    assert!(d_plain > 0.0, "the tables really changed");

    let plain_bytes = std::fs::metadata(plain.join("model.onnx")).unwrap().len() as i64;
    let q_bytes = report["model_bytes"].as_i64().unwrap();
    let saved = plain_bytes - q_bytes;
    let expected = 3 * int8_total as i64 - 4 * rows_total as i64;
    println!(
        "model bytes: {plain_bytes} → {q_bytes}; int8 tables with f32 row scales save {saved} (expected {expected})"
    );
    assert!(
        (saved - expected).abs() < 4096,
        "1 byte per entry plus one f32 scale per row instead of 4 bytes per entry"
    );
}

#[test]
fn qoperator_export_runs_integer_matmuls_that_match_the_fake_quant_graph() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained(dir.path(), &root().join("recipes/gmp80-unstructured-qat-distill.yaml"), r#"{"num_epochs": 6}"#);
    let dep = dir.path().join("qop");
    let report: Value = serde_json::from_str(&ok(&sparsec(&[
        "export",
        "--model",
        s(&t),
        "-o",
        s(&dep),
        "--format",
        "qoperator",
        "--json",
    ])))
    .unwrap();
    assert_eq!(report["format"], "qoperator");
    let pass = report["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "LowerQOperator").unwrap();
    assert_eq!(pass["rewritten"], 13, "12 encoder linears + qa_outputs: {pass}");
    let exported = dep.join("model.onnx");
    let m = sparsec::onnx::load(&exported).unwrap();
    let g = &m.graph;
    let integer: Vec<_> = g.nodes().filter(|(_, n)| n.op_type == "MatMulInteger").collect();
    assert_eq!(integer.len(), 13);
    for (_, n) in &integer {
        let w = g.initializer(n.input(1).unwrap()).expect("int8 weight initializer");
        assert_eq!(w.dtype, DType::I8);
        let a = g.producer(n.input(0).unwrap()).unwrap().1;
        assert_eq!(a.op_type, "QuantizeLinear", "{}", n.name);
    }
    let weight_dq = g
        .nodes()
        .filter(|(_, n)| n.op_type == "DequantizeLinear")
        .filter(|(_, n)| n.input(0).and_then(|v| g.initializer(v)).is_some())
        .count();
    assert_eq!(weight_dq, 0, "no weight is dequantized at run time");

    let fq = logits(&t.join("model.onnx"), EngineKind::Ort, true);
    let range = fq["start_logits"].iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1.0);
    let (integer, which) = integer_logits(&exported);
    let d_ort = max_diff(&fq, &integer);
    println!(
        "qoperator integer products on {which}; ORT's own: {:e}",
        max_diff(&fq, &logits(&exported, EngineKind::Ort, false))
    );
    let d_tract = max_diff(&fq, &logits(&exported, EngineKind::Tract, false));
    let d_qdq = {
        let qdq = dir.path().join("qdq");
        export(&t, &qdq);
        max_diff(&logits(&qdq.join("model.onnx"), EngineKind::Ort, false), &logits(&exported, EngineKind::Ort, false))
    };
    println!("qoperator vs fake-quant graph: ORT {d_ort:e}, tract {d_tract:e} (logit range {range}); vs QDQ export on ORT {d_qdq:e}");
    assert!(d_ort <= 0.01 * range && d_tract <= 0.01 * range, "exact integer sums: only float rounding differs");
    python_runs_and_checks(&exported);
}

#[test]
fn fake_quantized_embedding_tables_are_gathered_before_they_are_dequantized() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained(dir.path(), &root().join("recipes/quantization-only.yaml"), "{}");
    let dep = dir.path().join("deployment");
    export(&t, &dep);
    let exported = dep.join("model.onnx");
    let m = sparsec::onnx::load(&exported).unwrap();
    let g = &m.graph;
    let consumers = g.consumers();
    for table in ["word_embeddings", "position_embeddings", "token_type_embeddings"] {
        let name = format!("bert.embeddings.{table}.weight.int8");
        let v = g.value_by_name(&name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(g.initializer(v).unwrap().dtype, DType::I8);
        let readers = &consumers[&v];
        assert!(!readers.is_empty());
        for &(n, slot) in readers {
            let node = g.node(n);
            assert_eq!((node.op_type.as_str(), slot), ("Gather", 0), "{name} is looked up, not dequantized whole");
            let next = &consumers[&node.output(0).unwrap()];
            assert!(next.iter().all(|&(d, _)| g.node(d).op_type == "DequantizeLinear"), "then its rows dequantized");
        }
    }
    let d = max_diff(&logits(&t.join("model.onnx"), EngineKind::Ort, true), &logits(&exported, EngineKind::Ort, true));
    println!("int8 embeddings gathered then dequantized vs fake-quant graph: {d:e}");
    assert!(d <= 1e-4, "{d}");
}
