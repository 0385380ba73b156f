//! Sparse-aware training (`--sparse-train on`): masked linears on sparsec's block-sparse training
//! operators (`ai.sparsec::MaskedLinear` and its gradient operators) compute the dense graph's
//! loss and gradients, run on whichever ISA `SPARSEC_ISA` forces (CI runs this binary with
//! `scalar`, `avx2` and the CPU's best):
//!
//! - one masked linear, `L = Σ (Y ⊙ R)` with `R` fixed: `dY = R` exactly, so each gradient
//!   element is one f32 sum in both graphs, and each is within `γ_n·Σ|terms|` of the exact sum
//!   (`γ_n = n·u/(1 − n·u)`, `u = 2⁻²⁴`, `n` the number of terms plus one: Higham §3.1, any
//!   summation order). The two graphs therefore differ by at most `2·γ_n·Σ|terms|`;
//! - against central finite differences through a nonlinear loss;
//! - the bert fixture's whole training graph, span loss, with 80% `[4, 1]` masks;
//! - `sparsec train` killed mid-run while the block-sparse graph is stepping, then resumed:
//!   weights and step losses bit-identical to an uninterrupted run.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use sparsec::autodiff::{self, build_training_graph, GradOptions, LossSpec, TrainingGraphSpec};
use sparsec::ir::{infer, Attribute, Attrs, Facts, Graph, Model, NodeSpec, Patch, Tensor};
use sparsec::passes::{InsertMasks, LinearPrecision, MaskTarget, Pass, UseMaskedLinear};
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};
use sparsec::train::graphs::{with_fake_quant_on, with_sparse_linears, without_fake_quant};

use crate::common::*;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::powi(2.0, -24);
    nu / (1.0 - nu)
}

/// Deterministic values in `[lo, hi)`.
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// A `[K, N]` 0/1 mask of `[4, 1]` blocks (4 consecutive output columns share each input row),
/// keeping about `keep` of them.
fn block_mask(k: usize, n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let draws = values(k * n.div_ceil(4), seed, 0.0, 1.0);
    (0..k * n).map(|i| ((draws[(i / n) * n.div_ceil(4) + (i % n) / 4] as f64) < keep) as u8 as f32).collect()
}

