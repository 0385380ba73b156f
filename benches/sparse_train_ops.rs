//! Benchmark: sparse-aware training against the dense path training takes today, paired A/B in
//! one process on ONNX Runtime (`cargo bench --bench sparse_train_ops`; `THREADS` (default 2),
//! `REPS` (default 5), `ONLY=ops|minilm|attention`).
//!
//! 1. Per operator, MiniLM's linear shapes (384→384, 384→1536, 1536→384) at 6144 tokens (16 × 384)
//!    and 2560 (16 × 160), `[4, 1]` masks at 0/50/80/90%: the training graph's dense nodes
//!    (forward `Add(MatMul(X, Mul(W, M)), B)`; input gradient `MatMul(dY, Transpose(Mul(W, M)))`;
//!    weight gradient `Mul(Gemm(X, dY, transA=1), M)`) against `ai.sparsec::MaskedLinear`,
//!    `MaskedLinearGradInput`, `MaskedLinearGradWeight`. Each graph's large operands are
//!    initializers multiplied by a scalar input (1.0) so that nothing folds or pre-packs, and its
//!    output is summed to a scalar so that no large tensor is copied out: both sides pay that
//!    elementwise pass, so ratios are slightly conservative.
//! 2. MiniLM-L6's span-loss training graph (forward and backward; `../shared/models/minilm-l6-squad`)
//!    with masks on its 36 encoder linears, dense against `UseMaskedLinear`, batch 16 × 160 tokens,
//!    masks at 0/50/80/90%.
//! 3. The same graph block-sparse at 80%, with its attention as the exported nodes against
//!    `UseAttentionTrain`'s fused `AttentionTrain` (and its gradient), batch 16 × 160 and 16 × 384,
//!    item `b` padded by `5·b` tokens (ratio graph / fused).
//!
//! Dense and sparse runs alternate, REPS times each after a warm-up, and each side's median is
//! reported with the ratio dense / sparse (> 1: the block-sparse operators are faster).

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use sparsec::autodiff::{build_training_graph, LossSpec, TrainingGraphSpec};
use sparsec::ir::ops::masked_linear::{MASKED_LINEAR, MASKED_LINEAR_GRAD_INPUT, MASKED_LINEAR_GRAD_WEIGHT};
use sparsec::ir::ops::sparsec::DOMAIN;
use sparsec::ir::{infer, modules, Attribute, DType, Facts, Model, NodeSpec, Patch, Tensor, ValueId};
use sparsec::passes::{InsertMasks, MaskTarget, Pass, PassError, UseAttentionTrain, UseMaskedLinear};
use sparsec::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor};

