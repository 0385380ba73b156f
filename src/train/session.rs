//! A training run over a `sparsec compile` output: the recipe's schedule (learning rate, gradual
//! magnitude pruning, constant pruning, QAT with observers, distillation from a teacher run on
//! ONNX Runtime) applied step by step to the forward+backward graph, with atomic checkpoints,
//! exact resume, per-epoch evaluation, and a final trained folder whose `model.onnx` has the
//! trained weights, masks and quantization parameters bound in.
//!
//! A run is a [`Session`] advanced one step at a time through named phases (mask update, QAT
//! switch, optimisation step, evaluation, checkpoint); the mask-update phase hands each pruning
//! modifier's layers to its [`Pruner`] with the [`Evidence`] it asks for.
//!
//! Sits on top of `autodiff` (the training graph), `runtime` (ORT) and `qa` (features, metric);
//! `cli/train.rs` is its front end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, NamedTensor};
use super::data::{check_answers, epoch_order, grouped_epoch_order, train_windows, BatchLayout};
use super::evidence::{ModelState, TaskGradients};
use super::observers::{MinMaxObserver, AVERAGING_CONSTANT};
use super::optim::AdamWConfig;
use super::prune::{mask_sparsity, Evidence, Layer, PruneReport, Pruner};
use super::step::{linear_warmup_decay, Stepper};
use crate::autodiff::build_training_graph;
use crate::compile::loss::Loss;
use crate::compile::Compiled;
use crate::ir::{infer, modules, Model, Tensor};
use crate::passes::{BindInputs, LowerFakeQuant, Pass, RemoveDead, QUANT_ENABLED_INPUT};
use crate::qa::features::TrainWindow;
use crate::qa::metric::{evaluate_v1, Scored, V1Result};
use crate::qa::{squad, DecodeOptions, Decoder, QaPipeline, QaRequest, QaTokenizer, WindowOptions};
use crate::recipe::schedule::Schedule;
use crate::recipe::{Modifier, PruningAlgorithm, Recipe};
use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor, WithInputs};

/// Where the teacher logits for distillation come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Teacher {
    /// The model `sparsec compile` started from (recorded in plan.json).
    Original,
    /// No distillation: the span loss alone, even if the recipe has a DistillationModifier.
    Disabled,
    Path(PathBuf),
}

/// Everything a run needs besides the compiled folder.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub compiled: PathBuf,
    pub train_file: PathBuf,
    pub eval_file: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Peak learning rate when the recipe sets none (linear warmup/decay as the HF Trainer).
    pub learning_rate: f32,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub pad_to_max_length: bool,
    /// Batches of windows of similar length ([`grouped_epoch_order`]; HF `group_by_length`).
    pub group_by_length: bool,
    pub teacher: Teacher,
    pub seed: u64,
    pub threads: Option<usize>,
    /// ONNX Runtime's allocation for the training and teacher sessions (and one-shot's); evaluation keeps the default.
    pub ort_memory: runtime::OrtMemory,
    pub max_train_samples: Option<usize>,
    /// Fail (instead of warning) when a training answer does not match its context.
    pub strict_data: bool,
    pub max_eval_samples: Option<usize>,
    pub recipe_args: serde_json::Map<String, serde_json::Value>,
    pub resume: bool,
    /// Checkpoint every N steps as well as at each epoch end.
    pub save_steps: Option<u64>,
    /// Newest checkpoints kept.
    pub save_total_limit: usize,
    /// Instead of training, apply the final sparsity and calibrate on this many training windows.
    pub one_shot: Option<usize>,
    /// When given, must equal the recipe's epochs.
    pub num_train_epochs: Option<f64>,
    /// Stop after this many steps (the schedule still spans the recipe's epochs).
    pub max_steps: Option<u64>,
    /// Largest state (Fisher inverses, Hessians) a pruner may build, in bytes.
    pub prune_memory_limit: u64,
    /// SIGINT / SIGTERM stop the run after the current step with a checkpoint
    /// ([`super::interrupt`]) instead of ending the process.
    pub stop_on_signals: bool,
}

/// The default of [`TrainConfig::prune_memory_limit`]: 4 GiB.
pub const DEFAULT_PRUNE_MEMORY_LIMIT: u64 = 4 << 30;

/// One step of the JSON log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: f64,
    pub loss: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_span: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_distill: Option<f32>,
    /// Hidden-state distillation (before `gain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_layer: Option<f32>,
    pub lr: f32,
    pub grad_norm: f32,
    /// Zeros in the masks over all masked weights.
    pub sparsity: f64,
    pub qat: bool,
    pub samples_per_second: f64,
    /// Wall time of this step (batch preparation, teacher, forward, backward, update).
    #[serde(default)]
    pub step_seconds: f64,
    /// Length the step's batch was padded to.
    #[serde(default)]
    pub seq_len: usize,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub output_dir: String,
    pub train_examples: usize,
    pub train_windows: usize,
    pub steps: u64,
    pub steps_per_epoch: u64,
    pub epochs: f64,
    pub samples_seen: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub final_loss: Option<f32>,
    /// Zeros per masked parameter and over all of them.
    pub sparsity: BTreeMap<String, f64>,
    pub overall_sparsity: f64,
    pub quantized: bool,
    pub distillation: bool,
    pub one_shot: bool,
    pub evals: Vec<EvalRecord>,
    pub resumed_from_step: Option<u64>,
    /// What each pruning update that used evidence (gradients, activations) did, in this
    /// process (a resumed run lists only the updates after the resume).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruning: Vec<PruneReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub epoch: f64,
    pub step: u64,
    pub questions: usize,
    pub exact_match: f64,
    pub f1: f64,
}

/// One mask fed to the graph.
#[derive(Clone, Debug)]
pub(super) struct MaskSlot {
    /// Recipe modifier index (pruning, constant pruning or SparseGPT).
    pub modifier: usize,
    pub param: String,
    pub initializer: String,
    pub input: String,
    pub shape: Vec<usize>,
    pub input_axis: usize,
    pub init: f64,
    pub fin: f64,
    pub data: Vec<f32>,
}

/// One activation fake-quant site.
#[derive(Clone, Debug)]
pub(super) struct QuantSite {
    pub base: String,
    pub observer: MinMaxObserver,
    /// The latest batch range, used to start the observer when QAT begins.
    pub last: Option<(f32, f32)>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    steps_per_epoch: u64,
    total_steps: u64,
    adam_step: u64,
    samples_seen: u64,
    qat_started: bool,
    fingerprint: serde_json::Value,
    evals: Vec<EvalRecord>,
}

fn f32_tensor(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data"))
}

fn scalar_f32(v: f32) -> HostTensor {
    HostTensor::F32(ArrayD::from_elem(IxDyn(&[]), v))
}

/// Trainer state that the schedule mutates.
pub(super) struct Run<'a> {
    compiled: &'a Compiled,
    pub masks: Vec<MaskSlot>,
    pub sites: Vec<QuantSite>,
    symmetric_acts: bool,
    pub qat_started: bool,
}

