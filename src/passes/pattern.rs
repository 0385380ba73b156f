//! Small pattern-matching helpers the lowering passes share: constants, sole consumers, the zero
//! structure of weight matrices, per-tensor uint8 quantizations, the exact-erf GELU chain, and the `QuantizedAttention` node
//! both attention fusions emit.

use std::collections::HashMap;

use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Graph, Node, NodeId, NodeSpec, Patch, ValueId};

pub(crate) type Consumers = HashMap<ValueId, Vec<(NodeId, usize)>>;

/// The value of `v` when it is a constant scalar (or one-element tensor) of f32.
pub(crate) fn const_f32_scalar(g: &Graph, v: ValueId) -> Option<f32> {
    let t = g.constant(v)?;
    (t.numel() == 1).then(|| t.as_f32s()).flatten().map(|x| x[0])
}

/// The value of a scalar computed from constants and static shapes, in f32 as ONNX Runtime would
/// compute it: a constant, a shape entry known from the facts, or `Cast`, `Sqrt`, `Div`, `Mul`,
/// `Reciprocal` of such values (the attention scale torch's exporters emit as
/// `Sqrt(1 / Sqrt(Cast(Shape(q)[-1])))`).
pub(crate) fn eval_f32_scalar(g: &Graph, v: ValueId) -> Option<f32> {
    fn go(g: &Graph, v: ValueId, depth: usize) -> Option<f32> {
        if depth == 0 {
            return None;
        }
        if let Some(c) = const_f32_scalar(g, v) {
            return Some(c);
        }
        let f = &g.value(v).facts;
        if let Some([d]) = f.sym_value.as_deref() {
            return d.known().map(|x| x as f32);
        }
        if let Some(t) = g.constant(v).filter(|t| t.numel() == 1) {
            return t.as_i64s().map(|x| x[0] as f32);
        }
        let (_, n) = g.producer(v)?;
        if !n.domain.is_empty() {
            return None;
        }
        let arg = |i: usize| n.input(i).and_then(|x| go(g, x, depth - 1));
        match n.op_type.as_str() {
            "Cast" | "Identity" => arg(0),
            "Sqrt" => arg(0).map(f32::sqrt),
            "Reciprocal" => arg(0).map(|x| 1.0 / x),
            "Div" => Some(arg(0)? / arg(1)?),
            "Mul" => Some(arg(0)? * arg(1)?),
            _ => None,
        }
    }
    go(g, v, 12)
}

/// The node producing `v` when its op type is `op` (default domain).
pub(crate) fn producer_op<'g>(g: &'g Graph, v: ValueId, op: &str) -> Option<(NodeId, &'g Node)> {
    g.producer(v).filter(|(_, n)| n.op_type == op && n.domain.is_empty())
}

/// The one node reading `v`, when exactly one does and `v` is not a graph output.
pub(crate) fn sole_consumer<'g>(g: &'g Graph, cons: &Consumers, v: ValueId) -> Option<(NodeId, &'g Node, usize)> {
    if g.outputs().contains(&v) {
        return None;
    }
    match cons.get(&v).map(Vec::as_slice) {
        Some([(id, slot)]) => Some((*id, g.node(*id), *slot)),
        _ => None,
    }
}

