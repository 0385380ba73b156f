//! [`Gradient`]: the op-emitting helper every gradient rule writes through. It wraps the one
//! [`Patch`] of a backward build, memoises constants and `Shape`s, and spells the ops whose form
//! depends on the opset (`Reduce*`, `Squeeze`, `Split`, `Pad`, …) through [`emit`], so rules stay
//! opset-agnostic.

use std::collections::HashMap;

use crate::ir::emit::{self, IntConsts};
use crate::ir::{AttrValue, Attribute, DType, Dim, Facts, Graph, NodeId, NodeSpec, Patch, Tensor, ValueId};

use super::AutodiffError;

/// Emits backward ops and constants into one patch.
pub struct Gradient<'p, 'g> {
    p: &'p mut Patch<'g>,
    opset: i64,
    /// Facts of the values this builder created (the pre-patch graph knows the rest).
    facts: HashMap<ValueId, Facts>,
    consts: HashMap<(DType, Vec<i64>, Vec<u8>), ValueId>,
    shapes: HashMap<ValueId, ValueId>,
    /// Name prefix of the nodes emitted for the forward node being differentiated.
    scope: String,
    counter: usize,
    /// `ai.sparsec::EmbeddingGrad` nodes by their output, so that rows zeroed for a parameter
    /// (`GradOptions::zero_grad_rows`) become the node's `zero_rows` instead of a `Mul`.
    embedding_grads: HashMap<ValueId, NodeId>,
    /// Whether rules may emit sparsec's training operators (`GradOptions::sparsec_training_ops`).
    pub(crate) sparsec_training_ops: bool,
}

impl<'p, 'g> Gradient<'p, 'g> {
    pub(crate) fn new(p: &'p mut Patch<'g>, opset: i64) -> Self {
        Gradient {
            p,
            opset,
            facts: HashMap::new(),
            consts: HashMap::new(),
            shapes: HashMap::new(),
            scope: "grad".into(),
            counter: 0,
            embedding_grads: HashMap::new(),
            sparsec_training_ops: false,
        }
    }

