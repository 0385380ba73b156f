//! The compiler behind `sparsec compile` and `sparsec sparsify`: reads a SparseML recipe,
//! resolves its targets on the model, runs the graph passes (masks, fake quantization,
//! trainable-parameter inputs) and writes `OUT/model.onnx`, `OUT/plan.json`,
//! `OUT/recipe.yaml`, `OUT/recipe_args.json` (and the tokenizer and config files that sit beside
//! the model), all or nothing.
//!
//! It also writes `OUT/train.onnx`: the same graph with the training loss (span, or distillation
//! when the recipe has a `DistillationModifier`) and one `grad.<initializer>` output per
//! parameter, built by [`crate::autodiff`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::ir::{infer, modules, Model};
use crate::onnx::{self, SaveOptions};
use crate::passes::{self, FakeQuantTarget, MaskTarget, PassReport, QUANT_ENABLED_INPUT};
use crate::recipe::builtin::RecipeText;
use crate::recipe::resolve::ParamIndex;
use crate::recipe::schedule::Schedule;
use crate::recipe::{InitSparsity, MaskType, Modifier, ModifierEntry, PruningAlgorithm, Recipe};

/// The recipe variables `--recipe-args` overrode at compile time, beside recipe.yaml.
pub const RECIPE_ARGS_FILE: &str = "recipe_args.json";

/// What the plan says about the training graph's loss and gradients before `train.onnx` is built.
pub const AUTODIFF_HOOK: &str = "built by `sparsec compile` into train.onnx";

