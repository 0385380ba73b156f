//! Gradient of sparsec's `ai.sparsec::AttentionTrain` (`Ctx = softmax(scale·Q·Kt + Bias)·V`, see
//! `passes::UseAttentionTrain`), emitted as one `AttentionTrainGrad(dCtx, Q, Kt, V, Ctx, Stats,
//! Bias?) -> (dQ, dKt, dV)` node that recomputes the probabilities from the forward's `Stats`. The
//! bias (the attention mask) carries no gradient.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::ops::attention_train::{ATTENTION_TRAIN, ATTENTION_TRAIN_GRAD};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, NodeSpec, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule(ATTENTION_TRAIN, Sources::Slots(&[0, 1, 2]), attention_train));
}

fn attention_train(b: &mut Gradient, n: &NodeGrad) -> R {
    if !(n.wants(0) || n.wants(1) || n.wants(2)) {
        return Ok(vec![None, None, None]);
    }
    let (g, q, kt, v) = (n.g()?, n.input(0)?, n.input(1)?, n.input(2)?);
    let (ctx, stats) = (n.output(0)?, n.output(1)?);
    let mut inputs = vec![Some(g), Some(q), Some(kt), Some(v), Some(ctx), Some(stats)];
    if let Some(bias) = n.node.input(3) {
        inputs.push(Some(bias));
    }
    let name = b.next_name(ATTENTION_TRAIN_GRAD);
    let mut spec = NodeSpec::new(ATTENTION_TRAIN_GRAD, name, &[]).domain(DOMAIN);
    spec.inputs = inputs;
    if let Some(scale) = n.node.attr_float("scale") {
        spec = spec.attr(Attribute::float("scale", scale));
    }
    let outs = b.add_spec(spec, 3);
    Ok((0..3).map(|k| n.wants(k).then_some(outs[k])).collect())
}
