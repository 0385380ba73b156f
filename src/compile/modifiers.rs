//! What each recipe modifier becomes in the compiled folder, one function per modifier: the
//! parameters it acts on (checked against the graph), its entry in `plan.json`, and what it asks
//! of the passes (masks, fake quantization, frozen parameters), gathered in [`Rewrites`].

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

use super::plan::{PlanModifier, PlanTarget, ScheduledUpdate};
use crate::ir::{modules, Graph};
use crate::passes::{FakeQuantTarget, MaskTarget, QUANT_ENABLED_INPUT};
use crate::recipe::resolve::ParamIndex;
use crate::recipe::{
    ConstantPruningModifier, DistillationModifier, InitSparsity, MaskType, Modifier, ModifierEntry,
    PerLayerDistillationModifier, PruningAlgorithm, PruningModifier, QuantizationModifier, Recipe, RecipeError,
    SparseGptModifier, TrainableParamsModifier,
};

/// What the modifiers see: the recipe, the graph, its parameters and its linear layers.
pub(super) struct Scope<'a> {
    pub recipe: &'a Recipe,
    pub g: &'a Graph,
    pub index: ParamIndex,
    layers: Vec<modules::LinearLayer>,
    /// Whether each linear layer's weight is stored `[in, out]`.
    transposed: BTreeMap<String, bool>,
}

/// What the modifiers ask of the passes, gathered over the whole recipe.
#[derive(Default)]
pub(super) struct Rewrites {
    /// Pruned parameters, each masked once.
    pub masks: BTreeMap<String, MaskTarget>,
    pub fake_quant: Vec<FakeQuantTarget>,
    pub fake_quant_embeddings: BTreeSet<String>,
    pub quant: Option<QuantSettings>,
    /// Parameters frozen for the whole run: they stay initializers.
    pub frozen: BTreeSet<String>,
}

/// The last `QuantizationModifier`'s settings for `InsertFakeQuant`.
#[derive(Clone, Copy)]
pub(super) struct QuantSettings {
    pub activations: bool,
    pub activation_symmetric: bool,
    pub weight_per_channel: bool,
    pub attention: bool,
}

/// Modifier `index` of the recipe, planned on the graph; its rewrites go into `rw`.
pub(super) fn plan_modifier(s: &Scope, index: usize, e: &ModifierEntry, rw: &mut Rewrites) -> Result<PlanModifier> {
    let mut pm = PlanModifier::new(index, e);
    match &e.modifier {
        Modifier::Pruning(p) => pruning(s, e, p, &mut pm, rw)?,
        Modifier::ConstantPruning(c) => constant_pruning(s, e, c, &mut pm, rw)?,
        Modifier::Quantization(q) => quantization(s, q, &mut pm, rw)?,
        Modifier::TrainableParams(t) => trainable_params(s, e, t, &mut pm, rw)?,
        Modifier::Distillation(d) => distillation(s, e, d, &mut pm)?,
        Modifier::PerLayerDistillation(d) => per_layer_distillation(s, e, d, &mut pm)?,
        Modifier::SparseGpt(sg) => sparsegpt(s, e, sg, &mut pm, rw)?,
        Modifier::LayerPruning(_) => pm.status = "not implemented".into(),
        Modifier::EpochRange(_)
        | Modifier::LearningRateFunction(_)
        | Modifier::SetLearningRate(_)
        | Modifier::SetWeightDecay(_) => pm.status = "schedule for the trainer".into(),
    }
    Ok(pm)
}

