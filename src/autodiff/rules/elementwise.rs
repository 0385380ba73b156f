//! Gradients of elementwise ops. Binary ops undo broadcasting by reducing each operand's
//! gradient to its own shape ([`Gradient::unbroadcast`]).

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::{Attrs, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("Add", Sources::Slots(&[0, 1]), add));
    rules.push(rule("Sub", Sources::Slots(&[0, 1]), sub));
    rules.push(rule("Mul", Sources::Slots(&[0, 1]), mul));
    rules.push(rule("Div", Sources::Slots(&[0, 1]), div));
    rules.push(rule("Pow", Sources::Slots(&[0, 1]), pow));
    rules.push(rule("Sum", Sources::All, sum_mean));
    rules.push(rule("Mean", Sources::All, sum_mean));
    rules.push(rule("Max", Sources::All, max_min));
    rules.push(rule("Min", Sources::All, max_min));
    rules.push(rule("Where", Sources::Slots(&[1, 2]), where_));
    rules.push(rule("Sqrt", Sources::Slots(&[0]), sqrt));
    rules.push(rule("Erf", Sources::Slots(&[0]), erf));
    rules.push(rule("Tanh", Sources::Slots(&[0]), tanh));
    rules.push(rule("Neg", Sources::Slots(&[0]), neg));
    rules.push(rule("Exp", Sources::Slots(&[0]), exp));
    rules.push(rule("Log", Sources::Slots(&[0]), log));
    rules.push(rule("Relu", Sources::Slots(&[0]), relu));
    rules.push(rule("Sigmoid", Sources::Slots(&[0]), sigmoid));
    rules.push(rule("Abs", Sources::Slots(&[0]), abs));
    rules.push(rule("Reciprocal", Sources::Slots(&[0]), reciprocal));
    rules.push(rule("Identity", Sources::Slots(&[0]), identity));
    rules.push(rule("Cast", Sources::Slots(&[0]), cast));
}

/// Gradient `gx` of operand `slot`, reduced to the operand's shape, if wanted.
fn operand(
    b: &mut Gradient,
    n: &NodeGrad,
    k: usize,
    gx: impl FnOnce(&mut Gradient) -> ValueId,
) -> Result<Option<ValueId>, AutodiffError> {
    if !n.wants(k) {
        return Ok(None);
    }
    let x = n.sources[k].ok_or_else(|| n.error(format!("missing input {k}")))?;
    let y = n.output(0)?;
    let others: Vec<ValueId> = n.node.inputs.iter().flatten().copied().filter(|&v| v != x).collect();
    let g = gx(b);
    b.unbroadcast_operand(g, y, x, &others).map(Some)
}

/// d(a+b) = g, g.
fn add(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    Ok(vec![operand(b, n, 0, |_| g)?, operand(b, n, 1, |_| g)?])
}

/// d sum(x_1..x_n) = g for each operand; d mean(x_1..x_n) = g / n.
fn sum_mean(b: &mut Gradient, n: &NodeGrad) -> R {
    let mut g = n.g()?;
    if n.node.op_type == "Mean" {
        let dt = b.float_dtype(n.output(0)?);
        g = b.scale(g, 1.0 / n.sources.len() as f64, dt);
    }
    (0..n.sources.len()).map(|k| operand(b, n, k, |_| g)).collect()
}

/// d(a-b) = g, -g.
fn sub(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    Ok(vec![operand(b, n, 0, |_| g)?, operand(b, n, 1, |b| b.neg(g))?])
}

/// d(a*b) = g*b, g*a.
fn mul(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x0, x1) = (n.g()?, n.input(0)?, n.input(1)?);
    Ok(vec![operand(b, n, 0, |b| b.mul(g, x1))?, operand(b, n, 1, |b| b.mul(g, x0))?])
}

/// d(a/b) = g/b, -g*y/b (y = a/b, reused).
fn div(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x1, y) = (n.g()?, n.input(1)?, n.output(0)?);
    Ok(vec![
        operand(b, n, 0, |b| b.div(g, x1))?,
        operand(b, n, 1, |b| {
            let gy = b.mul(g, y);
            let q = b.div(gy, x1);
            b.neg(q)
        })?,
    ])
}

/// d(a^p) = g*p*a^(p-1) (g*2*a when p is the constant 2), d/dp = g*y*ln(a).
fn pow(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, a, p, y) = (n.g()?, n.input(0)?, n.input(1)?, n.output(0)?);
    let dt = b.float_dtype(a);
    let p_const = b.graph().constant(p).and_then(|t| t.as_f32s()).filter(|v| v.len() == 1).map(|v| v[0]);
    let ga = operand(b, n, 0, |b| match p_const {
        Some(2.0) => {
            let ga = b.mul(g, a);
            b.scale(ga, 2.0, dt)
        }
        _ => {
            let pf = if b.dtype(p) == Some(dt) { p } else { b.cast(p, dt) };
            let one = b.scalar(1.0, dt);
            let pm1 = b.sub(pf, one);
            let apm1 = b.op("Pow", &[a, pm1], vec![]);
            let d = b.mul(apm1, pf);
            b.mul(g, d)
        }
    })?;
    let gp = operand(b, n, 1, |b| {
        let la = b.op("Log", &[a], vec![]);
        let gy = b.mul(g, y);
        b.mul(gy, la)
    })?;
    Ok(vec![ga, gp])
}

