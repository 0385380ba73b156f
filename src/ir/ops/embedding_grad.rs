//! sparsec's embedding-gradient operator, domain `ai.sparsec` (run by `sparsec-ops`, emitted by the
//! `Gather` gradient rule for f32 `[V, E]` tables): `EmbeddingGrad(Indices int64[...], dY f32[...,
//! E]) -> dTable f32[rows, E]`, attributes `rows` and `zero_rows`.

use super::sparsec::DOMAIN;
use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

pub const EMBEDDING_GRAD: &str = "EmbeddingGrad";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, EMBEDDING_GRAD, infer));
}

fn infer(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    if let Some(d) = cx.dtype(0).filter(|&d| d != DType::I64) {
        return Err(format!("input 0 (Indices) must be int64, got {d}"));
    }
    if let Some(d) = cx.dtype(1).filter(|&d| d != DType::F32) {
        return Err(format!("input 1 (dY) must be float32, got {d}"));
    }
    let rows = cx.attr_int("rows").filter(|&r| r > 0).ok_or("attribute 'rows' must be a positive integer")?;
    let width = cx.shape(1).and_then(|s| s.last().cloned()).unwrap_or(Dim::Unknown);
    Ok(vec![facts(Some(DType::F32), Some(vec![Dim::Known(rows), width]))])
}
