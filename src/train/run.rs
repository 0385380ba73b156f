//! The state a run's schedule mutates besides the weights: the masks fed to the graph, the
//! activation observers and the QAT switch ([`Run`]); when the pruning modifiers update their
//! masks ([`mask_schedule`]); and one pruning update ([`Run::prune`]), shared by the training
//! loop and one-shot.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use ndarray::{ArrayD, IxDyn};

use super::data::Data;
use super::evidence::{Calibration, ModelState, TaskGradients};
use super::observers::MinMaxObserver;
use super::prune::{mask_sparsity, ActivationSource, Evidence, GradientSource, Layer, PruneReport, Pruner};
use super::step::Stepper;
use crate::compile::{Compiled, Plan};
use crate::ir::{DType, Model};
use crate::passes::QUANT_ENABLED_INPUT;
use crate::qa::features::TrainWindow;
use crate::recipe::{Modifier, PruningAlgorithm};
use crate::runtime::{EngineOptions, HostTensor};

/// One mask fed to the graph.
#[derive(Clone, Debug)]
pub(super) struct MaskSlot {
    /// Recipe modifier index (pruning, constant pruning or SparseGPT).
    pub modifier: usize,
    pub param: String,
    pub initializer: String,
    pub input: String,
    pub shape: Vec<usize>,
    pub input_axis: usize,
    pub init: f64,
    pub fin: f64,
    pub data: Vec<f32>,
}

/// One activation fake-quant site.
#[derive(Clone, Debug)]
pub(super) struct QuantSite {
    pub base: String,
    pub observer: MinMaxObserver,
    /// The latest batch range, used to start the observer when QAT begins.
    pub last: Option<(f32, f32)>,
    /// int8 symmetric (else uint8 asymmetric), from the type of the site's zero-point input.
    pub symmetric: bool,
}

pub(super) fn f32_tensor(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data"))
}

fn scalar_f32(v: f32) -> HostTensor {
    HostTensor::F32(ArrayD::from_elem(IxDyn(&[]), v))
}

/// Trainer state that the schedule mutates.
pub(super) struct Run<'a> {
    compiled: &'a Compiled,
    pub masks: Vec<MaskSlot>,
    pub sites: Vec<QuantSite>,
    pub qat_started: bool,
}

impl<'a> Run<'a> {
    pub fn new(compiled: &'a Compiled) -> Result<Run<'a>> {
        let mut masks = Vec::new();
        for m in &compiled.plan.modifiers {
            if !matches!(m.settings, Modifier::Pruning(_) | Modifier::ConstantPruning(_) | Modifier::SparseGpt(_)) {
                continue;
            }
            for t in &m.targets {
                let Some(input) = &t.mask_input else { continue };
                if t.shape.len() != 2 {
                    bail!("mask target '{}' has shape {:?}; only 2-D weights are pruned", t.param, t.shape);
                }
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                masks.push(MaskSlot {
                    modifier: m.index,
                    param: t.param.clone(),
                    initializer: t.initializer.clone(),
                    input: input.clone(),
                    input_axis: if t.transposed { 0 } else { 1 },
                    init: t.init_sparsity.unwrap_or(0.0),
                    fin: t.final_sparsity.unwrap_or(0.0),
                    data: vec![1.0; shape.iter().product()],
                    shape,
                });
            }
        }
        let sites = compiled
            .plan
            .graph_inputs
            .iter()
            .filter_map(|n| n.strip_suffix(".scale").filter(|b| b.ends_with(".input_quant")))
            .map(|b| {
                // Symmetric (int8 zero point) or asymmetric (uint8), per site: attention sites are
                // uint8 whatever the scheme says for linear inputs.
                let zp = compiled.model.graph.value_by_name(&format!("{b}.zero_point"));
                let symmetric = zp.is_some_and(|v| compiled.model.graph.value(v).facts.dtype == Some(DType::I8));
                QuantSite { base: b.to_string(), observer: MinMaxObserver::default(), last: None, symmetric }
            })
            .collect();
        Ok(Run { compiled, masks, sites, qat_started: false })
    }

    pub fn has_quant(&self) -> bool {
        self.compiled.model.graph.value_by_name(QUANT_ENABLED_INPUT).is_some()
    }

    /// Masks, quantization parameters and the QAT switch, as graph inputs.
    pub fn bound_inputs(&self, quant_on: bool) -> Vec<(String, HostTensor)> {
        let mut out = self.mask_inputs();
        out.extend(self.quant_inputs(quant_on));
        out
    }

    pub fn mask_inputs(&self) -> Vec<(String, HostTensor)> {
        self.masks.iter().map(|m| (m.input.clone(), f32_tensor(&m.shape, m.data.clone()))).collect()
    }

    /// Activation scales and zero points from the observers, and the QAT switch.
    pub fn quant_inputs(&self, quant_on: bool) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        for s in &self.sites {
            let (scale, zp) = s.observer.qparams(s.symmetric);
            out.push((format!("{}.scale", s.base), scalar_f32(scale)));
            let zp = if s.symmetric {
                HostTensor::I8(ArrayD::from_elem(IxDyn(&[]), zp as i8))
            } else {
                HostTensor::U8(ArrayD::from_elem(IxDyn(&[]), zp as u8))
            };
            out.push((format!("{}.zero_point", s.base), zp));
        }
        if self.has_quant() {
            out.push((QUANT_ENABLED_INPUT.into(), HostTensor::Bool(ArrayD::from_elem(IxDyn(&[]), quant_on))));
        }
        out
    }

