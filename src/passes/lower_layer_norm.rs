//! `LowerLayerNorm`: ONNX `LayerNormalization` over the last axis, and the same computation
//! decomposed into elementwise ops (torch's export below opset 17), rewritten to sparsec's
//! `ai.sparsec::LayerNorm`, which computes ONNX Runtime's CPU `LayerNormalization` arithmetic bit
//! for bit, several rows at a time (ORT's own kernel sums each row in a scalar loop).

use serde::{Deserialize, Serialize};

use super::pattern::{const_f32_scalar, other_input, sole_consumer, Consumers};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Graph, Model, Node, NodeId, NodeSpec, Patch, ValueId};

/// Rewrites each last-axis f32 `LayerNormalization` whose statistics outputs are unused, and each
/// decomposed layer norm.
///
/// - Matches: a `LayerNormalization` (default domain) with an f32 input of known rank `r`, `axis`
///   −1 or `r − 1`, a scale input, and outputs 1 (`Mean`) and 2 (`InvStdDev`) absent or read by no
///   node and no graph output.
/// - Emits: `ai.sparsec::LayerNorm(X, scale, bias?)` named `sparsec.ln/<node>`, with the node's
///   `epsilon` (default 1e-5), writing the same output value; the original node is removed.
/// - Also matches the decomposed form (SparseML's and torch's opset-14 BERT exports):
///   `m = ReduceMean(x)`, `d = Sub(x, m)`, `Pow(d, 2)`, `ReduceMean`, `Add(·, ε)`, `Sqrt`,
///   `Div(d, ·)`, `Mul(·, γ)`, `Add(·, β)` (β optional), both means over the last axis only with
///   `keepdims`, `ε` a constant scalar, `γ` and `β` constant f32 `[N]`, every intermediate read
///   only by the next step (`d` by the `Pow` and the `Div`). Emits the same `LayerNorm`, named
///   `sparsec.ln/<first ReduceMean>`, writing the last `Add`'s (or `Mul`'s) output.
/// - Assumes: ONNX Runtime's CPU `LayerNormalization` semantics, which the kernel reproduces bit
///   for bit (sums of `x` and `x·x` in index order in f32, `sqrt(mean(x²) − mean² + ε)`, a true
///   division); `stash_type` does not change ORT's f32 arithmetic for an f32 input. For the
///   decomposed form this is not the graph's own arithmetic (`mean((x − m)²)`, ORT's reduction
///   order, `Div` then `Mul`): the outputs differ by f32 rounding, about an ulp of the output where
///   a row's mean is small against its spread (SparseML's MiniLM embeddings LayerNorm: 1.4e-6).
///   In a quantized model such a difference can move the next layer's quantized input by one step
///   (`tests/sparseml_exports.rs` measures the logits).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LowerLayerNorm {}

impl Pass for LowerLayerNorm {
    fn name(&self) -> &'static str {
        "LowerLayerNorm"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                let used = |v| g.outputs().contains(&v) || consumers.get(&v).is_some_and(|c| !c.is_empty());
                for (id, n) in g.nodes() {
                    if n.op_type != "LayerNormalization" || !n.domain.is_empty() {
                        continue;
                    }
                    let (Some(x), Some(scale), Some(y)) = (n.input(0), n.input(1), n.output(0)) else { continue };
                    let facts = &g.value(x).facts;
                    let Some(rank) = facts.rank() else { continue };
                    let axis = n.attr_int("axis").unwrap_or(-1);
                    if facts.dtype != Some(DType::F32) || rank == 0 || !(axis == -1 || axis == rank as i64 - 1) {
                        continue;
                    }
                    if (1..3).any(|slot| n.output(slot).is_some_and(used)) {
                        continue;
                    }
                    let epsilon = n.attr_float("epsilon").unwrap_or(1e-5);
                    let mut inputs = vec![x, scale];
                    inputs.extend(n.input(2));
                    let spec = NodeSpec::new("LayerNorm", format!("sparsec.ln/{}", n.name), &inputs)
                        .domain(DOMAIN)
                        .attr(Attribute::float("epsilon", epsilon));
                    p.remove_node(id);
                    p.add_node_with_outputs(spec, vec![Some(y)]);
                    report.rewritten += 1;
                }
                for (id, n) in g.nodes() {
                    let Some(d) = decomposed_at(g, &consumers, id, n) else { continue };
                    let mut inputs = vec![d.x, d.gamma];
                    inputs.extend(d.beta);
                    let spec = NodeSpec::new("LayerNorm", format!("sparsec.ln/{}", n.name), &inputs)
                        .domain(DOMAIN)
                        .attr(Attribute::float("epsilon", d.epsilon));
                    for &dead in &d.nodes {
                        p.remove_node(dead);
                    }
                    p.add_node_with_outputs(spec, vec![Some(d.y)]);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}

/// A decomposed layer norm found by [`decomposed_at`].
struct Decomposed {
    x: ValueId,
    gamma: ValueId,
    beta: Option<ValueId>,
    epsilon: f32,
    y: ValueId,
    nodes: Vec<NodeId>,
}

/// Whether `n` is a `ReduceMean` over the last axis only of an input of rank `rank`, keeping it:
/// `axes` as the attribute (opset < 18) or a constant second input.
fn is_last_axis_mean(g: &Graph, n: &Node, rank: usize) -> bool {
    if n.op_type != "ReduceMean" || !n.domain.is_empty() || n.attr_int("keepdims").unwrap_or(1) != 1 {
        return false;
    }
    let axes: Option<Vec<i64>> = match (n.attr_ints("axes"), n.input(1)) {
        (Some(a), None) => Some(a.to_vec()),
        (None, Some(v)) => g.constant(v).and_then(|t| t.as_i64s()),
        _ => None,
    };
    matches!(axes.as_deref(), Some([a]) if *a == -1 || *a == rank as i64 - 1)
}

/// The node reading `v` alone, when it is `op` in the default domain.
fn next<'g>(g: &'g Graph, cons: &Consumers, v: ValueId, op: &str) -> Option<(NodeId, &'g Node)> {
    sole_consumer(g, cons, v).filter(|(_, n, _)| n.op_type == op && n.domain.is_empty()).map(|(id, n, _)| (id, n))
}

