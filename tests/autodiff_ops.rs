//! Per-op gradient rules against central finite differences, run on ONNX Runtime.
//!
//! Each case builds a tiny graph whose parameters feed one op (or a short chain), takes the loss
//! `L = sum_i sum(y_i * R_i)` over its outputs with fixed weights `R_i` (so the checked derivative
//! is `dL/dx = J^T R`, not just a row sum), differentiates it with `sparsec::autodiff`, and
//! compares every gradient element with `(L(x + eps) - L(x - eps)) / (2 eps)`, the two losses
//! computed in f32 by ORT and differenced in f64.
//!
//! Tolerance: |analytic - fd| <= ATOL + RTOL * |fd| with eps = 1e-2, ATOL = 2e-3, RTOL = 1e-2:
//! the f32 roundoff of L (~1e-6 relative, L ~ 10) divided by 2 eps is ~5e-4, the truncation error
//! eps^2 f'''/6 ~ 2e-5. Inputs keep clear of kinks (ReLU at 0, Max ties, Slice bounds) by more
//! than eps.

use ndarray::ArrayD;
use sparsec::autodiff::{self, AutodiffError, GradOptions};
use sparsec::ir::{infer, Attribute, DType, Model, NodeSpec, Patch, Tensor, ValueId};
use sparsec::onnx;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

const EPS: f32 = 1e-2;
const ATOL: f64 = 2e-3;
const RTOL: f64 = 1e-2;

/// Deterministic values in `[lo, hi)`.
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((s >> 33) as f64 / (1u64 << 31) as f64) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

fn param(dims: &[i64], seed: u64, lo: f32, hi: f32) -> Tensor {
    let n = dims.iter().product::<i64>() as usize;
    Tensor::from_f32(dims.to_vec(), &values(n, seed, lo, hi))
}

/// Values in `[lo, hi)` with random signs: magnitudes kept away from 0.
fn signed(dims: &[i64], seed: u64, lo: f32, hi: f32) -> Tensor {
    let n = dims.iter().product::<i64>() as usize;
    let mag = values(n, seed, lo, hi);
    let sign = values(n, seed + 99, -1.0, 1.0);
    let v: Vec<f32> = mag.iter().zip(&sign).map(|(m, s)| if *s < 0.0 { -m } else { *m }).collect();
    Tensor::from_f32(dims.to_vec(), &v)
}

fn node(p: &mut Patch, op: &str, inputs: &[ValueId], attrs: Vec<Attribute>) -> ValueId {
    node_n(p, op, inputs, attrs, 1)[0]
}

fn node_n(p: &mut Patch, op: &str, inputs: &[ValueId], attrs: Vec<Attribute>, n: usize) -> Vec<ValueId> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!("{op}_{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut spec = NodeSpec::new(op, name.clone(), inputs);
    spec.attrs = attrs;
    let outs: Vec<String> = (0..n).map(|i| format!("{name}_y{i}")).collect();
    let o: Vec<(&str, sparsec::ir::Facts)> = outs.iter().map(|s| (s.as_str(), Default::default())).collect();
    p.add_node(spec, &o).1
}

fn konst(p: &mut Patch, t: Tensor) -> ValueId {
    p.add_initializer("k", t)
}

fn ints(p: &mut Patch, v: &[i64]) -> ValueId {
    konst(p, Tensor::from_i64(vec![v.len() as i64], v))
}

/// Builds params + `build`'s outputs + the weighted-sum loss, at opset `opset`.
fn model_with_loss(
    params: &[Tensor],
    opset: i64,
    build: impl FnOnce(&mut Patch, &[ValueId]) -> Vec<ValueId>,
) -> (Model, Vec<String>) {
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), opset)], ..Model::default() };
    let (ids, outs) = m
        .graph
        .edit(|p| -> Result<_, AutodiffError> {
            let ids: Vec<ValueId> =
                params.iter().enumerate().map(|(i, t)| p.add_initializer(&format!("p{i}"), t.clone())).collect();
            let outs = build(p, &ids);
            for &o in &outs {
                p.add_output(o);
            }
            Ok((ids, outs))
        })
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    let names: Vec<String> = ids.iter().map(|&v| m.graph.value(v).name.clone()).collect();
    let shapes: Vec<Vec<i64>> = outs
        .iter()
        .map(|&o| {
            let f = &m.graph.value(o).facts;
            f.shape.as_ref().expect("static shape").iter().map(|d| d.known().expect("known dim")).collect()
        })
        .collect();
    m.graph
        .edit(|p| -> Result<(), AutodiffError> {
            let mut terms = Vec::new();
            for (i, (&o, s)) in outs.iter().zip(&shapes).enumerate() {
                let r = konst(p, signed(s, 1000 + i as u64, 0.5, 1.5));
                let w = node(p, "Mul", &[o, r], vec![]);
                terms.push(node(p, "ReduceSum", &[w], vec![Attribute::int("keepdims", 0)]));
            }
            let total = if terms.len() == 1 { terms[0] } else { node(p, "Sum", &terms, vec![]) };
            let (_, l) = p.add_node(NodeSpec::new("Identity", "loss", &[total]), &[("loss", Default::default())]);
            p.add_output(l[0]);
            Ok(())
        })
        .unwrap();
    (m, names)
}

