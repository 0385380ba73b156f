//! One optimisation step over a training graph: feed the batch, the parameters and the masks to
//! the engine, read the loss and the gradients, clip, and update the parameters with AdamW.
//!
//! Sits between `autodiff` (which builds the graph) and the `sparsec train` loop (which owns the
//! schedule, masks, checkpoints and evaluation).

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};

use super::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::autodiff::TrainingGraph;
use crate::ir::{modules, Model};
use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor};

/// A trainable parameter, held on the host.
#[derive(Clone, Debug)]
pub struct Param {
    /// The graph input (the former initializer) the parameter feeds.
    pub input: String,
    /// PyTorch name, when known.
    pub torch_name: Option<String>,
    /// Stored (ONNX) layout.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The graph output holding d loss / d parameter.
    pub grad_output: String,
    /// Whether AdamW's weight decay applies (not for biases and LayerNorm parameters).
    pub decay: bool,
}

/// Extra f32 inputs fed unchanged at every step (masks, quantisation scales, flags).
#[derive(Clone, Debug)]
pub struct FixedInput {
    pub name: String,
    pub value: HostTensor,
}

/// Loss and gradient statistics of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
    /// The scalar outputs named in [`Stepper::watch`], in that order.
    pub watched: Vec<f32>,
}

/// Runs steps of a [`TrainingGraph`] on an engine and owns the parameters and optimiser state.
pub struct Stepper {
    backend: Option<Box<dyn Backend>>,
    pub params: Vec<Param>,
    pub fixed: Vec<FixedInput>,
    pub optimizer: AdamW,
    /// Scalar outputs read at every step besides the loss (loss parts, observer min/max).
    pub watch: Vec<String>,
    loss_output: String,
}

/// Whether a parameter is a bias or a LayerNorm scale/shift (no weight decay, as HF's Trainer).
fn no_decay(model: &Model, input: &str, torch_name: Option<&str>) -> bool {
    if torch_name.is_some_and(|n| n.ends_with("bias")) || input.ends_with("bias") {
        return true;
    }
    let g = &model.graph;
    let Some(v) = g.value_by_name(input) else { return false };
    g.nodes().any(|(_, n)| n.op_type == "LayerNormalization" && (n.input(1) == Some(v) || n.input(2) == Some(v)))
}

impl Stepper {
    /// Loads `tg` on `engine`; every parameter with a connected gradient is trained, starting from
    /// the value of its initializer.
    pub fn new(tg: &TrainingGraph, engine: EngineKind, opts: &EngineOptions, adamw: AdamWConfig) -> Result<Stepper> {
        let g = &tg.model.graph;
        let names = modules::parameter_names(g);
        let torch_of = |init: &str| names.iter().find(|(_, &v)| g.value(v).name == init).map(|(n, _)| n.clone());
        let mut params = Vec::new();
        for e in tg.grads.entries.iter().filter(|e| e.connected) {
            let v =
                g.value_by_name(&e.param).with_context(|| format!("parameter '{}' is not in the graph", e.param))?;
            let t = g.initializer(v).with_context(|| format!("parameter '{}' has no initial value", e.param))?;
            let data = t.as_f32s().with_context(|| format!("parameter '{}' is not a float tensor", e.param))?;
            let torch_name = e.torch_name.clone().or_else(|| torch_of(&e.param));
            params.push(Param {
                decay: !no_decay(&tg.model, &e.param, torch_name.as_deref()),
                input: e.param.clone(),
                torch_name,
                shape: t.dims.iter().map(|&d| d as usize).collect(),
                data,
                grad_output: e.output.clone(),
            });
        }
        let backend = Some(load(tg, engine, opts)?);
        let sizes: Vec<usize> = params.iter().map(|p| p.data.len()).collect();
        let decay: Vec<bool> = params.iter().map(|p| p.decay).collect();
        Ok(Stepper {
            backend,
            optimizer: AdamW::new(adamw, &sizes, &decay),
            params,
            fixed: Vec::new(),
            watch: Vec::new(),
            loss_output: tg.grads.loss.clone(),
        })
    }

    /// Runs the next steps on `tg`, a variant of the graph with the same parameters and gradient
    /// outputs (such as the graph without fake quantization while QAT is off); the current engine
    /// session is freed before the new one is loaded.
    pub fn switch_graph(&mut self, tg: &TrainingGraph, engine: EngineKind, opts: &EngineOptions) -> Result<()> {
        let theirs: Vec<(&str, &str)> =
            tg.grads.entries.iter().filter(|e| e.connected).map(|e| (e.param.as_str(), e.output.as_str())).collect();
        let ours: Vec<(&str, &str)> = self.params.iter().map(|p| (p.input.as_str(), p.grad_output.as_str())).collect();
        if theirs != ours || tg.grads.loss != self.loss_output {
            bail!("the replacement training graph has different parameters, gradients or loss");
        }
        self.backend = None;
        self.backend = Some(load(tg, engine, opts)?);
        Ok(())
    }

