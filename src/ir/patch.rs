//! The one way to edit a graph: record edits on a [`Patch`], then [`Graph::edit`] applies them
//! atomically (on a copy, re-sorted and validated, swapped in only if valid).

use std::collections::{HashMap, HashSet};

use super::{Attribute, Facts, Graph, IrError, Node, NodeId, Tensor, ValueId};

#[derive(Debug)]
enum Op {
    NewValue { id: ValueId, name: String, facts: Facts },
    AddNode { id: NodeId, node: Node },
    RemoveNode(NodeId),
    ReplaceUses { old: ValueId, new: ValueId, except: Vec<NodeId> },
    SetNodeInput { node: NodeId, slot: usize, value: Option<ValueId> },
    SetNodeOutput { node: NodeId, slot: usize, value: ValueId },
    SetAttr { node: NodeId, attr: Attribute },
    SetInitializer { value: ValueId, tensor: Tensor },
    RemoveInitializer(ValueId),
    AddInput(ValueId),
    RemoveInput(ValueId),
    AddOutput(ValueId),
    RemoveOutput(ValueId),
    SetFacts { value: ValueId, facts: Facts },
    Rename { value: ValueId, name: String },
}

/// A list of edits against one graph, read-only until [`Graph::edit`] applies it.
pub struct Patch<'g> {
    graph: &'g Graph,
    ops: Vec<Op>,
    next_value: u32,
    next_node: u32,
    names: HashSet<String>,
    new_values: HashMap<ValueId, String>,
}

/// A node to add: op, inputs, attributes and how to name its outputs.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<Option<ValueId>>,
    pub attrs: Vec<Attribute>,
    pub metadata: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn new(op_type: &str, name: impl Into<String>, inputs: &[ValueId]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            op_type: op_type.to_string(),
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            ..NodeSpec::default()
        }
    }
    pub fn attr(mut self, a: Attribute) -> NodeSpec {
        self.attrs.push(a);
        self
    }
    pub fn domain(mut self, d: &str) -> NodeSpec {
        self.domain = d.to_string();
        self
    }
}

impl<'g> Patch<'g> {
    fn new(graph: &'g Graph) -> Patch<'g> {
        Patch {
            graph,
            ops: Vec::new(),
            next_value: graph.values.len() as u32,
            next_node: graph.nodes.len() as u32,
            names: HashSet::new(),
            new_values: HashMap::new(),
        }
    }

    /// The graph as it was before this patch.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// A fresh, unique value name derived from `hint`.
    pub fn fresh_name(&mut self, hint: &str) -> String {
        let taken = |n: &str, names: &HashSet<String>| self.graph.by_name.contains_key(n) || names.contains(n);
        let name = if !taken(hint, &self.names) {
            hint.to_string()
        } else {
            (1..).map(|i| format!("{hint}_{i}")).find(|n| !taken(n, &self.names)).unwrap()
        };
        self.names.insert(name.clone());
        name
    }

    /// A new value with a unique name derived from `hint`. It needs a producer, or to become an
    /// input or initializer, before the patch is applied.
    pub fn new_value(&mut self, hint: &str, facts: Facts) -> ValueId {
        let name = self.fresh_name(hint);
        let id = ValueId(self.next_value);
        self.next_value += 1;
        self.new_values.insert(id, name.clone());
        self.ops.push(Op::NewValue { id, name, facts });
        id
    }

    /// Adds a node whose outputs are new values named `<node name>_out<i>` (or `output_names`).
    pub fn add_node(&mut self, spec: NodeSpec, outputs: &[(&str, Facts)]) -> (NodeId, Vec<ValueId>) {
        let outs: Vec<ValueId> = outputs.iter().map(|(n, f)| self.new_value(n, f.clone())).collect();
        let id = self.add_node_with_outputs(spec, outs.iter().map(|&v| Some(v)).collect());
        (id, outs)
    }

    /// Adds a node writing existing (new, producer-less) values.
    pub fn add_node_with_outputs(&mut self, spec: NodeSpec, outputs: Vec<Option<ValueId>>) -> NodeId {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        let node = Node {
            name: spec.name,
            op_type: spec.op_type,
            domain: spec.domain,
            inputs: spec.inputs,
            outputs,
            attrs: spec.attrs,
            metadata: spec.metadata,
            doc_string: None,
        };
        self.ops.push(Op::AddNode { id, node });
        id
    }

    /// Shorthand: one-output node; returns the output value.
    pub fn op(&mut self, spec: NodeSpec, out_hint: &str, facts: Facts) -> ValueId {
        self.add_node(spec, &[(out_hint, facts)]).1[0]
    }

    pub fn remove_node(&mut self, id: NodeId) {
        self.ops.push(Op::RemoveNode(id));
    }

    /// Every use of `old` (node inputs and graph outputs) now reads `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        self.ops.push(Op::ReplaceUses { old, new, except: Vec::new() });
    }

