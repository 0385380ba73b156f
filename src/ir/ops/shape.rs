//! Shape-moving ops: `Shape`, `Reshape`, `Transpose`, `(Un)Squeeze`, `Concat`, `Slice`, `Split`,
//! `Expand`, `Flatten`, `Gather(ND|Elements)`, `ConstantOfShape`, `Range`, `Constant`, `Tile`,
//! `Pad`, `NonZero`.
//! Rules here also carry symbolic contents through shape arithmetic.

use super::{broadcast, def, facts, norm_axis, InferCtx, OpDef};
use crate::ir::{Attrs, DType, Dim, Facts};

/// The most dimensions a shape-valued input may declare before its rank is treated as unknown
/// (ONNX Runtime allows 32 at most; a crafted file may declare billions).
const MAX_RANK: i64 = 64;

/// A declared length `r` of a 1-D shape input, as a rank: `None` when negative or over [`MAX_RANK`].
fn rank_of(r: i64) -> Option<usize> {
    (0..=MAX_RANK).contains(&r).then_some(r as usize)
}

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def("", "Shape", shape));
    defs.push(def("", "Size", size));
    defs.push(def("", "Reshape", reshape));
    defs.push(def("", "Transpose", transpose));
    defs.push(def("", "Unsqueeze", unsqueeze));
    defs.push(def("", "Squeeze", squeeze));
    defs.push(def("", "Concat", concat));
    defs.push(def("", "Slice", slice));
    defs.push(def("", "Split", split));
    defs.push(def("", "Expand", expand));
    defs.push(def("", "Flatten", flatten));
    defs.push(def("", "Gather", gather));
    defs.push(def("", "GatherND", gather_nd));
    defs.push(def("", "GatherElements", gather_elements));
    defs.push(def("", "ScatterND", same0));
    defs.push(def("", "ScatterElements", same0));
    defs.push(def("", "ConstantOfShape", constant_of_shape));
    defs.push(def("", "Range", range));
    defs.push(def("", "Constant", constant));
    defs.push(def("", "Tile", tile));
    defs.push(def("", "Pad", pad));
    defs.push(def("", "NonZero", non_zero));
}

fn same0(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![facts(x.dtype, x.shape.clone())])
}

fn shape(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let Some(s) = &x.shape else {
        return Ok(vec![facts(Some(DType::I64), Some(vec![Dim::Unknown]))]);
    };
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(cx.attr_int("start").unwrap_or(0));
    let end = clamp(cx.attr_int("end").unwrap_or(r));
    let dims: Vec<Dim> = if start < end { s[start..end].to_vec() } else { vec![] };
    let mut out = facts(Some(DType::I64), Some(vec![Dim::Known(dims.len() as i64)]));
    out.sym_value = Some(dims);
    Ok(vec![out])
}

fn size(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let mut out = facts(Some(DType::I64), Some(vec![]));
    if let Some(s) = &x.shape {
        out.sym_value = Some(vec![s.iter().fold(Dim::Known(1), |a, d| a.mul(d))]);
    }
    Ok(vec![out])
}

fn reshape(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let allowzero = cx.attr_int("allowzero").unwrap_or(0) != 0;
    let Some(target) = cx.sym(1) else {
        let rank = cx.shape(1).and_then(|s| s.first()).and_then(Dim::known).and_then(rank_of);
        return Ok(vec![facts(x.dtype, rank.map(|r| vec![Dim::Unknown; r]))]);
    };
    let mut out: Vec<Dim> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, d) in target.iter().enumerate() {
        match d {
            Dim::Known(0) if !allowzero => {
                let src = x.shape.as_ref().and_then(|s| s.get(i).cloned()).unwrap_or(Dim::Unknown);
                out.push(src);
            }
            Dim::Known(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err("more than one -1 in the target shape".into());
                }
                out.push(Dim::Unknown);
            }
            Dim::Known(v) if *v < -1 => return Err(format!("invalid target dimension {v}")),
            d => out.push(d.clone()),
        }
    }
    if let (Some(i), Some(src)) = (infer_at, &x.shape) {
        out[i] = solve_missing(src, &out, i);
    }
    let mut f = facts(x.dtype, Some(out));
    if x.sym_value.is_some() && f.shape.as_ref().is_some_and(|s| s.len() <= 1) {
        f.sym_value = x.sym_value.clone();
    }
    Ok(vec![f])
}

