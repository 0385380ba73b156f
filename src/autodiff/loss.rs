//! Training losses for extractive QA, emitted as forward subgraphs onto a model's logits, and
//! [`build_training_graph`]: loss + backward in one call (what `sparsec train` runs).
//!
//! - Span loss (HF `*ForQuestionAnswering`): target positions, int64 `[batch]` inputs
//!   `start_positions` / `end_positions`, are clamped to `[0, seq]`; the clamped value `seq` is
//!   ignored; each cross-entropy is the mean over the non-ignored rows; the loss is
//!   `(CE_start + CE_end) / 2`.
//! - Distillation (SparseML `DistillationModifier`): per head,
//!   `KL(softmax(t/T) || softmax(s/T)) * T^2 / rows` with the KL summed over all elements and
//!   `rows = numel / last_dim`; heads averaged; teacher logits are `[batch, seq]` inputs
//!   `teacher_start_logits` / `teacher_end_logits`. The total is
//!   `hardness * distill + (1 - hardness) * span`.
//! - Hidden-state distillation (SparseML `PerLayerDistillationModifier`, without projection): per
//!   module pair, `mean((s - t)^2)`, divided by `mean(t^2) + epsilon` when normalized; summed over
//!   the pairs and added to the loss above times `gain`. The teacher's module outputs are inputs
//!   `teacher_layer.{i}` of the student module's shape.

use crate::ir::{modules, Attribute, DType, Dim, Facts, Model, NodeSpec, ValueId};

use super::{differentiate, AutodiffError, GradMap, GradOptions, Gradient};

/// Which training loss to attach.
#[derive(Clone, Debug, PartialEq)]
pub enum LossSpec {
    /// The QA span loss alone.
    Span,
    /// Distillation from teacher logits, mixed with the span loss by `hardness`.
    Distill { temperature: f32, hardness: f32 },
}

/// What [`build_training_graph`] builds.
#[derive(Clone, Debug)]
pub struct TrainingGraphSpec {
    /// Parameter initializer names; `None` for every parameter [`modules::parameter_names`] knows.
    pub params: Option<Vec<String>>,
    pub loss: LossSpec,
    /// The model outputs holding the start and end logits, `[batch, seq]`.
    pub start_logits: String,
    pub end_logits: String,
    /// Rows whose gradient is zero, by initializer or PyTorch name (see [`GradOptions`]).
    pub zero_grad_rows: Vec<(String, i64)>,
    /// Hidden-state distillation added to the loss.
    pub layers: Option<LayerDistill>,
    /// See [`GradOptions::sparsec_training_ops`]; `sparsec train` turns it on with `--fused-ops on`.
    pub sparsec_training_ops: bool,
}

/// Hidden-state distillation: the outputs of PyTorch modules (see [`modules::module_output`])
/// pulled towards the teacher's outputs of the same modules.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDistill {
    /// Student module names; pair `i` is fed the teacher's output as `teacher_layer.{i}`.
    pub modules: Vec<String>,
    pub gain: f32,
    pub normalize: bool,
    pub epsilon: f32,
}

impl TrainingGraphSpec {
    pub fn new(loss: LossSpec) -> TrainingGraphSpec {
        TrainingGraphSpec {
            params: None,
            loss,
            start_logits: "start_logits".into(),
            end_logits: "end_logits".into(),
            zero_grad_rows: Vec::new(),
            layers: None,
            sparsec_training_ops: false,
        }
    }
}

/// A model that computes the loss and its gradients.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    pub model: Model,
    pub grads: GradMap,
    /// Extra inputs a training step feeds: `start_positions`, `end_positions`, for
    /// distillation `teacher_start_logits`, `teacher_end_logits`, and for hidden-state
    /// distillation `teacher_layer.{i}`.
    pub loss_inputs: Vec<String>,
    /// Loss outputs: `loss` (what is differentiated), then its parts (`loss_span`, `loss_distill`,
    /// `loss_layer`).
    pub loss_outputs: Vec<String>,
}

/// Attaches the loss of `spec` to `model`'s logits and differentiates it with respect to the
/// parameters. Contract: the returned model has the original inputs plus [`TrainingGraph::loss_inputs`],
/// the original outputs plus the loss outputs and one `grad.<initializer>` per parameter, and holds
/// to the ONNX operator schemas of the model's opset.
pub fn build_training_graph(model: &Model, spec: &TrainingGraphSpec) -> Result<TrainingGraph, AutodiffError> {
    let mut m = model.clone();
    let guards = super::guards::drop_softmax_nan_guards(&mut m)?;
    tracing::debug!(guards, "softmax NaN guards dropped from the training graph");
    let names = modules::parameter_names(&m.graph);
    let params: Vec<String> = match &spec.params {
        Some(p) => p.clone(),
        None => names.values().map(|&v| m.graph.value(v).name.clone()).collect(),
    };
    let zero_grad_rows = spec
        .zero_grad_rows
        .iter()
        .map(|(n, r)| {
            let init = names.get(n).map(|&v| m.graph.value(v).name.clone()).unwrap_or_else(|| n.clone());
            (init, *r)
        })
        .collect();
    let (loss_inputs, loss_outputs) = attach_loss(&mut m, spec)?;
    let (model, grads) = differentiate(
        &m,
        &loss_outputs[0],
        &params,
        &GradOptions { zero_grad_rows, sparsec_training_ops: spec.sparsec_training_ops },
    )?;
    crate::ir::check_schemas(&model).map_err(|source| AutodiffError::Invalid {
        step: "building the training graph (loss and gradients)",
        source,
    })?;
    Ok(TrainingGraph { model, grads, loss_inputs, loss_outputs })
}

