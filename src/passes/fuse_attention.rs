//! `FuseAttention`: the multi-head self-attention subgraph of a BERT-family export rewritten to one
//! `ai.sparsec::Attention` node, or to `ai.sparsec::QuantizedAttention` where sparsec's own QAT
//! quantized the two products' inputs (its QDQ export).

use serde::{Deserialize, Serialize};

use super::pattern::{
    const_f32_scalar, emit_quantized_attention, eval_f32_scalar, producer_op, ql_params, quant_attrs, quantized,
    sole_consumer, Consumers, Q,
};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Dim, Graph, Model, NodeId, NodeSpec, Patch, ValueId};

/// Fuses scaled-dot-product attention, found by pattern from each `Softmax`.
///
/// - Matches: `Softmax(axis=-1)` of `[Add(]MatMul(Q', K')[ ⊘ c][, mask)]` where
///   `Q' = [Mul(]Transpose₀₂₁₃(Reshape(q))[, c₁)]`, `K' = [Mul(]Transpose₀₂₃₁(Reshape(k))[, c₂)]`
///   (or `Transpose₀₁₃₂(Transpose₀₂₁₃(Reshape(k)))`), `⊘ c` an optional `Div`/`Mul` by a
///   constant, optionally followed by torch's `Where(IsNaN(p), 0, p)` guard, then
///   `Reshape(Transpose₀₂₁₃(MatMul(p, Transpose₀₂₁₃(Reshape(v)))))` back to `[B, S, H·D]`;
///   `q`, `k`, `v` are `[B, S, H·D]`, and `H`, `D` are known from the static facts. The mask is an
///   f32 tensor shaped `[B|1, 1, S|1, S]` or `[B, S]`.
/// - Emits: `Attention(q, mask, k, v)` (`has_mask = 0` and `q` in the mask slot when unmasked) named `sparsec.attn/<Softmax>` with `num_heads`,
///   `head_dim`, `scale = c₁·c₂·c` (or `/c`), `zero_masked_rows` = whether the guard was there;
///   the final `Reshape`'s consumers read it. The old subgraph is left for `RemoveDead`.
/// - Also matches sparsec's own quantized attention (`InsertFakeQuant`'s attention sites, lowered
///   to QDQ by `LowerFakeQuant`): the same pattern with each of the two `MatMul`s' four inputs
///   (`Transpose₀₂₁₃(Reshape(q))`, `Kᵀ`, the probabilities, `Transpose₀₂₁₃(Reshape(v))`) behind a
///   per-tensor uint8 `DequantizeLinear(QuantizeLinear(·))` with scalar constants (a positive
///   `Mul` on Q or K inside it is folded into the kernel's quantization scale: `s/c`; torch's NaN
///   guard is what the kernel does for rows masked entirely with −∞), and then emits `QuantizedAttention(q, k, v[, mask])` named `sparsec.qattn/<Softmax>`
///   without the scores' and the context's requantization: `scores_mul = s_q·s_k`, `divisor` the
///   scores' `Div` (or `1/c` for a `Mul`), `context_mul = s_p·s_v`. A pattern with only some of
///   the four quantized is left alone.
/// - Assumes: score intermediates are read only inside the pattern. Outputs equal the original
///   up to f32 summation order (the kernel scales `q·k` once instead of `q` and `k` separately;
///   quantized, its integer sums are exact where the graph's f32 `MatMul`s round, and its softmax
///   is `attention_i8`'s).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FuseAttention {
    /// `"f32"` (default) or `"bf16"` products inside the kernel.
    #[serde(default)]
    pub precision: Option<String>,
}

/// `Transpose(perm)(Reshape(x))` → `x`.
pub(super) fn heads_of(g: &Graph, t: ValueId, perm: &[i64]) -> Option<ValueId> {
    let (_, tn) = producer_op(g, t, "Transpose").filter(|(_, n)| n.attr_ints("perm") == Some(perm))?;
    let (_, rn) = producer_op(g, tn.input(0)?, "Reshape")?;
    rn.input(0)
}

