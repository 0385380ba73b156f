//! The training graphs of a run, built from the compiled model and the recipe's loss: with fake
//! quantization, (when the recipe quantizes) without it for the steps before QAT starts, and each
//! of these with the masked linears on sparsec's block-sparse training kernels, for the steps
//! whose masks are sparse enough ([`SparseTrain`]); which one the stepper runs ([`Graphs`]). Every
//! one has, with [`FusedOps::On`] (the default), its attention and GELUs on fused training
//! operators and its embedding and LayerNorm gradients on `ai.sparsec::EmbeddingGrad` and
//! `LayerNormGrad` (`GradOptions::sparsec_training_ops`).

use anyhow::{Context, Result};

use crate::autodiff::{build_training_graph, TrainingGraph, TrainingGraphSpec};
use crate::ir::{infer, Model, Tensor};
use crate::passes::{
    BindInputs, LinearPrecision, LowerFakeQuant, Pass, RemoveDead, SelectFakeQuant, UseAttentionTrain, UseGeluTrain,
    UseMaskedLinear, QUANT_ENABLED_INPUT,
};

/// Where the masked linear layers of the training graph run.
///
/// The mask is a run-time input of the block-sparse operators (`ai.sparsec::MaskedLinear` and its
/// two gradients, see `passes::UseMaskedLinear`), which list the kept blocks from the mask they
/// are fed at every call: the same graph is exact before, at and after every mask update, and
/// nothing is rebuilt when masks change. Its cost follows the masks' kept `[4, 1]` blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SparseTrain {
    /// Dense ONNX Runtime `MatMul`/`Gemm` on `W ⊙ M`, whatever the masks.
    Off,
    /// sparsec's block-sparse kernels for every masked linear, with or without QAT (a
    /// fake-quantized masked weight keeps its mask's zeros).
    On,
    /// The block-sparse kernels while the masks keep at most [`AUTO_MAX_KEPT_DENSITY`] of their
    /// `[4, 1]` blocks, dense ONNX Runtime otherwise (the dense warm-up before pruning starts).
    #[default]
    Auto,
}

/// The kept-block density at or below which `--sparse-train auto` runs the block-sparse graph:
/// MiniLM's whole training graph (batch 16 × 160, 2 threads, Zen 5, paired in one process,
/// `benches/sparse_train_ops.rs`) ran at 0.77x the dense graph's speed with every block kept,
/// 1.19x at half of them, 1.54x at 20% (BENCHMARKS.md).
pub const AUTO_MAX_KEPT_DENSITY: f64 = 0.6;

impl SparseTrain {
    /// Whether masks keeping `density` of their blocks run block-sparse.
    pub fn wants(self, density: f64) -> bool {
        match self {
            SparseTrain::Off => false,
            SparseTrain::On => true,
            SparseTrain::Auto => density <= AUTO_MAX_KEPT_DENSITY,
        }
    }
}

/// Whether the training graphs run attention and GELU on sparsec's fused training operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FusedOps {
    /// `ai.sparsec::AttentionTrain` (`passes::UseAttentionTrain`: no `[B, H, S, S]` tensor kept
    /// between forward and backward, the softmax gradient in one pass) and `ai.sparsec::GeluTrain`
    /// (`passes::UseGeluTrain`: one pass each way, one tensor kept), with their gradients; the
    /// embedding and LayerNorm gradients as one operator each.
    #[default]
    On,
    /// The exported graph's nodes and their standard-ONNX gradients on ONNX Runtime.
    Off,
}

/// Which training graph the stepper runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Current {
    /// [`Graphs::qat`]: the compiled graph; when the recipe quantizes, with its fake-quantization
    /// switch fixed on, so only while QAT is on.
    Qat,
    /// [`Graphs::float`].
    Float,
    /// [`Graphs::sparse`].
    Sparse,
    /// [`Graphs::qat_sparse`].
    QatSparse,
}