fn to_host(t: &Tensor) -> HostTensor {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    HostTensor::F32(ArrayD::from_shape_vec(dims, t.to_f32().unwrap()).unwrap())
}

fn run(backend: &mut dyn runtime::Backend, names: &[String], params: &[Tensor]) -> Vec<(String, HostTensor)> {
    run_with(backend, names, params, &[])
}

fn run_with(
    backend: &mut dyn runtime::Backend,
    names: &[String],
    params: &[Tensor],
    extra: &[(&str, HostTensor)],
) -> Vec<(String, HostTensor)> {
    let mut feed: Vec<(&str, HostTensor)> = names.iter().zip(params).map(|(n, t)| (n.as_str(), to_host(t))).collect();
    feed.extend(extra.iter().cloned());
    backend.run(&feed).unwrap()
}

fn loss_of(out: &[(String, HostTensor)]) -> f64 {
    let l = out.iter().find(|(n, _)| n == "loss").unwrap().1.as_f32().unwrap();
    l.iter().next().copied().unwrap() as f64
}

/// Checks every parameter's gradient against central differences; returns the worst error.
fn check_grad(name: &str, params: Vec<Tensor>, opset: i64, build: impl FnOnce(&mut Patch, &[ValueId]) -> Vec<ValueId>) {
    check_grad_with(name, params, &[], opset, build)
}

