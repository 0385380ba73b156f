//! sparsec's own operators, domain `ai.sparsec` (run by the `sparsec-ops` ONNX Runtime kernels):
//! `SparseLinear`, `SparseLinearF32`, `Attention`, `QuantizedAttention` and `LayerNorm`, emitted by the sparse-execution
//! lowering passes.
//!
//! `SparseLinear`'s weight (input 1) is a dense int8 `[K, N]` initializer, or — with attributes
//! `weight_format = "block4x1"` and `weight_shape = [K, N]` — the 1-D int8 stored form of its
//! block-sparse packing (`sparsec_kernels::linear_i8::packed`: a bit per (4-channel block, input
//! index), then the kernel's 16-weight groups), which the kernel loads by copying.

use super::{def, facts, InferCtx, OpDef};
use crate::ir::{Attrs, DType, Dim, Facts, Graph, Node, Tensor};
use sparsec_kernels::linear_i8::packed;

/// The domain of sparsec's operators.
pub const DOMAIN: &str = "ai.sparsec";

/// `SparseLinear`'s `weight_format` for packed block-sparse weights.
pub const BLOCK4X1: &str = "block4x1";

/// How a `SparseLinear` node stores its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// int8 `[K, N]`.
    Dense,
    /// The packed stored form of a `[K, N]` weight.
    Block4x1 { k: usize, n: usize },
}

/// The weight format a `SparseLinear` node's attributes declare.
pub fn weight_format(node: &Node) -> Result<WeightFormat, String> {
    match node.attrs.attr_str("weight_format").unwrap_or("dense") {
        "dense" => Ok(WeightFormat::Dense),
        BLOCK4X1 => match node.attrs.attr_ints("weight_shape") {
            Some(&[k, n]) if k > 0 && n > 0 => Ok(WeightFormat::Block4x1 { k: k as usize, n: n as usize }),
            other => {
                Err(format!("weight_format '{BLOCK4X1}' needs weight_shape = [K, N] with K, N > 0, got {other:?}"))
            }
        },
        other => Err(format!("unknown weight_format '{other}' (dense, {BLOCK4X1})")),
    }
}

/// `(K, N, W)`: a dense int8 `[K, N]` weight, row-major.
pub type DenseWeight = (usize, usize, Vec<i8>);

/// The dense int8 `[K, N]` weight of a `SparseLinear` node whose weight is an initializer, decoded
/// from the packed form when it is packed: `(K, N, W)`. `None` when the weight is not a constant.
pub fn linear_weight_dense(g: &Graph, node: &Node) -> Option<Result<DenseWeight, String>> {
    let t = g.constant(node.input(1)?)?;
    Some(decode_weight(node, t))
}

/// The dense int8 `[K, N]` tensor of every packed `SparseLinear` weight initializer, by value
/// (for reports that count zeros per initializer); undecodable weights are left out.
pub fn packed_weights_dense(g: &Graph) -> std::collections::HashMap<crate::ir::ValueId, Tensor> {
    let mut out = std::collections::HashMap::new();
    for (_, node) in g.nodes() {
        if node.domain != DOMAIN || node.op_type != "SparseLinear" || weight_format(node) == Ok(WeightFormat::Dense) {
            continue;
        }
        if let (Some(v), Some(Ok((k, n, w)))) = (node.input(1), linear_weight_dense(g, node)) {
            out.insert(v, Tensor::from_i8(vec![k as i64, n as i64], &w));
        }
    }
    out
}

fn decode_weight(node: &Node, t: &Tensor) -> Result<DenseWeight, String> {
    if t.dtype != DType::I8 {
        return Err(format!("weight must be int8, got {}", t.dtype));
    }
    let bytes: Vec<i8> = t.raw().iter().map(|&b| b as i8).collect();
    match weight_format(node)? {
        WeightFormat::Dense => match t.dims[..] {
            [k, n] => Ok((k as usize, n as usize, bytes)),
            _ => Err(format!("weight must be [K, N], got {:?}", t.dims)),
        },
        WeightFormat::Block4x1 { k, n } => {
            let w = packed::decode_dense(&bytes, k, n).map_err(|e| format!("packed weight: {e}"))?;
            Ok((k, n, w))
        }
    }
}

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, "SparseLinear", |cx| linear(cx, DType::I8)));
    defs.push(def(DOMAIN, "SparseLinearF32", |cx| linear(cx, DType::F32)));
    defs.push(def(DOMAIN, "Attention", attention));
    defs.push(def(DOMAIN, "QuantizedAttention", quantized_attention));
    defs.push(def(DOMAIN, "LayerNorm", layer_norm));
}

