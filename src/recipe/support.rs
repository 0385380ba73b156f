//! Which recipe modifiers and fields sparsec carries out. Every modifier the recipe parser
//! accepts is checked here: one that sparsec cannot carry out is an error; a field whose effect
//! sparsec does not reproduce is a loud warning naming the modifier, the field and what runs
//! instead. `sparsec compile` stops on the errors and reports the warnings; `sparsec train`
//! reports the warnings again (and refuses the errors, for folders compiled before this check).

use super::{MaskType, Modifier, ModifierEntry, PruningAlgorithm, Recipe};

/// One finding about a modifier.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// `Modifier.field` (or the modifier alone).
    pub at: String,
    pub line: usize,
    pub message: String,
    pub error: bool,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (recipe line {}): {}", self.at, self.line, self.message)
    }
}

/// The recipe's warnings, or an error listing everything sparsec cannot do.
pub fn check(recipe: &Recipe) -> anyhow::Result<Vec<Finding>> {
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) = audit(recipe).into_iter().partition(|f| f.error);
    if !errors.is_empty() {
        let errors: Vec<String> = errors.iter().map(|f| f.to_string()).collect();
        anyhow::bail!("the recipe asks for what sparsec cannot do:\n  {}", errors.join("\n  "));
    }
    Ok(warnings)
}

/// The recipe's warnings alone (its errors are [`check`]'s).
pub fn warnings(recipe: &Recipe) -> Vec<Finding> {
    audit(recipe).into_iter().filter(|f| !f.error).collect()
}

fn has(e: &ModifierEntry, field: &str) -> bool {
    e.field_lines.contains_key(field)
}