/// As [`check_grad`], feeding `extra` runtime inputs too.
fn check_grad_with(
    name: &str,
    params: Vec<Tensor>,
    extra: &[(&str, HostTensor)],
    opset: i64,
    build: impl FnOnce(&mut Patch, &[ValueId]) -> Vec<ValueId>,
) {
    let (m, names) = model_with_loss(&params, opset, build);
    let (gm, grads) =
        autodiff::differentiate(&m, "loss", &names, &GradOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut backend = runtime::load_bytes(
        &onnx::encode_model(&gm),
        EngineKind::Ort,
        &EngineOptions { threads: Some(1), ..Default::default() },
    )
    .unwrap_or_else(|e| panic!("{name}: ORT rejects the gradient graph: {e:#}"));
    let out = run_with(backend.as_mut(), &names, &params, extra);
    let mut worst = 0.0f64;
    for (i, pname) in names.iter().enumerate() {
        let entry = grads.by_param(pname).unwrap();
        let g = out.iter().find(|(n, _)| *n == entry.output).unwrap().1.as_f32().unwrap().clone();
        assert_eq!(
            g.shape(),
            params[i].dims.iter().map(|&d| d as usize).collect::<Vec<_>>().as_slice(),
            "{name}: grad shape of {pname}"
        );
        let base = params[i].to_f32().unwrap();
        for (j, &ga) in g.iter().enumerate() {
            let mut plus = params.clone();
            let mut minus = params.clone();
            let mut vp = base.clone();
            vp[j] += EPS;
            plus[i] = Tensor::from_f32(params[i].dims.clone(), &vp);
            let mut vm = base.clone();
            vm[j] -= EPS;
            minus[i] = Tensor::from_f32(params[i].dims.clone(), &vm);
            let lp = loss_of(&run_with(backend.as_mut(), &names, &plus, extra));
            let lm = loss_of(&run_with(backend.as_mut(), &names, &minus, extra));
            let fd = (lp - lm) / (2.0 * EPS as f64);
            let err = (ga as f64 - fd).abs();
            assert!(
                err <= ATOL + RTOL * fd.abs(),
                "{name}: d loss / d {pname}[{j}]: autodiff {ga}, finite difference {fd} (|diff| {err})"
            );
            worst = worst.max(err / (ATOL + RTOL * fd.abs()));
        }
    }
    println!("{name}: worst error / tolerance = {worst:.3}");
}

fn unary(op: &str, lo: f32, hi: f32, signed_input: bool) {
    let x = if signed_input { signed(&[2, 3], 1, lo, hi) } else { param(&[2, 3], 1, lo, hi) };
    check_grad(op, vec![x], 17, |p, x| vec![node(p, op, &[x[0]], vec![])]);
}

fn binary(op: &str, a: Tensor, b: Tensor, label: &str) {
    check_grad(&format!("{op} {label}"), vec![a, b], 17, |p, x| vec![node(p, op, &[x[0], x[1]], vec![])]);
}

#[test]
fn add_sub_mul_div_with_broadcasting_match_finite_differences() {
    for op in ["Add", "Sub", "Mul"] {
        binary(op, signed(&[2, 3, 4], 1, 0.2, 1.0), signed(&[4], 2, 0.2, 1.0), "[2,3,4]x[4]");
        binary(op, signed(&[2, 1, 4], 3, 0.2, 1.0), signed(&[3, 1], 4, 0.2, 1.0), "[2,1,4]x[3,1]");
        binary(op, signed(&[], 5, 0.2, 1.0), signed(&[2, 3], 6, 0.2, 1.0), "[]x[2,3]");
    }
    binary("Div", signed(&[2, 3], 1, 0.2, 1.0), param(&[3], 2, 1.0, 2.0), "[2,3]x[3]");
    binary("Div", signed(&[3, 1], 3, 0.2, 1.0), param(&[1, 4], 4, 1.0, 2.0), "[3,1]x[1,4]");
}

#[test]
fn pow_matches_finite_differences_for_square_constant_and_learned_exponents() {
    check_grad("Pow x^2", vec![signed(&[2, 3], 1, 0.2, 1.0)], 17, |p, x| {
        let two = konst(p, Tensor::scalar_f32(2.0));
        vec![node(p, "Pow", &[x[0], two], vec![])]
    });
    check_grad("Pow x^1.5", vec![param(&[2, 3], 2, 0.5, 2.0)], 17, |p, x| {
        let e = konst(p, Tensor::scalar_f32(1.5));
        vec![node(p, "Pow", &[x[0], e], vec![])]
    });
    binary("Pow", param(&[2, 3], 3, 0.5, 2.0), param(&[3], 4, 0.5, 1.5), "base and exponent");
}

#[test]
fn unary_ops_match_finite_differences() {
    unary("Sqrt", 0.5, 2.0, false);
    unary("Erf", 0.1, 1.5, true);
    unary("Tanh", 0.1, 1.5, true);
    unary("Neg", 0.1, 1.5, true);
    unary("Exp", 0.1, 1.5, true);
    unary("Log", 0.5, 2.0, false);
    unary("Relu", 0.1, 1.5, true);
    unary("Sigmoid", 0.1, 2.0, true);
    unary("Abs", 0.1, 1.5, true);
    unary("Reciprocal", 0.5, 2.0, false);
    unary("Identity", 0.1, 1.5, true);
}

#[test]
fn float_casts_match_finite_differences() {
    check_grad("Cast f32->f64->f32", vec![signed(&[2, 3], 1, 0.1, 1.0)], 17, |p, x| {
        let d = node(p, "Cast", &[x[0]], vec![Attribute::int("to", DType::F64.onnx_code() as i64)]);
        let e = node(p, "Exp", &[d], vec![]);
        vec![node(p, "Cast", &[e], vec![Attribute::int("to", DType::F32.onnx_code() as i64)])]
    });
}

#[test]
fn where_max_min_match_finite_differences_with_broadcasting() {
    check_grad("Where", vec![signed(&[2, 3], 1, 0.1, 1.0), signed(&[3], 2, 0.1, 1.0)], 17, |p, x| {
        let c = konst(p, Tensor::from_bool(vec![2, 3], &[true, false, true, false, false, true]));
        vec![node(p, "Where", &[c, x[0], x[1]], vec![])]
    });
    let a = Tensor::from_f32(vec![2, 3], &[0.1, 0.9, -0.5, 0.3, -0.2, 0.8]);
    let b = Tensor::from_f32(vec![3], &[0.5, -0.4, 0.0]);
    binary("Max", a.clone(), b.clone(), "[2,3]x[3]");
    binary("Min", a, b, "[2,3]x[3]");
}

#[test]
fn matmul_and_gemm_match_finite_differences() {
    let mm = |a: Tensor, b: Tensor, label: &str| binary("MatMul", a, b, label);
    mm(signed(&[2, 3, 4], 1, 0.1, 1.0), signed(&[4, 5], 2, 0.1, 1.0), "activation x weight");
    mm(signed(&[2, 3, 4], 3, 0.1, 1.0), signed(&[2, 4, 5], 4, 0.1, 1.0), "batched");
    mm(signed(&[2, 1, 3, 4], 5, 0.1, 1.0), signed(&[3, 4, 2], 6, 0.1, 1.0), "broadcast batch");
    mm(signed(&[4], 7, 0.1, 1.0), signed(&[4, 5], 8, 0.1, 1.0), "vector x matrix");
    mm(signed(&[2, 3, 4], 9, 0.1, 1.0), signed(&[4], 10, 0.1, 1.0), "batched x vector");
    mm(signed(&[3, 4], 11, 0.1, 1.0), signed(&[4, 2], 12, 0.1, 1.0), "matrix x matrix");
    for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let a = if ta == 1 { signed(&[4, 3], 13, 0.1, 1.0) } else { signed(&[3, 4], 13, 0.1, 1.0) };
        let b = if tb == 1 { signed(&[5, 4], 14, 0.1, 1.0) } else { signed(&[4, 5], 14, 0.1, 1.0) };
        check_grad(&format!("Gemm transA={ta} transB={tb}"), vec![a, b, signed(&[5], 15, 0.1, 1.0)], 17, |p, x| {
            let attrs = vec![
                Attribute::int("transA", ta),
                Attribute::int("transB", tb),
                Attribute::float("alpha", 0.7),
                Attribute::float("beta", 1.3),
            ];
            vec![node(p, "Gemm", &[x[0], x[1], x[2]], attrs)]
        });
    }
}