/// The training graphs of a run, and which one the stepper runs.
pub(super) struct Graphs {
    pub qat: TrainingGraph,
    /// Without fake quantization, when the recipe quantizes.
    pub float: Option<TrainingGraph>,
    /// Without fake quantization, masked linears on the block-sparse operators (unless
    /// `--sparse-train off`).
    pub sparse: Option<TrainingGraph>,
    /// With fake quantization, masked linears on the block-sparse operators in f32 (when the
    /// recipe quantizes, unless `--sparse-train off`), for QAT steps whose masks are sparse enough.
    pub qat_sparse: Option<TrainingGraph>,
    mode: SparseTrain,
    fused_ops: FusedOps,
    /// With bf16, the float block-sparse graph (the only one with bf16 products) runs at any
    /// density; QAT keeps f32 products (bf16 would move fake-quantized values off their grid).
    precision: LinearPrecision,
    current: Current,
}

impl Graphs {
    /// The training graphs of `model` with loss `spec`: a float one too when `quantized`, a
    /// block-sparse one unless `sparse` is off, its masked linears' products in `precision`. The
    /// stepper starts on the graph for QAT off and masks keeping every block.
    pub fn build(
        model: &Model,
        spec: &TrainingGraphSpec,
        quantized: bool,
        sparse: SparseTrain,
        fused_ops: FusedOps,
        precision: LinearPrecision,
    ) -> Result<Graphs> {
        if precision == LinearPrecision::Bf16 && sparse == SparseTrain::Off {
            anyhow::bail!(
                "--linear-precision bf16 runs the masked linears on sparsec's training operators, which \
                 --sparse-train off turns off: use --sparse-train auto or on"
            );
        }
        let fused = |m: Model| match fused_ops {
            FusedOps::On => with_fused_ops(&m),
            FusedOps::Off => Ok(m),
        };
        let model = &fused(model.clone())?;
        let spec = &TrainingGraphSpec { sparsec_training_ops: fused_ops == FusedOps::On, ..spec.clone() };
        // The QAT graphs run only while QAT is on (the float ones before): their switch is fixed on.
        let qat_model = if quantized { with_fake_quant_on(model)? } else { model.clone() };
        let qat = build_training_graph(&qat_model, spec).context("cannot build the training graph")?;
        let float_model = if quantized { Some(fused(without_fake_quant(model)?)?) } else { None };
        let float = match &float_model {
            Some(m) => Some(
                build_training_graph(m, spec).context("cannot build the training graph without fake quantization")?,
            ),
            None => None,
        };
        let sparse_graph = match sparse {
            SparseTrain::Off => None,
            _ => Some(
                build_training_graph(&with_sparse_linears(float_model.as_ref().unwrap_or(model), precision)?, spec)
                    .context("cannot build the training graph with block-sparse linears")?,
            ),
        };
        let qat_sparse = match (sparse, quantized) {
            (SparseTrain::Off, _) | (_, false) => None,
            _ => Some(
                build_training_graph(&with_sparse_linears(&qat_model, LinearPrecision::F32)?, spec)
                    .context("cannot build the QAT training graph with block-sparse linears")?,
            ),
        };
        let mut g = Graphs {
            qat,
            float,
            sparse: sparse_graph,
            qat_sparse,
            mode: sparse,
            fused_ops,
            precision,
            current: Current::Qat,
        };
        g.current = g.select(false, 1.0);
        Ok(g)
    }

    /// The graph for QAT `qat_on` and masks keeping `density` of their blocks.
    fn select(&self, qat_on: bool, density: f64) -> Current {
        if qat_on && self.float.is_some() {
            if self.qat_sparse.is_some() && self.mode.wants(density) {
                Current::QatSparse
            } else {
                Current::Qat
            }
        } else if self.sparse.is_some() && (self.mode.wants(density) || self.precision == LinearPrecision::Bf16) {
            Current::Sparse
        } else if self.float.is_some() {
            Current::Float
        } else {
            Current::Qat
        }
    }

    fn graph(&self, which: Current) -> &TrainingGraph {
        match which {
            Current::Qat => &self.qat,
            Current::Float => self.float.as_ref().expect("selected only when built"),
            Current::Sparse => self.sparse.as_ref().expect("selected only when built"),
            Current::QatSparse => self.qat_sparse.as_ref().expect("selected only when built"),
        }
    }

