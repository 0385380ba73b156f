//! sparsec's GELU training operators, domain `ai.sparsec` (run by `sparsec-ops`, emitted into
//! training graphs by `passes::UseGeluTrain` and its gradient rule): `GeluTrain(X) -> Y` and
//! `GeluTrainGrad(dY, X) -> dX`, f32, every output shaped as `X`.

use super::sparsec::DOMAIN;
use super::{def, facts, InferCtx, OpDef};
use crate::ir::{DType, Facts};

pub const GELU_TRAIN: &str = "GeluTrain";
pub const GELU_TRAIN_GRAD: &str = "GeluTrainGrad";

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def(DOMAIN, GELU_TRAIN, |cx| same_as(cx, 0)));
    defs.push(def(DOMAIN, GELU_TRAIN_GRAD, |cx| same_as(cx, 1)));
}

fn same_as(cx: &InferCtx, x: usize) -> Result<Vec<Facts>, String> {
    for s in 0..cx.inputs.len() {
        if let Some(d) = cx.dtype(s).filter(|&d| d != DType::F32) {
            return Err(format!("input {s} must be float32, got {d}"));
        }
    }
    Ok(vec![facts(Some(DType::F32), cx.shape(x).cloned())])
}
