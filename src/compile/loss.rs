//! The training loss a recipe asks for, set up in one place from the plan for `sparsec compile`
//! (which builds `train.onnx`) and `sparsec train` (which builds its training graphs from the
//! compiled model): the span loss, or distillation from the teacher's logits mixed by the recipe's
//! `hardness` at its `temperature`; hidden-state distillation of the modules a
//! `PerLayerDistillationModifier` pairs; and the embedding padding rows (from `config.json`) that
//! get no gradient, as in PyTorch.

use std::path::Path;

use anyhow::{Context, Result};

use super::plan::Plan;
use crate::autodiff::{build_training_graph, loss::hf_padding_rows, LayerDistill, LossSpec, TrainingGraphSpec};
use crate::ir::{modules, Graph, Model};
use crate::recipe::{Modifier, PerLayerDistillationModifier};

/// The loss of one training graph.
pub struct Loss {
    /// Loss, hidden-state distillation and zero-gradient rows, for [`build_training_graph`].
    pub spec: TrainingGraphSpec,
    /// Whether the loss distills the teacher's logits (`DistillationModifier`).
    pub distill: bool,
    /// The teacher module paired with each student module of `spec.layers`.
    pub teacher_modules: Vec<String>,
}

impl Loss {
    /// The plan's loss on graph `g`; with `teacher` false, the span loss alone (no distillation
    /// of any kind).
    pub fn of(plan: &Plan, g: &Graph, teacher: bool, zero_grad_rows: Vec<(String, i64)>) -> Loss {
        let distill = plan
            .modifiers
            .iter()
            .find_map(|m| match &m.settings {
                Modifier::Distillation(d) => Some(d),
                _ => None,
            })
            .filter(|_| teacher);
        let loss = match distill {
            Some(d) => LossSpec::Distill { temperature: d.temperature as f32, hardness: d.hardness as f32 },
            None => LossSpec::Span,
        };
        let layers = layer_distillation(plan, g).filter(|_| teacher);
        let mut spec = TrainingGraphSpec::new(loss);
        spec.zero_grad_rows = zero_grad_rows;
        let teacher_modules = layers.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        spec.layers = layers.map(|(l, _)| l);
        Loss { spec, distill: distill.is_some(), teacher_modules }
    }

    /// Whether a step needs the teacher's outputs.
    pub fn needs_teacher(&self) -> bool {
        self.distill || self.spec.layers.is_some()
    }
}

/// The loss and gradient graph of the compiled model (`train.onnx`), with the padding rows of
/// the `config.json` beside the model.
pub fn training_graph(model: &Model, model_path: &Path, plan: &Plan) -> Result<crate::autodiff::TrainingGraph> {
    let rows = match model_path.parent() {
        Some(dir) => padding_rows(dir, &model.graph)?,
        None => Vec::new(),
    };
    let loss = Loss::of(plan, &model.graph, true, rows);
    build_training_graph(model, &loss.spec).context("cannot build the loss and gradient graph")
}

/// `zero_grad_rows` from the `config.json` in `dir` (embedding rows HF keeps at zero gradient);
/// none without one.
pub fn padding_rows(dir: &Path, g: &Graph) -> Result<Vec<(String, i64)>> {
    let config = dir.join("config.json");
    if !config.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read(&config).with_context(|| format!("cannot read '{}'", config.display()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("'{}' is not valid JSON", config.display()))?;
    let names = modules::parameter_names(g);
    Ok(hf_padding_rows(&json, names.keys().map(String::as_str)))
}

/// The student and teacher module names a `PerLayerDistillationModifier` pairs; with no names,
/// every linear layer of `g` on both sides.
pub(super) fn layer_pairs(d: &PerLayerDistillationModifier, g: &Graph) -> (Vec<String>, Vec<String>) {
    match (&d.student_layer_names, &d.teacher_layer_names) {
        (Some(s), Some(t)) => (s.clone(), t.clone()),
        _ => {
            let all: Vec<String> = modules::linear_layers(g).into_iter().map(|l| l.module).collect();
            (all.clone(), all)
        }
    }
}

/// The plan's hidden-state distillation on graph `g`: the loss term, and the teacher module
/// paired with each student module.
fn layer_distillation(plan: &Plan, g: &Graph) -> Option<(LayerDistill, Vec<String>)> {
    plan.modifiers.iter().find_map(|m| match &m.settings {
        Modifier::PerLayerDistillation(d) => {
            let (modules, teacher) = layer_pairs(d, g);
            let loss = LayerDistill { modules, gain: d.gain as f32, normalize: d.normalize, epsilon: d.epsilon as f32 };
            Some((loss, teacher))
        }
        _ => None,
    })
}