/// Peels an optional `Mul` by a scalar computable at compile time: `(inner, factor)`.
fn scaled(g: &Graph, v: ValueId) -> (ValueId, f32) {
    if let Some((_, m)) = producer_op(g, v, "Mul") {
        for (a, b) in [(m.input(0), m.input(1)), (m.input(1), m.input(0))] {
            if let (Some(a), Some(b)) = (a, b) {
                let scalar = g.value(b).facts.shape.as_ref().is_some_and(|s| s.iter().all(|d| d.known() == Some(1)));
                if let Some(c) = eval_f32_scalar(g, b).filter(|_| scalar) {
                    return (a, c);
                }
            }
        }
    }
    (v, 1.0)
}

/// `Kᵀ` as `[B, H, D, S]`: `Transpose₀₂₃₁(Reshape(k))`, `Transpose₀₁₃₂(Transpose₀₂₁₃(Reshape(k)))`,
/// or the dynamo exporter's `Reshape(Transpose₀₂₁(Reshape(Transpose₀₂₁₃(Reshape(k)))))`.
pub(super) fn key_of(g: &Graph, kt: ValueId) -> Option<ValueId> {
    let perm = |n: &crate::ir::Node, p: &[i64]| n.attr_ints("perm") == Some(p);
    heads_of(g, kt, &[0, 2, 3, 1])
        .or_else(|| {
            let (_, t) = producer_op(g, kt, "Transpose").filter(|(_, n)| perm(n, &[0, 1, 3, 2]))?;
            heads_of(g, t.input(0)?, &[0, 2, 1, 3])
        })
        .or_else(|| {
            let (_, r2) = producer_op(g, kt, "Reshape")?;
            let (_, t) = producer_op(g, r2.input(0)?, "Transpose").filter(|(_, n)| perm(n, &[0, 2, 1]))?;
            let (_, r1) = producer_op(g, t.input(0)?, "Reshape")?;
            heads_of(g, r1.input(0)?, &[0, 2, 1, 3])
        })
}

/// The one consumer of `v` that reads its data, ignoring `Shape` nodes (which only read its
/// dimensions, and die with the subgraph once the final reshape is replaced).
pub(super) fn data_consumer<'g>(
    g: &'g Graph,
    cons: &Consumers,
    v: ValueId,
) -> Option<(crate::ir::NodeId, &'g crate::ir::Node)> {
    if g.outputs().contains(&v) {
        return None;
    }
    let mut data = cons.get(&v)?.iter().filter(|(id, _)| g.node(*id).op_type != "Shape");
    let (id, _) = data.next()?;
    data.next().is_none().then(|| (*id, g.node(*id)))
}

/// `DequantizeLinear(QuantizeLinear(x))`, per tensor to uint8 with the same scalar constants on
/// both, the `QuantizeLinear` read only by the `DequantizeLinear`: `(x, constants)`; otherwise
/// `(v, None)`.
fn fake_quantized(g: &Graph, cons: &Consumers, v: ValueId) -> (ValueId, Option<Q>) {
    let peel = || {
        let (_, dq) = producer_op(g, v, "DequantizeLinear")?;
        let ql_out = dq.input(0)?;
        sole_consumer(g, cons, ql_out)?;
        let (x, q) = quantized(g, ql_out)?;
        (ql_params(g, dq)? == q).then_some((x, q))
    };
    match peel() {
        Some((x, q)) => (x, Some(q)),
        None => (v, None),
    }
}

/// The four quantizations of a quantized attention's product inputs, as the kernel applies them
/// to its Q, K, V rows and probabilities.
struct Quants {
    q: Q,
    k: Q,
    /// `s_q·s_k` of the graph's own quantizations (before any scale on Q or K is folded).
    scores_mul: f32,
    probs: Q,
    v: Q,
    /// The scores' divisor: the `Div`'s constant, or `1/c` for a `Mul` by `c`.
    divisor: f32,
}

impl Quants {
    /// `QuantizedAttention`'s attributes, without the scores' and the context's requantization.
    fn attrs(&self, heads: i64, head_dim: i64) -> Vec<Attribute> {
        let mut attrs = vec![Attribute::int("num_heads", heads), Attribute::int("head_dim", head_dim)];
        for (name, x) in [("q", self.q), ("k", self.k), ("v", self.v), ("probs", self.probs)] {
            attrs.extend(quant_attrs(name, x));
        }
        attrs.extend([
            Attribute::float("scores_mul", self.scores_mul),
            Attribute::float("divisor", self.divisor),
            Attribute::float("context_mul", self.probs.0 * self.v.0),
        ]);
        attrs
    }
}