impl<'a> Run<'a> {
    pub fn new(compiled: &'a Compiled) -> Result<Run<'a>> {
        let mut masks = Vec::new();
        for m in &compiled.plan.modifiers {
            let entry = compiled.recipe.modifiers.get(m.index).context("plan.json does not match recipe.yaml")?;
            if !matches!(entry.modifier, Modifier::Pruning(_) | Modifier::ConstantPruning(_) | Modifier::SparseGpt(_)) {
                continue;
            }
            for t in &m.targets {
                let Some(input) = &t.mask_input else { continue };
                if t.shape.len() != 2 {
                    bail!("mask target '{}' has shape {:?}; only 2-D weights are pruned", t.param, t.shape);
                }
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                masks.push(MaskSlot {
                    modifier: m.index,
                    param: t.param.clone(),
                    initializer: t.initializer.clone(),
                    input: input.clone(),
                    input_axis: if t.transposed { 0 } else { 1 },
                    init: t.init_sparsity.unwrap_or(0.0),
                    fin: t.final_sparsity.unwrap_or(0.0),
                    data: vec![1.0; shape.iter().product()],
                    shape,
                });
            }
        }
        let sites = compiled
            .plan
            .graph_inputs
            .iter()
            .filter_map(|n| n.strip_suffix(".scale").filter(|b| b.ends_with(".input_quant")))
            .map(|b| QuantSite { base: b.to_string(), observer: MinMaxObserver::default(), last: None })
            .collect();
        let symmetric_acts = compiled.recipe.modifiers.iter().any(|e| match &e.modifier {
            Modifier::Quantization(q) => q.input_activations.as_ref().is_some_and(|a| a.symmetric),
            _ => false,
        });
        Ok(Run { compiled, masks, sites, symmetric_acts, qat_started: false })
    }

    pub fn has_quant(&self) -> bool {
        self.compiled.model.graph.value_by_name(QUANT_ENABLED_INPUT).is_some()
    }

    /// Masks, quantization parameters and the QAT switch, as graph inputs.
    pub fn bound_inputs(&self, quant_on: bool) -> Vec<(String, HostTensor)> {
        let mut out = self.mask_inputs();
        out.extend(self.quant_inputs(quant_on));
        out
    }

    pub fn mask_inputs(&self) -> Vec<(String, HostTensor)> {
        self.masks.iter().map(|m| (m.input.clone(), f32_tensor(&m.shape, m.data.clone()))).collect()
    }

    /// Activation scales and zero points from the observers, and the QAT switch.
    pub fn quant_inputs(&self, quant_on: bool) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        for s in &self.sites {
            let (scale, zp) = s.observer.qparams(self.symmetric_acts);
            out.push((format!("{}.scale", s.base), scalar_f32(scale)));
            let zp = if self.symmetric_acts {
                HostTensor::I8(ArrayD::from_elem(IxDyn(&[]), zp as i8))
            } else {
                HostTensor::U8(ArrayD::from_elem(IxDyn(&[]), zp as u8))
            };
            out.push((format!("{}.zero_point", s.base), zp));
        }
        if self.has_quant() {
            out.push((QUANT_ENABLED_INPUT.into(), HostTensor::Bool(ArrayD::from_elem(IxDyn(&[]), quant_on))));
        }
        out
    }

    /// The masked parameters of each modifier, in mask order.
    pub fn slot_params(&self) -> BTreeMap<usize, Vec<String>> {
        let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for m in &self.masks {
            out.entry(m.modifier).or_default().push(m.param.clone());
        }
        out
    }

    /// Modifier `modifier`'s layers with their current weights (from `weights`) and masks, at
    /// `sparsity(slot)`.
    pub fn layers(
        &self,
        modifier: usize,
        weights: &dyn Fn(&str) -> Vec<f32>,
        sparsity: &dyn Fn(&MaskSlot) -> f64,
    ) -> Vec<Layer> {
        self.masks
            .iter()
            .filter(|m| m.modifier == modifier)
            .map(|m| Layer {
                param: m.param.clone(),
                initializer: m.initializer.clone(),
                rows: m.shape[0],
                cols: m.shape[1],
                input_axis: m.input_axis,
                weight: weights(&m.initializer),
                mask: m.data.clone(),
                sparsity: sparsity(m),
            })
            .collect()
    }

    /// Takes back a pruner's masks, and its weights into `params` (graph input, data).
    pub fn store_layers<P: ParamData>(&mut self, layers: Vec<Layer>, params: &mut [P]) {
        for l in layers {
            if let Some(p) = params.iter_mut().find(|p| p.input_name() == l.initializer) {
                *p.data_mut() = l.weight;
            }
            if let Some(m) = self.masks.iter_mut().find(|m| m.initializer == l.initializer) {
                m.data = l.mask;
            }
        }
    }

    pub fn sparsity(&self) -> (BTreeMap<String, f64>, f64) {
        let per = self.masks.iter().map(|m| (m.param.clone(), mask_sparsity(&m.data))).collect();
        let zeros: usize = self.masks.iter().map(|m| m.data.iter().filter(|&&x| x == 0.0).count()).sum();
        let total: usize = self.masks.iter().map(|m| m.data.len()).sum();
        (per, if total == 0 { 0.0 } else { zeros as f64 / total as f64 })
    }
}

/// A parameter held by the trainer: its graph input and data.
pub(super) trait ParamData {
    fn input_name(&self) -> &str;
    fn data_mut(&mut self) -> &mut Vec<f32>;
}

impl ParamData for super::step::Param {
    fn input_name(&self) -> &str {
        &self.input
    }
    fn data_mut(&mut self) -> &mut Vec<f32> {
        &mut self.data
    }
}

impl ParamData for (String, Vec<usize>, Vec<f32>) {
    fn input_name(&self) -> &str {
        &self.0
    }
    fn data_mut(&mut self) -> &mut Vec<f32> {
        &mut self.2
    }
}

/// Mask updates of a run: step → (modifier, epoch at the update) in recipe order.
fn mask_schedule(recipe: &Recipe, spe: u64, total: u64) -> BTreeMap<u64, Vec<(usize, f64, bool)>> {
    let mut out: BTreeMap<u64, Vec<(usize, f64, bool)>> = BTreeMap::new();
    for (i, e) in recipe.modifiers.iter().enumerate() {
        match &e.modifier {
            Modifier::Pruning(p) => {
                for u in p.mask_updates(spe, total, 0.0, 1.0) {
                    out.entry(u.step).or_default().push((i, u.epoch, false));
                }
                if !p.leave_enabled && p.end_epoch >= 0.0 {
                    let end = (p.end_epoch * spe as f64).ceil() as u64 + 1;
                    if end < total {
                        out.entry(end).or_default().push((i, p.end_epoch, true));
                    }
                }
            }
            Modifier::ConstantPruning(c) => {
                let start = (c.start_epoch.max(0.0) * spe as f64).ceil() as u64;
                out.entry(start.min(total.saturating_sub(1))).or_default().push((i, c.start_epoch, false));
            }
            _ => {}
        }
    }
    out
}

