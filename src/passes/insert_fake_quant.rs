//! `InsertFakeQuant`: quantize-dequantize (fake quantization) on the weights and input activations
//! of linear layers and on embedding tables, switchable at run time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Pass, PassError, PassReport};
use crate::ir::{emit, Attribute, Attrs, DType, Dim, Facts, Model, NodeSpec, Patch, Tensor, ValueId};

/// The bool scalar graph input that turns every fake-quant site on (`true`) or off (`false`).
pub const QUANT_ENABLED_INPUT: &str = "sparsec.quant_enabled";

/// The smallest weight scale, as torch's observers clamp it (`torch.finfo(float32).eps`).
pub const MIN_SCALE: f32 = f32::EPSILON;

/// One linear layer to quantize.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FakeQuantTarget {
    /// The MatMul or Gemm node.
    pub node: String,
    /// Its PyTorch module name; activation inputs are named after the first layer reading them.
    pub module: String,
}

/// Fake quantization of linear layers (and optionally embeddings) for QAT.
///
/// - Matches: each target MatMul/Gemm node `N` and the value `B` on its input 1 (the weight as `N`
///   sees it: the initializer, or a mask `Mul`, or a `Transpose` of it); with
///   `quantize_activations`, the value `A` on input 0; each embedding initializer `E` read by Gather.
/// - Emits, for weights (int8, symmetric, zero point 0, as torch's `MinMaxObserver` for qint8:
///   `scale = max(absmax / 127.5, eps)`), per output channel (`axis` = 1 for MatMul and Gemm with
///   `transB=0`, 0 for Gemm with `transB=1`) or per tensor:
///   `s = Max(Div(ReduceMax(Abs(B), axes=[1-axis], keepdims=0), 127.5), eps)` (axes an attribute or,
///   from opset 18, an input: [`emit::reduce`]),
///   `q = QuantizeLinear(B, s, zp_i8, axis)`, `dq = DequantizeLinear(q, s, zp_i8, axis)`,
///   `B' = Where(sparsec.quant_enabled, dq, B)`, and `N` reads `B'`.
///   For activations (uint8 asymmetric per tensor, as SparseML's default scheme and ORT's QDQ
///   format; int8 with zero point 0 when `activation_symmetric`): graph inputs
///   `<module>.input_quant.scale` (f32 scalar) and `<module>.input_quant.zero_point` (u8/i8
///   scalar) fed by the trainer's observers, `A' = Where(flag, DequantizeLinear(QuantizeLinear(A, s, zp), s, zp), A)`
///   read by every targeted node that read `A`, and graph outputs `<module>.input_quant.min` /
///   `.max` (`ReduceMin`/`ReduceMax` of `A`, keepdims=0) from which the observers compute `s, zp`.
///   Embedding tables get the weight pattern per tensor. With `attention`, each attention that
///   `FuseAttention` recognises gets the activation pattern on the four inputs of its two
///   products, always uint8 asymmetric per tensor (the form `QuantizedAttention` runs), named
///   `<scope>.attention_scores.{q,k}` and `<scope>.context.{probs,v}` after the `Q·Kᵀ` node's
///   module scope (SparseML's BERT modification quantizes the same four, with the second input of
///   each product symmetric). All new nodes are named `sparsec.fq/…`.
/// - Assumes: opset >= 13 (per-axis QuantizeLinear). With `sparsec.quant_enabled = false` the
///   `Where` selects the original value bit for bit. For autodiff: the scale and zero-point
///   inputs of QuantizeLinear/DequantizeLinear carry no gradient, and the
///   QuantizeLinear→DequantizeLinear pair is differentiated with the straight-through estimator
///   (`d dq / d B = 1`); `Where` routes the gradient to the selected branch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InsertFakeQuant {
    pub targets: Vec<FakeQuantTarget>,
    /// Embedding initializers to fake-quantize per tensor.
    #[serde(default)]
    pub embeddings: Vec<String>,
    #[serde(default = "yes")]
    pub quantize_activations: bool,
    #[serde(default)]
    pub activation_symmetric: bool,
    #[serde(default = "yes")]
    pub weight_per_channel: bool,
    /// Fake-quantize the inputs of each attention's two products (int8 attention).
    #[serde(default)]
    pub attention: bool,
}

fn yes() -> bool {
    true
}

fn scalar(dtype: DType) -> Facts {
    Facts::new(dtype, vec![])
}

struct Consts {
    opset: i64,
    flag: ValueId,
    div: ValueId,
    eps: ValueId,
}

