//! Gradient of sparsec's `ai.sparsec::MaskedLinear` (`Y = X·(W ⊙ M) + B`, see
//! `passes::UseMaskedLinear`), emitted as the two block-sparse training operators:
//! `dX = MaskedLinearGradInput(dY, W, M)` (`dY·(W ⊙ M)ᵀ`), `dW = MaskedLinearGradWeight(X, dY, M)`
//! (`M ⊙ (X₂ᵀ·dY₂)`, the flattened rows of every token), `dB = ReduceSum(dY)` over every axis but
//! the last. The mask carries no gradient (it is not a parameter). The forward's `precision`
//! attribute (`"bf16"`: bf16 products) is carried to both gradient operators.

use super::{rule, GradRule, NodeGrad, Sources};
use crate::autodiff::{AutodiffError, Gradient};
use crate::ir::ops::masked_linear::{MASKED_LINEAR, MASKED_LINEAR_GRAD_INPUT, MASKED_LINEAR_GRAD_WEIGHT};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, NodeSpec, ValueId};

type R = Result<Vec<Option<ValueId>>, AutodiffError>;

pub(super) fn register(rules: &mut Vec<GradRule>) {
    rules.push(rule(MASKED_LINEAR, Sources::Slots(&[0, 1, 3]), masked_linear));
}

/// One `ai.sparsec` node with one output, with the forward's `precision` if it has one.
fn sparsec_op(b: &mut Gradient, op: &str, inputs: &[ValueId], precision: Option<&str>) -> ValueId {
    let name = b.next_name(op);
    let mut spec = NodeSpec::new(op, name, inputs).domain(DOMAIN);
    if let Some(p) = precision {
        spec = spec.attr(Attribute::string("precision", p));
    }
    b.add_spec(spec, 1)[0]
}

fn masked_linear(b: &mut Gradient, n: &NodeGrad) -> R {
    let (g, x, w, m, y) = (n.g()?, n.input(0)?, n.input(1)?, n.input(2)?, n.output(0)?);
    let precision = n.node.attr_str("precision");
    let dx = n.wants(0).then(|| sparsec_op(b, MASKED_LINEAR_GRAD_INPUT, &[g, w, m], precision));
    let dw = n.wants(1).then(|| sparsec_op(b, MASKED_LINEAR_GRAD_WEIGHT, &[x, g, m], precision));
    let db = if n.wants(2) {
        let rank = b.need_rank(y, "MaskedLinear bias gradient")?;
        let axes: Vec<i64> = (0..rank as i64 - 1).collect();
        Some(if axes.is_empty() { g } else { b.reduce_sum(g, &axes, false) })
    } else {
        None
    };
    Ok(vec![dx, dw, db])
}