struct Site {
    name: String,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    mask: Option<ValueId>,
    heads: i64,
    head_dim: i64,
    scale: f32,
    guard: bool,
    out: ValueId,
    quant: Option<Quants>,
    /// The `Q·Kᵀ` and `P·V` products.
    products: (NodeId, NodeId),
}

/// The attention whose probabilities are the `Softmax` `sm_name` (`sm_in` → `sm_out`), if the
/// whole pattern of [`FuseAttention`] is there.
fn site(g: &Graph, cons: &Consumers, sm_name: &str, sm_in: ValueId, sm_out: ValueId) -> Option<Site> {
    let (scores, mask) = scores_and_mask(g, sm_in)?;
    let (mm_out, post) = unscaled(g, scores)?;
    let (qk_id, mm) = producer_op(g, mm_out, "MatMul")?;
    sole_consumer(g, cons, mm_out)?;
    let (q_in, qq) = fake_quantized(g, cons, mm.input(0)?);
    let (k_in, qk) = fake_quantized(g, cons, mm.input(1)?);
    let (qt, c1) = scaled(g, q_in);
    let (kt, c2) = scaled(g, k_in);
    let scale = post * c1 * c2;
    let q = heads_of(g, qt, &[0, 2, 1, 3])?;
    let k = key_of(g, kt)?;
    let (heads, head_dim) = heads_and_size(g, qt, q)?;
    if !mask.is_none_or(|m| mask_supported(g, m)) {
        return None;
    }
    let (p, guard) = probabilities(g, cons, sm_out)?;
    let (v, out, qp, qv, pv_id) = context(g, cons, p)?;
    let quant = match (qq, qk, qp, qv) {
        (None, None, None, None) => None,
        (Some(q), Some(k), Some(probs), Some(v)) if c1 > 0.0 && c2 > 0.0 => {
            let divisor = match producer_op(g, scores, "Div") {
                Some((_, d)) => eval_f32_scalar(g, d.input(1)?)?,
                None => (1.0 / f64::from(post)) as f32,
            };
            // A scale applied before the quantization (`QL(c·x; s)`) is the kernel's quantization
            // of `x` with scale `s/c`; the dequantized product still carries `s_q·s_k`.
            let unscale = |(s, z): Q, c: f32| ((f64::from(s) / f64::from(c)) as f32, z);
            Some(Quants { q: unscale(q, c1), k: unscale(k, c2), scores_mul: q.0 * k.0, probs, v, divisor })
        }
        _ => return None,
    };
    let hd = heads * head_dim;
    let rank3 = |v: ValueId| {
        g.value(v).facts.shape.as_deref().is_some_and(|s| s.len() == 3 && s[2].compatible(&Dim::Known(hd)))
    };
    if !(rank3(out) && rank3(q) && rank3(k) && rank3(v)) || g.outputs().contains(&out) {
        return None;
    }
    let products = (qk_id, pv_id);
    Some(Site { name: sm_name.to_string(), q, k, v, mask, heads, head_dim, scale, guard, out, quant, products })
}

/// The softmax input split into scores and the additive mask, when an `Add` joins them (the
/// scores are the operand a `MatMul`, `Div` or `Mul` produced).
fn scores_and_mask(g: &Graph, sm_in: ValueId) -> Option<(ValueId, Option<ValueId>)> {
    let Some((_, add)) = producer_op(g, sm_in, "Add") else { return Some((sm_in, None)) };
    let (a, b) = (add.input(0)?, add.input(1)?);
    let is_scores =
        |v: ValueId| g.producer(v).is_some_and(|(_, n)| matches!(n.op_type.as_str(), "MatMul" | "Div" | "Mul"));
    if is_scores(a) && g.constant(a).is_none() && !is_scores(b) {
        Some((a, Some(b)))
    } else if is_scores(b) && !is_scores(a) {
        Some((b, Some(a)))
    } else {
        Some((a, Some(b)))
    }
}