/// Emits the weight pattern on `b` (shape `dims` as the consumer sees it); returns `B'`.
fn fake_quant_weight(p: &mut Patch, c: &Consts, b: ValueId, dims: &[Dim], axis: Option<usize>, tag: &str) -> ValueId {
    let f32_like = Facts::new(DType::F32, dims.to_vec());
    let i8_like = Facts::new(DType::I8, dims.to_vec());
    let abs =
        p.op(NodeSpec::new("Abs", format!("sparsec.fq/{tag}/abs"), &[b]), &format!("{tag}.fq_abs"), f32_like.clone());
    let reduce_axes = axis.map(|a| [1 - a as i64]);
    let scale_shape = axis.map(|a| vec![dims[a].clone()]).unwrap_or_default();
    let reduce = emit::reduce(
        p,
        c.opset,
        "ReduceMax",
        format!("sparsec.fq/{tag}/absmax"),
        abs,
        reduce_axes.as_ref().map(|a| &a[..]),
        false,
    );
    let sf = Facts::new(DType::F32, scale_shape.clone());
    let absmax = p.op(reduce, &format!("{tag}.fq_absmax"), sf.clone());
    let raw = p.op(
        NodeSpec::new("Div", format!("sparsec.fq/{tag}/div"), &[absmax, c.div]),
        &format!("{tag}.fq_raw_scale"),
        sf.clone(),
    );
    let scale =
        p.op(NodeSpec::new("Max", format!("sparsec.fq/{tag}/scale"), &[raw, c.eps]), &format!("{tag}.fq_scale"), sf);
    let n = scale_shape.first().and_then(Dim::known).unwrap_or(1) as usize;
    let zp = match axis {
        Some(_) => p.add_initializer(&format!("{tag}.fq_zero_point"), Tensor::from_i8(vec![n as i64], &vec![0; n])),
        None => p.add_initializer(&format!("{tag}.fq_zero_point"), Tensor::from_i8(vec![], &[0])),
    };
    let with_axis = |spec: NodeSpec| match axis {
        Some(a) => spec.attr(Attribute::int("axis", a as i64)),
        None => spec,
    };
    let q = p.op(
        with_axis(NodeSpec::new("QuantizeLinear", format!("sparsec.fq/{tag}/quantize"), &[b, scale, zp])),
        &format!("{tag}.fq_q"),
        i8_like,
    );
    let dq = p.op(
        with_axis(NodeSpec::new("DequantizeLinear", format!("sparsec.fq/{tag}/dequantize"), &[q, scale, zp])),
        &format!("{tag}.fq_dq"),
        f32_like.clone(),
    );
    p.op(NodeSpec::new("Where", format!("sparsec.fq/{tag}/select"), &[c.flag, dq, b]), &format!("{tag}.fq"), f32_like)
}