/// Runs the training graph's inference half (the compiled model) with bound inputs.
pub(super) fn eval_backend(
    compiled: &Compiled,
    bound: Vec<(String, HostTensor)>,
    threads: Option<usize>,
) -> Result<WithInputs> {
    let bytes = crate::onnx::encode_model(&compiled.model);
    let backend = runtime::load_bytes(&bytes, EngineKind::Ort, &EngineOptions { threads, ..Default::default() })
        .context("cannot load the compiled model for evaluation")?;
    Ok(WithInputs::new(backend, bound))
}

/// SQuAD v1.1 EM/F1 of `backend` on `examples`.
pub(super) fn evaluate(
    backend: Box<dyn Backend>,
    tokenizer: QaTokenizer,
    cfg: &TrainConfig,
    examples: &[squad::Example],
) -> Result<V1Result> {
    let mut pipeline = QaPipeline::new(backend, tokenizer)?;
    let windower = pipeline.windower(WindowOptions {
        max_seq_len: cfg.max_seq_length,
        doc_stride: cfg.doc_stride,
        max_question_len: 64,
    })?;
    let opts = DecodeOptions {
        top_k: 1,
        max_answer_len: 30,
        handle_impossible_answer: false,
        align_to_words: true,
        n_best: 20,
        null_score_diff_threshold: 0.0,
    };
    let reqs: Vec<QaRequest> =
        examples.iter().map(|e| QaRequest { question: e.question.clone(), context: e.context.clone() }).collect();
    let results = pipeline.answer(&windower, &reqs, cfg.eval_batch_size, Decoder::Squad, &opts, |_| {})?;
    let mut preds = Vec::with_capacity(examples.len());
    for (e, r) in examples.iter().zip(results) {
        let r = r.with_context(|| format!("eval question '{}'", e.id))?;
        preds.push(r.answers.first().map(|a| a.answer.clone()).unwrap_or_default());
    }
    let refs: Vec<Vec<String>> = examples.iter().map(|e| e.answers.iter().map(|a| a.text.clone()).collect()).collect();
    let scored: Vec<Scored> = examples
        .iter()
        .zip(&refs)
        .zip(&preds)
        .map(|((e, r), p)| Scored { id: &e.id, references: r, prediction: Some(p) })
        .collect();
    Ok(evaluate_v1(&scored))
}

/// Callbacks for progress display.
pub trait Progress {
    fn start(&mut self, total_steps: u64, first_step: u64);
    fn step(&mut self, log: &StepLog);
    fn message(&mut self, text: &str);
    fn finish(&mut self);
}

/// Runs (or resumes) training per `cfg`; returns the summary. The trained folder is complete
/// only when this returns `Ok`.
pub fn train(cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<TrainSummary> {
    let data = Data::load(cfg)?;
    let mut run = Run::new(&data.compiled)?;
    for w in crate::recipe::support::warnings(&data.compiled.recipe) {
        tracing::warn!("{w}");
        progress.message(&format!("warning: {w}"));
    }
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create '{}'", cfg.output_dir.display()))?;
    if let Some(n) = cfg.one_shot {
        return super::oneshot::one_shot(cfg, &data, &mut run, n, progress);
    }
    let stop = if cfg.stop_on_signals { Some(super::interrupt::StopOnSignals::new()?) } else { None };
    let mut session = Session::open(cfg, &data, run, progress)?;
    progress.start(session.total_steps, session.first_step);
    for step in session.first_step..session.total_steps {
        session.run_step(step, progress)?;
        let done = step + 1;
        if let Some(signal) = stop.as_ref().and_then(|s| s.requested()).filter(|_| done < session.total_steps) {
            let checkpoint = session.interrupt(done)?;
            progress.finish();
            return Err(super::interrupt::Interrupted { signal, step: done, checkpoint }.into());
        }
    }
    progress.finish();
    session.finish()
}

/// The compiled folder, its tokenizer, the training windows and the evaluation questions.
pub(super) struct Data {
    pub compiled: Compiled,
    pub tokenizer: QaTokenizer,
    pub examples: usize,
    pub windows: Vec<TrainWindow>,
    pub layout: BatchLayout,
    pub eval_examples: Option<Vec<squad::Example>>,
}

impl Data {
    fn load(cfg: &TrainConfig) -> Result<Data> {
        if cfg.batch_size == 0 || cfg.eval_batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        let compiled = Compiled::open(&cfg.compiled, &cfg.recipe_args)?;
        check_fixed_shape(cfg, &compiled.model)?;
        let tokenizer = QaTokenizer::from_file(&compiled.dir.join("tokenizer.json"))?;
        let windower = tokenizer.windower(WindowOptions {
            max_seq_len: cfg.max_seq_length,
            doc_stride: cfg.doc_stride,
            max_question_len: 64,
        })?;
        let mut examples = squad::load(&cfg.train_file)?;
        if let Some(n) = cfg.max_train_samples {
            examples.truncate(n);
        }
        if examples.is_empty() {
            bail!("'{}' has no training questions", cfg.train_file.display());
        }
        check_training_answers(cfg, &examples)?;
        let started = Instant::now();
        let windows = train_windows(&examples, &windower)?;
        tracing::info!(
            examples = examples.len(),
            windows = windows.len(),
            seconds = started.elapsed().as_secs_f64(),
            "training features"
        );
        let eval_examples = match &cfg.eval_file {
            Some(p) => {
                let mut ex = squad::load(p)?;
                if let Some(n) = cfg.max_eval_samples {
                    ex.truncate(n);
                }
                Some(ex)
            }
            None => None,
        };
        let g = &compiled.model.graph;
        let inputs: Vec<String> = g.runtime_inputs().map(|v| g.value(v).name.clone()).collect();
        let layout = BatchLayout {
            pad_id: tokenizer.pad_id,
            token_type_ids: inputs.iter().any(|n| n == "token_type_ids"),
            attention_mask: inputs.iter().any(|n| n == "attention_mask"),
            pad_to: cfg.pad_to_max_length.then_some(cfg.max_seq_length),
        };
        Ok(Data { examples: examples.len(), compiled, tokenizer, windows, layout, eval_examples })
    }

    /// `zero_grad_rows` from config.json (embedding rows HF keeps at zero gradient).
    pub fn zero_grad_rows(&self) -> Result<Vec<(String, i64)>> {
        crate::compile::loss::padding_rows(&self.compiled.dir, &self.compiled.model.graph)
    }
}

/// The two training graphs: with fake quantization, and (when the recipe quantizes) without it
/// for the steps before QAT.
struct Graphs {
    qat: crate::autodiff::TrainingGraph,
    float: Option<crate::autodiff::TrainingGraph>,
    on_qat: bool,
}

/// State of a training run, advanced one step at a time through named phases:
/// [`Session::mask_update`], [`Session::qat_switch`], [`Session::train_step`],
/// [`Session::evaluate`], [`Session::checkpoint`].
struct Session<'d> {
    cfg: &'d TrainConfig,
    data: &'d Data,
    run: Run<'d>,
    schedule: Schedule<'d>,
    epochs: f64,
    spe: u64,
    schedule_steps: u64,
    total_steps: u64,
    first_step: u64,
    graphs: Graphs,
    opts: EngineOptions,
    stepper: Stepper,
    loss_parts: Vec<String>,
    teacher: Option<TeacherModel>,
    distill: bool,
    pruners: BTreeMap<usize, Box<dyn Pruner>>,
    updates: BTreeMap<u64, Vec<(usize, f64, bool)>>,
    fingerprint: serde_json::Value,
    ckpt_dir: PathBuf,
    log: Option<std::fs::File>,
    abort_at: Option<u64>,
    /// The step of the newest checkpoint this process wrote.
    checkpointed: Option<u64>,
    samples_seen: u64,
    evals: Vec<EvalRecord>,
    resumed_from: Option<u64>,
    sparsity_now: f64,
    last_loss: Option<f32>,
    order: Vec<usize>,
    order_epoch: u64,
    since: (Instant, u64),
    started: Instant,
    pruning: Vec<PruneReport>,
    events: Option<super::tensorboard::TrainEvents>,
}