/// The scores with their constant scaling peeled: `(q·k product, factor)`, for a `Div` by a
/// constant, a `Mul` by a scalar directly over the `MatMul`, or neither.
fn unscaled(g: &Graph, scores: ValueId) -> Option<(ValueId, f32)> {
    if let Some((_, d)) = producer_op(g, scores, "Div") {
        return Some((d.input(0)?, 1.0 / eval_f32_scalar(g, d.input(1)?)?));
    }
    if producer_op(g, scores, "Mul").is_some() {
        let (inner, c) = scaled(g, scores);
        if producer_op(g, inner, "MatMul").is_some() {
            return Some((inner, c));
        }
    }
    Some((scores, 1.0))
}

/// `(heads, head size)` of the query heads `qt` (`[B, H, S, D]`) split from `q`: `D` must be
/// known; an unknown `H` (a `-1` in the exporter's Reshape) is `q`'s width over `D`.
fn heads_and_size(g: &Graph, qt: ValueId, q: ValueId) -> Option<(i64, i64)> {
    let qdims = g.value(qt).facts.shape.clone()?;
    let [_, h, _, Dim::Known(head_dim)] = &qdims[..] else { return None };
    let head_dim = *head_dim;
    if head_dim <= 0 {
        return None;
    }
    let width = g.value(q).facts.shape.as_ref().and_then(|s| s.last()).and_then(Dim::known);
    match (h.known(), width) {
        (Some(h), _) => Some((h, head_dim)),
        (None, Some(w)) if w % head_dim == 0 => Some((w / head_dim, head_dim)),
        _ => None,
    }
}

/// Any rank-2 or rank-4 f32 mask; the kernel checks at run time that it is `[B, S]` or
/// `[B|1, 1, 1|S, S]` and fails loudly otherwise.
fn mask_supported(g: &Graph, m: ValueId) -> bool {
    let f = &g.value(m).facts;
    let rank_ok = f.shape.as_ref().is_none_or(|s| s.len() == 2 || s.len() == 4);
    f.dtype == Some(DType::F32) && rank_ok
}

/// The probabilities the context reads: the softmax output, or torch's `Where(IsNaN(p), 0, p)`
/// guard over it (then `true`).
fn probabilities(g: &Graph, cons: &Consumers, sm_out: ValueId) -> Option<(ValueId, bool)> {
    match cons.get(&sm_out)?.as_slice() {
        [(a, _), (b, _)] => {
            let (isnan, wh) =
                if g.node(*a).op_type == "IsNaN" { (g.node(*a), g.node(*b)) } else { (g.node(*b), g.node(*a)) };
            if isnan.op_type != "IsNaN"
                || wh.op_type != "Where"
                || wh.input(0) != isnan.output(0)
                || wh.input(2) != Some(sm_out)
            {
                return None;
            }
            if const_f32_scalar(g, wh.input(1)?) != Some(0.0) {
                return None;
            }
            Some((wh.output(0)?, true))
        }
        [_] => Some((sm_out, false)),
        _ => None,
    }
}