impl Pass for InsertFakeQuant {
    fn name(&self) -> &'static str {
        "InsertFakeQuant"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        if model.opset() < 13 {
            return Err(PassError::Config {
                pass,
                message: format!("opset {} < 13: per-channel QuantizeLinear needs opset 13", model.opset()),
            });
        }
        let opset = model.opset();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        let attention = if self.attention { super::fuse_attention::attention_products(&model.graph) } else { vec![] };
        if self.attention && attention.is_empty() {
            return Err(PassError::Config {
                pass,
                message: "attention quantization asked for, but no attention subgraph was recognised".into(),
            });
        }
        model
            .graph
            .edit(|p: &mut Patch| {
                let g = p.graph();
                if g.value_by_name(QUANT_ENABLED_INPUT).is_some() {
                    return Err(PassError::Config { pass, message: "fake quantization is already inserted".into() });
                }
                let flag = p.add_input(QUANT_ENABLED_INPUT, scalar(DType::Bool));
                report.new_inputs.push(QUANT_ENABLED_INPUT.into());
                let div = p.add_initializer("sparsec.fq.int8_half_range", Tensor::scalar_f32(127.5));
                let eps = p.add_initializer("sparsec.fq.min_scale", Tensor::scalar_f32(MIN_SCALE));
                let c = Consts { opset, flag, div, eps };
                let mut act_sites: HashMap<ValueId, ValueId> = HashMap::new();
                for t in &self.targets {
                    self.quantize_target(p, &c, pass, t, &mut act_sites, &mut report)?;
                }
                for e in &self.embeddings {
                    quantize_embedding(p, &c, pass, e, &mut report)?;
                }
                for &(sm, qk, pv) in &attention {
                    let g = p.graph();
                    let scope = crate::ir::modules::node_scope(g.node(qk))
                        .unwrap_or_else(|| g.node(sm).name.trim_matches('/').replace('/', "."));
                    let sites = [
                        (qk, 0, "attention_scores.q"),
                        (qk, 1, "attention_scores.k"),
                        (pv, 0, "context.probs"),
                        (pv, 1, "context.v"),
                    ];
                    for (node, slot, what) in sites {
                        let g = p.graph();
                        let a = g.node(node).input(slot).ok_or_else(|| PassError::Target {
                            pass,
                            target: g.node(node).name.clone(),
                            message: format!("has no input {slot}"),
                        })?;
                        let aq =
                            self.fake_quant_activation(p, &c, a, &format!("{scope}.{what}"), DType::U8, &mut report);
                        p.set_node_input(node, slot, Some(aq));
                    }
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}

impl InsertFakeQuant {
    /// The weight of one linear layer, and its input activation (one site per activation value,
    /// shared by the layers that read it, in `act_sites`).
    fn quantize_target(
        &self,
        p: &mut Patch,
        c: &Consts,
        pass: &'static str,
        t: &FakeQuantTarget,
        act_sites: &mut HashMap<ValueId, ValueId>,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let g = p.graph();
        let err = |message: String| PassError::Target { pass, target: t.node.clone(), message };
        let (nid, node) =
            g.nodes().find(|(_, n)| n.name == t.node).ok_or_else(|| err("no node with this name".into()))?;
        let axis = match node.op_type.as_str() {
            "MatMul" => 1,
            "Gemm" if node.attr_int("transB").unwrap_or(0) == 1 => 0,
            "Gemm" => 1,
            other => return Err(err(format!("is a {other}, expected MatMul or Gemm"))),
        };
        let b = node.input(1).ok_or_else(|| err("has no weight input".into()))?;
        let dims = g
            .value(b)
            .facts
            .shape
            .clone()
            .filter(|s| s.len() == 2)
            .ok_or_else(|| err(format!("weight '{}' must have a known rank-2 shape", g.value(b).name)))?;
        let tag = format!("{}.weight", t.module);
        let bq = fake_quant_weight(p, c, b, &dims, self.weight_per_channel.then_some(axis), &tag);
        p.set_node_input(nid, 1, Some(bq));
        report.rewritten += 1;
        if !self.quantize_activations {
            return Ok(());
        }
        let a = node.input(0).ok_or_else(|| err("has no input activation".into()))?;
        let aq = match act_sites.get(&a) {
            Some(&aq) => aq,
            None => {
                let zdt = if self.activation_symmetric { DType::I8 } else { DType::U8 };
                let aq = self.fake_quant_activation(p, c, a, &t.module, zdt, report);
                act_sites.insert(a, aq);
                aq
            }
        };
        p.set_node_input(nid, 0, Some(aq));
        Ok(())
    }

    /// Emits the activation pattern on `a` (zero point of type `zdt`: uint8 asymmetric, int8
    /// symmetric), with its scale and zero point as new inputs and its min and max as new
    /// outputs; returns the switched output.
    fn fake_quant_activation(
        &self,
        p: &mut Patch,
        c: &Consts,
        a: ValueId,
        module: &str,
        zdt: DType,
        report: &mut PassReport,
    ) -> ValueId {
        let g = p.graph();
        let base = format!("{module}.input_quant");
        let af = g.value(a).facts.clone();
        let scale = p.add_input(&format!("{base}.scale"), scalar(DType::F32));
        let zp = p.add_input(&format!("{base}.zero_point"), scalar(zdt));
        let q = p.op(
            NodeSpec::new("QuantizeLinear", format!("sparsec.fq/{base}/quantize"), &[a, scale, zp]),
            &format!("{base}.q"),
            Facts { dtype: Some(zdt), ..af.type_only() },
        );
        let dq = p.op(
            NodeSpec::new("DequantizeLinear", format!("sparsec.fq/{base}/dequantize"), &[q, scale, zp]),
            &format!("{base}.dq"),
            af.type_only(),
        );
        let aq = p.op(
            NodeSpec::new("Where", format!("sparsec.fq/{base}/select"), &[c.flag, dq, a]),
            &format!("{base}.fq"),
            af.type_only(),
        );
        for (op, suffix) in [("ReduceMin", "min"), ("ReduceMax", "max")] {
            let spec = emit::reduce(p, c.opset, op, format!("sparsec.fq/{base}/{suffix}"), a, None, false);
            let o = p.op(spec, &format!("{base}.{suffix}"), scalar(DType::F32));
            p.add_output(o);
            report.new_outputs.push(format!("{base}.{suffix}"));
        }
        report.new_inputs.push(format!("{base}.scale"));
        report.new_inputs.push(format!("{base}.zero_point"));
        aq
    }
}

/// One embedding table: the row lookups (`Gather` on input 0) read it fake-quantized.
fn quantize_embedding(
    p: &mut Patch,
    c: &Consts,
    pass: &'static str,
    e: &str,
    report: &mut PassReport,
) -> Result<(), PassError> {
    let g = p.graph();
    let err = |message: String| PassError::Target { pass, target: e.to_string(), message };
    let v = g.value_by_name(e).ok_or_else(|| err("no value with this name".into()))?;
    let t = g.initializer(v).ok_or_else(|| err("is not an initializer".into()))?;
    let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Known(d)).collect();
    let eq = fake_quant_weight(p, c, v, &dims, None, e);
    let consumers = g.consumers();
    for &(n, slot) in consumers.get(&v).map(Vec::as_slice).unwrap_or(&[]) {
        if g.node(n).op_type == "Gather" && slot == 0 {
            p.set_node_input(n, 0, Some(eq));
        }
    }
    report.rewritten += 1;
    Ok(())
}
