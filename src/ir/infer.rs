//! Static inference over a whole graph: runs each node's [`ops`](super::ops) rule in topological
//! order and merges the result with facts declared in the model file.

use super::ops::{self, InferCtx};
use super::{Dim, Facts, Graph, IrError, Model};

/// Checks that every node's op is supported; the error names the first unsupported node.
pub fn check_supported(g: &Graph) -> Result<(), IrError> {
    for (_, node) in g.nodes() {
        if ops::lookup(&node.domain, &node.op_type).is_none() {
            return Err(IrError::UnsupportedOp {
                node: node.name.clone(),
                op: node.op_type.clone(),
                domain: node.domain.clone(),
            });
        }
    }
    Ok(())
}

/// Infers dtype, symbolic shape and shape-arithmetic contents of every value of `model`.
///
/// Declared facts (graph inputs, `value_info`) are kept where inference knows less; a declared
/// shape that contradicts the inferred one is an error naming the node.
pub fn infer_facts(model: &mut Model) -> Result<(), IrError> {
    let opset = model.opset();
    let g = &mut model.graph;
    check_supported(g)?;
    let inits: Vec<_> = g.initializers.iter().map(|(&v, t)| (v, t.clone())).collect();
    for (v, t) in inits {
        let mut f = Facts::of_tensor(&t);
        if g.inputs.contains(&v) {
            f.constant = None;
            f.sym_value = None;
        }
        g.values[v.index()].facts = f;
    }
    let order = g.order.clone();
    for nid in order {
        let node = g.node(nid);
        let rule = ops::lookup(&node.domain, &node.op_type).expect("checked above");
        let inputs = node.inputs.iter().map(|v| v.map(|v| g.value(v).facts.clone())).collect();
        let cx = InferCtx { node, inputs, opset };
        let out = (rule.infer)(&cx).map_err(|message| IrError::Inference {
            node: node.name.clone(),
            op: node.op_type.clone(),
            message,
        })?;
        let outputs = node.outputs.clone();
        let (name, op) = (node.name.clone(), node.op_type.clone());
        for (slot, v) in outputs.iter().enumerate() {
            let (Some(v), Some(new)) = (v, out.get(slot)) else {
                continue;
            };
            let value = &mut g.values[v.index()];
            value.facts = merge(&value.facts, new, value.declared).map_err(|message| IrError::Inference {
                node: name.clone(),
                op: op.clone(),
                message: format!("output '{}': {message}", value.name),
            })?;
        }
    }
    Ok(())
}

fn merge(old: &Facts, new: &Facts, declared: bool) -> Result<Facts, String> {
    if !declared {
        return Ok(new.clone());
    }
    if let (Some(a), Some(b)) = (old.dtype, new.dtype) {
        if a != b {
            return Err(format!("declared dtype {a} but inferred {b}"));
        }
    }
    let shape = match (&old.shape, &new.shape) {
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return Err(format!("declared rank {} but inferred rank {}", a.len(), b.len()));
            }
            let mut out = Vec::with_capacity(a.len());
            for (x, y) in a.iter().zip(b) {
                match (x, y) {
                    (Dim::Known(p), Dim::Known(q)) if p != q => {
                        return Err(format!("declared shape {old} but inferred {new}"));
                    }
                    (_, Dim::Known(_)) => out.push(y.clone()),
                    (Dim::Known(_), _) => out.push(x.clone()),
                    (_, Dim::Sym(_)) => out.push(y.clone()),
                    _ => out.push(x.clone()),
                }
            }
            Some(out)
        }
        (a, b) => b.clone().or_else(|| a.clone()),
    };
    Ok(Facts {
        dtype: new.dtype.or(old.dtype),
        shape,
        sym_value: new.sym_value.clone(),
        constant: new.constant.clone(),
    })
}