impl<'a> Scope<'a> {
    pub fn new(recipe: &'a Recipe, g: &'a Graph) -> Scope<'a> {
        let layers = modules::linear_layers(g);
        let transposed = layers.iter().map(|l| (l.weight_name(), l.transposed)).collect();
        Scope { recipe, g, index: ParamIndex::new(g), layers, transposed }
    }

    /// Whether `param` is the weight of a linear layer stored `[in, out]`.
    fn transposed(&self, param: &str) -> bool {
        self.transposed.get(param).copied().unwrap_or(false)
    }

    /// The plan entry of parameter `param`, which must have an initializer of its own.
    fn target(&self, param: &str) -> Result<PlanTarget> {
        let v = *self.index.params.get(param).with_context(|| {
            format!(
                "'{param}' has no initializer of its own (a weight shared with another layer?): sparsec prunes and \
                 quantizes each layer's weight separately"
            )
        })?;
        let t = self.g.initializer(v).expect("parameter is an initializer");
        Ok(PlanTarget {
            param: param.to_string(),
            initializer: self.g.value(v).name.clone(),
            shape: t.dims.clone(),
            transposed: self.transposed(param),
            mask_input: None,
            init_sparsity: None,
            final_sparsity: None,
        })
    }

    /// `target(param)` with a mask from `init` to `fin` sparsity (`None`: the parameter's current
    /// sparsity), registered in `rw`.
    fn masked(&self, param: &str, init: Option<f64>, fin: Option<f64>, rw: &mut Rewrites) -> Result<PlanTarget> {
        let mut t = self.target(param)?;
        let current = || self.g.initializer(self.index.params[param]).unwrap().sparsity();
        let init = init.unwrap_or_else(current);
        t.init_sparsity = Some(init);
        t.final_sparsity = Some(fin.unwrap_or(init));
        t.mask_input = Some(format!("{param}.mask"));
        rw.masks.insert(param.to_string(), MaskTarget { param: param.to_string(), initializer: t.initializer.clone() });
        Ok(t)
    }

    /// Resolves each pattern, pairing names with the modifier's per-pattern final sparsity (or 0).
    fn resolve_each(&self, e: &ModifierEntry, patterns: &[String]) -> Result<Vec<(String, f64)>> {
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
            for n in self.index.resolve(std::slice::from_ref(p), &self.recipe.at(e, field))? {
                out.entry(n).or_insert(fin);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A pruned parameter must be a float initializer whose shape fits the mask's blocks.
    fn check_prunable(&self, e: &ModifierEntry, param: &str, mask: &MaskType) -> Result<()> {
        let t = self.g.initializer(self.index.params[param]).expect("parameter is an initializer");
        let invalid = |message: String| RecipeError::Invalid { at: self.recipe.at(e, "params"), message };
        if !t.dtype.is_float() {
            bail!(invalid(format!("'{param}' has dtype {} and cannot be pruned", t.dtype)));
        }
        let numel = t.numel() as i64;
        match *mask {
            MaskType::NM { m, .. } if numel % m != 0 => {
                bail!(invalid(format!("'{param}' has {numel} elements, not a multiple of the group size {m}")))
            }
            MaskType::Block { rows, cols } if t.dims.len() == 2 => {
                let (out, inp) = if self.transposed(param) { (t.dims[1], t.dims[0]) } else { (t.dims[0], t.dims[1]) };
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
}

/// Gradual pruning: a mask per resolved parameter and the mask updates of the nominal schedule.
fn pruning(s: &Scope, e: &ModifierEntry, p: &PruningModifier, pm: &mut PlanModifier, rw: &mut Rewrites) -> Result<()> {
    let mut pairs = BTreeSet::new();
    for (param, fin) in s.resolve_each(e, &p.params)? {
        s.check_prunable(e, &param, &p.mask_type)?;
        let init = match p.init_sparsity {
            InitSparsity::Value(v) => Some(v),
            InitSparsity::FromParam => None,
        };
        let t = s.masked(&param, init, Some(fin), rw)?;
        pairs.insert((t.init_sparsity.unwrap().to_bits(), fin.to_bits()));
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
            "masks inserted; the trainer scores by OBS (block Fisher inverse from task-loss gradients)".into()
        }
        PruningAlgorithm::Movement => {
            "masks inserted; the trainer scores by movement (-w·grad accumulated every step)".into()
        }
    };
    Ok(())
}

/// Constant pruning: a mask that keeps each parameter's current zeros.
fn constant_pruning(
    s: &Scope,
    e: &ModifierEntry,
    c: &ConstantPruningModifier,
    pm: &mut PlanModifier,
    rw: &mut Rewrites,
) -> Result<()> {
    for (param, _) in s.resolve_each(e, &c.params)? {
        pm.targets.push(s.masked(&param, None, None, rw)?);
    }
    Ok(())
}

/// Quantization: fake quantization of the linear layers (and embedding tables) in scope.
fn quantization(s: &Scope, q: &QuantizationModifier, pm: &mut PlanModifier, rw: &mut Rewrites) -> Result<()> {
    let g = s.g;
    let excluded = |ty: &str| q.exclude_module_types.iter().any(|x| x == ty);
    let in_scope = |module: &str| {
        let under = |prefixes: &Option<Vec<String>>| {
            prefixes.as_ref().is_some_and(|ps| ps.iter().any(|p| module == p || module.starts_with(&format!("{p}."))))
        };
        (q.submodules.is_none() || under(&q.submodules)) && !under(&q.ignore)
    };
    if !excluded("Linear") {
        for l in s.layers.iter().filter(|l| in_scope(&l.module)) {
            if !rw.fake_quant.iter().any(|t| t.module == l.module) {
                rw.fake_quant.push(FakeQuantTarget { node: g.node(l.node).name.clone(), module: l.module.clone() });
            }
            pm.targets.push(s.target(&l.weight_name())?);
        }
    }
    if q.quantize_embeddings && !excluded("Embedding") {
        for (_, n) in g.nodes() {
            let Some(table) = n.input(0) else { continue };
            let is_table =
                n.op_type == "Gather" && g.initializer(table).is_some_and(|t| t.dims.len() == 2 && t.dtype.is_float());
            if !is_table {
                continue;
            }
            let name = g.value(table).name.clone();
            if in_scope(name.trim_end_matches(".weight")) && rw.fake_quant_embeddings.insert(name.clone()) {
                let param = s.index.params.iter().find(|(_, &v)| v == table).map(|(k, _)| k.clone());
                pm.targets.push(match param {
                    Some(p) => s.target(&p)?,
                    None => PlanTarget {
                        param: name.clone(),
                        initializer: name.clone(),
                        shape: g.initializer(table).unwrap().dims.clone(),
                        transposed: false,
                        mask_input: None,
                        init_sparsity: None,
                        final_sparsity: None,
                    },
                });
            }
        }
    }
    let acts = q.input_activations.as_ref();
    rw.quant = Some(QuantSettings {
        activations: acts.is_some(),
        activation_symmetric: acts.is_some_and(|a| a.symmetric),
        weight_per_channel: q.weights.strategy == "channel",
        attention: q.quantize_attention_matmuls,
    });
    pm.quantization = Some(serde_json::json!({
        "qat_starts_epoch": q.start_epoch.max(0.0),
        "qat_ends_epoch": q.end_epoch,
        "observers_frozen_epoch": q.disable_quantization_observer_epoch,
        "bn_frozen_epoch": q.freeze_bn_stats_epoch,
        "weights": q.weights,
        "input_activations": q.input_activations,
        "switch_input": QUANT_ENABLED_INPUT,
        "embeddings": rw.fake_quant_embeddings.iter().collect::<Vec<_>>(),
        "attention_matmuls": q.quantize_attention_matmuls,
    }));
    Ok(())
}

/// Trainable parameters: frozen for the whole run, they stay initializers; otherwise the
/// trainer applies the modifier.
fn trainable_params(
    s: &Scope,
    e: &ModifierEntry,
    t: &TrainableParamsModifier,
    pm: &mut PlanModifier,
    rw: &mut Rewrites,
) -> Result<()> {
    let names: Vec<String> = if t.params_strict {
        s.resolve_each(e, &t.params)?.into_iter().map(|(n, _)| n).collect()
    } else {
        t.params
            .iter()
            .filter_map(|p| s.index.resolve(std::slice::from_ref(p), &s.recipe.at(e, "params")).ok())
            .flatten()
            .collect()
    };
    for n in &names {
        pm.targets.push(s.target(n)?);
    }
    if !t.trainable && t.start_epoch <= 0.0 && t.end_epoch == -1.0 {
        rw.frozen.extend(names);
    } else if !t.trainable {
        pm.status = "frozen only within its epochs: the trainer applies it; parameters stay graph inputs".into();
    }
    Ok(())
}

/// Distillation of the logits: the outputs it names must be the model's.
fn distillation(s: &Scope, e: &ModifierEntry, d: &DistillationModifier, pm: &mut PlanModifier) -> Result<()> {
    let outputs: Vec<String> = s.g.outputs().iter().map(|&v| s.g.value(v).name.clone()).collect();
    for k in d.distill_output_keys.iter().flatten() {
        if !outputs.contains(k) {
            bail!(RecipeError::Invalid {
                at: s.recipe.at(e, "distill_output_keys"),
                message: format!("'{k}' is not an output of the model (outputs: {})", outputs.join(", ")),
            });
        }
    }
    pm.status = "distillation loss in train.onnx; the trainer feeds the teacher's logits".into();
    Ok(())
}

/// Hidden-state distillation: every student and teacher module must be in the model.
fn per_layer_distillation(
    s: &Scope,
    e: &ModifierEntry,
    d: &PerLayerDistillationModifier,
    pm: &mut PlanModifier,
) -> Result<()> {
    let (student, teacher) = super::loss::layer_pairs(d, s.g);
    for (names, field) in [(&student, "student_layer_names"), (&teacher, "teacher_layer_names")] {
        if let Some(bad) = names.iter().find(|n| modules::module_output(s.g, n).is_none()) {
            bail!(RecipeError::Invalid {
                at: s.recipe.at(e, field),
                message: format!(
                    "no module '{bad}' in the model (a PyTorch module path, e.g. 'bert.encoder.layer.0.output')"
                ),
            });
        }
    }
    pm.status = format!(
        "hidden-state distillation of {} module outputs in train.onnx; the trainer feeds the teacher's",
        student.len()
    );
    Ok(())
}

/// SparseGPT: a mask on every linear layer under the targets, pruned by `train --one-shot`.
fn sparsegpt(
    s: &Scope,
    e: &ModifierEntry,
    sg: &SparseGptModifier,
    pm: &mut PlanModifier,
    rw: &mut Rewrites,
) -> Result<()> {
    for l in s.layers.iter().filter(|l| sg.group_of(&l.module).is_some()) {
        let param = l.weight_name();
        if s.index.params.contains_key(&param) {
            pm.targets.push(s.masked(&param, Some(0.0), Some(sg.sparsity), rw)?);
        }
    }
    if pm.targets.is_empty() {
        bail!(RecipeError::Invalid {
            at: s.recipe.at(e, "targets"),
            message: format!("no linear layer is under the targets {:?}", sg.targets),
        });
    }
    pm.status = "masks inserted; `sparsec train --one-shot N` prunes by SparseGPT from N calibration windows".into();
    Ok(())
}