    /// The graph a run starts on.
    pub fn first(&self) -> &TrainingGraph {
        self.graph(self.current)
    }

    /// The graph to switch the stepper to for QAT `qat_on` and masks keeping `density` of their
    /// blocks (`None` when it runs that graph already); it becomes the current one.
    pub fn switch(&mut self, qat_on: bool, density: f64) -> Option<&TrainingGraph> {
        let want = self.select(qat_on, density);
        (want != self.current).then(|| {
            self.current = want;
            self.graph(want)
        })
    }

    /// Whether the stepper runs a block-sparse graph (with or without QAT).
    pub fn on_sparse(&self) -> bool {
        matches!(self.current, Current::Sparse | Current::QatSparse)
    }

    /// The forward graph that pruning evidence is gathered on: `model` as the stepper runs it now
    /// (its linears dense: evidence gradients are taken on every weight; attention and GELU fused
    /// when the training graphs' are).
    pub fn forward(&self, model: &Model) -> Result<Model> {
        let m = match (&self.float, self.current) {
            (Some(_), Current::Float | Current::Sparse) => without_fake_quant(model)?,
            _ => model.clone(),
        };
        match self.fused_ops {
            FusedOps::On => with_fused_ops(&m),
            FusedOps::Off => Ok(m),
        }
    }
}

/// The compiled graph with fake quantization off for good (`sparsec.quant_enabled` bound to
/// false, the quantize-dequantize branches lowered away), trained on while QAT is off: the same
/// values without computing the unused branches. The observers' min/max outputs stay.
pub fn without_fake_quant(model: &Model) -> Result<Model> {
    with_switch_bound(model, false, &LowerFakeQuant::default(), "without fake quantization")
}

/// The compiled graph with fake quantization on for good (`sparsec.quant_enabled` bound to true,
/// each site's switch replaced by its quantized branch, [`SelectFakeQuant`]), trained on while QAT
/// is on: the switched graph's values, without the switches' selects and zero gradients.
pub fn with_fake_quant_on(model: &Model) -> Result<Model> {
    with_switch_bound(model, true, &SelectFakeQuant::default(), "with fake quantization fixed on")
}

/// `model` with `sparsec.quant_enabled` bound to `on`, then `pass` (which removes the switched
/// sites' unused branches) and dead-code removal.
fn with_switch_bound(model: &Model, on: bool, pass: &dyn Pass, what: &str) -> Result<Model> {
    let mut m = model.clone();
    BindInputs { values: vec![(QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[on]))] }.apply(&mut m)?;
    pass.apply(&mut m)?;
    RemoveDead::default().apply(&mut m)?;
    infer::infer_facts(&mut m).with_context(|| format!("the graph {what} failed validation"))?;
    Ok(m)
}

/// `model` with its attention cores and exact GELUs on the fused training operators
/// ([`UseAttentionTrain`], [`UseGeluTrain`]; fake-quantized attention products do not match and
/// stay as they are).
pub fn with_fused_ops(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    let attention = UseAttentionTrain::default().apply(&mut m)?.rewritten;
    let gelu = UseGeluTrain::default().apply(&mut m)?.rewritten;
    tracing::debug!(attention, gelu, "attention and GELU on the fused training kernels");
    infer::infer_facts(&mut m).context("the graph with fused training operators failed validation")?;
    Ok(m)
}

/// `model` with its masked linears on the block-sparse training operators ([`UseMaskedLinear`],
/// products in `precision`; with fake quantization, its masked weights' fake-quantized values).
pub fn with_sparse_linears(model: &Model, precision: LinearPrecision) -> Result<Model> {
    let mut m = model.clone();
    let report = UseMaskedLinear { precision }.apply(&mut m)?;
    tracing::debug!(layers = report.rewritten, "masked linears on the block-sparse training kernels");
    infer::infer_facts(&mut m).context("the graph with block-sparse training linears failed validation")?;
    Ok(m)
}
