//! Gradients of `Softmax` and `LogSoftmax` (opset >= 13 semantics: one axis), from the forward
//! output alone.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::{Attrs, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("Softmax", Sources::Slots(&[0]), softmax));
    rules.push(rule("LogSoftmax", Sources::Slots(&[0]), log_softmax));
}

fn axis(b: &Gradient, n: &NodeGrad) -> Result<i64, AutodiffError> {
    let axis = n.node.attr_int("axis").unwrap_or(-1);
    if axis >= 0 {
        return Ok(axis);
    }
    let rank = b.need_rank(n.input(0)?, "Softmax gradient")? as i64;
    Ok(axis + rank)
}

/// y = softmax(x): dx = y * (g - sum(g * y, axis)).
fn softmax(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let a = axis(b, n)?;
    let gy = b.mul(g, y);
    let s = b.reduce_sum(gy, &[a], true);
    let d = b.sub(g, s);
    Ok(vec![Some(b.mul(y, d))])
}

/// y = log_softmax(x): dx = g - exp(y) * sum(g, axis).
fn log_softmax(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, y) = (n.g()?, n.output(0)?);
    let a = axis(b, n)?;
    let p = b.op("Exp", &[y], vec![]);
    let s = b.reduce_sum(g, &[a], true);
    let ps = b.mul(p, s);
    Ok(vec![Some(b.sub(g, ps))])
}