#[test]
fn gathers_scatter_back_with_repeated_and_negative_indices() {
    check_grad("Gather axis 0 (embedding, repeated ids)", vec![signed(&[5, 3], 1, 0.1, 1.0)], 17, |p, x| {
        let idx = konst(p, Tensor::from_i64(vec![2, 3], &[0, 2, 2, 4, -1, 1]));
        vec![node(p, "Gather", &[x[0], idx], vec![])]
    });
    check_grad("Gather axis 1", vec![signed(&[2, 4, 3], 2, 0.1, 1.0)], 17, |p, x| {
        let idx = konst(p, Tensor::from_i64(vec![3], &[3, 0, 3]));
        vec![node(p, "Gather", &[x[0], idx], vec![Attribute::int("axis", 1)])]
    });
    check_grad("Gather scalar index axis 1", vec![signed(&[2, 4, 3], 3, 0.1, 1.0)], 17, |p, x| {
        let idx = konst(p, Tensor::scalar_i64(0));
        vec![node(p, "Gather", &[x[0], idx], vec![Attribute::int("axis", 1)])]
    });
    check_grad("GatherElements", vec![signed(&[3, 4], 4, 0.1, 1.0)], 17, |p, x| {
        let idx = konst(p, Tensor::from_i64(vec![3, 2], &[0, 3, 3, 3, 1, -4]));
        vec![node(p, "GatherElements", &[x[0], idx], vec![Attribute::int("axis", 1)])]
    });
    check_grad("GatherND", vec![signed(&[3, 4], 5, 0.1, 1.0)], 17, |p, x| {
        let idx = konst(p, Tensor::from_i64(vec![3, 2], &[0, 1, 2, 3, 0, 1]));
        vec![node(p, "GatherND", &[x[0], idx], vec![])]
    });
}

#[test]
fn shape_ops_match_finite_differences() {
    let x = || signed(&[2, 3, 4], 1, 0.1, 1.0);
    check_grad("Reshape", vec![x()], 17, |p, x| {
        let s = ints(p, &[4, -1]);
        vec![node(p, "Reshape", &[x[0], s], vec![])]
    });
    check_grad("Flatten", vec![x()], 17, |p, x| vec![node(p, "Flatten", &[x[0]], vec![Attribute::int("axis", 2)])]);
    check_grad("Transpose", vec![x()], 17, |p, x| {
        vec![node(p, "Transpose", &[x[0]], vec![Attribute::ints("perm", vec![1, 2, 0])])]
    });
    check_grad("Unsqueeze+Squeeze", vec![x()], 17, |p, x| {
        let a = ints(p, &[1]);
        let u = node(p, "Unsqueeze", &[x[0], a], vec![]);
        let e = node(p, "Exp", &[u], vec![]);
        vec![node(p, "Squeeze", &[e, a], vec![])]
    });
    check_grad("Expand", vec![signed(&[3, 1], 2, 0.1, 1.0)], 17, |p, x| {
        let s = ints(p, &[2, 3, 4]);
        vec![node(p, "Expand", &[x[0], s], vec![])]
    });
    check_grad("Concat", vec![x(), signed(&[2, 1, 4], 3, 0.1, 1.0)], 17, |p, x| {
        vec![node(p, "Concat", &[x[0], x[1]], vec![Attribute::int("axis", 1)])]
    });
    check_grad("Split (one output unused)", vec![x()], 17, |p, x| {
        let s = ints(p, &[1, 3]);
        let outs = node_n(p, "Split", &[x[0], s], vec![Attribute::int("axis", 2)], 2);
        vec![outs[1]]
    });
    check_grad("Split (both outputs)", vec![x()], 17, |p, x| {
        node_n(p, "Split", &[x[0]], vec![Attribute::int("axis", 1)], 3)
    });
    check_grad("Slice", vec![x()], 17, |p, x| {
        let (s, e, a) = (ints(p, &[1, -3]), ints(p, &[i64::MAX, -1]), ints(p, &[0, 2]));
        vec![node(p, "Slice", &[x[0], s, e, a], vec![])]
    });
}

