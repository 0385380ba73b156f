//! `UseAttentionTrain`: the attention cores of a graph about to be differentiated rewritten to
//! sparsec's training operator `ai.sparsec::AttentionTrain`, whose gradient rule
//! (`autodiff::rules::attention_train`) emits one `AttentionTrainGrad`: the forward keeps two f32
//! per query row instead of the `[B, H, S, S]` probabilities, and the backward recomputes them in
//! one fused kernel instead of the softmax gradient's chain of broadcast elementwise nodes.

use serde::{Deserialize, Serialize};

use super::pattern::{eval_f32_scalar, sole_consumer, Consumers};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::attention_train::ATTENTION_TRAIN;
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Dim, Facts, Graph, Model, NodeId, NodeSpec, Patch, ValueId};

/// Rewrites each attention core `MatMul(Q, Kt) → [Mul|Div by a constant] → [Add(·, Bias)] →
/// Softmax(last axis) → [Where(IsNaN(P), 0, P)] → MatMul(·, V)`.
///
/// - Matches: default-domain nodes in that chain, each intermediate value read only by the next
///   node (the guard's `IsNaN` and `Where` both read the `Softmax` output) and none a graph output;
///   `Q`, `Kt`, `V` f32 of rank 4 with `Q [.., S, D]`, `Kt [.., D, S]`, `V [.., S, D]` where
///   known; the bias f32 of rank ≤ 4.
/// - Emits: `ai.sparsec::AttentionTrain(Q, Kt, V, Bias?)` with attribute `scale` (the constant,
///   or its reciprocal for `Div`), writing the second `MatMul`'s output value and a new `Stats`
///   value, named and scoped as the first `MatMul`; the chain's nodes are removed. The model gains
///   the `ai.sparsec` opset import.
/// - Assumes: the kernel computes the same softmax in f32 (scores as FMA chains, a polynomial
///   `exp` within 2 ulp): outputs and gradients differ from the graph's by f32 rounding. A row
///   whose every score is -inf gives 0, as the guard does (without the guard the graph gives NaN).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UseAttentionTrain {}

struct Site {
    dead: Vec<NodeId>,
    first: NodeId,
    q: ValueId,
    kt: ValueId,
    v: ValueId,
    bias: Option<ValueId>,
    scale: f32,
    out: ValueId,
}

impl Pass for UseAttentionTrain {
    fn name(&self) -> &'static str {
        "UseAttentionTrain"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                for (id, _) in g.nodes() {
                    let Some(site) = match_site(g, &consumers, id) else { continue };
                    let first = g.node(site.first);
                    let stats = p.new_value(&format!("{}.attention_stats", first.name), Facts::default());
                    let spec = NodeSpec {
                        name: first.name.clone(),
                        op_type: ATTENTION_TRAIN.into(),
                        domain: DOMAIN.into(),
                        inputs: vec![Some(site.q), Some(site.kt), Some(site.v), site.bias],
                        attrs: vec![Attribute::float("scale", site.scale)],
                        metadata: first.metadata.clone(),
                    };
                    for &dead in &site.dead {
                        p.remove_node(dead);
                    }
                    p.add_node_with_outputs(spec, vec![Some(site.out), Some(stats)]);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        if report.rewritten > 0 && !model.opset_imports.iter().any(|(d, _)| d == DOMAIN) {
            model.opset_imports.push((DOMAIN.to_string(), 1));
        }
        Ok(report)
    }
}

/// The producer of `v` when it is a default-domain `op` whose output `v` is read only by `reader`.
fn feeding<'g>(
    g: &'g Graph,
    cons: &Consumers,
    v: ValueId,
    op: &str,
    reader: NodeId,
) -> Option<(NodeId, &'g crate::ir::Node)> {
    let (id, n) = g.producer(v)?;
    (n.op_type == op && n.domain.is_empty() && sole_consumer(g, cons, v).is_some_and(|(c, _, _)| c == reader))
        .then_some((id, n))
}

fn rank4_f32(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    let f = &g.value(v).facts;
    (f.dtype == Some(DType::F32)).then_some(())?;
    f.shape.clone().filter(|s| s.len() == 4)
}