    /// As [`replace_uses`](Self::replace_uses), leaving the listed consumers on `old`.
    pub fn replace_uses_except(&mut self, old: ValueId, new: ValueId, except: &[NodeId]) {
        self.ops.push(Op::ReplaceUses { old, new, except: except.to_vec() });
    }

    pub fn set_node_input(&mut self, node: NodeId, slot: usize, value: Option<ValueId>) {
        self.ops.push(Op::SetNodeInput { node, slot, value });
    }

    /// Makes `node` write `value` (a new, producer-less value) in output `slot`, e.g. to switch on
    /// an optional output.
    pub fn set_node_output(&mut self, node: NodeId, slot: usize, value: ValueId) {
        self.ops.push(Op::SetNodeOutput { node, slot, value });
    }

    pub fn set_attr(&mut self, node: NodeId, attr: Attribute) {
        self.ops.push(Op::SetAttr { node, attr });
    }

    pub fn set_initializer(&mut self, value: ValueId, tensor: Tensor) {
        self.ops.push(Op::SetInitializer { value, tensor });
    }

    /// A new initializer value holding `tensor`.
    pub fn add_initializer(&mut self, hint: &str, tensor: Tensor) -> ValueId {
        let v = self.new_value(hint, Facts::of_tensor(&tensor).type_only());
        self.set_initializer(v, tensor);
        v
    }

    pub fn remove_initializer(&mut self, value: ValueId) {
        self.ops.push(Op::RemoveInitializer(value));
    }

    /// A new graph input with the given facts.
    pub fn add_input(&mut self, hint: &str, facts: Facts) -> ValueId {
        let v = self.new_value(hint, facts);
        self.ops.push(Op::AddInput(v));
        v
    }

    /// Lists an existing value (typically an initializer, making it overridable) among the inputs.
    pub fn expose_as_input(&mut self, value: ValueId) {
        self.ops.push(Op::AddInput(value));
    }

    pub fn remove_input(&mut self, value: ValueId) {
        self.ops.push(Op::RemoveInput(value));
    }

    pub fn add_output(&mut self, value: ValueId) {
        self.ops.push(Op::AddOutput(value));
    }

    pub fn remove_output(&mut self, value: ValueId) {
        self.ops.push(Op::RemoveOutput(value));
    }

    pub fn set_facts(&mut self, value: ValueId, facts: Facts) {
        self.ops.push(Op::SetFacts { value, facts });
    }

    pub fn rename(&mut self, value: ValueId, name: &str) {
        self.names.insert(name.to_string());
        self.ops.push(Op::Rename { value, name: name.to_string() });
    }
}

impl Graph {
    /// Records edits with `f` and applies them atomically: the graph is changed only if the closure
    /// succeeds and the result is a valid graph (defined inputs, one producer per value, acyclic).
    pub fn edit<R, E>(&mut self, f: impl FnOnce(&mut Patch) -> Result<R, E>) -> Result<R, E>
    where
        E: From<IrError>,
    {
        let mut patch = Patch::new(self);
        let r = f(&mut patch)?;
        let ops = std::mem::take(&mut patch.ops);
        let mut g = self.clone();
        g.apply_ops(ops)?;
        *self = g;
        Ok(r)
    }

    fn apply_ops(&mut self, ops: Vec<Op>) -> Result<(), IrError> {
        for op in ops {
            self.apply_op(op)?;
        }
        self.relink()
    }