/// The `-1` entry of a reshape target, when the element counts can be matched.
fn solve_missing(src: &[Dim], out: &[Dim], at: usize) -> Dim {
    let mut num: Vec<Dim> = src.to_vec();
    let mut den_known = 1i64;
    for (i, d) in out.iter().enumerate() {
        if i == at {
            continue;
        }
        match d {
            Dim::Known(v) => den_known *= v,
            d => match num.iter().position(|n| n == d) {
                Some(p) => {
                    num.remove(p);
                }
                None => return Dim::Unknown,
            },
        }
    }
    let mut known_num = 1i64;
    let mut syms: Vec<Dim> = Vec::new();
    for d in num {
        match d {
            Dim::Known(v) => known_num *= v,
            Dim::Unknown => return Dim::Unknown,
            s => syms.push(s),
        }
    }
    if den_known == 0 || known_num % den_known != 0 {
        return Dim::Unknown;
    }
    let q = known_num / den_known;
    syms.into_iter().fold(Dim::Known(q), |a, s| a.mul(&s))
}

fn transpose(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let shape = match &x.shape {
        Some(s) => {
            let perm = cx.attr_ints("perm").unwrap_or_else(|| (0..s.len() as i64).rev().collect());
            if perm.len() != s.len() {
                return Err(format!("perm {perm:?} does not match rank {}", s.len()));
            }
            let mut out = Vec::with_capacity(s.len());
            for &p in &perm {
                out.push(s.get(norm_axis(p, s.len())?).cloned().ok_or("bad perm")?);
            }
            Some(out)
        }
        None => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

fn unsqueeze(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let axes = cx.axes("axes", 1).ok_or("axes are not known statically")?;
    let shape = match &x.shape {
        Some(s) => {
            let r = s.len() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Result<_, _>>()?;
            axes.sort_unstable();
            let mut out = s.clone();
            for a in axes {
                if a > out.len() {
                    return Err(format!("axis {a} out of range"));
                }
                out.insert(a, Dim::Known(1));
            }
            Some(out)
        }
        None => None,
    };
    let mut f = facts(x.dtype, shape);
    f.sym_value = cx.sym(0).filter(|v| v.len() == 1 && x.shape.as_ref().is_some_and(|s| s.len() <= 1));
    Ok(vec![f])
}

fn squeeze(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let axes = cx.axes("axes", 1);
    let shape = match &x.shape {
        Some(s) => match axes {
            Some(axes) => {
                let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, s.len())).collect::<Result<_, _>>()?;
                for &a in &axes {
                    if matches!(s[a], Dim::Known(d) if d != 1) {
                        return Err(format!("cannot squeeze axis {a} of extent {}", s[a]));
                    }
                }
                Some(s.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect())
            }
            None if s.iter().all(|d| d.known().is_some()) => {
                Some(s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
            }
            None => None,
        },
        None => None,
    };
    let mut f = facts(x.dtype, shape);
    f.sym_value = cx.sym(0).filter(|v| v.len() == 1);
    Ok(vec![f])
}

fn concat(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let axis = cx.attr_int("axis").ok_or("missing attribute 'axis'")?;
    let first = cx.input(0)?;
    let shapes: Option<Vec<&Vec<Dim>>> = (0..cx.inputs.len()).map(|i| cx.shape(i)).collect();
    let shape = match shapes {
        Some(shapes) => {
            let r = shapes[0].len();
            let a = norm_axis(axis, r)?;
            let mut out = shapes[0].clone();
            let mut total = Dim::Known(0);
            for s in &shapes {
                if s.len() != r {
                    return Err(format!("inputs have different ranks ({} and {})", r, s.len()));
                }
                for (i, (d, e)) in out.iter_mut().zip(s.iter()).enumerate() {
                    if i != a {
                        if !d.compatible(e) {
                            return Err(format!("dimension {i} differs between inputs: {d} vs {e}"));
                        }
                        if *d == Dim::Unknown {
                            *d = e.clone();
                        }
                    }
                }
                total = match (&total, &s[a]) {
                    (Dim::Known(x), Dim::Known(y)) => Dim::Known(x + y),
                    (Dim::Known(0), d) => d.clone(),
                    _ => Dim::Unknown,
                };
            }
            out[a] = total;
            Some(out)
        }
        None => None,
    };
    let mut f = facts(first.dtype, shape);
    let syms: Option<Vec<Vec<Dim>>> = (0..cx.inputs.len()).map(|i| cx.sym(i)).collect();
    if let Some(syms) = syms {
        f.sym_value = Some(syms.concat());
    }
    Ok(vec![f])
}

fn slice(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (cx.attr_ints("starts"), cx.attr_ints("ends"), cx.attr_ints("axes"), None)
    } else {
        (cx.ints(1), cx.ints(2), if cx.opt_input(3).is_some() { cx.ints(3) } else { None }, cx.ints(4))
    };
    let axes_known = cx.opset < 10 && cx.attr_ints("axes").is_none()
        || cx.opset >= 10 && cx.opt_input(3).is_none()
        || axes.is_some();
    let steps_known = cx.opset < 10 || cx.opt_input(4).is_none() || steps.is_some();
    let Some(s) = &x.shape else {
        return Ok(vec![facts(x.dtype, None)]);
    };
    if let (Some(st), None, Some(sym_ends), true, true) = (&starts, &ends, cx.sym(2), axes_known, steps_known) {
        if let Some(out) = prefix_slice(s, st, &sym_ends, axes.as_deref(), steps.as_deref())? {
            return Ok(vec![facts(x.dtype, Some(out))]);
        }
    }
    let (Some(starts), Some(ends), true, true) = (starts, ends, axes_known, steps_known) else {
        let mut out = s.clone();
        match cx.ints(3).or_else(|| cx.attr_ints("axes")) {
            Some(ax) => {
                for a in ax {
                    out[norm_axis(a, s.len())?] = Dim::Unknown;
                }
            }
            None => out.iter_mut().for_each(|d| *d = Dim::Unknown),
        }
        return Ok(vec![facts(x.dtype, Some(out))]);
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps have different lengths".into());
    }
    let mut out = s.clone();
    let mut sym_out = cx.sym(0);
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], s.len())?;
        let step = steps[i];
        if step == 0 {
            return Err("slice step is 0".into());
        }
        match &s[a] {
            Dim::Known(n) => {
                let (b, e) = slice_bounds(starts[i], ends[i], step, *n);
                let len = if step > 0 {
                    ((e - b).max(0) + step - 1) / step
                } else {
                    ((b - e).max(0) + (-step) - 1) / (-step)
                };
                out[a] = Dim::Known(len);
                if let (Some(v), true) = (&mut sym_out, s.len() == 1) {
                    let picked: Vec<Dim> = (0..len).map(|k| v[(b + k * step) as usize].clone()).collect();
                    *v = picked;
                }
            }
            d => {
                out[a] =
                    if starts[i] == 0 && ends[i] >= i32::MAX as i64 && step == 1 { d.clone() } else { Dim::Unknown };
                sym_out = None;
            }
        }
    }
    let mut f = facts(x.dtype, Some(out));
    f.sym_value = sym_out.filter(|_| s.len() == 1);
    Ok(vec![f])
}

