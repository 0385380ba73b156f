//! Gradients of `MatMul` (numpy semantics, batched, broadcasting) and `Gemm`.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::{Attribute, Attrs, Dim, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("MatMul", Sources::Slots(&[0, 1]), matmul));
    rules.push(rule("Gemm", Sources::Slots(&[0, 1, 2]), gemm));
}

/// Y = A @ B: dA = G @ B^T, dB = A^T @ G, each reduced over broadcast batch axes. A 2-D
/// weight B (the linear-layer case) gets one GEMM over all rows: dB = A2^T @ G2 with A2, G2 the
/// operands flattened to matrices, instead of a batched product and a reduction.
fn matmul(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, a, w, y) = (n.g()?, n.input(0)?, n.input(1)?, n.output(0)?);
    let ra = b.need_rank(a, "MatMul gradient")?;
    let rb = b.need_rank(w, "MatMul gradient")?;
    if ra == 1 || rb == 1 {
        return matmul_vector(b, n, g, a, w, ra, rb);
    }
    let ry = b.need_rank(y, "MatMul gradient")?;
    let ga = if n.wants(0) {
        let wt = b.transpose_last2(w, rb);
        let prod = b.matmul(g, wt);
        Some(unbroadcast_batch(b, prod, y, a)?)
    } else {
        None
    };
    let gb = if !n.wants(1) {
        None
    } else if rb == 2 && ra >= 2 {
        let k = last_dim(b, a, ra);
        let nn = last_dim(b, y, ry);
        let minus1 = b.ints(&[-1]);
        let shape_a = b.op("Concat", &[minus1, k], vec![Attribute::int("axis", 0)]);
        let shape_g = b.op("Concat", &[minus1, nn], vec![Attribute::int("axis", 0)]);
        let a2 = if ra == 2 { a } else { b.reshape(a, shape_a) };
        let g2 = if ry == 2 { g } else { b.reshape(g, shape_g) };
        Some(b.op("Gemm", &[a2, g2], vec![Attribute::int("transA", 1)]))
    } else {
        let at = b.transpose_last2(a, ra);
        let prod = b.matmul(at, g);
        Some(unbroadcast_batch(b, prod, y, w)?)
    };
    Ok(vec![ga, gb])
}

/// The last dimension of `x` as a 1-element i64 value.
fn last_dim(b: &mut Gradient, x: ValueId, rank: usize) -> ValueId {
    b.dim_of(x, rank - 1)
}

/// Sums a batched product of rank `rp` down to operand `x` (rank `rx`): leading batch axes the
/// operand lacks, and batch axes where it has extent 1. The product's batch axes are those of
/// the node's output `y`; its two matrix axes are the operand's. When the other operand is a
/// matrix (no batch axes), the product already has the operand's shape.
fn unbroadcast_batch(b: &mut Gradient, prod: ValueId, y: ValueId, x: ValueId) -> Result<ValueId, AutodiffError> {
    let other = n_other(b, y, x);
    if other.is_some_and(|r| r <= 2) && b.rank(x) == b.rank(y) {
        return Ok(prod);
    }
    let (Some(ys), Some(xs)) = (b.shape(y), b.shape(x)) else {
        return Err(AutodiffError::Unsupported { reason: "MatMul gradient: operand ranks not known".into() });
    };
    let batch = ys.len().saturating_sub(2);
    let mut shape: Vec<Dim> = ys[..batch].to_vec();
    shape.extend(xs[xs.len().saturating_sub(2)..].iter().cloned());
    b.unbroadcast_from(prod, &shape, x)
}

/// The rank of the MatMul operand other than `x` (the node producing `y`).
fn n_other(b: &Gradient, y: ValueId, x: ValueId) -> Option<usize> {
    let (_, node) = b.graph().producer(y)?;
    let other = node.inputs.iter().flatten().copied().find(|&v| v != x)?;
    b.rank(other)
}

/// MatMul with a 1-D operand: promoted to a matrix (`[1,K]` or `[K,1]`) as numpy does, with the
/// gradient reshaped back. The other operand's batch axes are the product's, so it needs no
/// reduction.
fn matmul_vector(b: &mut Gradient, n: &NodeGrad, g: ValueId, a: ValueId, w: ValueId, ra: usize, rb: usize) -> R {
    let a2 = if ra == 1 { b.unsqueeze(a, &[0]) } else { a };
    let w2 = if rb == 1 { b.unsqueeze(w, &[1]) } else { w };
    let mut g2 = g;
    if ra == 1 {
        g2 = b.unsqueeze(g2, &[-2]);
    }
    if rb == 1 {
        g2 = b.unsqueeze(g2, &[-1]);
    }
    let (ra2, rb2) = (ra.max(2), rb.max(2));
    let ga = if n.wants(0) {
        let wt = b.transpose_last2(w2, rb2);
        let prod = b.matmul(g2, wt);
        let s = b.shape_of(a);
        if ra == 1 {
            let axes: Vec<i64> = (0..rb2 as i64 - 1).collect();
            let r = b.reduce_sum(prod, &axes, false);
            Some(b.reshape(r, s))
        } else {
            Some(prod)
        }
    } else {
        None
    };
    let gb = if n.wants(1) {
        let at = b.transpose_last2(a2, ra2);
        let prod = b.matmul(at, g2);
        if rb == 1 {
            let axes: Vec<i64> = (0..ra2 as i64 - 2).chain([ra2 as i64 - 1]).collect();
            let r = b.reduce_sum(prod, &axes, false);
            let s = b.shape_of(w);
            Some(b.reshape(r, s))
        } else {
            Some(prod)
        }
    } else {
        None
    };
    Ok(vec![ga, gb])
}

/// Y = alpha * A' @ B' + beta * C with A' = transA ? A^T : A, B' likewise. Each operand's
/// gradient is one more `Gemm` with the transposition flags chosen so no `Transpose` is needed:
/// dA = alpha * G @ B'^T (transposed when transA), dB = alpha * A'^T @ G (transposed when
/// transB), dC = beta * G reduced to C's shape.
fn gemm(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, a, w, y) = (n.g()?, n.input(0)?, n.input(1)?, n.output(0)?);
    let alpha = n.node.attr_float("alpha").unwrap_or(1.0);
    let beta = n.node.attr_float("beta").unwrap_or(1.0);
    let ta = n.node.attr_int("transA").unwrap_or(0) != 0;
    let tb = n.node.attr_int("transB").unwrap_or(0) != 0;
    let gemm = |b: &mut Gradient, x: ValueId, z: ValueId, t1: bool, t2: bool| {
        b.op(
            "Gemm",
            &[x, z],
            vec![
                Attribute::float("alpha", alpha),
                Attribute::int("transA", t1 as i64),
                Attribute::int("transB", t2 as i64),
            ],
        )
    };
    let ga = n.wants(0).then(|| if ta { gemm(b, w, g, tb, true) } else { gemm(b, g, w, false, !tb) });
    let gb = n.wants(1).then(|| if tb { gemm(b, g, a, true, ta) } else { gemm(b, a, g, !ta, false) });
    let gc = if n.wants(2) {
        let c = n.input(2)?;
        let dt = b.float_dtype(y);
        let gs = if beta == 1.0 { g } else { b.scale(g, beta as f64, dt) };
        Some(b.unbroadcast(gs, y, c)?)
    } else {
        None
    };
    Ok(vec![ga, gb, gc])
}
