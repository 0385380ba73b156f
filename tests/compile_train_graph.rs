//! `sparsec compile` writes `train.onnx`: the compiled graph with the recipe's loss and one
//! gradient per parameter, and ONNX Runtime runs it. The trainer's variant without fake
//! quantization (used while QAT is off) computes the same loss, gradients and observer outputs.

use crate::common;

use sparsec::autodiff::{build_training_graph, LossSpec, TrainingGraphSpec};
use sparsec::ir::Graph;
use sparsec::runtime::{self, EngineKind, HostTensor};

/// Deterministic values for every runtime input of a compiled graph (batch 2 × 16 tokens), with
/// the fake-quantization switch at `quant_on`.
fn feed_for(g: &Graph, quant_on: bool) -> Vec<(String, HostTensor)> {
    let f32_input = |name: &str, shape: &[usize], _: usize| -> Vec<f32> {
        let n = shape.iter().product();
        if name.ends_with(".mask") {
            vec![1.0; n]
        } else if name.contains("scale") {
            vec![0.05; n]
        } else {
            (0..n).map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6).collect()
        }
    };
    let spec = common::BertFeed {
        batch: 2,
        seq: 16,
        bools: quant_on,
        attention_mask: &|count, _| vec![1; count],
        f32_input: &f32_input,
    };
    common::bert_feed(g, &spec)
}

