//! The modifiers that set the training schedule and the optimiser: `EpochRangeModifier`,
//! `LearningRateFunctionModifier`, `SetLearningRateModifier`, `SetWeightDecayModifier` and
//! `TrainableParamsModifier`.

use serde::{Deserialize, Serialize};

use super::{check_epochs, EndRule, Modifier};
use crate::recipe::error::RecipeError;
use crate::recipe::fields::FieldReader;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRangeModifier {
    pub start_epoch: f64,
    pub end_epoch: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrFunc {
    Linear,
    Cosine,
    CyclicLinear,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearningRateFunctionModifier {
    pub lr_func: LrFunc,
    pub init_lr: f64,
    pub final_lr: f64,
    pub start_epoch: f64,
    pub end_epoch: f64,
    /// Epochs per cycle of `cyclic_linear` (default 1.0).
    pub cycle_epochs: f64,
    pub param_groups: Option<Vec<i64>>,
    pub update_frequency: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetLearningRateModifier {
    pub learning_rate: f64,
    pub param_groups: Option<Vec<i64>>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub constant_logging: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetWeightDecayModifier {
    pub weight_decay: f64,
    pub start_epoch: f64,
    pub param_groups: Option<Vec<i64>>,
    pub end_epoch: f64,
    pub constant_logging: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainableParamsModifier {
    pub params: Vec<String>,
    pub trainable: bool,
    pub params_strict: bool,
    pub start_epoch: f64,
    pub end_epoch: f64,
}

/// `EpochRangeModifier`.
pub(super) fn epoch_range(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let start_epoch = r.f64_req("start_epoch")?;
    let end_epoch = r.f64_req("end_epoch")?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqual)?;
    Ok(Modifier::EpochRange(EpochRangeModifier { start_epoch, end_epoch }))
}

/// `LearningRateFunctionModifier`.
pub(super) fn learning_rate_function(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let lr_func = match r.string_opt("lr_func")?.as_deref() {
        Some("linear") => LrFunc::Linear,
        Some("cosine") => LrFunc::Cosine,
        Some("cyclic_linear") => LrFunc::CyclicLinear,
        Some(other) => {
            return Err(r.invalid("lr_func", format!("lr_func '{other}' must be one of linear, cosine, cyclic_linear")))
        }
        None => return Err(r.missing("lr_func")),
    };
    let init_lr = r.f64_req("init_lr")?;
    let final_lr = r.f64_req("final_lr")?;
    for (f, v) in [("init_lr", init_lr), ("final_lr", final_lr)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(r.invalid(f, format!("{f} {v} must be within [0.0, 1.0]")));
        }
    }
    let start_epoch = r.f64_req("start_epoch")?;
    let end_epoch = r.f64_req("end_epoch")?;
    check_epochs(r, start_epoch, end_epoch, EndRule::Greater)?;
    let cycle_epochs = r.f64_or("cycle_epochs", 1.0)?;
    if lr_func == LrFunc::CyclicLinear && cycle_epochs <= 0.0 {
        return Err(r.invalid("cycle_epochs", "cycle_epochs of cyclic_linear must be positive"));
    }
    let param_groups = r.ints_opt("param_groups")?;
    let update_frequency = r.f64_or("update_frequency", -1.0)?;
    if update_frequency != -1.0 {
        return Err(r.invalid("update_frequency", "update_frequency must be kept at -1.0"));
    }
    Ok(Modifier::LearningRateFunction(LearningRateFunctionModifier {
        lr_func,
        init_lr,
        final_lr,
        start_epoch,
        end_epoch,
        cycle_epochs,
        param_groups,
        update_frequency,
    }))
}

/// `SetLearningRateModifier`.
pub(super) fn set_learning_rate(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let learning_rate = r.f64_req("learning_rate")?;
    if learning_rate < 0.0 {
        return Err(r.invalid("learning_rate", "learning_rate must be >= 0"));
    }
    let param_groups = r.ints_opt("param_groups")?;
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    let constant_logging = r.bool_or("constant_logging", false)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    Ok(Modifier::SetLearningRate(SetLearningRateModifier {
        learning_rate,
        param_groups,
        start_epoch,
        end_epoch,
        constant_logging,
    }))
}

/// `SetWeightDecayModifier`.
pub(super) fn set_weight_decay(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let weight_decay = r.f64_req("weight_decay")?;
    if weight_decay < 0.0 {
        return Err(r.invalid("weight_decay", "weight_decay must be >= 0"));
    }
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let param_groups = r.ints_opt("param_groups")?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    let constant_logging = r.bool_or("constant_logging", false)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    Ok(Modifier::SetWeightDecay(SetWeightDecayModifier {
        weight_decay,
        start_epoch,
        param_groups,
        end_epoch,
        constant_logging,
    }))
}

/// `TrainableParamsModifier`.
pub(super) fn trainable_params(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let params = r.strings_opt("params")?.ok_or_else(|| r.missing("params"))?;
    let trainable = r.bool_req("trainable")?;
    let params_strict = r.bool_or("params_strict", true)?;
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    Ok(Modifier::TrainableParams(TrainableParamsModifier { params, trainable, params_strict, start_epoch, end_epoch }))
}
