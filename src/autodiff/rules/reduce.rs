//! Gradients of `ReduceSum` and `ReduceMean`: the gradient is broadcast back over the reduced
//! axes (divided by the reduced count for the mean).

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::{Attrs, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("ReduceSum", Sources::Slots(&[0]), reduce));
    rules.push(rule("ReduceMean", Sources::Slots(&[0]), reduce));
}

/// d sum(x) = expand(g); d mean(x) = expand(g) * size(y) / size(x). Without keepdims the
/// reduced axes are first restored with `Unsqueeze`.
fn reduce(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x, y) = (n.g()?, n.input(0)?, n.output(0)?);
    let rank = b.need_rank(x, "Reduce gradient")?;
    let keep = n.node.attr_int("keepdims").unwrap_or(1) != 0;
    let noop = n.node.attr_int("noop_with_empty_axes").unwrap_or(0) != 0;
    let axes: Option<Vec<i64>> = match (n.node.attr_ints("axes"), n.node.input(1)) {
        (Some(a), _) => Some(a.to_vec()),
        (None, Some(v)) => Some(
            b.graph()
                .constant(v)
                .or(b.graph().value(v).facts.constant.as_ref())
                .and_then(|t| t.as_i64s())
                .ok_or_else(|| n.error("reduction axes are not constant".into()))?,
        ),
        (None, None) => None,
    };
    let axes: Vec<i64> = match axes {
        Some(a) if a.is_empty() && noop => return Ok(vec![Some(g)]),
        Some(a) if !a.is_empty() => a.iter().map(|&ax| if ax < 0 { ax + rank as i64 } else { ax }).collect(),
        _ => (0..rank as i64).collect(),
    };
    let mut gx = g;
    if !keep && !axes.is_empty() {
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        gx = b.unsqueeze(gx, &sorted);
    }
    let s = b.shape_of(x);
    gx = b.op("Expand", &[gx, s], vec![]);
    if n.node.op_type == "ReduceMean" {
        let dt = b.float_dtype(x);
        let xs = b.shape(x).unwrap_or_default();
        let count: Option<i64> = axes.iter().map(|&a| xs.get(a as usize).and_then(|d| d.known())).product();
        let inv = match count {
            Some(c) => b.scalar(1.0 / c as f64, dt),
            None => {
                let sy = b.op("Size", &[y], vec![]);
                let sx = b.op("Size", &[x], vec![]);
                let (fy, fx) = (b.cast(sy, dt), b.cast(sx, dt));
                b.div(fy, fx)
            }
        };
        gx = b.mul(gx, inv);
    }
    Ok(vec![Some(gx)])
}