#[test]
fn broadcasting_between_shapes_known_only_at_run_time_is_undone_at_run_time() {
    // y = Reshape(a, Shape(s)) has no static shape (s is a runtime input of unknown dims), so
    // reducing d(y * c)/dy to y's shape finds the broadcast axes at run time (Shape, NonZero).
    let s = HostTensor::F32(ArrayD::zeros(vec![2, 1, 3]));
    check_grad_with(
        "Mul with runtime-shaped operand",
        vec![signed(&[2, 3], 1, 0.1, 1.0), signed(&[4, 1], 2, 0.1, 1.0)],
        &[("s", s)],
        17,
        |p, x| {
            let facts = sparsec::ir::Facts::new(DType::F32, vec![sparsec::ir::Dim::Unknown; 3]);
            let src = p.add_input("s", facts);
            let sh = node(p, "Shape", &[src], vec![]);
            let y = node(p, "Reshape", &[x[0], sh], vec![]);
            let z = node(p, "Mul", &[y, x[1]], vec![]);
            let fixed = ints(p, &[2, 4, 3]);
            vec![node(p, "Reshape", &[z, fixed], vec![])]
        },
    );
}

#[test]
fn slice_with_runtime_bounds_matches_finite_differences() {
    check_grad("Slice (bounds from Shape)", vec![signed(&[2, 5], 1, 0.1, 1.0)], 17, |p, x| {
        let sh = node(p, "Shape", &[x[0]], vec![Attribute::int("start", 1)]);
        let one = ints(p, &[1]);
        let end = node(p, "Sub", &[sh, one], vec![]);
        let ax = ints(p, &[1]);
        vec![node(p, "Slice", &[x[0], one, end, ax], vec![])]
    });
}

#[test]
fn softmax_layernorm_and_reductions_match_finite_differences() {
    for op in ["Softmax", "LogSoftmax"] {
        check_grad(op, vec![signed(&[2, 3, 4], 1, 0.1, 1.5)], 17, |p, x| {
            vec![node(p, op, &[x[0]], vec![Attribute::int("axis", 1)])]
        });
    }
    for opset in [17, 18] {
        check_grad(
            &format!("LayerNormalization opset {opset}"),
            vec![signed(&[2, 3, 4], 2, 0.1, 1.5), param(&[4], 3, 0.5, 1.5), signed(&[4], 4, 0.1, 0.5)],
            opset,
            |p, x| vec![node(p, "LayerNormalization", &[x[0], x[1], x[2]], vec![Attribute::float("epsilon", 1e-5)])],
        );
        check_grad(
            &format!("LayerNormalization axis 1 opset {opset}"),
            vec![signed(&[2, 3, 4], 5, 0.1, 1.5), param(&[3, 4], 6, 0.5, 1.5)],
            opset,
            |p, x| vec![node(p, "LayerNormalization", &[x[0], x[1]], vec![Attribute::int("axis", 1)])],
        );
    }
    check_grad("ReduceMean axes attr keepdims 0 (opset 17)", vec![signed(&[2, 3, 4], 7, 0.1, 1.0)], 17, |p, x| {
        vec![node(p, "ReduceMean", &[x[0]], vec![Attribute::ints("axes", vec![0, 2]), Attribute::int("keepdims", 0)])]
    });
    check_grad("ReduceMean axes input (opset 18)", vec![signed(&[2, 3, 4], 8, 0.1, 1.0)], 18, |p, x| {
        let a = ints(p, &[-1]);
        vec![node(p, "ReduceMean", &[x[0], a], vec![])]
    });
    check_grad("ReduceSum keepdims 0", vec![signed(&[2, 3, 4], 9, 0.1, 1.0)], 17, |p, x| {
        let a = ints(p, &[1]);
        vec![node(p, "ReduceSum", &[x[0], a], vec![Attribute::int("keepdims", 0)])]
    });
    check_grad("ReduceSum all", vec![signed(&[2, 3], 10, 0.1, 1.0)], 17, |p, x| {
        vec![node(p, "ReduceSum", &[x[0]], vec![Attribute::int("keepdims", 1)])]
    });
}

#[test]
fn a_parameter_with_several_consumers_accumulates_its_gradients() {
    check_grad("x*x + exp(x) @ W", vec![signed(&[3, 4], 1, 0.1, 1.0), signed(&[4, 4], 2, 0.1, 1.0)], 17, |p, x| {
        let sq = node(p, "Mul", &[x[0], x[0]], vec![]);
        let e = node(p, "Exp", &[x[0]], vec![]);
        let mm = node(p, "MatMul", &[e, x[1]], vec![]);
        let mw = node(p, "MatMul", &[sq, x[1]], vec![]);
        vec![node(p, "Add", &[mm, mw], vec![])]
    });
}

