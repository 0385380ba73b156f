//! `FuseQkv`: the query, key and value projections of one attention merged into one sparse linear
//! layer whose output the `Attention` node reads as fused QKV.

use serde::{Deserialize, Serialize};

use super::pattern::{sole_consumer, Consumers};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{
    AttrValue, Attribute, Attrs, DType, Dim, Facts, Graph, Model, Node, NodeId, NodeSpec, Patch, Tensor, ValueId,
};

/// Merges the three projections feeding an `ai.sparsec::Attention`.
///
/// - Matches: an `Attention` with separate Q, K, V inputs, each the only use of a `SparseLinear`
///   (or each of a `SparseLinearF32`) of the same input, with equal activation quantization
///   (the same constant scale and zero point, or all dynamic), no epilogue and no residual.
/// - Emits: one node of that op named `sparsec.qkv/<Attention>` whose weight is the three weights
///   side by side (`[K, 3N]`, per-channel scales and biases concatenated);
///   the `Attention` reads it with `qkv_fused = 1` and no K, V inputs. The three nodes are removed.
/// - Assumes: nothing beyond the match; each output channel is computed exactly as before.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FuseQkv {}

struct Proj<'g> {
    id: NodeId,
    node: &'g Node,
    w: Tensor,
    scale: Option<Vec<f32>>,
    bias: Vec<f32>,
}

fn proj<'g>(g: &'g Graph, cons: &Consumers, v: ValueId) -> Option<Proj<'g>> {
    let (id, node) = g.producer(v).filter(|(_, n)| n.domain == DOMAIN && n.op_type.starts_with("SparseLinear"))?;
    sole_consumer(g, cons, v)?;
    if node.attr_str("epilogue").unwrap_or("none") != "none" {
        return None;
    }
    let int8 = node.op_type == "SparseLinear";
    let (bias_slot, residual_slot) = if int8 { (3, 4) } else { (2, 3) };
    if node.input(residual_slot).is_some() {
        return None;
    }
    if node.attr_str("weight_format").is_some_and(|f| f != "dense") || node.attr_float("y_scale").is_some() {
        return None;
    }
    let w = g.constant(node.input(1)?)?.clone();
    if w.dims.len() != 2 {
        return None;
    }
    let scale = if int8 { Some(g.constant(node.input(2)?)?.as_f32s()?) } else { None };
    let bias = g.constant(node.input(bias_slot)?)?.as_f32s()?;
    Some(Proj { id, node, w, scale, bias })
}

fn same_act(a: &Node, b: &Node) -> bool {
    a.attr_float("x_scale").map(f32::to_bits) == b.attr_float("x_scale").map(f32::to_bits)
        && a.attr_int("x_zero_point") == b.attr_int("x_zero_point")
}

/// The Q, K, V projections of `att` when they can be merged: one op over one input, with equal
/// activation quantization and weights of equal rows and dtype.
fn projections<'g>(g: &'g Graph, cons: &Consumers, att: &Node) -> Option<[Proj<'g>; 3]> {
    if att.domain != DOMAIN || att.op_type != "Attention" || att.attr_int("qkv_fused").unwrap_or(0) != 0 {
        return None;
    }
    let ps = [proj(g, cons, att.input(0)?)?, proj(g, cons, att.input(2)?)?, proj(g, cons, att.input(3)?)?];
    let pq = &ps[0];
    let same_op = ps.iter().all(|p| p.node.op_type == pq.node.op_type);
    let same_x = ps.iter().all(|p| p.node.input(0) == pq.node.input(0));
    let same = ps.iter().all(|p| same_act(p.node, pq.node));
    let same_k = ps.iter().all(|p| p.w.dims[0] == pq.w.dims[0] && p.w.dtype == pq.w.dtype);
    (same_op && same_x && same_k && same).then_some(ps)
}

