//! `QuantizationModifier`: quantization-aware training of the linear layers (and embedding
//! tables), with SparseML's legacy fields or its `scheme` of per-tensor settings.

use serde::{Deserialize, Serialize};

use super::{check_epochs, EndRule, Modifier};
use crate::recipe::error::RecipeError;
use crate::recipe::fields::FieldReader;

/// One tensor's quantization settings (SparseML's `QuantizationArgs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizationArgs {
    pub num_bits: i64,
    pub symmetric: bool,
    /// `tensor` or `channel`.
    pub strategy: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// sparsec's own field: also fake-quantize the inputs of each attention's two products
    /// (Q, Kᵀ, the probabilities, V; uint8 per tensor), so that the export runs int8 attention.
    /// Off by default; plans written before the field existed read as off.
    #[serde(default)]
    pub quantize_attention_matmuls: bool,
    /// Effective weight settings (from `weight_bits` or `scheme.weights`).
    pub weights: QuantizationArgs,
    /// Effective input-activation settings; `None` when activations are not quantized.
    pub input_activations: Option<QuantizationArgs>,
}

/// The fields of SparseML's legacy field set (its `LegacyQuantizationModifier`).
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

/// `QuantizationModifier`, in SparseML's legacy field set or its `scheme` form.
pub(super) fn quantization(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    let submodules = r.strings_opt("submodules")?;
    let ignore = r.strings_opt("ignore")?;
    let model_fuse_fn_name = r.string_opt("model_fuse_fn_name")?;
    let model_fuse_fn_kwargs = r.json_opt("model_fuse_fn_kwargs")?;
    let disable_quantization_observer_epoch = r.f64_opt("disable_quantization_observer_epoch")?;
    let freeze_bn_stats_epoch = r.f64_opt("freeze_bn_stats_epoch")?;
    check_after_start(r, start_epoch, disable_quantization_observer_epoch, freeze_bn_stats_epoch)?;
    let quantize_embeddings = r.bool_or("quantize_embeddings", true)?;
    let reduce_range = r.bool_or("reduce_range", false)?;
    let quantize_linear_activations = r.bool_or("quantize_linear_activations", true)?;
    let quantize_conv_activations = r.bool_or("quantize_conv_activations", true)?;
    let quantize_embedding_activations = r.bool_or("quantize_embedding_activations", true)?;
    let activation_bits = r.int_or("activation_bits", 8)?;
    let weight_bits = r.int_or("weight_bits", 8)?;
    check_bits(r, activation_bits, weight_bits)?;
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
    let quantize_attention_matmuls = r.bool_or("quantize_attention_matmuls", false)?;
    let legacy = LEGACY_ONLY.iter().any(|f| r.field_lines.contains_key(*f));
    check_not_mixed(r, legacy, scheme.is_some(), ignore.is_some(), scheme_overrides.is_some())?;
    let (weights, input_activations) = match scheme.as_ref().filter(|_| !legacy) {
        Some(scheme) => parse_scheme(r, scheme)?,
        None => {
            let weights = QuantizationArgs { num_bits: weight_bits, symmetric: true, strategy: "channel".into() };
            let acts = QuantizationArgs { num_bits: activation_bits, symmetric: tensorrt, strategy: "tensor".into() };
            (weights, quantize_linear_activations.then_some(acts))
        }
    };
    check_supported(r, legacy || scheme.is_none(), &weights, input_activations.as_ref())?;
    Ok(Modifier::Quantization(Box::new(QuantizationModifier {
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
        quantize_attention_matmuls,
        weights,
        input_activations,
    })))
}

/// The observer-disabling and batch-norm-freezing epochs are not before `start_epoch`.
fn check_after_start(
    r: &FieldReader,
    start_epoch: f64,
    disable_quantization_observer_epoch: Option<f64>,
    freeze_bn_stats_epoch: Option<f64>,
) -> Result<(), RecipeError> {
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
    Ok(())
}

/// The legacy bit widths are SparseML's 2 to 8.
fn check_bits(r: &FieldReader, activation_bits: i64, weight_bits: i64) -> Result<(), RecipeError> {
    for (f, b) in [("activation_bits", activation_bits), ("weight_bits", weight_bits)] {
        if !(2..=8).contains(&b) {
            return Err(r.invalid(f, format!("{f} {b} must be between 2 and 8")));
        }
    }
    Ok(())
}

/// A recipe uses the legacy field set or `scheme`/`ignore`/`scheme_overrides`, not both.
fn check_not_mixed(
    r: &FieldReader,
    legacy: bool,
    scheme: bool,
    ignore: bool,
    scheme_overrides: bool,
) -> Result<(), RecipeError> {
    if legacy && (scheme || scheme_overrides || ignore) {
        let f = if scheme {
            "scheme"
        } else if ignore {
            "ignore"
        } else {
            "scheme_overrides"
        };
        return Err(r.invalid(
            f,
            "cannot mix the legacy fields (submodules, quantize_embeddings, weight_bits, …) with scheme/ignore",
        ));
    }
    Ok(())
}

/// sparsec quantizes to 8 bits, per tensor or per channel; `from_bits`: the bits came from
/// `weight_bits` / `activation_bits` (else from `scheme`).
fn check_supported(
    r: &FieldReader,
    from_bits: bool,
    weights: &QuantizationArgs,
    input_activations: Option<&QuantizationArgs>,
) -> Result<(), RecipeError> {
    for (what, a) in [("weights", Some(weights)), ("input_activations", input_activations)] {
        if let Some(a) = a {
            if a.num_bits != 8 {
                return Err(r.invalid(
                    if from_bits {
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
    Ok(())
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
