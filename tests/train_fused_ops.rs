//! Fused training operators (`train --fused-ops on`, the default): `passes::UseAttentionTrain`
//! rewrites the exported attention core to `ai.sparsec::AttentionTrain`, whose gradient rule emits
//! `AttentionTrainGrad` (probabilities recomputed from two f32 per row), and `passes::UseGeluTrain`
//! each exact GELU to `GeluTrain` / `GeluTrainGrad`. Checked on whichever ISA `SPARSEC_ISA` forces:
//!
//! - a small attention graph (`MatMul → Mul → Add(bias) → Softmax → NaN guard → MatMul`, then
//!   `Tanh` and a fixed weighting): the pass rewrites it whole, and the fused gradients of Q, Kᵀ
//!   and V match central finite differences and the graph's own gradients;
//! - a GELU chain (torch's legacy and dynamo forms) under a fixed weighting: rewritten whole, its
//!   fused gradient matches central finite differences and the chain's own gradient;
//! - the bert, distilbert and roberta fixtures' whole training graphs (bert: torch's legacy and dynamo
//!   exports), span loss, with padded keys, every attention and GELU fused and the embedding and
//!   LayerNorm gradients on `EmbeddingGrad` / `LayerNormGrad`: the fused graph's loss
//!   and every parameter gradient equal the exported graph's to f32 rounding.

use ndarray::{ArrayD, IxDyn};
use sparsec::autodiff::{self, build_training_graph, GradOptions, LossSpec, TrainingGraphSpec};
use sparsec::ir::{infer, Attribute, Facts, Graph, Model, NodeSpec, Patch, Tensor};
use sparsec::passes::{Pass, UseAttentionTrain};
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};
use sparsec::train::graphs::with_fused_ops;

use crate::common::*;

fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

const PARAMS: [&str; 3] = ["q", "kt", "v"];
const DIMS: (usize, usize, usize, usize) = (2, 2, 5, 4);

/// `L = Σ tanh(softmax(0.5·q·kt + bias)·v) ⊙ R` on `[B, H, S, D]` parameters, the bias `[B, 1, 1, S]`
/// masking key 4 of item 1 with -inf, the softmax output guarded as torch exports it.
fn small_attention() -> Model {
    let (b, h, s, d) = DIMS;
    let dims = |x: &[usize]| x.iter().map(|&v| v as i64).collect::<Vec<i64>>();
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
    m.graph
        .edit(|p: &mut Patch| -> Result<(), sparsec::passes::PassError> {
            let q = p.add_initializer("q", Tensor::from_f32(dims(&[b, h, s, d]), &values(b * h * s * d, 1, -1.5, 1.5)));
            let kt =
                p.add_initializer("kt", Tensor::from_f32(dims(&[b, h, d, s]), &values(b * h * s * d, 2, -1.5, 1.5)));
            let v = p.add_initializer("v", Tensor::from_f32(dims(&[b, h, s, d]), &values(b * h * s * d, 3, -1.0, 1.0)));
            let mut bias = values(b * s, 4, -0.5, 0.5);
            bias[s + 4] = f32::NEG_INFINITY;
            let bias = p.add_initializer("bias", Tensor::from_f32(dims(&[b, 1, 1, s]), &bias));
            let half = p.add_initializer("half", Tensor::from_f32(vec![], &[0.5]));
            let zero = p.add_initializer("zero", Tensor::from_f32(vec![1], &[0.0]));
            let sc = p.op(NodeSpec::new("MatMul", "/att/MatMul", &[q, kt]), "sc", Facts::default());
            let sc = p.op(NodeSpec::new("Mul", "/att/Mul", &[sc, half]), "scaled", Facts::default());
            let sc = p.op(NodeSpec::new("Add", "/att/Add", &[sc, bias]), "biased", Facts::default());
            let pr = p.op(
                NodeSpec::new("Softmax", "/att/Softmax", &[sc]).attr(Attribute::int("axis", -1)),
                "p",
                Facts::default(),
            );
            let nan = p.op(NodeSpec::new("IsNaN", "/att/IsNaN", &[pr]), "nan", Facts::default());
            let pg = p.op(NodeSpec::new("Where", "/att/Where", &[nan, zero, pr]), "pg", Facts::default());
            let ctx = p.op(NodeSpec::new("MatMul", "/att/MatMul_1", &[pg, v]), "ctx", Facts::default());
            let t = p.op(NodeSpec::new("Tanh", "/act/Tanh", &[ctx]), "t", Facts::default());
            let r = p.add_initializer("r", Tensor::from_f32(dims(&[b, h, s, d]), &values(b * h * s * d, 5, -1.0, 1.0)));
            let tr = p.op(NodeSpec::new("Mul", "/loss/Mul", &[t, r]), "tr", Facts::default());
            let l = p.op(
                NodeSpec::new("ReduceSum", "/loss/ReduceSum", &[tr]).attr(Attribute::int("keepdims", 0)),
                "loss",
                Facts::default(),
            );
            p.add_output(l);
            Ok(())
        })
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    m
}

