//! Reverse-mode automatic differentiation over the IR, emitting standard ONNX ops.
//!
//! Sits after `passes/` (masks, fake-quant) and before `train/`: [`differentiate`] takes a model, a
//! scalar loss value and parameter initializers, and returns a model that also outputs
//! `grad.<initializer>` for each parameter. The backward graph uses only default-domain ONNX ops
//! (opset >= 17) that the stock onnxruntime CPU build runs: no training or `com.microsoft` ops;
//! sparsec's own `ai.sparsec` training operators appear only where the forward graph has them
//! (`passes::UseMaskedLinear`).
//! [`build_training_graph`] adds a QA training loss ([`loss`]) first, after dropping what only costs the
//! backward memory ([`guards`]: softmax NaN guards that cannot fire).
//!
//! The driver walks the nodes between the parameters and the loss in reverse topological order;
//! each op's gradient lives in one rule under [`rules`], emitted through the [`Gradient`] builder.

mod builder;
pub mod guards;
pub mod loss;
pub mod rules;

use std::collections::{HashMap, HashSet};

pub use builder::{float_tensor, Gradient};
pub use loss::{build_training_graph, LayerDistill, LossSpec, TrainingGraph, TrainingGraphSpec};
pub use rules::{differentiable_ops, NodeGrad};

use crate::ir::{infer, modules, DType, Graph, IrError, Model, NodeId, NodeSpec, ValueId};

/// Errors of building a gradient graph. Each names the node, value or parameter at fault.
#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("node '{node}': op '{op}' has no gradient rule, and it lies between the parameters and the loss")]
    NoRule { node: String, op: String },
    #[error("node '{node}' ({op}): {message}")]
    Rule { node: String, op: String, message: String },
    #[error("{reason}")]
    Unsupported { reason: String },
    #[error("no value named '{0}' in the graph")]
    UnknownValue(String),
    #[error("parameter '{0}' is neither an initializer nor a graph input")]
    NotAParameter(String),
    #[error("parameter '{name}' has dtype {dtype}; only floating-point parameters have gradients")]
    NonFloatParameter { name: String, dtype: DType },
    #[error("loss '{0}' does not depend on any of the parameters")]
    LossIndependent(String),
    #[error("loss '{name}' must be a floating-point scalar, it is {facts}")]
    BadLoss { name: String, facts: String },
    #[error("the model's default-domain opset is {0}; the gradient builder needs opset 17 or newer")]
    Opset(i64),
    #[error("{step}: {source}")]
    Invalid { step: &'static str, source: IrError },
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// One parameter's gradient output.
#[derive(Clone, Debug, PartialEq)]
pub struct GradEntry {
    /// The parameter's initializer (or input) name.
    pub param: String,
    /// Its PyTorch parameter name, where [`modules::parameter_names`] knows it.
    pub torch_name: Option<String>,
    /// The graph output holding d loss / d param, shaped like the parameter.
    pub output: String,
    /// False when no path joins the parameter to the loss (the output is then all zeros).
    pub connected: bool,
}

/// The gradient outputs of a differentiated model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GradMap {
    /// The graph output holding the loss.
    pub loss: String,
    pub entries: Vec<GradEntry>,
}

impl GradMap {
    pub fn by_param(&self, param: &str) -> Option<&GradEntry> {
        self.entries.iter().find(|e| e.param == param)
    }
    pub fn by_torch_name(&self, name: &str) -> Option<&GradEntry> {
        self.entries.iter().find(|e| e.torch_name.as_deref() == Some(name))
    }
}

/// Options of [`differentiate`].
#[derive(Clone, Debug, Default)]
pub struct GradOptions {
    /// `(parameter, row)`: rows of a parameter whose gradient is forced to zero, as PyTorch's
    /// `nn.Embedding(padding_idx=row)` does (the exported graph no longer knows about it).
    pub zero_grad_rows: Vec<(String, i64)>,
    /// Emit sparsec's training operators where one replaces a chain of standard ones:
    /// `ai.sparsec::EmbeddingGrad` for embedding tables (one pass instead of zeros, `ScatterND` and a
    /// row-zeroing `Mul`) and `ai.sparsec::LayerNormGrad` for `LayerNormalization` over the last axis;
    /// off, the graph is standard ONNX throughout.
    pub sparsec_training_ops: bool,
}

