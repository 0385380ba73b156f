//! Pruning algorithms behind one trait, one file each: magnitude (GMP and its global variant),
//! movement (scores accumulated from every training step's gradients), OBS (oBERT's empirical block-Fisher surgeon) and SparseGPT (layer-wise one-shot
//! reconstruction). The trainer's mask-update phase hands a [`Pruner`] the masked weights of one
//! recipe modifier, each with its target sparsity, and an [`Evidence`] through which the pruner
//! asks for what it needs (task-loss gradients, layer input activations); the pruner sets the
//! masks and may change the weights.
//!
//! Layouts: weights and masks are in their stored (ONNX) layout; [`Layer::torch`] and
//! [`Layer::set_torch`] convert to and from PyTorch's `[out, in]`, in which SparseML defines its
//! groupings.

pub mod magnitude;
pub mod movement;
pub mod obs;
pub mod select;
pub mod sparsegpt;

use anyhow::Result;
use serde::Serialize;

pub use magnitude::{global_masks, layer_mask, mask_sparsity, MaskStructure, WeightView};

/// One masked 2-D weight handed to a pruner.
#[derive(Clone, Debug)]
pub struct Layer {
    /// PyTorch parameter name (`…query.weight`).
    pub param: String,
    /// The graph input the weight is fed through.
    pub initializer: String,
    /// Stored shape.
    pub rows: usize,
    pub cols: usize,
    /// Which stored axis is PyTorch's input dimension (0: MatMul `[in, out]`, 1: Gemm `[out, in]`).
    pub input_axis: usize,
    pub weight: Vec<f32>,
    /// 1.0 keep, 0.0 pruned.
    pub mask: Vec<f32>,
    /// Target sparsity of this update.
    pub sparsity: f64,
}

impl Layer {
    /// `(out, in)` in PyTorch terms.
    pub fn torch_shape(&self) -> (usize, usize) {
        if self.input_axis == 0 {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// The stored index of PyTorch element `[o, i]`.
    pub fn stored_index(&self, o: usize, i: usize) -> usize {
        if self.input_axis == 0 {
            i * self.cols + o
        } else {
            o * self.cols + i
        }
    }

    /// `v` (stored layout) as PyTorch's row-major `[out, in]`.
    pub fn torch(&self, v: &[f32]) -> Vec<f32> {
        let (out, inp) = self.torch_shape();
        let mut t = vec![0.0; v.len()];
        for o in 0..out {
            for i in 0..inp {
                t[o * inp + i] = v[self.stored_index(o, i)];
            }
        }
        t
    }

    /// Writes PyTorch-layout `t` back into stored layout `v`.
    pub fn set_torch(&self, v: &mut [f32], t: &[f32]) {
        let (out, inp) = self.torch_shape();
        for o in 0..out {
            for i in 0..inp {
                v[self.stored_index(o, i)] = t[o * inp + i];
            }
        }
    }

    pub fn view(&self) -> WeightView<'_> {
        WeightView { data: &self.weight, rows: self.rows, cols: self.cols, input_axis: self.input_axis }
    }
}

/// Mini-batch gradients of the task loss (no distillation, no dropout) for OBS.
pub trait GradientSource {
    /// Computes `count` gradients, each on a fresh batch, with the layers' current weights and
    /// masks in the model, and calls `each` with one gradient per layer (stored layout, in the
    /// order of `layers`).
    fn gradients(
        &mut self,
        layers: &[Layer],
        count: usize,
        each: &mut dyn FnMut(&[Vec<f32>]) -> Result<()>,
    ) -> Result<usize>;
}

/// Receives `(ks, x, n)`: `n` input rows `x` read by the layers `ks` (see [`ActivationSource`]).
pub type LayerInputSink<'a> = dyn FnMut(&[usize], &[f32], usize) -> Result<()> + 'a;

/// Calibration inputs of linear layers for SparseGPT.
pub trait ActivationSource {
    /// Runs the calibration windows through the model with every layer's current weights and
    /// masks, and calls `each(ks, x, n)` with `n` input rows `x` (`[n, in]`, row-major, padding
    /// tokens excluded) read by the layers `group[k]` for `k` in `ks` (layers reading the same
    /// value are reported together), batch by batch. Returns the windows run.
    fn layer_inputs(&mut self, layers: &[Layer], group: &[usize], each: &mut LayerInputSink) -> Result<usize>;
}

/// What a pruner may ask the trainer for.
#[derive(Default)]
pub struct Evidence<'a> {
    pub gradients: Option<&'a mut dyn GradientSource>,
    pub activations: Option<&'a mut dyn ActivationSource>,
}

/// What one pruning update did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub algorithm: String,
    /// Gradient batches, calibration windows, or training steps observed (movement).
    pub samples: usize,
    /// Peak memory of the algorithm's own state (Fisher inverses, Hessians), in bytes.
    pub state_bytes: u64,
    pub seconds: f64,
    /// Overall sparsity of the layers after the update.
    pub sparsity: f64,
}

/// A pruning algorithm: sets each layer's mask to (about) its target sparsity, and may update
/// the weights it keeps. Pruned weights end at zero.
pub trait Pruner {
    fn name(&self) -> &'static str;
    /// Whether [`Evidence::gradients`] must be given.
    fn needs_gradients(&self) -> bool {
        false
    }
    /// Whether [`Evidence::activations`] must be given.
    fn needs_activations(&self) -> bool {
        false
    }
    /// Whether the pruner scores from every training step ([`Pruner::observe_step`]).
    fn observes_steps(&self) -> bool {
        false
    }
    /// One optimiser step's masked weight (graph input `initializer`, stored layout) and its
    /// clipped gradient, just before the update; called for each of the modifier's layers at
    /// every step while the modifier runs.
    fn observe_step(&mut self, _initializer: &str, _weight: &[f32], _grad: &[f32]) {}
    /// State carried from step to step (saved in checkpoints), by name.
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }
    /// Restores what [`Pruner::state`] returned.
    fn restore_state(&mut self, state: Vec<(String, Vec<f32>)>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("the {} pruner keeps no state, but the checkpoint holds some", self.name())
        }
    }
    fn prune(&mut self, layers: &mut [Layer], evidence: &mut Evidence) -> Result<PruneReport>;
}

/// Zeros over all masks of `layers`.
pub fn overall_sparsity(layers: &[Layer]) -> f64 {
    let zeros: usize = layers.iter().map(|l| l.mask.iter().filter(|&&m| m == 0.0).count()).sum();
    let total: usize = layers.iter().map(|l| l.mask.len()).sum();
    if total == 0 {
        0.0
    } else {
        zeros as f64 / total as f64
    }
}
