//! Gradients of the gathers: rows picked by `Gather` (embedding lookups), `GatherElements` and
//! `GatherND` are scattered back with summation (`ScatterND` / `ScatterElements` with
//! `reduction="add"`, opset 16+) into zeros shaped like the data; with
//! `GradOptions::sparsec_training_ops`, an embedding table's (an f32 `[V, E]` of static shape
//! gathered on axis 0) is one `ai.sparsec::EmbeddingGrad` instead.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::ops::embedding_grad::EMBEDDING_GRAD;
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Dim, NodeSpec, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("Gather", Sources::Slots(&[0]), gather));
    rules.push(rule("GatherElements", Sources::Slots(&[0]), gather_elements));
    rules.push(rule("GatherND", Sources::Slots(&[0]), gather_nd));
}

/// Negative indices wrapped by the extent `d` (a 1-element i64 value), as the gathers allow them;
/// the result keeps the rank of `idx`.
fn wrap_indices(b: &mut Gradient, idx: ValueId, d: ValueId) -> ValueId {
    let idx = match b.dtype(idx) {
        Some(crate::ir::DType::I64) => idx,
        _ => b.cast(idx, crate::ir::DType::I64),
    };
    let d = match b.constant_of(d).and_then(|t| t.as_i64s()) {
        Some(v) if v.len() == 1 => b.constant(crate::ir::Tensor::scalar_i64(v[0])),
        _ => b.squeeze(d, &[0]),
    };
    let zero = b.constant(crate::ir::Tensor::scalar_i64(0));
    let neg = b.op("Less", &[idx, zero], vec![]);
    let wrapped = b.add(idx, d);
    b.where_(neg, wrapped, idx)
}

fn scatter_add(
    b: &mut Gradient,
    op: &str,
    data: ValueId,
    idx: ValueId,
    updates: ValueId,
    axis: Option<i64>,
) -> ValueId {
    let dt = b.float_dtype(data);
    let zeros = b.zeros_like(data, dt);
    let mut attrs = vec![Attribute::string("reduction", "add")];
    if let Some(a) = axis {
        attrs.push(Attribute::int("axis", a));
    }
    b.op(op, &[zeros, idx, updates], attrs)
}

/// The row count of `data` when it is an f32 `[V, E]` table of static shape (an embedding):
/// its axis-0 gather gradient is one `ai.sparsec::EmbeddingGrad`.
fn embedding_rows(b: &Gradient, data: ValueId) -> Option<i64> {
    if !b.sparsec_training_ops {
        return None;
    }
    let f = b.facts(data);
    match (f.dtype, f.shape.as_deref()) {
        (Some(DType::F32), Some([Dim::Known(v), Dim::Known(e)])) if *v > 0 && *e > 0 => Some(*v),
        _ => None,
    }
}

/// y = data.take(indices, axis): d data = zeros, with g's slices added at the indexed rows.
/// For axis 0 this is `ScatterND(zeros, indices[..., None], g, add)`; other axes are moved to
/// the front and back with `Transpose`.
fn gather(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, data, idx) = (n.g()?, n.input(0)?, n.input(1)?);
    let r = b.need_rank(data, "Gather gradient")?;
    let q = b.need_rank(idx, "Gather gradient")?;
    let axis = n.node.attr_int("axis").unwrap_or(0);
    let a = if axis < 0 { axis + r as i64 } else { axis };
    if !(0..r as i64).contains(&a) {
        return Err(n.error(format!("axis {axis} out of range for rank {r}")));
    }
    let a = a as usize;
    let d = b.dim_of(data, a);
    let idx = wrap_indices(b, idx, d);
    let idx = b.unsqueeze(idx, &[-1]);
    if a == 0 {
        if let Some(rows) = embedding_rows(b, data) {
            // A table `[V, E]` of f32: one `EmbeddingGrad` pass (indices wrapped by the kernel).
            let raw = n.input(1)?;
            let raw = match b.dtype(raw) {
                Some(DType::I64) => raw,
                _ => b.cast(raw, DType::I64),
            };
            let name = b.next_name(EMBEDDING_GRAD);
            let spec = NodeSpec::new(EMBEDDING_GRAD, name, &[raw, g]).domain(DOMAIN).attr(Attribute::int("rows", rows));
            let (node, outs) = b.add_spec_node(spec, 1);
            b.note_embedding_grad(outs[0], node);
            return Ok(vec![Some(outs[0])]);
        }
        return Ok(vec![Some(scatter_add(b, "ScatterND", data, idx, g, None))]);
    }
    let perm_d: Vec<i64> = std::iter::once(a).chain((0..r).filter(|&i| i != a)).map(|i| i as i64).collect();
    let perm_g: Vec<i64> = (a..a + q).chain(0..a).chain(a + q..r + q - 1).map(|i| i as i64).collect();
    let mut inv = vec![0i64; r];
    for (i, &p) in perm_d.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let dt = b.float_dtype(data);
    let zeros = b.zeros_like(data, dt);
    let zeros_t = b.transpose(zeros, &perm_d);
    let g_t = b.transpose(g, &perm_g);
    let s = b.op("ScatterND", &[zeros_t, idx, g_t], vec![Attribute::string("reduction", "add")]);
    Ok(vec![Some(b.transpose(s, &inv))])
}

/// y = gather_elements(data, indices, axis): d data = ScatterElements(zeros, indices, g, add).
fn gather_elements(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, data, idx) = (n.g()?, n.input(0)?, n.input(1)?);
    let r = b.need_rank(data, "GatherElements gradient")?;
    let axis = n.node.attr_int("axis").unwrap_or(0);
    let a = if axis < 0 { axis + r as i64 } else { axis };
    let d = b.dim_of(data, a as usize);
    let idx = wrap_indices(b, idx, d);
    Ok(vec![Some(scatter_add(b, "ScatterElements", data, idx, g, Some(a)))])
}

/// y = gather_nd(data, indices) (batch_dims 0): d data = ScatterND(zeros, indices, g, add).
fn gather_nd(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, data, idx) = (n.g()?, n.input(0)?, n.input(1)?);
    if n.node.attr_int("batch_dims").unwrap_or(0) != 0 {
        return Err(n.error("gradient of GatherND with batch_dims != 0 is not implemented".into()));
    }
    Ok(vec![Some(scatter_add(b, "ScatterND", data, idx, g, None))])
}
