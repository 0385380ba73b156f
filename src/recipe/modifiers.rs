//! The modifiers sparsec understands, as typed structs with SparseML's field names and defaults,
//! and their construction from a recipe's `!Tag` mappings with SparseML's validation rules.

use serde::Serialize;
use serde_yaml::Value;

use super::error::RecipeError;
use super::fields::{as_f64, strings, FieldReader};

/// Tag names accepted in recipes.
pub const KNOWN_MODIFIERS: &[&str] = &[
    "EpochRangeModifier",
    "LearningRateFunctionModifier",
    "SetLearningRateModifier",
    "GMPruningModifier",
    "MagnitudePruningModifier",
    "GlobalMagnitudePruningModifier",
    "OBSPruningModifier",
    "MovementPruningModifier",
    "ConstantPruningModifier",
    "QuantizationModifier",
    "DistillationModifier",
    "PerLayerDistillationModifier",
    "TrainableParamsModifier",
    "SetWeightDecayModifier",
    "LayerPruningModifier",
    "SparseGPTModifier",
];

/// `__ALL_PRUNABLE__`: every linear layer's weight.
pub const ALL_PRUNABLE: &str = "__ALL_PRUNABLE__";
/// `__ALL__`: every named parameter.
pub const ALL_PARAMS: &str = "__ALL__";

#[derive(Clone, Debug, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct EpochRangeModifier {
    pub start_epoch: f64,
    pub end_epoch: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LrFunc {
    Linear,
    Cosine,
    CyclicLinear,
}

#[derive(Clone, Debug, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct SetLearningRateModifier {
    pub learning_rate: f64,
    pub param_groups: Option<Vec<i64>>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub constant_logging: bool,
}