/// Appends the backward graph of `loss` with respect to `params` (initializer or input names).
///
/// Contract: the returned model computes everything `model` did, plus the output `loss` and one
/// output `grad.<param>` per parameter (named in the returned [`GradMap`]); initializer
/// parameters become overridable graph inputs. Only nodes on a path from a parameter to the loss
/// are differentiated, and a gradient reaching a value through several consumers is summed. An
/// op on such a path without a gradient rule is an error naming the op and the node.
pub fn differentiate(
    model: &Model,
    loss: &str,
    params: &[String],
    opts: &GradOptions,
) -> Result<(Model, GradMap), AutodiffError> {
    let opset = model.opset();
    if opset < 17 {
        return Err(AutodiffError::Opset(opset));
    }
    let mut m = model.clone();
    expose_params(&mut m, params)?;
    infer::infer_facts(&mut m)?;
    let g = &m.graph;
    let loss_v = scalar_loss(g, loss)?;
    let param_ids = parameter_values(g, params)?;
    let path = GradPath::find(g, loss, loss_v, &param_ids)?;
    let torch_names: HashMap<ValueId, String> =
        modules::parameter_names(g).into_iter().map(|(name, v)| (v, name)).collect();

    let mut entries = Vec::with_capacity(param_ids.len());
    m.graph.edit(|p| -> Result<(), AutodiffError> {
        let graph = p.graph();
        let mut b = Gradient::new(p, opset);
        b.sparsec_training_ops = opts.sparsec_training_ops;
        let grads = backpropagate(&mut b, &path, loss_v)?;
        entries = grad_outputs(&mut b, grads, &param_ids, opts)?;
        if !graph.outputs().contains(&loss_v) {
            b.patch().add_output(loss_v);
        }
        Ok(())
    })?;
    drop_unread_constants(&mut m.graph, &model.graph)?;
    let g = &m.graph;
    let entries = entries
        .into_iter()
        .map(|(v, out, connected)| GradEntry {
            param: g.value(v).name.clone(),
            torch_name: torch_names.get(&v).cloned(),
            output: g.value(out).name.clone(),
            connected,
        })
        .collect();
    Ok((m, GradMap { loss: loss.to_string(), entries }))
}

/// Makes every initializer among `params` an overridable graph input.
fn expose_params(m: &mut Model, params: &[String]) -> Result<(), AutodiffError> {
    m.graph.edit(|p| -> Result<(), AutodiffError> {
        for name in params {
            let v = p.graph().value_by_name(name).ok_or_else(|| AutodiffError::UnknownValue(name.clone()))?;
            if !p.graph().inputs().contains(&v) && p.graph().is_initializer(v) {
                p.expose_as_input(v);
            }
        }
        Ok(())
    })
}

/// The value named `loss`, which must be a floating-point scalar.
fn scalar_loss(g: &Graph, loss: &str) -> Result<ValueId, AutodiffError> {
    let loss_v = g.value_by_name(loss).ok_or_else(|| AutodiffError::UnknownValue(loss.to_string()))?;
    let loss_facts = &g.value(loss_v).facts;
    if !loss_facts.dtype.is_some_and(DType::is_float) || loss_facts.shape.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(AutodiffError::BadLoss { name: loss.to_string(), facts: loss_facts.to_string() });
    }
    Ok(loss_v)
}

/// The values named `params`: each an initializer or a graph input, of a floating-point dtype
/// where the dtype is known.
fn parameter_values(g: &Graph, params: &[String]) -> Result<Vec<ValueId>, AutodiffError> {
    let mut param_ids = Vec::with_capacity(params.len());
    for name in params {
        let v = g.value_by_name(name).ok_or_else(|| AutodiffError::UnknownValue(name.clone()))?;
        if !g.is_initializer(v) && !g.inputs().contains(&v) {
            return Err(AutodiffError::NotAParameter(name.clone()));
        }
        match g.value(v).facts.dtype {
            Some(d) if !d.is_float() => return Err(AutodiffError::NonFloatParameter { name: name.clone(), dtype: d }),
            _ => {}
        }
        param_ids.push(v);
    }
    Ok(param_ids)
}

/// The part of the graph a backward pass walks: the nodes on a path from a parameter to the loss.
struct GradPath {
    /// Each node's gradient sources (its rule's, or all its inputs where it has none);
    /// non-differentiable ops are absent.
    sources: HashMap<NodeId, Vec<Option<ValueId>>>,
    /// Float values that depend on a parameter.
    active: HashSet<ValueId>,
    /// The values the loss depends on, through the nodes of `nodes`.
    reach: HashSet<ValueId>,
    /// The nodes to differentiate, in reverse topological order.
    nodes: Vec<NodeId>,
}

