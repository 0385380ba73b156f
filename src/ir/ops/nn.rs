//! Neural-network ops: softmax family, layer normalisation, reductions, dropout, quantisation.

use super::{def, facts, norm_axis, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

const REDUCE: &[&str] =
    &["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare"];

pub(super) fn register(defs: &mut Vec<OpDef>) {
    defs.push(def("", "Softmax", same));
    defs.push(def("", "LogSoftmax", same));
    defs.push(def("", "LayerNormalization", layer_norm));
    for op in REDUCE {
        defs.push(def("", op, reduce));
    }
    defs.push(def("", "ArgMax", arg_reduce));
    defs.push(def("", "ArgMin", arg_reduce));
    defs.push(def("", "Dropout", dropout));
    defs.push(def("", "QuantizeLinear", quantize));
    defs.push(def("", "DequantizeLinear", dequantize));
    defs.push(def("", "DynamicQuantizeLinear", dynamic_quantize));
    defs.push(def("", "OneHot", one_hot));
    defs.push(def("", "Trilu", same));
    defs.push(def("", "CumSum", same));
}

fn same(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![facts(x.dtype, x.shape.clone())])
}

fn layer_norm(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let axis = cx.attr_int("axis").unwrap_or(-1);
    let stats = x.shape.as_ref().map(|s| -> Result<Vec<Dim>, String> {
        let a = norm_axis(axis, s.len())?;
        Ok(s.iter().enumerate().map(|(i, d)| if i < a { d.clone() } else { Dim::Known(1) }).collect())
    });
    let stats = stats.transpose()?;
    let stash = if x.dtype == Some(DType::F64) { Some(DType::F64) } else { Some(DType::F32) };
    Ok(vec![facts(x.dtype, x.shape.clone()), facts(stash, stats.clone()), facts(stash, stats)])
}

/// The reduction axes of a `Reduce*` node (attribute before opset 18, input 1 after), `None` for all.
pub(crate) fn reduce_axes(cx: &InferCtx) -> Option<Vec<i64>> {
    cx.attr_ints("axes").or_else(|| if cx.opt_input(1).is_some() { cx.ints(1) } else { None })
}

fn reduce(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let keep = cx.attr_int("keepdims").unwrap_or(1) != 0;
    let noop = cx.attr_int("noop_with_empty_axes").unwrap_or(0) != 0;
    let axes_given = cx.attr_ints("axes").is_some() || cx.opt_input(1).is_some();
    let shape = match (&x.shape, reduce_axes(cx)) {
        (Some(s), Some(axes)) if !(axes.is_empty() && noop) => {
            let axes: Vec<usize> = if axes.is_empty() {
                (0..s.len()).collect()
            } else {
                axes.iter().map(|&a| norm_axis(a, s.len())).collect::<Result<_, _>>()?
            };
            Some(reduced(s, &axes, keep))
        }
        (Some(s), None) if !axes_given => {
            if noop {
                Some(s.clone())
            } else {
                Some(reduced(s, &(0..s.len()).collect::<Vec<_>>(), keep))
            }
        }
        (Some(s), Some(_)) => Some(s.clone()),
        (Some(s), None) if keep => Some(vec![Dim::Unknown; s.len()]),
        _ => None,
    };
    Ok(vec![facts(x.dtype, shape)])
}

fn reduced(s: &[Dim], axes: &[usize], keep: bool) -> Vec<Dim> {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect()
}

fn arg_reduce(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let keep = cx.attr_int("keepdims").unwrap_or(1) != 0;
    let axis = cx.attr_int("axis").unwrap_or(0);
    let shape = x.shape.as_ref().map(|s| norm_axis(axis, s.len()).map(|a| reduced(s, &[a], keep))).transpose()?;
    Ok(vec![facts(Some(DType::I64), shape)])
}

fn dropout(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![facts(x.dtype, x.shape.clone()), facts(Some(DType::Bool), x.shape.clone())])
}

fn quantize(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let dtype = cx
        .dtype(2)
        .or_else(|| cx.attr_int("output_dtype").filter(|&c| c != 0).and_then(|c| DType::from_onnx_code(c as i32)))
        .unwrap_or(DType::U8);
    Ok(vec![facts(Some(dtype), x.shape.clone())])
}

fn dequantize(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![facts(cx.dtype(1).or(Some(DType::F32)), x.shape.clone())])
}

fn dynamic_quantize(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![
        facts(Some(DType::U8), x.shape.clone()),
        facts(Some(DType::F32), Some(vec![])),
        facts(Some(DType::U8), Some(vec![])),
    ])
}

fn one_hot(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let idx = cx.input(0)?;
    let depth = cx.ints(1).and_then(|v| v.first().copied()).map(Dim::Known).unwrap_or(Dim::Unknown);
    let axis = cx.attr_int("axis").unwrap_or(-1);
    let shape = idx.shape.as_ref().map(|s| -> Result<Vec<Dim>, String> {
        let r = s.len() + 1;
        let a = norm_axis(axis, r)?;
        let mut out = s.clone();
        out.insert(a, depth.clone());
        Ok(out)
    });
    Ok(vec![facts(cx.dtype(2), shape.transpose()?)])
}
