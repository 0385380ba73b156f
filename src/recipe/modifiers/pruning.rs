//! The pruning modifiers: gradual pruning by magnitude, OBS or movement, constant pruning (keeps
//! existing zeros) and layer pruning, with their mask shapes and sparsity schedules.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{check_epochs, check_sparsity, EndRule, Modifier};
use crate::recipe::error::RecipeError;
use crate::recipe::fields::{as_f64, show, strings, FieldReader, ALL_PRUNABLE};

/// Which pruning algorithm scores the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitSparsity {
    Value(f64),
    /// `__FROM_PARAM__`: each parameter starts at its current sparsity.
    FromParam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterFunc {
    Linear,
    Cubic,
    InverseCubic,
}

/// How zeros are grouped, in PyTorch's `[out, in]` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConstantPruningModifier {
    pub params: Vec<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerPruningModifier {
    pub layers: Vec<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    pub update_frequency: f64,
}

/// The gradual pruning modifiers (`GMPruningModifier`, `MagnitudePruningModifier`,
/// `GlobalMagnitudePruningModifier`, `OBSPruningModifier`, `MovementPruningModifier`).
pub(super) fn pruning(tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let init_sparsity = init_sparsity(r)?;
    let (params, final_sparsity) = params_and_final_sparsity(r)?;
    let start_epoch = r.f64_req("start_epoch")?;
    let end_epoch = r.f64_req("end_epoch")?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqual)?;
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
    Ok(Modifier::Pruning(PruningModifier {
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
    }))
}

/// `init_sparsity`: a sparsity, or `__FROM_PARAM__`.
fn init_sparsity(r: &mut FieldReader) -> Result<InitSparsity, RecipeError> {
    Ok(match r.value("init_sparsity")? {
        None => return Err(r.missing("init_sparsity")),
        Some(Value::String(s)) if s == "__FROM_PARAM__" => InitSparsity::FromParam,
        Some(v) => match as_f64(&v) {
            Some(x) => InitSparsity::Value(check_sparsity(r, "init_sparsity", x)?),
            None => {
                return Err(r.invalid("init_sparsity", "init_sparsity must be a number in [0, 1) or __FROM_PARAM__"))
            }
        },
    })
}

/// `params` with one final sparsity each: a uniform `final_sparsity` (every prunable weight when
/// `params` is empty), or the mapping `{sparsity: [params]}`.
fn params_and_final_sparsity(r: &mut FieldReader) -> Result<(Vec<String>, Vec<f64>), RecipeError> {
    let params_given = r.strings_opt("params")?;
    Ok(match r.value("final_sparsity")? {
        None => return Err(r.missing("final_sparsity")),
        Some(Value::Mapping(m)) => {
            if params_given.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(r.invalid("params", "when final_sparsity is a mapping, params must be []"));
            }
            let mut params = Vec::new();
            let mut finals = Vec::new();
            for (k, v) in m {
                let s = as_f64(&k).ok_or_else(|| r.invalid("final_sparsity", "mapping keys must be sparsities"))?;
                let s = check_sparsity(r, "final_sparsity", s)?;
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
            let s = check_sparsity(r, "final_sparsity", s)?;
            let params = match params_given {
                Some(p) if !p.is_empty() => p,
                _ => vec![ALL_PRUNABLE.to_string()],
            };
            let n = params.len();
            (params, vec![s; n])
        }
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
        Some(other) => return Err(bad(r, format!("unsupported mask_type {}", show(&other)))),
    })
}

/// `ConstantPruningModifier`.
pub(super) fn constant_pruning(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let params = r.strings_opt("params")?.ok_or_else(|| r.missing("params"))?;
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    let update_frequency = r.f64_or("update_frequency", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    Ok(Modifier::ConstantPruning(ConstantPruningModifier { params, start_epoch, end_epoch, update_frequency }))
}

/// `LayerPruningModifier`.
pub(super) fn layer_pruning(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let layers = r.strings_opt("layers")?.ok_or_else(|| r.missing("layers"))?;
    let start_epoch = r.f64_or("start_epoch", -1.0)?;
    let end_epoch = r.f64_or("end_epoch", -1.0)?;
    let update_frequency = r.f64_or("update_frequency", -1.0)?;
    check_epochs(r, start_epoch, end_epoch, EndRule::GreaterEqualOrNever)?;
    Ok(Modifier::LayerPruning(LayerPruningModifier { layers, start_epoch, end_epoch, update_frequency }))
}
