//! Gradient of sparsec's `ai.sparsec::GeluTrain` (see `passes::UseGeluTrain`): one
//! `GeluTrainGrad(dY, X)` node, `dX = dY·(Φ(X) + X·φ(X))`.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::ops::gelu_train::{GELU_TRAIN, GELU_TRAIN_GRAD};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{NodeSpec, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule(GELU_TRAIN, Sources::Slots(&[0]), gelu_train));
}

fn gelu_train(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x) = (n.g()?, n.input(0)?);
    let name = b.next_name(GELU_TRAIN_GRAD);
    let spec = NodeSpec::new(GELU_TRAIN_GRAD, name, &[g, x]).domain(DOMAIN);
    Ok(vec![Some(b.add_spec(spec, 1)[0])])
}
