//! The training graphs of a run, built from the compiled model and the recipe's loss: with fake
//! quantization, and (when the recipe quantizes) without it for the steps before QAT starts.

use anyhow::{Context, Result};

use crate::autodiff::{build_training_graph, TrainingGraph, TrainingGraphSpec};
use crate::ir::{infer, Model, Tensor};
use crate::passes::{BindInputs, LowerFakeQuant, Pass, RemoveDead, QUANT_ENABLED_INPUT};

/// The two training graphs, and which one the stepper runs.
pub(super) struct Graphs {
    pub qat: TrainingGraph,
    pub float: Option<TrainingGraph>,
    pub on_qat: bool,
}

impl Graphs {
    /// The training graphs of `model` with loss `spec`; a float one too when `quantized`.
    pub fn build(model: &Model, spec: &TrainingGraphSpec, quantized: bool) -> Result<Graphs> {
        let qat = build_training_graph(model, spec).context("cannot build the training graph")?;
        let float = match quantized {
            true => Some(
                build_training_graph(&without_fake_quant(model)?, spec)
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
