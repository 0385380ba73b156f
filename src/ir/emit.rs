//! Opset-aware node builders: one function per op whose form changed between opsets (`Reduce*`,
//! `Squeeze`, `Unsqueeze`, `Split`, `Pad`, `Clip`), so passes and gradient rules say what they
//! compute and the builder spells it for the graph's opset ([`schema::axes_is_input`]). Each
//! returns a [`NodeSpec`] to add through the caller's [`Patch`]; constant operands the newer
//! forms take as inputs come from the caller's [`IntConsts`].

use super::schema::axes_is_input;
use super::{Attribute, NodeSpec, Patch, Tensor, ValueId};

/// A source of 1-D i64 constants (axes, split sizes) for the input forms of the builders.
pub trait IntConsts {
    fn ints(&mut self, hint: &str, values: &[i64]) -> ValueId;
}

impl IntConsts for Patch<'_> {
    fn ints(&mut self, hint: &str, values: &[i64]) -> ValueId {
        self.add_initializer(hint, Tensor::from_i64(vec![values.len() as i64], values))
    }
}

/// An op that cannot be spelled at the graph's opset with the operands given.
#[derive(Debug, thiserror::Error)]
#[error("node '{node}': {op} at opset {opset}: {message}")]
pub struct EmitError {
    pub node: String,
    pub op: String,
    pub opset: i64,
    pub message: String,
}

/// `op` (a `Reduce*`) of `x` over `axes` (`None`: all axes).
pub fn reduce(
    c: &mut impl IntConsts,
    opset: i64,
    op: &str,
    name: impl Into<String>,
    x: ValueId,
    axes: Option<&[i64]>,
    keepdims: bool,
) -> NodeSpec {
    let name = name.into();
    let keep = Attribute::int("keepdims", keepdims as i64);
    match axes {
        None => NodeSpec::new(op, name, &[x]).attr(keep),
        Some(a) if axes_is_input(op, opset) => {
            let av = c.ints(&format!("{name}.axes"), a);
            NodeSpec::new(op, name, &[x, av]).attr(keep)
        }
        Some(a) => NodeSpec::new(op, name, &[x]).attr(Attribute::ints("axes", a.to_vec())).attr(keep),
    }
}