/// The attention core whose `Softmax` is node `id`, if it is one.
fn match_site(g: &Graph, cons: &Consumers, id: NodeId) -> Option<Site> {
    let sm = g.node(id);
    if sm.op_type != "Softmax" || !sm.domain.is_empty() {
        return None;
    }
    let axis = sm.attr_int("axis").unwrap_or(-1);
    if axis != -1 && axis != 3 {
        return None;
    }
    let (x, p) = (sm.input(0)?, sm.output(0)?);
    let mut dead = vec![id];
    // Backwards: [Add(·, bias)] ← [Mul|Div by a constant] ← MatMul(Q, Kt).
    let (mut cur, mut reader, mut bias) = (x, id, None);
    if let Some((add, an)) = feeding(g, cons, cur, "Add", reader) {
        let (a, b) = (an.input(0)?, an.input(1)?);
        let scores_side = |v: ValueId| {
            g.producer(v)
                .is_some_and(|(_, n)| matches!(n.op_type.as_str(), "MatMul" | "Mul" | "Div") && n.domain.is_empty())
        };
        let (s, bv) = if scores_side(a) {
            (a, b)
        } else if scores_side(b) {
            (b, a)
        } else {
            return None;
        };
        if g.value(bv).facts.dtype != Some(DType::F32) || g.value(bv).facts.shape.as_ref().is_some_and(|s| s.len() > 4)
        {
            return None;
        }
        dead.push(add);
        bias = Some(bv);
        cur = s;
        reader = add;
    }
    let mut scale = 1.0f32;
    for op in ["Mul", "Div"] {
        if let Some((sid, sn)) = feeding(g, cons, cur, op, reader) {
            let (a, b) = (sn.input(0)?, sn.input(1)?);
            let (s, c) = match (eval_f32_scalar(g, b), eval_f32_scalar(g, a)) {
                (Some(c), _) => (a, c),
                (None, Some(c)) if op == "Mul" => (b, c),
                _ => return None,
            };
            scale = if op == "Mul" { c } else { 1.0 / c };
            if !scale.is_finite() {
                return None;
            }
            dead.push(sid);
            cur = s;
            reader = sid;
            break;
        }
    }
    let (first, mm) = feeding(g, cons, cur, "MatMul", reader)?;
    let (q, kt) = (mm.input(0)?, mm.input(1)?);
    dead.push(first);
    // Forwards: [Where(IsNaN(P), 0, P)] → MatMul(·, V).
    let users = cons.get(&p)?;
    if g.outputs().contains(&p) {
        return None;
    }
    let probs = match users.as_slice() {
        [(_, 0)] => p,
        [(a, _), (b, _)] => {
            let (isnan, wh) = if g.node(*a).op_type == "IsNaN" { (*a, *b) } else { (*b, *a) };
            let (inn, wn) = (g.node(isnan), g.node(wh));
            if inn.op_type != "IsNaN" || wn.op_type != "Where" || !inn.domain.is_empty() || !wn.domain.is_empty() {
                return None;
            }
            let cond = inn.output(0)?;
            if wn.input(0)? != cond || wn.input(2)? != p || eval_f32_scalar(g, wn.input(1)?) != Some(0.0) {
                return None;
            }
            sole_consumer(g, cons, cond).filter(|(c, _, _)| *c == wh)?;
            dead.extend([isnan, wh]);
            wn.output(0)?
        }
        _ => return None,
    };
    let (mm2, mn2, slot) = sole_consumer(g, cons, probs)?;
    if mn2.op_type != "MatMul" || !mn2.domain.is_empty() || slot != 0 {
        return None;
    }
    let (v, out) = (mn2.input(1)?, mn2.output(0)?);
    dead.push(mm2);
    let (qs, ks, vs) = (rank4_f32(g, q)?, rank4_f32(g, kt)?, rank4_f32(g, v)?);
    let fits =
        qs[3].compatible(&ks[2]) && qs[2].compatible(&ks[3]) && vs[2].compatible(&ks[3]) && vs[3].compatible(&qs[3]);
    if !fits {
        return None;
    }
    Some(Site { dead, first, q, kt, v, bias, scale, out })
}
