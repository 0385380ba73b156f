//! A training run over a `sparsec compile` output: the recipe's schedule (learning rate, gradual
//! magnitude pruning, constant pruning, QAT with observers, distillation from a teacher run on
//! ONNX Runtime) applied step by step to the forward+backward graph, with atomic checkpoints,
//! exact resume, per-epoch evaluation, and a final trained folder whose `model.onnx` has the
//! trained weights, masks and quantization parameters bound in.
//!
//! A run is a [`Session`] advanced one step at a time through named phases (mask update, QAT
//! switch, optimisation step, evaluation, checkpoint); the mask-update phase hands each pruning
//! modifier's layers to its [`Pruner`] through [`Run::prune`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::checkpoint::{self, latest_checkpoint, prune_checkpoints, restore, snapshot, CheckpointState, NamedTensor};
use super::config::{Teacher, TrainConfig};
use super::data::{epoch_order, grouped_epoch_order, Data};
use super::eval::{eval_backend, evaluate};
use super::graphs::{Graphs, SparseTrain};
use super::log::{truncate_log, EvalRecord, Progress, StepLog, TrainSummary};
use super::observers::AVERAGING_CONSTANT;
use super::optim::AdamWConfig;
use super::prune::{PruneReport, Pruner};
use super::run::{apply_masks, eval_bindings, grad_batch_size, mask_schedule, EvidenceInputs, MaskSlot, Run};
use super::step::{linear_warmup_decay, Stepper};
use super::teacher::TeacherModel;
use super::trained::write_trained;
use crate::compile::loss::Loss;
use crate::compile::Compiled;
use crate::qa::features::TrainWindow;
use crate::recipe::schedule::Schedule;
use crate::recipe::Modifier;
use crate::runtime::{EngineKind, EngineOptions, HostTensor};

/// A run's length: the recipe's epochs in steps, cut short by `--max-steps`.
struct Steps {
    epochs: f64,
    per_epoch: u64,
    /// Steps the recipe's schedule spans.
    scheduled: u64,
    /// Steps this run takes.
    total: u64,
}

impl Steps {
    fn of(cfg: &TrainConfig, data: &Data, schedule: &Schedule) -> Result<Steps> {
        let epochs = schedule.total_epochs();
        if epochs <= 0.0 {
            bail!(
                "the recipe sets no epochs (add an EpochRangeModifier, or set them with --recipe-args when compiling)"
            );
        }
        if let Some(n) = cfg.num_train_epochs {
            if (n - epochs).abs() > 1e-9 {
                bail!(
                    "--num-train-epochs {n} differs from the recipe's {epochs} epochs: the recipe sets the schedule; \
                     change it with --recipe-args when compiling (e.g. '{{\"num_epochs\": {n}}}')"
                );
            }
        }
        let per_epoch = data.windows.len().div_ceil(cfg.batch_size) as u64;
        let scheduled = (epochs * per_epoch as f64).ceil() as u64;
        let total = cfg.max_steps.map_or(scheduled, |m| m.min(scheduled));
        Ok(Steps { epochs, per_epoch, scheduled, total })
    }
}

/// The stepper on the run's first graph, with the recipe's weight decay, watching the loss parts
/// and the activation observers' ranges.
fn stepper(
    cfg: &TrainConfig,
    compiled: &Compiled,
    graphs: &Graphs,
    run: &Run,
    opts: &EngineOptions,
) -> Result<Stepper> {
    let weight_decay = compiled
        .plan
        .modifiers
        .iter()
        .find_map(|m| match &m.settings {
            Modifier::SetWeightDecay(w) => Some(w.weight_decay as f32),
            _ => None,
        })
        .unwrap_or(cfg.weight_decay);
    let adamw = AdamWConfig { weight_decay, ..AdamWConfig::default() };
    let mut stepper = Stepper::new(graphs.first(), EngineKind::Ort, opts, adamw)?;
    stepper.watch = graphs.qat.loss_outputs.iter().skip(1).cloned().collect();
    for s in &run.sites {
        stepper.watch.push(format!("{}.min", s.base));
        stepper.watch.push(format!("{}.max", s.base));
    }
    Ok(stepper)
}