/// `op` of `x` over the axes held by the 1-D i64 value `axes`, computed at run time; needs the
/// input form (`ReduceSum` from opset 13, the other reductions from 18).
pub fn reduce_dynamic(
    opset: i64,
    op: &str,
    name: impl Into<String>,
    x: ValueId,
    axes: ValueId,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<NodeSpec, EmitError> {
    let name = name.into();
    if !axes_is_input(op, opset) {
        return Err(EmitError {
            node: name,
            op: op.into(),
            opset,
            message: "run-time axes need the axes-as-input form of a newer opset".into(),
        });
    }
    Ok(NodeSpec::new(op, name, &[x, axes])
        .attr(Attribute::int("keepdims", keepdims as i64))
        .attr(Attribute::int("noop_with_empty_axes", noop_with_empty_axes as i64)))
}

fn axes_op(c: &mut impl IntConsts, opset: i64, op: &str, name: String, x: ValueId, axes: &[i64]) -> NodeSpec {
    if axes_is_input(op, opset) {
        let av = c.ints(&format!("{name}.axes"), axes);
        NodeSpec::new(op, name, &[x, av])
    } else {
        NodeSpec::new(op, name, &[x]).attr(Attribute::ints("axes", axes.to_vec()))
    }
}

/// `Squeeze(x)` on `axes`.
pub fn squeeze(c: &mut impl IntConsts, opset: i64, name: impl Into<String>, x: ValueId, axes: &[i64]) -> NodeSpec {
    axes_op(c, opset, "Squeeze", name.into(), x, axes)
}

/// `Unsqueeze(x)` inserting `axes`.
pub fn unsqueeze(c: &mut impl IntConsts, opset: i64, name: impl Into<String>, x: ValueId, axes: &[i64]) -> NodeSpec {
    axes_op(c, opset, "Unsqueeze", name.into(), x, axes)
}

/// How a `Split` divides its axis.
#[derive(Clone, Copy, Debug)]
pub enum SplitSizes<'a> {
    /// Into as many equal parts as the node has outputs.
    Equal,
    /// Into parts of these static extents.
    Static(&'a [i64]),
    /// Into parts whose extents a 1-D i64 value holds at run time.
    Value(ValueId),
}

/// `Split(x)` along `axis` into `n_out` outputs.
pub fn split(
    c: &mut impl IntConsts,
    opset: i64,
    name: impl Into<String>,
    x: ValueId,
    axis: i64,
    sizes: SplitSizes,
    n_out: usize,
) -> Result<NodeSpec, EmitError> {
    let name = name.into();
    let ax = Attribute::int("axis", axis);
    let input_form = axes_is_input("Split", opset);
    Ok(match sizes {
        SplitSizes::Equal if opset >= 18 => {
            NodeSpec::new("Split", name, &[x]).attr(ax).attr(Attribute::int("num_outputs", n_out as i64))
        }
        SplitSizes::Equal => NodeSpec::new("Split", name, &[x]).attr(ax),
        SplitSizes::Static(s) if input_form => {
            let sv = c.ints(&format!("{name}.split"), s);
            NodeSpec::new("Split", name, &[x, sv]).attr(ax)
        }
        SplitSizes::Static(s) => NodeSpec::new("Split", name, &[x]).attr(ax).attr(Attribute::ints("split", s.to_vec())),
        SplitSizes::Value(v) if input_form => NodeSpec::new("Split", name, &[x, v]).attr(ax),
        SplitSizes::Value(_) => {
            return Err(EmitError {
                node: name,
                op: "Split".into(),
                opset,
                message: "run-time split sizes need opset 13 or newer".into(),
            })
        }
    })
}

/// `Pad(x)` with the 1-D i64 value `pads` (`[begin…, end…]`) in `mode` (`constant`, `edge`, `reflect`).
pub fn pad(opset: i64, name: impl Into<String>, x: ValueId, pads: ValueId, mode: &str) -> Result<NodeSpec, EmitError> {
    let name = name.into();
    if !axes_is_input("Pad", opset) {
        return Err(EmitError {
            node: name,
            op: "Pad".into(),
            opset,
            message: "pads as an input need opset 11 or newer".into(),
        });
    }
    Ok(NodeSpec::new("Pad", name, &[x, pads]).attr(Attribute::string("mode", mode)))
}

/// `Clip(x, min, max)` with optional scalar bounds held by values of `x`'s dtype.
pub fn clip(
    opset: i64,
    name: impl Into<String>,
    x: ValueId,
    min: Option<ValueId>,
    max: Option<ValueId>,
) -> Result<NodeSpec, EmitError> {
    let name = name.into();
    if !axes_is_input("Clip", opset) {
        return Err(EmitError {
            node: name,
            op: "Clip".into(),
            opset,
            message: "bounds as inputs need opset 11 or newer".into(),
        });
    }
    let mut spec = NodeSpec::new("Clip", name, &[x]);
    spec.inputs.push(min);
    spec.inputs.push(max);
    while spec.inputs.last() == Some(&None) {
        spec.inputs.pop();
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::schema::check_graph;
    use crate::ir::{DType, Facts, Graph, IrError};

    /// Every builder's output passes the schema check at every opset from 13 to 21.
    #[test]
    fn builders_emit_valid_nodes_at_every_opset() {
        for opset in 13..=21 {
            let mut g = Graph::default();
            g.edit(|p| -> Result<(), IrError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![]));
                let pads = p.ints("pads", &[0, 0, 1, 1]);
                let sizes = p.ints("sizes", &[1, 1]);
                let mut specs = vec![
                    reduce(p, opset, "ReduceMax", "rmax", x, Some(&[1]), false),
                    reduce(p, opset, "ReduceMin", "rmin", x, None, false),
                    reduce(p, opset, "ReduceSum", "rsum", x, Some(&[0, 1]), true),
                    reduce(p, opset, "ReduceMean", "rmean", x, Some(&[-1]), true),
                    squeeze(p, opset, "sq", x, &[0]),
                    unsqueeze(p, opset, "usq", x, &[0]),
                    pad(opset, "pad", x, pads, "constant").unwrap(),
                    clip(opset, "clip", x, None, Some(x)).unwrap(),
                ];
                if opset >= 18 {
                    specs.push(reduce_dynamic(opset, "ReduceMax", "rdyn", x, sizes, true, true).unwrap());
                }
                for s in specs {
                    let y = p.op(s, "y", Facts::default());
                    p.add_output(y);
                }
                for (i, sz) in
                    [SplitSizes::Equal, SplitSizes::Static(&[1, 1]), SplitSizes::Value(sizes)].into_iter().enumerate()
                {
                    let s = split(p, opset, format!("split{i}"), x, 0, sz, 2).unwrap();
                    let (_, outs) = p.add_node(s, &[("a", Facts::default()), ("b", Facts::default())]);
                    p.add_output(outs[0]);
                    p.add_output(outs[1]);
                }
                Ok(())
            })
            .unwrap();
            check_graph(&g, opset).unwrap_or_else(|e| panic!("opset {opset}: {e}"));
        }
    }

    #[test]
    fn reduce_max_spells_axes_as_attribute_before_18_and_input_from_18() {
        let mut g = Graph::default();
        g.edit(|p| -> Result<(), IrError> {
            let x = p.add_input("x", Facts::new(DType::F32, vec![]));
            let a = reduce(p, 17, "ReduceMax", "a", x, Some(&[1]), false);
            assert_eq!(a.inputs.len(), 1);
            assert!(a.attrs.iter().any(|at| at.name == "axes"));
            let b = reduce(p, 18, "ReduceMax", "b", x, Some(&[1]), false);
            assert_eq!(b.inputs.len(), 2);
            assert!(!b.attrs.iter().any(|at| at.name == "axes"));
            Ok(())
        })
        .unwrap();
    }
}
