//! `FuseQuantizedAttention`: the quantized self-attention of a SparseML int8 export (two
//! `MatMulInteger`s with the QDQ and f32 steps around them) rewritten to one
//! `ai.sparsec::QuantizedAttention` node.

use serde::{Deserialize, Serialize};

use super::fuse_attention::{data_consumer, heads_of, key_of};
use super::pattern::{
    const_f32_scalar, const_u8_scalar, emit_quantized_attention, ql_params, quant_attrs, quantized, sole_consumer,
    Consumers, Q,
};
use super::{Pass, PassError, PassReport};
use crate::ir::{Attribute, Attrs, DType, Dim, Graph, Model, Node, Patch, ValueId};

/// Fuses SparseML's quantized attention, found by pattern from each `MatMulInteger` of two
/// activations.
///
/// - Matches, with `QL`/`DQ` per-tensor `QuantizeLinear`/`DequantizeLinear` to uint8 (scalar
///   constant scale and zero point; a `DQ` has its `QL`'s constants) and `c…` scalar f32
///   constants:
///   `A = MatMulInteger(QL(Transpose₀₂₁₃(Reshape(q))), QL(Kᵀ), z_q, z_k)` with `Kᵀ` as
///   `FuseAttention` finds it and the zero points those of the two `QL`s;
///   `P = Softmax₋₁([Add(]DQ(QL(Mul(Cast_f32(A), c₁))) / c₂[, mask)])`;
///   `C = MatMulInteger(QL(P), QL(Transpose₀₂₁₃(Reshape(v))), z_p, z_v)`;
///   output `Reshape(Transpose₀₂₁₃(DQ(QL(Mul(Cast_f32(C), c₃)))))` as `[B, S, H·D]`. Every
///   intermediate is read only by the next step (the last `DQ` and `Transpose` may also feed `Shape`s).
/// - Emits: `QuantizedAttention(q, k, v[, mask])` named `sparsec.qattn/<first MatMulInteger>`,
///   with `num_heads`, `head_dim` and the constants as attributes; the final `Reshape`'s consumers
///   read it. The old subgraph is left for `RemoveDead`.
/// - Assumes: `H` and `D` are known from the static facts. The kernel computes the same steps in
///   the same order; only its softmax `exp` differs from ONNX Runtime's (see `attention_i8`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FuseQuantizedAttention {}

/// The sole consumer of `v` when it is `op` (default domain), reading `v` at slot `slot`.
fn next<'g>(g: &'g Graph, cons: &Consumers, v: ValueId, op: &str, slot: usize) -> Option<&'g Node> {
    sole_consumer(g, cons, v)
        .filter(|(_, n, s)| n.op_type == op && n.domain.is_empty() && *s == slot)
        .map(|(_, n, _)| n)
}

/// From a `MatMulInteger`'s output: `Cast_f32 → Mul(c) → QL → DQ` → `(output, c, constants)`.
fn requantized(g: &Graph, cons: &Consumers, acc: ValueId) -> Option<(ValueId, f32, Q)> {
    let cast = next(g, cons, acc, "Cast", 0)?;
    if cast.attr_int("to") != Some(1) {
        return None;
    }
    let c = cast.output(0)?;
    let (_, mul, slot) = sole_consumer(g, cons, c).filter(|(_, n, _)| n.op_type == "Mul" && n.domain.is_empty())?;
    let mul_c = const_f32_scalar(g, mul.input(1 - slot)?)?;
    let ql = next(g, cons, mul.output(0)?, "QuantizeLinear", 0)?;
    let q = ql_params(g, ql)?;
    let dq = next(g, cons, ql.output(0)?, "DequantizeLinear", 0)?;
    if ql_params(g, dq)? != q {
        return None;
    }
    Some((dq.output(0)?, mul_c, q))
}

struct Site {
    name: String,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    mask: Option<ValueId>,
    attrs: Vec<Attribute>,
    out: ValueId,
}

