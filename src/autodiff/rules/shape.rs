//! Gradients of shape-moving ops: `Reshape`, `Flatten`, `(Un)Squeeze`, `Transpose`, `Expand`,
//! `Concat`, `Split`, `Slice`.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::emit::SplitSizes;
use crate::ir::{Attribute, Attrs, Dim, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    for op in ["Reshape", "Flatten", "Squeeze", "Unsqueeze"] {
        rules.push(rule(op, Sources::Slots(&[0]), reshape_back));
    }
    rules.push(rule("Transpose", Sources::Slots(&[0]), transpose));
    rules.push(rule("Expand", Sources::Slots(&[0]), expand));
    rules.push(rule("Concat", Sources::All, concat));
    rules.push(rule("Split", Sources::Slots(&[0]), split));
    rules.push(rule("Slice", Sources::Slots(&[0]), slice));
}

/// Ops that only relabel the elements: the gradient is reshaped back to the input's shape.
fn reshape_back(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    Ok(vec![Some(b.reshape_like(g, x))])
}

/// The gradient is transposed by the inverse permutation.
fn transpose(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let perm: Vec<i64> = match n.node.attr_ints("perm") {
        Some(p) => p.to_vec(),
        None => (0..b.need_rank(x, "Transpose gradient")? as i64).rev().collect(),
    };
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let p = usize::try_from(p).map_err(|_| n.error(format!("negative perm entry {p}")))?;
        *inv.get_mut(p).ok_or_else(|| n.error(format!("perm entry {p} out of range")))? = i as i64;
    }
    Ok(vec![Some(b.transpose(g, &inv))])
}

/// Expand broadcasts: the gradient is summed back to the input's shape.
fn expand(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x, y) = (n.g()?, n.input(0)?, n.output(0)?);
    Ok(vec![Some(b.unbroadcast(g, y, x)?)])
}

