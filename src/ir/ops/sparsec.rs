//! sparsec's own operators, domain `ai.sparsec` (run by the `sparsec-ops` ONNX Runtime kernels):
//! `SparseLinear`, `SparseLinearF32` and `Attention`, emitted by the sparse-execution lowering passes.

use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

/// The domain of sparsec's operators.
pub const DOMAIN: &str = "ai.sparsec";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, "SparseLinear", |cx| linear(cx, DType::I8)));
    defs.push(def(DOMAIN, "SparseLinearF32", |cx| linear(cx, DType::F32)));
    defs.push(def(DOMAIN, "Attention", attention));
}

/// `X[..., K] · W[K, N] -> f32[..., N]`.
fn linear(cx: &InferCtx, weight: DType) -> Result<Vec<Facts>, String> {
    if let Some(d) = cx.dtype(1) {
        if d != weight {
            return Err(format!("weight must be {weight}, got {d}"));
        }
    }
    let shape = match (cx.shape(0), cx.shape(1)) {
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