/// One parameter a modifier acts on.
#[derive(Clone, Debug, Serialize)]
pub struct PlanTarget {
    pub param: String,
    pub initializer: String,
    /// Shape of the stored initializer (the mask's shape).
    pub shape: Vec<i64>,
    /// Whether the stored layout is `[in, out]`, the transpose of PyTorch's `[out, in]`.
    pub transposed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_sparsity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_sparsity: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScheduledUpdate {
    pub epoch: f64,
    /// Interpolation progress in [0, 1].
    pub progress: f64,
    /// Target sparsity, when all targets share one `init`/`final` pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask_updates: Vec<ScheduledUpdate>,
    /// Quantization: fake-quantized layers and embeddings, and when QAT starts / observers freeze.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
    pub settings: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub model: String,
    pub recipe: String,
    pub recipe_version: Option<String>,
    pub variables: BTreeMap<String, f64>,
    pub total_epochs: f64,
    pub modifiers: Vec<PlanModifier>,
    pub passes: Vec<PassReport>,
    /// Graph inputs the trainer feeds: masks, the quantization switch, activation qparams.
    pub graph_inputs: Vec<String>,
    pub graph_outputs: Vec<String>,
    pub quant_enabled_input: Option<String>,
    pub autodiff: String,
}

/// Resolves the recipe on `model`, runs the passes and returns the plan.
pub fn compile(model: &mut Model, model_path: &Path, recipe: &Recipe) -> Result<Plan> {
    crate::ir::check_schemas(model).with_context(|| format!("'{}' is not valid ONNX", model_path.display()))?;
    let g = &model.graph;
    let index = ParamIndex::new(g);
    let layers = modules::linear_layers(g);
    let layer_of_weight: BTreeMap<String, &modules::LinearLayer> =
        layers.iter().map(|l| (l.weight_name(), l)).collect();
    let target = |param: &str| -> Result<PlanTarget> {
        let v = *index.params.get(param).with_context(|| {
            format!(
                "'{param}' has no initializer of its own (a weight shared with another layer?): sparsec prunes and \
                 quantizes each layer's weight separately"
            )
        })?;
        let t = g.initializer(v).expect("parameter is an initializer");
        Ok(PlanTarget {
            param: param.to_string(),
            initializer: g.value(v).name.clone(),
            shape: t.dims.clone(),
            transposed: layer_of_weight.get(param).is_some_and(|l| l.transposed),
            mask_input: None,
            init_sparsity: None,
            final_sparsity: None,
        })
    };
    let schedule = Schedule::new(recipe);
    let mut masks: BTreeMap<String, MaskTarget> = BTreeMap::new();
    let mut fq_targets: Vec<FakeQuantTarget> = Vec::new();
    let mut fq_embeddings: BTreeSet<String> = BTreeSet::new();
    let mut quant_cfg: Option<(bool, bool, bool)> = None;
    let mut frozen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    let findings = crate::train::support::audit(recipe);
    let errors: Vec<String> = findings.iter().filter(|f| f.error).map(|f| f.to_string()).collect();
    if !errors.is_empty() {
        bail!("the recipe asks for what sparsec cannot do:\n  {}", errors.join("\n  "));
    }
    for f in findings.iter().filter(|f| !f.error) {
        eprintln!("warning: {f}");
    }
    for (i, e) in recipe.modifiers.iter().enumerate() {
        let m = &e.modifier;
        let mut pm = PlanModifier {
            index: i,
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
        };
        match m {
            Modifier::Pruning(p) => {
                let names = resolve_each(&index, recipe, e, &p.params)?;
                let mut pairs = BTreeSet::new();
                for (param, fin) in &names {
                    check_prunable(
                        &index,
                        recipe,
                        e,
                        param,
                        &p.mask_type,
                        layer_of_weight.get(param).is_some_and(|l| l.transposed),
                        g,
                    )?;
                    let mut t = target(param)?;
                    let init = match p.init_sparsity {
                        InitSparsity::Value(v) => v,
                        InitSparsity::FromParam => g.initializer(index.params[param]).unwrap().sparsity(),
                    };
                    t.init_sparsity = Some(init);
                    t.final_sparsity = Some(*fin);
                    t.mask_input = Some(format!("{param}.mask"));
                    pairs.insert((init.to_bits(), fin.to_bits()));
                    masks
                        .insert(param.clone(), MaskTarget { param: param.clone(), initializer: t.initializer.clone() });
                    pm.targets.push(t);
                }
                let shared = (pairs.len() == 1).then(|| {
                    let (a, b) = pairs.iter().next().unwrap();
                    (f64::from_bits(*a), f64::from_bits(*b))
                });
                pm.mask_updates = p
                    .update_epochs()
                    .into_iter()
                    .map(|epoch| ScheduledUpdate {
                        epoch,
                        progress: p.sparsity_at_update(epoch, 0.0, 1.0),
                        sparsity: shared.map(|(a, b)| p.sparsity_at_update(epoch, a, b)),
                    })
                    .collect();
                pm.status = match p.algorithm {
                    PruningAlgorithm::Magnitude => "applied".into(),
                    PruningAlgorithm::Obs { .. } => {
                        "masks inserted; the trainer scores by OBS (block Fisher inverse from task-loss gradients)"
                            .into()
                    }
                    PruningAlgorithm::Movement => {
                        "masks inserted; the trainer scores by movement (-w·grad accumulated every step)".into()
                    }
                };
            }
            Modifier::ConstantPruning(c) => {
                for (param, _) in resolve_each(&index, recipe, e, &c.params)? {
                    let mut t = target(&param)?;
                    let s = g.initializer(index.params[&param]).unwrap().sparsity();
                    t.init_sparsity = Some(s);
                    t.final_sparsity = Some(s);
                    t.mask_input = Some(format!("{param}.mask"));
                    masks
                        .insert(param.clone(), MaskTarget { param: param.clone(), initializer: t.initializer.clone() });
                    pm.targets.push(t);
                }
            }
            Modifier::Quantization(q) => {
                let excluded = |ty: &str| q.exclude_module_types.iter().any(|x| x == ty);
                let in_scope = |module: &str| {
                    let under = |prefixes: &Option<Vec<String>>| {
                        prefixes
                            .as_ref()
                            .is_some_and(|ps| ps.iter().any(|p| module == p || module.starts_with(&format!("{p}."))))
                    };
                    (q.submodules.is_none() || under(&q.submodules)) && !under(&q.ignore)
                };
                if !excluded("Linear") {
                    for l in layers.iter().filter(|l| in_scope(&l.module)) {
                        if !fq_targets.iter().any(|t| t.module == l.module) {
                            fq_targets
                                .push(FakeQuantTarget { node: g.node(l.node).name.clone(), module: l.module.clone() });
                        }
                        pm.targets.push(target(&l.weight_name())?);
                    }
                }
                if q.quantize_embeddings && !excluded("Embedding") {
                    for (_, n) in g.nodes() {
                        let Some(table) = n.input(0) else { continue };
                        let is_table = n.op_type == "Gather"
                            && g.initializer(table).is_some_and(|t| t.dims.len() == 2 && t.dtype.is_float());
                        if is_table {
                            let name = g.value(table).name.clone();
                            if in_scope(name.trim_end_matches(".weight")) && fq_embeddings.insert(name.clone()) {
                                let param = index.params.iter().find(|(_, &v)| v == table).map(|(k, _)| k.clone());
                                match param {
                                    Some(p) => pm.targets.push(target(&p)?),
                                    None => pm.targets.push(PlanTarget {
                                        param: name.clone(),
                                        initializer: name.clone(),
                                        shape: g.initializer(table).unwrap().dims.clone(),
                                        transposed: false,
                                        mask_input: None,
                                        init_sparsity: None,
                                        final_sparsity: None,
                                    }),
                                }
                            }
                        }
                    }
                }
                let acts = q.input_activations.as_ref();
                quant_cfg = Some((acts.is_some(), acts.is_some_and(|a| a.symmetric), q.weights.strategy == "channel"));
                pm.quantization = Some(serde_json::json!({
                    "qat_starts_epoch": q.start_epoch.max(0.0),
                    "qat_ends_epoch": q.end_epoch,
                    "observers_frozen_epoch": q.disable_quantization_observer_epoch,
                    "bn_frozen_epoch": q.freeze_bn_stats_epoch,
                    "weights": q.weights,
                    "input_activations": q.input_activations,
                    "switch_input": QUANT_ENABLED_INPUT,
                    "embeddings": fq_embeddings.iter().collect::<Vec<_>>(),
                }));
            }
            Modifier::TrainableParams(t) => {
                let names: Vec<String> = if t.params_strict {
                    resolve_each(&index, recipe, e, &t.params)?.into_iter().map(|(n, _)| n).collect()
                } else {
                    t.params
                        .iter()
                        .filter_map(|p| index.resolve(std::slice::from_ref(p), &recipe.at(e, "params")).ok())
                        .flatten()
                        .collect()
                };
                for n in &names {
                    pm.targets.push(target(n)?);
                }
                if !t.trainable && t.start_epoch <= 0.0 && t.end_epoch == -1.0 {
                    frozen.extend(names);
                } else if !t.trainable {
                    pm.status =
                        "frozen only within its epochs: the trainer applies it; parameters stay graph inputs".into();
                }
            }
            Modifier::Distillation(d) => {
                let outputs: Vec<String> = g.outputs().iter().map(|&v| g.value(v).name.clone()).collect();
                for k in d.distill_output_keys.iter().flatten() {
                    if !outputs.contains(k) {
                        bail!(crate::recipe::RecipeError::Invalid {
                            at: recipe.at(e, "distill_output_keys"),
                            message: format!("'{k}' is not an output of the model (outputs: {})", outputs.join(", ")),
                        });
                    }
                }
                pm.status = "distillation loss in train.onnx; the trainer feeds the teacher's logits".into();
            }
            Modifier::PerLayerDistillation(d) => {
                let (student, teacher) = layer_pairs(d, g);
                for (names, field) in [(&student, "student_layer_names"), (&teacher, "teacher_layer_names")] {
                    if let Some(bad) = names.iter().find(|n| modules::module_output(g, n).is_none()) {
                        bail!(crate::recipe::RecipeError::Invalid {
                            at: recipe.at(e, field),
                            message: format!(
                                "no module '{bad}' in the model (a PyTorch module path, e.g. \
                                 'bert.encoder.layer.0.output')"
                            ),
                        });
                    }
                }
                pm.status = format!(
                    "hidden-state distillation of {} module outputs in train.onnx; the trainer feeds the teacher's",
                    student.len()
                );
            }
            Modifier::LayerPruning(_) => {
                pm.status = "not implemented".into();
            }
            Modifier::SparseGpt(sg) => {
                let mut n = 0;
                for l in &layers {
                    if sg.group_of(&l.module).is_none() {
                        continue;
                    }
                    let param = l.weight_name();
                    if !index.params.contains_key(&param) {
                        continue;
                    }
                    let mut t = target(&param)?;
                    t.init_sparsity = Some(0.0);
                    t.final_sparsity = Some(sg.sparsity);
                    t.mask_input = Some(format!("{param}.mask"));
                    masks
                        .insert(param.clone(), MaskTarget { param: param.clone(), initializer: t.initializer.clone() });
                    pm.targets.push(t);
                    n += 1;
                }
                if n == 0 {
                    bail!(crate::recipe::RecipeError::Invalid {
                        at: recipe.at(e, "targets"),
                        message: format!("no linear layer is under the targets {:?}", sg.targets),
                    });
                }
                pm.status =
                    "masks inserted; `sparsec train --one-shot N` prunes by SparseGPT from N calibration windows"
                        .into();
            }
            Modifier::EpochRange(_)
            | Modifier::LearningRateFunction(_)
            | Modifier::SetLearningRate(_)
            | Modifier::SetWeightDecay(_) => {
                pm.status = "schedule for the trainer".into();
            }
        }
        out.push(pm);
    }

    let mut reports = Vec::new();
    let inputs_before: BTreeSet<String> = g.inputs().iter().map(|&v| g.value(v).name.clone()).collect();
    let trainable: Vec<String> =
        index.params.iter().filter(|(n, _)| !frozen.contains(*n)).map(|(_, &v)| g.value(v).name.clone()).collect();
    if !masks.is_empty() {
        let pass =
            passes::by_name("InsertMasks", serde_json::json!({ "targets": masks.values().collect::<Vec<_>>() }))?;
        reports.push(pass.apply(model)?);
    }
    if let Some((acts, sym, per_channel)) = quant_cfg {
        let cfg = serde_json::json!({
            "targets": fq_targets,
            "embeddings": fq_embeddings,
            "quantize_activations": acts,
            "activation_symmetric": sym,
            "weight_per_channel": per_channel,
        });
        reports.push(passes::by_name("InsertFakeQuant", cfg)?.apply(model)?);
    }
    reports.push(
        passes::by_name("ExposeTrainableParams", serde_json::json!({ "initializers": trainable }))?.apply(model)?,
    );
    infer::infer_facts(model).context("the rewritten graph failed validation")?;

    let g = &model.graph;
    let graph_inputs: Vec<String> = g
        .inputs()
        .iter()
        .map(|&v| g.value(v).name.clone())
        .filter(|n| !inputs_before.contains(n) && !g.value_by_name(n).is_some_and(|v| g.is_initializer(v)))
        .collect();
    Ok(Plan {
        model: std::fs::canonicalize(model_path).unwrap_or_else(|_| model_path.to_path_buf()).display().to_string(),
        recipe: recipe.path.display().to_string(),
        recipe_version: recipe.version.clone(),
        variables: recipe.variables.clone(),
        total_epochs: schedule.total_epochs(),
        modifiers: out,
        graph_outputs: reports.iter().flat_map(|r| r.new_outputs.clone()).collect(),
        passes: reports,
        graph_inputs,
        quant_enabled_input: quant_cfg.map(|_| QUANT_ENABLED_INPUT.to_string()),
        autodiff: AUTODIFF_HOOK.into(),
    })
}

/// Resolves each pattern, pairing names with the modifier's per-pattern final sparsity (or 0).
fn resolve_each(
    index: &ParamIndex,
    recipe: &Recipe,
    e: &ModifierEntry,
    patterns: &[String],
) -> Result<Vec<(String, f64)>> {
    let finals: Vec<f64> = match &e.modifier {
        Modifier::Pruning(p) => p.final_sparsity.clone(),
        _ => vec![0.0; patterns.len()],
    };
    let field = if e.field_lines.contains_key("params") || !e.field_lines.contains_key("final_sparsity") {
        "params"
    } else {
        "final_sparsity"
    };
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (p, fin) in patterns.iter().zip(finals) {
        for n in index.resolve(std::slice::from_ref(p), &recipe.at(e, field))? {
            out.entry(n).or_insert(fin);
        }
    }
    Ok(out.into_iter().collect())
}

/// A pruned parameter must be a 2-D f32 initializer whose shape fits the mask's blocks.
fn check_prunable(
    index: &ParamIndex,
    recipe: &Recipe,
    e: &ModifierEntry,
    param: &str,
    mask: &MaskType,
    transposed: bool,
    g: &crate::ir::Graph,
) -> Result<()> {
    let t = g.initializer(index.params[param]).expect("parameter is an initializer");
    let invalid = |message: String| crate::recipe::RecipeError::Invalid { at: recipe.at(e, "params"), message };
    if !t.dtype.is_float() {
        bail!(invalid(format!("'{param}' has dtype {} and cannot be pruned", t.dtype)));
    }
    let numel = t.numel() as i64;
    match *mask {
        MaskType::NM { m, .. } if numel % m != 0 => {
            bail!(invalid(format!("'{param}' has {numel} elements, not a multiple of the group size {m}")))
        }
        MaskType::Block { rows, cols } if t.dims.len() == 2 => {
            let (out, inp) = if transposed { (t.dims[1], t.dims[0]) } else { (t.dims[0], t.dims[1]) };
            if rows < 1 || cols < 1 || out % rows != 0 || inp % cols != 0 {
                bail!(invalid(format!(
                    "'{param}' of shape {:?} ({out} outputs x {inp} inputs) does not split into [{rows}, {cols}] blocks",
                    t.dims
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses `--recipe-args`: a JSON object of recipe variables.
pub fn parse_recipe_args(text: Option<&str>) -> Result<serde_json::Map<String, serde_json::Value>> {
    match text {
        None => Ok(serde_json::Map::new()),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => bail!("--recipe-args must be a JSON object like '{{\"num_epochs\": 8}}'"),
            Err(e) => bail!("--recipe-args is not valid JSON: {e}"),
        },
    }
}

/// Compiles `model_path` per `recipe` (variables overridden by `overrides`) and writes the
/// compiled folder `output` atomically; returns the plan.
pub fn compile_folder(
    model_path: &Path,
    recipe_src: &RecipeText,
    overrides: &serde_json::Map<String, serde_json::Value>,
    output: &Path,
) -> Result<Plan> {
    let recipe = recipe_src.parse(overrides)?;
    let mut model = onnx::load(model_path)?;
    infer::infer_facts(&mut model).with_context(|| format!("'{}'", model_path.display()))?;
    let mut plan = compile(&mut model, model_path, &recipe)?;
    let training = training_graph(&model, model_path, &recipe)?;
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
    let mut meta = model.metadata_props.clone();
    meta.retain(|(k, _)| k != "sparsec.recipe");
    model.metadata_props = meta;
    model.set_metadata("sparsec.recipe", recipe.path.display().to_string());
    write_outputs(output, &model, &training.model, &plan, recipe_src, overrides, model_path)?;
    Ok(plan)
}

/// The loss and gradient graph of the compiled model: span loss, or distillation mixed by the
/// recipe's `hardness` at its `temperature`; embedding padding rows (from `config.json` beside the
/// model, when present) get no gradient, as in PyTorch.
fn training_graph(model: &Model, model_path: &Path, recipe: &Recipe) -> Result<crate::autodiff::TrainingGraph> {
    use crate::autodiff::{build_training_graph, loss::hf_padding_rows, LossSpec, TrainingGraphSpec};
    let loss = recipe
        .modifiers
        .iter()
        .find_map(|e| match &e.modifier {
            Modifier::Distillation(d) => {
                Some(LossSpec::Distill { temperature: d.temperature as f32, hardness: d.hardness as f32 })
            }
            _ => None,
        })
        .unwrap_or(LossSpec::Span);
    let mut spec = TrainingGraphSpec::new(loss);
    spec.layers = layer_distillation(recipe, &model.graph).map(|(l, _)| l);
    let config = model_path.parent().map(|d| d.join("config.json")).filter(|p| p.exists());
    if let Some(config) = config {
        let text = std::fs::read(&config).with_context(|| format!("cannot read '{}'", config.display()))?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("'{}' is not valid JSON", config.display()))?;
        let names = modules::parameter_names(&model.graph);
        spec.zero_grad_rows = hf_padding_rows(&json, names.keys().map(String::as_str));
    }
    build_training_graph(model, &spec).context("cannot build the loss and gradient graph")
}

/// The student and teacher module names a `PerLayerDistillationModifier` pairs; with no names,
/// every linear layer of `g` on both sides.
fn layer_pairs(d: &crate::recipe::PerLayerDistillationModifier, g: &crate::ir::Graph) -> (Vec<String>, Vec<String>) {
    match (&d.student_layer_names, &d.teacher_layer_names) {
        (Some(s), Some(t)) => (s.clone(), t.clone()),
        _ => {
            let all: Vec<String> = modules::linear_layers(g).into_iter().map(|l| l.module).collect();
            (all.clone(), all)
        }
    }
}

/// The recipe's hidden-state distillation on graph `g`: the loss term, and the teacher module
/// paired with each student module.
pub fn layer_distillation(
    recipe: &Recipe,
    g: &crate::ir::Graph,
) -> Option<(crate::autodiff::LayerDistill, Vec<String>)> {
    recipe.modifiers.iter().find_map(|e| match &e.modifier {
        Modifier::PerLayerDistillation(d) => {
            let (modules, teacher) = layer_pairs(d, g);
            let loss = crate::autodiff::LayerDistill {
                modules,
                gain: d.gain as f32,
                normalize: d.normalize,
                epsilon: d.epsilon as f32,
            };
            Some((loss, teacher))
        }
        _ => None,
    })
}

/// Writes everything into a temporary sibling folder, then swaps it in for `out`.
fn write_outputs(
    out: &Path,
    model: &Model,
    train: &Model,
    plan: &Plan,
    recipe: &RecipeText,
    recipe_args: &serde_json::Map<String, serde_json::Value>,
    model_path: &Path,
) -> Result<()> {
    let tmp = crate::files::staging_dir(out, ".sparsec-compile-")?;
    onnx::save(model, tmp.path().join("model.onnx"), &SaveOptions::default())?;
    onnx::save(train, tmp.path().join("train.onnx"), &SaveOptions::default())?;
    std::fs::write(tmp.path().join("plan.json"), serde_json::to_string_pretty(plan)? + "\n")
        .context("cannot write plan.json")?;
    std::fs::write(tmp.path().join("recipe.yaml"), &recipe.text)
        .with_context(|| format!("cannot write the recipe '{}'", recipe.path.display()))?;
    std::fs::write(tmp.path().join(RECIPE_ARGS_FILE), serde_json::to_string_pretty(recipe_args)? + "\n")
        .context("cannot write recipe_args.json")?;
    if let Some(dir) = model_path.parent() {
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "vocab.txt"] {
            let src = dir.join(f);
            if src.exists() {
                std::fs::copy(&src, tmp.path().join(f)).with_context(|| format!("cannot copy {f}"))?;
            }
        }
    }
    crate::files::swap_into_place(tmp, out)
}

pub fn print_table(plan: &Plan) {
    println!("model   {}", plan.model);
    println!("recipe  {} (version {})", plan.recipe, plan.recipe_version.as_deref().unwrap_or("-"));
    println!("epochs  {}", plan.total_epochs);
    println!();
    println!("{:<3} {:<32} {:>5} {:>13} {:>7}  schedule / status", "#", "modifier", "line", "epochs", "targets");
    for m in &plan.modifiers {
        let epochs = format!("{}..{}", m.start_epoch, m.end_epoch);
        let sched = if !m.mask_updates.is_empty() {
            let ups: Vec<String> = m
                .mask_updates
                .iter()
                .map(|u| match u.sparsity {
                    Some(s) => format!("{}:{:.3}", u.epoch, s),
                    None => format!("{}:{:.0}%", u.epoch, u.progress * 100.0),
                })
                .collect();
            format!("mask updates (epoch:sparsity) {}", ups.join(" "))
        } else if let Some(q) = &m.quantization {
            format!("QAT from epoch {}, observers frozen at {}", q["qat_starts_epoch"], q["observers_frozen_epoch"])
        } else {
            String::new()
        };
        println!("{:<3} {:<32} {:>5} {:>13} {:>7}  {sched}", m.index, m.name, m.line, epochs, m.targets.len());
        if m.status != "applied" {
            println!("{:<3} {:<32} {:>5} {:>13} {:>7}  ({})", "", "", "", "", "", m.status);
        }
    }
    println!();
    println!("new graph inputs: {}", plan.graph_inputs.len());
    for p in &plan.passes {
        println!("pass {:<22} rewrote {} sites", p.pass, p.rewritten);
    }
    println!("loss/gradients: {}", plan.autodiff);
}