/// What a checkpoint must have been made with to be resumed.
fn fingerprint(cfg: &TrainConfig, data: &Data, loss: &Loss, total_steps: u64) -> serde_json::Value {
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
    if cfg.linear_precision != crate::passes::LinearPrecision::F32 {
        // bf16 products change every step's rounding: a run resumes in the precision it ran in.
        fingerprint["linear_precision"] = serde_json::to_value(cfg.linear_precision).unwrap_or_default();
    }
    if let Some(l) = &loss.spec.layers {
        fingerprint["layer_distillation"] = serde_json::json!({"student": l.modules, "teacher": loss.teacher_modules});
    }
    fingerprint
}

/// Tells the user how far a pruning update's gradient batches are and how long the rest will take:
/// after the second batch (the estimate, from the rate after the first, which also builds the
/// gradient graph) and at each quarter. `ticker` holds the progress and when the first batch ended.
fn gradient_progress<'p, 'q>(
    ticker: &RefCell<(&'p mut (dyn Progress + 'q), Option<Instant>)>,
    step: u64,
    name: &str,
    done: usize,
    of: usize,
) {
    let mut t = ticker.borrow_mut();
    let Some(first) = t.1 else {
        t.1 = Some(Instant::now());
        return;
    };
    let quarter = of.div_ceil(4).max(1);
    if done != 2 && done != of && !done.is_multiple_of(quarter) {
        return;
    }
    let per = first.elapsed().as_secs_f64() / (done - 1) as f64;
    let left = per * (of - done) as f64;
    t.0.message(&format!(
        "step {step}: {name} update: {done}/{of} gradient batches ({:.2} s each), about {left:.0} s to go",
        per
    ));
}

/// Trains per `cfg` from `run`'s masks, step by step, stopping with a checkpoint on SIGINT /
/// SIGTERM when `cfg.stop_on_signals`; writes the trained folder.
pub(super) fn train(cfg: &TrainConfig, data: &Data, run: Run, progress: &mut dyn Progress) -> Result<TrainSummary> {
    let stop = if cfg.stop_on_signals { Some(super::interrupt::StopOnSignals::new()?) } else { None };
    let mut session = Session::open(cfg, data, run, progress)?;
    let total = session.steps.total;
    progress.start(total, session.first_step);
    for step in session.first_step..total {
        if let Err(e) = session.run_step(step, progress) {
            let Some(stopped) = e.downcast_ref::<super::interrupt::StepInterrupted>() else { return Err(e) };
            let signal = stopped.signal;
            let checkpoint = session.interrupt(step)?;
            progress.finish();
            return Err(super::interrupt::Interrupted { signal, step, checkpoint }.into());
        }
        let done = step + 1;
        if let Some(signal) = stop.as_ref().and_then(|s| s.requested()).filter(|_| done < total) {
            let checkpoint = session.interrupt(done)?;
            progress.finish();
            return Err(super::interrupt::Interrupted { signal, step: done, checkpoint }.into());
        }
    }
    progress.finish();
    session.finish()
}

/// State of a training run, advanced one step at a time through named phases:
/// [`Session::mask_update`], [`Session::qat_switch`], [`Session::train_step`],
/// [`Session::evaluate`], [`Session::checkpoint`].
struct Session<'d> {
    cfg: &'d TrainConfig,
    data: &'d Data,
    run: Run<'d>,
    schedule: Schedule<'d>,
    steps: Steps,
    first_step: u64,
    graphs: Graphs,
    opts: EngineOptions,
    stepper: Stepper,
    loss_parts: Vec<String>,
    teacher: Option<TeacherModel>,
    distill: bool,
    pruners: BTreeMap<usize, Box<dyn Pruner>>,
    updates: BTreeMap<u64, Vec<(usize, f64, bool)>>,
    checkpoints: Checkpoints,
    records: Records,
    /// `SPARSEC_ABORT_AFTER_STEP`: abort the process after this step (for the resume tests).
    abort_at: Option<u64>,
    samples_seen: u64,
    sparsity_now: f64,
    last_loss: Option<f32>,
    order: BatchOrder,
    clock: Clock,
}

/// Where the run's checkpoints go, what they must match, and which this process wrote or
/// resumed from.
struct Checkpoints {
    dir: PathBuf,
    /// What a checkpoint must have been made with to be resumed ([`fingerprint`]).
    fingerprint: serde_json::Value,
    /// The step of the newest checkpoint this process wrote.
    written: Option<u64>,
    /// The step `--resume` continued from.
    resumed_from: Option<u64>,
    /// The checkpoint `--fork-from` branched, and its step.
    forked_from: Option<(PathBuf, u64)>,
}