    pub fn param(&self, torch_name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.torch_name.as_deref() == Some(torch_name))
    }

    pub fn param_mut(&mut self, torch_name: &str) -> Option<&mut Param> {
        self.params.iter_mut().find(|p| p.torch_name.as_deref() == Some(torch_name))
    }

    /// Sets (or replaces) an input fed unchanged at every step.
    pub fn set_fixed(&mut self, name: &str, value: HostTensor) {
        match self.fixed.iter_mut().find(|f| f.name == name) {
            Some(f) => f.value = value,
            None => self.fixed.push(FixedInput { name: name.to_string(), value }),
        }
    }

    /// Forward and backward on `batch`; returns the loss, the gradients in parameter order and the
    /// watched scalars. Fixed inputs the current graph does not take are not fed.
    pub fn loss_and_grads(&mut self, batch: &[(&str, HostTensor)]) -> Result<(f32, Vec<Vec<f32>>, Vec<f32>)> {
        let backend = self.backend.as_mut().context("no training graph is loaded")?;
        let mut feed: Vec<(&str, HostTensor)> = batch.to_vec();
        for p in &self.params {
            feed.push((p.input.as_str(), HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&p.shape), p.data.clone())?)));
        }
        let takes = backend.input_names();
        for f in self.fixed.iter().filter(|f| takes.contains(&f.name)) {
            feed.push((f.name.as_str(), f.value.clone()));
        }
        let mut outputs = backend.run(&feed)?;
        let mut take = |name: &str| -> Result<ArrayD<f32>> {
            let i = outputs.iter().position(|(n, _)| n == name).with_context(|| format!("no output '{name}'"))?;
            outputs.swap_remove(i).1.into_f32()
        };
        let loss = take(&self.loss_output)?;
        let loss = *loss.iter().next().context("empty loss")?;
        if !loss.is_finite() {
            bail!("the loss is {loss}");
        }
        let mut grads = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let g = take(&p.grad_output)?;
            if g.len() != p.data.len() {
                bail!("gradient of '{}' has {} elements, expected {}", p.input, g.len(), p.data.len());
            }
            grads.push(g.iter().copied().collect());
        }
        let mut watched = Vec::with_capacity(self.watch.len());
        for name in &self.watch {
            let v = take(name)?;
            watched.push(*v.iter().next().with_context(|| format!("output '{name}' is empty"))?);
        }
        Ok((loss, grads, watched))
    }

    /// One training step at learning rate `lr`, clipping the global gradient norm to `max_grad_norm`.
    pub fn step(&mut self, batch: &[(&str, HostTensor)], lr: f32, max_grad_norm: Option<f32>) -> Result<StepStats> {
        self.step_observed(batch, lr, max_grad_norm, &mut |_, _| {})
    }

    /// [`Stepper::step`], calling `observe(param, clipped gradient)` for every parameter after
    /// clipping and before the update (where SparseML's scorers read gradients).
    pub fn step_observed(
        &mut self,
        batch: &[(&str, HostTensor)],
        lr: f32,
        max_grad_norm: Option<f32>,
        observe: &mut dyn FnMut(&Param, &[f32]),
    ) -> Result<StepStats> {
        let (loss, mut grads, watched) = self.loss_and_grads(batch)?;
        let mut grad_refs: Vec<&mut [f32]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
        let grad_norm = match max_grad_norm {
            Some(m) => clip_grad_norm(&mut grad_refs, m),
            None => clip_grad_norm(&mut grad_refs, f32::INFINITY),
        };
        for (p, g) in self.params.iter().zip(&grads) {
            observe(p, g);
        }
        let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let mut params: Vec<&mut [f32]> = self.params.iter_mut().map(|p| p.data.as_mut_slice()).collect();
        self.optimizer.step(lr, &mut params, &grads);
        Ok(StepStats { loss, grad_norm, lr, watched })
    }
}

fn load(tg: &TrainingGraph, engine: EngineKind, opts: &EngineOptions) -> Result<Box<dyn Backend>> {
    let bytes = crate::onnx::encode_model(&tg.model);
    runtime::load_bytes(&bytes, engine, opts).context("cannot load the training graph")
}

/// HF `get_linear_schedule_with_warmup`: linear warmup from 0 over `warmup` steps, then linear
/// decay to 0 at `total` (0-based step `s`).
pub fn linear_warmup_decay(peak: f32, s: usize, warmup: usize, total: usize) -> f32 {
    if s < warmup {
        return peak * s as f32 / warmup.max(1) as f32;
    }
    peak * (total.saturating_sub(s) as f32 / total.saturating_sub(warmup).max(1) as f32).max(0.0)
}
