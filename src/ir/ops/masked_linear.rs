//! sparsec's masked-linear training operators, domain `ai.sparsec` (run by `sparsec-ops`, emitted
//! into training graphs by `passes::UseMaskedLinear` and its gradient rule):
//! `MaskedLinear(X[..., K], W[K, N], M[K, N], B[N]?) -> Y[..., N]` (`Y = X·(W ⊙ M) + B`),
//! `MaskedLinearGradInput(dY[..., N], W[K, N], M[K, N]) -> dX[..., K]` and
//! `MaskedLinearGradWeight(X[..., K], dY[..., N], M[K, N]) -> dW[K, N]`, all f32. Each takes an
//! optional string attribute `precision`: `"f32"` (the default) or `"bf16"` (products of
//! bf16-rounded operands summed in f32, see `sparsec-ops`).

use super::sparsec::DOMAIN;
use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

pub const MASKED_LINEAR: &str = "MaskedLinear";
pub const MASKED_LINEAR_GRAD_INPUT: &str = "MaskedLinearGradInput";
pub const MASKED_LINEAR_GRAD_WEIGHT: &str = "MaskedLinearGradWeight";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, MASKED_LINEAR, forward));
    defs.push(def(DOMAIN, MASKED_LINEAR_GRAD_INPUT, grad_input));
    defs.push(def(DOMAIN, MASKED_LINEAR_GRAD_WEIGHT, grad_weight));
}

/// `[K, N]` of the weight-shaped inputs (`slots`, all f32 and all of one shape where known).
fn weight_dims(cx: &InferCtx, slots: &[usize]) -> Result<Option<(Dim, Dim)>, String> {
    let mut found: Option<Vec<Dim>> = None;
    for &s in slots {
        if let Some(d) = cx.dtype(s).filter(|&d| d != DType::F32) {
            return Err(format!("input {s} must be float32, got {d}"));
        }
        let Some(shape) = cx.shape(s) else { continue };
        if shape.len() != 2 {
            return Err(format!("input {s} must be a [K, N] matrix, got rank {}", shape.len()));
        }
        if let Some(f) = found.as_ref().filter(|f| !(f[0].compatible(&shape[0]) && f[1].compatible(&shape[1]))) {
            return Err(format!("the weight and the mask differ in shape: {f:?} and {shape:?}"));
        }
        found.get_or_insert_with(|| shape.clone());
    }
    Ok(found.map(|f| (f[0].clone(), f[1].clone())))
}

/// `x`'s shape with its last axis (which must be compatible with `want`) replaced by `new`.
fn swap_last(cx: &InferCtx, slot: usize, want: Option<&Dim>, new: Option<&Dim>) -> Result<Option<Vec<Dim>>, String> {
    let Some(x) = cx.shape(slot) else { return Ok(None) };
    let Some(last) = x.last() else { return Err(format!("input {slot} must have rank >= 1")) };
    if let Some(w) = want {
        if !last.compatible(w) {
            return Err(format!("input {slot}'s last axis {last} differs from the weight's {w}"));
        }
    }
    let mut out = x.clone();
    *out.last_mut().expect("rank checked") = new.cloned().unwrap_or(Dim::Unknown);
    Ok(Some(out))
}

fn forward(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let kn = weight_dims(cx, &[1, 2])?;
    if let (Some(b), Some((_, n))) = (cx.shape(3), &kn) {
        if b.len() != 1 || !b[0].compatible(n) {
            return Err(format!("the bias must be [N = {n}], got {b:?}"));
        }
    }
    let shape = swap_last(cx, 0, kn.as_ref().map(|(k, _)| k), kn.as_ref().map(|(_, n)| n))?;
    Ok(vec![facts(Some(DType::F32), shape)])
}

fn grad_input(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let kn = weight_dims(cx, &[1, 2])?;
    let shape = swap_last(cx, 0, kn.as_ref().map(|(_, n)| n), kn.as_ref().map(|(k, _)| k))?;
    Ok(vec![facts(Some(DType::F32), shape)])
}

fn grad_weight(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let kn = weight_dims(cx, &[2])?;
    swap_last(cx, 0, kn.as_ref().map(|(k, _)| k), None)?;
    swap_last(cx, 1, kn.as_ref().map(|(_, n)| n), None)?;
    Ok(vec![facts(Some(DType::F32), kn.map(|(k, n)| vec![k, n]))])
}
