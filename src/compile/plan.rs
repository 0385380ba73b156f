//! `plan.json`, the compiled folder's account of what each recipe modifier became: the parameters
//! it acts on (with their masks and sparsities), its schedule, the passes that ran and the graph
//! inputs the trainer feeds. `sparsec compile` writes it and `sparsec train` reads it back,
//! through these types alone.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::passes::PassReport;
use crate::recipe::ModifierEntry;

/// What the plan says about the training graph's loss and gradients before `train.onnx` is built.
pub const AUTODIFF_HOOK: &str = "built by `sparsec compile` into train.onnx";

/// One parameter a modifier acts on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanTarget {
    pub param: String,
    pub initializer: String,
    /// Shape of the stored initializer (the mask's shape).
    pub shape: Vec<i64>,
    /// Whether the stored layout is `[in, out]`, the transpose of PyTorch's `[out, in]`.
    pub transposed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sparsity: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduledUpdate {
    pub epoch: f64,
    /// Interpolation progress in [0, 1].
    pub progress: f64,
    /// Target sparsity, when all targets share one `init`/`final` pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanModifier {
    pub index: usize,
    #[serde(rename = "type")]
    pub name: String,
    pub line: usize,
    pub stage: Option<String>,
    pub start_epoch: f64,
    pub end_epoch: f64,
    /// `applied` (a graph rewrite or a schedule the trainer follows) or what is still missing.
    pub status: String,
    pub targets: Vec<PlanTarget>,
    /// Mask updates (pruning) on the nominal schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask_updates: Vec<ScheduledUpdate>,
    /// Quantization: fake-quantized layers and embeddings, and when QAT starts / observers freeze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
    pub settings: serde_json::Value,
}

impl PlanModifier {
    /// Recipe modifier `index` as applied, before its targets are resolved.
    pub fn new(index: usize, e: &ModifierEntry) -> Result<PlanModifier> {
        let m = &e.modifier;
        Ok(PlanModifier {
            index,
            name: e.name.clone(),
            line: e.line,
            stage: e.stage.clone(),
            start_epoch: m.start_epoch(),
            end_epoch: m.end_epoch(),
            status: "applied".into(),
            targets: Vec::new(),
            mask_updates: Vec::new(),
            quantization: None,
            settings: serde_json::to_value(m)?,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub recipe: String,
    pub recipe_version: Option<String>,
    pub variables: BTreeMap<String, f64>,
    pub total_epochs: f64,
    pub modifiers: Vec<PlanModifier>,
    /// What each pass did; written for the reader, not read back (empty in a plan read from disk).
    #[serde(skip_deserializing)]
    pub passes: Vec<PassReport>,
    /// Graph inputs the trainer feeds: masks, the quantization switch, activation qparams.
    pub graph_inputs: Vec<String>,
    pub graph_outputs: Vec<String>,
    pub quant_enabled_input: Option<String>,
    pub autodiff: String,
}

impl Plan {
    /// Reads a `plan.json`.
    pub fn load(path: &Path) -> Result<Plan> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("'{}' is not a sparsec plan", path.display()))
    }

    /// The file's text: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }
}