/// The three weights side by side, `[K, N_q + N_k + N_v]`.
fn merged_weight(ps: &[Proj; 3]) -> Option<Tensor> {
    let pq = &ps[0];
    let kdim = pq.w.dims[0] as usize;
    let ns: Vec<usize> = ps.iter().map(|p| p.w.dims[1] as usize).collect();
    let n: usize = ns.iter().sum();
    let esize = pq.w.dtype.size().unwrap_or(1);
    let mut wbytes = Vec::with_capacity(kdim * n * esize);
    for row in 0..kdim {
        for (pp, &ni) in ps.iter().zip(&ns) {
            wbytes.extend_from_slice(&pp.w.raw()[row * ni * esize..(row + 1) * ni * esize]);
        }
    }
    Tensor::from_raw(pq.w.dtype, vec![kdim as i64, n as i64], wbytes).ok()
}

/// The merged projection `tag` with weight `w`, per-channel scales (int8) and biases
/// concatenated; returns its output, shaped like `q` but `n` wide.
fn add_merged_projection(p: &mut Patch, ps: &[Proj; 3], tag: &str, w: Tensor, q: ValueId) -> ValueId {
    let pq = &ps[0];
    let n = w.dims[1];
    let mut inputs: Vec<Option<ValueId>> = vec![pq.node.input(0), Some(p.add_initializer(&format!("{tag}.weight"), w))];
    if pq.scale.is_some() {
        let scale: Vec<f32> = ps
            .iter()
            .flat_map(|pp| {
                let s = pp.scale.as_ref().expect("int8 projections carry scales");
                if s.len() == 1 {
                    vec![s[0]; pp.w.dims[1] as usize]
                } else {
                    s.clone()
                }
            })
            .collect();
        inputs.push(Some(p.add_initializer(&format!("{tag}.w_scale"), Tensor::from_f32(vec![n], &scale))));
    }
    let bias: Vec<f32> = ps.iter().flat_map(|pp| pp.bias.iter().copied()).collect();
    inputs.push(Some(p.add_initializer(&format!("{tag}.bias"), Tensor::from_f32(vec![n], &bias))));
    let mut shape = p.graph().value(q).facts.shape.clone();
    if let Some(last) = shape.as_mut().and_then(|s| s.last_mut()) {
        *last = Dim::Known(n);
    }
    let spec = NodeSpec {
        name: tag.to_string(),
        op_type: pq.node.op_type.clone(),
        domain: DOMAIN.into(),
        inputs,
        attrs: pq.node.attrs.clone(),
        metadata: Vec::new(),
    };
    p.op(spec, &format!("{tag}.out"), Facts { dtype: Some(DType::F32), shape, ..Facts::default() })
}

/// Replaces `att` by the same node reading fused QKV `y` (`qkv_fused = 1`, no K, V inputs).
fn read_fused(p: &mut Patch, att_id: NodeId, att: &Node, y: ValueId) {
    // Rebuilt rather than edited: an omitted trailing input would still count as an
    // input to ONNX Runtime's custom-op shape inference.
    let mask = if att.attr_int("has_mask") == Some(0) { y } else { att.input(1).unwrap_or(y) };
    let mut attrs = att.attrs.clone();
    attrs.retain(|a| a.name != "qkv_fused");
    attrs.push(Attribute::new("qkv_fused", AttrValue::Int(1)));
    let fused = NodeSpec {
        name: att.name.clone(),
        op_type: att.op_type.clone(),
        domain: DOMAIN.into(),
        inputs: vec![Some(y), Some(mask)],
        attrs,
        metadata: att.metadata.clone(),
    };
    p.remove_node(att_id);
    p.add_node_with_outputs(fused, att.outputs.clone());
}

impl Pass for FuseQkv {
    fn name(&self) -> &'static str {
        "FuseQkv"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let cons = g.consumers();
                for (att_id, att) in g.nodes() {
                    let (Some(q), Some(ps)) = (att.input(0), projections(g, &cons, att)) else { continue };
                    let Some(w) = merged_weight(&ps) else { continue };
                    let tag = format!("sparsec.qkv/{}", att.name);
                    let y = add_merged_projection(p, &ps, &tag, w, q);
                    read_fused(p, att_id, att, y);
                    for pp in &ps {
                        p.remove_node(pp.id);
                    }
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
