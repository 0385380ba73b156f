//! PyTorch module names for the parameters of an exported graph.
//!
//! Exporters name MatMul weights anonymously (`onnx::MatMul_380`, `val_84`) and store them
//! transposed. The module path is recovered, in order of preference, from the dynamo exporter's
//! `pkg.torch.onnx.name_scopes` node metadata, from the legacy exporter's node names
//! (`/bert/encoder/layer.0/attention/self/query/MatMul` → `bert.encoder.layer.0.attention.self.query`),
//! and from the initializer's own name (`qa_outputs.weight` → `qa_outputs`).

use std::collections::{BTreeMap, HashMap};

use super::{Attrs, Graph, Node, NodeId, ValueId};

/// A linear layer whose weight is a prunable parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearLayer {
    /// PyTorch module path, e.g. `bert.encoder.layer.0.attention.self.query`.
    pub module: String,
    /// The MatMul or Gemm node (or sparsec's `MaskedLinear`, which keeps the MatMul's name).
    pub node: NodeId,
    /// The weight initializer.
    pub weight: ValueId,
    /// The bias initializer (the `Add` after a MatMul, or Gemm's C).
    pub bias: Option<ValueId>,
    /// Whether the initializer is stored `[in, out]` (MatMul), i.e. transposed from PyTorch's `[out, in]`.
    pub transposed: bool,
    /// When the weight reaches the MatMul through a `Transpose` node, that node.
    pub via_transpose: Option<NodeId>,
}

impl LinearLayer {
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.module)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.module)
    }
}

/// The module scope of a node, from dynamo metadata or a legacy node name.
pub fn node_scope(node: &Node) -> Option<String> {
    if let Some(scopes) = node.metadata("pkg.torch.onnx.name_scopes") {
        if let Some(s) = scope_from_name_scopes(scopes) {
            return Some(s);
        }
    }
    scope_from_legacy_name(&node.name)
}

/// `['', 'bert', 'bert.encoder', …, 'bert.encoder.layer.0.attention.self.query', 'linear']` →
/// the deepest module of the cumulative chain (trailing entries name the op, not a module).
fn scope_from_name_scopes(s: &str) -> Option<String> {
    let items = s
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|x| x.trim().trim_matches(|c| c == '\'' || c == '"'))
        .filter(|x| !x.is_empty());
    let mut current: Option<&str> = None;
    for item in items {
        match current {
            None => current = Some(item),
            Some(c) if item.strip_prefix(c).is_some_and(|rest| rest.starts_with('.')) => current = Some(item),
            Some(_) => break,
        }
    }
    current.map(str::to_string)
}

fn scope_from_legacy_name(name: &str) -> Option<String> {
    let trimmed = name.strip_prefix('/')?;
    let mut parts: Vec<&str> = trimmed.split('/').collect();
    parts.pop();
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("."))
}

fn module_from_initializer(name: &str) -> Option<String> {
    name.strip_suffix(".weight").map(str::to_string)
}

/// The initializer behind a MatMul/Gemm weight operand, looking through what sparsec's own passes
/// put in between (a pruning mask `Mul(W, mask)` with `mask` a plain graph input, fake quantisation
/// `DequantizeLinear(QuantizeLinear(W))` or `Where(flag, fq(W), W)`) and through one `Transpose`.
fn trace_weight(g: &Graph, mut v: ValueId) -> Option<(ValueId, Option<NodeId>)> {
    let mut transpose = None;
    let plain_input = |x: ValueId| g.inputs().contains(&x) && !g.is_initializer(x);
    for _ in 0..8 {
        if g.is_initializer(v) {
            return Some((v, transpose));
        }
        let (id, n) = g.producer(v)?;
        v = match n.op_type.as_str() {
            "Transpose" if transpose.is_none() => {
                transpose = Some(id);
                n.input(0)?
            }
            "Mul" => match (n.input(0)?, n.input(1)?) {
                (w, m) if plain_input(m) => w,
                (m, w) if plain_input(m) => w,
                _ => return None,
            },
            "Where" => n.input(2)?,
            "DequantizeLinear" => {
                let (_, q) = g.producer(n.input(0)?)?;
                if q.op_type != "QuantizeLinear" {
                    return None;
                }
                q.input(0)?
            }
            "Identity" => n.input(0)?,
            _ => return None,
        };
    }
    None
}