/// Max/Min of two operands: the gradient goes to the selected operand; ties split it in half
/// (PyTorch's `maximum`/`minimum`). One operand: identity.
fn max_min(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    match n.node.inputs.len() {
        1 => Ok(vec![Some(g)]),
        2 => {
            let (x0, x1) = (n.input(0)?, n.input(1)?);
            let dt = b.float_dtype(x0);
            let cmp = if n.node.op_type == "Max" { "Greater" } else { "Less" };
            let zero = b.scalar(0.0, dt);
            let half = b.scale(g, 0.5, dt);
            let tie = b.op("Equal", &[x0, x1], vec![]);
            let g_tie = b.where_(tie, half, zero);
            let first = b.op(cmp, &[x0, x1], vec![]);
            let second = b.op(cmp, &[x1, x0], vec![]);
            let g0 = operand(b, n, 0, |b| {
                let w = b.where_(first, g, zero);
                b.add(w, g_tie)
            })?;
            let g1 = operand(b, n, 1, |b| {
                let w = b.where_(second, g, zero);
                b.add(w, g_tie)
            })?;
            Ok(vec![g0, g1])
        }
        k => Err(n.error(format!("gradient of {} with {k} operands is not implemented", n.node.op_type))),
    }
}

/// d where(c, x, y) = where(c, g, 0), where(c, 0, g).
fn where_(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, c, y) = (n.g()?, n.input(0)?, n.output(0)?);
    let dt = b.float_dtype(y);
    let zero = b.scalar(0.0, dt);
    Ok(vec![operand(b, n, 0, |b| b.where_(c, g, zero))?, operand(b, n, 1, |b| b.where_(c, zero, g))?])
}

/// d sqrt(x) = g * 0.5 / y.
fn sqrt(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let dt = b.float_dtype(y);
    let half = b.scalar(0.5, dt);
    let r = b.div(half, y);
    Ok(vec![Some(b.mul(g, r))])
}

/// d erf(x) = g * 2/sqrt(pi) * exp(-x^2).
fn erf(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let dt = b.float_dtype(x);
    let x2 = b.mul(x, x);
    let k = b.scalar(-1.0, dt);
    let nx2 = b.mul(x2, k);
    let e = b.op("Exp", &[nx2], vec![]);
    let d = b.scale(e, std::f64::consts::FRAC_2_SQRT_PI, dt);
    Ok(vec![Some(b.mul(g, d))])
}

/// d tanh(x) = g * (1 - y^2).
fn tanh(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let dt = b.float_dtype(y);
    let y2 = b.mul(y, y);
    let one = b.scalar(1.0, dt);
    let d = b.sub(one, y2);
    Ok(vec![Some(b.mul(g, d))])
}

/// d(-x) = -g.
fn neg(b: &mut Gradient, n: &NodeGrad) -> R {
    Ok(vec![Some(b.neg(n.g()?))])
}

/// d exp(x) = g * y.
fn exp(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    Ok(vec![Some(b.mul(g, y))])
}

/// d ln(x) = g / x.
fn log(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    Ok(vec![Some(b.div(g, x))])
}

/// d relu(x) = g where x > 0, else 0.
fn relu(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let dt = b.float_dtype(x);
    let zero = b.scalar(0.0, dt);
    let pos = b.op("Greater", &[x, zero], vec![]);
    Ok(vec![Some(b.where_(pos, g, zero))])
}

/// d sigmoid(x) = g * y * (1 - y).
fn sigmoid(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let dt = b.float_dtype(y);
    let one = b.scalar(1.0, dt);
    let om = b.sub(one, y);
    let d = b.mul(y, om);
    Ok(vec![Some(b.mul(g, d))])
}

/// d |x| = g * sign(x).
fn abs(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let s = b.op("Sign", &[x], vec![]);
    Ok(vec![Some(b.mul(g, s))])
}

/// d (1/x) = -g * y^2.
fn reciprocal(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let y2 = b.mul(y, y);
    let gy2 = b.mul(g, y2);
    Ok(vec![Some(b.neg(gy2))])
}

fn identity(_: &mut Gradient, n: &NodeGrad) -> R {
    Ok(vec![Some(n.g()?)])
}

/// Float-to-float cast: the gradient is cast back to the input's dtype.
fn cast(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let to = n.node.attr_int("to");
    match b.dtype(x) {
        Some(dx) if Some(dx.onnx_code() as i64) == to => Ok(vec![Some(g)]),
        Some(dx) if dx.is_float() => Ok(vec![Some(b.cast(g, dx))]),
        other => Err(n.error(format!(
            "no gradient through a cast from {}",
            other.map_or("an unknown type".into(), |d| d.to_string())
        ))),
    }
}