fn f32_host(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// `x [B, S, K]` (a parameter, so `dX` is an output) `→ MatMul(x, Mul(w [K, N], mask)) → Add(b)`,
/// masks inserted by `InsertMasks`; the loss `L = Σ (f(Y) ⊙ R)` with `f` = identity or `Tanh`.
fn one_linear(b: usize, s: usize, k: usize, n: usize, tanh: bool) -> Model {
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
    m.graph
        .edit(|p: &mut Patch| -> Result<(), sparsec::passes::PassError> {
            let x = p.add_initializer(
                "x",
                Tensor::from_f32(vec![b as i64, s as i64, k as i64], &values(b * s * k, 1, -2.0, 2.0)),
            );
            let w = p.add_initializer(
                "onnx::MatMul_7",
                Tensor::from_f32(vec![k as i64, n as i64], &values(k * n, 2, -1.0, 1.0)),
            );
            let bias = p.add_initializer("fc.bias", Tensor::from_f32(vec![n as i64], &values(n, 3, -1.0, 1.0)));
            let mm = p.op(NodeSpec::new("MatMul", "/fc/MatMul", &[x, w]), "mm", Facts::default());
            let mut y = p.op(NodeSpec::new("Add", "/fc/Add", &[mm, bias]), "y", Facts::default());
            if tanh {
                y = p.op(NodeSpec::new("Tanh", "/act/Tanh", &[y]), "t", Facts::default());
            }
            let r = p.add_initializer(
                "r",
                Tensor::from_f32(vec![b as i64, s as i64, n as i64], &values(b * s * n, 4, -1.0, 1.0)),
            );
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
    InsertMasks { targets: vec![MaskTarget { param: "fc.weight".into(), initializer: "onnx::MatMul_7".into() }] }
        .run(&mut m)
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    m
}

const PARAMS: [&str; 3] = ["x", "onnx::MatMul_7", "fc.bias"];

/// Differentiates `m` (after `UseMaskedLinear` when `sparse`) and loads it on ORT, one thread.
fn load(m: &Model, sparse: bool) -> (Box<dyn runtime::Backend>, sparsec::autodiff::GradMap) {
    let mut m = m.clone();
    if sparse {
        assert_eq!(UseMaskedLinear::default().apply(&mut m).unwrap().rewritten, 1);
        infer::infer_facts(&mut m).unwrap();
    }
    let params: Vec<String> = PARAMS.iter().map(|s| s.to_string()).collect();
    let (gm, grads) = autodiff::differentiate(&m, "loss", &params, &GradOptions::default()).unwrap();
    let opts = EngineOptions { threads: Some(1), ..Default::default() };
    let backend = runtime::load_bytes(&sparsec::onnx::encode_model(&gm), EngineKind::Ort, &opts).unwrap();
    (backend, grads)
}

/// Loss and `[dX, dW, dB]` with `x`, `w`, `b` fed (or their initial values when `None`).
fn run(
    backend: &mut dyn runtime::Backend,
    grads: &sparsec::autodiff::GradMap,
    mask: &HostTensor,
    params: Option<&[(Vec<usize>, Vec<f32>)]>,
) -> (f64, Vec<Vec<f32>>) {
    let mut feed: Vec<(&str, HostTensor)> = vec![("fc.weight.mask", mask.clone())];
    for (name, (shape, data)) in PARAMS.iter().zip(params.unwrap_or(&[])) {
        feed.push((name, f32_host(shape, data.clone())));
    }
    let out = backend.run(&feed).unwrap();
    let get = |name: &str| {
        out.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().iter().copied().collect::<Vec<f32>>()
    };
    let loss = get("loss")[0] as f64;
    (loss, PARAMS.iter().map(|p| get(&grads.by_param(p).unwrap().output)).collect())
}

#[test]
fn one_masked_linear_has_the_dense_gradients_within_the_summation_bound() {
    let isa = sparsec_kernels::Isa::from_env().unwrap();
    for (b, s, k, n, keep) in [(2, 9, 40, 36, 0.25), (3, 50, 33, 70, 0.5), (1, 70, 64, 16, 0.1), (2, 5, 8, 12, 1.0)] {
        let (t, m) = (b * s, one_linear(b, s, k, n, false));
        let mask = block_mask(k, n, keep, 5);
        let mask_t = f32_host(&[k, n], mask.clone());
        let (mut dense, gd) = load(&m, false);
        let (mut sparse, gs) = load(&m, true);
        let (ld, d) = run(dense.as_mut(), &gd, &mask_t, None);
        let (ls, sp) = run(sparse.as_mut(), &gs, &mask_t, None);
        let g = &m.graph;
        let init = |name: &str| g.initializer(g.value_by_name(name).unwrap()).unwrap().as_f32s().unwrap();
        let (x, w, r, bias) = (init("x"), init("onnx::MatMul_7"), init("r"), init("fc.bias"));
        let label = format!("{isa} T={t} K={k} N={n} keep {keep}");
        // dX[t, k] = Σ_j R[t, j]·(W ⊙ M)[k, j].
        for tt in 0..t {
            for kk in 0..k {
                let mag: f64 = (0..n).map(|j| (r[tt * n + j] * w[kk * n + j] * mask[kk * n + j]).abs() as f64).sum();
                let (p, q) = (d[0][tt * k + kk] as f64, sp[0][tt * k + kk] as f64);
                assert!((p - q).abs() <= 2.0 * gamma(n + 1) * mag, "{label}: dX[{tt},{kk}] dense {p} sparse {q}");
            }
        }
        // dW[k, j] = M[k, j]·Σ_t X[t, k]·R[t, j]: exactly zero off the mask in both.
        for kk in 0..k {
            for j in 0..n {
                let mag: f64 = (0..t).map(|tt| (x[tt * k + kk] * r[tt * n + j]).abs() as f64).sum();
                let (p, q) = (d[1][kk * n + j] as f64, sp[1][kk * n + j] as f64);
                assert!((p - q).abs() <= 2.0 * gamma(t + 1) * mag, "{label}: dW[{kk},{j}] dense {p} sparse {q}");
                if mask[kk * n + j] == 0.0 {
                    assert!(p == 0.0 && q == 0.0, "{label}: dW[{kk},{j}] off the mask: dense {p} sparse {q}");
                }
            }
        }
        // dB[j] = Σ_t R[t, j].
        for j in 0..n {
            let mag: f64 = (0..t).map(|tt| r[tt * n + j].abs() as f64).sum();
            let (p, q) = (d[2][j] as f64, sp[2][j] as f64);
            assert!((p - q).abs() <= 2.0 * gamma(t + 1) * mag, "{label}: dB[{j}] dense {p} sparse {q}");
        }
        // L = Σ R ⊙ Y: Y differs by at most 2·γ_{K+1}·(Σ_k |x·w| + |b|) per element, and the two
        // sums of T·N products each round within γ_{T·N}·Σ|R ⊙ Y|.
        let (mut dy_bound, mut ry) = (0f64, 0f64);
        for tt in 0..t {
            for j in 0..n {
                let mut mag = bias[j].abs() as f64;
                let mut y = bias[j] as f64;
                for kk in 0..k {
                    let p = (x[tt * k + kk] * w[kk * n + j] * mask[kk * n + j]) as f64;
                    mag += p.abs();
                    y += p;
                }
                dy_bound += (r[tt * n + j] as f64).abs() * 2.0 * gamma(k + 1) * mag;
                ry += (r[tt * n + j] as f64 * y).abs();
            }
        }
        let bound = dy_bound + 2.0 * gamma(t * n + 1) * ry * 1.01;
        assert!((ld - ls).abs() <= bound, "{label}: loss dense {ld} sparse {ls}, bound {bound:e}");
        println!("{label}: loss {ld} vs {ls}");
    }
}

#[test]
fn masked_linear_gradients_match_finite_differences() {
    // Tolerance as in autodiff_ops.rs: |analytic − fd| ≤ 2e-3 + 1e-2·|fd| with ε = 1e-2: the f32
    // roundoff of L (≈ 1e-6 relative, |L| ≲ 10) over 2ε is ≈ 5e-4; the truncation error
    // ε²·f'''/6 through tanh is ≈ 2e-5.
    const EPS: f32 = 1e-2;
    let (b, s, k, n) = (2, 3, 8, 12);
    let m = one_linear(b, s, k, n, true);
    let mask = block_mask(k, n, 0.5, 9);
    let mask_t = f32_host(&[k, n], mask.clone());
    let (mut backend, grads) = load(&m, true);
    let g = &m.graph;
    let base: Vec<(Vec<usize>, Vec<f32>)> = PARAMS
        .iter()
        .map(|p| {
            let t = g.initializer(g.value_by_name(p).unwrap()).unwrap();
            (t.dims.iter().map(|&d| d as usize).collect(), t.as_f32s().unwrap())
        })
        .collect();
    let (_, analytic) = run(backend.as_mut(), &grads, &mask_t, Some(&base));
    let mut worst = 0f64;
    for (i, name) in PARAMS.iter().enumerate() {
        for j in 0..base[i].1.len() {
            let mut plus = base.clone();
            plus[i].1[j] += EPS;
            let mut minus = base.clone();
            minus[i].1[j] -= EPS;
            let fd = (run(backend.as_mut(), &grads, &mask_t, Some(&plus)).0
                - run(backend.as_mut(), &grads, &mask_t, Some(&minus)).0)
                / (2.0 * EPS as f64);
            let a = analytic[i][j] as f64;
            let tol = 2e-3 + 1e-2 * fd.abs();
            assert!((a - fd).abs() <= tol, "d L / d {name}[{j}]: block-sparse {a}, finite difference {fd}");
            if i == 1 && mask[j] == 0.0 {
                assert_eq!(a, 0.0, "a pruned weight has no gradient");
            }
            worst = worst.max((a - fd).abs() / tol);
        }
    }
    println!("MaskedLinear: worst error / tolerance = {worst:.3}");
}

/// Deterministic values for the runtime inputs of a bert training graph (batch 2 × 16 tokens),
/// with 80%-sparse `[4, 1]` masks.
fn bert_feed(g: &Graph, qat: bool) -> Vec<(String, HostTensor)> {
    let f32_input = |name: &str, shape: &[usize], i: usize| -> Vec<f32> {
        let count = shape.iter().product();
        if name.contains("scale") {
            vec![0.05; count]
        } else if name.ends_with(".mask") {
            block_mask(shape[0], shape[1], 0.2, 100 + i as u64)
        } else {
            values(count, 200 + i as u64, -1.0, 1.0)
        }
    };
    crate::common::bert_feed(
        g,
        &BertFeed { batch: 2, seq: 16, bools: qat, attention_mask: &|count, _| vec![1; count], f32_input: &f32_input },
    )
}

#[test]
fn bert_training_graph_with_block_sparse_linears_has_the_dense_loss_and_gradients() {
    // Relative to the tensor's largest gradient: each layer's forward and backward sums round
    // differently (~1e-7 relative each) and reach every gradient through the layers after it;
    // measured worst: 3.0e-6 (scalar), 0.7e-6 (AVX2), 1.0e-6 (AVX-512), on Zen 5.
    bert_block_sparse_against_dense(LinearPrecision::F32, false, 1e-5, 1e-5, 1e-5);
}

/// The same with fake quantization on (QAT): the masked linears read their fake-quantized weights
/// (zero wherever the mask is) on the block-sparse operators, the mask's `Mul` and the straight-through
/// quantization stay in the graph, whose switch is fixed on (as `sparsec train` runs QAT).
#[test]
fn bert_qat_training_graph_with_block_sparse_linears_has_the_dense_loss_and_gradients() {
    let _own = own_isa();
    bert_block_sparse_against_dense(LinearPrecision::F32, true, 1e-5, 1e-5, 1e-5);
}

/// The same with bf16 products: every operand of the 36 masked linears' forward and both gradients
/// rounded to bf16 (relative error up to 2⁻⁹ each), the errors reaching every gradient through the
/// layers after it. Runs on AVX-512 BF16, or on the scalar ISA (the portable model, same bits).
#[test]
fn bert_training_graph_with_bf16_block_sparse_linears_is_within_bf16_rounding_of_the_dense_one() {
    // bf16 products run only on this CPU's AVX-512 BF16 or the scalar model: no other test may
    // force another ISA in this process meanwhile.
    let _own = own_isa();
    let isa = sparsec_kernels::Isa::from_env().unwrap();
    let hw = isa == sparsec_kernels::Isa::Avx512Vnni && sparsec_kernels::Isa::cpu_has_avx512_bf16();
    if !(isa == sparsec_kernels::Isa::Scalar || hw) {
        eprintln!("SKIPPED: bf16 products need AVX-512 BF16 or SPARSEC_ISA=scalar (this CPU: {isa}, no AVX-512 BF16)");
        return;
    }
    // Measured on Zen 5 (AVX-512 BF16, 2026-12-07): normwise 0.05-1% for most gradients, worst
    // 2.0-2.1% (layer-0 weights whose gradients are small and cancel: the fixture's weights are
    // random); worst element 2.1-2.7e-2 of its tensor's largest; loss 1.8e-4 relative. A wrong pairing or layout
    // of the bf16 operands gives errors of order 1. Bounds about 3x the measured worst.
    bert_block_sparse_against_dense(LinearPrecision::Bf16, false, 0.1, BF16_L2_TOL, 1e-3);
}

/// Normwise bound of the bf16 graph's gradients against the dense f32 ones, `‖a − b‖₂ / ‖a‖₂`.
const BF16_L2_TOL: f32 = 6e-2;

/// The `[4, 1]` GMP recipe; with `qat`, a copy in `dir` that fake-quantizes weights only: the
/// layers' outputs differ by summation order, and a fake-quantized activation could round one of
/// them to the next level (a difference of a whole step, not of rounding). The activations are
/// the operators' inputs either way.
fn test_recipe(dir: &Path, qat: bool) -> std::path::PathBuf {
    let recipe = root().join("recipes/gmp80-block4x1-qat-distill.yaml");
    if !qat {
        return recipe;
    }
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("quantize_linear_activations: true"));
    let copy = dir.join("weights-only-qat.yaml");
    std::fs::write(&copy, text.replace("quantize_linear_activations: true", "quantize_linear_activations: false"))
        .unwrap();
    copy
}

/// Loss and gradients of the bert fixture's training graph with block-sparse linears (products
/// in `precision`) against the dense graph's, without fake quantization or (`qat`) with it on:
/// each gradient's largest element difference within `grad_tol` of its largest element and within
/// `l2_tol` normwise, the loss within `loss_tol`.
fn bert_block_sparse_against_dense(precision: LinearPrecision, qat: bool, grad_tol: f32, l2_tol: f32, loss_tol: f32) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("compiled");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let recipe = test_recipe(out.path(), qat);
    ok(&sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&dir)]));
    let mut m = sparsec::onnx::load(dir.join("model.onnx")).unwrap();
    infer::infer_facts(&mut m).unwrap();
    let float = if qat { m } else { without_fake_quant(&m).unwrap() };
    if qat {
        let quantized = float.graph.nodes().filter(|(_, n)| n.op_type == "QuantizeLinear").count();
        assert!(
            quantized >= float.graph.runtime_inputs().filter(|&v| float.graph.value(v).name.ends_with(".mask")).count()
        );
    }
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let dense = build_training_graph(&float, &spec).unwrap();
    // With QAT, the block-sparse graph is built as the trainer builds it: switch fixed on, then the
    // operators; the dense graph it is compared with keeps the run-time switch (fed true).
    let sparse_source = if qat { with_fake_quant_on(&float).unwrap() } else { float.clone() };
    let sparse = build_training_graph(&with_sparse_linears(&sparse_source, precision).unwrap(), &spec).unwrap();
    if qat {
        let switches =
            sparse.model.graph.nodes().filter(|(_, n)| n.name.starts_with("sparsec.fq/") && n.op_type == "Where");
        assert_eq!(switches.count(), 0, "the fixed-on graph has no switches left");
    }
    let count = |g: &Graph, op: &str| g.nodes().filter(|(_, n)| n.op_type == op).count();
    let bf16_nodes = sparse
        .model
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type.starts_with("MaskedLinear") && n.attr_str("precision") == Some("bf16"))
        .count();
    let want_bf16 = if precision == LinearPrecision::Bf16 { 3 * count(&sparse.model.graph, "MaskedLinear") } else { 0 };
    assert_eq!(bf16_nodes, want_bf16, "the forward and both gradient operators carry the precision");
    let masks = float.graph.runtime_inputs().filter(|&v| float.graph.value(v).name.ends_with(".mask")).count();
    assert!(masks > 0);
    // With bf16 the unmasked QA head runs on the operators too (an all-ones mask).
    let layers = if precision == LinearPrecision::Bf16 { masks + 1 } else { masks };
    assert_eq!(count(&sparse.model.graph, "MaskedLinear"), layers, "every masked linear is rewritten");
    assert_eq!(count(&sparse.model.graph, "MaskedLinearGradWeight"), layers);
    assert_eq!(dense.grads.entries, sparse.grads.entries, "same parameters, PyTorch names and gradient outputs");

    let feed = bert_feed(&dense.model.graph, qat);
    let run = |tg: &sparsec::autodiff::TrainingGraph| {
        let bytes = sparsec::onnx::encode_model(&tg.model);
        let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, &Default::default()).unwrap();
        let takes = b.input_names().to_vec();
        let refs: Vec<(&str, HostTensor)> =
            feed.iter().filter(|(n, _)| takes.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
        b.run(&refs).unwrap()
    };
    let (a, b) = (run(&dense), run(&sparse));
    let get =
        |o: &[(String, HostTensor)], name: &str| o.iter().find(|(n, _)| n == name).unwrap().1.as_f32().unwrap().clone();
    let max_abs = |x: &ArrayD<f32>| x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let global = dense.grads.entries.iter().map(|e| max_abs(&get(&a, &e.output))).fold(0f32, f32::max);
    let mut worst = (0f32, String::new());
    let mut worst_l2 = 0f32;
    for e in &dense.grads.entries {
        let (x, y) = (get(&a, &e.output), get(&b, &e.output));
        if max_abs(&x) <= 1e-5 * global {
            // A gradient that is 0 in exact arithmetic (the key biases and the last LayerNorm's
            // bias: softmax ignores a shift of all its inputs) is rounding noise in both graphs,
            // which need not agree: both must be noise-sized. With bf16 the terms that cancel are
            // rounded to bf16 first (relative 2⁻⁹ each), so the noise is bf16-sized.
            let noise = if precision == LinearPrecision::Bf16 { 2f32.powi(-8) } else { 1e-5 };
            assert!(
                max_abs(&y) <= noise * global,
                "{}: dense {} sparse {} (largest gradient {global})",
                e.param,
                max_abs(&x),
                max_abs(&y)
            );
            continue;
        }
        let d = x.iter().zip(y.iter()).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / max_abs(&x);
        let sq = |v: &mut dyn Iterator<Item = f64>| v.map(|d| d * d).sum::<f64>().sqrt();
        let l2 = (sq(&mut x.iter().zip(y.iter()).map(|(p, q)| (p - q) as f64)) / sq(&mut x.iter().map(|&p| p as f64)))
            as f32;
        if d > worst.0 {
            worst = (d, e.param.clone());
        }
        worst_l2 = worst_l2.max(l2);
        assert!(d <= grad_tol, "{precision:?} {}: gradients differ by {d:e} of their largest", e.param);
        assert!(l2 <= l2_tol, "{precision:?} {}: gradients differ by {l2:e} normwise", e.param);
    }
    let loss = |o: &[(String, HostTensor)]| {
        o.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap().iter().copied().next().unwrap()
    };
    let (la, lb) = (loss(&a), loss(&b));
    assert!((la - lb).abs() <= loss_tol * la.abs(), "{precision:?}: loss dense {la} sparse {lb}");
    println!(
        "bert, 80% [4,1] masks, {precision:?} products, QAT {qat}: loss {la} vs {lb}; worst gradient difference {:e} \
         of the tensor's largest ({}), {worst_l2:e} normwise",
        worst.0, worst.1
    );
}

