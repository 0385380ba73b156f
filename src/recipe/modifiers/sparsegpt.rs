//! `SparseGPTModifier` (SparseML's one-shot OBCQ): layer-wise pruning of the linear layers under
//! its targets from calibration activations.

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{check_sparsity, Modifier};
use crate::recipe::error::RecipeError;
use crate::recipe::fields::{as_f64, show, FieldReader, ALL_PARAMS, ALL_PRUNABLE};

/// `mask_structure` of `SparseGPTModifier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// `SparseGPTModifier`.
pub(super) fn sparsegpt(_tag: &str, r: &mut FieldReader) -> Result<Modifier, RecipeError> {
    let sparsity = match r.value("sparsity")? {
        None => return Err(r.missing("sparsity")),
        Some(v) => match as_f64(&v) {
            Some(x) => check_sparsity(r, "sparsity", x)?,
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
                format!("mask_structure must be \"N:M\" or [rows, cols], got {}", show(&other)),
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
    Ok(Modifier::SparseGpt(SparseGptModifier {
        sparsity,
        block_size,
        dampening_frac,
        sequential_update,
        mask_structure,
        targets,
        quantize,
    }))
}
