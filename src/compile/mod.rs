//! The compiler behind `sparsec compile` and `sparsec sparsify`: reads a SparseML recipe,
//! resolves its targets on the model, runs the graph passes (masks, fake quantization,
//! trainable-parameter inputs) and writes the compiled folder ([`folder`]): `model.onnx`,
//! `train.onnx`, `plan.json` ([`plan`]), the recipe and the tokenizer files, all or nothing.
//!
//! `train.onnx` is the same graph with the training loss ([`loss`]: span, or distillation when the
//! recipe has a `DistillationModifier`) and one `grad.<initializer>` output per parameter, built
//! by [`crate::autodiff`]. Sits above `recipe`, `passes` and `autodiff`; `train` reads what it
//! writes.

pub mod folder;
pub mod loss;
mod modifiers;
pub mod plan;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

pub use folder::{Compiled, RECIPE_ARGS_FILE};
pub use plan::{Plan, PlanModifier, PlanTarget, ScheduledUpdate, AUTODIFF_HOOK, PLAN_FORMAT};

use crate::ir::{infer, Model};
use crate::passes::{self, PassReport, QUANT_ENABLED_INPUT};
use crate::recipe::builtin::RecipeText;
use crate::recipe::schedule::Schedule;
use crate::recipe::support::Finding;
use crate::recipe::Recipe;
use modifiers::{Rewrites, Scope};

/// Resolves the recipe on `model`, runs the passes and returns the plan.
pub fn compile(model: &mut Model, model_path: &Path, recipe: &Recipe) -> Result<Plan> {
    let warnings = check(model, model_path, recipe)?;
    rewrite(model, model_path, recipe, warnings)
}

/// Compiles `model_path` per `recipe` (variables overridden by `overrides`) and writes the
/// compiled folder `output` atomically; returns the plan. The recipe's warnings (fields whose
/// effect sparsec does not reproduce) go to `warn`.
pub fn compile_folder(
    model_path: &Path,
    recipe_src: &RecipeText,
    overrides: &serde_json::Map<String, serde_json::Value>,
    output: &Path,
    warn: &mut dyn FnMut(&Finding),
) -> Result<Plan> {
    let recipe = recipe_src.parse(overrides)?;
    let mut model = crate::onnx::load(model_path)?;
    infer::infer_facts(&mut model).with_context(|| format!("'{}'", model_path.display()))?;
    let warnings = check(&model, model_path, &recipe)?;
    for f in &warnings {
        warn(f);
    }
    let mut plan = rewrite(&mut model, model_path, &recipe, warnings)?;
    let training = loss::training_graph(&model, model_path, &plan)?;
    plan.autodiff = format!(
        "train.onnx: {} loss, {} gradients, {} nodes (forward {})",
        match training.loss_outputs.len() {
            1 => "span",
            _ => "span + distillation",
        },
        training.grads.entries.iter().filter(|e| e.connected).count(),
        training.model.graph.node_count(),
        model.graph.node_count()
    );
    model.metadata_props.retain(|(k, _)| k != "sparsec.recipe");
    model.set_metadata("sparsec.recipe", recipe.path.display().to_string());
    let contents = folder::Contents {
        model: &model,
        train: &training.model,
        plan: &plan,
        recipe: recipe_src,
        recipe_args: overrides,
        model_path,
    };
    folder::write(output, &contents)?;
    Ok(plan)
}

/// The model must be valid ONNX and the recipe within what sparsec does; returns the recipe's
/// warnings.
fn check(model: &Model, model_path: &Path, recipe: &Recipe) -> Result<Vec<Finding>> {
    crate::ir::check_schemas(model).with_context(|| format!("'{}' is not valid ONNX", model_path.display()))?;
    crate::recipe::support::check(recipe)
}

/// Plans every modifier on the graph, then runs the passes they ask for; the plan keeps the
/// recipe's `warnings`.
fn rewrite(model: &mut Model, model_path: &Path, recipe: &Recipe, warnings: Vec<Finding>) -> Result<Plan> {
    let g = &model.graph;
    let scope = Scope::new(recipe, g);
    let mut rw = Rewrites::default();
    let mut planned = Vec::new();
    for (i, e) in recipe.modifiers.iter().enumerate() {
        planned.push(modifiers::plan_modifier(&scope, i, e, &mut rw)?);
    }
    let inputs_before: BTreeSet<String> = g.inputs().iter().map(|&v| g.value(v).name.clone()).collect();
    let trainable: Vec<String> = scope
        .index
        .params
        .iter()
        .filter(|(n, _)| !rw.frozen.contains(*n))
        .map(|(_, &v)| g.value(v).name.clone())
        .collect();
    let reports = run_passes(model, &rw, trainable)?;
    infer::infer_facts(model).context("the rewritten graph failed validation")?;
    let g = &model.graph;
    let graph_inputs: Vec<String> = g
        .inputs()
        .iter()
        .map(|&v| g.value(v).name.clone())
        .filter(|n| !inputs_before.contains(n) && !g.value_by_name(n).is_some_and(|v| g.is_initializer(v)))
        .collect();
    Ok(Plan {
        format: PLAN_FORMAT,
        model: std::fs::canonicalize(model_path).unwrap_or_else(|_| model_path.to_path_buf()).display().to_string(),
        recipe: recipe.path.display().to_string(),
        recipe_version: recipe.version.clone(),
        variables: recipe.variables.clone(),
        total_epochs: Schedule::new(recipe).total_epochs(),
        modifiers: planned,
        graph_outputs: reports.iter().flat_map(|r| r.new_outputs.clone()).collect(),
        passes: reports,
        graph_inputs,
        quant_enabled_input: rw.quant.map(|_| QUANT_ENABLED_INPUT.to_string()),
        autodiff: AUTODIFF_HOOK.into(),
        warnings,
    })
}

/// Masks, fake quantization, and every parameter not frozen for the whole run as a graph input.
fn run_passes(model: &mut Model, rw: &Rewrites, trainable: Vec<String>) -> Result<Vec<PassReport>> {
    let mut reports = Vec::new();
    if !rw.masks.is_empty() {
        let targets = serde_json::json!({ "targets": rw.masks.values().collect::<Vec<_>>() });
        reports.push(passes::by_name("InsertMasks", targets)?.apply(model)?);
    }
    if let Some(q) = rw.quant {
        let cfg = serde_json::json!({
            "targets": rw.fake_quant,
            "embeddings": rw.fake_quant_embeddings,
            "quantize_activations": q.activations,
            "activation_symmetric": q.activation_symmetric,
            "weight_per_channel": q.weight_per_channel,
            "attention": q.attention,
        });
        reports.push(passes::by_name("InsertFakeQuant", cfg)?.apply(model)?);
    }
    let expose = serde_json::json!({ "initializers": trainable });
    reports.push(passes::by_name("ExposeTrainableParams", expose)?.apply(model)?);
    Ok(reports)
}
