//! `plan.json`, the compiled folder's account of what each recipe modifier became: the modifier
//! itself (its settings, variables resolved), the parameters it acts on (with their masks and
//! sparsities), its schedule, the passes that ran, the graph inputs the trainer feeds and the
//! recipe's warnings. `sparsec compile` writes it and `sparsec train` reads it back, through these
//! types alone: the plan is training's one source of what the recipe says (recipe.yaml beside it
//! is for people).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::passes::PassReport;
use crate::recipe::schedule::Schedule;
use crate::recipe::support::Finding;
use crate::recipe::{Modifier, ModifierEntry};

/// What the plan says about the training graph's loss and gradients before `train.onnx` is built.
pub const AUTODIFF_HOOK: &str = "built by `sparsec compile` into train.onnx";

/// The version of plan.json's layout this sparsec writes and reads; 2 added `format`, typed
/// `settings` that training follows, and `warnings`.
pub const PLAN_FORMAT: u32 = 2;

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
    /// The modifier as the recipe sets it, variables resolved: what the trainer follows.
    pub settings: Modifier,
}

impl PlanModifier {
    /// Recipe modifier `index` as applied, before its targets are resolved.
    pub fn new(index: usize, e: &ModifierEntry) -> PlanModifier {
        let m = &e.modifier;
        PlanModifier {
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
            settings: m.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`] when written.
    pub format: u32,
    pub model: String,
    pub recipe: String,
    pub recipe_version: Option<String>,
    pub variables: BTreeMap<String, f64>,
    pub total_epochs: f64,
    /// One per recipe modifier, in recipe order: `modifiers[i].index == i`.
    pub modifiers: Vec<PlanModifier>,
    /// What each pass did; written for the reader, not read back (empty in a plan read from disk).
    #[serde(skip_deserializing)]
    pub passes: Vec<PassReport>,
    /// Graph inputs the trainer feeds: masks, the quantization switch, activation qparams.
    pub graph_inputs: Vec<String>,
    pub graph_outputs: Vec<String>,
    pub quant_enabled_input: Option<String>,
    pub autodiff: String,
    /// What the recipe asks that sparsec does not reproduce exactly, as `sparsec compile` found it.
    pub warnings: Vec<Finding>,
}

impl Plan {
    /// Reads a `plan.json` of this sparsec's [`PLAN_FORMAT`]; an older one is an error naming
    /// the file and what it lacks.
    pub fn load(path: &Path) -> Result<Plan> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
        let not_a_plan = || format!("'{}' is not a sparsec plan", path.display());
        let json: serde_json::Value = serde_json::from_slice(&bytes).with_context(not_a_plan)?;
        match json.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == u64::from(PLAN_FORMAT) => {}
            Some(f) => bail!(
                "'{}' is plan format {f}, and this sparsec reads format {PLAN_FORMAT}: compile the model again",
                path.display()
            ),
            None => bail!(
                "'{}' has no `format` field: it was written by an older `sparsec compile`, before the plan carried \
                 each modifier's typed `settings` and the recipe's `warnings` that training reads; compile the model \
                 again",
                path.display()
            ),
        }
        let plan: Plan = serde_json::from_value(json).with_context(not_a_plan)?;
        if let Some((i, m)) = plan.modifiers.iter().enumerate().find(|(i, m)| m.index != *i) {
            bail!("'{}': modifiers[{i}] has index {}, not {i}", path.display(), m.index);
        }
        Ok(plan)
    }

    /// The settings of modifier `index` (its position in the recipe and in [`Plan::modifiers`]).
    pub fn modifier(&self, index: usize) -> &Modifier {
        &self.modifiers[index].settings
    }

    /// The recipe's schedule, from the modifiers' settings.
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule::of(self.modifiers.iter().map(|m| &m.settings))
    }

    /// The file's text: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }
}