/// What the QAT phase decided for one step.
#[derive(Clone, Copy)]
struct QatStep {
    on: bool,
    observers_frozen: bool,
}

impl<'d> Session<'d> {
    /// Builds the training graphs, the stepper, the teacher and the pruners, and restores the
    /// newest checkpoint with `--resume`.
    fn open(cfg: &'d TrainConfig, data: &'d Data, run: Run<'d>, progress: &mut dyn Progress) -> Result<Session<'d>> {
        let compiled = &data.compiled;
        let pruners =
            super::prune::select::pruners(&compiled.recipe, &run.slot_params(), cfg.prune_memory_limit, false)?;
        let schedule = Schedule::new(&compiled.recipe);
        let epochs = schedule.total_epochs();
        if epochs <= 0.0 {
            bail!("the recipe sets no epochs (add an EpochRangeModifier or pass --recipe-args)");
        }
        if let Some(n) = cfg.num_train_epochs {
            if (n - epochs).abs() > 1e-9 {
                bail!(
                    "--num-train-epochs {n} differs from the recipe's {epochs} epochs: the recipe sets the schedule; \
                     change it with --recipe-args (e.g. '{{\"num_epochs\": {n}}}')"
                );
            }
        }
        let spe = data.windows.len().div_ceil(cfg.batch_size) as u64;
        let schedule_steps = (epochs * spe as f64).ceil() as u64;
        let total_steps = cfg.max_steps.map_or(schedule_steps, |m| m.min(schedule_steps));
        let loss =
            Loss::of(&compiled.recipe, &compiled.model.graph, cfg.teacher != Teacher::Disabled, data.zero_grad_rows()?);
        let spec = &loss.spec;
        let teacher_modules = &loss.teacher_modules;
        let qat = build_training_graph(&compiled.model, spec).context("cannot build the training graph")?;
        let float = match run.has_quant() {
            true => Some(
                build_training_graph(&without_fake_quant(&compiled.model)?, spec)
                    .context("cannot build the training graph without fake quantization")?,
            ),
            false => None,
        };
        let weight_decay = compiled
            .recipe
            .modifiers
            .iter()
            .find_map(|e| match &e.modifier {
                Modifier::SetWeightDecay(w) => Some(w.weight_decay as f32),
                _ => None,
            })
            .unwrap_or(cfg.weight_decay);
        let opts = EngineOptions { threads: cfg.threads, memory: cfg.ort_memory, ..Default::default() };
        let adamw = AdamWConfig { weight_decay, ..AdamWConfig::default() };
        let mut stepper = Stepper::new(float.as_ref().unwrap_or(&qat), EngineKind::Ort, &opts, adamw)?;
        let graphs = Graphs { on_qat: float.is_none(), qat, float };
        let loss_parts: Vec<String> = graphs.qat.loss_outputs.iter().skip(1).cloned().collect();
        stepper.watch = loss_parts.clone();
        for s in &run.sites {
            stepper.watch.push(format!("{}.min", s.base));
            stepper.watch.push(format!("{}.max", s.base));
        }
        let teacher = match (loss.needs_teacher(), &cfg.teacher) {
            (false, _) => None,
            (true, Teacher::Path(p)) => Some(load_teacher(p, &opts, teacher_modules)?),
            (true, _) => {
                let original = PathBuf::from(&compiled.plan.model);
                if !original.exists() {
                    bail!(
                        "the recipe distills from a teacher, and the model compile started from ('{}') is gone: pass \
                         --distill-teacher PATH or --distill-teacher disable",
                        original.display()
                    );
                }
                Some(load_teacher(&original, &opts, teacher_modules)?)
            }
        };
        let mut fingerprint = serde_json::json!({
            "compiled": std::fs::canonicalize(&cfg.compiled).unwrap_or(cfg.compiled.clone()),
            "train_file": cfg.train_file,
            "windows": data.windows.len(),
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "max_seq_length": cfg.max_seq_length,
            "doc_stride": cfg.doc_stride,
            "distillation": loss.distill,
            "total_steps": total_steps,
        });
        if cfg.group_by_length {
            fingerprint["group_by_length"] = true.into();
        }
        if let Some(l) = &spec.layers {
            fingerprint["layer_distillation"] = serde_json::json!({"student": l.modules, "teacher": teacher_modules});
        }
        let updates = mask_schedule(&compiled.recipe, spe, schedule_steps);
        let ckpt_dir = cfg.output_dir.join("checkpoints");
        let log_path = cfg.output_dir.join("train_log.jsonl");
        let mut s = Session {
            cfg,
            data,
            run,
            schedule,
            epochs,
            spe,
            schedule_steps,
            total_steps,
            first_step: 0,
            graphs,
            opts,
            stepper,
            loss_parts,
            teacher,
            distill: loss.distill,
            pruners,
            updates,
            fingerprint,
            ckpt_dir,
            log: None,
            abort_at: std::env::var("SPARSEC_ABORT_AFTER_STEP").ok().and_then(|s| s.parse().ok()),
            checkpointed: None,
            samples_seen: 0,
            evals: Vec::new(),
            resumed_from: None,
            sparsity_now: 0.0,
            last_loss: None,
            order: Vec::new(),
            order_epoch: u64::MAX,
            since: (Instant::now(), 0),
            started: Instant::now(),
            pruning: Vec::new(),
            events: None,
        };
        if cfg.resume {
            s.resume(&log_path, progress)?;
        }
        if s.first_step == 0 {
            std::fs::write(&log_path, b"").with_context(|| format!("cannot write '{}'", log_path.display()))?;
        }
        s.log = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot write '{}'", log_path.display()))?,
        );
        let kept = super::tensorboard::read_log(&log_path);
        s.events = Some(super::tensorboard::TrainEvents::open(&cfg.output_dir, &kept, &s.evals)?);
        for (name, value) in s.run.mask_inputs() {
            s.stepper.set_fixed(&name, value);
        }
        s.sparsity_now = s.run.sparsity().1;
        s.started = Instant::now();
        s.since = (Instant::now(), 0);
        Ok(s)
    }

