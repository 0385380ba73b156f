//! tract: the embedded pure-Rust engine. Models keep their symbolic batch/sequence dims and are
//! optimised once at load.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use super::{Backend, EngineKind, EngineOptions, HostTensor};

type Plan = Arc<TypedRunnableModel>;

/// A model compiled by tract.
pub struct TractBackend {
    plan: Plan,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl TractBackend {
    pub fn from_file(path: &Path, opts: &EngineOptions) -> Result<TractBackend> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| anyhow!("tract cannot load '{}': {e:#}", path.display()))?;
        Self::compile(model, opts)
    }

    pub fn from_bytes(bytes: &[u8], opts: &EngineOptions) -> Result<TractBackend> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow!("tract cannot load the model: {e:#}"))?;
        Self::compile(model, opts)
    }

    fn compile(model: InferenceModel, _opts: &EngineOptions) -> Result<TractBackend> {
        let inputs = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
        let outputs = model
            .output_outlets()?
            .iter()
            .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
            .collect();
        let plan = model
            .into_optimized()
            .map_err(|e| anyhow!("tract cannot optimise the model: {e:#}"))?
            .into_runnable()
            .map_err(|e| anyhow!("tract cannot plan the model: {e:#}"))?;
        Ok(TractBackend { plan, inputs, outputs })
    }
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
        let out = self.plan.run(feed).map_err(|e| anyhow!("tract run failed: {e:#}"))?;
        self.outputs.iter().zip(out.iter()).map(|(n, t)| Ok((n.clone(), from_tensor(t)?))).collect()
    }
}