impl GradPath {
    /// Sweeps forward from the parameters, then back from the loss; an op on the path without a
    /// gradient rule is an error.
    fn find(g: &Graph, loss: &str, loss_v: ValueId, params: &[ValueId]) -> Result<GradPath, AutodiffError> {
        let mut path = GradPath::forward(g, params);
        if !path.active.contains(&loss_v) {
            return Err(AutodiffError::LossIndependent(loss.to_string()));
        }
        path.back_from(g, loss_v)?;
        Ok(path)
    }

    /// Every differentiable node's sources, and the float values that depend on `params`.
    fn forward(g: &Graph, params: &[ValueId]) -> GradPath {
        let is_float = |v: ValueId| g.value(v).facts.dtype.is_none_or(DType::is_float);
        let mut sources: HashMap<NodeId, Vec<Option<ValueId>>> = HashMap::new();
        let mut active: HashSet<ValueId> = params.iter().copied().collect();
        for (nid, node) in g.nodes() {
            if rules::is_non_differentiable(&node.domain, &node.op_type) {
                continue;
            }
            let srcs = match rules::lookup(&node.domain, &node.op_type) {
                Some(r) => r.sources_of(g, node),
                None => node.inputs.clone(),
            };
            if srcs.iter().flatten().any(|s| active.contains(s)) {
                active.extend(node.outputs.iter().flatten().copied().filter(|&o| is_float(o)));
            }
            sources.insert(nid, srcs);
        }
        GradPath { sources, active, reach: HashSet::new(), nodes: Vec::new() }
    }

    /// The nodes between the active values and `loss_v`, walked back from the loss.
    fn back_from(&mut self, g: &Graph, loss_v: ValueId) -> Result<(), AutodiffError> {
        self.reach = HashSet::from([loss_v]);
        for &nid in g.order().iter().rev() {
            let Some(srcs) = self.sources.get(&nid) else { continue };
            let node = g.node(nid);
            if !node.outputs.iter().flatten().any(|o| self.reach.contains(o) && self.active.contains(o)) {
                continue;
            }
            if !srcs.iter().flatten().any(|s| self.active.contains(s)) {
                continue;
            }
            if rules::lookup(&node.domain, &node.op_type).is_none() {
                return Err(AutodiffError::NoRule { node: node.name.clone(), op: node.op_type.clone() });
            }
            self.reach.extend(srcs.iter().flatten().copied().filter(|s| self.active.contains(s)));
            self.nodes.push(nid);
        }
        Ok(())
    }

    /// Whether each of `srcs` needs a gradient: it depends on a parameter and the loss on it.
    fn wanted(&self, srcs: &[Option<ValueId>]) -> Vec<bool> {
        srcs.iter().map(|s| s.is_some_and(|s| self.active.contains(&s) && self.reach.contains(&s))).collect()
    }
}

/// Seeds d loss / d loss = 1 and runs each node's gradient rule along `path`; returns the
/// gradient parts that reached each value (several consumers give several parts).
fn backpropagate(
    b: &mut Gradient,
    path: &GradPath,
    loss_v: ValueId,
) -> Result<HashMap<ValueId, Vec<ValueId>>, AutodiffError> {
    let graph = b.graph();
    let dtype = b.float_dtype(loss_v);
    let seed = {
        let one = b.scalar(1.0, dtype);
        let s = b.shape_of(loss_v);
        b.op("Expand", &[one, s], vec![])
    };
    let mut grads: HashMap<ValueId, Vec<ValueId>> = HashMap::from([(loss_v, vec![seed])]);
    for &nid in &path.nodes {
        let node = graph.node(nid);
        let rule = rules::lookup(&node.domain, &node.op_type).expect("checked while finding the path");
        b.set_scope(format!("grad/{}", node.name));
        let out_grads: Vec<Option<ValueId>> = node
            .outputs
            .iter()
            .map(|o| o.and_then(|o| grads.remove(&o)).and_then(|parts| b.accumulate(&parts)))
            .collect();
        let srcs = path.sources[&nid].clone();
        let wanted = path.wanted(&srcs);
        let ng = NodeGrad { id: nid, node, out_grads, sources: srcs.clone(), wanted: wanted.clone() };
        let results = (rule.backward)(b, &ng)?;
        for (k, src) in srcs.iter().enumerate() {
            let (Some(src), true) = (src, wanted[k]) else { continue };
            let r =
                results.get(k).copied().flatten().ok_or_else(|| {
                    ng.error(format!("the rule gave no gradient for input '{}'", graph.value(*src).name))
                })?;
            grads.entry(*src).or_default().push(r);
        }
    }
    Ok(grads)
}