fn norm_axis(n: &NodeGrad, axis: i64, rank: usize) -> Result<usize, AutodiffError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(n.error(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// The gradient is split back along the concat axis, into the inputs' extents.
fn concat(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    let y = n.output(0)?;
    let rank = b.need_rank(y, "Concat gradient")?;
    let axis = norm_axis(n, n.node.attr_int("axis").unwrap_or(0), rank)?;
    let inputs: Vec<ValueId> = n.node.inputs.iter().flatten().copied().collect();
    let static_sizes: Option<Vec<i64>> =
        inputs.iter().map(|&x| b.shape(x).and_then(|s| s.get(axis).and_then(Dim::known))).collect();
    let sizes = match static_sizes {
        Some(s) => b.ints(&s),
        None => {
            let parts: Vec<ValueId> = inputs.iter().map(|&x| b.dim_of(x, axis)).collect();
            b.op("Concat", &parts, vec![Attribute::int("axis", 0)])
        }
    };
    let outs = b.split(g, axis as i64, SplitSizes::Value(sizes), inputs.len())?;
    let mut it = outs.into_iter();
    Ok(n.node.inputs.iter().map(|x| x.and_then(|_| it.next())).collect())
}

/// The output gradients are concatenated back; outputs no gradient reaches contribute zeros.
fn split(b: &mut Gradient, n: &NodeGrad) -> R {
    let x = n.input(0)?;
    let rank = b.need_rank(x, "Split gradient")?;
    let axis = norm_axis(n, n.node.attr_int("axis").unwrap_or(0), rank)?;
    let dt = b.float_dtype(x);
    let mut parts = Vec::with_capacity(n.node.outputs.len());
    for (i, out) in n.node.outputs.iter().enumerate() {
        let out = out.ok_or_else(|| n.error(format!("Split output {i} is omitted")))?;
        let part = match n.out_grads[i] {
            Some(g) => g,
            None => b.zeros_like(out, dt),
        };
        parts.push(part);
    }
    let gx =
        if parts.len() == 1 { parts[0] } else { b.op("Concat", &parts, vec![Attribute::int("axis", axis as i64)]) };
    Ok(vec![Some(gx)])
}

/// The gradient is zero-padded back into the input's extent along each sliced axis (steps of 1
/// only). Bounds are clamped as `Slice` clamps them, statically when known, else at run time.
fn slice(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let rank = b.need_rank(x, "Slice gradient")?;
    let consts = |b: &Gradient, slot: usize| {
        n.node
            .input(slot)
            .and_then(|v| b.graph().value(v).facts.constant.clone().or_else(|| b.graph().constant(v).cloned()))
            .and_then(|t| t.as_i64s())
    };
    let starts_v = n.input(1)?;
    let ends_v = n.input(2)?;
    let starts = consts(b, 1);
    let ends = consts(b, 2);
    let count = match (&starts, b.shape(starts_v).and_then(|s| s.first().and_then(Dim::known))) {
        (Some(s), _) => s.len(),
        (None, Some(c)) => c as usize,
        _ => return Err(n.error("the number of sliced axes is not known statically".into())),
    };
    let axes: Vec<i64> = match n.node.input(3) {
        None => (0..count as i64).collect(),
        Some(_) => consts(b, 3).ok_or_else(|| n.error("Slice axes are not constant".into()))?,
    };
    if let Some(_steps) = n.node.input(4) {
        let steps = consts(b, 4).ok_or_else(|| n.error("Slice steps are not constant".into()))?;
        if steps.iter().any(|&s| s != 1) {
            return Err(n.error(format!("gradient of Slice with steps {steps:?} is not implemented (steps of 1 only)")));
        }
    }
    let xs = b.shape(x).unwrap_or_default();
    let zero = b.ints(&[0]);
    let mut begin: Vec<ValueId> = vec![zero; rank];
    let mut end: Vec<ValueId> = vec![zero; rank];
    let mut all_static = true;
    let mut static_pads = vec![0i64; 2 * rank];
    for (i, &axis) in axes.iter().enumerate() {
        let a = norm_axis(n, axis, rank)?;
        let dim = xs.get(a).and_then(Dim::known);
        if let (Some(st), Some(en), Some(d)) = (&starts, &ends, dim) {
            let fix = |v: i64| if v < 0 { v + d } else { v };
            let s = fix(st[i]).clamp(0, d);
            let e = fix(en[i]).clamp(0, d).max(s);
            static_pads[a] = s;
            static_pads[rank + a] = d - e;
            let (pb, pe) = (b.ints(&[s]), b.ints(&[d - e]));
            begin[a] = pb;
            end[a] = pe;
            continue;
        }
        all_static = false;
        let d = b.dim_of(x, a);
        let pick = |b: &mut Gradient, v: ValueId| {
            let (lo, hi) = (b.ints(&[i as i64]), b.ints(&[i as i64 + 1]));
            b.op("Slice", &[v, lo, hi], vec![])
        };
        let s = pick(b, starts_v);
        let e = pick(b, ends_v);
        let s = clamp_index(b, s, d);
        let e = clamp_index(b, e, d);
        let e = b.op("Max", &[e, s], vec![]);
        begin[a] = s;
        end[a] = b.sub(d, e);
    }
    let pads = if all_static {
        b.ints(&static_pads)
    } else {
        let parts: Vec<ValueId> = begin.into_iter().chain(end).collect();
        b.op("Concat", &parts, vec![Attribute::int("axis", 0)])
    };
    Ok(vec![Some(b.pad(g, pads, "constant")?)])
}

/// `v < 0 ? v + d : v`, clamped to `[0, d]` (1-element i64 values).
fn clamp_index(b: &mut Gradient, v: ValueId, d: ValueId) -> ValueId {
    let zero = b.ints(&[0]);
    let neg = b.op("Less", &[v, zero], vec![]);
    let wrapped = b.add(v, d);
    let fixed = b.where_(neg, wrapped, v);
    let lo = b.op("Max", &[fixed, zero], vec![]);
    b.op("Min", &[lo, d], vec![])
}
