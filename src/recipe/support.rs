//! Which recipe modifiers and fields sparsec carries out. Every modifier the recipe parser
//! accepts is checked here: one that sparsec cannot carry out is an error; a field whose effect
//! sparsec does not reproduce is a loud warning naming the modifier, the field and what runs
//! instead. `sparsec compile` stops on the errors and reports the warnings, and keeps them in
//! plan.json, from where `sparsec train` reports them again.

use super::{
    ConstantPruningModifier, DistillationModifier, LearningRateFunctionModifier, MaskType, Modifier, ModifierEntry,
    PerLayerDistillationModifier, PruningAlgorithm, PruningModifier, QuantizationModifier, Recipe,
    SetLearningRateModifier, SetWeightDecayModifier, SparseGptModifier, TrainableParamsModifier,
};

/// One finding about a modifier.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
        let mut a = Audit { e, out: &mut out };
        match &e.modifier {
            Modifier::EpochRange(_) => {}
            Modifier::LearningRateFunction(m) => learning_rate_function(&mut a, m),
            Modifier::SetLearningRate(m) => set_learning_rate(&mut a, m),
            Modifier::Pruning(p) => pruning(&mut a, p),
            Modifier::ConstantPruning(c) => constant_pruning(&mut a, c, total),
            Modifier::Quantization(q) => quantization(&mut a, q),
            Modifier::Distillation(d) => distillation(&mut a, d, total),
            Modifier::PerLayerDistillation(d) => per_layer_distillation(&mut a, d, total),
            Modifier::TrainableParams(t) => trainable_params(&mut a, t),
            Modifier::SetWeightDecay(w) => set_weight_decay(&mut a, w),
            Modifier::LayerPruning(_) => a.push(None, true, "removing layers is not implemented in sparsec".into()),
            Modifier::SparseGpt(s) => sparsegpt(&mut a, s, has_quant),
        }
    }
    out
}

/// One modifier's findings being gathered into the recipe's.
struct Audit<'a> {
    e: &'a ModifierEntry,
    out: &'a mut Vec<Finding>,
}

impl Audit<'_> {
    /// A finding at `field` of the modifier (at the modifier alone for `None`), on the field's
    /// recipe line (the tag's when the field is absent).
    fn push(&mut self, field: Option<&str>, error: bool, message: String) {
        let e = self.e;
        let at = match field {
            Some(f) => format!("{}.{f}", e.name),
            None => e.name.clone(),
        };
        let line = field.and_then(|f| e.field_lines.get(f).copied()).unwrap_or(e.line);
        self.out.push(Finding { at, line, message, error });
    }
}

// Training: learning rate, trainable parameters, weight decay.

fn learning_rate_function(a: &mut Audit, m: &LearningRateFunctionModifier) {
    if m.param_groups.is_some() {
        a.push(
            Some("param_groups"),
            false,
            "ignored: sparsec has one parameter group, and this learning rate applies to every parameter".into(),
        );
    }
}

fn set_learning_rate(a: &mut Audit, m: &SetLearningRateModifier) {
    if m.param_groups.is_some() {
        a.push(
            Some("param_groups"),
            false,
            "ignored: sparsec has one parameter group, and this learning rate applies to every parameter".into(),
        );
    }
    if has(a.e, "constant_logging") {
        a.push(
            Some("constant_logging"),
            false,
            "ignored (a logging option): train_log.jsonl logs the learning rate of every step".into(),
        );
    }
}