/// One output `grad.<param>` per parameter: the parts in `grads` summed (zeros when none reached
/// it), with the rows `opts` names zeroed. Returns (parameter, output, whether any part reached it).
fn grad_outputs(
    b: &mut Gradient,
    mut grads: HashMap<ValueId, Vec<ValueId>>,
    params: &[ValueId],
    opts: &GradOptions,
) -> Result<Vec<(ValueId, ValueId, bool)>, AutodiffError> {
    let graph = b.graph();
    b.set_scope("grad/outputs".into());
    let mut entries = Vec::with_capacity(params.len());
    for &v in params {
        let name = graph.value(v).name.clone();
        let pdt = b.float_dtype(v);
        let parts = grads.remove(&v).unwrap_or_default();
        let connected = !parts.is_empty();
        let mut gv = match b.accumulate(&parts) {
            Some(gv) => gv,
            None => b.zeros_like(v, pdt),
        };
        let rows: Vec<i64> = opts.zero_grad_rows.iter().filter(|(n, _)| *n == name).map(|(_, r)| *r).collect();
        if !rows.is_empty() {
            gv = zero_rows(b, gv, v, &rows, pdt)?;
        }
        let facts = graph.value(v).facts.type_only();
        let out_name = format!("grad.{name}");
        let spec = NodeSpec::new("Identity", format!("grad/outputs/{name}"), &[gv]);
        let (_, outs) = b.patch().add_node(spec, &[(out_name.as_str(), facts)]);
        b.patch().add_output(outs[0]);
        entries.push((v, outs[0], connected));
    }
    Ok(entries)
}

/// Removes initializers the backward pass created but no node reads (constants cached by the
/// builder and then left unused), so engines do not warn about them.
fn drop_unread_constants(g: &mut crate::ir::Graph, original: &crate::ir::Graph) -> Result<(), AutodiffError> {
    let consumers = g.consumers();
    let unread: Vec<ValueId> = g
        .initializers()
        .keys()
        .copied()
        .filter(|v| {
            let name = &g.value(*v).name;
            original.value_by_name(name).is_none()
                && !consumers.contains_key(v)
                && !g.inputs().contains(v)
                && !g.outputs().contains(v)
        })
        .collect();
    g.edit(|p| -> Result<(), AutodiffError> {
        for v in unread {
            p.remove_initializer(v);
        }
        Ok(())
    })
}

/// Multiplies the gradient of `param` by a constant mask that is zero on the given rows (axis 0).
fn zero_rows(
    b: &mut Gradient,
    grad: ValueId,
    param: ValueId,
    rows: &[i64],
    dtype: DType,
) -> Result<ValueId, AutodiffError> {
    let n =
        b.shape(param).and_then(|s| s.first().and_then(|d| d.known())).ok_or_else(|| AutodiffError::Unsupported {
            reason: format!(
                "zeroing gradient rows of '{}': its first dimension is not static",
                b.graph().value(param).name
            ),
        })?;
    let rank = b.rank(param).unwrap_or(1);
    if let Some(node) = b.embedding_grad_node(grad) {
        let mut wrapped = Vec::with_capacity(rows.len());
        for &r in rows {
            let r = if r < 0 { r + n } else { r };
            if !(0..n).contains(&r) {
                return Err(AutodiffError::Unsupported {
                    reason: format!("row {r} is out of range for '{}' with {n} rows", b.graph().value(param).name),
                });
            }
            wrapped.push(r);
        }
        b.patch().set_attr(node, crate::ir::Attribute::ints("zero_rows", wrapped));
        return Ok(grad);
    }
    let mut mask = vec![1.0; n as usize];
    for &r in rows {
        let r = if r < 0 { r + n } else { r };
        if !(0..n).contains(&r) {
            return Err(AutodiffError::Unsupported {
                reason: format!("row {r} is out of range for '{}' with {n} rows", b.graph().value(param).name),
            });
        }
        mask[r as usize] = 0.0;
    }
    let mut dims = vec![n];
    dims.extend(std::iter::repeat_n(1, rank.saturating_sub(1)));
    let t = float_tensor(dtype, dims, &mask);
    let m = b.constant(t);
    Ok(b.mul(grad, m))
}
