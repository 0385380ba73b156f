//! What pruners ask the trainer for ([`crate::train::prune::Evidence`]): task-loss gradients
//! from a span-loss training graph of the compiled model (OBS), and the inputs of linear layers
//! captured by running the compiled model with those inputs added as graph outputs (SparseGPT).
//!
//! Both run on ONNX Runtime with the model's current weights and masks, fake quantization off
//! (the exported graphs have no dropout, so the model is in eval mode as SparseML's grad sampler
//! puts it).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};

use super::data::{epoch_order, BatchLayout};
use super::prune::{ActivationSource, GradientSource, Layer};
use super::step::Stepper;
use crate::autodiff::{build_training_graph, LossSpec, TrainingGraphSpec};
use crate::ir::{Graph, Model, NodeId, ValueId};
use crate::qa::features::TrainWindow;
use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor, WithInputs};

fn f32_tensor(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data"))
}

/// The parameters and extra inputs (masks, quantization inputs) the model runs with; a pruner's
/// layers override their weights and masks.
#[derive(Clone)]
pub struct ModelState {
    /// (graph input, shape, data) of every float parameter.
    pub params: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Masks, quantization parameters and switch (off).
    pub inputs: Vec<(String, HostTensor)>,
    /// Weight initializer → its mask input.
    pub mask_of: BTreeMap<String, String>,
}

impl ModelState {
    fn bound(&self, layers: &[Layer]) -> Vec<(String, HostTensor)> {
        let by_init: BTreeMap<&str, &Layer> = layers.iter().map(|l| (l.initializer.as_str(), l)).collect();
        let by_mask: BTreeMap<&str, &Layer> =
            layers.iter().filter_map(|l| self.mask_of.get(&l.initializer).map(|m| (m.as_str(), l))).collect();
        let mut out: Vec<(String, HostTensor)> = self
            .params
            .iter()
            .map(|(n, s, d)| {
                let data = by_init.get(n.as_str()).map(|l| l.weight.clone()).unwrap_or_else(|| d.clone());
                (n.clone(), f32_tensor(s, data))
            })
            .collect();
        for (n, t) in &self.inputs {
            match by_mask.get(n.as_str()) {
                Some(l) => out.push((n.clone(), f32_tensor(t.shape(), l.mask.clone()))),
                None => out.push((n.clone(), t.clone())),
            }
        }
        out
    }
}

/// Gradients of the span (task) loss on batches of `batch_size` training windows, drawn in a
/// seeded shuffled order that continues across calls.
pub struct TaskGradients<'a> {
    pub model: &'a Model,
    pub zero_grad_rows: Vec<(String, i64)>,
    pub state: ModelState,
    pub windows: &'a [TrainWindow],
    pub layout: &'a BatchLayout,
    pub batch_size: usize,
    pub seed: u64,
    pub opts: EngineOptions,
    /// Called after each gradient batch with (batches done, batches asked for).
    pub on_batch: Option<&'a dyn Fn(usize, usize)>,
    stepper: Option<(Vec<String>, Stepper)>,
    order: Vec<usize>,
    cursor: usize,
    pass: u64,
}

impl<'a> TaskGradients<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Model,
        zero_grad_rows: Vec<(String, i64)>,
        state: ModelState,
        windows: &'a [TrainWindow],
        layout: &'a BatchLayout,
        batch_size: usize,
        seed: u64,
        opts: EngineOptions,
    ) -> TaskGradients<'a> {
        TaskGradients {
            model,
            zero_grad_rows,
            state,
            windows,
            layout,
            batch_size: batch_size.max(1),
            seed,
            opts,
            on_batch: None,
            stepper: None,
            order: Vec::new(),
            cursor: 0,
            pass: 0,
        }
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch_size);
        while out.len() < self.batch_size.min(self.windows.len()) {
            if self.cursor >= self.order.len() {
                self.order = epoch_order(self.windows.len(), self.seed ^ 0x0B5_6AAD, self.pass);
                self.pass += 1;
                self.cursor = 0;
            }
            out.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        out
    }
}

impl GradientSource for TaskGradients<'_> {
    fn gradients(
        &mut self,
        layers: &[Layer],
        count: usize,
        each: &mut dyn FnMut(&[Vec<f32>]) -> Result<()>,
    ) -> Result<usize> {
        let wanted: Vec<String> = layers.iter().map(|l| l.initializer.clone()).collect();
        if self.stepper.as_ref().is_none_or(|(w, _)| *w != wanted) {
            self.stepper = None;
            let mut spec = TrainingGraphSpec::new(LossSpec::Span);
            spec.params = Some(wanted.clone());
            spec.zero_grad_rows = self.zero_grad_rows.clone();
            let tg = build_training_graph(self.model, &spec).context("cannot build the task-loss gradient graph")?;
            let stepper = Stepper::new(&tg, EngineKind::Ort, &self.opts, Default::default())?;
            self.stepper = Some((wanted.clone(), stepper));
        }
        let bound = self.state.bound(layers);
        let (_, stepper) = self.stepper.as_mut().expect("loaded");
        for p in stepper.params.iter_mut() {
            match bound.iter().find(|(n, _)| *n == p.input) {
                Some((_, t)) => p.data = t.as_f32()?.iter().copied().collect(),
                None => bail!("the gradient graph's parameter '{}' has no value", p.input),
            }
        }
        for (n, t) in &bound {
            if !stepper.params.iter().any(|p| &p.input == n) {
                stepper.set_fixed(n, t.clone());
            }
        }
        let position: Vec<usize> = stepper
            .params
            .iter()
            .map(|p| wanted.iter().position(|w| *w == p.input).context("gradient for an unknown layer"))
            .collect::<Result<_>>()?;
        if position.len() != wanted.len() {
            bail!("the gradient graph has {} of the {} pruned layers connected", position.len(), wanted.len());
        }
        for k in 0..count {
            if let Some(signal) = super::interrupt::stop_requested() {
                return Err(super::interrupt::StepInterrupted { signal }.into());
            }
            let idx = self.next_batch();
            let rows: Vec<&TrainWindow> = idx.iter().map(|&i| &self.windows[i]).collect();
            let batch = self.layout.training_inputs(&rows);
            let (_, stepper) = self.stepper.as_mut().expect("loaded");
            let (_, grads, _) = stepper.loss_and_grads(&batch)?;
            let mut ordered = vec![Vec::new(); wanted.len()];
            for (g, &k) in grads.into_iter().zip(&position) {
                ordered[k] = g;
            }
            each(&ordered)?;
            if let Some(f) = self.on_batch {
                f(k + 1, count);
            }
        }
        Ok(count)
    }
}