fn trainable_params(a: &mut Audit, t: &TrainableParamsModifier) {
    let whole_run = t.start_epoch <= 0.0 && t.end_epoch == -1.0;
    if !t.trainable && !whole_run {
        a.push(
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

fn set_weight_decay(a: &mut Audit, w: &SetWeightDecayModifier) {
    if w.param_groups.is_some() {
        a.push(Some("param_groups"), false, "ignored: the weight decay applies to every decayed parameter".into());
    }
    if w.start_epoch > 0.0 {
        a.push(
            Some("start_epoch"),
            false,
            format!("the weight decay applies from the first step, not from epoch {}", w.start_epoch),
        );
    }
}

// Pruning.

fn pruning(a: &mut Audit, p: &PruningModifier) {
    match &p.algorithm {
        PruningAlgorithm::Magnitude => {}
        PruningAlgorithm::Movement => {
            if matches!(p.mask_type, MaskType::NM { .. }) {
                a.push(
                    Some("mask_type"),
                    true,
                    "movement pruning supports unstructured and block masks, not N:M".into(),
                );
            }
        }
        PruningAlgorithm::Obs { grad_sampler_kwargs, .. } => {
            if matches!(p.mask_type, MaskType::NM { .. }) {
                a.push(Some("mask_type"), true, "OBS supports unstructured, [1, k] and [k, 1] masks, not N:M".into());
            }
            if let MaskType::Block { rows, cols } = p.mask_type {
                if rows != 1 && cols != 1 {
                    a.push(
                        Some("mask_type"),
                        true,
                        format!("OBS supports [1, k] and [k, 1] blocks, not [{rows}, {cols}]"),
                    );
                }
            }
            if let Some(serde_json::Value::Object(k)) = grad_sampler_kwargs {
                for key in k.keys().filter(|k| *k != "batch_size") {
                    a.push(
                        Some("grad_sampler_kwargs"),
                        false,
                        format!("'{key}' is ignored: sparsec's gradient sampler only takes batch_size (batches are drawn from the training windows, shuffled, without dropout)"),
                    );
                }
            }
        }
    }
}

fn constant_pruning(a: &mut Audit, c: &ConstantPruningModifier, total: f64) {
    if c.end_epoch != -1.0 && c.end_epoch < total {
        a.push(
            Some("end_epoch"),
            false,
            format!("ignored: the zeros are kept to the end of training, not released at epoch {}", c.end_epoch),
        );
    }
}

// Quantization.

fn quantization(a: &mut Audit, q: &QuantizationModifier) {
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
        ("scheme_overrides", q.scheme_overrides.is_some(), "ignored: the scheme applies to every quantized layer"),
    ];
    for (field, set, why) in ignored {
        if *set && has(a.e, field) {
            a.push(Some(field), false, why.to_string());
        }
    }
    if has(a.e, "quantize_embedding_activations") && q.quantize_embedding_activations && q.quantize_embeddings {
        a.push(
            Some("quantize_embedding_activations"),
            false,
            "ignored: embedding outputs are not fake-quantized (the tables are)".into(),
        );
    }
}

// Distillation.

fn distillation(a: &mut Audit, d: &DistillationModifier, total: f64) {
    if d.teacher_input_keys.is_some() {
        a.push(Some("teacher_input_keys"), false, "ignored: the teacher receives the student's model inputs".into());
    }
    if d.start_epoch > 0.0 || (d.end_epoch != -1.0 && d.end_epoch < total) {
        a.push(
            Some("start_epoch"),
            false,
            format!("distillation runs for the whole run, not only epochs {} to {}", d.start_epoch, d.end_epoch),
        );
    }
}

fn per_layer_distillation(a: &mut Audit, d: &PerLayerDistillationModifier, total: f64) {
    if d.project_features {
        a.push(
            Some("project_features"),
            true,
            "project_features: true (SparseML's default) trains a projection of each student layer; \
             sparsec distills layers of equal width without one: set project_features: false"
                .into(),
        );
    }
    if d.start_epoch > 0.0 || (d.end_epoch != -1.0 && d.end_epoch < total) {
        a.push(
            Some("start_epoch"),
            false,
            format!(
                "hidden-state distillation runs for the whole run, not only epochs {} to {}",
                d.start_epoch, d.end_epoch
            ),
        );
    }
}

// SparseGPT.

fn sparsegpt(a: &mut Audit, s: &SparseGptModifier, has_quant: bool) {
    if s.quantize {
        if !has_quant {
            a.push(
                Some("quantize"),
                true,
                "quantize: true needs a QuantizationModifier in the recipe (sparsec does not create a default one)"
                    .into(),
            );
        } else {
            a.push(Some("quantize"), false, "weights are not quantized inside the SparseGPT sweep (sparsec derives weight scales from the final weights); the QuantizationModifier's int8 calibration runs after pruning instead".into());
        }
    }
}
