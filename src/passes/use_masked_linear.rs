//! `UseMaskedLinear`: the masked linear layers of a graph about to be differentiated rewritten to
//! sparsec's block-sparse training operator `ai.sparsec::MaskedLinear`, whose gradient rule
//! (`autodiff::rules::masked_linear`) emits `MaskedLinearGradInput` and `MaskedLinearGradWeight`:
//! forward and both gradients then cost the mask's kept `[4, 1]` blocks instead of the dense layer.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::pattern::{sole_consumer, Consumers};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::masked_linear::MASKED_LINEAR;
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, DType, Dim, Graph, Model, NodeId, NodeSpec, Patch, Tensor, ValueId};

/// Rewrites each linear layer whose weight reaches its `MatMul` through a pruning mask.
///
/// - Matches: `MatMul(X, P)` (default domain) with `P = Mul(W, M)` an `InsertMasks` node
///   (`sparsec.mask/<param>`) read by that `MatMul` alone and not a graph output, `W` f32 of
///   static shape `[K, N]`, `M` a graph input (the mask fed at run time). When the `MatMul`'s
///   output is read only by an `Add` whose other input is an f32 `[N]` initializer (the bias, in
///   either order), the `Add` is matched too. Also a masked weight fake-quantized by
///   `InsertFakeQuant`: `MatMul(X, Where(flag, DequantizeLinear(QuantizeLinear(P, s, 0), s, 0), P))`
///   with `P = Mul(W, M)` as above and zero points constant zeros (the `Where` read by that
///   `MatMul` alone), or that `DequantizeLinear` alone where
///   [`SelectFakeQuant`](super::SelectFakeQuant) fixed the switch on: the operator then reads that
///   value as its weight, with `M` as its mask, and the `Mul` and the fake quantization stay (QAT
///   graphs on the block-sparse kernels).
///   A weight that reaches the `MatMul` through anything else is not matched.
/// - Emits: `ai.sparsec::MaskedLinear(X, W, M, B?)` writing the `MatMul`'s (or the `Add`'s) output
///   value, named as the `MatMul` and carrying its metadata, so the module scope recovered from
///   the node ([`crate::ir::modules`]) and every value name stay as they were; the `MatMul`, the
///   `Add` and (unless the weight is fake-quantized, whose quantization reads it) the `Mul` are
///   removed. The model gains the `ai.sparsec` opset import.
/// - Assumes: the operator computes `X·(W ⊙ M) + B` with `W ⊙ M` rounded as `Mul` rounds it, so
///   outputs differ from the dense layer's by the f32 rounding of a different summation order;
///   the gradient of `W` is `M ⊙ (Xᵀ·dY)` as the `Mul` → `MatMul` chain's is. For a fake-quantized
///   weight `W'` (zero wherever `M` is: `Q(0) = 0` with zero point 0), `W' ⊙ M = W'` exactly, and
///   the operator's gradient `M ⊙ (Xᵀ·dY)` for `W'` differs from the `MatMul`'s `Xᵀ·dY` only where
///   `M` is zero, which the straight-through estimator passes on to the `Mul`, which zeroes it: the
///   parameter's gradient is the same up to summation order. Any mask is exact;
///   the speed-up needs `[4, 1]` blocks (see `sparsec_kernels::masked_linear`).
/// - With `precision: bf16`, also the *unmasked* linear layers: `MatMul(X, W)` (default domain)
///   with `W` an f32 `[K, N]` initializer read directly that [`crate::ir::modules::parameter_names`]
///   names (a trained parameter, not a constant table; bias matched as above), emitted with an
///   all-ones mask initializer `sparsec.ones/KxN` (one per shape; not a parameter), so that every
///   linear of a dense model gets the bf16 products too. Fake-quantized weights still do not match.
///
/// `precision: bf16` gives each emitted node (and, through the gradient rule, its gradient
/// operators) `precision = "bf16"`: bf16 products summed in f32 (see `sparsec-ops`), so outputs and
/// gradients then differ from the dense layer's by bf16 rounding of the operands, not f32 rounding.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UseMaskedLinear {
    #[serde(default)]
    pub precision: LinearPrecision,
}

/// The products of the emitted masked linears.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinearPrecision {
    /// f32 products and sums.
    #[default]
    F32,
    /// bf16 products (of bf16-rounded activations, gradients and weights) summed in f32.
    Bf16,
}