/// A constant f32 `[N]` operand of `n` (the input that is not `v`).
fn const_row(g: &Graph, n: &Node, v: ValueId, width: Option<i64>) -> Option<ValueId> {
    let c = other_input(n, v)?;
    let t = g.constant(c).filter(|t| t.dtype == DType::F32 && t.dims.len() == 1)?;
    (width.is_none_or(|w| t.dims[0] == w)).then_some(c)
}

/// The decomposed layer norm whose first `ReduceMean` is `n` (see [`LowerLayerNorm`]).
fn decomposed_at(g: &Graph, cons: &Consumers, id: NodeId, n: &Node) -> Option<Decomposed> {
    let x = n.input(0)?;
    let facts = &g.value(x).facts;
    let rank = facts.rank()?;
    if facts.dtype != Some(DType::F32) || rank == 0 || !is_last_axis_mean(g, n, rank) {
        return None;
    }
    let width = facts.shape.as_ref().and_then(|s| s.last()).and_then(|d| d.known());
    let mean = n.output(0)?;
    let (sub_id, sub) = next(g, cons, mean, "Sub")?;
    if sub.input(0) != Some(x) || sub.input(1) != Some(mean) {
        return None;
    }
    let d = sub.output(0)?;
    if g.outputs().contains(&d) {
        return None;
    }
    let [(a, _), (b, _)] = cons.get(&d)?.as_slice() else { return None };
    let (pow_id, div_id) = if g.node(*a).op_type == "Pow" { (*a, *b) } else { (*b, *a) };
    let (pow, div) = (g.node(pow_id), g.node(div_id));
    if pow.op_type != "Pow" || pow.input(0) != Some(d) || const_f32_scalar(g, pow.input(1)?) != Some(2.0) {
        return None;
    }
    let (var_id, var) = next(g, cons, pow.output(0)?, "ReduceMean")?;
    if !is_last_axis_mean(g, var, rank) {
        return None;
    }
    let (add_id, add) = next(g, cons, var.output(0)?, "Add")?;
    let epsilon = const_f32_scalar(g, other_input(add, var.output(0)?)?)?;
    let (sqrt_id, sqrt) = next(g, cons, add.output(0)?, "Sqrt")?;
    let (div2_id, _) = next(g, cons, sqrt.output(0)?, "Div")?;
    if div2_id != div_id || div.op_type != "Div" || div.input(0) != Some(d) {
        return None;
    }
    let (mul_id, mul) = next(g, cons, div.output(0)?, "Mul")?;
    let gamma = const_row(g, mul, div.output(0)?, width)?;
    let mut y = mul.output(0)?;
    let mut nodes = vec![id, sub_id, pow_id, var_id, add_id, sqrt_id, div_id, mul_id];
    let mut beta = None;
    if let Some((bias_id, bias)) = next(g, cons, y, "Add") {
        if let Some(b) = const_row(g, bias, y, width) {
            beta = Some(b);
            nodes.push(bias_id);
            y = bias.output(0)?;
        }
    }
    Some(Decomposed { x, gamma, beta, epsilon, y, nodes })
}