/// From the probabilities `p` to the merged heads: `(v, out)` of
/// `out = Reshape(Transpose₀₂₁₃(MatMul(p, Transpose₀₂₁₃(Reshape(v)))))`, through the sdpa
/// export's rank-preserving `Reshape` where it is there, with the quantizations of the product's
/// two inputs where each is `DequantizeLinear(QuantizeLinear(·))`.
#[allow(clippy::type_complexity)]
fn context(g: &Graph, cons: &Consumers, p: ValueId) -> Option<(ValueId, ValueId, Option<Q>, Option<Q>, NodeId)> {
    let (p, qp) = match sole_consumer(g, cons, p) {
        Some((_, ql, 0)) if ql.op_type == "QuantizeLinear" && ql.domain.is_empty() => {
            let (_, dq, _) = sole_consumer(g, cons, ql.output(0)?)
                .filter(|(_, n, slot)| n.op_type == "DequantizeLinear" && n.domain.is_empty() && *slot == 0)?;
            let qp = ql_params(g, ql)?;
            if ql_params(g, dq)? != qp {
                return None;
            }
            (dq.output(0)?, Some(qp))
        }
        _ => (p, None),
    };
    let (pv_id, pv, _) = sole_consumer(g, cons, p).filter(|(_, n, slot)| n.op_type == "MatMul" && *slot == 0)?;
    let (v_in, qv) = fake_quantized(g, cons, pv.input(1)?);
    let v = heads_of(g, v_in, &[0, 2, 1, 3])?;
    let mut ctx = pv.output(0)?;
    if let Some((_, same)) = data_consumer(g, cons, ctx).filter(|(_, n)| n.op_type == "Reshape") {
        // The sdpa export's rank-preserving `Reshape` back to [B, H, S, D].
        let o = same.output(0)?;
        if g.value(o).facts.shape.as_ref().map(Vec::len) != Some(4) {
            return None;
        }
        ctx = o;
    }
    let (_, back) = data_consumer(g, cons, ctx).filter(|(_, n)| n.op_type == "Transpose")?;
    if back.attr_ints("perm") != Some(&[0, 2, 1, 3][..]) {
        return None;
    }
    let (_, merge, _) = sole_consumer(g, cons, back.output(0)?).filter(|(_, n, _)| n.op_type == "Reshape")?;
    Some((v, merge.output(0)?, qp, qv, pv_id))
}

/// Each attention [`FuseAttention`] would fuse (unquantized): its `Softmax` and its `Q·Kᵀ` and
/// `P·V` `MatMul`s, in graph order. `InsertFakeQuant` quantizes the products' inputs from these.
pub(crate) fn attention_products(g: &Graph) -> Vec<(NodeId, NodeId, NodeId)> {
    let cons = g.consumers();
    g.nodes()
        .filter_map(|(id, sm)| {
            let s = softmax_site(g, &cons, sm)?;
            s.quant.is_none().then_some((id, s.products.0, s.products.1))
        })
        .collect()
}

/// The attention [`site`] around `sm` when it is a `Softmax` over its last axis.
fn softmax_site(g: &Graph, cons: &Consumers, sm: &crate::ir::Node) -> Option<Site> {
    if sm.op_type != "Softmax" || !sm.domain.is_empty() {
        return None;
    }
    let (i, o) = (sm.input(0)?, sm.output(0)?);
    let rank = g.value(i).facts.shape.as_ref().map_or(0, Vec::len) as i64;
    let axis = sm.attr_int("axis").unwrap_or(-1);
    if !(axis == -1 || axis == rank - 1) {
        return None;
    }
    site(g, cons, &sm.name, i, o)
}

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        "FuseAttention"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let precision = self.precision.clone().unwrap_or_else(|| "f32".into());
        if precision != "f32" && precision != "bf16" {
            return Err(PassError::Config { pass, message: format!("precision '{precision}' is not f32 or bf16") });
        }
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let cons = g.consumers();
                for (_, sm) in g.nodes() {
                    let Some(s) = softmax_site(g, &cons, sm) else { continue };
                    if let Some(qz) = &s.quant {
                        let attrs = qz.attrs(s.heads, s.head_dim);
                        emit_quantized_attention(p, &s.name, [s.q, s.k, s.v], s.mask, attrs, s.out);
                        report.rewritten += 1;
                        continue;
                    }
                    let spec = NodeSpec {
                        name: format!("sparsec.attn/{}", s.name),
                        op_type: "Attention".into(),
                        domain: DOMAIN.into(),
                        inputs: vec![Some(s.q), Some(s.mask.unwrap_or(s.q)), Some(s.k), Some(s.v)],
                        attrs: vec![
                            Attribute::int("has_mask", i64::from(s.mask.is_some())),
                            Attribute::int("num_heads", s.heads),
                            Attribute::int("head_dim", s.head_dim),
                            Attribute::float("scale", s.scale),
                            Attribute::int("qkv_fused", 0),
                            Attribute::int("zero_masked_rows", i64::from(s.guard)),
                            Attribute::string("precision", &precision),
                        ],
                        metadata: Vec::new(),
                    };
                    let facts = g.value(s.out).facts.type_only();
                    let y = p.op(spec, &format!("sparsec.attn/{}.out", s.name), facts);
                    p.replace_uses(s.out, y);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