    /// The masked parameters of each modifier, in mask order.
    pub fn slot_params(&self) -> BTreeMap<usize, Vec<String>> {
        let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for m in &self.masks {
            out.entry(m.modifier).or_default().push(m.param.clone());
        }
        out
    }

    /// Modifier `modifier`'s layers with their current weights (from `weights`) and masks, at
    /// `sparsity(slot)`.
    pub fn layers(
        &self,
        modifier: usize,
        weights: &dyn Fn(&str) -> Vec<f32>,
        sparsity: &dyn Fn(&MaskSlot) -> f64,
    ) -> Vec<Layer> {
        self.masks
            .iter()
            .filter(|m| m.modifier == modifier)
            .map(|m| Layer {
                param: m.param.clone(),
                initializer: m.initializer.clone(),
                rows: m.shape[0],
                cols: m.shape[1],
                input_axis: m.input_axis,
                weight: weights(&m.initializer),
                mask: m.data.clone(),
                sparsity: sparsity(m),
            })
            .collect()
    }

    /// Takes back a pruner's masks, and its weights into `params` (graph input, data).
    pub fn store_layers<P: ParamData>(&mut self, layers: Vec<Layer>, params: &mut [P]) {
        for l in layers {
            if let Some(p) = params.iter_mut().find(|p| p.input_name() == l.initializer) {
                *p.data_mut() = l.weight;
            }
            if let Some(m) = self.masks.iter_mut().find(|m| m.initializer == l.initializer) {
                m.data = l.mask;
            }
        }
    }

    /// The share of `[4, 1]` blocks (4 consecutive columns of one row of a stored `[K, N]` mask)
    /// with a non-zero entry, over every mask on a `[in, out]` weight: what the block-sparse
    /// training kernels multiply, against a dense layer. 1.0 without such masks.
    pub fn kept_block_density(&self) -> f64 {
        let (mut kept, mut total) = (0usize, 0usize);
        for m in self.masks.iter().filter(|m| m.input_axis == 0) {
            for row in m.data.chunks_exact(m.shape[1]) {
                for blk in row.chunks(4) {
                    kept += blk.iter().any(|&x| x != 0.0) as usize;
                    total += 1;
                }
            }
        }
        if total == 0 {
            1.0
        } else {
            kept as f64 / total as f64
        }
    }

    pub fn sparsity(&self) -> (BTreeMap<String, f64>, f64) {
        let per = self.masks.iter().map(|m| (m.param.clone(), mask_sparsity(&m.data))).collect();
        let zeros: usize = self.masks.iter().map(|m| m.data.iter().filter(|&&x| x == 0.0).count()).sum();
        let total: usize = self.masks.iter().map(|m| m.data.len()).sum();
        (per, if total == 0 { 0.0 } else { zeros as f64 / total as f64 })
    }
}

/// What a pruning update may run to gather the evidence its pruner asks for.
pub(super) struct EvidenceInputs<'a> {
    /// The graph task-loss gradients and calibration activations are computed on.
    pub model: &'a Model,
    pub zero_grad_rows: Vec<(String, i64)>,
    pub data: &'a Data,
    /// Batch size and seed of the gradient batches.
    pub grad_batch: usize,
    pub seed: u64,
    /// One-shot's calibration windows and their batch size (no activations while training).
    pub calibration: Option<(&'a [&'a TrainWindow], usize)>,
    pub opts: EngineOptions,
    /// Told (batches done, batches asked for) as gradient batches finish.
    pub on_batch: Option<&'a dyn Fn(usize, usize)>,
}

