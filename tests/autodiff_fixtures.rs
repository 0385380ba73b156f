//! Gradients of the QA span loss on every fixture export against PyTorch autograd
//! (`fixtures/<model>/grad_reference.safetensors`, made by `fixtures/generate.py`), and the
//! MiniLM training graph building and running.
//!
//! Error measure, per parameter tensor: `max|g - g_ref| / max(max|g_ref|, FLOOR)`, with PyTorch's
//! `[out, in]` Linear weights compared after transposing the ONNX `[in, out]` gradient. FLOOR
//! (1e-4) only matters for tensors whose exact gradient is zero, such as `qa_outputs.bias`
//! (the softmax rows sum to one), where both sides hold f32 rounding noise of ~1e-8.

use std::collections::HashSet;
use std::time::Instant;

use crate::common::*;
use ndarray::ArrayD;
use sparsec::autodiff::{self, LossSpec, TrainingGraphSpec};
use sparsec::ir::{infer, modules};
use sparsec::onnx;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

const MAX_REL: f64 = 1e-3;
const FLOOR: f64 = 1e-4;

fn config(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn fixture_gradients_match_pytorch_autograd() {
    let mut worst_overall = (0.0f64, String::new());
    for (model, exporter, path) in fixture_exports() {
        let dir = fixture_dir(&model);
        let m = onnx::load(&path).unwrap();
        let reference = read_safetensors(&dir.join("grad_reference.safetensors"));
        let names = modules::parameter_names(&m.graph);
        let transposed: HashSet<String> = modules::linear_layers(&m.graph)
            .into_iter()
            .filter(|l| l.transposed)
            .map(|l| m.graph.value(l.weight).name.clone())
            .collect();
        let mut spec = TrainingGraphSpec::new(LossSpec::Span);
        spec.zero_grad_rows = autodiff::loss::hf_padding_rows(&config(&dir), names.keys().map(String::as_str));
        let t0 = Instant::now();
        let tg = autodiff::build_training_graph(&m, &spec).unwrap_or_else(|e| panic!("{model}.{exporter}: {e}"));
        let build = t0.elapsed();
        let bytes = onnx::encode_model(&tg.model);
        let mut backend = runtime::load_bytes(&bytes, EngineKind::Ort, &EngineOptions::default())
            .unwrap_or_else(|e| panic!("{model}.{exporter}: ORT rejects the training graph: {e:#}"));
        let feed: Vec<(&str, HostTensor)> = reference
            .iter()
            .filter_map(|(n, t)| {
                let field = n.strip_prefix("case0.").unwrap_or(n);
                backend.input_names().iter().any(|i| i == field).then(|| (field, t.clone()))
            })
            .collect();
        let out = backend.run(&feed).unwrap();
        let get = |name: &str| out.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_f32().unwrap().clone());
        let want_loss =
            reference.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap().iter().next().copied().unwrap();
        let got_loss = get("loss").unwrap().iter().next().copied().unwrap();
        assert!((got_loss - want_loss).abs() <= 1e-5, "{model}.{exporter}: loss {got_loss} vs PyTorch {want_loss}");

        for (_, node) in tg.model.graph.nodes() {
            assert!(node.domain.is_empty(), "{model}.{exporter}: node {} is in domain {}", node.name, node.domain);
        }
        infer::infer_facts(&mut tg.model.clone()).unwrap_or_else(|e| panic!("{model}.{exporter}: {e}"));
        let mut worst = (0.0f64, String::new());
        let mut worst_unfloored = (0.0f64, String::new());
        let mut compared = 0;
        for (key, want) in &reference {
            let Some(torch_name) = key.strip_prefix("grad.") else { continue };
            let want = want.as_f32().unwrap();
            let entry = tg
                .grads
                .by_torch_name(torch_name)
                .unwrap_or_else(|| panic!("{model}.{exporter}: no gradient output for parameter {torch_name}"));
            let mut got: ArrayD<f32> = get(&entry.output).unwrap();
            if transposed.contains(&entry.param) {
                got = got.reversed_axes();
            }
            assert_eq!(got.shape(), want.shape(), "{model}.{exporter} {torch_name}");
            let ref_max = want.iter().fold(0.0f32, |a, &b| a.max(b.abs())) as f64;
            let diff = max_abs_diff(&got, want) as f64;
            let rel = diff / ref_max.max(FLOOR);
            if ref_max > FLOOR && rel > worst_unfloored.0 {
                worst_unfloored = (rel, torch_name.to_string());
            }
            if rel > worst.0 {
                worst = (rel, format!("{torch_name} (max|ref| {ref_max:.3e}, max|diff| {diff:.3e})"));
            }
            assert!(rel <= MAX_REL, "{model}.{exporter} {torch_name}: relative error {rel:.3e}");
            compared += 1;
        }
        assert_eq!(compared, tg.grads.entries.len(), "{model}.{exporter}: every gradient output has a reference");
        println!(
            "{model}.{exporter}: {compared} parameters, loss {got_loss:.6} (PyTorch {want_loss:.6}), worst relative error {:.3e} in {}; among tensors with max|ref| > FLOOR: {:.3e} in {}; backward built in {:.1} ms, {} nodes",
            worst.0,
            worst.1,
            worst_unfloored.0,
            worst_unfloored.1,
            build.as_secs_f64() * 1e3,
            tg.model.graph.node_count()
        );
        if worst.0 > worst_overall.0 {
            worst_overall = (worst.0, format!("{model}.{exporter} {}", worst.1));
        }
    }
    println!("worst over all fixtures: {:.3e} in {}", worst_overall.0, worst_overall.1);
}