/// Differentiates `m` (after `UseAttentionTrain` when `fused`) and loads it on ORT, one thread.
fn load(m: &Model, fused: bool) -> (Box<dyn runtime::Backend>, sparsec::autodiff::GradMap) {
    let mut m = m.clone();
    if fused {
        assert_eq!(UseAttentionTrain::default().apply(&mut m).unwrap().rewritten, 1);
        infer::infer_facts(&mut m).unwrap();
        let ops: Vec<&str> = m.graph.nodes().map(|(_, n)| n.op_type.as_str()).collect();
        assert!(!ops.iter().any(|o| ["Softmax", "IsNaN", "Where", "MatMul", "Add"].contains(o)), "left: {ops:?}");
    }
    let params: Vec<String> = PARAMS.iter().map(|s| s.to_string()).collect();
    let (gm, grads) = autodiff::differentiate(&m, "loss", &params, &GradOptions::default()).unwrap();
    let opts = EngineOptions { threads: Some(1), ..Default::default() };
    let backend = runtime::load_bytes(&sparsec::onnx::encode_model(&gm), EngineKind::Ort, &opts).unwrap();
    (backend, grads)
}

fn f32_host(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// Loss and `[dQ, dKt, dV]` at `params`.
fn run(
    backend: &mut dyn runtime::Backend,
    grads: &sparsec::autodiff::GradMap,
    params: &[(Vec<usize>, Vec<f32>)],
) -> (f64, Vec<Vec<f32>>) {
    let feed: Vec<(&str, HostTensor)> =
        PARAMS.iter().zip(params).map(|(n, (shape, data))| (*n, f32_host(shape, data.clone()))).collect();
    let out = backend.run(&feed).unwrap();
    let get = |name: &str| {
        out.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().iter().copied().collect::<Vec<f32>>()
    };
    (get("loss")[0] as f64, PARAMS.iter().map(|p| get(&grads.by_param(p).unwrap().output)).collect())
}

#[test]
fn fused_attention_gradients_match_finite_differences_and_the_graph() {
    // Tolerance as in sparse_train.rs: |analytic − fd| ≤ 2e-3 + 1e-2·|fd| with ε = 1e-2 (f32
    // roundoff of L over 2ε ≈ 5e-4, truncation ε²·f'''/6 ≈ 1e-4 through softmax and tanh).
    const EPS: f32 = 1e-2;
    let m = small_attention();
    let g = &m.graph;
    let base: Vec<(Vec<usize>, Vec<f32>)> = PARAMS
        .iter()
        .map(|p| {
            let t = g.initializer(g.value_by_name(p).unwrap()).unwrap();
            (t.dims.iter().map(|&d| d as usize).collect(), t.as_f32s().unwrap())
        })
        .collect();
    let (mut fused, fgrads) = load(&m, true);
    let (mut graph, ggrads) = load(&m, false);
    let (lf, analytic) = run(fused.as_mut(), &fgrads, &base);
    let (lg, reference) = run(graph.as_mut(), &ggrads, &base);
    assert!((lf - lg).abs() <= 1e-6 * lg.abs().max(1.0), "loss fused {lf} graph {lg}");
    let mut worst = (0f64, 0f64);
    for (i, name) in PARAMS.iter().enumerate() {
        let largest = reference[i].iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for j in 0..base[i].1.len() {
            let (a, r) = (analytic[i][j] as f64, reference[i][j] as f64);
            // Each gradient is a short f32 sum in both graphs (≤ 5 keys, 4 dims): they agree to a
            // few ulp of the tensor's largest value.
            assert!((a - r).abs() <= 1e-6 * largest, "d L / d {name}[{j}]: fused {a}, graph {r}");
            worst.1 = worst.1.max((a - r).abs() / largest);
            let mut plus = base.clone();
            plus[i].1[j] += EPS;
            let mut minus = base.clone();
            minus[i].1[j] -= EPS;
            let fd =
                (run(fused.as_mut(), &fgrads, &plus).0 - run(fused.as_mut(), &fgrads, &minus).0) / (2.0 * EPS as f64);
            let tol = 2e-3 + 1e-2 * fd.abs();
            assert!((a - fd).abs() <= tol, "d L / d {name}[{j}]: fused {a}, finite difference {fd}");
            worst.0 = worst.0.max((a - fd).abs() / tol);
        }
    }
    // The masked key (item 1, key 4) has no weight: its V rows get no gradient.
    let (b, h, s, d) = DIMS;
    let _ = b;
    for hh in 0..h {
        let row = ((h + hh) * s + 4) * d;
        assert!(analytic[2][row..row + d].iter().all(|&x| x == 0.0), "a masked key's V has a gradient");
    }
    println!(
        "AttentionTrain: worst fd error / tolerance {:.3}, worst fused-graph difference {:.2e} of the largest",
        worst.0, worst.1
    );
}
/// `L = Σ gelu(x) ⊙ R` with GELU as torch's legacy (`Mul(Mul(x, 1 + erf), 0.5)`) or dynamo
/// (`Mul(x, Mul(0.5, 1 + erf))`) exporter writes it.
fn small_gelu(dynamo: bool) -> Model {
    let n = 64usize;
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
    m.graph
        .edit(|p: &mut Patch| -> Result<(), sparsec::passes::PassError> {
            let mut xs = values(n, 11, -5.0, 5.0);
            xs[0] = 0.0;
            let x = p.add_initializer("x", Tensor::from_f32(vec![n as i64], &xs));
            let c = |p: &mut Patch, name: &str, v: f32| p.add_initializer(name, Tensor::from_f32(vec![], &[v]));
            let (sqrt2, one, half) = (c(p, "sqrt2", std::f32::consts::SQRT_2), c(p, "one", 1.0), c(p, "half", 0.5));
            let d = p.op(NodeSpec::new("Div", "/act/Div", &[x, sqrt2]), "d", Facts::default());
            let e = p.op(NodeSpec::new("Erf", "/act/Erf", &[d]), "e", Facts::default());
            let a = p.op(NodeSpec::new("Add", "/act/Add", &[e, one]), "a", Facts::default());
            let y = if dynamo {
                let h = p.op(NodeSpec::new("Mul", "/act/Mul_1", &[half, a]), "h", Facts::default());
                p.op(NodeSpec::new("Mul", "/act/Mul", &[x, h]), "y", Facts::default())
            } else {
                let xm = p.op(NodeSpec::new("Mul", "/act/Mul", &[x, a]), "xm", Facts::default());
                p.op(NodeSpec::new("Mul", "/act/Mul_1", &[xm, half]), "y", Facts::default())
            };
            let r = p.add_initializer("r", Tensor::from_f32(vec![n as i64], &values(n, 12, -1.0, 1.0)));
            let yr = p.op(NodeSpec::new("Mul", "/loss/Mul", &[y, r]), "yr", Facts::default());
            let l = p.op(
                NodeSpec::new("ReduceSum", "/loss/ReduceSum", &[yr]).attr(Attribute::int("keepdims", 0)),
                "loss",
                Facts::default(),
            );
            p.add_output(l);
            Ok(())
        })
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    m
}

#[test]
fn fused_gelu_gradient_matches_finite_differences_and_the_chain() {
    const EPS: f32 = 1e-2;
    for dynamo in [false, true] {
        let m = small_gelu(dynamo);
        let xs = m.graph.initializer(m.graph.value_by_name("x").unwrap()).unwrap().as_f32s().unwrap();
        let load = |fused: bool| {
            let mut m = m.clone();
            if fused {
                assert_eq!(sparsec::passes::UseGeluTrain::default().apply(&mut m).unwrap().rewritten, 1);
                infer::infer_facts(&mut m).unwrap();
                let ops: Vec<&str> = m.graph.nodes().map(|(_, n)| n.op_type.as_str()).collect();
                assert_eq!(ops, ["GeluTrain", "Mul", "ReduceSum"], "dynamo {dynamo}");
            }
            let (gm, grads) = autodiff::differentiate(&m, "loss", &["x".to_string()], &GradOptions::default()).unwrap();
            let opts = EngineOptions { threads: Some(1), ..Default::default() };
            (runtime::load_bytes(&sparsec::onnx::encode_model(&gm), EngineKind::Ort, &opts).unwrap(), grads)
        };
        let run = |b: &mut Box<dyn runtime::Backend>, grads: &sparsec::autodiff::GradMap, x: &[f32]| {
            let out = b.run(&[("x", f32_host(&[x.len()], x.to_vec()))]).unwrap();
            let get = |name: &str| {
                out.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().iter().copied().collect::<Vec<f32>>()
            };
            (get("loss")[0] as f64, get(&grads.by_param("x").unwrap().output))
        };
        let ((mut fb, fg), (mut gb, gg)) = (load(true), load(false));
        let (lf, df) = run(&mut fb, &fg, &xs);
        let (lg, dg) = run(&mut gb, &gg, &xs);
        // Both losses are 64-term sums of GELUs whose erfs differ by < 4e-7 (this kernel's bound).
        assert!((lf - lg).abs() <= 64.0 * 5.0 * 4e-7, "dynamo {dynamo}: loss fused {lf} chain {lg}");
        for j in 0..xs.len() {
            // The chain's gradient is the derivative of ORT's erf chain, the fused one the analytic
            // derivative: both within ~1e-6 of the exact value at |x| ≤ 5.
            assert!((df[j] - dg[j]).abs() <= 2e-6, "dynamo {dynamo}: d L / d x[{j}] fused {} chain {}", df[j], dg[j]);
            let (mut plus, mut minus) = (xs.clone(), xs.clone());
            plus[j] += EPS;
            minus[j] -= EPS;
            let fd = (run(&mut fb, &fg, &plus).0 - run(&mut fb, &fg, &minus).0) / (2.0 * EPS as f64);
            let tol = 2e-3 + 1e-2 * fd.abs();
            assert!((df[j] as f64 - fd).abs() <= tol, "dynamo {dynamo}: d L / d x[{j}] fused {}, fd {fd}", df[j]);
        }
    }
}

/// Runtime inputs of the bert fixture's training graph, batch 2 × 16, item 1 padded by 5 tokens.
fn bert_feed(g: &Graph) -> Vec<(String, HostTensor)> {
    // The second window's last 5 tokens are padding.
    let attention_mask = |count: usize, seq: usize| (0..count).map(|t| (t < seq || t % seq < seq - 5) as i64).collect();
    let f32_input = |_: &str, shape: &[usize], i: usize| values(shape.iter().product(), 200 + i as u64, -1.0, 1.0);
    crate::common::bert_feed(
        g,
        &BertFeed { batch: 2, seq: 16, bools: false, attention_mask: &attention_mask, f32_input: &f32_input },
    )
}

#[test]
fn fixture_training_graphs_with_fused_ops_have_the_graphs_loss_and_gradients() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("compiled");
    for (fixture, file) in [
        ("bert", "model.legacy.onnx"),
        ("bert", "model.dynamo.onnx"),
        ("distilbert", "model.legacy.onnx"),
        ("roberta", "model.legacy.onnx"),
    ] {
        let model_file = format!("{fixture}/{file}");
        let model = fixture_dir(fixture).join(file);
        let recipe = root().join("recipes/dense-finetune.yaml");
        ok(&sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&dir)]));
        let mut m = sparsec::onnx::load(dir.join("model.onnx")).unwrap();
        infer::infer_facts(&mut m).unwrap();
        let softmaxes = m.graph.nodes().filter(|(_, n)| n.op_type == "Softmax").count();
        let spec = TrainingGraphSpec::new(LossSpec::Span);
        let graph = build_training_graph(&m, &spec).unwrap();
        let fused_spec = TrainingGraphSpec { sparsec_training_ops: true, ..spec.clone() };
        let fused = build_training_graph(&with_fused_ops(&m).unwrap(), &fused_spec).unwrap();
        let count = |g: &Graph, op: &str| g.nodes().filter(|(_, n)| n.op_type == op).count();
        assert!(softmaxes > 0);
        assert_eq!(count(&fused.model.graph, "AttentionTrain"), softmaxes, "{model_file}: every attention is fused");
        assert_eq!(count(&fused.model.graph, "AttentionTrainGrad"), softmaxes);
        assert_eq!(count(&fused.model.graph, "Softmax"), 0);
        let erfs = m.graph.nodes().filter(|(_, n)| n.op_type == "Erf").count();
        assert!(erfs > 0);
        assert_eq!(count(&fused.model.graph, "GeluTrain"), erfs, "{model_file}: every GELU is fused");
        assert_eq!(count(&fused.model.graph, "Erf"), 0);
        let lns = m.graph.nodes().filter(|(_, n)| n.op_type == "LayerNormalization").count();
        assert!(lns > 0);
        assert_eq!(
            count(&fused.model.graph, "LayerNormGrad"),
            lns,
            "{model_file}: every LayerNorm gradient is one node"
        );
        assert!(count(&fused.model.graph, "EmbeddingGrad") >= 1, "{model_file}: the embedding gradients are fused");
        assert_eq!(count(&fused.model.graph, "ScatterND"), 0);
        assert_eq!(graph.grads.entries, fused.grads.entries, "same parameters and gradient outputs");

        let feed = bert_feed(&graph.model.graph);
        let run = |tg: &sparsec::autodiff::TrainingGraph| {
            let bytes = sparsec::onnx::encode_model(&tg.model);
            let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, &Default::default()).unwrap();
            let takes = b.input_names().to_vec();
            let refs: Vec<(&str, HostTensor)> =
                feed.iter().filter(|(n, _)| takes.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
            b.run(&refs).unwrap()
        };
        let (a, b) = (run(&graph), run(&fused));
        let get = |o: &[(String, HostTensor)], name: &str| {
            o.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().clone()
        };
        let max_abs = |x: &ArrayD<f32>| x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let global = graph.grads.entries.iter().map(|e| max_abs(&get(&a, &e.output))).fold(0f32, f32::max);
        let mut worst = (0f32, String::new());
        for e in &graph.grads.entries {
            let (x, y) = (get(&a, &e.output), get(&b, &e.output));
            if max_abs(&x) <= 1e-5 * global {
                // Gradients that are 0 in exact arithmetic (the key biases: softmax ignores a
                // shift of all its inputs) are rounding noise in both graphs.
                assert!(max_abs(&y) <= 1e-5 * global, "{}: graph {} fused {}", e.param, max_abs(&x), max_abs(&y));
                continue;
            }
            // As in sparse_train.rs: the attention's sums round differently (~1e-7 relative) and
            // reach every gradient through the layers after it.
            let d = x.iter().zip(y.iter()).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / max_abs(&x);
            if d > worst.0 {
                worst = (d, e.param.clone());
            }
            assert!(d <= 1e-5, "{model_file} {}: gradients differ by {d:e} of their largest", e.param);
        }
        let loss = |o: &[(String, HostTensor)]| get(o, "loss").iter().copied().next().unwrap();
        let (la, lb) = (loss(&a), loss(&b));
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "{model_file}: loss graph {la} fused {lb}");
        println!("{model_file}: loss {la} vs {lb}; worst gradient difference {:e} ({})", worst.0, worst.1);
    }
}