/// Which pruning algorithm scores the weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum PruningAlgorithm {
    /// `GMPruningModifier`, `MagnitudePruningModifier`, `GlobalMagnitudePruningModifier`.
    Magnitude,
    /// `OBSPruningModifier` (oBERT): second-order scores from an empirical block Fisher inverse.
    Obs {
        num_grads: i64,
        damp: f64,
        fisher_block_size: i64,
        grad_sampler_kwargs: Option<serde_json::Value>,
        num_recomputations: i64,
    },
    /// `MovementPruningModifier`: scores are `-w * grad` accumulated over steps.
    Movement,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitSparsity {
    Value(f64),
    /// `__FROM_PARAM__`: each parameter starts at its current sparsity.
    FromParam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InterFunc {
    Linear,
    Cubic,
    InverseCubic,
}

/// How zeros are grouped, in PyTorch's `[out, in]` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskType {
    Unstructured,
    /// Blocks of `rows × cols` pruned together (`block4` is `[1, 4]`: four consecutive inputs).
    Block {
        rows: i64,
        cols: i64,
    },
    /// In every group of `m` consecutive weights, `n` are KEPT (SparseML's `NMPruningMaskCreator`).
    NM {
        n: i64,
        m: i64,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct PruningModifier {
    /// The tag: `GMPruningModifier`, `OBSPruningModifier`, ….
    pub kind: String,
    pub algorithm: PruningAlgorithm,
    pub init_sparsity: InitSparsity,
    /// One final sparsity per entry of `params` (a uniform `final_sparsity` is repeated; the
    /// dict form `{0.9: [patterns]}` expands to its patterns).
    pub final_sparsity: Vec<f64>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
    pub params: Vec<String>,
    pub leave_enabled: bool,
    pub inter_func: InterFunc,
    pub mask_type: MaskType,
    pub global_sparsity: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConstantPruningModifier {
    pub params: Vec<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
}

/// One tensor's quantization settings (SparseML's `QuantizationArgs`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizationArgs {
    pub num_bits: i64,
    pub symmetric: bool,
    /// `tensor` or `channel`.
    pub strategy: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuantizationModifier {
    pub start_epoch: f64,
    pub end_epoch: f64,
    /// Whether the recipe uses the legacy field set (`submodules`, `quantize_embeddings`, …),
    /// which SparseML routes to its `LegacyQuantizationModifier`.
    pub legacy: bool,
    pub submodules: Option<Vec<String>>,
    pub ignore: Option<Vec<String>>,
    pub model_fuse_fn_name: Option<String>,
    pub model_fuse_fn_kwargs: Option<serde_json::Value>,
    pub disable_quantization_observer_epoch: Option<f64>,
    pub freeze_bn_stats_epoch: Option<f64>,
    pub quantize_embeddings: bool,
    pub reduce_range: bool,
    pub quantize_linear_activations: bool,
    pub quantize_conv_activations: bool,
    pub quantize_embedding_activations: bool,
    pub activation_bits: i64,
    pub weight_bits: i64,
    pub num_calibration_steps: Option<i64>,
    pub exclude_batchnorm: bool,
    pub exclude_module_types: Vec<String>,
    pub custom_quantizable_module_types: Option<Vec<String>>,
    pub activation_qconfig_kwargs: Option<serde_json::Value>,
    pub weight_qconfig_kwargs: Option<serde_json::Value>,
    pub tensorrt: bool,
    pub scheme: Option<serde_json::Value>,
    pub scheme_overrides: Option<serde_json::Value>,
    pub strict: bool,
    /// Effective weight settings (from `weight_bits` or `scheme.weights`).
    pub weights: QuantizationArgs,
    /// Effective input-activation settings; `None` when activations are not quantized.
    pub input_activations: Option<QuantizationArgs>,
}

#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct TrainableParamsModifier {
    pub params: Vec<String>,
    pub trainable: bool,
    pub params_strict: bool,
    pub start_epoch: f64,
    pub end_epoch: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetWeightDecayModifier {
    pub weight_decay: f64,
    pub start_epoch: f64,
    pub param_groups: Option<Vec<i64>>,
    pub end_epoch: f64,
    pub constant_logging: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerPruningModifier {
    pub layers: Vec<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
}

/// `mask_structure` of `SparseGPTModifier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SparseGptMask {
    /// `"0:0"`.
    Unstructured,
    /// `"N:M"`: N of every M consecutive input weights are PRUNED (SparseML's `prunen`/`prunem`;
    /// note the pruning modifiers' `mask_type: "N:M"` counts weights KEPT).
    PruneNOfM { n: i64, m: i64 },
    /// `[rows, cols]` blocks of PyTorch's `[out, in]` pruned together (a sparsec extension; `[4, 1]`
    /// is four output channels sharing one input index).
    Block { rows: i64, cols: i64 },
}

/// SparseML's `SparseGPTModifier` (one-shot OBCQ): layer-wise pruning of the linear layers
/// under `targets` from calibration activations.
#[derive(Clone, Debug, Serialize)]
pub struct SparseGptModifier {
    pub sparsity: f64,
    pub block_size: i64,
    pub dampening_frac: f64,
    pub sequential_update: bool,
    pub mask_structure: SparseGptMask,
    /// Module names or `re:` patterns (prefix match, as Python's `re.match`); `__ALL__` for every linear layer.
    pub targets: Vec<String>,
    /// `quantize: true`: int8 calibration follows pruning (see the trainer for what runs).
    pub quantize: bool,
}

impl SparseGptModifier {
    /// The target module that `module` (a linear layer's path) belongs to: its shortest prefix
    /// (on `.` boundaries) named or matched by `targets`; the layer itself for `__ALL__`.
    pub fn group_of(&self, module: &str) -> Option<String> {
        let parts: Vec<&str> = module.split('.').collect();
        for t in &self.targets {
            if t == ALL_PARAMS || t == ALL_PRUNABLE {
                return Some(module.to_string());
            }
        }
        for k in 1..=parts.len() {
            let prefix = parts[..k].join(".");
            for t in &self.targets {
                let hit = match t.strip_prefix("re:") {
                    Some(pat) => regex::Regex::new(&format!("^(?:{pat})"))
                        .is_ok_and(|re| re.find(&prefix).is_some_and(|m| m.end() == prefix.len())),
                    None => *t == prefix,
                };
                if hit {
                    return Some(prefix);
                }
            }
        }
        None
    }
}

/// How `end_epoch` may relate to `start_epoch` (SparseML's `end_comparator`).
#[derive(Clone, Copy, PartialEq)]
enum EndRule {
    /// `end >= start`, or `end == -1` (never ends).
    GreaterEqualOrNever,
    /// `end > start`.
    Greater,
    /// `end >= start`.
    GreaterEqual,
}

fn schedule(r: &mut FieldReader, start: f64, end: f64, rule: EndRule) -> Result<(), RecipeError> {
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

fn sparsity(r: &FieldReader, field: &str, v: f64) -> Result<f64, RecipeError> {
    if !(0.0..1.0).contains(&v) {
        return Err(r.invalid(field, format!("sparsity {v} must be in [0, 1)")));
    }
    Ok(v)
}

/// Builds one modifier from its tag and body, consuming and checking every field.
pub(crate) fn parse_modifier(tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let m = match tag {
        "EpochRangeModifier" => {
            let start_epoch = r.f64_req("start_epoch")?;
            let end_epoch = r.f64_req("end_epoch")?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqual)?;
            Modifier::EpochRange(EpochRangeModifier { start_epoch, end_epoch })
        }
        "LearningRateFunctionModifier" => {
            let lr_func = match r.string_opt("lr_func")?.as_deref() {
                Some("linear") => LrFunc::Linear,
                Some("cosine") => LrFunc::Cosine,
                Some("cyclic_linear") => LrFunc::CyclicLinear,
                Some(other) => {
                    return Err(
                        r.invalid("lr_func", format!("lr_func '{other}' must be one of linear, cosine, cyclic_linear"))
                    )
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
            schedule(r, start_epoch, end_epoch, EndRule::Greater)?;
            let cycle_epochs = r.f64_or("cycle_epochs", 1.0)?;
            if lr_func == LrFunc::CyclicLinear && cycle_epochs <= 0.0 {
                return Err(r.invalid("cycle_epochs", "cycle_epochs of cyclic_linear must be positive"));
            }
            let param_groups = r.ints_opt("param_groups")?;
            let update_frequency = r.f64_or("update_frequency", -1.0)?;
            if update_frequency != -1.0 {
                return Err(r.invalid("update_frequency", "update_frequency must be kept at -1.0"));
            }
            Modifier::LearningRateFunction(LearningRateFunctionModifier {
                lr_func,
                init_lr,
                final_lr,
                start_epoch,
                end_epoch,
                cycle_epochs,
                param_groups,
                update_frequency,
            })
        }
        "SetLearningRateModifier" => {
            let learning_rate = r.f64_req("learning_rate")?;
            if learning_rate < 0.0 {
                return Err(r.invalid("learning_rate", "learning_rate must be >= 0"));
            }
            let param_groups = r.ints_opt("param_groups")?;
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            let constant_logging = r.bool_or("constant_logging", false)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
            Modifier::SetLearningRate(SetLearningRateModifier {
                learning_rate,
                param_groups,
                start_epoch,
                end_epoch,
                constant_logging,
            })
        }
        "GMPruningModifier"
        | "MagnitudePruningModifier"
        | "GlobalMagnitudePruningModifier"
        | "OBSPruningModifier"
        | "MovementPruningModifier" => Modifier::Pruning(parse_pruning(tag, r)?),
        "ConstantPruningModifier" => {
            let params = r.strings_opt("params")?.ok_or_else(|| r.missing("params"))?;
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            let update_frequency = r.f64_or("update_frequency", -1.0)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
            Modifier::ConstantPruning(ConstantPruningModifier { params, start_epoch, end_epoch, update_frequency })
        }
        "QuantizationModifier" => Modifier::Quantization(Box::new(parse_quantization(r)?)),
        "DistillationModifier" => {
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
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
            Modifier::Distillation(DistillationModifier {
                start_epoch,
                end_epoch,
                distill_output_keys,
                teacher_input_keys,
                update_frequency,
                hardness,
                temperature,
            })
        }
        "PerLayerDistillationModifier" => {
            let gain = r.f64_or("gain", 1.5)?;
            if !(gain >= 0.0 && gain.is_finite()) {
                return Err(r.invalid("gain", format!("gain {gain} must be a finite number >= 0")));
            }
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
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
            Modifier::PerLayerDistillation(PerLayerDistillationModifier {
                gain,
                start_epoch,
                end_epoch,
                update_frequency,
                normalize,
                student_layer_names,
                teacher_layer_names,
                project_features,
                epsilon,
            })
        }
        "TrainableParamsModifier" => {
            let params = r.strings_opt("params")?.ok_or_else(|| r.missing("params"))?;
            let trainable = r.bool_req("trainable")?;
            let params_strict = r.bool_or("params_strict", true)?;
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
            Modifier::TrainableParams(TrainableParamsModifier {
                params,
                trainable,
                params_strict,
                start_epoch,
                end_epoch,
            })
        }
        "SetWeightDecayModifier" => {
            let weight_decay = r.f64_req("weight_decay")?;
            if weight_decay < 0.0 {
                return Err(r.invalid("weight_decay", "weight_decay must be >= 0"));
            }
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let param_groups = r.ints_opt("param_groups")?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            let constant_logging = r.bool_or("constant_logging", false)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
            Modifier::SetWeightDecay(SetWeightDecayModifier {
                weight_decay,
                start_epoch,
                param_groups,
                end_epoch,
                constant_logging,
            })
        }
        "LayerPruningModifier" => {
            let layers = r.strings_opt("layers")?.ok_or_else(|| r.missing("layers"))?;
            let start_epoch = r.f64_or("start_epoch", -1.0)?;
            let end_epoch = r.f64_or("end_epoch", -1.0)?;
            let update_frequency = r.f64_or("update_frequency", -1.0)?;
            schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
            Modifier::LayerPruning(LayerPruningModifier { layers, start_epoch, end_epoch, update_frequency })
        }
        "SparseGPTModifier" => Modifier::SparseGpt(parse_sparsegpt(r)?),
        _ => unreachable!("caller checks the tag against KNOWN_MODIFIERS"),
    };
    Ok(m)
}

fn parse_sparsegpt(r: &mut FieldReader) -> Result<SparseGptModifier, RecipeError> {
    let sparsity = match r.value("sparsity")? {
        None => return Err(r.missing("sparsity")),
        Some(v) => match as_f64(&v) {
            Some(x) => self::sparsity(r, "sparsity", x)?,
            None => {
                return Err(r.invalid(
                    "sparsity",
                    "sparsity must be one number (per-layer lists of sparsities are not supported by sparsec)",
                ))
            }
        },
    };
    let block_size = r.int_or("block_size", 128)?;
    if block_size < 1 {
        return Err(r.invalid("block_size", "block_size must be >= 1"));
    }
    let dampening_frac = r.f64_or("dampening_frac", 0.01)?;
    if dampening_frac < 0.0 {
        return Err(r.invalid("dampening_frac", "dampening_frac must be >= 0"));
    }
    let sequential_update = r.bool_or("sequential_update", true)?;
    let mask_structure = match r.value("mask_structure")? {
        None | Some(Value::Null) => SparseGptMask::Unstructured,
        Some(Value::String(s)) => {
            let nums: Option<Vec<i64>> = s.split(':').map(|p| p.trim().parse().ok()).collect();
            match nums.as_deref() {
                Some([0, 0]) => SparseGptMask::Unstructured,
                Some([n, m]) if *n >= 1 && n < m => SparseGptMask::PruneNOfM { n: *n, m: *m },
                _ => {
                    return Err(r.invalid(
                        "mask_structure",
                        format!("mask_structure \"{s}\" must be \"0:0\" or \"N:M\" with 1 <= N < M (N pruned per M)"),
                    ))
                }
            }
        }
        Some(Value::Sequence(items)) => {
            let nums: Option<Vec<i64>> = items.iter().map(Value::as_i64).collect();
            match nums.as_deref() {
                Some([rows, cols]) if *rows >= 1 && *cols >= 1 && (*rows == 1 || *cols == 1) => {
                    SparseGptMask::Block { rows: *rows, cols: *cols }
                }
                _ => {
                    return Err(r.invalid(
                        "mask_structure",
                        "a block mask_structure must be [k, 1] or [1, k] with k >= 1 (PyTorch's [out, in])",
                    ))
                }
            }
        }
        Some(other) => {
            return Err(r.invalid(
                "mask_structure",
                format!("mask_structure must be \"N:M\" or [rows, cols], got {}", super::fields::show(&other)),
            ))
        }
    };
    let targets = r.strings_opt("targets")?.unwrap_or_else(|| vec![ALL_PARAMS.to_string()]);
    if targets.is_empty() {
        return Err(r.invalid("targets", "targets must name at least one module"));
    }
    let quantize = match r.value("quantize")? {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(r.invalid(
                "quantize",
                "quantize must be true or false; a quantization modifier given inline is not supported by sparsec                  (add a QuantizationModifier to the recipe instead)",
            ))
        }
    };
    for f in ["target_ids", "layer_prefix"] {
        if r.field_lines.contains_key(f) {
            return Err(r.invalid(f, format!("SparseGPTModifier.{f} is not supported by sparsec")));
        }
    }
    Ok(SparseGptModifier { sparsity, block_size, dampening_frac, sequential_update, mask_structure, targets, quantize })
}

fn parse_pruning(tag: &str, r: &mut FieldReader) -> Result<PruningModifier, RecipeError> {
    let init_sparsity = match r.value("init_sparsity")? {
        None => return Err(r.missing("init_sparsity")),
        Some(Value::String(s)) if s == "__FROM_PARAM__" => InitSparsity::FromParam,
        Some(v) => match as_f64(&v) {
            Some(x) => InitSparsity::Value(sparsity(r, "init_sparsity", x)?),
            None => {
                return Err(r.invalid("init_sparsity", "init_sparsity must be a number in [0, 1) or __FROM_PARAM__"))
            }
        },
    };
    let params_given = r.strings_opt("params")?;
    let (params, final_sparsity) = match r.value("final_sparsity")? {
        None => return Err(r.missing("final_sparsity")),
        Some(Value::Mapping(m)) => {
            if params_given.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(r.invalid("params", "when final_sparsity is a mapping, params must be []"));
            }
            let mut params = Vec::new();
            let mut finals = Vec::new();
            for (k, v) in m {
                let s = as_f64(&k).ok_or_else(|| r.invalid("final_sparsity", "mapping keys must be sparsities"))?;
                let s = sparsity(r, "final_sparsity", s)?;
                let ps =
                    strings(&v).ok_or_else(|| r.invalid("final_sparsity", "mapping values must be lists of params"))?;
                for p in ps {
                    params.push(p);
                    finals.push(s);
                }
            }
            (params, finals)
        }
        Some(v) => {
            let s = as_f64(&v).ok_or_else(|| r.invalid("final_sparsity", "final_sparsity must be a number"))?;
            let s = sparsity(r, "final_sparsity", s)?;
            let params = match params_given {
                Some(p) if !p.is_empty() => p,
                _ => vec![ALL_PRUNABLE.to_string()],
            };
            let n = params.len();
            (params, vec![s; n])
        }
    };
    let start_epoch = r.f64_req("start_epoch")?;
    let end_epoch = r.f64_req("end_epoch")?;
    schedule(r, start_epoch, end_epoch, EndRule::GreaterEqual)?;
    let update_frequency = r.f64_req("update_frequency")?;
    if update_frequency != -1.0 && update_frequency <= 0.0 {
        return Err(r.invalid(
            "update_frequency",
            format!("update_frequency {update_frequency} must be > 0 (or -1 for every step)"),
        ));
    }
    let leave_enabled = r.bool_or("leave_enabled", true)?;
    let inter_func = match r.string_opt("inter_func")?.as_deref() {
        None | Some("cubic") => InterFunc::Cubic,
        Some("linear") => InterFunc::Linear,
        Some("inverse_cubic") => InterFunc::InverseCubic,
        Some(other) => {
            return Err(
                r.invalid("inter_func", format!("inter_func '{other}' must be one of linear, cubic, inverse_cubic"))
            )
        }
    };
    let mask_type = parse_mask_type(r)?;
    if let MaskType::NM { n, m } = mask_type {
        let nm = 1.0 - n as f64 / m as f64;
        let mut targets: Vec<f64> = final_sparsity.clone();
        if let InitSparsity::Value(v) = init_sparsity {
            targets.push(v);
        }
        if let Some(t) = targets.iter().find(|&&t| t != 0.0 && (t - nm).abs() > 1e-2) {
            return Err(r.invalid(
                "final_sparsity",
                format!("sparsity {t} must match the {n}:{m} mask ({n} kept of {m}: sparsity {nm}) within 0.01"),
            ));
        }
    }
    let global_default = matches!(tag, "GlobalMagnitudePruningModifier" | "OBSPruningModifier");
    let global_sparsity = match tag {
        "GMPruningModifier" | "OBSPruningModifier" => r.bool_or("global_sparsity", global_default)?,
        _ => global_default,
    };
    let algorithm = match tag {
        "OBSPruningModifier" => {
            let num_grads = r.int_or("num_grads", 1024)?;
            let damp = r.f64_or("damp", 1e-7)?;
            let fisher_block_size = r.int_or("fisher_block_size", 50)?;
            let grad_sampler_kwargs = r.json_opt("grad_sampler_kwargs")?;
            let num_recomputations = r.int_or("num_recomputations", 1)?;
            if num_grads < 1 {
                return Err(r.invalid("num_grads", "num_grads must be >= 1"));
            }
            if fisher_block_size < 1 {
                return Err(r.invalid("fisher_block_size", "fisher_block_size must be >= 1"));
            }
            PruningAlgorithm::Obs { num_grads, damp, fisher_block_size, grad_sampler_kwargs, num_recomputations }
        }
        "MovementPruningModifier" => PruningAlgorithm::Movement,
        _ => PruningAlgorithm::Magnitude,
    };
    if tag == "GMPruningModifier" {
        if r.bool_or("phased", false)? {
            return Err(r.invalid("phased", "phased=True is no longer supported by SparseML (use ACDCPruningModifier)"));
        }
        if r.string_opt("score_type")?.is_some_and(|s| s != "magnitude") {
            return Err(r.invalid("score_type", "score_type other than 'magnitude' is no longer supported"));
        }
    }
    Ok(PruningModifier {
        kind: tag.to_string(),
        algorithm,
        init_sparsity,
        final_sparsity,
        start_epoch,
        end_epoch,
        update_frequency,
        params,
        leave_enabled,
        inter_func,
        mask_type,
        global_sparsity,
    })
}

fn parse_mask_type(r: &mut FieldReader) -> Result<MaskType, RecipeError> {
    let v = r.value("mask_type")?;
    let bad = |r: &FieldReader, what: String| {
        r.invalid(
            "mask_type",
            format!(
                "{what}; expected unstructured, block4, [rows, cols], or \"N:M\" with N (weights kept per group) <= M"
            ),
        )
    };
    Ok(match v {
        None | Some(Value::Null) => MaskType::Unstructured,
        Some(Value::String(s)) => match s.as_str() {
            "unstructured" => MaskType::Unstructured,
            "block4" | "block" => MaskType::Block { rows: 1, cols: 4 },
            "tensorrt" => MaskType::NM { n: 2, m: 4 },
            s if s.contains(':') => {
                let parts: Vec<&str> = s.split(':').collect();
                let nums: Option<Vec<i64>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
                match nums.as_deref() {
                    Some([n, m]) if *m >= 1 && *n >= 1 && n <= m => MaskType::NM { n: *n, m: *m },
                    Some([n, m]) if n > m => {
                        return Err(bad(
                            r,
                            format!("mask_type \"{s}\" keeps {n} of every {m} weights, more than the group holds"),
                        ))
                    }
                    _ => return Err(bad(r, format!("mask_type \"{s}\" is not N:M with positive integers"))),
                }
            }
            other => return Err(bad(r, format!("unknown mask_type '{other}'"))),
        },
        Some(Value::Sequence(items)) => {
            let nums: Option<Vec<i64>> = items.iter().map(Value::as_i64).collect();
            match nums.as_deref() {
                Some([rows, cols]) if *rows >= 1 && *cols >= 1 => MaskType::Block { rows: *rows, cols: *cols },
                _ => return Err(bad(r, "a block mask_type must be a list of two positive integers".into())),
            }
        }
        Some(other) => return Err(bad(r, format!("unsupported mask_type {}", super::fields::show(&other)))),
    })
}

fn parse_quantization(r: &mut FieldReader) -> Result<QuantizationModifier, RecipeError> {
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    schedule(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    const LEGACY_ONLY: &[&str] = &[
        "submodules",
        "quantize_embeddings",
        "reduce_range",
        "quantize_linear_activations",
        "quantize_conv_activations",
        "quantize_embedding_activations",
        "activation_bits",
        "weight_bits",
        "exclude_batchnorm",
        "exclude_module_types",
        "custom_quantizable_module_types",
        "activation_qconfig_kwargs",
        "weight_qconfig_kwargs",
        "tensorrt",
    ];
    let submodules = r.strings_opt("submodules")?;
    let ignore = r.strings_opt("ignore")?;
    let model_fuse_fn_name = r.string_opt("model_fuse_fn_name")?;
    let model_fuse_fn_kwargs = r.json_opt("model_fuse_fn_kwargs")?;
    let disable_quantization_observer_epoch = r.f64_opt("disable_quantization_observer_epoch")?;
    let freeze_bn_stats_epoch = r.f64_opt("freeze_bn_stats_epoch")?;
    for (f, e) in [
        ("disable_quantization_observer_epoch", disable_quantization_observer_epoch),
        ("freeze_bn_stats_epoch", freeze_bn_stats_epoch),
    ] {
        if let Some(e) = e {
            if e < start_epoch {
                return Err(r.invalid(f, format!("{f} {e} must be >= start_epoch ({start_epoch})")));
            }
        }
    }
    let quantize_embeddings = r.bool_or("quantize_embeddings", true)?;
    let reduce_range = r.bool_or("reduce_range", false)?;
    let quantize_linear_activations = r.bool_or("quantize_linear_activations", true)?;
    let quantize_conv_activations = r.bool_or("quantize_conv_activations", true)?;
    let quantize_embedding_activations = r.bool_or("quantize_embedding_activations", true)?;
    let activation_bits = r.int_or("activation_bits", 8)?;
    let weight_bits = r.int_or("weight_bits", 8)?;
    for (f, b) in [("activation_bits", activation_bits), ("weight_bits", weight_bits)] {
        if !(2..=8).contains(&b) {
            return Err(r.invalid(f, format!("{f} {b} must be between 2 and 8")));
        }
    }
    let num_calibration_steps = r.int_opt("num_calibration_steps")?;
    let exclude_batchnorm = r.bool_or("exclude_batchnorm", true)?;
    let exclude_module_types = r.strings_opt("exclude_module_types")?.unwrap_or_default();
    let custom_quantizable_module_types = r.strings_opt("custom_quantizable_module_types")?;
    let activation_qconfig_kwargs = r.json_opt("activation_qconfig_kwargs")?;
    let weight_qconfig_kwargs = r.json_opt("weight_qconfig_kwargs")?;
    let tensorrt = r.bool_or("tensorrt", false)?;
    let scheme = r.json_opt("scheme")?;
    let scheme_overrides = r.json_opt("scheme_overrides")?;
    let strict = r.bool_or("strict", true)?;
    let legacy = LEGACY_ONLY.iter().any(|f| r.field_lines.contains_key(*f));
    if legacy && (scheme.is_some() || scheme_overrides.is_some() || ignore.is_some()) {
        let f = if scheme.is_some() {
            "scheme"
        } else if ignore.is_some() {
            "ignore"
        } else {
            "scheme_overrides"
        };
        return Err(r.invalid(
            f,
            "cannot mix the legacy fields (submodules, quantize_embeddings, weight_bits, …) with scheme/ignore",
        ));
    }
    let (weights, input_activations) = match scheme.as_ref().filter(|_| !legacy) {
        Some(scheme) => parse_scheme(r, scheme)?,
        None => {
            let weights = QuantizationArgs { num_bits: weight_bits, symmetric: true, strategy: "channel".into() };
            let acts = QuantizationArgs { num_bits: activation_bits, symmetric: tensorrt, strategy: "tensor".into() };
            (weights, quantize_linear_activations.then_some(acts))
        }
    };
    for (what, a) in [("weights", Some(&weights)), ("input_activations", input_activations.as_ref())] {
        if let Some(a) = a {
            if a.num_bits != 8 {
                return Err(r.invalid(
                    if legacy || scheme.is_none() {
                        if what == "weights" {
                            "weight_bits"
                        } else {
                            "activation_bits"
                        }
                    } else {
                        "scheme"
                    },
                    format!(
                        "{what}: sparsec's fake quantization and int8 export support 8 bits only, got {}",
                        a.num_bits
                    ),
                ));
            }
            if a.strategy != "tensor" && a.strategy != "channel" {
                return Err(r.invalid("scheme", format!("{what}: strategy '{}' must be tensor or channel", a.strategy)));
            }
        }
    }
    Ok(QuantizationModifier {
        start_epoch,
        end_epoch,
        legacy,
        submodules,
        ignore,
        model_fuse_fn_name,
        model_fuse_fn_kwargs,
        disable_quantization_observer_epoch,
        freeze_bn_stats_epoch,
        quantize_embeddings,
        reduce_range,
        quantize_linear_activations,
        quantize_conv_activations,
        quantize_embedding_activations,
        activation_bits,
        weight_bits,
        num_calibration_steps,
        exclude_batchnorm,
        exclude_module_types,
        custom_quantizable_module_types,
        activation_qconfig_kwargs,
        weight_qconfig_kwargs,
        tensorrt,
        scheme,
        scheme_overrides,
        strict,
        weights,
        input_activations,
    })
}

/// SparseML's `QuantizationScheme`: `default`/`deepsparse` (8-bit asymmetric activations, 8-bit
/// symmetric per-tensor weights), `tensorrt` (symmetric activations), or an explicit mapping.
fn parse_scheme(
    r: &FieldReader,
    scheme: &serde_json::Value,
) -> Result<(QuantizationArgs, Option<QuantizationArgs>), RecipeError> {
    let default_w = QuantizationArgs { num_bits: 8, symmetric: true, strategy: "tensor".into() };
    let default_a = QuantizationArgs { num_bits: 8, symmetric: false, strategy: "tensor".into() };
    let args = |v: &serde_json::Value, default: &QuantizationArgs| -> Result<Option<QuantizationArgs>, RecipeError> {
        if v.is_null() {
            return Ok(None);
        }
        let obj = v.as_object().ok_or_else(|| r.invalid("scheme", "each scheme entry must be a mapping or null"))?;
        for k in obj.keys() {
            if !["num_bits", "symmetric", "strategy", "kwargs"].contains(&k.as_str()) {
                return Err(r.invalid("scheme", format!("unknown QuantizationArgs field '{k}'")));
            }
        }
        Ok(Some(QuantizationArgs {
            num_bits: obj.get("num_bits").and_then(|x| x.as_i64()).unwrap_or(default.num_bits),
            symmetric: obj.get("symmetric").and_then(|x| x.as_bool()).unwrap_or(default.symmetric),
            strategy: obj.get("strategy").and_then(|x| x.as_str()).unwrap_or("tensor").to_string(),
        }))
    };
    match scheme {
        serde_json::Value::String(s) => match s.as_str() {
            "default" | "deepsparse" => Ok((default_w, Some(default_a))),
            "tensorrt" => Ok((default_w, Some(QuantizationArgs { symmetric: true, ..default_a }))),
            other => Err(r.invalid("scheme", format!("unknown scheme '{other}' (default, deepsparse, tensorrt)"))),
        },
        serde_json::Value::Object(obj) => {
            for k in obj.keys() {
                if !["input_activations", "weights", "output_activations", "target_hardware"].contains(&k.as_str()) {
                    return Err(r.invalid("scheme", format!("unknown QuantizationScheme field '{k}'")));
                }
            }
            let weights = match obj.get("weights") {
                None => default_w.clone(),
                Some(v) => args(v, &default_w)?.ok_or_else(|| r.invalid("scheme", "weights: null is not supported"))?,
            };
            let acts = match obj.get("input_activations") {
                None => Some(default_a.clone()),
                Some(v) => args(v, &default_a)?,
            };
            Ok((weights, acts))
        }
        _ => Err(r.invalid("scheme", "scheme must be a name or a mapping")),
    }
}