/// `sparsec compile` of the bert fixture with the GMP + QAT + distillation recipe into `parent/compiled`.
fn compile_bert_qat(parent: &std::path::Path) -> std::path::PathBuf {
    let dir = parent.join("compiled");
    let model = common::fixture_dir("bert").join("model.legacy.onnx");
    let recipe = common::root().join("recipes/gmp80-unstructured-qat-distill.yaml");
    let status = crate::common::sparsec_command()
        .args(["compile", model.to_str().unwrap(), "--recipe", recipe.to_str().unwrap(), "-o", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    dir
}

#[test]
fn compiled_training_graph_runs_with_distillation_loss_and_all_gradients() {
    let out = tempfile::tempdir().unwrap();
    let dir = compile_bert_qat(out.path());

    let mut train = sparsec::onnx::load(dir.join("train.onnx")).unwrap();
    sparsec::ir::infer::infer_facts(&mut train).unwrap();
    let g = &train.graph;
    let feed = feed_for(g, true);
    assert!(feed.iter().any(|(n, _)| n == "teacher_start_logits"), "distillation inputs expected");
    let mut backend = runtime::load_file(&dir.join("train.onnx"), EngineKind::Ort, &Default::default()).unwrap();
    let refs: Vec<(&str, HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let outputs = backend.run(&refs).unwrap();
    let loss = outputs.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap().iter().copied().next().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    let grads: Vec<_> = outputs.iter().filter(|(n, _)| n.starts_with("grad.")).collect();
    assert_eq!(grads.len(), 39, "one gradient per parameter of the tiny BERT");
    for (n, t) in grads {
        assert!(t.as_f32().unwrap().iter().all(|x| x.is_finite()), "{n} has non-finite values");
    }
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
    assert!(plan["autodiff"].as_str().unwrap().starts_with("train.onnx: span + distillation loss, 39 gradients"));
}

#[test]
fn the_graph_without_fake_quant_computes_what_the_switched_off_graph_computes() {
    let out = tempfile::tempdir().unwrap();
    let dir = compile_bert_qat(out.path());
    let mut m = sparsec::onnx::load(dir.join("model.onnx")).unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let qat = build_training_graph(&m, &spec).unwrap();
    let float = build_training_graph(&sparsec::train::graphs::without_fake_quant(&m).unwrap(), &spec).unwrap();
    let count = |g: &Graph, op: &str| g.nodes().filter(|(_, n)| n.op_type == op).count();
    assert!(count(&qat.model.graph, "QuantizeLinear") > 0);
    assert_eq!(count(&float.model.graph, "QuantizeLinear"), 0);
    assert_eq!(count(&float.model.graph, "DequantizeLinear"), 0);
    println!(
        "training graph nodes: with fake quantization {}, without {}",
        qat.model.graph.node_count(),
        float.model.graph.node_count()
    );

    let feed = feed_for(&qat.model.graph, false);
    let run = |tg: &sparsec::autodiff::TrainingGraph| {
        let bytes = sparsec::onnx::encode_model(&tg.model);
        let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, &Default::default()).unwrap();
        let takes = b.input_names().to_vec();
        let refs: Vec<(&str, HostTensor)> =
            feed.iter().filter(|(n, _)| takes.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
        b.run(&refs).unwrap()
    };
    let (a, b) = (run(&qat), run(&float));
    let mut compared = 0;
    let mut worst = 0f32;
    for (name, x) in &a {
        let Some((_, y)) = b.iter().find(|(n, _)| n == name) else {
            panic!("output '{name}' is missing without fake quantization");
        };
        let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        for (p, q) in x.iter().zip(y.iter()) {
            let d = (p - q).abs() / (1.0 + p.abs());
            worst = worst.max(d);
        }
        compared += 1;
    }
    println!("{compared} outputs (loss, gradients, observer min/max) compared: worst relative difference {worst:e}");
    assert!(compared > 40, "{compared}");
    assert!(worst <= 1e-6, "{worst}");
}

/// The QAT graph `sparsec train` runs (switch fixed on, `train::graphs::with_fake_quant_on`: no
/// `Where` selects forward or backward) computes what the switched graph computes with the switch
/// on: loss, every gradient and the observers' min/max, bit for bit, on ONNX Runtime's basic
/// (semantics-preserving) rewrites. With its full optimizations, as `train` runs it, ONNX Runtime
/// also fuses each `DequantizeLinear` → `MatMul` that the switch no longer separates into
/// `MatMulIntegerToFloat` (exact integer products, then the scales): the same values up to the
/// rounding of the sums, which a fake-quantized activation downstream can move by a level.
#[test]
fn the_graph_with_fake_quant_fixed_on_computes_what_the_switched_on_graph_computes() {
    let out = tempfile::tempdir().unwrap();
    let dir = compile_bert_qat(out.path());
    let mut m = sparsec::onnx::load(dir.join("model.onnx")).unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let switched = build_training_graph(&m, &spec).unwrap();
    let fixed = build_training_graph(&sparsec::train::graphs::with_fake_quant_on(&m).unwrap(), &spec).unwrap();
    let count = |g: &Graph, op: &str| g.nodes().filter(|(_, n)| n.op_type == op).count();
    assert_eq!(count(&fixed.model.graph, "QuantizeLinear"), count(&switched.model.graph, "QuantizeLinear"));
    assert!(count(&fixed.model.graph, "Where") < count(&switched.model.graph, "Where"));
    assert!(fixed.model.graph.value_by_name(sparsec::passes::QUANT_ENABLED_INPUT).is_none_or(|v| !fixed
        .model
        .graph
        .inputs()
        .contains(&v)));
    println!(
        "training graph nodes: switched {}, fixed on {} (Where: {} / {})",
        switched.model.graph.node_count(),
        fixed.model.graph.node_count(),
        count(&switched.model.graph, "Where"),
        count(&fixed.model.graph, "Where")
    );
    let feed = feed_for(&switched.model.graph, true);
    let run = |tg: &sparsec::autodiff::TrainingGraph| {
        let bytes = sparsec::onnx::encode_model(&tg.model);
        let opts =
            sparsec::runtime::EngineOptions { threads: Some(1), basic_optimizations_only: true, ..Default::default() };
        let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, &opts).unwrap();
        let takes = b.input_names().to_vec();
        let refs: Vec<(&str, HostTensor)> =
            feed.iter().filter(|(n, _)| takes.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
        b.run(&refs).unwrap()
    };
    let (a, b) = (run(&switched), run(&fixed));
    let mut compared = 0;
    for (name, x) in &a {
        let Some((_, y)) = b.iter().find(|(n, _)| n == name) else {
            panic!("output '{name}' is missing with the switch fixed on");
        };
        let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        let same = x.iter().zip(y.iter()).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name} differs with the switch fixed on");
        compared += 1;
    }
    assert!(compared > 40, "{compared}");
}

/// The softmax NaN guards of a torch export (`Where(IsNaN(p), 0, p)` over an additive `-inf` mask)
/// are dropped from the training graph, and loss and every gradient stay bit-identical to the
/// graph that keeps them, on a batch with masked keys (1 thread).
#[test]
fn dropping_softmax_nan_guards_changes_no_bit_of_loss_or_gradients() {
    let Some(dir) = common::shared_minilm() else { return };
    let mut m = sparsec::onnx::load(dir.join("model.onnx")).unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let count = |g: &Graph, op: &str| g.nodes().filter(|(_, n)| n.op_type == op).count();
    assert_eq!(count(&m.graph, "IsNaN"), 6, "MiniLM's export guards each layer's softmax");
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let new = build_training_graph(&m, &spec).unwrap();
    assert_eq!(count(&new.model.graph, "IsNaN"), 0, "the guards are gone from the training graph");

    let mut r = m.clone();
    let (_, outs) = sparsec::autodiff::loss::attach_loss(&mut r, &spec).unwrap();
    let params: Vec<String> = new.grads.entries.iter().map(|e| e.param.clone()).collect();
    let (reference, _) =
        sparsec::autodiff::differentiate(&r, &outs[0], &params, &sparsec::autodiff::GradOptions::default()).unwrap();
    assert_eq!(count(&reference.graph, "IsNaN"), 6);

    let mut feed = feed_for(&new.model.graph, false);
    for (name, t) in feed.iter_mut() {
        if name == "attention_mask" {
            let HostTensor::I64(a) = t else { panic!("attention_mask is int64") };
            let n = a.len();
            a.as_slice_mut().unwrap()[n - 5..].fill(0);
        }
    }
    let opts = runtime::EngineOptions { threads: Some(1), ..Default::default() };
    let run = |model: &sparsec::ir::Model| {
        let bytes = sparsec::onnx::encode_model(model);
        let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, &opts).unwrap();
        let takes = b.input_names().to_vec();
        let refs: Vec<(&str, HostTensor)> =
            feed.iter().filter(|(n, _)| takes.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
        b.run(&refs).unwrap()
    };
    let (a, b) = (run(&new.model), run(&reference));
    let mut compared = 0;
    for (name, x) in &a {
        let (_, y) = b.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("'{name}' missing"));
        let (x, y) = (x.as_f32().unwrap(), y.as_f32().unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        assert!(x.iter().zip(y.iter()).all(|(p, q)| p.to_bits() == q.to_bits()), "'{name}' differs");
        assert!(x.iter().all(|v| v.is_finite()), "'{name}' is not finite");
        compared += 1;
    }
    assert_eq!(compared, a.len());
    assert!(compared > 100, "loss, logits and every gradient: {compared}");
}