#[test]
fn fake_quant_passes_the_gradient_straight_through_inside_the_range_only() {
    // y = DQ(Q(x)) with scale 0.1, zero point 128 (u8): representable range [-12.8, 12.7].
    // The derivative of the STE is 1 inside the range and 0 outside, so dL/dx = R inside, 0 outside.
    let xs = [-20.0f32, -12.8, -3.33, 0.0, 5.55, 12.7, 12.71, 30.0];
    let x = Tensor::from_f32(vec![8], &xs);
    let (m, names) = model_with_loss(std::slice::from_ref(&x), 17, |p, x| {
        let s = konst(p, Tensor::scalar_f32(0.1));
        let z = konst(p, Tensor::from_u8(vec![], &[128]));
        let q = node(p, "QuantizeLinear", &[x[0], s, z], vec![]);
        vec![node(p, "DequantizeLinear", &[q, s, z], vec![])]
    });
    let (gm, grads) = autodiff::differentiate(&m, "loss", &names, &GradOptions::default()).unwrap();
    let mut backend =
        runtime::load_bytes(&onnx::encode_model(&gm), EngineKind::Ort, &EngineOptions::default()).unwrap();
    let out = run(backend.as_mut(), &names, &[x]);
    let g = out.iter().find(|(n, _)| *n == grads.entries[0].output).unwrap().1.as_f32().unwrap().clone();
    let r = signed(&[8], 1000, 0.5, 1.5).to_f32().unwrap();
    for (i, &xi) in xs.iter().enumerate() {
        let inside = (-12.8..=12.7).contains(&xi);
        let want = if inside { r[i] } else { 0.0 };
        assert!((g[[i]] - want).abs() <= 1e-6, "x = {xi}: gradient {} (want {want})", g[[i]]);
    }
}

#[test]
fn training_mode_dropout_scales_the_kept_gradient_by_one_over_keep_probability() {
    let x = signed(&[4, 50], 1, 0.1, 1.0);
    let (m, names) = model_with_loss(std::slice::from_ref(&x), 17, |p, x| {
        let ratio = konst(p, Tensor::scalar_f32(0.25));
        let train = konst(p, Tensor::from_bool(vec![], &[true]));
        vec![node(p, "Dropout", &[x[0], ratio, train], vec![])]
    });
    let (gm, grads) = autodiff::differentiate(&m, "loss", &names, &GradOptions::default()).unwrap();
    let mut backend =
        runtime::load_bytes(&onnx::encode_model(&gm), EngineKind::Ort, &EngineOptions::default()).unwrap();
    let out = run(backend.as_mut(), &names, &[x]);
    let g = out.iter().find(|(n, _)| *n == grads.entries[0].output).unwrap().1.as_f32().unwrap().clone();
    let r = signed(&[4, 50], 1000, 0.5, 1.5).to_f32().unwrap();
    let (mut kept, mut dropped) = (0, 0);
    for (gi, ri) in g.iter().zip(&r) {
        if *gi == 0.0 {
            dropped += 1;
        } else {
            assert!((gi - ri / 0.75).abs() <= 1e-5, "kept gradient {gi}, want {}", ri / 0.75);
            kept += 1;
        }
    }
    assert!(kept > 100 && dropped > 20, "kept {kept}, dropped {dropped} of 200 at ratio 0.25");
}

/// Span and distillation losses on `[2, 5]` logits parameters.
fn loss_case(spec: autodiff::LossSpec, label: &str) {
    let start = signed(&[2, 5], 1, 0.1, 2.0);
    let end = signed(&[2, 5], 2, 0.1, 2.0);
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
    let ids = m
        .graph
        .edit(|p| -> Result<_, AutodiffError> {
            let s = p.add_initializer("s", start.clone());
            let e = p.add_initializer("e", end.clone());
            let (_, so) = p.add_node(NodeSpec::new("Identity", "s_id", &[s]), &[("start_logits", Default::default())]);
            let (_, eo) = p.add_node(NodeSpec::new("Identity", "e_id", &[e]), &[("end_logits", Default::default())]);
            p.add_output(so[0]);
            p.add_output(eo[0]);
            Ok((s, e))
        })
        .unwrap();
    let names = vec![m.graph.value(ids.0).name.clone(), m.graph.value(ids.1).name.clone()];
    let mut ts = autodiff::TrainingGraphSpec::new(spec);
    ts.params = Some(names.clone());
    let tg = autodiff::build_training_graph(&m, &ts).unwrap();
    let mut backend = runtime::load_bytes(
        &onnx::encode_model(&tg.model),
        EngineKind::Ort,
        &EngineOptions { threads: Some(1), ..Default::default() },
    )
    .unwrap();
    // Row 0 targets inside; row 1's end target is past the sequence (clamped to 5 = ignored).
    let sp = HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![1, 3]).unwrap());
    let ep = HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![4, 17]).unwrap());
    let teacher_s = signed(&[2, 5], 3, 0.1, 2.0);
    let teacher_e = signed(&[2, 5], 4, 0.1, 2.0);
    let mut feed_of = |s: &Tensor, e: &Tensor| {
        let mut feed: Vec<(&str, HostTensor)> = vec![
            (names[0].as_str(), to_host(s)),
            (names[1].as_str(), to_host(e)),
            ("start_positions", sp.clone()),
            ("end_positions", ep.clone()),
        ];
        if tg.loss_inputs.len() == 4 {
            feed.push(("teacher_start_logits", to_host(&teacher_s)));
            feed.push(("teacher_end_logits", to_host(&teacher_e)));
        }
        backend.run(&feed).unwrap()
    };
    let out = feed_of(&start, &end);
    let params = [start.clone(), end.clone()];
    for (i, pname) in names.iter().enumerate() {
        let entry = tg.grads.by_param(pname).unwrap();
        let g = out.iter().find(|(n, _)| *n == entry.output).unwrap().1.as_f32().unwrap().clone();
        for (j, &ga) in g.iter().enumerate() {
            let mut vp = params[i].to_f32().unwrap();
            let mut vm = vp.clone();
            vp[j] += EPS;
            vm[j] -= EPS;
            let (mut pp, mut pm) = (params.clone(), params.clone());
            pp[i] = Tensor::from_f32(vec![2, 5], &vp);
            pm[i] = Tensor::from_f32(vec![2, 5], &vm);
            let lp = loss_of(&feed_of(&pp[0], &pp[1]));
            let lm = loss_of(&feed_of(&pm[0], &pm[1]));
            let fd = (lp - lm) / (2.0 * EPS as f64);
            let err = (ga as f64 - fd).abs();
            assert!(err <= ATOL + RTOL * fd.abs(), "{label}: d loss / d {pname}[{j}]: autodiff {ga}, fd {fd}");
        }
    }
    let l = loss_of(&out);
    println!("{label}: loss {l}");
    // The ignored end target in row 1: that row's end logits get no gradient from the span loss.
    if label == "span" {
        let entry = tg.grads.by_param(&names[1]).unwrap();
        let g = out.iter().find(|(n, _)| *n == entry.output).unwrap().1.as_f32().unwrap().clone();
        assert!(g.iter().skip(5).all(|&v| v == 0.0), "ignored target still has gradient: {g:?}");
    }
}