/// Adds the loss subgraph of `spec` to `model`; returns (new inputs, loss outputs).
pub fn attach_loss(model: &mut Model, spec: &TrainingGraphSpec) -> Result<(Vec<String>, Vec<String>), AutodiffError> {
    let opset = model.opset();
    let g = &model.graph;
    let find = |n: &str| g.value_by_name(n).ok_or_else(|| AutodiffError::UnknownValue(n.to_string()));
    let (start, end) = (find(&spec.start_logits)?, find(&spec.end_logits)?);
    let mut hidden = Vec::new();
    for (i, name) in spec.layers.iter().flat_map(|l| l.modules.iter()).enumerate() {
        let v = modules::module_output(g, name).ok_or_else(|| AutodiffError::Unsupported {
            reason: format!("hidden-state distillation: no module named '{name}' in the graph"),
        })?;
        let f = &g.value(v).facts;
        if f.dtype != Some(DType::F32) {
            return Err(AutodiffError::Unsupported {
                reason: format!("hidden-state distillation: module '{name}' returns {:?}, not float32", f.dtype),
            });
        }
        hidden.push((
            v,
            format!("teacher_layer.{i}"),
            Facts { dtype: f.dtype, shape: f.shape.clone(), ..Facts::default() },
        ));
    }
    let mut outputs = Vec::new();
    model.graph.edit(|p| -> Result<(), AutodiffError> {
        let pos_facts = Facts::new(DType::I64, vec![Dim::Sym("batch".into())]);
        let logit_facts = Facts::new(DType::F32, vec![Dim::Sym("batch".into()), Dim::Sym("sequence".into())]);
        let sp = p.add_input("start_positions", pos_facts.clone());
        let ep = p.add_input("end_positions", pos_facts);
        let teachers = match spec.loss {
            LossSpec::Distill { .. } => Some((
                p.add_input("teacher_start_logits", logit_facts.clone()),
                p.add_input("teacher_end_logits", logit_facts),
            )),
            LossSpec::Span => None,
        };
        let hidden: Vec<(ValueId, ValueId)> =
            hidden.iter().map(|(v, name, facts)| (*v, p.add_input(name, facts.clone()))).collect();
        let mut b = Gradient::new(p, opset);
        b.set_scope("loss".into());
        let ce_s = cross_entropy(&mut b, start, sp);
        let ce_e = cross_entropy(&mut b, end, ep);
        let sum = b.add(ce_s, ce_e);
        let span = b.scale(sum, 0.5, DType::F32);
        let mut named = vec![];
        let mut total = match (spec.loss.clone(), teachers) {
            (LossSpec::Distill { temperature, hardness }, Some((ts, te))) => {
                let kl_s = distill_head(&mut b, start, ts, temperature as f64);
                let kl_e = distill_head(&mut b, end, te, temperature as f64);
                let sum = b.add(kl_s, kl_e);
                let distill = b.scale(sum, 0.5, DType::F32);
                let hd = b.scale(distill, hardness as f64, DType::F32);
                let sp = b.scale(span, 1.0 - hardness as f64, DType::F32);
                named.push((span, "loss_span"));
                named.push((distill, "loss_distill"));
                b.add(hd, sp)
            }
            _ => {
                if spec.layers.is_some() {
                    named.push((span, "loss_span"));
                }
                span
            }
        };
        if let Some(l) = &spec.layers {
            let mut layer = None;
            for &(s, t) in &hidden {
                let term = layer_term(&mut b, s, t, l.normalize, l.epsilon as f64);
                layer = Some(match layer {
                    Some(acc) => b.add(acc, term),
                    None => term,
                });
            }
            if let Some(layer) = layer {
                let gained = b.scale(layer, l.gain as f64, DType::F32);
                total = b.add(total, gained);
                named.push((layer, "loss_layer"));
            }
        }
        named.insert(0, (total, "loss"));
        for (v, name) in named {
            let spec = NodeSpec::new("Identity", format!("loss/{name}"), &[v]);
            let (_, outs) = b.patch().add_node(spec, &[(name, Facts::new(DType::F32, vec![]))]);
            b.patch().add_output(outs[0]);
            outputs.push(outs[0]);
        }
        Ok(())
    })?;
    let g = &model.graph;
    let input_names =
        ["start_positions", "end_positions", "teacher_start_logits", "teacher_end_logits", "teacher_layer."];
    let inputs: Vec<String> = g
        .inputs()
        .iter()
        .map(|&v| g.value(v).name.clone())
        .filter(|n| input_names.iter().any(|k| n.starts_with(k)))
        .collect();
    let outputs = outputs.into_iter().map(|v: ValueId| g.value(v).name.clone()).collect();
    Ok((inputs, outputs))
}

