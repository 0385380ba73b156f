//! sparsec's LayerNorm gradient operator, domain `ai.sparsec` (run by `sparsec-ops`, emitted by the
//! `LayerNormalization` gradient rule in training graphs): `LayerNormGrad(dY[..., N], X[..., N],
//! Scale[N], Mean[..., 1], InvStdDev[..., 1]) -> (dX[..., N], dScale[N], dBias[N])`, all f32.

use super::sparsec::DOMAIN;
use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Facts};

pub const LAYER_NORM_GRAD: &str = "LayerNormGrad";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, LAYER_NORM_GRAD, infer));
}

fn infer(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    for s in 0..cx.inputs.len() {
        if let Some(d) = cx.dtype(s).filter(|&d| d != DType::F32) {
            return Err(format!("input {s} must be float32, got {d}"));
        }
    }
    if let Some(r) = cx.rank(2).filter(|&r| r != 1) {
        return Err(format!("input 2 (Scale) must be [N], got rank {r}"));
    }
    let x = facts(Some(DType::F32), cx.shape(1).cloned());
    let s = facts(Some(DType::F32), cx.shape(2).cloned());
    Ok(vec![x, s.clone(), s])
}