const SHAPES: [(usize, usize); 3] = [(384, 384), (384, 1536), (1536, 384)];
const TOKENS: [usize; 2] = [6144, 2560];
const SPARSITIES: [f64; 4] = [0.0, 0.5, 0.8, 0.9];

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[K, N]` mask of `[4, 1]` blocks with exactly `round(s·K·N/4)` blocks zero.
fn block_mask(k: usize, n: usize, s: f64, seed: u64) -> Vec<f32> {
    let nb = n / 4;
    let draws = values(k * nb, seed);
    let mut order: Vec<usize> = (0..k * nb).collect();
    order.sort_by(|&a, &b| draws[a].total_cmp(&draws[b]));
    let mut m = vec![1f32; k * n];
    for &blk in &order[..(s * (k * nb) as f64).round() as usize] {
        let (kk, b) = (blk / nb, blk % nb);
        m[kk * n + 4 * b..kk * n + 4 * b + 4].fill(0.0);
    }
    m
}

fn f32_host(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).unwrap())
}

/// Which operator a single-op graph computes.
#[derive(Clone, Copy, Debug)]
enum Op {
    Forward,
    GradInput,
    GradWeight,
}

/// One operator on initializers `X [T, K]`, `dY [T, N]`, `W`, `M [K, N]`, `B [N]`, the large
/// ones multiplied by the scalar input `s`; output `out = ReduceSum(result)`.
fn op_model(op: Op, sparse: bool, t: usize, k: usize, n: usize, mask: &[f32]) -> Model {
    let mut m =
        Model { ir_version: 8, opset_imports: vec![(String::new(), 17), (DOMAIN.into(), 1)], ..Model::default() };
    let dims = |a: usize, b: usize| vec![a as i64, b as i64];
    m.graph
        .edit(|p: &mut Patch| -> Result<(), PassError> {
            let s = p.add_input("s", Facts::new(DType::F32, vec![]));
            let init = |p: &mut Patch, name: &str, t: Tensor| {
                let v = p.add_initializer(name, t);
                p.op(NodeSpec::new("Mul", format!("{name}_s"), &[v, s]), &format!("{name}_scaled"), Facts::default())
            };
            let x = init(p, "x", Tensor::from_f32(dims(t, k), &values(t * k, 1)));
            let g = init(p, "dy", Tensor::from_f32(dims(t, n), &values(t * n, 2)));
            let w = init(p, "w", Tensor::from_f32(dims(k, n), &values(k * n, 3)));
            let mk = p.add_initializer("m", Tensor::from_f32(dims(k, n), mask));
            let b = p.add_initializer("b", Tensor::from_f32(vec![n as i64], &values(n, 4)));
            let node = |p: &mut Patch, op: &str, inputs: &[ValueId], attrs: Vec<Attribute>| {
                let mut spec = NodeSpec::new(op, format!("{op}_node"), inputs);
                spec.attrs = attrs;
                if op.starts_with("Masked") {
                    spec = spec.domain(DOMAIN);
                }
                p.op(spec, &format!("{op}_out"), Facts::default())
            };
            let y = match (op, sparse) {
                (Op::Forward, true) => node(p, MASKED_LINEAR, &[x, w, mk, b], vec![]),
                (Op::GradInput, true) => node(p, MASKED_LINEAR_GRAD_INPUT, &[g, w, mk], vec![]),
                (Op::GradWeight, true) => node(p, MASKED_LINEAR_GRAD_WEIGHT, &[x, g, mk], vec![]),
                (Op::Forward, false) => {
                    let wm = node(p, "Mul", &[w, mk], vec![]);
                    let mm = node(p, "MatMul", &[x, wm], vec![]);
                    node(p, "Add", &[mm, b], vec![])
                }
                (Op::GradInput, false) => {
                    let wm = node(p, "Mul", &[w, mk], vec![]);
                    let wt = node(p, "Transpose", &[wm], vec![Attribute::ints("perm", vec![1, 0])]);
                    node(p, "MatMul", &[g, wt], vec![])
                }
                (Op::GradWeight, false) => {
                    let gw = node(p, "Gemm", &[x, g], vec![Attribute::int("transA", 1)]);
                    node(p, "Mul", &[gw, mk], vec![])
                }
            };
            let out = p.op(
                NodeSpec::new("ReduceSum", "sum", &[y]).attr(Attribute::int("keepdims", 0)),
                "out",
                Facts::default(),
            );
            p.add_output(out);
            Ok(())
        })
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    m
}

/// Median seconds per run of `a` and `b`, alternating, `reps` each after one warm-up each.
fn paired(
    reps: usize,
    a: &mut dyn Backend,
    b: &mut dyn Backend,
    feed_a: &[(&str, HostTensor)],
    feed_b: &[(&str, HostTensor)],
) -> (f64, f64) {
    a.run(feed_a).unwrap();
    b.run(feed_b).unwrap();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        a.run(feed_a).unwrap();
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b.run(feed_b).unwrap();
        tb.push(t.elapsed().as_secs_f64());
    }
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    (ta[reps / 2], tb[reps / 2])
}

fn ops(opts: &EngineOptions, reps: usize) {
    println!("# per operator: dense ONNX Runtime nodes vs ai.sparsec training operators, ms (median of {reps}), ratio dense/sparse");
    println!(
        "{:>4} {:>5} {:>5} {:>4} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
        "K", "N", "T", "sp%", "fwd d", "fwd s", "x", "dX d", "dX s", "x", "dW d", "dW s", "x"
    );
    let one = [("s", HostTensor::F32(ArrayD::from_elem(IxDyn(&[]), 1.0)))];
    for &(k, n) in &SHAPES {
        for &t in &TOKENS {
            for &sp in &SPARSITIES {
                let mask = block_mask(k, n, sp, 7);
                let mut row = Vec::new();
                for op in [Op::Forward, Op::GradInput, Op::GradWeight] {
                    let load = |sparse| {
                        let bytes = sparsec::onnx::encode_model(&op_model(op, sparse, t, k, n, &mask));
                        runtime::load_bytes(&bytes, EngineKind::Ort, opts).unwrap()
                    };
                    let (mut d, mut s) = (load(false), load(true));
                    let (td, ts) = paired(reps, d.as_mut(), s.as_mut(), &one, &one);
                    row.push((td, ts));
                }
                let cells: Vec<String> =
                    row.iter().map(|(d, s)| format!("{:>8.2} {:>8.2} {:>6.2}", d * 1e3, s * 1e3, d / s)).collect();
                println!("{k:>4} {n:>5} {t:>5} {:>4.0} | {}", sp * 100.0, cells.join(" | "));
                println!(
                    "{}",
                    serde_json::json!({"bench": "sparse_train_ops", "k": k, "n": n, "t": t, "sparsity": sp,
                        "threads": opts.threads, "forward_ms": [row[0].0 * 1e3, row[0].1 * 1e3],
                        "grad_input_ms": [row[1].0 * 1e3, row[1].1 * 1e3], "grad_weight_ms": [row[2].0 * 1e3, row[2].1 * 1e3]})
                );
            }
        }
    }
}

/// A mask input: name, `K`, `N`.
type MaskInput = (String, usize, usize);

/// MiniLM with masks on its encoder linears (`<module>.weight.mask` inputs).
fn masked_minilm() -> Option<(Model, Vec<MaskInput>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/minilm-l6-squad/model.onnx");
    if !path.is_file() {
        eprintln!("SKIPPED MiniLM: {} not found", path.display());
        return None;
    }
    let mut m = sparsec::onnx::load(&path).unwrap();
    infer::infer_facts(&mut m).unwrap();
    let g = &m.graph;
    let mut targets = Vec::new();
    let mut masks = Vec::new();
    for l in modules::linear_layers(g).into_iter().filter(|l| l.module.contains("encoder.layer.") && l.transposed) {
        let t = g.initializer(l.weight).unwrap();
        masks.push((format!("{}.mask", l.weight_name()), t.dims[0] as usize, t.dims[1] as usize));
        targets.push(MaskTarget { param: l.weight_name(), initializer: g.value(l.weight).name.clone() });
    }
    InsertMasks { targets }.run(&mut m).unwrap();
    infer::infer_facts(&mut m).unwrap();
    Some((m, masks))
}

fn minilm(opts: &EngineOptions, reps: usize) {
    let Some((m, masks)) = masked_minilm() else { return };
    let (batch, seq) = (16usize, 160usize);
    println!("# MiniLM-L6 training graph (span loss, forward + backward), batch {batch} x {seq}, {} masked linears, s per step (median of {reps})", masks.len());
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let dense = build_training_graph(&m, &spec).unwrap();
    let mut sm = m.clone();
    UseMaskedLinear::default().apply(&mut sm).unwrap();
    infer::infer_facts(&mut sm).unwrap();
    let sparse = build_training_graph(&sm, &spec).unwrap();
    let load = |tg: &sparsec::autodiff::TrainingGraph| {
        runtime::load_bytes(&sparsec::onnx::encode_model(&tg.model), EngineKind::Ort, opts).unwrap()
    };
    let (mut d, mut s) = (load(&dense), load(&sparse));
    let n = batch * seq;
    let ints = |v: Vec<i64>, shape: &[usize]| HostTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap());
    for &sp in &SPARSITIES {
        let mut feed: Vec<(&str, HostTensor)> = vec![
            ("input_ids", ints((0..n).map(|i| 1000 + (i as i64 * 7919) % 29000).collect(), &[batch, seq])),
            ("attention_mask", ints(vec![1; n], &[batch, seq])),
            ("token_type_ids", ints((0..n).map(|i| ((i % seq) >= seq / 4) as i64).collect(), &[batch, seq])),
            ("start_positions", ints((0..batch as i64).map(|b| 10 + b).collect(), &[batch])),
            ("end_positions", ints((0..batch as i64).map(|b| 20 + b).collect(), &[batch])),
        ];
        for (i, (name, k, nn)) in masks.iter().enumerate() {
            feed.push((name.as_str(), f32_host(&[*k, *nn], block_mask(*k, *nn, sp, 100 + i as u64))));
        }
        let takes = |b: &dyn Backend| -> Vec<(&str, HostTensor)> {
            feed.iter().filter(|(n, _)| b.input_names().iter().any(|x| x == n)).cloned().collect()
        };
        let (fd, fs) = (takes(d.as_ref()), takes(s.as_ref()));
        let (td, ts) = paired(reps, d.as_mut(), s.as_mut(), &fd, &fs);
        println!("sparsity {:>3.0}%: dense {td:.3} s, block-sparse {ts:.3} s, ratio {:.2}", sp * 100.0, td / ts);
        println!(
            "{}",
            serde_json::json!({"bench": "sparse_train_minilm", "batch": batch, "seq": seq, "sparsity": sp,
                "threads": opts.threads, "dense_s": td, "sparse_s": ts})
        );
    }
}

/// The block-sparse MiniLM training graph at 80% `[4, 1]` with the exported attention nodes
/// against the same graph with `UseAttentionTrain`'s fused attention, paired.
fn attention(opts: &EngineOptions, reps: usize) {
    let Some((m, masks)) = masked_minilm() else { return };
    let spec = TrainingGraphSpec::new(LossSpec::Span);
    let mut sm = m.clone();
    UseMaskedLinear::default().apply(&mut sm).unwrap();
    infer::infer_facts(&mut sm).unwrap();
    let mut fm = sm.clone();
    let fused_layers = UseAttentionTrain::default().apply(&mut fm).unwrap().rewritten;
    infer::infer_facts(&mut fm).unwrap();
    let load = |m: &Model| {
        let tg = build_training_graph(m, &spec).unwrap();
        runtime::load_bytes(&sparsec::onnx::encode_model(&tg.model), EngineKind::Ort, opts).unwrap()
    };
    let (mut g, mut f) = (load(&sm), load(&fm));
    println!("# MiniLM-L6 block-sparse training graph at 80% [4,1]: attention as graph nodes vs fused ({fused_layers} layers), s per step (median of {reps})");
    for (batch, seq) in [(16usize, 160usize), (16, 384)] {
        let n = batch * seq;
        let ints = |v: Vec<i64>, shape: &[usize]| HostTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap());
        let mut feed: Vec<(&str, HostTensor)> = vec![
            ("input_ids", ints((0..n).map(|i| 1000 + (i as i64 * 7919) % 29000).collect(), &[batch, seq])),
            ("attention_mask", ints((0..n).map(|i| ((i % seq) < seq - (i / seq) * 5) as i64).collect(), &[batch, seq])),
            ("token_type_ids", ints((0..n).map(|i| ((i % seq) >= seq / 4) as i64).collect(), &[batch, seq])),
            ("start_positions", ints((0..batch as i64).map(|b| 10 + b).collect(), &[batch])),
            ("end_positions", ints((0..batch as i64).map(|b| 20 + b).collect(), &[batch])),
        ];
        for (i, (name, k, nn)) in masks.iter().enumerate() {
            feed.push((name.as_str(), f32_host(&[*k, *nn], block_mask(*k, *nn, 0.8, 100 + i as u64))));
        }
        let takes = |b: &dyn Backend| -> Vec<(&str, HostTensor)> {
            feed.iter().filter(|(n, _)| b.input_names().iter().any(|x| x == n)).cloned().collect()
        };
        let (fg, ff) = (takes(g.as_ref()), takes(f.as_ref()));
        let (tg, tf) = paired(reps, g.as_mut(), f.as_mut(), &fg, &ff);
        println!("batch {batch} x {seq}: graph {tg:.3} s, fused {tf:.3} s, ratio {:.2}", tg / tf);
        println!(
            "{}",
            serde_json::json!({"bench": "fused_attention_train", "batch": batch, "seq": seq, "sparsity": 0.8,
                "threads": opts.threads, "graph_s": tg, "fused_s": tf})
        );
    }
}

fn main() {
    let threads: usize = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let only = std::env::var("ONLY").unwrap_or_default();
    let opts = EngineOptions { threads: Some(threads), ..Default::default() };
    println!(
        "# machine: {} cores visible, ISA {}; {threads} threads",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sparsec_kernels::Isa::from_env().map_or("?".into(), |i| i.to_string())
    );
    if only.is_empty() || only == "ops" {
        ops(&opts, reps);
    }
    if only.is_empty() || only == "minilm" {
        minilm(&opts, reps);
    }
    if only.is_empty() || only == "attention" {
        attention(&opts, reps);
    }
}