/// SparseML's per-layer term: `mean((s - t)^2)`, over `mean(t^2) + epsilon` when `normalize`.
fn layer_term(b: &mut Gradient, student: ValueId, teacher: ValueId, normalize: bool, epsilon: f64) -> ValueId {
    let mean = |b: &mut Gradient, x: ValueId| {
        let sum = b.reduce("ReduceSum", x, None, false);
        let size = b.op("Size", &[x], vec![]);
        let size = b.cast(size, DType::F32);
        b.div(sum, size)
    };
    let d = b.sub(student, teacher);
    let sq = b.mul(d, d);
    let mse = mean(b, sq);
    if !normalize {
        return mse;
    }
    let tt = b.mul(teacher, teacher);
    let mag = mean(b, tt);
    let eps = b.scalar(epsilon, DType::F32);
    let den = b.add(mag, eps);
    b.div(mse, den)
}

/// HF cross-entropy of `[batch, seq]` logits against `[batch]` positions, clamped to `[0, seq]`
/// with `seq` ignored; the mean over the rows not ignored (0 when every row is ignored).
fn cross_entropy(b: &mut Gradient, logits: ValueId, positions: ValueId) -> ValueId {
    let seq = b.dim_of(logits, 1);
    let zero = b.ints(&[0]);
    let lo = b.op("Max", &[positions, zero], vec![]);
    let clamped = b.op("Min", &[lo, seq], vec![]);
    let valid = b.op("Less", &[clamped, seq], vec![]);
    let safe = b.where_(valid, clamped, zero);
    let idx = b.unsqueeze(safe, &[1]);
    let logp = b.op("LogSoftmax", &[logits], vec![Attribute::int("axis", 1)]);
    let picked = b.op("GatherElements", &[logp, idx], vec![Attribute::int("axis", 1)]);
    let picked = b.squeeze(picked, &[1]);
    let weight = b.cast(valid, DType::F32);
    let nll = b.mul(picked, weight);
    let nll = b.neg(nll);
    let total = b.reduce("ReduceSum", nll, None, false);
    let count = b.reduce("ReduceSum", weight, None, false);
    let one = b.scalar(1.0, DType::F32);
    let count = b.op("Max", &[count, one], vec![]);
    b.div(total, count)
}

/// SparseML's head loss: `kl_div(log_softmax(s/T), log_softmax(t/T), log_target, sum) * T^2 / rows`.
fn distill_head(b: &mut Gradient, student: ValueId, teacher: ValueId, temperature: f64) -> ValueId {
    let t = b.scalar(temperature, DType::F32);
    let s_t = b.div(student, t);
    let t_t = b.div(teacher, t);
    let ls = b.op("LogSoftmax", &[s_t], vec![Attribute::int("axis", -1)]);
    let lt = b.op("LogSoftmax", &[t_t], vec![Attribute::int("axis", -1)]);
    let pt = b.op("Exp", &[lt], vec![]);
    let diff = b.sub(lt, ls);
    let terms = b.mul(pt, diff);
    let kl = b.reduce("ReduceSum", terms, None, false);
    let size = b.op("Size", &[student], vec![]);
    let shape = b.op("Shape", &[student], vec![Attribute::int("start", -1)]);
    let last = b.squeeze(shape, &[0]);
    let rows = b.div(size, last);
    let rows = b.cast(rows, DType::F32);
    let scaled = b.scale(kl, temperature * temperature, DType::F32);
    b.div(scaled, rows)
}

/// The embedding rows PyTorch keeps at zero gradient (`nn.Embedding(padding_idx=...)`), from a
/// Hugging Face `config.json`: the word embeddings' `pad_token_id` row for every model, and the
/// position embeddings' too for RoBERTa-style models. Returns `(PyTorch parameter name, row)`
/// for the parameters among `params`, for [`TrainingGraphSpec::zero_grad_rows`].
pub fn hf_padding_rows<'a>(config: &serde_json::Value, params: impl Iterator<Item = &'a str>) -> Vec<(String, i64)> {
    let Some(pad) = config.get("pad_token_id").and_then(serde_json::Value::as_i64) else {
        return Vec::new();
    };
    let model_type = config.get("model_type").and_then(serde_json::Value::as_str).unwrap_or("");
    let padded_positions = matches!(model_type, "roberta" | "xlm-roberta" | "camembert");
    params
        .filter(|p| {
            p.ends_with("embeddings.word_embeddings.weight")
                || padded_positions && p.ends_with("embeddings.position_embeddings.weight")
        })
        .map(|p| (p.to_string(), pad))
        .collect()
}