/// The other input of a two-input node, given one of them.
pub(crate) fn other_input(n: &Node, v: ValueId) -> Option<ValueId> {
    match (n.input(0), n.input(1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

/// Fraction of a `[K, N]` weight that a `[4, 1]`-block kernel stores: for every group of 4
/// consecutive output channels, the input indices non-zero in any of them, over `K·N/4` such
/// slots (`N` padded to a multiple of 4). 1.0 for a dense matrix; 0.2 for 80% `[4, 1]` blocks.
pub(crate) fn stored_density_4x1(nonzero: impl Fn(usize, usize) -> bool, k: usize, n: usize) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    let blocks = n.div_ceil(4);
    let mut stored = 0usize;
    for b in 0..blocks {
        for kk in 0..k {
            if (b * 4..(b * 4 + 4).min(n)).any(|j| nonzero(kk, j)) {
                stored += 1;
            }
        }
    }
    stored as f64 / (blocks * k) as f64
}

/// How the zeros of a `[K, N]` weight (ONNX MatMul layout) are arranged, in PyTorch's `[out, in]`
/// terms: `"[4, 1]"` when at least [`BLOCK_ZERO_SHARE`] of the zeros lie in aligned all-zero
/// blocks of 4 output channels sharing one input, `"[1, 4]"` likewise for aligned runs of 4 inputs
/// (SparseML's `block4`), `"dense"` under 1% zeros, else `"unstructured"`. (A share, not all: int8
/// rounding zeroes a few small weights inside the kept blocks.)
pub fn weight_structure(nonzero: impl Fn(usize, usize) -> bool, k: usize, n: usize) -> &'static str {
    let zeros = (0..k).flat_map(|kk| (0..n).map(move |j| (kk, j))).filter(|&(kk, j)| !nonzero(kk, j)).count();
    if (zeros as f64) < 0.01 * (k * n) as f64 {
        return "dense";
    }
    let share = |in_blocks: usize| in_blocks as f64 >= BLOCK_ZERO_SHARE * zeros as f64;
    let in_4x1: usize = if n.is_multiple_of(4) {
        (0..k).map(|kk| (0..n / 4).filter(|&b| (0..4).all(|i| !nonzero(kk, b * 4 + i))).count() * 4).sum()
    } else {
        0
    };
    if share(in_4x1) {
        return "[4, 1]";
    }
    let in_1x4: usize = if k.is_multiple_of(4) {
        (0..n).map(|j| (0..k / 4).filter(|&b| (0..4).all(|i| !nonzero(b * 4 + i, j))).count() * 4).sum()
    } else {
        0
    };
    if share(in_1x4) {
        return "[1, 4]";
    }
    "unstructured"
}

/// The share of a weight's zeros that must lie in all-zero blocks for [`weight_structure`] to
/// name the block pattern (the kernels' pattern detection uses the same share).
pub const BLOCK_ZERO_SHARE: f64 = 0.95;

/// A per-tensor uint8 quantization: `(scale, zero point)`.
pub(crate) type Q = (f32, u8);

/// The value of `v` when it is a constant uint8 scalar.
pub(crate) fn const_u8_scalar(g: &Graph, v: ValueId) -> Option<u8> {
    let t = g.constant(v)?;
    (t.dtype == DType::U8 && t.numel() == 1).then(|| t.raw()[0])
}

/// `QL`'s constants, when `n` is a per-tensor `QuantizeLinear` to uint8.
pub(crate) fn ql_params(g: &Graph, n: &Node) -> Option<Q> {
    let scale = const_f32_scalar(g, n.input(1)?)?;
    match n.input(2) {
        Some(z) => Some((scale, const_u8_scalar(g, z)?)),
        None => None,
    }
}

/// `QL(x)` → `(x, constants)`.
pub(crate) fn quantized(g: &Graph, v: ValueId) -> Option<(ValueId, Q)> {
    let (_, n) = producer_op(g, v, "QuantizeLinear")?;
    Some((n.input(0)?, ql_params(g, n)?))
}

/// Emits `ai.sparsec::QuantizedAttention(q, k, v[, mask])` named `sparsec.qattn/<name>` with
/// `attrs`, and points the consumers of `out` (the attention subgraph's merged heads) at it; the
/// replaced subgraph is left for `RemoveDead`.
pub(crate) fn emit_quantized_attention(
    p: &mut Patch,
    name: &str,
    [q, k, v]: [ValueId; 3],
    mask: Option<ValueId>,
    attrs: Vec<Attribute>,
    out: ValueId,
) {
    let mut inputs = vec![Some(q), Some(k), Some(v)];
    inputs.extend(mask.map(Some));
    let spec = NodeSpec {
        name: format!("sparsec.qattn/{name}"),
        op_type: "QuantizedAttention".into(),
        domain: DOMAIN.into(),
        inputs,
        attrs,
        metadata: Vec::new(),
    };
    let facts = p.graph().value(out).facts.type_only();
    let y = p.op(spec, &format!("sparsec.qattn/{name}.out"), facts);
    p.replace_uses(out, y);
}

/// The quantization `(scale, zero point)` as the two attributes `<name>_scale`, `<name>_zero_point`.
pub(crate) fn quant_attrs(name: &str, (s, z): Q) -> [Attribute; 2] {
    [Attribute::float(format!("{name}_scale"), s), Attribute::int(format!("{name}_zero_point"), i64::from(z))]
}

/// Whether `v` is a constant f32 scalar within 1e-6 (relative) of `want`.
pub(crate) fn const_near(g: &Graph, v: ValueId, want: f32) -> bool {
    const_f32_scalar(g, v).is_some_and(|c| (c - want).abs() <= 1e-6 * want.abs().max(1.0))
}

/// The exact-erf GELU of `y` (its output and its nodes): `Mul(Mul(y, Add(Erf(Div(y, √2)), 1)), 0.5)`,
/// `Mul(y, Mul(0.5, Add(Erf(Div(y, √2)), 1)))`, or `Gelu(y)`.
pub(crate) fn gelu_tail(g: &Graph, cons: &Consumers, y: ValueId) -> Option<(ValueId, Vec<NodeId>)> {
    if g.outputs().contains(&y) {
        return None;
    }
    let uses = cons.get(&y)?;
    if let [(id, 0)] = uses.as_slice() {
        let n = g.node(*id);
        if n.op_type == "Gelu" && n.attr_str("approximate").unwrap_or("none") == "none" {
            return Some((n.output(0)?, vec![*id]));
        }
    }
    let [(u1, _), (u2, _)] = uses.as_slice() else { return None };
    let (div_id, mul_id) = if g.node(*u1).op_type == "Div" { (*u1, *u2) } else { (*u2, *u1) };
    let (div, mul) = (g.node(div_id), g.node(mul_id));
    if div.op_type != "Div" || div.input(0) != Some(y) || !const_near(g, div.input(1)?, std::f32::consts::SQRT_2) {
        return None;
    }
    let (erf_id, erf, _) = sole_consumer(g, cons, div.output(0)?).filter(|(_, n, _)| n.op_type == "Erf")?;
    let (add_id, add, _) = sole_consumer(g, cons, erf.output(0)?).filter(|(_, n, _)| n.op_type == "Add")?;
    if !const_near(g, other_input(add, erf.output(0)?)?, 1.0) {
        return None;
    }
    if mul.op_type != "Mul" {
        return None;
    }
    if other_input(mul, y) == add.output(0) {
        // Mul(Mul(y, 1 + erf), 0.5): torch's legacy exporter.
        let (half_id, half, _) = sole_consumer(g, cons, mul.output(0)?).filter(|(_, n, _)| n.op_type == "Mul")?;
        if !const_near(g, other_input(half, mul.output(0)?)?, 0.5) {
            return None;
        }
        return Some((half.output(0)?, vec![div_id, erf_id, add_id, mul_id, half_id]));
    }
    // Mul(y, Mul(0.5, 1 + erf)): the dynamo exporter.
    let (half_id, half, _) = sole_consumer(g, cons, add.output(0)?).filter(|(_, n, _)| n.op_type == "Mul")?;
    if !const_near(g, other_input(half, add.output(0)?)?, 0.5) || other_input(mul, y) != half.output(0) {
        return None;
    }
    Some((mul.output(0)?, vec![div_id, erf_id, add_id, half_id, mul_id]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_density_counts_block_unions() {
        // [K=2, N=8]: block 0 has k=0 non-zero in one channel, block 1 all zero.
        let w = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let d = stored_density_4x1(|k, j| w[k * 8 + j] != 0, 2, 8);
        assert_eq!(d, 0.25);
        assert_eq!(stored_density_4x1(|_, _| true, 3, 5), 1.0);
    }

    #[test]
    fn weight_structure_names_the_block_pattern() {
        // [K=4, N=8]: zero the first 4 output channels of input 1 → [4, 1].
        let w4x1 = |k: usize, j: usize| !(k == 1 && j < 4);
        assert_eq!(weight_structure(w4x1, 4, 8), "[4, 1]");
        let w1x4 = |k: usize, j: usize| !(k < 4 && j == 2);
        assert_eq!(weight_structure(w1x4, 4, 8), "[1, 4]");
        let scattered = |k: usize, j: usize| !(k == 0 && j == 0 || k == 3 && j == 5);
        assert_eq!(weight_structure(scattered, 4, 8), "unstructured");
        assert_eq!(weight_structure(|_, _| true, 4, 8), "dense");
        // [K=40, N=8]: 40 zero [4, 1] blocks (160 zeros) and 2 zeros inside kept blocks → [4, 1];
        // 10 stray zeros (6% of them) → unstructured.
        let rounded = |k: usize, j: usize| !(j < 4 || (k < 2 && j == 5));
        assert_eq!(weight_structure(rounded, 40, 8), "[4, 1]");
        let stray = |k: usize, j: usize| !(j < 4 || (k % 2 == 1 && k < 20 && j == 5));
        assert_eq!(weight_structure(stray, 40, 8), "unstructured");
    }
}
