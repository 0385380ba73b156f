//! The training graphs of a run, built from the compiled model and the recipe's loss: with fake
//! quantization, and (when the recipe quantizes) without it for the steps before QAT starts; with
//! `--sparse-train on`, the masked linears of the graphs without fake quantization run on
//! sparsec's block-sparse training kernels ([`SparseTrain`]).

use anyhow::{Context, Result};

use crate::autodiff::{build_training_graph, TrainingGraph, TrainingGraphSpec};
use crate::ir::{infer, Model, Tensor};
use crate::passes::{BindInputs, LowerFakeQuant, Pass, RemoveDead, UseMaskedLinear, QUANT_ENABLED_INPUT};

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
    #[default]
    Off,
    /// sparsec's block-sparse kernels for every masked linear whose weight is not fake-quantized.
    On,
}

/// The two training graphs, and which one the stepper runs.
pub(super) struct Graphs {
    pub qat: TrainingGraph,
    pub float: Option<TrainingGraph>,
    pub on_qat: bool,
}

impl Graphs {
    /// The training graphs of `model` with loss `spec`; a float one too when `quantized`.
    pub fn build(model: &Model, spec: &TrainingGraphSpec, quantized: bool, sparse: SparseTrain) -> Result<Graphs> {
        let qat = build_training_graph(&with_sparse_linears(model, sparse)?, spec)
            .context("cannot build the training graph")?;
        let float = match quantized {
            true => Some(
                build_training_graph(&with_sparse_linears(&without_fake_quant(model)?, sparse)?, spec)
                    .context("cannot build the training graph without fake quantization")?,
            ),
            false => None,
        };
        Ok(Graphs { on_qat: float.is_none(), qat, float })
    }

    /// The graph a run starts on.
    pub fn first(&self) -> &TrainingGraph {
        self.float.as_ref().unwrap_or(&self.qat)
    }

    /// The forward graph that pruning evidence is gathered on: `model` as the stepper runs it now.
    pub fn forward(&self, model: &Model) -> Result<Model> {
        match (&self.float, self.on_qat) {
            (Some(_), false) => without_fake_quant(model),
            _ => Ok(model.clone()),
        }
    }
}

/// The compiled graph with fake quantization off for good (`sparsec.quant_enabled` bound to
/// false, the quantize-dequantize branches lowered away), trained on while QAT is off: the same
/// values without computing the unused branches. The observers' min/max outputs stay.
pub fn without_fake_quant(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    BindInputs { values: vec![(QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[false]))] }.apply(&mut m)?;
    LowerFakeQuant::default().apply(&mut m)?;
    RemoveDead::default().apply(&mut m)?;
    infer::infer_facts(&mut m).context("the graph without fake quantization failed validation")?;
    Ok(m)
}

/// `model` with its masked linears on the block-sparse training operators when `sparse` is on
/// ([`UseMaskedLinear`]; fake-quantized weights do not match, so a QAT graph keeps them dense).
pub fn with_sparse_linears(model: &Model, sparse: SparseTrain) -> Result<Model> {
    let mut m = model.clone();
    if sparse == SparseTrain::On {
        let report = UseMaskedLinear::default().apply(&mut m)?;
        tracing::debug!(layers = report.rewritten, "masked linears on the block-sparse training kernels");
        infer::infer_facts(&mut m).context("the graph with block-sparse training linears failed validation")?;
    }
    Ok(m)
}
