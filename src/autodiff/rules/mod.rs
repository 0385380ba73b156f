//! Gradient rules, one file per op family, dispatched through one registry keyed by op type (and a
//! second for sparsec's `ai.sparsec` training operators).
//!
//! A rule names the values its node's gradient reaches (its *sources*: usually some input slots)
//! and, given the gradients of the node's outputs, emits the gradients of those sources through a
//! [`Gradient`] builder. Forward values are read, never recomputed.

mod attention_train;
mod elementwise;
mod gather;
mod gelu_train;
mod layernorm;
mod masked_linear;
mod matmul;
mod quant;
mod reduce;
mod shape;
mod softmax;

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{AutodiffError, Gradient};
use crate::ir::{Graph, Node, NodeId, ValueId};

/// Which values a node's gradient flows to.
#[derive(Clone, Copy)]
pub enum Sources {
    /// These input slots (omitted optional inputs are skipped).
    Slots(&'static [usize]),
    /// Every input.
    All,
    /// Values computed from the graph (e.g. through a fused pair of nodes).
    Custom(fn(&Graph, &Node) -> Vec<Option<ValueId>>),
}

/// What a rule sees of the node it differentiates.
pub struct NodeGrad<'a> {
    pub id: NodeId,
    pub node: &'a Node,
    /// Gradient of each output slot; `None` where no gradient reaches it.
    pub out_grads: Vec<Option<ValueId>>,
    /// The node's sources, as listed by its rule.
    pub sources: Vec<Option<ValueId>>,
    /// Whether each source needs a gradient (it depends on a parameter).
    pub wanted: Vec<bool>,
}

impl NodeGrad<'_> {
    /// Input slot `i`, or an error naming the node.
    pub fn input(&self, i: usize) -> Result<ValueId, AutodiffError> {
        self.node.input(i).ok_or_else(|| self.error(format!("missing input {i}")))
    }
    pub fn output(&self, i: usize) -> Result<ValueId, AutodiffError> {
        self.node.output(i).ok_or_else(|| self.error(format!("missing output {i}")))
    }
    /// The gradient of output 0 (every single-output rule's starting point).
    pub fn g(&self) -> Result<ValueId, AutodiffError> {
        self.out_grads.first().copied().flatten().ok_or_else(|| self.error("no gradient reaches output 0".into()))
    }
    pub fn wants(&self, k: usize) -> bool {
        self.wanted.get(k).copied().unwrap_or(false)
    }
    /// An error about this node.
    pub fn error(&self, message: String) -> AutodiffError {
        AutodiffError::Rule { node: self.node.name.clone(), op: self.node.op_type.clone(), message }
    }
}

pub type BackwardFn = fn(&mut Gradient, &NodeGrad) -> Result<Vec<Option<ValueId>>, AutodiffError>;

/// One op's gradient rule.
pub struct GradRule {
    pub op_type: &'static str,
    pub sources: Sources,
    /// Returns one gradient per source (`None` for sources not wanted).
    pub backward: BackwardFn,
}

pub(crate) fn rule(op_type: &'static str, sources: Sources, backward: BackwardFn) -> GradRule {
    GradRule { op_type, sources, backward }
}

/// Ops whose outputs carry no gradient: they cut every differentiable path.
pub const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "ConstantOfShape",
    "Range",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "OneHot",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Constant",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
];

fn registry() -> &'static HashMap<&'static str, GradRule> {
    static REG: OnceLock<HashMap<&'static str, GradRule>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut rules = Vec::new();
        elementwise::register(&mut rules);
        gather::register(&mut rules);
        layernorm::register(&mut rules);
        matmul::register(&mut rules);
        quant::register(&mut rules);
        reduce::register(&mut rules);
        shape::register(&mut rules);
        softmax::register(&mut rules);
        rules.into_iter().map(|r| (r.op_type, r)).collect()
    })
}

/// Rules of sparsec's own (`ai.sparsec`) operators.
fn sparsec_registry() -> &'static HashMap<&'static str, GradRule> {
    static REG: OnceLock<HashMap<&'static str, GradRule>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut rules = Vec::new();
        masked_linear::register(&mut rules);
        attention_train::register(&mut rules);
        gelu_train::register(&mut rules);
        rules.into_iter().map(|r| (r.op_type, r)).collect()
    })
}

/// The gradient rule of a default-domain or `ai.sparsec` op.
pub fn lookup(domain: &str, op_type: &str) -> Option<&'static GradRule> {
    match domain {
        "" | "ai.onnx" => registry().get(op_type),
        crate::ir::ops::sparsec::DOMAIN => sparsec_registry().get(op_type),
        _ => None,
    }
}

/// Whether the op is known to carry no gradient.
pub fn is_non_differentiable(domain: &str, op_type: &str) -> bool {
    (domain.is_empty() || domain == "ai.onnx") && NON_DIFFERENTIABLE.contains(&op_type)
}

/// Every op type with a gradient rule, sorted.
pub fn differentiable_ops() -> Vec<&'static str> {
    let mut v: Vec<_> = registry().keys().copied().collect();
    v.sort();
    v
}

impl GradRule {
    /// The source values of `node` under this rule.
    pub fn sources_of(&self, g: &Graph, node: &Node) -> Vec<Option<ValueId>> {
        match self.sources {
            Sources::Slots(slots) => slots.iter().map(|&s| node.input(s)).collect(),
            Sources::All => node.inputs.clone(),
            Sources::Custom(f) => f(g, node),
        }
    }
}