    /// One recorded edit, in place (links and order are recomputed after the last).
    fn apply_op(&mut self, op: Op) -> Result<(), IrError> {
        match op {
            Op::NewValue { id, name, facts } => {
                debug_assert_eq!(id.index(), self.values.len());
                if self.by_name.contains_key(&name) {
                    return Err(IrError::DuplicateValue(name));
                }
                self.push_value(name, facts, false);
            }
            Op::AddNode { id, node } => {
                debug_assert_eq!(id.index(), self.nodes.len());
                self.nodes.push(Some(node));
                self.order.push(id);
            }
            Op::RemoveNode(id) => {
                if self.nodes.get(id.index()).map(Option::is_some) != Some(true) {
                    return Err(IrError::Patch(format!("node {id} removed twice or never existed")));
                }
                self.nodes[id.index()] = None;
                self.order.retain(|&n| n != id);
            }
            Op::ReplaceUses { old, new, except } => self.apply_replace_uses(old, new, &except),
            Op::SetNodeInput { node, slot, value } => {
                let n = self.patched_node(node)?;
                if n.inputs.len() <= slot {
                    n.inputs.resize(slot + 1, None);
                }
                n.inputs[slot] = value;
            }
            Op::SetNodeOutput { node, slot, value } => {
                let n = self.patched_node(node)?;
                if n.outputs.len() <= slot {
                    n.outputs.resize(slot + 1, None);
                }
                n.outputs[slot] = Some(value);
            }
            Op::SetAttr { node, attr } => {
                let n = self.patched_node(node)?;
                match n.attrs.iter_mut().find(|a| a.name == attr.name) {
                    Some(a) => *a = attr,
                    None => n.attrs.push(attr),
                }
            }
            Op::SetInitializer { value, tensor } => {
                let facts = Facts::of_tensor(&tensor).type_only();
                self.values[value.index()].facts = facts;
                self.initializers.insert(value, tensor);
            }
            Op::RemoveInitializer(v) => {
                self.initializers.shift_remove(&v);
            }
            Op::AddInput(v) => {
                if !self.inputs.contains(&v) {
                    self.inputs.push(v);
                }
            }
            Op::RemoveInput(v) => self.inputs.retain(|&x| x != v),
            Op::AddOutput(v) => {
                if !self.outputs.contains(&v) {
                    self.outputs.push(v);
                }
            }
            Op::RemoveOutput(v) => self.outputs.retain(|&x| x != v),
            Op::SetFacts { value, facts } => self.values[value.index()].facts = facts,
            Op::Rename { value, name } => self.apply_rename(value, name)?,
        }
        Ok(())
    }

    /// A node an edit changes, an error when it is removed.
    fn patched_node(&mut self, node: NodeId) -> Result<&mut Node, IrError> {
        self.nodes[node.index()].as_mut().ok_or_else(|| IrError::Patch(format!("node {node} is removed")))
    }

    /// Every live node but `except`, and the graph outputs, read `new` instead of `old`.
    fn apply_replace_uses(&mut self, old: ValueId, new: ValueId, except: &[NodeId]) {
        for &nid in &self.order {
            if except.contains(&nid) {
                continue;
            }
            let node = self.nodes[nid.index()].as_mut().unwrap();
            for v in node.inputs.iter_mut().flatten() {
                if *v == old {
                    *v = new;
                }
            }
        }
        for v in &mut self.outputs {
            if *v == old {
                *v = new;
            }
        }
    }

    fn apply_rename(&mut self, value: ValueId, name: String) -> Result<(), IrError> {
        if let Some(&other) = self.by_name.get(&name) {
            if other != value {
                return Err(IrError::DuplicateValue(name));
            }
        }
        let old = std::mem::replace(&mut self.values[value.index()].name, name.clone());
        self.by_name.remove(&old);
        self.by_name.insert(name, value);
        Ok(())
    }

    /// Recomputes producers and the topological order from the live nodes, and validates.
    pub(crate) fn relink(&mut self) -> Result<(), IrError> {
        for v in &mut self.values {
            v.producer = None;
        }
        let live: Vec<NodeId> = self.order.clone();
        for &nid in &live {
            let node = self.nodes[nid.index()].as_ref().unwrap();
            for (slot, out) in node.outputs.iter().enumerate() {
                let Some(out) = *out else { continue };
                let value = &mut self.values[out.index()];
                if value.producer.is_some() || self.initializers.contains_key(&out) || self.inputs.contains(&out) {
                    return Err(IrError::MultipleProducers { value: value.name.clone(), node: node.name.clone() });
                }
                value.producer = Some((nid, slot));
            }
        }
        self.order = self.topo_sort(&live)?;
        super::validate::validate(self)
    }

    /// Kahn's algorithm, stable with respect to the existing order.
    fn topo_sort(&self, nodes: &[NodeId]) -> Result<Vec<NodeId>, IrError> {
        let pos: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut indeg = vec![0usize; nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, &nid) in nodes.iter().enumerate() {
            let node = self.node(nid);
            let mut seen = HashSet::new();
            for v in node.inputs.iter().flatten() {
                if let Some((p, _)) = self.values[v.index()].producer {
                    if seen.insert(p) {
                        let j = pos[&p];
                        indeg[i] += 1;
                        users[j].push(i);
                    }
                }
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
        let mut out = Vec::with_capacity(nodes.len());
        while let Some(i) = ready.pop_first() {
            out.push(nodes[i]);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if out.len() != nodes.len() {
            let stuck = (0..nodes.len()).find(|&i| indeg[i] > 0).unwrap();
            return Err(IrError::Cycle(self.node(nodes[stuck]).name.clone()));
        }
        Ok(out)
    }
}
