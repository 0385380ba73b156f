//! The distillation modifiers: of the logits (`DistillationModifier`) and of hidden states
//! (`PerLayerDistillationModifier`).

use serde::{Deserialize, Serialize};

use super::{check_epochs, EndRule, Modifier};
use crate::recipe::error::RecipeError;
use crate::recipe::fields::FieldReader;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillationModifier {
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub distill_output_keys: Option<Vec<String>>,
    pub teacher_input_keys: Option<Vec<String>>,
    pub update_frequency: f64,
    /// Weight of the distillation loss: `loss = (1 - hardness) * task + hardness * kd` (default 0.5).
    pub hardness: f64,
    pub temperature: f64,
}

/// SparseML's `PerLayerDistillationModifier`: `loss + gain * Σ mean((s - t)^2)` over pairs of
/// module outputs of the student and the teacher, each divided by `mean(t^2) + epsilon` when
/// `normalize`. No names: every linear layer (SparseML: every `Linear`/`Conv2d`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerLayerDistillationModifier {
    pub gain: f64,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
    pub normalize: bool,
    pub student_layer_names: Option<Vec<String>>,
    pub teacher_layer_names: Option<Vec<String>>,
    pub project_features: bool,
    pub epsilon: f64,
}

/// `DistillationModifier`.
pub(super) fn distillation(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    let distill_output_keys = r.strings_opt("distill_output_keys")?;
    let teacher_input_keys = r.strings_opt("teacher_input_keys")?;
    let update_frequency = r.f64_or("update_frequency", -1.0)?;
    let hardness = r.f64_or("hardness", 0.5)?;
    if !(0.0..=1.0).contains(&hardness) {
        return Err(r.invalid("hardness", format!("hardness {hardness} must be in [0, 1]")));
    }
    let temperature = r.f64_or("temperature", 2.0)?;
    if temperature <= 0.0 {
        return Err(r.invalid("temperature", format!("temperature {temperature} must be > 0")));
    }
    Ok(Modifier::Distillation(DistillationModifier {
        start_epoch,
        end_epoch,
        distill_output_keys,
        teacher_input_keys,
        update_frequency,
        hardness,
        temperature,
    }))
}

/// `PerLayerDistillationModifier`.
pub(super) fn per_layer_distillation(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let gain = r.f64_or("gain", 1.5)?;
    if !(gain >= 0.0 && gain.is_finite()) {
        return Err(r.invalid("gain", format!("gain {gain} must be a finite number >= 0")));
    }
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    let update_frequency = r.f64_or("update_frequency", -1.0)?;
    let normalize = r.bool_or("normalize", true)?;
    let mut student_layer_names = r.strings_opt("student_layer_names")?;
    let mut teacher_layer_names = r.strings_opt("teacher_layer_names")?;
    match (&student_layer_names, &teacher_layer_names) {
        (Some(s), Some(t)) if s.len() != t.len() => {
            return Err(r.invalid(
                "teacher_layer_names",
                format!(
                    "student_layer_names has {} names and teacher_layer_names {}: they must pair one to one",
                    s.len(),
                    t.len()
                ),
            ))
        }
        (Some(s), None) => teacher_layer_names = Some(s.clone()),
        (None, Some(t)) => student_layer_names = Some(t.clone()),
        _ => {}
    }
    if student_layer_names.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(r.invalid("student_layer_names", "the list of layers to distill is empty"));
    }
    let project_features = r.bool_or("project_features", true)?;
    let epsilon = r.f64_or("epsilon", 1e-6)?;
    if !(epsilon >= 0.0 && epsilon.is_finite()) {
        return Err(r.invalid("epsilon", format!("epsilon {epsilon} must be a finite number >= 0")));
    }
    Ok(Modifier::PerLayerDistillation(PerLayerDistillationModifier {
        gain,
        start_epoch,
        end_epoch,
        update_frequency,
        normalize,
        student_layer_names,
        teacher_layer_names,
        project_features,
        epsilon,
    }))
}