#[test]
fn distillation_training_graph_runs_on_a_fixture_with_the_teacher_equal_to_the_student() {
    let dir = fixture_dir("bert");
    let m = onnx::load(dir.join("model.legacy.onnx")).unwrap();
    let tg = autodiff::build_training_graph(
        &m,
        &TrainingGraphSpec::new(LossSpec::Distill { temperature: 2.0, hardness: 1.0 }),
    )
    .unwrap();
    let reference = read_safetensors(&dir.join("reference.safetensors"));
    let field = |n: &str| reference.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let mut backend =
        runtime::load_bytes(&onnx::encode_model(&tg.model), EngineKind::Ort, &EngineOptions::default()).unwrap();
    let pos = HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![1, 2]).unwrap());
    let feed = vec![
        ("input_ids", field("case0.input_ids")),
        ("attention_mask", field("case0.attention_mask")),
        ("token_type_ids", field("case0.token_type_ids")),
        ("start_positions", pos.clone()),
        ("end_positions", pos),
        ("teacher_start_logits", field("case0.start_logits")),
        ("teacher_end_logits", field("case0.end_logits")),
    ];
    let out = backend.run(&feed).unwrap();
    let get = |name: &str| out.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().clone();
    // KL(p || p) = 0 with hardness 1: the loss and every gradient vanish (up to f32 rounding).
    let loss = get("loss").iter().next().copied().unwrap();
    assert!(loss.abs() <= 1e-5, "distillation loss against itself: {loss}");
    for e in &tg.grads.entries {
        let g = get(&e.output);
        let m = g.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
        assert!(m <= 1e-4, "{}: gradient {m} with the teacher equal to the student", e.param);
    }
}

#[test]
fn minilm_training_graph_builds_and_runs_on_ort() {
    let Some(dir) = shared_minilm() else { return };
    let m = onnx::load(dir.join("model.onnx")).unwrap();
    let names = modules::parameter_names(&m.graph);
    let mut spec = TrainingGraphSpec::new(LossSpec::Span);
    spec.zero_grad_rows = autodiff::loss::hf_padding_rows(&config(&dir), names.keys().map(String::as_str));
    let t0 = Instant::now();
    let tg = autodiff::build_training_graph(&m, &spec).unwrap();
    println!(
        "MiniLM: training graph of {} nodes ({} forward) built in {:.2} s (test profile; benches/autodiff_minilm.sh reports the benchmark)",
        tg.model.graph.node_count(),
        m.graph.node_count(),
        t0.elapsed().as_secs_f64()
    );
    let mut backend =
        runtime::load_bytes(&onnx::encode_model(&tg.model), EngineKind::Ort, &EngineOptions::default()).unwrap();
    let (b, s) = (2usize, 16usize);
    let ids: Vec<i64> = (0..b * s).map(|i| 101 + (i as i64 * 37) % 2000).collect();
    let ints = |v: Vec<i64>, shape: Vec<usize>| HostTensor::I64(ArrayD::from_shape_vec(shape, v).unwrap());
    let feed = vec![
        ("input_ids", ints(ids, vec![b, s])),
        ("attention_mask", ints(vec![1; b * s], vec![b, s])),
        ("token_type_ids", ints(vec![0; b * s], vec![b, s])),
        ("start_positions", ints(vec![3, 5], vec![b])),
        ("end_positions", ints(vec![4, 9], vec![b])),
    ];
    let out = backend.run(&feed).unwrap();
    let loss = out.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap().iter().next().copied().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    let mut nonzero = 0;
    for e in &tg.grads.entries {
        let g = out.iter().find(|(n, _)| *n == e.output).unwrap().1.as_f32().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{}: non-finite gradient", e.param);
        nonzero += g.iter().any(|&v| v != 0.0) as usize;
    }
    assert_eq!(nonzero, tg.grads.entries.len(), "every parameter gets a non-zero gradient");
}