/// One matched layer.
struct Site {
    matmul: NodeId,
    /// The masking `Mul`; none for an unmasked layer.
    mul: Option<NodeId>,
    add: Option<NodeId>,
    x: ValueId,
    w: ValueId,
    /// The mask fed at run time, or `[K, N]` of the all-ones mask an unmasked layer gets.
    mask: Result<ValueId, (usize, usize)>,
    bias: Option<ValueId>,
    out: ValueId,
}

impl Pass for UseMaskedLinear {
    fn name(&self) -> &'static str {
        "UseMaskedLinear"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                // With bf16, unmasked layers too: those whose weight is a parameter the trainer knows.
                let params: Option<HashSet<ValueId>> = (self.precision == LinearPrecision::Bf16)
                    .then(|| crate::ir::modules::parameter_names(g).into_values().collect());
                let sites: Vec<Site> =
                    g.nodes().filter_map(|(id, _)| match_site(g, &consumers, id, params.as_ref())).collect();
                let mut ones: Vec<((usize, usize), ValueId)> = Vec::new();
                for site in sites {
                    let mask = match site.mask {
                        Ok(m) => m,
                        Err((k, n)) => match ones.iter().find(|(s, _)| *s == (k, n)) {
                            Some(&(_, v)) => v,
                            None => {
                                let t = Tensor::from_f32(vec![k as i64, n as i64], &vec![1.0; k * n]);
                                let v = p.add_initializer(&format!("sparsec.ones/{k}x{n}"), t);
                                ones.push(((k, n), v));
                                v
                            }
                        },
                    };
                    let g = p.graph();
                    let node = g.node(site.matmul);
                    let mut inputs = vec![Some(site.x), Some(site.w), Some(mask)];
                    if let Some(b) = site.bias {
                        inputs.push(Some(b));
                    }
                    let spec = NodeSpec {
                        name: node.name.clone(),
                        op_type: MASKED_LINEAR.into(),
                        domain: DOMAIN.into(),
                        inputs,
                        attrs: match self.precision {
                            LinearPrecision::F32 => Vec::new(),
                            LinearPrecision::Bf16 => vec![Attribute::string("precision", "bf16")],
                        },
                        metadata: node.metadata.clone(),
                    };
                    for dead in [site.mul, Some(site.matmul), site.add].into_iter().flatten() {
                        p.remove_node(dead);
                    }
                    p.add_node_with_outputs(spec, vec![Some(site.out)]);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        if report.rewritten > 0 && !model.opset_imports.iter().any(|(d, _)| d == DOMAIN) {
            model.opset_imports.push((DOMAIN.to_string(), 1));
        }
        Ok(report)
    }
}

/// The masked linear layer whose `MatMul` is node `id`, if it is one; with `unmasked` (the
/// parameters), also a linear layer whose weight, a parameter, the `MatMul` reads directly.
fn match_site(g: &Graph, consumers: &Consumers, id: NodeId, unmasked: Option<&HashSet<ValueId>>) -> Option<Site> {
    let mm = g.node(id);
    if mm.op_type != "MatMul" || !mm.domain.is_empty() {
        return None;
    }
    let (x, p, y) = (mm.input(0)?, mm.input(1)?, mm.output(0)?);
    let static_kn = |v: ValueId| {
        let f = &g.value(v).facts;
        match f.shape.as_deref() {
            Some([Dim::Known(k), Dim::Known(n)]) if *k > 0 && *n > 0 && f.dtype == Some(DType::F32) => {
                Some((*k as usize, *n as usize))
            }
            _ => None,
        }
    };
    let (mul, w, mask, n) = match g.producer(p) {
        Some((_, pn)) if pn.name.starts_with("sparsec.fq/") => {
            // A fake-quantized masked weight, `Where(flag, DQ(Q(W ⊙ M)), W ⊙ M)` or (switch fixed
            // on) `DQ(Q(W ⊙ M))`: zero wherever `M` is, in either branch (symmetric int8, zero
            // point 0), so the operator's `W' ⊙ M` is `W'` bit for bit and its `M ⊙ (Xᵀ·dY)` is
            // what the `Mul` below applies anyway.
            sole_consumer(g, consumers, p).filter(|(c, _, _)| *c == id)?;
            let masked = fake_quant_source(g, p)?;
            let (_, mn) = g.producer(masked)?;
            let (_, mask) = masked_weight(g, mn)?;
            let (_, n) = static_kn(p)?;
            (None, p, Ok(mask), n)
        }
        Some((mul, mn)) => {
            sole_consumer(g, consumers, p).filter(|(c, _, _)| *c == id)?;
            let (w, mask) = masked_weight(g, mn)?;
            let (_, n) = static_kn(w)?;
            (Some(mul), w, Ok(mask), n)
        }
        None if unmasked.is_some_and(|params| params.contains(&p))
            && g.is_initializer(p)
            && g.value(x).facts.dtype == Some(DType::F32) =>
        {
            let (k, n) = static_kn(p)?;
            (None, p, Err((k, n)), n)
        }
        None => return None,
    };
    let bias = sole_consumer(g, consumers, y).and_then(|(add, an, _)| {
        if an.op_type != "Add" || !an.domain.is_empty() {
            return None;
        }
        let other = match (an.input(0)?, an.input(1)?) {
            (a, b) if a == y => b,
            (a, b) if b == y => a,
            _ => return None,
        };
        let t = g.initializer(other)?;
        (t.dtype == DType::F32 && t.dims == [n as i64]).then_some((add, other, an.output(0)?))
    });
    let (add, bias, out) = match bias {
        Some((add, b, out)) => (Some(add), Some(b), out),
        None => (None, None, y),
    };
    Some(Site { matmul: id, mul, add, x, w, mask, bias, out })
}