/// What the run writes down besides checkpoints: the step log and TensorBoard events as it
/// goes, and the evaluations and pruning reports for the summary.
#[derive(Default)]
struct Records {
    /// `train_log.jsonl`, open for appending once the run has started.
    log: Option<std::fs::File>,
    events: Option<super::tensorboard::TrainEvents>,
    evals: Vec<EvalRecord>,
    pruning: Vec<PruneReport>,
}

impl Records {
    /// Appends one step to the step log and the TensorBoard events.
    fn step(&mut self, entry: &StepLog) -> Result<()> {
        let log = self.log.as_mut().context("the step log is not open")?;
        writeln!(log, "{}", serde_json::to_string(entry)?).context("cannot append to train_log.jsonl")?;
        if let Some(t) = self.events.as_mut() {
            t.step(entry)?;
        }
        Ok(())
    }
}

/// The order the current epoch's windows are batched in.
struct BatchOrder {
    /// The epoch `windows` is for (`u64::MAX` before the first step).
    epoch: u64,
    /// Window indices, batch after batch.
    windows: Vec<usize>,
}

impl BatchOrder {
    /// Moves to epoch `epoch`: its windows shuffled by the seed (grouped by length with
    /// `--group-by-length`), the same order on every run and resume.
    fn at_epoch(&mut self, cfg: &TrainConfig, data: &Data, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        let windows = &data.windows;
        self.windows = if cfg.group_by_length {
            let lengths: Vec<usize> = windows.iter().map(|w| w.window.len()).collect();
            grouped_epoch_order(&lengths, cfg.batch_size, cfg.seed, epoch)
        } else {
            epoch_order(windows.len(), cfg.seed, epoch)
        };
        self.epoch = epoch;
    }
}

/// The run's wall clock: when it started, and the window the step log's samples/s is measured over.
struct Clock {
    started: Instant,
    /// Start of the current window (restarted every 30 s) and the samples seen in it.
    since: (Instant, u64),
}

