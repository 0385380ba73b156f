//! Elementwise ops: unary maps, broadcasting binary arithmetic and comparisons, `Where`, `Cast`.

use super::{broadcast, def, facts, InferCtx, OpDef};
use crate::ir::{DType, Dim, Facts};

const UNARY: &[&str] = &[
    "Sqrt",
    "Erf",
    "Tanh",
    "Neg",
    "Exp",
    "Log",
    "Abs",
    "Relu",
    "Sigmoid",
    "Reciprocal",
    "Not",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Gelu",
    "Softplus",
    "Sin",
    "Cos",
];
const ARITH: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Sum", "Mean"];
const COMPARE: &[&str] = &["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor"];

pub(super) fn register(defs: &mut Vec<OpDef>) {
    for op in UNARY {
        defs.push(def("", op, unary));
    }
    for op in ARITH {
        defs.push(def("", op, arith));
    }
    for op in COMPARE {
        defs.push(def("", op, compare));
    }
    defs.push(def("", "IsNaN", is_nan));
    defs.push(def("", "IsInf", is_nan));
    defs.push(def("", "Where", where_));
    defs.push(def("", "Cast", cast));
    defs.push(def("", "CastLike", cast_like));
    defs.push(def("", "Clip", unary));
    defs.push(def("", "Identity", identity));
}

fn unary(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    Ok(vec![facts(x.dtype, x.shape.clone())])
}

fn identity(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    Ok(vec![cx.input(0)?.clone()])
}

fn is_nan(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    Ok(vec![facts(Some(DType::Bool), cx.input(0)?.shape.clone())])
}

fn broadcast_inputs(cx: &InferCtx) -> Result<Option<Vec<Dim>>, String> {
    let shapes: Option<Vec<&Vec<Dim>>> = (0..cx.inputs.len()).map(|i| cx.shape(i)).collect();
    shapes.map(|s| broadcast(&s)).transpose()
}

fn same_dtype(cx: &InferCtx) -> Result<Option<DType>, String> {
    let mut dt = None;
    for i in 0..cx.inputs.len() {
        if let Some(d) = cx.dtype(i) {
            match dt {
                None => dt = Some(d),
                Some(prev) if prev != d && !(cx.node.op_type == "Pow" && i == 1) => {
                    return Err(format!("input dtypes differ: {prev} and {d}"));
                }
                _ => {}
            }
        }
    }
    Ok(dt)
}

/// Elementwise evaluation of symbolic integer contents, for shape arithmetic.
fn sym_binary(cx: &InferCtx, f: fn(&Dim, &Dim) -> Dim) -> Option<Vec<Dim>> {
    let a = cx.sym(0)?;
    let b = cx.sym(1)?;
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    Some((0..n).map(|i| f(&a[i.min(a.len() - 1)], &b[i.min(b.len() - 1)])).collect())
}

fn int_op(a: &Dim, b: &Dim, op: fn(i64, i64) -> Option<i64>) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => op(*x, *y).map(Dim::Known).unwrap_or(Dim::Unknown),
        _ => Dim::Unknown,
    }
}

fn arith(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let dtype = if cx.node.op_type == "Pow" { cx.dtype(0) } else { same_dtype(cx)? };
    let mut out = facts(dtype, broadcast_inputs(cx)?);
    if dtype.is_some_and(DType::is_integer) && cx.inputs.len() == 2 {
        out.sym_value = match cx.node.op_type.as_str() {
            "Add" => sym_binary(cx, |a, b| int_op(a, b, i64::checked_add)),
            "Sub" => sym_binary(cx, |a, b| int_op(a, b, i64::checked_sub)),
            "Mul" => sym_binary(cx, |a, b| a.mul(b)),
            "Div" => sym_binary(cx, |a, b| int_op(a, b, |x, y| if y == 0 { None } else { Some(x.div_euclid(y)) })),
            "Max" => sym_binary(cx, |a, b| int_op(a, b, |x, y| Some(x.max(y)))),
            "Min" => sym_binary(cx, |a, b| int_op(a, b, |x, y| Some(x.min(y)))),
            _ => None,
        };
    }
    Ok(vec![out])
}

fn compare(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    same_dtype(cx)?;
    let mut out = facts(Some(DType::Bool), broadcast_inputs(cx)?);
    if cx.node.op_type == "Equal" {
        out.sym_value = sym_binary(cx, |a, b| match (a, b) {
            (Dim::Known(x), Dim::Known(y)) => Dim::Known((x == y) as i64),
            (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Known(1),
            (Dim::Sym(_), Dim::Known(-1)) | (Dim::Known(-1), Dim::Sym(_)) => Dim::Known(0),
            _ => Dim::Unknown,
        });
    }
    Ok(vec![out])
}

fn where_(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let (a, b) = (cx.dtype(1), cx.dtype(2));
    if let (Some(a), Some(b)) = (a, b) {
        if a != b {
            return Err(format!("branch dtypes differ: {a} and {b}"));
        }
    }
    let mut out = facts(a.or(b), broadcast_inputs(cx)?);
    if let (Some(c), Some(x), Some(y)) = (cx.sym(0), cx.sym(1), cx.sym(2)) {
        let n = c.len().max(x.len()).max(y.len());
        let pick = |v: &Vec<Dim>, i: usize| v.get(i.min(v.len().saturating_sub(1))).cloned();
        out.sym_value = (0..n)
            .map(|i| match pick(&c, i)? {
                Dim::Known(0) => pick(&y, i),
                Dim::Known(_) => pick(&x, i),
                _ => Some(Dim::Unknown),
            })
            .collect();
    }
    Ok(vec![out])
}

fn cast(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let to = cx.attr_int("to").ok_or("missing attribute 'to'")?;
    let dtype = DType::from_onnx_code(to as i32).ok_or_else(|| format!("unsupported cast target type {to}"))?;
    let mut out = facts(Some(dtype), x.shape.clone());
    if dtype.is_integer() || dtype == DType::Bool {
        out.sym_value = cx.sym(0);
    }
    Ok(vec![out])
}

fn cast_like(cx: &InferCtx) -> Result<Vec<Facts>, String> {
    let x = cx.input(0)?;
    let mut out = facts(cx.dtype(1), x.shape.clone());
    if cx.dtype(1).is_some_and(DType::is_integer) {
        out.sym_value = cx.sym(0);
    }
    Ok(vec![out])
}