/// The value a linear layer multiplies its weight with: following the weight's graph input
/// through masking and fake-quantization nodes to the MatMul/Gemm that reads it at slot 1, that
/// node's input 0.
pub fn linear_input(g: &Graph, weight_input: &str) -> Option<(NodeId, ValueId)> {
    let consumers = g.consumers();
    let mut frontier = vec![g.value_by_name(weight_input)?];
    for _ in 0..8 {
        let mut next = Vec::new();
        for v in frontier {
            for &(node, slot) in consumers.get(&v).map(Vec::as_slice).unwrap_or(&[]) {
                let n = g.node(node);
                match n.op_type.as_str() {
                    "MatMul" | "Gemm" if slot == 1 => return Some((node, n.input(0)?)),
                    "Mul" | "Where" | "QuantizeLinear" | "DequantizeLinear" | "Transpose" | "Identity" | "Cast" => {
                        next.extend(n.outputs.iter().flatten().copied())
                    }
                    _ => {}
                }
            }
        }
        frontier = next;
    }
    None
}

/// Linear-layer inputs on `n` calibration windows (the first `n` of the seed's epoch-0 order).
pub struct Calibration<'a> {
    pub model: &'a Model,
    pub state: ModelState,
    pub windows: Vec<&'a TrainWindow>,
    pub layout: &'a BatchLayout,
    pub batch_size: usize,
    pub opts: EngineOptions,
}

impl ActivationSource for Calibration<'_> {
    fn layer_inputs(
        &mut self,
        layers: &[Layer],
        group: &[usize],
        each: &mut super::prune::LayerInputSink,
    ) -> Result<usize> {
        let g = &self.model.graph;
        let mut values: Vec<(ValueId, Vec<usize>)> = Vec::new();
        for (k, &li) in group.iter().enumerate() {
            let init = &layers[li].initializer;
            let (_, v) = linear_input(g, init)
                .with_context(|| format!("cannot find the linear layer that reads '{}'", layers[li].param))?;
            match values.iter_mut().find(|(x, _)| *x == v) {
                Some((_, ks)) => ks.push(k),
                None => values.push((v, vec![k])),
            }
        }
        let mut model = self.model.clone();
        let outputs: Vec<String> = values.iter().map(|(v, _)| g.value(*v).name.clone()).collect();
        model.graph.edit(|p| -> Result<()> {
            for (v, _) in &values {
                if !p.graph().outputs().contains(v) {
                    p.add_output(*v);
                }
            }
            Ok(())
        })?;
        let bytes = crate::onnx::encode_model(&model);
        let backend = runtime::load_bytes(&bytes, EngineKind::Ort, &self.opts)
            .context("cannot load the calibration graph (linear inputs as outputs)")?;
        let takes = backend.input_names().to_vec();
        let bound = self.state.bound(layers).into_iter().filter(|(n, _)| takes.contains(n)).collect();
        let mut backend = WithInputs::new(backend, bound);
        let names: Vec<String> = backend.output_names().to_vec();
        let pos: Vec<usize> = outputs
            .iter()
            .map(|o| names.iter().position(|n| n == o).with_context(|| format!("no output '{o}'")))
            .collect::<Result<_>>()?;
        let mut seen = 0;
        for chunk in self.windows.chunks(self.batch_size.max(1)) {
            let inputs = self.layout.model_inputs(chunk);
            let keep: Vec<bool> = match inputs.iter().find(|(n, _)| *n == "attention_mask") {
                Some((_, HostTensor::I64(a))) => a.iter().map(|&x| x != 0).collect(),
                _ => {
                    let len = inputs[0].1.shape().iter().product();
                    vec![true; len]
                }
            };
            let out = backend.run(&inputs)?;
            for ((_, ks), &i) in values.iter().zip(&pos) {
                let a = out[i].1.as_f32()?;
                let c = *a.shape().last().context("scalar layer input")?;
                let total = a.len() / c;
                if total != keep.len() {
                    bail!("a layer input has {total} rows for {} tokens", keep.len());
                }
                let flat: Vec<f32> = a.iter().copied().collect();
                let mut x = Vec::with_capacity(flat.len());
                let mut n = 0;
                for (r, &k) in keep.iter().enumerate() {
                    if k {
                        x.extend_from_slice(&flat[r * c..(r + 1) * c]);
                        n += 1;
                    }
                }
                each(ks, &x, n)?;
            }
            seen += chunk.len();
        }
        Ok(seen)
    }
}