#[test]
fn span_loss_matches_finite_differences_and_ignores_out_of_range_targets() {
    loss_case(autodiff::LossSpec::Span, "span");
}

#[test]
fn distillation_loss_matches_finite_differences() {
    loss_case(autodiff::LossSpec::Distill { temperature: 2.0, hardness: 0.8 }, "distill");
}

#[test]
fn an_op_without_a_gradient_rule_is_an_error_naming_the_op_and_the_node() {
    let (m, names) = model_with_loss(&[signed(&[2, 3], 1, 0.1, 1.0)], 17, |p, x| {
        let a = konst(p, Tensor::scalar_i64(1));
        let spec = NodeSpec::new("CumSum", "encoder/running_total", &[x[0], a]);
        vec![p.add_node(spec, &[("c", Default::default())]).1[0]]
    });
    let err = autodiff::differentiate(&m, "loss", &names, &GradOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AutodiffError::NoRule { .. }), "{msg}");
    assert!(msg.contains("CumSum") && msg.contains("encoder/running_total"), "{msg}");
}

/// Hidden-state distillation (`PerLayerDistillationModifier`) on a module `enc.mix` whose output
/// is `s + e`: the logged part equals SparseML's formula, the total mixes the parts, and the
/// gradient matches central differences, normalized or not, with and without logit distillation.
#[test]
fn layer_distillation_loss_matches_its_formula_and_finite_differences() {
    for (loss, normalize, gain) in [
        (autodiff::LossSpec::Distill { temperature: 2.0, hardness: 0.5 }, true, 1.5),
        (autodiff::LossSpec::Span, false, 0.7),
    ] {
        let start = signed(&[2, 5], 11, 0.1, 2.0);
        let end = signed(&[2, 5], 12, 0.1, 2.0);
        let teacher = signed(&[2, 5], 13, 0.1, 2.0);
        let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph
            .edit(|p| -> Result<_, AutodiffError> {
                let s = p.add_initializer("s", start.clone());
                let e = p.add_initializer("e", end.clone());
                let (_, h) = p.add_node(NodeSpec::new("Add", "/enc/mix/Add", &[s, e]), &[("h", Default::default())]);
                let (_, so) =
                    p.add_node(NodeSpec::new("Identity", "s_id", &[s]), &[("start_logits", Default::default())]);
                let (_, eo) =
                    p.add_node(NodeSpec::new("Identity", "e_id", &[h[0]]), &[("end_logits", Default::default())]);
                p.add_output(so[0]);
                p.add_output(eo[0]);
                Ok(())
            })
            .unwrap();
        infer::infer_facts(&mut m).unwrap();
        let names = vec!["s".to_string(), "e".to_string()];
        let mut ts = autodiff::TrainingGraphSpec::new(loss.clone());
        ts.params = Some(names.clone());
        ts.layers = Some(autodiff::LayerDistill { modules: vec!["enc.mix".into()], gain, normalize, epsilon: 1e-6 });
        let tg = autodiff::build_training_graph(&m, &ts).unwrap();
        assert!(tg.loss_inputs.iter().any(|n| n == "teacher_layer.0"), "inputs {:?}", tg.loss_inputs);
        assert!(tg.loss_outputs.iter().any(|n| n == "loss_layer"), "outputs {:?}", tg.loss_outputs);
        let mut backend = runtime::load_bytes(
            &onnx::encode_model(&tg.model),
            EngineKind::Ort,
            &EngineOptions { threads: Some(1), ..Default::default() },
        )
        .unwrap();
        let sp = HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![1, 3]).unwrap());
        let ep = HostTensor::I64(ArrayD::from_shape_vec(vec![2], vec![4, 2]).unwrap());
        let mut feed_of = |s: &Tensor, e: &Tensor| {
            let mut feed: Vec<(&str, HostTensor)> = vec![
                ("s", to_host(s)),
                ("e", to_host(e)),
                ("start_positions", sp.clone()),
                ("end_positions", ep.clone()),
                ("teacher_layer.0", to_host(&teacher)),
            ];
            if tg.loss_inputs.iter().any(|n| n == "teacher_start_logits") {
                feed.push(("teacher_start_logits", to_host(&signed(&[2, 5], 14, 0.1, 2.0))));
                feed.push(("teacher_end_logits", to_host(&signed(&[2, 5], 15, 0.1, 2.0))));
            }
            backend.run(&feed).unwrap()
        };
        let out = feed_of(&start, &end);
        let part = |n: &str| {
            out.iter().find(|(k, _)| k == n).map(|(_, t)| t.as_f32().unwrap().iter().next().copied().unwrap() as f64)
        };
        let (sv, ev, tv) = (start.to_f32().unwrap(), end.to_f32().unwrap(), teacher.to_f32().unwrap());
        let mse = sv.iter().zip(&ev).zip(&tv).map(|((a, b), t)| ((a + b - t) as f64).powi(2)).sum::<f64>() / 10.0;
        let mag = tv.iter().map(|&t| (t as f64).powi(2)).sum::<f64>() / 10.0;
        let want = if normalize { mse / (mag + 1e-6) } else { mse };
        let got = part("loss_layer").unwrap();
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "loss_layer {got}, formula {want}");
        let base = match loss {
            autodiff::LossSpec::Distill { hardness, .. } => {
                hardness as f64 * part("loss_distill").unwrap() + (1.0 - hardness as f64) * part("loss_span").unwrap()
            }
            autodiff::LossSpec::Span => part("loss_span").unwrap(),
        };
        let total = loss_of(&out);
        assert!((total - (base + gain as f64 * got)).abs() <= 1e-5 * total.abs().max(1.0), "total {total}");
        let params = [start.clone(), end.clone()];
        for (i, pname) in names.iter().enumerate() {
            let entry = tg.grads.by_param(pname).unwrap();
            let g = out.iter().find(|(n, _)| *n == entry.output).unwrap().1.as_f32().unwrap().clone();
            for (j, &ga) in g.iter().enumerate() {
                let mut vp = params[i].to_f32().unwrap();
                let mut vm = vp.clone();
                vp[j] += EPS;
                vm[j] -= EPS;
                let (mut pp, mut pm) = (params.clone(), params.clone());
                pp[i] = Tensor::from_f32(vec![2, 5], &vp);
                pm[i] = Tensor::from_f32(vec![2, 5], &vm);
                let fd = (loss_of(&feed_of(&pp[0], &pp[1])) - loss_of(&feed_of(&pm[0], &pm[1]))) / (2.0 * EPS as f64);
                let err = (ga as f64 - fd).abs();
                assert!(err <= ATOL + RTOL * fd.abs(), "d loss / d {pname}[{j}]: autodiff {ga}, fd {fd}");
            }
        }
    }
}

#[test]
fn layer_distillation_of_an_unknown_module_is_an_error_naming_it() {
    let mut m = Model { ir_version: 8, opset_imports: vec![(String::new(), 17)], ..Model::default() };
    m.graph
        .edit(|p| -> Result<_, AutodiffError> {
            let s = p.add_initializer("s", signed(&[2, 5], 1, 0.1, 2.0));
            let (_, so) = p.add_node(NodeSpec::new("Identity", "s_id", &[s]), &[("start_logits", Default::default())]);
            let (_, eo) = p.add_node(NodeSpec::new("Identity", "e_id", &[s]), &[("end_logits", Default::default())]);
            p.add_output(so[0]);
            p.add_output(eo[0]);
            Ok(())
        })
        .unwrap();
    infer::infer_facts(&mut m).unwrap();
    let mut ts = autodiff::TrainingGraphSpec::new(autodiff::LossSpec::Span);
    ts.layers = Some(autodiff::LayerDistill {
        modules: vec!["bert.encoder.layer.9".into()],
        gain: 1.0,
        normalize: true,
        epsilon: 1e-6,
    });
    let err = autodiff::build_training_graph(&m, &ts).unwrap_err().to_string();
    assert!(err.contains("bert.encoder.layer.9"), "{err}");
}