fn train_args<'a>(compiled: &'a Path, out: &'a Path, data: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        s(compiled),
        "--train-file",
        s(data),
        "--output-dir",
        s(out),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "8",
        "--threads",
        "2",
        "--save-steps",
        "11",
        "--sparse-train",
        "auto",
        "--json",
    ]
}

fn log(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Trains the fixture with the `[4, 1]` GMP 80% recipe over 6 epochs (11 steps each, QAT from
/// step 44) with `extra` flags and `env`: once uninterrupted, once killed after step 38 and
/// resumed (from its step-33 checkpoint). Asserts that both runs end with the same bytes in every
/// initializer and log the same loss and graph at every step, and returns the uninterrupted run's
/// log with the resumed run's summary.
fn kill_and_resume(extra: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("compiled");
    compile_fixture(&root().join("recipes/gmp80-block4x1-qat-distill.yaml"), r#"{"num_epochs": 6}"#, &compiled);
    let data = root().join("fixtures/squad-tiny.json");
    let (full, part) = (dir.path().join("full"), dir.path().join("part"));
    let args = |out| [train_args(&compiled, out, &data), extra.to_vec()].concat();
    ok(&sparsec_env(&args(&full), env));

    let part_args = args(&part);
    let mut env_kill = env.to_vec();
    env_kill.push(("SPARSEC_ABORT_AFTER_STEP", "38"));
    assert!(!sparsec_env(&part_args, &env_kill).status.success(), "the run must die at step 38");
    let mut resume = part_args.clone();
    resume.push("--resume");
    let summary: Value = serde_json::from_str(&ok(&sparsec_env(&resume, env))).unwrap();
    assert_eq!(summary["resumed_from_step"], 33);

    let (a, b) = (initializer_bytes(&full.join("model.onnx")), initializer_bytes(&part.join("model.onnx")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && x.1 == y.1, "'{}' differs between the uninterrupted and the resumed run", x.0);
    }
    let (la, lb) = (log(&full), log(&part));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
        assert_eq!(x["block_sparse"], y["block_sparse"], "step {}", x["step"]);
    }
    assert!(la.iter().all(|x| x["loss"].as_f64().is_some_and(f64::is_finite)));
    (la, summary)
}

/// The steps of a training log that ran the block-sparse graph.
fn block_sparse_steps(log: &[Value]) -> Vec<u64> {
    log.iter().filter(|x| x["block_sparse"] == true).map(|x| x["step"].as_u64().unwrap()).collect()
}

#[test]
fn killed_while_training_block_sparse_and_resumed_equals_an_uninterrupted_run() {
    // [4, 1] GMP to 80% over epochs 1-2 of 6 (11 steps each), QAT from epoch 4. With
    // `--sparse-train auto` the dense graph runs until the masks keep at most 60% of their blocks
    // (72% sparse from step 17), then the block-sparse graph, from step 44 its QAT form, to the
    // end (step 65). Killed after step 38, the run resumes from its step-33 checkpoint and steps
    // 33-43 run block-sparse again, then QAT block-sparse.
    let (log, summary) = kill_and_resume(&[], &[]);
    assert_eq!(block_sparse_steps(&log), (17..66).collect::<Vec<u64>>(), "the steps that ran block-sparse");
    assert!(log.iter().filter(|x| x["step"].as_u64().unwrap() >= 44).all(|x| x["qat"] == true), "QAT from step 44");
    let sparsity = summary["overall_sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.8).abs() < 0.02, "sparsity {sparsity}");
}

#[test]
fn killed_while_training_with_bf16_linears_and_resumed_equals_an_uninterrupted_run() {
    // As above with `--linear-precision bf16`: every step (0-65) runs a block-sparse graph, the
    // dense warm-up included (bf16 products exist only on sparsec's operators), QAT from step 44. On
    // a CPU without AVX-512 BF16 the runs use the scalar ISA, the portable model of the same arithmetic.
    let isa = if sparsec_kernels::Isa::cpu_has_avx512_bf16() { "avx512vnni" } else { "scalar" };
    let (log, _) = kill_and_resume(&["--linear-precision", "bf16"], &[("SPARSEC_ISA", isa)]);
    assert_eq!(block_sparse_steps(&log), (0..66).collect::<Vec<u64>>(), "bf16 runs every step on the operators");
}

#[test]
fn bf16_linears_without_the_block_sparse_operators_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("compiled");
    compile_fixture(&root().join("recipes/gmp80-block4x1-qat-distill.yaml"), r#"{"num_epochs": 6}"#, &compiled);
    let data = root().join("fixtures/squad-tiny.json");
    let out = dir.path().join("out");
    let mut args = train_args(&compiled, &out, &data);
    let at = args.iter().position(|a| *a == "auto").unwrap();
    args[at] = "off";
    args.extend(["--linear-precision", "bf16"]);
    let r = sparsec_env(&args, &[("SPARSEC_ISA", "scalar")]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--linear-precision bf16") && err.contains("--sparse-train off"), "{err}");
    if sparsec_kernels::Isa::Avx2.supported() {
        let mut args = train_args(&compiled, &out, &data);
        args.extend(["--linear-precision", "bf16"]);
        let r = sparsec_env(&args, &[("SPARSEC_ISA", "avx2")]);
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("--linear-precision bf16") && err.contains("avx512vnni"), "{err}");
    }
}