/// `X f32[..., N] -> f32[..., N]` (scale and bias `[N]`).
fn layer_norm(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    if let (Some(xs), Some(s)) = (x.shape.as_ref(), cx.shape(1)) {
        if let (Some(last), [n]) = (xs.last(), &s[..]) {
            if !last.compatible(n) {
                return Err(format!("input's last axis {last} differs from the scale's length {n}"));
            }
        }
    }
    Ok(vec![facts(Some(DType::F32), x.shape.clone())])
}

/// `X[..., K] · W[K, N] -> f32[..., N]`; a packed weight is checked against its `weight_shape`.
fn linear(cx: &InferCtx, weight: DType) -> Result<Vec<Facts>, String> {
    if let Some(d) = cx.dtype(1) {
        if d != weight {
            return Err(format!("weight must be {weight}, got {d}"));
        }
    }
    let format = if weight == DType::I8 { weight_format(cx.node)? } else { WeightFormat::Dense };
    let w_shape = match format {
        WeightFormat::Dense => cx.shape(1).cloned(),
        WeightFormat::Block4x1 { k, n } => {
            if let Some(w) = cx.shape(1).filter(|w| w.len() != 1) {
                return Err(format!("a packed weight must be 1-D, got rank {}", w.len()));
            }
            if let Some(t) = cx.opt_input(1).and_then(|f| f.constant.as_ref()) {
                decode_weight(cx.node, t)?;
            }
            Some(vec![Dim::Known(k as i64), Dim::Known(n as i64)])
        }
    };
    let shape = match (cx.shape(0), w_shape.as_ref()) {
        (Some(x), Some(w)) => {
            let [k, n] = &w[..] else { return Err(format!("weight must be [K, N], got rank {}", w.len())) };
            let Some(last) = x.last() else { return Err("input must have rank >= 1".into()) };
            if !last.compatible(k) {
                return Err(format!("input's last axis {last} differs from the weight's K {k}"));
            }
            let mut out = x.clone();
            *out.last_mut().expect("rank checked") = n.clone();
            Some(out)
        }
        _ => None,
    };
    Ok(vec![facts(Some(DType::F32), shape)])
}

/// `[B, S, *] -> f32[B, S, num_heads·head_dim]`.
fn attention(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let (Some(h), Some(d)) = (cx.attr_int("num_heads"), cx.attr_int("head_dim")) else {
        return Err("attributes num_heads and head_dim are required".into());
    };
    let shape = match cx.shape(0) {
        Some(x) if x.len() == 3 => Some(vec![x[0].clone(), x[1].clone(), Dim::Known(h * d)]),
        Some(x) => return Err(format!("input must be [B, S, *], got rank {}", x.len())),
        None => None,
    };
    Ok(vec![facts(Some(DType::F32), shape)])
}

/// `Q, K, V f32[B, S, num_heads·head_dim] (, mask) -> f32[B, S, num_heads·head_dim]`, with every
/// quantization constant present (the kernel reads them when ORT creates it).
fn quantized_attention(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let (Some(h), Some(d)) = (cx.attr_int("num_heads"), cx.attr_int("head_dim")) else {
        return Err("attributes num_heads and head_dim are required".into());
    };
    for t in ["q", "k", "v", "scores", "probs", "context"] {
        // The scores' and the context's requantization are optional (sparsec's own QAT form).
        let optional = t == "scores" || t == "context";
        if !optional && cx.node.attrs.attr_float(&format!("{t}_scale")).is_none() {
            return Err(format!("attribute {t}_scale is required"));
        }
        if let Some(z) = cx.attr_int(&format!("{t}_zero_point")) {
            if !(0..=255).contains(&z) {
                return Err(format!("attribute {t}_zero_point = {z} is not in 0..=255"));
            }
        }
    }
    for a in ["scores_mul", "divisor", "context_mul"] {
        if cx.node.attrs.attr_float(a).is_none() {
            return Err(format!("attribute {a} is required"));
        }
    }
    let hd = Dim::Known(h * d);
    for i in 0..3 {
        if let Some(x) = cx.shape(i) {
            if x.len() != 3 || !x[2].compatible(&hd) {
                return Err(format!("input {i} must be [B, S, {}], got {x:?}", h * d));
            }
        }
    }
    let shape = cx.shape(0).map(|x| vec![x[0].clone(), x[1].clone(), hd]);
    Ok(vec![facts(Some(DType::F32), shape)])
}