/// `x[0:n]` along axes where `n` is symbolic (e.g. position ids sliced to the sequence length):
/// the symbol is taken as the extent, assuming it does not exceed the axis.
fn prefix_slice(
    s: &[Dim],
    starts: &[i64],
    ends: &[Dim],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Option<Vec<Dim>>, String> {
    let mut out = s.to_vec();
    for (i, end) in ends.iter().enumerate() {
        let a = norm_axis(axes.map_or(i as i64, |a| a[i]), s.len())?;
        if starts.get(i) != Some(&0) || steps.is_some_and(|st| st.get(i) != Some(&1)) {
            return Ok(None);
        }
        out[a] = match end {
            Dim::Sym(_) => end.clone(),
            Dim::Known(e) => match &s[a] {
                Dim::Known(n) => Dim::Known((*e).clamp(0, *n)),
                _ => return Ok(None),
            },
            Dim::Unknown => return Ok(None),
        };
    }
    Ok(Some(out))
}

/// Clamped `[begin, end)` of a slice on an axis of extent `n`, as ONNX defines it.
pub(crate) fn slice_bounds(start: i64, end: i64, step: i64, n: i64) -> (i64, i64) {
    let fix = |v: i64| if v < 0 { v + n } else { v };
    if step > 0 {
        (fix(start).clamp(0, n), fix(end).clamp(0, n))
    } else {
        (fix(start).clamp(-1, n - 1), fix(end).clamp(-1, n - 1))
    }
}

fn split(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let n_out = cx.node.outputs.len();
    let axis = cx.attr_int("axis").unwrap_or(0);
    let sizes = cx.attr_ints("split").or_else(|| if cx.opt_input(1).is_some() { cx.ints(1) } else { None });
    let Some(s) = &x.shape else {
        return Ok(vec![facts(x.dtype, None); n_out]);
    };
    let a = norm_axis(axis, s.len())?;
    let sizes: Option<Vec<i64>> = match sizes {
        Some(v) => Some(v),
        None => s[a].known().map(|n| {
            let k = cx.attr_int("num_outputs").unwrap_or(n_out as i64).max(1);
            let chunk = (n + k - 1) / k;
            (0..k).map(|i| (n - i * chunk).clamp(0, chunk)).collect()
        }),
    };
    Ok((0..n_out)
        .map(|i| {
            let mut o = s.clone();
            o[a] = sizes.as_ref().and_then(|v| v.get(i)).map(|&d| Dim::Known(d)).unwrap_or(Dim::Unknown);
            facts(x.dtype, Some(o))
        })
        .collect())
}

fn expand(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let shape = match (&x.shape, cx.sym(1)) {
        (Some(s), Some(t)) => Some(broadcast(&[s, &t])?),
        (_, None) => {
            cx.shape(1).and_then(|s| s.first()).and_then(Dim::known).and_then(rank_of).map(|r| vec![Dim::Unknown; r])
        }
        (None, Some(_)) => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

fn flatten(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let axis = cx.attr_int("axis").unwrap_or(1);
    let shape = match &x.shape {
        Some(s) => {
            let r = s.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if a < 0 || a > r {
                return Err(format!("axis {axis} out of range for rank {r}"));
            }
            let a = a as usize;
            let prod = |d: &[Dim]| d.iter().fold(Dim::Known(1), |acc, x| acc.mul(x));
            Some(vec![prod(&s[..a]), prod(&s[a..])])
        }
        None => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

fn gather(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let idx = cx.input(1)?;
    if let Some(d) = idx.dtype {
        if d != DType::I64 && d != DType::I32 {
            return Err(format!("indices must be int32 or int64, got {d}"));
        }
    }
    let axis = cx.attr_int("axis").unwrap_or(0);
    let shape = match (&x.shape, &idx.shape) {
        (Some(s), Some(i)) => {
            let a = norm_axis(axis, s.len())?;
            let mut out = s[..a].to_vec();
            out.extend(i.iter().cloned());
            out.extend(s[a + 1..].iter().cloned());
            Some(out)
        }
        _ => None,
    };
    let mut f = facts(x.dtype, shape);
    if let (Some(v), Some(ix), Some(1)) = (cx.sym(0), cx.ints(1), x.rank()) {
        let n = v.len() as i64;
        f.sym_value = ix.iter().map(|&i| v.get((if i < 0 { i + n } else { i }) as usize).cloned()).collect();
    }
    Ok(vec![f])
}

fn gather_nd(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let idx = cx.input(1)?;
    let b = cx.attr_int("batch_dims").unwrap_or(0) as usize;
    let shape = match (&x.shape, &idx.shape) {
        (Some(s), Some(i)) => match i.last().and_then(Dim::known) {
            Some(k) => {
                let mut out = i[..i.len() - 1].to_vec();
                out.extend(s.iter().skip(b + k as usize).cloned());
                Some(out)
            }
            None => None,
        },
        _ => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

fn gather_elements(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    Ok(vec![facts(cx.dtype(0), cx.shape(1).cloned())])
}

fn constant_of_shape(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let dtype = cx.node.attr_tensor("value").map(|t| t.dtype).unwrap_or(DType::F32);
    let shape = cx.sym(0).or_else(|| {
        cx.shape(0).and_then(|s| s.first()).and_then(Dim::known).and_then(rank_of).map(|r| vec![Dim::Unknown; r])
    });
    let mut f = facts(Some(dtype), shape.clone());
    if let (Some(s), Some(t)) = (&shape, cx.node.attr_tensor("value")) {
        if s.len() == 1 && dtype.is_integer() {
            let first = t.as_i64s().and_then(|v| v.first().copied());
            if let (Some(n), Some(v0)) = (s[0].known().and_then(rank_of), first) {
                f.sym_value = Some(vec![Dim::Known(v0); n]);
            }
        }
    }
    Ok(vec![f])
}

fn range(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let len = match (cx.ints(0), cx.ints(1), cx.ints(2)) {
        (Some(s), Some(l), Some(d)) if d.first().copied().unwrap_or(0) != 0 => {
            let (s, l, d) = (s[0], l[0], d[0]);
            Dim::Known(((l - s) as f64 / d as f64).ceil().max(0.0) as i64)
        }
        _ => match (cx.ints(0), cx.sym(1), cx.ints(2)) {
            (Some(s), Some(l), Some(d)) if s.first() == Some(&0) && d.first() == Some(&1) => l[0].clone(),
            _ => Dim::Unknown,
        },
    };
    Ok(vec![facts(cx.dtype(0), Some(vec![len]))])
}

fn constant(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    if let Some(t) = cx.node.attr_tensor("value") {
        return Ok(vec![Facts::of_tensor(t)]);
    }
    if let Some(v) = cx.node.attr_float("value_float") {
        return Ok(vec![facts(Some(DType::F32), Some(vec![])).with_const(crate::ir::Tensor::scalar_f32(v))]);
    }
    if let Some(v) = cx.node.attr_int("value_int") {
        return Ok(vec![Facts::of_tensor(&crate::ir::Tensor::scalar_i64(v))]);
    }
    if let Some(v) = cx.node.attr_ints("value_ints") {
        return Ok(vec![Facts::of_tensor(&crate::ir::Tensor::from_i64(vec![v.len() as i64], v))]);
    }
    if let Some(crate::ir::AttrValue::Floats(v)) = cx.node.attr("value_floats") {
        return Ok(vec![Facts::of_tensor(&crate::ir::Tensor::from_f32(vec![v.len() as i64], v))]);
    }
    Err("Constant without a supported value attribute".into())
}

fn tile(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let shape = match (&x.shape, cx.ints(1)) {
        (Some(s), Some(r)) => Some(s.iter().zip(r.iter()).map(|(d, &k)| d.mul(&Dim::Known(k))).collect()),
        (Some(s), None) => Some(vec![Dim::Unknown; s.len()]),
        _ => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

/// `Pad` (opset 11+: pads as input 1, optional axes as input 3 from opset 18).
fn pad(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let Some(s) = &x.shape else {
        return Ok(vec![facts(x.dtype, None)]);
    };
    let r = s.len();
    let axes: Vec<usize> = match cx.opt_input(3) {
        None => (0..r).collect(),
        Some(_) => match cx.ints(3) {
            Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<Result<_, _>>()?,
            None => return Ok(vec![facts(x.dtype, Some(vec![Dim::Unknown; r]))]),
        },
    };
    let Some(pads) = cx.ints(1) else {
        return Ok(vec![facts(x.dtype, Some(vec![Dim::Unknown; r]))]);
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", pads.len(), axes.len()));
    }
    let mut out = s.clone();
    for (i, &a) in axes.iter().enumerate() {
        let extra = pads[i] + pads[i + axes.len()];
        out[a] = match &s[a] {
            Dim::Known(d) => Dim::Known(d + extra),
            d if extra == 0 => d.clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![facts(x.dtype, Some(out))])
}

fn non_zero(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let rank = cx.rank(0).map(|r| Dim::Known(r as i64)).unwrap_or(Dim::Unknown);
    Ok(vec![facts(Some(DType::I64), Some(vec![rank, Dim::Unknown]))])
}

impl Facts {
    fn with_const(mut self, t: crate::ir::Tensor) -> Facts {
        self.constant = Some(t);
        self
    }
}