    fn resume(&mut self, log_path: &Path, progress: &mut dyn Progress) -> Result<()> {
        let Some(path) = latest_checkpoint(&self.ckpt_dir)? else {
            progress.message("no checkpoint to resume from: starting from scratch");
            return Ok(());
        };
        let (tensors, state): (BTreeMap<String, NamedTensor>, CheckpointState) = checkpoint::load(&path)?;
        if state.fingerprint != self.fingerprint {
            bail!(
                "checkpoint '{}' was made with different settings ({}); now {}",
                path.display(),
                state.fingerprint,
                self.fingerprint
            );
        }
        restore(&mut self.stepper, &mut self.run, &tensors)
            .with_context(|| format!("checkpoint '{}'", path.display()))?;
        for (i, p) in self.pruners.iter_mut() {
            let prefix = format!("pruner/{i}/");
            let state: Vec<(String, Vec<f32>)> = tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.data.clone())))
                .collect();
            p.restore_state(state).with_context(|| format!("checkpoint '{}'", path.display()))?;
        }
        self.stepper.optimizer.step = state.adam_step;
        self.run.qat_started = state.qat_started;
        self.first_step = state.step;
        self.samples_seen = state.samples_seen;
        self.evals = state.evals;
        self.resumed_from = Some(self.first_step);
        truncate_log(log_path, self.first_step)?;
        progress.message(&format!("resumed from '{}' at step {}", path.display(), self.first_step));
        Ok(())
    }

    /// One step: every phase in order.
    fn run_step(&mut self, step: u64, progress: &mut dyn Progress) -> Result<()> {
        let step_started = Instant::now();
        let epoch_idx = step / self.spe;
        if self.order_epoch != epoch_idx {
            let windows = &self.data.windows;
            self.order = if self.cfg.group_by_length {
                let lengths: Vec<usize> = windows.iter().map(|w| w.window.len()).collect();
                grouped_epoch_order(&lengths, self.cfg.batch_size, self.cfg.seed, epoch_idx)
            } else {
                epoch_order(windows.len(), self.cfg.seed, epoch_idx)
            };
            self.order_epoch = epoch_idx;
        }
        self.mask_update(step, progress)?;
        let qat = self.qat_switch(step)?;
        let entry = self.train_step(step, qat, step_started)?;
        progress.step(&entry);
        let done = step + 1;
        let epoch_end = done.is_multiple_of(self.spe) || done == self.total_steps;
        if epoch_end {
            self.evaluate(done, qat.on, progress)?;
        }
        if epoch_end || self.cfg.save_steps.is_some_and(|n| n > 0 && done.is_multiple_of(n)) {
            self.checkpoint(done)?;
        }
        if self.abort_at == Some(done) {
            if let Some(l) = self.log.as_mut() {
                l.flush().ok();
            }
            std::process::abort();
        }
        Ok(())
    }

    /// Mask-update phase: the modifiers scheduled at `step` re-prune their layers through their
    /// [`Pruner`] (which may ask for gradients), or stop masking (`leave_enabled: false`).
    fn mask_update(&mut self, step: u64, progress: &mut dyn Progress) -> Result<()> {
        let Some(ups) = self.updates.get(&step).cloned() else { return Ok(()) };
        for (modifier, at, disable) in ups {
            if disable {
                for m in self.run.masks.iter_mut().filter(|m| m.modifier == modifier) {
                    m.data.iter_mut().for_each(|x| *x = 1.0);
                }
                continue;
            }
            let recipe = &self.data.compiled.recipe;
            let sparsity = |m: &MaskSlot| match &recipe.modifiers[m.modifier].modifier {
                Modifier::Pruning(p) => p.sparsity_at_update(at, m.init, m.fin),
                _ => 0.0,
            };
            let params = &self.stepper.params;
            let weights = |init: &str| -> Vec<f32> {
                params.iter().find(|p| p.input == init).map(|p| p.data.clone()).unwrap_or_default()
            };
            let mut layers = self.run.layers(modifier, &weights, &sparsity);
            let pruner = self.pruners.get_mut(&modifier).context("no pruner for a scheduled modifier")?;
            let report = if pruner.needs_gradients() {
                let state = ModelState {
                    params: params.iter().map(|p| (p.input.clone(), p.shape.clone(), p.data.clone())).collect(),
                    inputs: self.run.bound_inputs(false),
                    mask_of: self.run.masks.iter().map(|m| (m.initializer.clone(), m.input.clone())).collect(),
                };
                let model = match (&self.graphs.float, self.graphs.on_qat) {
                    (Some(_), false) => without_fake_quant(&self.data.compiled.model)?,
                    _ => self.data.compiled.model.clone(),
                };
                let batch = grad_batch_size(recipe, modifier).unwrap_or(self.cfg.batch_size);
                let mut grads = TaskGradients::new(
                    &model,
                    self.data.zero_grad_rows()?,
                    state,
                    &self.data.windows,
                    &self.data.layout,
                    batch,
                    self.cfg.seed.wrapping_add(step),
                    self.opts.clone(),
                );
                let mut evidence = Evidence { gradients: Some(&mut grads), activations: None };
                pruner.prune(&mut layers, &mut evidence)?
            } else {
                pruner.prune(&mut layers, &mut Evidence::default())?
            };
            tracing::info!(
                step,
                algorithm = report.algorithm,
                sparsity = report.sparsity,
                samples = report.samples,
                seconds = report.seconds,
                "pruned"
            );
            if report.samples > 0 {
                progress.message(&format!(
                    "step {step}: {} pruning to {:.2}% from {} gradient batches ({:.1} s, state {:.1} MB)",
                    report.algorithm,
                    report.sparsity * 100.0,
                    report.samples,
                    report.seconds,
                    report.state_bytes as f64 / 1e6
                ));
            }
            self.run.store_layers(layers, &mut self.stepper.params);
            if report.samples > 0 {
                self.pruning.push(report);
            }
        }
        apply_masks(&mut self.stepper, &self.run);
        for (name, value) in self.run.mask_inputs() {
            self.stepper.set_fixed(&name, value);
        }
        self.sparsity_now = self.run.sparsity().1;
        tracing::info!(step, sparsity = self.sparsity_now, "masks updated");
        Ok(())
    }

    /// QAT phase: starts the observers when QAT begins and swaps to the fake-quantized graph.
    fn qat_switch(&mut self, step: u64) -> Result<QatStep> {
        let epoch_f = step as f64 / self.spe as f64;
        let qstate = self.schedule.quantization(epoch_f);
        let on = qstate.is_some_and(|q| q.enabled);
        if on && !self.run.qat_started {
            for s in self.run.sites.iter_mut() {
                if let Some((lo, hi)) = s.last {
                    s.observer.observe(lo, hi, AVERAGING_CONSTANT);
                }
            }
            self.run.qat_started = true;
        }
        if let Some(ftg) = self.graphs.float.as_ref().filter(|_| on != self.graphs.on_qat) {
            self.stepper.switch_graph(if on { &self.graphs.qat } else { ftg }, EngineKind::Ort, &self.opts)?;
            self.graphs.on_qat = on;
            tracing::info!(step, qat = on, "switched the training graph");
        }
        Ok(QatStep { on, observers_frozen: qstate.is_some_and(|q| q.observers_frozen) })
    }

    /// Optimisation phase: one AdamW step on the step's batch, masks re-applied, observers fed,
    /// and the step logged.
    fn train_step(&mut self, step: u64, qat: QatStep, step_started: Instant) -> Result<StepLog> {
        let cfg = self.cfg;
        let epoch_f = step as f64 / self.spe as f64;
        let within = (step % self.spe) as usize;
        let lr = self.schedule.learning_rate(epoch_f, self.spe).map(|x| x as f32).unwrap_or_else(|| {
            linear_warmup_decay(cfg.learning_rate, step as usize, cfg.warmup_steps, self.schedule_steps as usize)
        });
        for (name, value) in self.run.quant_inputs(qat.on) {
            self.stepper.set_fixed(&name, value);
        }
        let start = within * cfg.batch_size;
        let windows = &self.data.windows;
        let rows: Vec<&TrainWindow> =
            self.order[start..(start + cfg.batch_size).min(self.order.len())].iter().map(|&i| &windows[i]).collect();
        let layout = &self.data.layout;
        let mut batch = layout.training_inputs(&rows);
        let teacher_names: Vec<String>;
        if let Some(t) = self.teacher.as_mut() {
            let model_inputs: Vec<(&str, HostTensor)> = layout.model_inputs(&rows);
            let out = t.run(&model_inputs)?;
            if self.distill {
                batch.push(("teacher_start_logits", out.start));
                batch.push(("teacher_end_logits", out.end));
            }
            teacher_names = (0..out.hidden.len()).map(|i| format!("teacher_layer.{i}")).collect();
            for (name, h) in teacher_names.iter().zip(out.hidden) {
                batch.push((name.as_str(), h));
            }
        }
        let recipe = &self.data.compiled.recipe;
        let observing: BTreeMap<usize, ()> = self
            .pruners
            .iter()
            .filter(|(&i, p)| {
                let m = &recipe.modifiers[i].modifier;
                p.observes_steps() && epoch_f >= m.start_epoch() && (m.end_epoch() < 0.0 || epoch_f < m.end_epoch())
            })
            .map(|(&i, _)| (i, ()))
            .collect();
        let stats = if observing.is_empty() {
            self.stepper.step(&batch, lr, cfg.max_grad_norm)
        } else {
            let owner: BTreeMap<&str, usize> = self
                .run
                .masks
                .iter()
                .filter(|m| observing.contains_key(&m.modifier))
                .map(|m| (m.initializer.as_str(), m.modifier))
                .collect();
            let pruners = &mut self.pruners;
            self.stepper.step_observed(&batch, lr, cfg.max_grad_norm, &mut |p, g| {
                if let Some(pr) = owner.get(p.input.as_str()).and_then(|i| pruners.get_mut(i)) {
                    pr.observe_step(&p.input, &p.data, g);
                }
            })
        }
        .with_context(|| format!("training step {step}"))?;
        apply_masks(&mut self.stepper, &self.run);
        let observed = &stats.watched[self.loss_parts.len()..];
        for (k, s) in self.run.sites.iter_mut().enumerate() {
            let (lo, hi) = (observed[2 * k], observed[2 * k + 1]);
            s.last = Some((lo, hi));
            if qat.on && !qat.observers_frozen {
                s.observer.observe(lo, hi, AVERAGING_CONSTANT);
            }
        }
        self.samples_seen += rows.len() as u64;
        self.since.1 += rows.len() as u64;
        let part = |name: &str| self.loss_parts.iter().position(|p| p == name).map(|i| stats.watched[i]);
        let entry = StepLog {
            step,
            epoch: epoch_f,
            loss: stats.loss,
            loss_span: part("loss_span"),
            loss_distill: part("loss_distill"),
            loss_layer: part("loss_layer"),
            lr,
            grad_norm: stats.grad_norm,
            sparsity: self.sparsity_now,
            qat: qat.on,
            samples_per_second: self.since.1 as f64 / self.since.0.elapsed().as_secs_f64(),
            step_seconds: step_started.elapsed().as_secs_f64(),
            seq_len: rows.iter().map(|w| w.window.len()).max().unwrap_or(0).max(layout.pad_to.unwrap_or(0)),
        };
        if self.since.0.elapsed().as_secs_f64() > 30.0 {
            self.since = (Instant::now(), 0);
        }
        let log = self.log.as_mut().context("the step log is not open")?;
        writeln!(log, "{}", serde_json::to_string(&entry)?).context("cannot append to train_log.jsonl")?;
        if let Some(t) = self.events.as_mut() {
            t.step(&entry)?;
        }
        self.last_loss = Some(stats.loss);
        Ok(entry)
    }

    /// Evaluation phase (each epoch end): EM/F1 of the current weights on the eval questions.
    fn evaluate(&mut self, done: u64, quant_on: bool, progress: &mut dyn Progress) -> Result<()> {
        let Some(ex) = &self.data.eval_examples else { return Ok(()) };
        progress.message(&format!("evaluating {} questions", ex.len()));
        let bound = eval_bindings(&self.stepper, &self.run, quant_on);
        let backend = eval_backend(&self.data.compiled, bound, self.cfg.threads)?;
        let r = evaluate(Box::new(backend), self.data.tokenizer.clone(), self.cfg, ex)?;
        let rec = EvalRecord {
            epoch: done as f64 / self.spe as f64,
            step: done,
            questions: ex.len(),
            exact_match: r.exact_match,
            f1: r.f1,
        };
        progress.message(&format!("epoch {:.2}: exact_match {:.2} f1 {:.2}", rec.epoch, rec.exact_match, rec.f1));
        tracing::info!(epoch = rec.epoch, em = rec.exact_match, f1 = rec.f1, "evaluation");
        if let Some(t) = self.events.as_mut() {
            t.eval(&rec)?;
        }
        self.evals.push(rec);
        Ok(())
    }

    /// Checkpoint phase: weights, masks, AdamW moments, observers and step, atomically.
    fn checkpoint(&mut self, done: u64) -> Result<()> {
        let state = CheckpointState {
            step: done,
            steps_per_epoch: self.spe,
            total_steps: self.total_steps,
            adam_step: self.stepper.optimizer.step,
            samples_seen: self.samples_seen,
            qat_started: self.run.qat_started,
            fingerprint: self.fingerprint.clone(),
            evals: self.evals.clone(),
        };
        let mut tensors = snapshot(&self.stepper, &self.run);
        for (i, p) in &self.pruners {
            for (name, data) in p.state() {
                tensors.push(NamedTensor { name: format!("pruner/{i}/{name}"), shape: vec![data.len()], data });
            }
        }
        checkpoint::save(&self.ckpt_dir, &format!("step-{done:09}"), &tensors, &state)?;
        self.checkpointed = Some(done);
        prune_checkpoints(&self.ckpt_dir, self.cfg.save_total_limit)
    }

    /// Stop phase: checkpoints step `done` (unless that step was just saved) and flushes the step
    /// log; returns the checkpoint's path.
    fn interrupt(&mut self, done: u64) -> Result<String> {
        if self.checkpointed != Some(done) {
            self.checkpoint(done)?;
        }
        if let Some(l) = self.log.as_mut() {
            let path = self.cfg.output_dir.join("train_log.jsonl");
            l.flush().with_context(|| format!("cannot write '{}'", path.display()))?;
        }
        Ok(self.ckpt_dir.join(format!("step-{done:09}")).display().to_string())
    }

    /// Writes the trained folder and the summary.
    fn finish(self) -> Result<TrainSummary> {
        let cfg = self.cfg;
        let seconds = self.started.elapsed().as_secs_f64();
        let quant_final = self.schedule.quantization(self.epochs).is_some_and(|q| q.enabled)
            || self.run.qat_started && self.run.has_quant();
        let bound = eval_bindings(&self.stepper, &self.run, quant_final && self.run.has_quant());
        write_trained(cfg, &self.data.compiled, bound)?;
        let (per, overall) = self.run.sparsity();
        let steps_run = self.total_steps - self.first_step;
        let summary = TrainSummary {
            output_dir: cfg.output_dir.display().to_string(),
            train_examples: self.data.examples,
            train_windows: self.data.windows.len(),
            steps: self.total_steps,
            steps_per_epoch: self.spe,
            epochs: self.epochs,
            samples_seen: self.samples_seen,
            seconds,
            samples_per_second: (steps_run as f64 * cfg.batch_size as f64).min(self.samples_seen as f64)
                / seconds.max(1e-9),
            final_loss: self.last_loss,
            sparsity: per,
            overall_sparsity: overall,
            quantized: quant_final && self.run.has_quant(),
            distillation: self.distill,
            one_shot: false,
            evals: self.evals,
            resumed_from_step: self.resumed_from,
            pruning: self.pruning,
        };
        crate::files::write_atomic(&cfg.output_dir.join("train_summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
        Ok(summary)
    }
}

/// `W ← W ⊙ M` on a one-shot's parameter list.
pub(super) fn apply_params_masks(params: &mut [(String, Vec<usize>, Vec<f32>)], run: &Run) {
    for m in &run.masks {
        if let Some(p) = params.iter_mut().find(|p| p.0 == m.initializer) {
            p.2.iter_mut().zip(&m.data).for_each(|(w, k)| *w *= k);
        }
    }
}

/// `grad_sampler_kwargs.batch_size` of an OBS modifier.
pub(super) fn grad_batch_size(recipe: &Recipe, modifier: usize) -> Option<usize> {
    match &recipe.modifiers[modifier].modifier {
        Modifier::Pruning(p) => match &p.algorithm {
            PruningAlgorithm::Obs { grad_sampler_kwargs: Some(k), .. } => {
                k.get("batch_size").and_then(|b| b.as_u64()).map(|b| b as usize)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The teacher model on ORT, with the outputs of the modules that hidden-state distillation reads.
struct TeacherModel {
    backend: Box<dyn Backend>,
    /// Output names of the distilled modules, in the recipe's order.
    hidden: Vec<String>,
}

/// What the teacher returns for one batch.
struct TeacherOutputs {
    start: HostTensor,
    end: HostTensor,
    hidden: Vec<HostTensor>,
}

fn load_teacher(path: &Path, opts: &EngineOptions, modules: &[String]) -> Result<TeacherModel> {
    let what = || format!("teacher '{}'", path.display());
    let (backend, hidden) = if modules.is_empty() {
        (runtime::load_file(path, EngineKind::Ort, opts).with_context(what)?, Vec::new())
    } else {
        let mut model = crate::onnx::load(path).with_context(what)?;
        infer::infer_facts(&mut model).with_context(what)?;
        let mut values = Vec::new();
        for m in modules {
            let v = modules::module_output(&model.graph, m).with_context(|| {
                format!("{}: no module '{m}' (PerLayerDistillationModifier teacher_layer_names)", what())
            })?;
            values.push(v);
        }
        let present: Vec<_> = model.graph.outputs().to_vec();
        model
            .graph
            .edit(|p| -> Result<(), crate::ir::IrError> {
                for &v in values.iter().filter(|v| !present.contains(v)) {
                    p.add_output(v);
                }
                Ok(())
            })
            .with_context(what)?;
        let hidden = values.iter().map(|&v| model.graph.value(v).name.clone()).collect();
        let bytes = crate::onnx::encode_model(&model);
        (runtime::load_bytes(&bytes, EngineKind::Ort, opts).with_context(what)?, hidden)
    };
    let outs = backend.output_names();
    if !outs.iter().any(|o| o == "start_logits") || !outs.iter().any(|o| o == "end_logits") {
        bail!("teacher '{}' has no start_logits/end_logits outputs (it has {outs:?})", path.display());
    }
    Ok(TeacherModel { backend, hidden })
}

impl TeacherModel {
    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<TeacherOutputs> {
        let names = self.backend.input_names().to_vec();
        let feed: Vec<(&str, HostTensor)> =
            inputs.iter().filter(|(n, _)| names.iter().any(|m| m == n)).cloned().collect();
        let out = self.backend.run(&feed).context("teacher run")?;
        let take = |n: &str| -> Result<HostTensor> {
            let i = out.iter().position(|(o, _)| o == n).with_context(|| format!("teacher has no '{n}'"))?;
            Ok(out[i].1.clone())
        };
        let hidden = self.hidden.iter().map(|n| take(n)).collect::<Result<Vec<_>>>()?;
        Ok(TeacherOutputs { start: take("start_logits")?, end: take("end_logits")?, hidden })
    }
}

/// `W ← W ⊙ M` for every masked parameter (SparseML re-applies masks after each optimizer step).
pub(super) fn apply_masks(stepper: &mut Stepper, run: &Run) {
    for m in &run.masks {
        if let Some(p) = stepper.params.iter_mut().find(|p| p.input == m.initializer) {
            p.data.iter_mut().zip(&m.data).for_each(|(w, k)| *w *= k);
        }
    }
}

/// Parameters, masks, quantization parameters and switch for the eval graph.
pub(super) fn eval_bindings(stepper: &Stepper, run: &Run, quant_on: bool) -> Vec<(String, HostTensor)> {
    let mut out: Vec<(String, HostTensor)> =
        stepper.params.iter().map(|p| (p.input.clone(), f32_tensor(&p.shape, p.data.clone()))).collect();
    out.extend(run.bound_inputs(quant_on));
    out
}

fn snapshot(stepper: &Stepper, run: &Run) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for (p, s) in stepper.params.iter().zip(&stepper.optimizer.states) {
        out.push(NamedTensor { name: format!("param/{}", p.input), shape: p.shape.clone(), data: p.data.clone() });
        out.push(NamedTensor { name: format!("adam.m/{}", p.input), shape: p.shape.clone(), data: s.exp_avg.clone() });
        out.push(NamedTensor {
            name: format!("adam.v/{}", p.input),
            shape: p.shape.clone(),
            data: s.exp_avg_sq.clone(),
        });
    }
    for m in &run.masks {
        out.push(NamedTensor { name: format!("mask/{}", m.input), shape: m.shape.clone(), data: m.data.clone() });
    }
    for s in &run.sites {
        let (lo, hi) = s.last.unwrap_or((0.0, 0.0));
        let o = &s.observer;
        out.push(NamedTensor {
            name: format!("observer/{}", s.base),
            shape: vec![6],
            data: vec![o.min, o.max, o.initialized as u8 as f32, lo, hi, s.last.is_some() as u8 as f32],
        });
    }
    out
}

/// Checkpoint tensors into the run; every tensor must have the element count of the value it
/// replaces (an error naming it otherwise: the checkpoint is of another model).
fn restore(stepper: &mut Stepper, run: &mut Run, t: &BTreeMap<String, NamedTensor>) -> Result<()> {
    let get = |name: String, len: usize| -> Result<Vec<f32>> {
        let v = t.get(&name).with_context(|| format!("has no tensor '{name}'"))?;
        if v.data.len() != len {
            bail!(
                "tensor '{name}' holds {} values where this model has {len} (a checkpoint of another model?)",
                v.data.len()
            );
        }
        Ok(v.data.clone())
    };
    for (p, s) in stepper.params.iter_mut().zip(stepper.optimizer.states.iter_mut()) {
        let n = p.data.len();
        p.data = get(format!("param/{}", p.input), n)?;
        s.exp_avg = get(format!("adam.m/{}", p.input), n)?;
        s.exp_avg_sq = get(format!("adam.v/{}", p.input), n)?;
    }
    for m in run.masks.iter_mut() {
        m.data = get(format!("mask/{}", m.input), m.data.len())?;
    }
    for s in run.sites.iter_mut() {
        let d = &get(format!("observer/{}", s.base), 6)?;
        s.observer = MinMaxObserver { min: d[0], max: d[1], initialized: d[2] != 0.0 };
        s.last = (d[5] != 0.0).then_some((d[3], d[4]));
    }
    Ok(())
}

fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<PathBuf> = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list '{}'", dir.display()))? {
        let p = e?.path();
        let is_ckpt = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"));
        if is_ckpt && best.as_ref().is_none_or(|b| p.file_name() > b.file_name()) {
            best = Some(p);
        }
    }
    Ok(best)
}

fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    all.sort();
    let n = all.len().saturating_sub(keep.max(1));
    for p in &all[..n] {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot remove old checkpoint '{}'", p.display()))?;
    }
    Ok(())
}

fn truncate_log(path: &Path, before: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", path.display())),
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<StepLog>(l).is_ok_and(|s| s.step < before))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::files::write_atomic(path, kept.as_bytes())
}

