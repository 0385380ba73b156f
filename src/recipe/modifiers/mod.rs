//! The modifiers sparsec understands, as typed structs with SparseML's field names and defaults,
//! one file per family, and their construction from a recipe's `!Tag` mappings with SparseML's
//! validation rules: [`parser`] looks a tag up in one table of tags and field readers.

mod distillation;
mod pruning;
mod quantization;
mod sparsegpt;
mod training;

use serde::{Deserialize, Serialize};

pub use distillation::{DistillationModifier, PerLayerDistillationModifier};
pub use pruning::{
    ConstantPruningModifier, InitSparsity, InterFunc, LayerPruningModifier, MaskType, PruningAlgorithm, PruningModifier,
};
pub use quantization::{QuantizationArgs, QuantizationModifier};
pub use sparsegpt::{SparseGptMask, SparseGptModifier};
pub use training::{
    EpochRangeModifier, LearningRateFunctionModifier, LrFunc, SetLearningRateModifier, SetWeightDecayModifier,
    TrainableParamsModifier,
};

use super::error::RecipeError;
use super::fields::FieldReader;

/// Reads one modifier's fields (the tag tells the pruning modifiers apart).
pub(crate) type Parse = fn(&str, &mut FieldReader) -> Result<Modifier, RecipeError>;

/// Every tag accepted in recipes, with the function that reads its fields, in the order errors
/// list them.
const MODIFIERS: &[(&str, Parse)] = &[
    ("EpochRangeModifier", training::epoch_range),
    ("LearningRateFunctionModifier", training::learning_rate_function),
    ("SetLearningRateModifier", training::set_learning_rate),
    ("GMPruningModifier", pruning::pruning),
    ("MagnitudePruningModifier", pruning::pruning),
    ("GlobalMagnitudePruningModifier", pruning::pruning),
    ("OBSPruningModifier", pruning::pruning),
    ("MovementPruningModifier", pruning::pruning),
    ("ConstantPruningModifier", pruning::constant_pruning),
    ("QuantizationModifier", quantization::quantization),
    ("DistillationModifier", distillation::distillation),
    ("PerLayerDistillationModifier", distillation::per_layer_distillation),
    ("TrainableParamsModifier", training::trainable_params),
    ("SetWeightDecayModifier", training::set_weight_decay),
    ("LayerPruningModifier", pruning::layer_pruning),
    ("SparseGPTModifier", sparsegpt::sparsegpt),
];

/// The field reader of modifier `tag`, if sparsec knows it.
pub(crate) fn parser(tag: &str) -> Option<Parse> {
    MODIFIERS.iter().find(|(t, _)| *t == tag).map(|&(_, p)| p)
}

/// Tag names accepted in recipes.
pub fn known_modifiers() -> Vec<&'static str> {
    MODIFIERS.iter().map(|&(t, _)| t).collect()
}

/// One modifier, its variables resolved. Written (tagged by `type`) into each modifier's
/// `settings` in plan.json, which is where `sparsec train` reads it back from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Modifier {
    EpochRange(EpochRangeModifier),
    LearningRateFunction(LearningRateFunctionModifier),
    SetLearningRate(SetLearningRateModifier),
    Pruning(PruningModifier),
    ConstantPruning(ConstantPruningModifier),
    Quantization(Box<QuantizationModifier>),
    Distillation(DistillationModifier),
    PerLayerDistillation(PerLayerDistillationModifier),
    TrainableParams(TrainableParamsModifier),
    SetWeightDecay(SetWeightDecayModifier),
    LayerPruning(LayerPruningModifier),
    SparseGpt(SparseGptModifier),
}

impl Modifier {
    pub fn start_epoch(&self) -> f64 {
        match self {
            Modifier::EpochRange(m) => m.start_epoch,
            Modifier::LearningRateFunction(m) => m.start_epoch,
            Modifier::SetLearningRate(m) => m.start_epoch,
            Modifier::Pruning(m) => m.start_epoch,
            Modifier::ConstantPruning(m) => m.start_epoch,
            Modifier::Quantization(m) => m.start_epoch,
            Modifier::Distillation(m) => m.start_epoch,
            Modifier::PerLayerDistillation(m) => m.start_epoch,
            Modifier::TrainableParams(m) => m.start_epoch,
            Modifier::SetWeightDecay(m) => m.start_epoch,
            Modifier::LayerPruning(m) => m.start_epoch,
            Modifier::SparseGpt(_) => -1.0,
        }
    }

    pub fn end_epoch(&self) -> f64 {
        match self {
            Modifier::EpochRange(m) => m.end_epoch,
            Modifier::LearningRateFunction(m) => m.end_epoch,
            Modifier::SetLearningRate(m) => m.end_epoch,
            Modifier::Pruning(m) => m.end_epoch,
            Modifier::ConstantPruning(m) => m.end_epoch,
            Modifier::Quantization(m) => m.end_epoch,
            Modifier::Distillation(m) => m.end_epoch,
            Modifier::PerLayerDistillation(m) => m.end_epoch,
            Modifier::TrainableParams(m) => m.end_epoch,
            Modifier::SetWeightDecay(m) => m.end_epoch,
            Modifier::LayerPruning(m) => m.end_epoch,
            Modifier::SparseGpt(_) => -1.0,
        }
    }
}

/// How `end_epoch` may relate to `start_epoch` (SparseML's `end_comparator`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum EndRule {
    /// `end >= start`, or `end == -1` (never ends).
    GreaterEqualOrNever,
    /// `end > start`.
    Greater,
    /// `end >= start`.
    GreaterEqual,
}

/// `start_epoch` and `end_epoch` as SparseML checks them.
pub(super) fn check_epochs(r: &mut FieldReader, start: f64, end: f64, rule: EndRule) -> Result<(), RecipeError> {
    if start < -1.0 {
        return Err(r.invalid("start_epoch", format!("start_epoch {start} must be >= -1 (-1 starts immediately)")));
    }
    let ok = match rule {
        EndRule::GreaterEqualOrNever => end == -1.0 || end >= start,
        EndRule::Greater => end > start,
        EndRule::GreaterEqual => end >= start,
    };
    if !ok {
        let need = match rule {
            EndRule::GreaterEqualOrNever => "greater than or equal to start_epoch, or -1",
            EndRule::Greater => "greater than start_epoch",
            EndRule::GreaterEqual => "greater than or equal to start_epoch",
        };
        return Err(r.invalid("end_epoch", format!("end_epoch {end} must be {need} ({start})")));
    }
    Ok(())
}

/// A sparsity must be in [0, 1).
pub(super) fn check_sparsity(r: &FieldReader, field: &str, v: f64) -> Result<f64, RecipeError> {
    if !(0.0..1.0).contains(&v) {
        return Err(r.invalid(field, format!("sparsity {v} must be in [0, 1)")));
    }
    Ok(v)
}