impl Run<'_> {
    /// One pruning update: modifier `modifier`'s layers at `sparsity(slot)` pruned by `pruner`,
    /// with the evidence it asks for gathered from `inputs` (none: the pruner gets no evidence);
    /// the new masks are kept and the pruned weights stored back into `params`.
    pub fn prune<P: ParamData>(
        &mut self,
        modifier: usize,
        pruner: &mut dyn Pruner,
        params: &mut [P],
        sparsity: &dyn Fn(&MaskSlot) -> f64,
        inputs: Option<&EvidenceInputs>,
    ) -> Result<PruneReport> {
        let weights = |init: &str| -> Vec<f32> {
            params.iter().find(|p| p.input_name() == init).map(|p| p.data().to_vec()).unwrap_or_default()
        };
        let mut layers = self.layers(modifier, &weights, sparsity);
        let report = match inputs {
            None => pruner.prune(&mut layers, &mut Evidence::default())?,
            Some(src) => {
                let state = ModelState {
                    params: params
                        .iter()
                        .map(|p| (p.input_name().to_string(), p.shape().to_vec(), p.data().to_vec()))
                        .collect(),
                    inputs: self.bound_inputs(false),
                    mask_of: self.masks.iter().map(|m| (m.initializer.clone(), m.input.clone())).collect(),
                };
                let mut grads = pruner.needs_gradients().then(|| {
                    let mut g = TaskGradients::new(
                        src.model,
                        src.zero_grad_rows.clone(),
                        state.clone(),
                        &src.data.windows,
                        &src.data.layout,
                        src.grad_batch,
                        src.seed,
                        src.opts.clone(),
                    );
                    g.on_batch = src.on_batch;
                    g
                });
                let mut acts =
                    src.calibration.filter(|_| pruner.needs_activations()).map(|(windows, batch_size)| Calibration {
                        model: src.model,
                        state: state.clone(),
                        windows: windows.to_vec(),
                        layout: &src.data.layout,
                        batch_size,
                        opts: src.opts.clone(),
                    });
                let mut evidence = Evidence {
                    gradients: grads.as_mut().map(|g| g as &mut dyn GradientSource),
                    activations: acts.as_mut().map(|a| a as &mut dyn ActivationSource),
                };
                pruner.prune(&mut layers, &mut evidence)?
            }
        };
        self.store_layers(layers, params);
        Ok(report)
    }
}

/// A parameter held by the trainer: its graph input and data.
pub(super) trait ParamData {
    fn input_name(&self) -> &str;
    fn shape(&self) -> &[usize];
    fn data(&self) -> &[f32];
    fn data_mut(&mut self) -> &mut Vec<f32>;
}

impl ParamData for super::step::Param {
    fn input_name(&self) -> &str {
        &self.input
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> &[f32] {
        &self.data
    }
    fn data_mut(&mut self) -> &mut Vec<f32> {
        &mut self.data
    }
}

impl ParamData for (String, Vec<usize>, Vec<f32>) {
    fn input_name(&self) -> &str {
        &self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> &[f32] {
        &self.2
    }
    fn data_mut(&mut self) -> &mut Vec<f32> {
        &mut self.2
    }
}

/// Mask updates of a run: step → (modifier, epoch at the update) in recipe order.
pub(super) fn mask_schedule(plan: &Plan, spe: u64, total: u64) -> BTreeMap<u64, Vec<(usize, f64, bool)>> {
    let mut out: BTreeMap<u64, Vec<(usize, f64, bool)>> = BTreeMap::new();
    for (i, m) in plan.modifiers.iter().enumerate() {
        match &m.settings {
            Modifier::Pruning(p) => {
                for u in p.mask_updates(spe, total, 0.0, 1.0) {
                    out.entry(u.step).or_default().push((i, u.epoch, false));
                }
                if !p.leave_enabled && p.end_epoch >= 0.0 {
                    let end = (p.end_epoch * spe as f64).ceil() as u64 + 1;
                    if end < total {
                        out.entry(end).or_default().push((i, p.end_epoch, true));
                    }
                }
            }
            Modifier::ConstantPruning(c) => {
                let start = (c.start_epoch.max(0.0) * spe as f64).ceil() as u64;
                out.entry(start.min(total.saturating_sub(1))).or_default().push((i, c.start_epoch, false));
            }
            _ => {}
        }
    }
    out
}

/// `grad_sampler_kwargs.batch_size` of an OBS modifier.
pub(super) fn grad_batch_size(modifier: &Modifier) -> Option<usize> {
    match modifier {
        Modifier::Pruning(p) => match &p.algorithm {
            PruningAlgorithm::Obs { grad_sampler_kwargs: Some(k), .. } => {
                k.get("batch_size").and_then(|b| b.as_u64()).map(|b| b as usize)
            }
            _ => None,
        },
        _ => None,
    }
}

/// `W ← W ⊙ M` for every masked parameter (SparseML re-applies masks after each optimizer step).
pub(super) fn apply_masks(stepper: &mut Stepper, run: &Run) {
    for m in &run.masks {
        if let Some(p) = stepper.params.iter_mut().find(|p| p.input == m.initializer) {
            p.data.iter_mut().zip(&m.data).for_each(|(w, k)| *w *= k);
        }
    }
}

/// `W ← W ⊙ M` on a one-shot's parameter list.
pub(super) fn apply_params_masks(params: &mut [(String, Vec<usize>, Vec<f32>)], run: &Run) {
    for m in &run.masks {
        if let Some(p) = params.iter_mut().find(|p| p.0 == m.initializer) {
            p.2.iter_mut().zip(&m.data).for_each(|(w, k)| *w *= k);
        }
    }
}

/// Parameters, masks, quantization parameters and switch for the eval graph.
pub(super) fn eval_bindings(stepper: &Stepper, run: &Run, quant_on: bool) -> Vec<(String, HostTensor)> {
    let mut out: Vec<(String, HostTensor)> =
        stepper.params.iter().map(|p| (p.input.clone(), f32_tensor(&p.shape, p.data.clone()))).collect();
    out.extend(run.bound_inputs(quant_on));
    out
}