/// The compiled graph with fake quantization off for good (`sparsec.quant_enabled` bound to
/// false, the quantize-dequantize branches lowered away), trained on while QAT is off: the same
/// values without computing the unused branches. The observers' min/max outputs stay.
pub fn without_fake_quant(model: &Model) -> Result<Model> {
    let mut m = model.clone();
    BindInputs { values: vec![(QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[false]))] }.apply(&mut m)?;
    LowerFakeQuant::default().apply(&mut m)?;
    RemoveDead::default().apply(&mut m)?;
    infer::infer_facts(&mut m).context("the graph without fake quantization failed validation")?;
    Ok(m)
}

/// Writes `model.onnx` (trained weights, masks, quantization parameters and switch bound as
/// initializers), and copies tokenizer, config, recipe and plan, into the output folder.
pub(super) fn write_trained(cfg: &TrainConfig, compiled: &Compiled, bound: Vec<(String, HostTensor)>) -> Result<()> {
    let mut model = compiled.model.clone();
    let mut values = Vec::new();
    for (name, t) in bound {
        values.push((name, host_to_tensor(&t)?));
    }
    BindInputs { values }.apply(&mut model).context("cannot bind the trained values")?;
    model.set_metadata("sparsec.trained", "true");
    let dir = &cfg.output_dir;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "recipe.yaml",
        "plan.json",
    ] {
        let src = compiled.dir.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).with_context(|| format!("cannot read '{}'", src.display()))?;
            crate::files::write_atomic(&dir.join(f), &bytes)?;
        }
    }
    crate::onnx::save(&model, dir.join("model.onnx"), &crate::onnx::SaveOptions::default())?;
    Ok(())
}

