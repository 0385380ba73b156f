//! sparsec's training attention operators, domain `ai.sparsec` (run by `sparsec-ops`, emitted into
//! training graphs by `passes::UseAttentionTrain` and its gradient rule):
//! `AttentionTrain(Q[B, H, S, D], Kt[B, H, D, S], V[B, H, S, D], Bias?) -> (Ctx[B, H, S, D],
//! Stats[B, H, S, 2])` and `AttentionTrainGrad(dCtx, Q, Kt, V, Ctx, Stats, Bias?) -> (dQ, dKt, dV)`,
//! all f32, attribute `scale`.

use super::sparsec::DOMAIN;
use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

pub const ATTENTION_TRAIN: &str = "AttentionTrain";
pub const ATTENTION_TRAIN_GRAD: &str = "AttentionTrainGrad";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, ATTENTION_TRAIN, forward));
    defs.push(def(DOMAIN, ATTENTION_TRAIN_GRAD, grad));
}

/// Every present input f32, and Q, Kt, V (at `first..first + 3`) of rank 4 where known.
fn check(cx: &InferCtx, first: usize) -> Result<(), String> {
    for s in 0..cx.inputs.len() {
        if let Some(d) = cx.dtype(s).filter(|&d| d != DType::F32) {
            return Err(format!("input {s} must be float32, got {d}"));
        }
    }
    for s in first..first + 3 {
        if let Some(r) = cx.rank(s).filter(|&r| r != 4) {
            return Err(format!("input {s} must have rank 4, got {r}"));
        }
    }
    Ok(())
}

fn forward(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    check(cx, 0)?;
    let q = cx.shape(0).cloned();
    let stats = q.clone().map(|mut s| {
        s[3] = Dim::Known(2);
        s
    });
    Ok(vec![facts(Some(DType::F32), q), facts(Some(DType::F32), stats)])
}

fn grad(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    check(cx, 1)?;
    Ok((1..4).map(|s| facts(Some(DType::F32), cx.shape(s).cloned())).collect())
}