/// Every MatMul/Gemm whose weight is an initializer (directly or through one `Transpose`), with
/// its module path; also sparsec's `MaskedLinear` (`X·(W ⊙ M) + B`, `W` stored `[in, out]`).
/// Activation×activation MatMuls (attention scores) are not layers.
pub fn linear_layers(g: &Graph) -> Vec<LinearLayer> {
    let consumers = g.consumers();
    let mut layers = Vec::new();
    for (nid, node) in g.nodes() {
        let gemm = node.op_type == "Gemm";
        let masked =
            node.domain == super::ops::sparsec::DOMAIN && node.op_type == super::ops::masked_linear::MASKED_LINEAR;
        if !((node.op_type == "MatMul" || gemm) && node.domain.is_empty() || masked) {
            continue;
        }
        let Some(w_in) = node.input(1) else { continue };
        let Some((weight, via_transpose)) = trace_weight(g, w_in) else { continue };
        if g.initializer(weight).map(|t| t.dims.len()) != Some(2) {
            continue;
        }
        let mut transposed = !gemm || node.attr_int("transB").unwrap_or(0) == 0;
        if via_transpose.is_some() {
            transposed = !transposed;
        }
        let bias = if gemm {
            node.input(2).filter(|&b| g.is_initializer(b))
        } else if masked {
            node.input(3).filter(|&b| g.is_initializer(b))
        } else {
            node.output(0).and_then(|out| match consumers.get(&out).map(Vec::as_slice) {
                Some([(add, _)]) => {
                    let add = g.node(*add);
                    if add.op_type != "Add" {
                        return None;
                    }
                    add.inputs
                        .iter()
                        .flatten()
                        .copied()
                        .find(|&x| x != out && g.initializer(x).is_some_and(|t| t.dims.len() == 1))
                }
                _ => None,
            })
        };
        let module = node_scope(node)
            .or_else(|| module_from_initializer(&g.value(weight).name))
            .unwrap_or_else(|| g.value(weight).name.clone());
        layers.push(LinearLayer { module, node: nid, weight, bias, transposed, via_transpose });
    }
    layers
}

/// PyTorch parameter names for the initializers that can be named: linear weights and biases,
/// LayerNorm scale and bias, and initializers whose own name already is a parameter path.
pub fn parameter_names(g: &Graph) -> BTreeMap<String, ValueId> {
    let mut by_value: HashMap<ValueId, String> = HashMap::new();
    for (&v, _) in g.initializers() {
        let name = &g.value(v).name;
        if (name.ends_with(".weight") || name.ends_with(".bias")) && !name.starts_with("onnx::") {
            by_value.insert(v, name.clone());
        }
    }
    for layer in linear_layers(g) {
        by_value.insert(layer.weight, layer.weight_name());
        if let Some(b) = layer.bias {
            by_value.insert(b, layer.bias_name());
        }
    }
    for (_, node) in g.nodes() {
        if node.op_type != "LayerNormalization" {
            continue;
        }
        let Some(scope) = node_scope(node) else {
            continue;
        };
        for (slot, suffix) in [(1, "weight"), (2, "bias")] {
            if let Some(v) = node.input(slot).filter(|&v| g.is_initializer(v)) {
                by_value.entry(v).or_insert_with(|| format!("{scope}.{suffix}"));
            }
        }
    }
    by_value.into_iter().map(|(v, n)| (n, v)).collect()
}

/// The value a PyTorch module returns (what a forward hook on it sees): among the values that
/// nodes in the module's scope (`name` or below it) produce and that nodes outside it (or the
/// graph's outputs) read, the one produced last in topological order. `None` when no node is
/// in that scope or nothing leaves it.
pub fn module_output(g: &Graph, name: &str) -> Option<ValueId> {
    let inside =
        |n: &Node| node_scope(n).is_some_and(|s| s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('.')));
    let consumers = g.consumers();
    let outputs: std::collections::HashSet<ValueId> = g.outputs().iter().copied().collect();
    let mut found = None;
    for (_, node) in g.nodes() {
        if !inside(node) {
            continue;
        }
        for &v in node.outputs.iter().flatten() {
            let leaves =
                outputs.contains(&v) || consumers.get(&v).is_some_and(|cs| cs.iter().any(|&(c, _)| !inside(g.node(c))));
            if leaves {
                found = Some(v);
            }
        }
    }
    found
}
