//! Matrix products: `MatMul` (numpy semantics, batched) and `Gemm`, plus their integer forms.

use super::{broadcast, def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def("", "MatMul", matmul));
    defs.push(def("", "MatMulInteger", matmul_integer));
    defs.push(def("", "QLinearMatMul", qlinear_matmul));
    defs.push(def("", "Gemm", gemm));
}

/// Output shape of `a @ b` under numpy rules.
pub(crate) fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let (a2, a_vec) = if a.len() == 1 { (vec![Dim::Known(1), a[0].clone()], true) } else { (a.to_vec(), false) };
    let (b2, b_vec) = if b.len() == 1 { (vec![b[0].clone(), Dim::Known(1)], true) } else { (b.to_vec(), false) };
    let k_a = &a2[a2.len() - 1];
    let k_b = &b2[b2.len() - 2];
    if !k_a.compatible(k_b) {
        return Err(format!("inner dimensions differ: {k_a} vs {k_b}"));
    }
    let batch_a = a2[..a2.len() - 2].to_vec();
    let batch_b = b2[..b2.len() - 2].to_vec();
    let mut out = broadcast(&[&batch_a, &batch_b])?;
    if !a_vec {
        out.push(a2[a2.len() - 2].clone());
    }
    if !b_vec {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(out)
}

fn matmul(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    if let (Some(a), Some(b)) = (cx.dtype(0), cx.dtype(1)) {
        if a != b {
            return Err(format!("operand dtypes differ: {a} and {b}"));
        }
    }
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
        _ => None,
    };
    Ok(vec![facts(cx.dtype(0).or(cx.dtype(1)), shape)])
}

fn matmul_integer(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
        _ => None,
    };
    Ok(vec![facts(Some(DType::I32), shape)])
}

fn qlinear_matmul(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let shape = match (cx.shape(0), cx.shape(3)) {
        (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
        _ => None,
    };
    Ok(vec![facts(cx.dtype(7), shape)])
}

fn gemm(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let ta = cx.attr_int("transA").unwrap_or(0) != 0;
    let tb = cx.attr_int("transB").unwrap_or(0) != 0;
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(a), Some(b)) => {
            if a.len() != 2 || b.len() != 2 {
                return Err(format!("Gemm operands must be 2-D, got ranks {} and {}", a.len(), b.len()));
            }
            let (m, ka) = if ta { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
            let (kb, n) = if tb { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
            if !ka.compatible(kb) {
                return Err(format!("inner dimensions differ: {ka} vs {kb}"));
            }
            Some(vec![m.clone(), n.clone()])
        }
        _ => None,
    };
    Ok(vec![facts(cx.dtype(0), shape)])
}
