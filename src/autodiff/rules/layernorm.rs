//! Gradient of `LayerNormalization` (opset 17), written with standard ops, or with
//! `GradOptions::sparsec_training_ops` over the last axis as one `ai.sparsec::LayerNormGrad`. The
//! forward node's optional `Mean` and `InvStdDev` outputs are switched on and reused, so nothing is
//! recomputed but the normalised input.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::ops::layer_norm_grad::LAYER_NORM_GRAD;
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attrs, Facts, NodeSpec, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule("LayerNormalization", Sources::Slots(&[0, 1, 2]), layer_norm));
}

/// The node's `(Mean, InvStdDev)` outputs, adding them to the node when it does not write them.
fn saved_stats(b: &mut Gradient, n: &NodeGrad) -> Result<(ValueId, ValueId), AutodiffError> {
    if let (Some(m), Some(s)) = (n.node.output(1), n.node.output(2)) {
        return Ok((m, s));
    }
    let p = b.patch();
    let mean = match n.node.output(1) {
        Some(m) => m,
        None => {
            let m = p.new_value(&format!("{}_mean", n.node.name), Facts::default());
            p.set_node_output(n.id, 1, m);
            m
        }
    };
    let inv = match n.node.output(2) {
        Some(s) => s,
        None => {
            let s = p.new_value(&format!("{}_inv_std_dev", n.node.name), Facts::default());
            p.set_node_output(n.id, 2, s);
            s
        }
    };
    Ok((mean, inv))
}

/// y = xhat * scale + bias with xhat = (x - mean) * inv over axes [axis, rank):
/// d scale = sum(g * xhat), d bias = sum(g) (over the broadcast axes), and with
/// h = g * scale, dx = inv * (h - mean(h) - xhat * mean(h * xhat)).
fn layer_norm(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x, y) = (n.g()?, n.input(0)?, n.output(0)?);
    let rank = b.need_rank(x, "LayerNormalization gradient")?;
    let axis = n.node.attr_int("axis").unwrap_or(-1);
    let axis = if axis < 0 { axis + rank as i64 } else { axis };
    if !(0..rank as i64).contains(&axis) {
        return Err(n.error(format!("axis {axis} out of range for rank {rank}")));
    }
    let norm_axes: Vec<i64> = (axis..rank as i64).collect();
    let (mean, inv) = saved_stats(b, n)?;
    if b.sparsec_training_ops && axis == rank as i64 - 1 && b.rank(n.input(1)?) == Some(1) {
        // One `ai.sparsec::LayerNormGrad` for all three gradients (the bias's is Σ dy whether or
        // not the node has a bias).
        let name = b.next_name(LAYER_NORM_GRAD);
        let spec = NodeSpec::new(LAYER_NORM_GRAD, name, &[g, x, n.input(1)?, mean, inv]).domain(DOMAIN);
        let outs = b.add_spec(spec, 3);
        let has_bias = n.node.input(2).is_some();
        return Ok(vec![
            n.wants(0).then_some(outs[0]),
            n.wants(1).then_some(outs[1]),
            (has_bias && n.wants(2)).then_some(outs[2]),
        ]);
    }
    let centered = b.sub(x, mean);
    let xhat = b.mul(centered, inv);
    let g_scale = if n.wants(1) {
        let gx = b.mul(g, xhat);
        Some(b.unbroadcast(gx, y, n.input(1)?)?)
    } else {
        None
    };
    let g_bias = if n.wants(2) { Some(b.unbroadcast(g, y, n.input(2)?)?) } else { None };
    let g_x = if n.wants(0) {
        let h = b.mul(g, n.input(1)?);
        let m1 = b.reduce_mean(h, &norm_axes, true);
        let hx = b.mul(h, xhat);
        let m2 = b.reduce_mean(hx, &norm_axes, true);
        let t = b.mul(xhat, m2);
        let d1 = b.sub(h, m1);
        let d = b.sub(d1, t);
        Some(b.mul(inv, d))
    } else {
        None
    };
    Ok(vec![g_x, g_scale, g_bias])
}
