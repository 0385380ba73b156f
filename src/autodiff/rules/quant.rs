//! Straight-through estimator for fake quantisation, and the gradient of `Dropout`.
//!
//! Fake quantisation is the pair `QuantizeLinear -> DequantizeLinear` that `sparsec compile`
//! inserts. The pair is differentiated as one op, registered on the `DequantizeLinear`: its
//! source is the `QuantizeLinear`'s float input, and the gradient passes unchanged where that
//! input lies in the representable range `[(qmin - zp) * scale, (qmax - zp) * scale]`, zero
//! outside. A `DequantizeLinear` of anything else (a quantised constant) has no gradient.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::{Attrs, DType, Graph, Node, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("DequantizeLinear", Sources::Custom(fake_quant_input), fake_quant));
    rules.push(rule("Dropout", Sources::Slots(&[0]), dropout));
}

/// The `QuantizeLinear` feeding a `DequantizeLinear`, if any.
fn quantize_of<'g>(g: &'g Graph, dq: &Node) -> Option<&'g Node> {
    let (_, q) = g.producer(dq.input(0)?)?;
    (q.op_type == "QuantizeLinear" && q.domain.is_empty()).then_some(q)
}

fn fake_quant_input(g: &Graph, dq: &Node) -> Vec<Option<ValueId>> {
    vec![quantize_of(g, dq).and_then(|q| q.input(0))]
}

fn int_range(dt: DType) -> Option<(f64, f64)> {
    Some(match dt {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        _ => return None,
    })
}

/// Reshapes a per-axis parameter `[C]` so it broadcasts along `axis` of a rank-`rank` tensor.
fn along_axis(b: &mut Gradient, v: ValueId, axis: usize, rank: usize) -> ValueId {
    if b.rank(v) == Some(0) || axis + 1 == rank {
        return v;
    }
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, rank - axis - 1));
    let s = b.ints(&shape);
    b.reshape(v, s)
}

/// y = DQ(Q(x)): dx = g where (qmin - zp) * s <= x <= (qmax - zp) * s, else 0 (times the ratio
/// of the two scales when the pair uses different scale values).
fn fake_quant(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    let q = quantize_of(b.graph(), n.node).ok_or_else(|| n.error("not fed by a QuantizeLinear".into()))?;
    let x = q.input(0).ok_or_else(|| n.error("QuantizeLinear without input".into()))?;
    let scale = q.input(1).ok_or_else(|| n.error("QuantizeLinear without scale".into()))?;
    let qdt = q.output(0).and_then(|o| b.dtype(o)).unwrap_or(DType::U8);
    let (qmin, qmax) = int_range(qdt).ok_or_else(|| n.error(format!("fake quantisation to {qdt} is not supported")))?;
    let dt = b.float_dtype(x);
    let rank = b.need_rank(x, "fake-quant gradient")?;
    let per_axis = b.rank(scale).is_some_and(|r| r > 0);
    let axis = q.attr_int("axis").unwrap_or(1);
    let axis = if axis < 0 { axis + rank as i64 } else { axis } as usize;
    let zp = match q.input(2) {
        Some(z) => b.cast(z, dt),
        None => b.scalar(0.0, dt),
    };
    let (lo_q, hi_q) = (b.scalar(qmin, dt), b.scalar(qmax, dt));
    let lo_z = b.sub(lo_q, zp);
    let hi_z = b.sub(hi_q, zp);
    let mut lo = b.mul(lo_z, scale);
    let mut hi = b.mul(hi_z, scale);
    if per_axis {
        lo = along_axis(b, lo, axis, rank);
        hi = along_axis(b, hi, axis, rank);
    }
    let above = b.op("GreaterOrEqual", &[x, lo], vec![]);
    let below = b.op("LessOrEqual", &[x, hi], vec![]);
    let inside = b.op("And", &[above, below], vec![]);
    let zero = b.scalar(0.0, dt);
    let mut gx = b.where_(inside, g, zero);
    if let Some(dq_scale) = n.node.input(1).filter(|&s| s != scale) {
        let mut ratio = b.div(dq_scale, scale);
        if per_axis {
            ratio = along_axis(b, ratio, axis, rank);
        }
        gx = b.mul(gx, ratio);
    }
    Ok(vec![Some(gx)])
}

/// Dropout: identity in inference mode; in training mode dx = g * mask / (1 - ratio), reading
/// the node's mask output (added to the node when absent).
fn dropout(b: &mut Gradient, n: &NodeGrad) -> R {
    let g = n.g()?;
    let training = match n.node.input(2) {
        None => false,
        Some(t) => match b.graph().constant(t).and_then(|t| t.as_i64s()) {
            Some(v) => v.first().copied().unwrap_or(0) != 0,
            None => true,
        },
    };
    if !training {
        return Ok(vec![Some(g)]);
    }
    let x = n.input(0)?;
    let dt = b.float_dtype(x);
    let mask = match n.node.output(1) {
        Some(m) => m,
        None => {
            let p = b.patch();
            let m = p.new_value(&format!("{}_mask", n.node.name), crate::ir::Facts::default());
            p.set_node_output(n.id, 1, m);
            m
        }
    };
    let keep = match n.node.input(1) {
        Some(r) => {
            let r = if b.dtype(r) == Some(dt) { r } else { b.cast(r, dt) };
            let one = b.scalar(1.0, dt);
            let k = b.sub(one, r);
            b.div(one, k)
        }
        None => b.scalar(2.0, dt),
    };
    let m = b.cast(mask, dt);
    let gm = b.mul(g, m);
    Ok(vec![Some(b.mul(gm, keep))])
}