fn site(g: &Graph, cons: &Consumers, mm1: &Node) -> Option<Site> {
    let zp = |n: &Node, i: usize| n.input(i).map_or(Some(0), |z| const_u8_scalar(g, z));
    let (qt, qq) = quantized(g, mm1.input(0)?)?;
    let (kt, qk) = quantized(g, mm1.input(1)?)?;
    if zp(mm1, 2)? != qq.1 || zp(mm1, 3)? != qk.1 {
        return None;
    }
    let q = heads_of(g, qt, &[0, 2, 1, 3])?;
    let k = key_of(g, kt)?;
    let (scores, m1, qa) = requantized(g, cons, mm1.output(0)?)?;
    let div = next(g, cons, scores, "Div", 0)?;
    let divisor = const_f32_scalar(g, div.input(1)?)?;
    let d_out = div.output(0)?;
    let (sm_in, mask) = match sole_consumer(g, cons, d_out) {
        Some((_, add, slot)) if add.op_type == "Add" && add.domain.is_empty() => {
            let m = add.input(1 - slot)?;
            let f = &g.value(m).facts;
            let rank_ok = f.shape.as_ref().is_none_or(|s| s.len() == 2 || s.len() == 4);
            if f.dtype.is_some_and(|d| d != DType::F32) || !rank_ok {
                return None;
            }
            (add.output(0)?, Some(m))
        }
        _ => (d_out, None),
    };
    let sm = next(g, cons, sm_in, "Softmax", 0)?;
    let rank = g.value(sm_in).facts.shape.as_ref().map_or(0, Vec::len) as i64;
    let axis = sm.attr_int("axis").unwrap_or(-1);
    if !(axis == -1 || rank == 4 && axis == 3) {
        return None;
    }
    let qp_node = next(g, cons, sm.output(0)?, "QuantizeLinear", 0)?;
    let qp = ql_params(g, qp_node)?;
    let mm2 = next(g, cons, qp_node.output(0)?, "MatMulInteger", 0)?;
    let (vt, qv) = quantized(g, mm2.input(1)?)?;
    if zp(mm2, 2)? != qp.1 || zp(mm2, 3)? != qv.1 {
        return None;
    }
    let v = heads_of(g, vt, &[0, 2, 1, 3])?;
    let (ctx, m2, qc) = requantized(g, cons, mm2.output(0)?)?;
    let (_, back) = data_consumer(g, cons, ctx).filter(|(_, n)| n.op_type == "Transpose" && n.domain.is_empty())?;
    if back.attr_ints("perm") != Some(&[0, 2, 1, 3][..]) {
        return None;
    }
    let (_, merge) =
        data_consumer(g, cons, back.output(0)?).filter(|(_, n)| n.op_type == "Reshape" && n.domain.is_empty())?;
    let out = merge.output(0)?;
    let qdims = g.value(qt).facts.shape.clone()?;
    let [_, Dim::Known(heads), _, Dim::Known(head_dim)] = qdims[..] else { return None };
    let hd = heads * head_dim;
    let rank3 = |v: ValueId| {
        g.value(v).facts.shape.as_deref().is_some_and(|s| s.len() == 3 && s[2].compatible(&Dim::Known(hd)))
    };
    if heads <= 0 || head_dim <= 0 || !(rank3(out) && rank3(q) && rank3(k) && rank3(v)) || g.outputs().contains(&out) {
        return None;
    }
    let mut attrs = vec![Attribute::int("num_heads", heads), Attribute::int("head_dim", head_dim)];
    for (name, x) in [("q", qq), ("k", qk), ("v", qv), ("scores", qa), ("probs", qp), ("context", qc)] {
        attrs.extend(quant_attrs(name, x));
    }
    attrs.extend([
        Attribute::float("scores_mul", m1),
        Attribute::float("divisor", divisor),
        Attribute::float("context_mul", m2),
    ]);
    Some(Site { name: mm1.name.clone(), q, k, v, mask, attrs, out })
}

impl Pass for FuseQuantizedAttention {
    fn name(&self) -> &'static str {
        "FuseQuantizedAttention"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let cons = g.consumers();
                for (_, mm) in g.nodes() {
                    if mm.op_type != "MatMulInteger" || !mm.domain.is_empty() {
                        continue;
                    }
                    let Some(s) = site(g, &cons, mm) else { continue };
                    emit_quantized_attention(p, &s.name, [s.q, s.k, s.v], s.mask, s.attrs, s.out);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