/// The findings of every modifier of `recipe`, in recipe order.
pub fn audit(recipe: &Recipe) -> Vec<Finding> {
    let mut out = Vec::new();
    let total = super::schedule::Schedule::new(recipe).total_epochs();
    let has_quant = recipe.modifiers.iter().any(|e| matches!(e.modifier, Modifier::Quantization(_)));
    for e in &recipe.modifiers {
        let mut push = |field: Option<&str>, error: bool, message: String| {
            let at = match field {
                Some(f) => format!("{}.{f}", e.name),
                None => e.name.clone(),
            };
            let line = field.and_then(|f| e.field_lines.get(f).copied()).unwrap_or(e.line);
            out.push(Finding { at, line, message, error });
        };
        match &e.modifier {
            Modifier::EpochRange(_) => {}
            Modifier::LearningRateFunction(m) => {
                if m.param_groups.is_some() {
                    push(
                        Some("param_groups"),
                        false,
                        "ignored: sparsec has one parameter group, and this learning rate applies to every parameter"
                            .into(),
                    );
                }
            }
            Modifier::SetLearningRate(m) => {
                if m.param_groups.is_some() {
                    push(
                        Some("param_groups"),
                        false,
                        "ignored: sparsec has one parameter group, and this learning rate applies to every parameter"
                            .into(),
                    );
                }
                if has(e, "constant_logging") {
                    push(
                        Some("constant_logging"),
                        false,
                        "ignored (a logging option): train_log.jsonl logs the learning rate of every step".into(),
                    );
                }
            }
            Modifier::Pruning(p) => match &p.algorithm {
                PruningAlgorithm::Magnitude => {}
                PruningAlgorithm::Movement => {
                    if matches!(p.mask_type, MaskType::NM { .. }) {
                        push(
                            Some("mask_type"),
                            true,
                            "movement pruning supports unstructured and block masks, not N:M".into(),
                        );
                    }
                }
                PruningAlgorithm::Obs { grad_sampler_kwargs, .. } => {
                    if matches!(p.mask_type, MaskType::NM { .. }) {
                        push(
                            Some("mask_type"),
                            true,
                            "OBS supports unstructured, [1, k] and [k, 1] masks, not N:M".into(),
                        );
                    }
                    if let MaskType::Block { rows, cols } = p.mask_type {
                        if rows != 1 && cols != 1 {
                            push(
                                Some("mask_type"),
                                true,
                                format!("OBS supports [1, k] and [k, 1] blocks, not [{rows}, {cols}]"),
                            );
                        }
                    }
                    if let Some(serde_json::Value::Object(k)) = grad_sampler_kwargs {
                        for key in k.keys().filter(|k| *k != "batch_size") {
                            push(
                                Some("grad_sampler_kwargs"),
                                false,
                                format!("'{key}' is ignored: sparsec's gradient sampler only takes batch_size (batches are drawn from the training windows, shuffled, without dropout)"),
                            );
                        }
                    }
                }
            },
            Modifier::ConstantPruning(c) => {
                if c.end_epoch != -1.0 && c.end_epoch < total {
                    push(
                        Some("end_epoch"),
                        false,
                        format!(
                            "ignored: the zeros are kept to the end of training, not released at epoch {}",
                            c.end_epoch
                        ),
                    );
                }
            }
            Modifier::Quantization(q) => {
                let ignored: &[(&str, bool, &str)] = &[
                    ("reduce_range", q.reduce_range, "ignored: activations use the full 8-bit range"),
                    ("model_fuse_fn_name", q.model_fuse_fn_name.is_some(), "ignored: no modules are fused"),
                    ("model_fuse_fn_kwargs", q.model_fuse_fn_kwargs.is_some(), "ignored: no modules are fused"),
                    (
                        "custom_quantizable_module_types",
                        q.custom_quantizable_module_types.is_some(),
                        "ignored: only Linear layers (and Embedding tables with quantize_embeddings) are quantized",
                    ),
                    (
                        "activation_qconfig_kwargs",
                        q.activation_qconfig_kwargs.is_some(),
                        "ignored: activations use MinMax observers with averaging constant 0.01",
                    ),
                    (
                        "weight_qconfig_kwargs",
                        q.weight_qconfig_kwargs.is_some(),
                        "ignored: weights use symmetric int8 min/max scales",
                    ),
                    (
                        "num_calibration_steps",
                        q.num_calibration_steps.is_some(),
                        "ignored: one-shot calibration uses the --one-shot N windows",
                    ),
                    (
                        "scheme_overrides",
                        q.scheme_overrides.is_some(),
                        "ignored: the scheme applies to every quantized layer",
                    ),
                ];
                for (field, set, why) in ignored {
                    if *set && has(e, field) {
                        push(Some(field), false, why.to_string());
                    }
                }
                if has(e, "quantize_embedding_activations") && q.quantize_embedding_activations && q.quantize_embeddings
                {
                    push(
                        Some("quantize_embedding_activations"),
                        false,
                        "ignored: embedding outputs are not fake-quantized (the tables are)".into(),
                    );
                }
            }
            Modifier::Distillation(d) => {
                if d.teacher_input_keys.is_some() {
                    push(
                        Some("teacher_input_keys"),
                        false,
                        "ignored: the teacher receives the student's model inputs".into(),
                    );
                }
                if d.start_epoch > 0.0 || (d.end_epoch != -1.0 && d.end_epoch < total) {
                    push(
                        Some("start_epoch"),
                        false,
                        format!(
                            "distillation runs for the whole run, not only epochs {} to {}",
                            d.start_epoch, d.end_epoch
                        ),
                    );
                }
            }
            Modifier::PerLayerDistillation(d) => {
                if d.project_features {
                    push(
                        Some("project_features"),
                        true,
                        "project_features: true (SparseML's default) trains a projection of each student layer; \
                         sparsec distills layers of equal width without one: set project_features: false"
                            .into(),
                    );
                }
                if d.start_epoch > 0.0 || (d.end_epoch != -1.0 && d.end_epoch < total) {
                    push(
                        Some("start_epoch"),
                        false,
                        format!(
                            "hidden-state distillation runs for the whole run, not only epochs {} to {}",
                            d.start_epoch, d.end_epoch
                        ),
                    );
                }
            }
            Modifier::TrainableParams(t) => {
                let whole_run = t.start_epoch <= 0.0 && t.end_epoch == -1.0;
                if !t.trainable && !whole_run {
                    push(
                        Some("end_epoch"),
                        false,
                        format!(
                        "freezing only for epochs {} to {} is not implemented: these parameters are trained for the \
                         whole run (freezing for the whole run needs start_epoch -1 or 0 and end_epoch -1)",
                        t.start_epoch, t.end_epoch
                    ),
                    );
                }
            }
            Modifier::SetWeightDecay(w) => {
                if w.param_groups.is_some() {
                    push(
                        Some("param_groups"),
                        false,
                        "ignored: the weight decay applies to every decayed parameter".into(),
                    );
                }
                if w.start_epoch > 0.0 {
                    push(
                        Some("start_epoch"),
                        false,
                        format!("the weight decay applies from the first step, not from epoch {}", w.start_epoch),
                    );
                }
            }
            Modifier::LayerPruning(_) => {
                push(None, true, "removing layers is not implemented in sparsec".into());
            }
            Modifier::SparseGpt(s) => {
                if s.quantize {
                    if !has_quant {
                        push(Some("quantize"), true, "quantize: true needs a QuantizationModifier in the recipe (sparsec does not create a default one)".into());
                    } else {
                        push(Some("quantize"), false, "weights are not quantized inside the SparseGPT sweep (sparsec derives weight scales from the final weights); the QuantizationModifier's int8 calibration runs after pruning instead".into());
                    }
                }
            }
        }
    }
    out
}
