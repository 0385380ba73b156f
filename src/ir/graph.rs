//! The graph IR: nodes and values addressed by typed ids, initializers, inputs and outputs.
//!
//! Edits go through [`Patch`](super::Patch) only; this module exposes read access and the
//! low-level mutations the patch applies.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::{Attribute, Attrs, Facts, NodeId, Tensor, ValueId};

/// One edge of the graph.
#[derive(Clone, Debug)]
pub struct Value {
    /// Unique within the graph.
    pub name: String,
    pub facts: Facts,
    /// Whether `facts` came from the model file (`value_info`, graph inputs/outputs) rather than inference.
    pub declared: bool,
    pub doc_string: Option<String>,
    /// The node and output slot that computes this value; `None` for graph inputs and initializers.
    pub(crate) producer: Option<(NodeId, usize)>,
}

impl Value {
    pub fn producer(&self) -> Option<(NodeId, usize)> {
        self.producer
    }
}

/// One operator application.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// Operator domain: `""` for the default ONNX domain, `com.microsoft`, ….
    pub domain: String,
    /// Inputs in slot order; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs in slot order; `None` for an omitted optional output.
    pub outputs: Vec<Option<ValueId>>,
    pub attrs: Vec<Attribute>,
    /// `metadata_props` of the node (the dynamo exporter stores module scopes here).
    pub metadata: Vec<(String, String)>,
    pub doc_string: Option<String>,
}

impl Node {
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Attrs for Node {
    fn attr(&self, name: &str) -> Option<&super::AttrValue> {
        self.attrs.as_slice().attr(name)
    }
}

/// A computation graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub doc_string: Option<String>,
    /// Every value ever created; ids index this and are never reused.
    pub(crate) values: Vec<Value>,
    /// Node slots; `None` once removed.
    pub(crate) nodes: Vec<Option<Node>>,
    /// Live nodes in topological order: each node comes after the producers of all its inputs.
    pub(crate) order: Vec<NodeId>,
    /// Graph inputs in declaration order. May include initializers (overridable defaults).
    pub(crate) inputs: Vec<ValueId>,
    /// Graph outputs in declaration order.
    pub(crate) outputs: Vec<ValueId>,
    /// Initializers in file order; keys are values with no producer.
    pub(crate) initializers: IndexMap<ValueId, Tensor>,
    /// Name → value, for every value.
    pub(crate) by_name: HashMap<String, ValueId>,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.index()].as_ref().expect("node id refers to a removed node")
    }
    /// Live nodes in topological order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.order.iter().map(move |&id| (id, self.node(id)))
    }
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }
    pub fn node_count(&self) -> usize {
        self.order.len()
    }
    pub fn value_count(&self) -> usize {
        self.values.len()
    }
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }
    /// Graph inputs that are not initializers: what a caller must feed.
    pub fn runtime_inputs(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.inputs.iter().copied().filter(move |v| !self.initializers.contains_key(v))
    }
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }
    pub fn initializers(&self) -> &IndexMap<ValueId, Tensor> {
        &self.initializers
    }
    pub fn initializer(&self, id: ValueId) -> Option<&Tensor> {
        self.initializers.get(&id)
    }
    pub fn is_initializer(&self, id: ValueId) -> bool {
        self.initializers.contains_key(&id)
    }
    pub fn producer(&self, id: ValueId) -> Option<(NodeId, &Node)> {
        self.values[id.index()].producer.map(|(n, _)| (n, self.node(n)))
    }

    /// The constant behind a value: an initializer that is not an overridable input, or a `Constant` node's output.
    pub fn constant(&self, id: ValueId) -> Option<&Tensor> {
        if let Some(t) = self.initializers.get(&id) {
            return (!self.inputs.contains(&id)).then_some(t);
        }
        if let Some((_, n)) = self.producer(id) {
            if n.op_type == "Constant" && n.domain.is_empty() {
                return n.attr_tensor("value");
            }
        }
        self.values[id.index()].facts.constant.as_ref()
    }

    /// Consumers of every value: value → (node, input slot), in topological order of the consumers.
    pub fn consumers(&self) -> HashMap<ValueId, Vec<(NodeId, usize)>> {
        let mut map: HashMap<ValueId, Vec<(NodeId, usize)>> = HashMap::new();
        for (id, node) in self.nodes() {
            for (slot, v) in node.inputs.iter().enumerate() {
                if let Some(v) = v {
                    map.entry(*v).or_default().push((id, slot));
                }
            }
        }
        map
    }

    pub fn set_facts(&mut self, id: ValueId, facts: Facts) {
        self.values[id.index()].facts = facts;
    }

    /// Replaces a value's facts and marks them as not declared by the file (not written to `value_info`).
    pub fn forget_declared(&mut self, id: ValueId, facts: Facts) {
        let v = &mut self.values[id.index()];
        v.facts = facts;
        v.declared = false;
    }

    pub(crate) fn push_value(&mut self, name: String, facts: Facts, declared: bool) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.by_name.insert(name.clone(), id);
        self.values.push(Value { name, facts, declared, doc_string: None, producer: None });
        id
    }

    /// A value name not yet used in the graph, derived from `hint`.
    pub fn fresh_name(&self, hint: &str) -> String {
        if !self.by_name.contains_key(hint) {
            return hint.to_string();
        }
        (1..).map(|i| format!("{hint}_{i}")).find(|n| !self.by_name.contains_key(n)).unwrap()
    }

    /// Values reachable backwards from the outputs, and the nodes that compute them.
    pub fn live_nodes(&self) -> HashSet<NodeId> {
        let mut live = HashSet::new();
        let mut stack: Vec<ValueId> = self.outputs.clone();
        while let Some(v) = stack.pop() {
            if let Some((n, _)) = self.values[v.index()].producer {
                if live.insert(n) {
                    stack.extend(self.node(n).inputs.iter().flatten().copied());
                }
            }
        }
        live
    }
}

/// A whole model: the graph plus the envelope `ModelProto` carries.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ir_version: i64,
    /// `(domain, version)` pairs; `""` is the default ONNX domain.
    pub opset_imports: Vec<(String, i64)>,
    pub producer_name: Option<String>,
    pub producer_version: Option<String>,
    pub domain: Option<String>,
    pub model_version: Option<i64>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<(String, String)>,
    /// Model-local functions, kept encoded so they survive a load/save round trip untouched.
    pub opaque_functions: Vec<Vec<u8>>,
    /// Other `ModelProto` fields this IR does not interpret (training_info, configuration), kept encoded.
    pub opaque_extra: Vec<u8>,
    pub graph: Graph,
}

impl Model {
    /// The opset version of the default ONNX domain.
    pub fn opset(&self) -> i64 {
        self.opset_imports.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|(_, v)| *v).unwrap_or(0)
    }

    pub fn set_metadata(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.metadata_props.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.metadata_props.push((key.to_string(), value)),
        }
    }
}
