//! tract: the embedded pure-Rust engine. A model is specialised to the concrete input shapes of
//! each call (so shape arithmetic folds away) and the optimised plan is cached per shape set, at
//! most [`PLAN_CACHE`] of them (the least recently used goes first), so that a server fed every
//! sequence length keeps bounded memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use super::{Backend, EngineKind, EngineOptions, HostTensor};

type Plan = Arc<TypedRunnableModel>;

/// The most input-shape plans one backend keeps.
pub const PLAN_CACHE: usize = 16;

/// A model compiled by tract.
pub struct TractBackend {
    model: InferenceModel,
    /// Plans by input shapes, with the call counter of their last use.
    plans: HashMap<Vec<Vec<usize>>, (Plan, u64)>,
    calls: u64,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl TractBackend {
    pub fn from_file(path: &Path, opts: &EngineOptions) -> Result<TractBackend> {
        let model = crate::onnx::load(path)?;
        Self::from_ir(model, opts).with_context(|| format!("tract cannot load '{}'", path.display()))
    }

    pub fn from_bytes(bytes: &[u8], opts: &EngineOptions) -> Result<TractBackend> {
        Self::from_ir(crate::onnx::decode_model(bytes, Path::new("<memory>"))?, opts)
    }

    fn from_ir(mut ir: crate::ir::Model, opts: &EngineOptions) -> Result<TractBackend> {
        legalize(&mut ir)?;
        forget_declared_shapes(&mut ir);
        let bytes = crate::onnx::encode_model(&ir);
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow!("tract cannot read the model: {e:#}"))?;
        Self::compile(model, opts)
    }

    fn compile(model: InferenceModel, _opts: &EngineOptions) -> Result<TractBackend> {
        let inputs = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
        let outputs = model
            .output_outlets()?
            .iter()
            .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
            .collect();
        Ok(TractBackend { model, plans: HashMap::new(), calls: 0, inputs, outputs })
    }

    /// The plan for these input shapes, built on first use.
    fn plan(&mut self, feed: &TVec<TValue>) -> Result<Plan> {
        let key: Vec<Vec<usize>> = feed.iter().map(|t| t.shape().to_vec()).collect();
        self.calls += 1;
        if let Some((p, used)) = self.plans.get_mut(&key) {
            *used = self.calls;
            return Ok(p.clone());
        }
        let mut model = self.model.clone();
        for (i, t) in feed.iter().enumerate() {
            model.set_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
        }
        let plan = model
            .into_optimized()
            .map_err(|e| anyhow!("tract cannot optimise the model for input shapes {key:?}: {e:#}"))?
            .into_runnable()
            .map_err(|e| anyhow!("tract cannot plan the model: {e:#}"))?;
        if self.plans.len() >= PLAN_CACHE {
            let oldest = self.plans.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.plans.remove(&k);
            }
        }
        self.plans.insert(key, (plan.clone(), self.calls));
        Ok(plan)
    }

    /// How many input-shape plans are cached.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }
}

/// Drops the shapes the file declares for intermediate values and outputs (exporters write them
/// with symbolic dims), so tract infers everything from the concrete input shapes of each call.
fn forget_declared_shapes(model: &mut crate::ir::Model) {
    let g = &mut model.graph;
    let outputs: Vec<_> = g.outputs().to_vec();
    let ids: Vec<_> = g.nodes().flat_map(|(_, n)| n.outputs.iter().flatten().copied().collect::<Vec<_>>()).collect();
    for v in ids {
        let mut f = g.value(v).facts.type_only();
        if outputs.contains(&v) {
            f.shape = None;
        }
        g.forget_declared(v, f);
    }
}

/// Rewrites what tract cannot run into equivalent ONNX it can: `CumSum` over int64 (tract
/// evaluates it as a symbolic dim and fails) becomes int32 `CumSum` between two `Cast`s.
/// Returns the number of rewrites.
fn legalize(model: &mut crate::ir::Model) -> Result<usize> {
    use crate::ir::{Attribute, DType, Facts, NodeSpec};
    crate::ir::infer::infer_facts(model)?;
    let g = &model.graph;
    let targets: Vec<_> = g
        .nodes()
        .filter(|(_, n)| {
            n.op_type == "CumSum" && n.input(0).is_some_and(|x| g.value(x).facts.dtype == Some(DType::I64))
        })
        .map(|(id, _)| id)
        .collect();
    let n = targets.len();
    model.graph.edit(|p| -> Result<()> {
        for id in targets {
            let node = p.graph().node(id);
            let named = |what: &str| format!("CumSum '{}' has no {what}", node.name);
            let x = node.input(0).with_context(|| named("input"))?;
            let axis = node.input(1).with_context(|| named("axis"))?;
            let y = node.output(0).with_context(|| named("output"))?;
            let facts = p.graph().value(x).facts.type_only();
            let i32_facts = Facts { dtype: Some(DType::I32), ..facts.clone() };
            let narrow = p.op(
                NodeSpec::new("Cast", format!("{}/to_i32", node.name), &[x]).attr(Attribute::int("to", 6)),
                "cumsum_i32_in",
                i32_facts.clone(),
            );
            let mut spec = NodeSpec::new("CumSum", node.name.clone(), &[narrow, axis]);
            spec.attrs = node.attrs.clone();
            let summed = p.op(spec, "cumsum_i32_out", i32_facts);
            p.remove_node(id);
            p.add_node_with_outputs(
                NodeSpec::new("Cast", format!("{}/to_i64", node.name), &[summed]).attr(Attribute::int("to", 7)),
                vec![Some(y)],
            );
        }
        Ok(())
    })?;
    Ok(n)
}

fn to_tensor(t: &HostTensor) -> tract_onnx::prelude::Tensor {
    match t {
        HostTensor::F32(a) => a.clone().into(),
        HostTensor::I64(a) => a.clone().into(),
        HostTensor::I32(a) => a.clone().into(),
        HostTensor::I8(a) => a.clone().into(),
        HostTensor::U8(a) => a.clone().into(),
        HostTensor::Bool(a) => a.clone().into(),
    }
}

fn from_tensor(t: &tract_onnx::prelude::Tensor) -> Result<HostTensor> {
    Ok(match t.datum_type() {
        DatumType::F32 => HostTensor::F32(t.to_plain_array_view::<f32>()?.to_owned()),
        DatumType::I64 => HostTensor::I64(t.to_plain_array_view::<i64>()?.to_owned()),
        DatumType::I32 => HostTensor::I32(t.to_plain_array_view::<i32>()?.to_owned()),
        DatumType::I8 => HostTensor::I8(t.to_plain_array_view::<i8>()?.to_owned()),
        DatumType::U8 => HostTensor::U8(t.to_plain_array_view::<u8>()?.to_owned()),
        DatumType::Bool => HostTensor::Bool(t.to_plain_array_view::<bool>()?.to_owned()),
        other => bail!("unsupported output type {other:?}"),
    })
}

impl Backend for TractBackend {
    fn engine(&self) -> EngineKind {
        EngineKind::Tract
    }
    fn input_names(&self) -> &[String] {
        &self.inputs
    }
    fn output_names(&self) -> &[String] {
        &self.outputs
    }
    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let mut feed = TVec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("input '{name}' was not given"))?;
            feed.push(to_tensor(t).into_tvalue());
        }
        let plan = self.plan(&feed)?;
        let out = plan.run(feed).map_err(|e| anyhow!("tract run failed: {e:#}"))?;
        self.outputs.iter().zip(out.iter()).map(|(n, t)| Ok((n.clone(), from_tensor(t)?))).collect()
    }
}
