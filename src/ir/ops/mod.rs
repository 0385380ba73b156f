//! Per-op static rules, one file per op family, dispatched through one registry.
//!
//! A rule takes the facts of a node's inputs and returns the facts of its outputs (dtype, symbolic
//! shape, and symbolic contents for shape arithmetic). The registry also defines the op set sparsec
//! accepts: an op without a rule is rejected at import with the node's name.

pub mod attention_train;
mod elementwise;
pub mod embedding_grad;
pub mod gelu_train;
pub mod layer_norm_grad;
mod linalg;
pub mod masked_linear;
mod nn;
mod shape;
pub mod sparsec;

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{Attrs, DType, Dim, Facts, Node};

/// What a rule sees: the node and the facts of each input slot (`None` for omitted inputs).
pub struct InferCtx<'a> {
    pub node: &'a Node,
    pub inputs: Vec<Option<Facts>>,
    pub opset: i64,
}

pub type InferFn = fn(&InferCtx) -> Result<Vec<Facts>, String>;

/// One operator's static rule.
pub struct OpDef {
    pub domain: &'static str,
    pub op_type: &'static str,
    pub infer: InferFn,
}

type Registry = HashMap<&'static str, HashMap<&'static str, OpDef>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let mut defs = Vec::new();
        elementwise::register(&mut defs);
        linalg::register(&mut defs);
        nn::register(&mut defs);
        shape::register(&mut defs);
        sparsec::register(&mut defs);
        masked_linear::register(&mut defs);
        attention_train::register(&mut defs);
        embedding_grad::register(&mut defs);
        gelu_train::register(&mut defs);
        layer_norm_grad::register(&mut defs);
        let mut reg = Registry::new();
        for d in defs {
            reg.entry(d.domain).or_default().insert(d.op_type, d);
        }
        reg
    })
}

/// The rule for `(domain, op_type)`; `ai.onnx` is the default domain.
pub fn lookup(domain: &str, op_type: &str) -> Option<&'static OpDef> {
    let domain = if domain == "ai.onnx" { "" } else { domain };
    registry().get(domain)?.get(op_type)
}

/// All supported `(domain, op_type)` pairs, sorted.
pub fn supported_ops() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = registry().iter().flat_map(|(d, ops)| ops.keys().map(move |o| (*d, *o))).collect();
    v.sort();
    v
}

pub(crate) fn def(domain: &'static str, op_type: &'static str, infer: InferFn) -> OpDef {
    OpDef { domain, op_type, infer }
}

impl<'a> InferCtx<'a> {
    pub fn input(&self, i: usize) -> Result<&Facts, String> {
        self.inputs.get(i).and_then(Option::as_ref).ok_or_else(|| format!("missing input {i}"))
    }
    pub fn opt_input(&self, i: usize) -> Option<&Facts> {
        self.inputs.get(i).and_then(Option::as_ref)
    }
    pub fn dtype(&self, i: usize) -> Option<DType> {
        self.opt_input(i).and_then(|f| f.dtype)
    }
    pub fn shape(&self, i: usize) -> Option<&Vec<Dim>> {
        self.opt_input(i).and_then(|f| f.shape.as_ref())
    }
    pub fn rank(&self, i: usize) -> Option<usize> {
        self.shape(i).map(Vec::len)
    }
    /// Known integer contents of input `i` (from a constant or shape arithmetic).
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        let f = self.opt_input(i)?;
        if let Some(t) = &f.constant {
            return t.as_i64s();
        }
        f.sym_value.as_ref()?.iter().map(Dim::known).collect()
    }
    /// Possibly-symbolic integer contents of input `i`.
    pub fn sym(&self, i: usize) -> Option<Vec<Dim>> {
        let f = self.opt_input(i)?;
        if let Some(v) = &f.sym_value {
            return Some(v.clone());
        }
        f.constant.as_ref()?.as_i64s().map(|v| v.into_iter().map(Dim::Known).collect())
    }
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.node.attr_int(name)
    }
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr_ints(name).map(<[i64]>::to_vec)
    }
    /// Axes from the attribute (older opsets) or from input `i` (newer opsets).
    pub fn axes(&self, attr: &str, input: usize) -> Option<Vec<i64>> {
        self.attr_ints(attr).or_else(|| self.ints(input))
    }
}

/// Normalises a possibly-negative axis against `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// Numpy-style multidirectional broadcast of shapes.
pub(crate) fn broadcast(shapes: &[&Vec<Dim>]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut d = Dim::Known(1);
        for s in shapes {
            let off = rank - s.len();
            if i < off {
                continue;
            }
            let e = &s[i - off];
            d = match (&d, e) {
                (Dim::Known(1), e) => e.clone(),
                (_, Dim::Known(1)) => d.clone(),
                (Dim::Known(a), Dim::Known(b)) if a != b => {
                    return Err(format!("shapes {} cannot broadcast", fmt_shapes(shapes)));
                }
                (Dim::Known(_), _) => d.clone(),
                (_, Dim::Known(_)) => e.clone(),
                (Dim::Sym(a), Dim::Sym(b)) if a == b => d.clone(),
                (Dim::Sym(_), Dim::Unknown) => d.clone(),
                (Dim::Unknown, Dim::Sym(_)) => e.clone(),
                _ => Dim::Unknown,
            };
        }
        out.push(d);
    }
    Ok(out)
}

fn fmt_shapes(shapes: &[&Vec<Dim>]) -> String {
    shapes
        .iter()
        .map(|s| format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(" and ")
}

pub(crate) fn facts(dtype: Option<DType>, shape: Option<Vec<Dim>>) -> Facts {
    Facts { dtype, shape, sym_value: None, constant: None }
}