fn host_to_tensor(t: &HostTensor) -> Result<Tensor> {
    let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
    Ok(match t {
        HostTensor::F32(a) => Tensor::from_f32(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::U8(a) => Tensor::from_u8(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I8(a) => Tensor::from_i8(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::Bool(a) => Tensor::from_bool(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I64(a) => Tensor::from_i64(dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()),
        HostTensor::I32(_) => bail!("int32 tensors are not bound"),
    })
}

/// Warns about training answers that do not match their context (count and first ids), or with
/// `strict_data` fails naming them.
fn check_training_answers(cfg: &TrainConfig, examples: &[squad::Example]) -> Result<()> {
    let check = check_answers(examples);
    if check.count() == 0 {
        return Ok(());
    }
    if cfg.strict_data {
        bail!("'{}': {} (--strict-data)", cfg.train_file.display(), check.summary());
    }
    tracing::warn!(
        "'{}': {}; they are trained as run_qa.py trains them (an answer beyond the context is labelled at CLS); \
         --strict-data fails instead",
        cfg.train_file.display(),
        check.summary()
    );
    Ok(())
}

/// Training batches are padded to their longest window (to `--max-seq-length` with
/// `--pad-to-max-length`) and the last one is short: a model with a fixed sequence length trains
/// only with `--max-seq-length` equal to it and `--pad-to-max-length`, and one with a fixed batch
/// size not at all (its last batch is not padded yet). Either is an error naming the model's shape.
fn check_fixed_shape(cfg: &TrainConfig, model: &Model) -> Result<()> {
    let fixed = crate::qa::FixedShape::of_model(model)?;
    if let Some(b) = fixed.batch {
        bail!(
            "the model's inputs are fixed at {}: training needs a dynamic batch dim (a fixed batch of {b} is not \
             supported by `sparsec train`); export the model with a dynamic batch",
            fixed.describe()
        );
    }
    if let Some(seq) = fixed.seq {
        if cfg.max_seq_length != seq || !cfg.pad_to_max_length {
            bail!(
                "the model's inputs are fixed at {}: train with --max-seq-length {seq} --pad-to-max-length",
                fixed.describe()
            );
        }
    }
    Ok(())
}