    /// The graph as it was before the backward pass.
    pub fn graph(&self) -> &'g Graph {
        self.p.graph()
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The patch underneath, for edits the helpers do not cover.
    pub fn patch(&mut self) -> &mut Patch<'g> {
        self.p
    }

    pub(crate) fn set_scope(&mut self, scope: String) {
        self.scope = scope;
    }

    /// What is known about `v`: forward values from the graph, backward values from this builder.
    pub fn facts(&self, v: ValueId) -> Facts {
        if let Some(f) = self.facts.get(&v) {
            return f.clone();
        }
        if v.index() < self.p.graph().value_count() {
            return self.p.graph().value(v).facts.clone();
        }
        Facts::default()
    }

    /// The contents of `v` when it is a constant, of the graph or made by this builder.
    pub fn constant_of(&self, v: ValueId) -> Option<Tensor> {
        if v.index() < self.p.graph().value_count() {
            let g = self.p.graph();
            return g.constant(v).or(g.value(v).facts.constant.as_ref()).cloned();
        }
        self.facts.get(&v).and_then(|f| f.constant.clone())
    }

    pub fn dtype(&self, v: ValueId) -> Option<DType> {
        self.facts(v).dtype
    }

    pub fn shape(&self, v: ValueId) -> Option<Vec<Dim>> {
        self.facts(v).shape
    }

    pub fn rank(&self, v: ValueId) -> Option<usize> {
        self.facts(v).shape.map(|s| s.len())
    }

    /// The rank of `v`, or an error naming `what` when it is not known statically.
    pub fn need_rank(&self, v: ValueId, what: &str) -> Result<usize, AutodiffError> {
        self.rank(v).ok_or_else(|| AutodiffError::Unsupported {
            reason: format!("{what}: the rank of '{}' is not known statically", self.p.graph().value(v).name),
        })
    }

    /// The float dtype of `v` (f32 when unknown).
    pub fn float_dtype(&self, v: ValueId) -> DType {
        self.dtype(v).filter(|d| d.is_float()).unwrap_or(DType::F32)
    }

    /// Records facts for a value this builder created.
    pub fn set_facts(&mut self, v: ValueId, facts: Facts) {
        self.p.set_facts(v, facts.type_only());
        self.facts.insert(v, facts);
    }

    /// One node, one output.
    pub fn op(&mut self, op_type: &str, inputs: &[ValueId], attrs: Vec<Attribute>) -> ValueId {
        self.op_opt(op_type, &inputs.iter().map(|&v| Some(v)).collect::<Vec<_>>(), attrs)
    }

    /// One node with optional (omitted) inputs, one output.
    pub fn op_opt(&mut self, op_type: &str, inputs: &[Option<ValueId>], attrs: Vec<Attribute>) -> ValueId {
        self.op_multi(op_type, inputs, attrs, 1).remove(0)
    }

    /// One node with `n_out` outputs.
    pub fn op_multi(
        &mut self,
        op_type: &str,
        inputs: &[Option<ValueId>],
        attrs: Vec<Attribute>,
        n_out: usize,
    ) -> Vec<ValueId> {
        let name = self.next_name(op_type);
        let spec = NodeSpec { name, op_type: op_type.into(), inputs: inputs.to_vec(), attrs, ..NodeSpec::default() };
        self.add_spec(spec, n_out)
    }

    /// The name of the next node of `op_type` emitted in the current scope.
    pub fn next_name(&mut self, op_type: &str) -> String {
        self.counter += 1;
        format!("{}/{}_{}", self.scope, op_type, self.counter)
    }

    /// Adds a node built elsewhere (an [`emit`] builder named by [`next_name`](Self::next_name)).
    pub fn add_spec(&mut self, spec: NodeSpec, n_out: usize) -> Vec<ValueId> {
        self.add_spec_node(spec, n_out).1
    }

    /// [`add_spec`](Self::add_spec), also returning the new node's id.
    pub fn add_spec_node(&mut self, spec: NodeSpec, n_out: usize) -> (NodeId, Vec<ValueId>) {
        let name = spec.name.clone();
        let outs: Vec<(String, Facts)> = (0..n_out).map(|i| (format!("{name}_out{i}"), Facts::default())).collect();
        let refs: Vec<(&str, Facts)> = outs.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
        self.p.add_node(spec, &refs)
    }

    /// Records that `out` is the output of the `EmbeddingGrad` node `node`.
    pub(crate) fn note_embedding_grad(&mut self, out: ValueId, node: NodeId) {
        self.embedding_grads.insert(out, node);
    }

    /// The `EmbeddingGrad` node writing `v`, if this builder emitted one.
    pub(crate) fn embedding_grad_node(&self, v: ValueId) -> Option<NodeId> {
        self.embedding_grads.get(&v).copied()
    }

    /// A constant tensor (an initializer), shared between identical requests.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        let key = (t.dtype, t.dims.clone(), t.raw().to_vec());
        if let Some(&v) = self.consts.get(&key) {
            return v;
        }
        let v = self.p.add_initializer("grad_const", t.clone());
        self.facts.insert(v, Facts::of_tensor(&t));
        self.consts.insert(key, v);
        v
    }

    /// A 0-d constant of a float dtype.
    pub fn scalar(&mut self, x: f64, dtype: DType) -> ValueId {
        let t = float_tensor(dtype, vec![], &[x]);
        self.constant(t)
    }

    /// A 1-D i64 constant.
    pub fn ints(&mut self, v: &[i64]) -> ValueId {
        self.constant(Tensor::from_i64(vec![v.len() as i64], v))
    }

    /// `Shape(x)` as a 1-D i64 value: a constant when the shape is static, else a (shared) `Shape` node.
    pub fn shape_of(&mut self, x: ValueId) -> ValueId {
        if let Some(dims) = self.shape(x).and_then(|s| s.iter().map(Dim::known).collect::<Option<Vec<i64>>>()) {
            return self.ints(&dims);
        }
        if let Some(&s) = self.shapes.get(&x) {
            return s;
        }
        let s = self.op("Shape", &[x], vec![]);
        self.shapes.insert(x, s);
        s
    }

    /// Dimension `axis` (non-negative) of `x` as a 1-D i64 value of one element.
    pub fn dim_of(&mut self, x: ValueId, axis: usize) -> ValueId {
        if let Some(d) = self.shape(x).and_then(|s| s.get(axis).and_then(Dim::known)) {
            return self.ints(&[d]);
        }
        let a = axis as i64;
        self.op("Shape", &[x], vec![Attribute::int("start", a), Attribute::int("end", a + 1)])
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op("Div", &[a, b], vec![])
    }
    pub fn neg(&mut self, a: ValueId) -> ValueId {
        self.op("Neg", &[a], vec![])
    }
    /// `a * c` for a float constant `c` of `a`'s dtype.
    pub fn scale(&mut self, a: ValueId, c: f64, dtype: DType) -> ValueId {
        let k = self.scalar(c, dtype);
        self.mul(a, k)
    }
    pub fn cast(&mut self, a: ValueId, to: DType) -> ValueId {
        self.op("Cast", &[a], vec![Attribute::int("to", to.onnx_code() as i64)])
    }
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op("MatMul", &[a, b], vec![])
    }
    pub fn transpose(&mut self, a: ValueId, perm: &[i64]) -> ValueId {
        self.op("Transpose", &[a], vec![Attribute::ints("perm", perm.to_vec())])
    }
    /// Swaps the last two axes of a value of rank `rank` (>= 2).
    pub fn transpose_last2(&mut self, a: ValueId, rank: usize) -> ValueId {
        let mut perm: Vec<i64> = (0..rank as i64).collect();
        perm.swap(rank - 2, rank - 1);
        self.transpose(a, &perm)
    }
    pub fn reshape(&mut self, a: ValueId, shape: ValueId) -> ValueId {
        self.op("Reshape", &[a, shape], vec![])
    }
    /// `a` reshaped to the runtime shape of `like`.
    pub fn reshape_like(&mut self, a: ValueId, like: ValueId) -> ValueId {
        let s = self.shape_of(like);
        self.reshape(a, s)
    }
    pub fn unsqueeze(&mut self, a: ValueId, axes: &[i64]) -> ValueId {
        let (opset, name) = (self.opset, self.next_name("Unsqueeze"));
        let spec = emit::unsqueeze(self, opset, name, a, axes);
        self.add_spec(spec, 1).remove(0)
    }
    pub fn squeeze(&mut self, a: ValueId, axes: &[i64]) -> ValueId {
        let (opset, name) = (self.opset, self.next_name("Squeeze"));
        let spec = emit::squeeze(self, opset, name, a, axes);
        self.add_spec(spec, 1).remove(0)
    }
    /// `op` (a `Reduce*`) over constant `axes` (`None`: all axes), spelled for the opset.
    pub fn reduce(&mut self, op: &str, a: ValueId, axes: Option<&[i64]>, keepdims: bool) -> ValueId {
        let (opset, name) = (self.opset, self.next_name(op));
        let spec = emit::reduce(self, opset, op, name, a, axes, keepdims);
        self.add_spec(spec, 1).remove(0)
    }
    pub fn reduce_sum(&mut self, a: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        self.reduce("ReduceSum", a, Some(axes), keepdims)
    }
    pub fn reduce_mean(&mut self, a: ValueId, axes: &[i64], keepdims: bool) -> ValueId {
        self.reduce("ReduceMean", a, Some(axes), keepdims)
    }
    /// `Split(a)` along `axis` into `n_out` parts of the given extents.
    pub fn split(
        &mut self,
        a: ValueId,
        axis: i64,
        sizes: emit::SplitSizes,
        n_out: usize,
    ) -> Result<Vec<ValueId>, AutodiffError> {
        let (opset, name) = (self.opset, self.next_name("Split"));
        let spec = emit::split(self, opset, name, a, axis, sizes, n_out)
            .map_err(|e| AutodiffError::Unsupported { reason: e.to_string() })?;
        Ok(self.add_spec(spec, n_out))
    }
    /// `Pad(a)` with the 1-D i64 value `pads` in `mode`.
    pub fn pad(&mut self, a: ValueId, pads: ValueId, mode: &str) -> Result<ValueId, AutodiffError> {
        let name = self.next_name("Pad");
        let spec = emit::pad(self.opset, name, a, pads, mode)
            .map_err(|e| AutodiffError::Unsupported { reason: e.to_string() })?;
        Ok(self.add_spec(spec, 1).remove(0))
    }
    /// `Where(cond, a, b)`.
    pub fn where_(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> ValueId {
        self.op("Where", &[cond, a, b], vec![])
    }
    /// Zeros with the runtime shape of `like` and dtype `dtype`.
    pub fn zeros_like(&mut self, like: ValueId, dtype: DType) -> ValueId {
        let s = self.shape_of(like);
        self.zeros_of_shape(s, dtype)
    }
    pub fn zeros_of_shape(&mut self, shape: ValueId, dtype: DType) -> ValueId {
        let value = float_tensor(dtype, vec![1], &[0.0]);
        self.op("ConstantOfShape", &[shape], vec![Attribute::new("value", AttrValue::Tensor(value))])
    }

    /// Sums gradient contributions: the value itself for one, a chain of `Add`s for more.
    pub fn accumulate(&mut self, parts: &[ValueId]) -> Option<ValueId> {
        let (&first, rest) = parts.split_first()?;
        Some(rest.iter().fold(first, |acc, &p| self.add(acc, p)))
    }

    /// Undoes broadcasting: reduces `g`, shaped like `out`, to the shape of `x`. Leading axes
    /// are summed away; axes where `x` has extent 1 and `out` may not are summed with keepdims.
    /// Static facts decide the axes when they can; otherwise the extent-1 axes of `x` are found
    /// at run time.
    pub fn unbroadcast(&mut self, g: ValueId, out: ValueId, x: ValueId) -> Result<ValueId, AutodiffError> {
        let Some(os) = self.shape(out) else {
            return Err(AutodiffError::Unsupported {
                reason: format!(
                    "undoing broadcast from '{}': its rank is not known statically",
                    self.p.graph().value(out).name
                ),
            });
        };
        self.unbroadcast_from(g, &os, x)
    }

    /// As [`unbroadcast`](Self::unbroadcast) for one operand of an elementwise node whose other
    /// operands are `others`: where every other operand lacks an axis or has extent 1 there, the
    /// result's extent is this operand's, so no reduction is needed even when neither extent is
    /// known statically.
    pub fn unbroadcast_operand(
        &mut self,
        g: ValueId,
        out: ValueId,
        x: ValueId,
        others: &[ValueId],
    ) -> Result<ValueId, AutodiffError> {
        let (Some(os), Some(xs)) = (self.shape(out), self.shape(x)) else {
            return self.unbroadcast(g, out, x);
        };
        let mut same = vec![false; os.len()];
        if os.len() == xs.len() {
            let other_shapes: Vec<Option<Vec<Dim>>> = others.iter().map(|&o| self.shape(o)).collect();
            for (i, same) in same.iter_mut().enumerate() {
                *same = other_shapes.iter().all(|s| match s {
                    Some(s) => {
                        let off = xs.len().saturating_sub(s.len());
                        i < off || s.get(i - off) == Some(&Dim::Known(1))
                    }
                    None => false,
                });
            }
        }
        self.unbroadcast_masked(g, &os, x, &same)
    }

    /// As [`unbroadcast`](Self::unbroadcast), for a gradient whose static shape is `os`.
    pub fn unbroadcast_from(&mut self, g: ValueId, os: &[Dim], x: ValueId) -> Result<ValueId, AutodiffError> {
        self.unbroadcast_masked(g, os, x, &[])
    }

    /// As [`unbroadcast_from`](Self::unbroadcast_from); axes `i` of the result with `same[i]`
    /// are known to have `x`'s extent and are never reduced.
    fn unbroadcast_masked(
        &mut self,
        g: ValueId,
        os: &[Dim],
        x: ValueId,
        same: &[bool],
    ) -> Result<ValueId, AutodiffError> {
        let Some(xs) = self.shape(x) else {
            return Err(AutodiffError::Unsupported {
                reason: format!(
                    "undoing broadcast to '{}': its rank is not known statically",
                    self.p.graph().value(x).name
                ),
            });
        };
        if os.len() < xs.len() {
            return Err(AutodiffError::Unsupported {
                reason: format!("operand '{}' has a higher rank than the result", self.p.graph().value(x).name),
            });
        }
        let lead = os.len() - xs.len();
        let mut keep_axes = Vec::new();
        let mut dynamic = false;
        for (i, xd) in xs.iter().enumerate() {
            if same.get(lead + i).copied().unwrap_or(false) {
                continue;
            }
            let od = &os[lead + i];
            match (xd, od) {
                (_, Dim::Known(1)) => {}
                (Dim::Known(1), _) => keep_axes.push((lead + i) as i64),
                (Dim::Known(_), _) => {}
                (Dim::Sym(a), Dim::Sym(b)) if a == b => {}
                _ => dynamic = true,
            }
        }
        let mut g = g;
        if !keep_axes.is_empty() {
            g = self.reduce_sum(g, &keep_axes, true);
        }
        if dynamic {
            let xshape = self.shape_of(x);
            let one = self.ints(&[1]);
            let is_one = self.op("Equal", &[xshape, one], vec![]);
            let nz = self.op("NonZero", &[is_one], vec![]);
            let flat = self.ints(&[-1]);
            let mut axes = self.reshape(nz, flat);
            if lead > 0 {
                let l = self.ints(&[lead as i64]);
                axes = self.add(axes, l);
            }
            let name = self.next_name("ReduceSum");
            let spec = emit::reduce_dynamic(self.opset, "ReduceSum", name, g, axes, true, true)
                .map_err(|e| AutodiffError::Unsupported { reason: e.to_string() })?;
            g = self.add_spec(spec, 1).remove(0);
        }
        if lead > 0 {
            let lead_axes: Vec<i64> = (0..lead as i64).collect();
            g = self.reduce_sum(g, &lead_axes, false);
        }
        Ok(g)
    }
}

impl IntConsts for Gradient<'_, '_> {
    fn ints(&mut self, _hint: &str, values: &[i64]) -> ValueId {
        Gradient::ints(self, values)
    }
}

/// A float tensor of `dtype` from f64 values.
pub fn float_tensor(dtype: DType, dims: Vec<i64>, values: &[f64]) -> Tensor {
    match dtype {
        DType::F64 => Tensor::from_f64(dims, values),
        DType::F16 => {
            let bytes: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f64(v).to_le_bytes()).collect();
            Tensor::from_raw(DType::F16, dims, bytes).expect("sized")
        }
        DType::BF16 => {
            let bytes: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f64(v).to_le_bytes()).collect();
            Tensor::from_raw(DType::BF16, dims, bytes).expect("sized")
        }
        _ => Tensor::from_f32(dims, &values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
    }
}