/// `(W, M)` of an `InsertMasks` node `Mul(W, M)` (`sparsec.mask/<param>`) whose mask is a graph
/// input fed at run time, of the weight's shape.
fn masked_weight(g: &Graph, mn: &crate::ir::Node) -> Option<(ValueId, ValueId)> {
    if mn.op_type != "Mul" || !mn.domain.is_empty() || !mn.name.starts_with("sparsec.mask/") {
        return None;
    }
    let (w, mask) = (mn.input(0)?, mn.input(1)?);
    let is_plain_input = |v: ValueId| g.inputs().contains(&v) && !g.is_initializer(v);
    (is_plain_input(mask) && g.value(mask).facts.shape.is_some() && g.value(mask).facts.shape == g.value(w).facts.shape)
        .then_some((w, mask))
}

/// The value `B` that `p`, the output of an `InsertFakeQuant` weight site, quantizes: `p` is
/// `Where(flag, DequantizeLinear(QuantizeLinear(B, s, zp), s, zp), B)` or, with the switch fixed on
/// ([`SelectFakeQuant`](super::SelectFakeQuant)), the `DequantizeLinear` itself; both zero points
/// constant zeros (so that a zero of `B` stays zero).
fn fake_quant_source(g: &Graph, p: ValueId) -> Option<ValueId> {
    let (_, pn) = g.producer(p)?;
    let (dq, b) = match pn.op_type.as_str() {
        "Where" if pn.name.ends_with("/select") => (pn.input(1)?, Some(pn.input(2)?)),
        "DequantizeLinear" if pn.name.ends_with("/dequantize") => (p, None),
        _ => return None,
    };
    let zero_point_zero = |n: &crate::ir::Node| match n.input(2) {
        None => true,
        Some(zp) => {
            g.constant(zp).is_some_and(|t| matches!(t.dtype, DType::I8 | DType::U8) && t.raw().iter().all(|&z| z == 0))
        }
    };
    let (_, dqn) = g.producer(dq).filter(|(_, n)| n.op_type == "DequantizeLinear" && n.domain.is_empty())?;
    let (_, qn) = g.producer(dqn.input(0)?).filter(|(_, n)| n.op_type == "QuantizeLinear" && n.domain.is_empty())?;
    let source = qn.input(0)?;
    (b.is_none_or(|b| b == source) && zero_point_zero(dqn) && zero_point_zero(qn)).then_some(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Attrs, Facts, Tensor};
    use crate::passes::{InsertMasks, MaskTarget};

    /// `x [2, 8] → MatMul(x, w [8, 4]) → Add(b) → y`, then masks inserted on `w`.
    fn masked(with_bias: bool) -> Model {
        let mut m = Model { opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![Dim::Known(2), Dim::Known(8)]));
                let w = p.add_initializer("onnx::MatMul_1", Tensor::from_f32(vec![8, 4], &[0.5; 32]));
                let mut y = p.op(NodeSpec::new("MatMul", "/fc/MatMul", &[x, w]), "mm", Facts::default());
                if with_bias {
                    let b = p.add_initializer("onnx::Add_2", Tensor::from_f32(vec![4], &[1.0; 4]));
                    y = p.op(NodeSpec::new("Add", "/fc/Add", &[b, y]), "y", Facts::default());
                }
                p.add_output(y);
                Ok(())
            })
            .unwrap();
        let targets = vec![MaskTarget { param: "fc.weight".into(), initializer: "onnx::MatMul_1".into() }];
        InsertMasks { targets }.run(&mut m).unwrap();
        crate::ir::infer::infer_facts(&mut m).unwrap();
        m
    }

    #[test]
    fn fuses_mask_matmul_and_bias_into_one_node_named_as_the_matmul() {
        for with_bias in [true, false] {
            let mut m = masked(with_bias);
            let out_name = m.graph.value(m.graph.outputs()[0]).name.clone();
            let r = UseMaskedLinear::default().apply(&mut m).unwrap();
            assert_eq!(r.rewritten, 1);
            let g = &m.graph;
            let ops: Vec<&str> = g.nodes().map(|(_, n)| n.op_type.as_str()).collect();
            assert_eq!(ops, vec![MASKED_LINEAR]);
            let (_, n) = g.nodes().next().unwrap();
            assert_eq!((n.name.as_str(), n.domain.as_str()), ("/fc/MatMul", DOMAIN));
            assert_eq!(n.inputs.len(), if with_bias { 4 } else { 3 });
            assert_eq!(g.value(g.outputs()[0]).name, out_name, "the output value is kept");
            assert!(m.opset_imports.iter().any(|(d, _)| d == DOMAIN));
            // The module names of anonymous initializers still come from the (renamed) node.
            let names = crate::ir::modules::parameter_names(g);
            assert_eq!(names.get("fc.weight"), g.value_by_name("onnx::MatMul_1").as_ref());
            assert_eq!(names.get("fc.bias").copied(), g.value_by_name("onnx::Add_2").filter(|_| with_bias));
        }
    }

    #[test]
    fn takes_a_fake_quantized_masked_weight_and_keeps_its_mask_and_quantization() {
        use crate::passes::{FakeQuantTarget, InsertFakeQuant};
        let mut m = masked(true);
        let fq = InsertFakeQuant {
            targets: vec![FakeQuantTarget { node: "/fc/MatMul".into(), module: "fc".into() }],
            embeddings: vec![],
            quantize_activations: true,
            activation_symmetric: false,
            weight_per_channel: true,
            attention: false,
        };
        fq.apply(&mut m).unwrap();
        crate::ir::infer::infer_facts(&mut m).unwrap();
        let r = UseMaskedLinear::default().apply(&mut m).unwrap();
        assert_eq!(r.rewritten, 1);
        let g = &m.graph;
        let (_, op) = g.nodes().find(|(_, n)| n.op_type == MASKED_LINEAR).expect("the layer is rewritten");
        assert_eq!(op.name, "/fc/MatMul");
        let (_, select) = g.producer(op.input(1).unwrap()).expect("the weight is computed");
        assert!(select.op_type == "Where" && select.name.starts_with("sparsec.fq/"), "reads the fake-quantized weight");
        assert_eq!(g.value(op.input(2).unwrap()).name, "fc.weight.mask", "with the run-time mask");
        assert_eq!(op.inputs.len(), 4, "the bias is fused");
        let count = |t: &str| g.nodes().filter(|(_, n)| n.op_type == t).count();
        assert_eq!((count("Mul"), count("QuantizeLinear"), count("MatMul")), (1, 2, 0), "mask and quantization stay");

        // With the switch fixed on (no `Where` left), the `DequantizeLinear` is the weight.
        let mut m = masked(true);
        fq.apply(&mut m).unwrap();
        let on = crate::passes::BindInputs {
            values: vec![(crate::passes::QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[true]))],
        };
        on.apply(&mut m).unwrap();
        crate::passes::SelectFakeQuant::default().apply(&mut m).unwrap();
        crate::ir::infer::infer_facts(&mut m).unwrap();
        assert_eq!(UseMaskedLinear::default().apply(&mut m).unwrap().rewritten, 1);
        let g = &m.graph;
        let (_, op) = g.nodes().find(|(_, n)| n.op_type == MASKED_LINEAR).unwrap();
        assert_eq!(g.producer(op.input(1).unwrap()).unwrap().1.op_type, "DequantizeLinear");

        // A nonzero weight zero point would turn the mask's zeros into nonzero weights: not matched.
        let mut m = masked(true);
        fq.apply(&mut m).unwrap();
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let zp = p.graph().value_by_name("fc.weight.fq_zero_point").unwrap();
                p.set_initializer(zp, Tensor::from_i8(vec![4], &[0, 1, 0, 0]));
                Ok(())
            })
            .unwrap();
        crate::ir::infer::infer_facts(&mut m).unwrap();
        assert_eq!(UseMaskedLinear::default().apply(&mut m).unwrap().rewritten, 0);
    }

    #[test]
    fn leaves_a_weight_read_elsewhere_alone() {
        let mut m = masked(true);
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let masked = p.graph().value_by_name("fc.weight.masked").unwrap();
                p.add_output(masked);
                Ok(())
            })
            .unwrap();
        assert_eq!(UseMaskedLinear::default().run(&mut m).unwrap().rewritten, 0);
    }

    #[test]
    fn bf16_also_takes_unmasked_linears_with_a_shared_ones_mask() {
        let mut m = Model { opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![Dim::Known(8), Dim::Known(8)]));
                let w1 = p.add_initializer("onnx::MatMul_1", Tensor::from_f32(vec![8, 8], &[0.5; 64]));
                let w2 = p.add_initializer("onnx::MatMul_2", Tensor::from_f32(vec![8, 8], &[0.25; 64]));
                let b = p.add_initializer("onnx::Add_3", Tensor::from_f32(vec![8], &[1.0; 8]));
                let h = p.op(NodeSpec::new("MatMul", "/fc1/MatMul", &[x, w1]), "h", Facts::default());
                let h = p.op(NodeSpec::new("Add", "/fc1/Add", &[h, b]), "hb", Facts::default());
                // Activation × activation: not a layer.
                let sq = p.op(NodeSpec::new("MatMul", "/sq/MatMul", &[h, h]), "sq", Facts::default());
                let y = p.op(NodeSpec::new("MatMul", "/fc2/MatMul", &[sq, w2]), "y", Facts::default());
                p.add_output(y);
                // The initializer as the first operand, and a transposed weight: not matched.
                let c = p.add_initializer("onnx::MatMul_4", Tensor::from_f32(vec![8, 8], &[0.125; 64]));
                let first = p.op(NodeSpec::new("MatMul", "/first/MatMul", &[c, x]), "first", Facts::default());
                p.add_output(first);
                let w5 = p.add_initializer("onnx::MatMul_5", Tensor::from_f32(vec![8, 8], &[0.5; 64]));
                let wt = p.op(NodeSpec::new("Transpose", "/t/Transpose", &[w5]), "wt", Facts::default());
                let tr = p.op(NodeSpec::new("MatMul", "/tr/MatMul", &[x, wt]), "tr", Facts::default());
                p.add_output(tr);
                Ok(())
            })
            .unwrap();
        crate::ir::infer::infer_facts(&mut m).unwrap();
        let mut f32 = m.clone();
        assert_eq!(UseMaskedLinear::default().apply(&mut f32).unwrap().rewritten, 0, "f32 takes masked layers only");
        let r = UseMaskedLinear { precision: LinearPrecision::Bf16 }.apply(&mut m).unwrap();
        assert_eq!(r.rewritten, 2);
        let g = &m.graph;
        let masked: Vec<_> = g.nodes().filter(|(_, n)| n.op_type == MASKED_LINEAR).map(|(_, n)| n.clone()).collect();
        assert_eq!(masked.len(), 2, "fc1 and fc2 only");
        assert!(masked.iter().all(|n| n.name == "/fc1/MatMul" || n.name == "/fc2/MatMul"));
        let ones = g.value_by_name("sparsec.ones/8x8").expect("one all-ones mask for the shape");
        for n in &masked {
            assert_eq!(n.input(2), Some(ones));
            assert_eq!(n.attr_str("precision"), Some("bf16"));
        }
        assert_eq!(masked.iter().filter(|n| n.inputs.len() == 4).count(), 1, "fc1's bias is fused");
        assert!(g.initializer(ones).unwrap().as_f32s().unwrap().iter().all(|&v| v == 1.0));
        let names = crate::ir::modules::parameter_names(g);
        assert!(names.values().all(|&v| v != ones), "the ones mask is not a parameter");
        assert_eq!(names.get("fc1.weight"), g.value_by_name("onnx::MatMul_1").as_ref());
    }
}