impl Clock {
    /// Counts `samples` into the current window; returns its samples per second, and starts a
    /// new window once this one is past 30 s.
    fn count(&mut self, samples: u64) -> f64 {
        self.since.1 += samples;
        let elapsed = self.since.0.elapsed().as_secs_f64();
        let rate = self.since.1 as f64 / elapsed;
        if elapsed > 30.0 {
            self.since = (Instant::now(), 0);
        }
        rate
    }
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
        let pruners = super::prune::select::pruners(&compiled.plan, &run.slot_params(), cfg.prune_memory_limit, false)?;
        let schedule = compiled.plan.schedule();
        let steps = Steps::of(cfg, data, &schedule)?;
        let teacher_on = cfg.teacher != Teacher::Disabled;
        let loss = Loss::of(&compiled.plan, &compiled.model.graph, teacher_on, data.zero_grad_rows()?);
        if cfg.linear_precision == crate::passes::LinearPrecision::Bf16 {
            let isa = sparsec_kernels::Isa::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
            sparsec_kernels::masked_linear::MaskedLinear::with_precision(
                isa,
                sparsec_kernels::masked_linear::Precision::Bf16,
            )
            .map_err(|e| anyhow::anyhow!("--linear-precision bf16: {e}"))?;
        }
        let graphs = Graphs::build(
            &compiled.model,
            &loss.spec,
            run.has_quant(),
            cfg.sparse_train,
            cfg.fused_ops,
            cfg.linear_precision,
        )?;
        let opts = EngineOptions { threads: cfg.threads, memory: cfg.ort_memory, ..Default::default() };
        let step_opts = EngineOptions { profile: cfg.ort_profile.clone(), ..opts.clone() };
        let stepper = stepper(cfg, compiled, &graphs, &run, &step_opts)?;
        let teacher = TeacherModel::for_run(cfg, compiled, &loss, &opts)?;
        let fingerprint = fingerprint(cfg, data, &loss, steps.total);
        let now = Instant::now();
        let mut s = Session {
            cfg,
            data,
            updates: mask_schedule(&compiled.plan, steps.per_epoch, steps.scheduled),
            run,
            schedule,
            steps,
            first_step: 0,
            loss_parts: graphs.qat.loss_outputs.iter().skip(1).cloned().collect(),
            graphs,
            opts,
            stepper,
            teacher,
            distill: loss.distill,
            pruners,
            checkpoints: Checkpoints {
                dir: cfg.output_dir.join("checkpoints"),
                fingerprint,
                written: None,
                resumed_from: None,
                forked_from: None,
            },
            records: Records::default(),
            abort_at: std::env::var("SPARSEC_ABORT_AFTER_STEP").ok().and_then(|s| s.parse().ok()),
            samples_seen: 0,
            sparsity_now: 0.0,
            last_loss: None,
            order: BatchOrder { epoch: u64::MAX, windows: Vec::new() },
            clock: Clock { started: now, since: (now, 0) },
        };
        s.start(progress)?;
        Ok(s)
    }

    /// Resumes with `--resume`, opens the step log and the TensorBoard events, and feeds the
    /// masks to the stepper.
    fn start(&mut self, progress: &mut dyn Progress) -> Result<()> {
        let cfg = self.cfg;
        let log_path = cfg.output_dir.join("train_log.jsonl");
        if cfg.resume {
            self.resume(&log_path, progress)?;
        }
        if let Some(from) = &cfg.fork_from {
            self.fork(from, progress)?;
        }
        if self.first_step == 0 || self.checkpoints.forked_from.is_some() {
            std::fs::write(&log_path, b"").with_context(|| format!("cannot write '{}'", log_path.display()))?;
        }
        self.records.log = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot write '{}'", log_path.display()))?,
        );
        let kept = super::tensorboard::read_log(&log_path);
        self.records.events = Some(super::tensorboard::TrainEvents::open(&cfg.output_dir, &kept, &self.records.evals)?);
        for (name, value) in self.run.mask_inputs() {
            self.stepper.set_fixed(&name, value);
        }
        self.sparsity_now = self.run.sparsity().1;
        self.clock.started = Instant::now();
        self.clock.since = (Instant::now(), 0);
        Ok(())
    }

    fn resume(&mut self, log_path: &Path, progress: &mut dyn Progress) -> Result<()> {
        let Some(path) = latest_checkpoint(&self.checkpoints.dir)? else {
            progress.message("no checkpoint to resume from: starting from scratch");
            return Ok(());
        };
        let (tensors, state): (BTreeMap<String, NamedTensor>, CheckpointState) = checkpoint::load(&path)?;
        if state.fingerprint != self.checkpoints.fingerprint {
            bail!(
                "checkpoint '{}' was made with different settings ({}); now {}",
                path.display(),
                state.fingerprint,
                self.checkpoints.fingerprint
            );
        }
        restore(&mut self.stepper, &mut self.run, &tensors, false)
            .with_context(|| format!("checkpoint '{}'", path.display()))?;
        self.restore_position(&path, &tensors, state)?;
        self.checkpoints.resumed_from = Some(self.first_step);
        truncate_log(log_path, self.first_step)?;
        progress.message(&format!("resumed from '{}' at step {}", path.display(), self.first_step));
        Ok(())
    }

    /// `--fork-from`: another run's checkpoint, made with these settings except (perhaps) the
    /// compiled folder, which may add quantization sites if QAT had not started.
    fn fork(&mut self, path: &Path, progress: &mut dyn Progress) -> Result<()> {
        if latest_checkpoint(&self.checkpoints.dir)?.is_some() {
            bail!(
                "--output-dir '{}' already has checkpoints: fork into a new folder (or --resume this one)",
                self.cfg.output_dir.display()
            );
        }
        let (tensors, state): (BTreeMap<String, NamedTensor>, CheckpointState) = checkpoint::load(path)?;
        // The compiled folder may differ; the training file may be named by another path to it.
        let strip = |f: &serde_json::Value| {
            let mut f = f.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("compiled");
                if let Some(p) =
                    o.get("train_file").and_then(|p| p.as_str()).and_then(|p| std::fs::canonicalize(p).ok())
                {
                    o.insert("train_file".into(), p.display().to_string().into());
                }
            }
            f
        };
        if strip(&state.fingerprint) != strip(&self.checkpoints.fingerprint) {
            bail!(
                "checkpoint '{}' was made with different settings ({}); now {} (only the compiled folder may differ)",
                path.display(),
                state.fingerprint,
                self.checkpoints.fingerprint
            );
        }
        let new_sites = restore(&mut self.stepper, &mut self.run, &tensors, !state.qat_started)
            .with_context(|| format!("checkpoint '{}'", path.display()))?;
        let step = state.step;
        self.restore_position(path, &tensors, state)?;
        self.checkpoints.forked_from = Some((path.to_path_buf(), step));
        let added = if new_sites.is_empty() {
            String::new()
        } else {
            format!(" ({} new quantization sites start with fresh observers)", new_sites.len())
        };
        progress.message(&format!("forked from '{}' at step {step}{added}", path.display()));
        Ok(())
    }

    /// A loaded checkpoint's pruner state and schedule position into the session.
    fn restore_position(
        &mut self,
        path: &Path,
        tensors: &BTreeMap<String, NamedTensor>,
        state: CheckpointState,
    ) -> Result<()> {
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
        self.records.evals = state.evals;
        Ok(())
    }

    /// One step: every phase in order.
    fn run_step(&mut self, step: u64, progress: &mut dyn Progress) -> Result<()> {
        let step_started = Instant::now();
        self.order.at_epoch(self.cfg, self.data, step / self.steps.per_epoch);
        self.mask_update(step, progress)?;
        let qat = self.qat_switch(step)?;
        let entry = self.train_step(step, qat, step_started)?;
        progress.step(&entry);
        let done = step + 1;
        let epoch_end = done.is_multiple_of(self.steps.per_epoch) || done == self.steps.total;
        if epoch_end || self.cfg.eval_steps.is_some_and(|n| n > 0 && done.is_multiple_of(n)) {
            self.evaluate(done, qat.on, progress)?;
        }
        if epoch_end || self.cfg.save_steps.is_some_and(|n| n > 0 && done.is_multiple_of(n)) {
            self.checkpoint(done)?;
        }
        if self.abort_at == Some(done) {
            if let Some(l) = self.records.log.as_mut() {
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
            let plan = &self.data.compiled.plan;
            let sparsity = |m: &MaskSlot| match plan.modifier(m.modifier) {
                Modifier::Pruning(p) => p.sparsity_at_update(at, m.init, m.fin),
                _ => 0.0,
            };
            let pruner = self.pruners.get_mut(&modifier).context("no pruner for a scheduled modifier")?;
            let model = match pruner.needs_gradients() {
                true => Some(self.graphs.forward(&self.data.compiled.model)?),
                false => None,
            };
            let name = pruner.name();
            let ticker = RefCell::new((&mut *progress, None));
            let tick = |done: usize, of: usize| gradient_progress(&ticker, step, name, done, of);
            let inputs = match &model {
                Some(model) => Some(EvidenceInputs {
                    model,
                    zero_grad_rows: self.data.zero_grad_rows()?,
                    data: self.data,
                    grad_batch: grad_batch_size(plan.modifier(modifier)).unwrap_or(self.cfg.batch_size),
                    seed: self.cfg.seed.wrapping_add(step),
                    calibration: None,
                    opts: self.opts.clone(),
                    on_batch: Some(&tick),
                }),
                None => None,
            };
            let report =
                self.run.prune(modifier, pruner.as_mut(), &mut self.stepper.params, &sparsity, inputs.as_ref());
            drop(inputs);
            let report = report?;
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
                self.records.pruning.push(report);
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
        let epoch_f = step as f64 / self.steps.per_epoch as f64;
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
        let density = if self.cfg.sparse_train == SparseTrain::Auto { self.run.kept_block_density() } else { 1.0 };
        if let Some(tg) = self.graphs.switch(on, density) {
            let step_opts = EngineOptions { profile: self.cfg.ort_profile.clone(), ..self.opts.clone() };
            self.stepper.switch_graph(tg, EngineKind::Ort, &step_opts)?;
            tracing::info!(step, qat = on, block_sparse = self.graphs.on_sparse(), "switched the training graph");
        }
        Ok(QatStep { on, observers_frozen: qstate.is_some_and(|q| q.observers_frozen) })
    }

    /// Optimisation phase: one AdamW step on the step's batch, masks re-applied, observers fed,
    /// and the step logged.
    fn train_step(&mut self, step: u64, qat: QatStep, step_started: Instant) -> Result<StepLog> {
        let cfg = self.cfg;
        let epoch_f = step as f64 / self.steps.per_epoch as f64;
        let within = (step % self.steps.per_epoch) as usize;
        let lr = self.schedule.learning_rate(epoch_f, self.steps.per_epoch).map(|x| x as f32).unwrap_or_else(|| {
            linear_warmup_decay(cfg.learning_rate, step as usize, cfg.warmup_steps, self.steps.scheduled as usize)
        });
        for (name, value) in self.run.quant_inputs(qat.on) {
            self.stepper.set_fixed(&name, value);
        }
        let start = within * cfg.batch_size;
        let windows = &self.data.windows;
        let rows: Vec<&TrainWindow> = self.order.windows[start..(start + cfg.batch_size).min(self.order.windows.len())]
            .iter()
            .map(|&i| &windows[i])
            .collect();
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
        let plan = &self.data.compiled.plan;
        let observing: BTreeMap<usize, ()> = self
            .pruners
            .iter()
            .filter(|(&i, p)| {
                let m = plan.modifier(i);
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
        let samples_per_second = self.clock.count(rows.len() as u64);
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
            block_sparse: self.graphs.on_sparse(),
            samples_per_second,
            step_seconds: step_started.elapsed().as_secs_f64(),
            seq_len: rows.iter().map(|w| w.window.len()).max().unwrap_or(0).max(layout.pad_to.unwrap_or(0)),
        };
        self.records.step(&entry)?;
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
            epoch: done as f64 / self.steps.per_epoch as f64,
            step: done,
            questions: ex.len(),
            exact_match: r.exact_match,
            f1: r.f1,
        };
        progress.message(&format!("epoch {:.2}: exact_match {:.2} f1 {:.2}", rec.epoch, rec.exact_match, rec.f1));
        tracing::info!(epoch = rec.epoch, em = rec.exact_match, f1 = rec.f1, "evaluation");
        if let Some(t) = self.records.events.as_mut() {
            t.eval(&rec)?;
        }
        self.records.evals.push(rec);
        Ok(())
    }

    /// Checkpoint phase: weights, masks, AdamW moments, observers and step, atomically.
    fn checkpoint(&mut self, done: u64) -> Result<()> {
        let state = CheckpointState {
            step: done,
            steps_per_epoch: self.steps.per_epoch,
            total_steps: self.steps.total,
            adam_step: self.stepper.optimizer.step,
            samples_seen: self.samples_seen,
            qat_started: self.run.qat_started,
            fingerprint: self.checkpoints.fingerprint.clone(),
            evals: self.records.evals.clone(),
        };
        let mut tensors = snapshot(&self.stepper, &self.run);
        for (i, p) in &self.pruners {
            for (name, data) in p.state() {
                tensors.push(NamedTensor { name: format!("pruner/{i}/{name}"), shape: vec![data.len()], data });
            }
        }
        checkpoint::save(&self.checkpoints.dir, &format!("step-{done:09}"), &tensors, &state)?;
        self.checkpoints.written = Some(done);
        prune_checkpoints(&self.checkpoints.dir, self.cfg.save_total_limit)
    }

    /// Stop phase: checkpoints step `done` (unless that step was just saved) and flushes the step
    /// log; returns the checkpoint's path.
    fn interrupt(&mut self, done: u64) -> Result<String> {
        if self.checkpoints.written != Some(done) {
            self.checkpoint(done)?;
        }
        if let Some(l) = self.records.log.as_mut() {
            let path = self.cfg.output_dir.join("train_log.jsonl");
            l.flush().with_context(|| format!("cannot write '{}'", path.display()))?;
        }
        Ok(self.checkpoints.dir.join(format!("step-{done:09}")).display().to_string())
    }

    /// Writes the trained folder and the summary.
    fn finish(self) -> Result<TrainSummary> {
        let cfg = self.cfg;
        let seconds = self.clock.started.elapsed().as_secs_f64();
        let quant_final = self.schedule.quantization(self.steps.epochs).is_some_and(|q| q.enabled)
            || self.run.qat_started && self.run.has_quant();
        let bound = eval_bindings(&self.stepper, &self.run, quant_final && self.run.has_quant());
        write_trained(cfg, &self.data.compiled, bound)?;
        let (per, overall) = self.run.sparsity();
        let steps_run = self.steps.total - self.first_step;
        let summary = TrainSummary {
            output_dir: cfg.output_dir.display().to_string(),
            train_examples: self.data.examples,
            train_windows: self.data.windows.len(),
            steps: self.steps.total,
            steps_per_epoch: self.steps.per_epoch,
            epochs: self.steps.epochs,
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
            evals: self.records.evals,
            resumed_from_step: self.checkpoints.resumed_from,
            forked_from: self.checkpoints.forked_from.map(|(p, step)| super::log::ForkedFrom { checkpoint: p, step }),
            pruning: self.records.pruning,
        };
        crate::files::write_atomic(&cfg.output_dir.join("train_summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
        Ok(summary)
    }
}
