//! `sparsec train --one-shot N`, SparseML's one-shot: each pruning modifier's algorithm (magnitude,
//! OBS from task-loss gradients, SparseGPT from calibration activations, constant) prunes its
//! layers to their final sparsity once, on the compiled weights; with quantization, the
//! activation observers are then calibrated (MinMax) on `N` training windows. No training.

use std::time::Instant;

use anyhow::{Context, Result};

use super::config::TrainConfig;
use super::data::{epoch_order, Data};
use super::eval::{eval_backend, evaluate};
use super::graphs::without_fake_quant;
use super::log::{EvalRecord, Progress, StepLog, TrainSummary};
use super::prune::PruneReport;
use super::run::{apply_params_masks, f32_tensor, grad_batch_size, EvidenceInputs, MaskSlot, Run};
use super::trained::write_trained;
use crate::ir::Model;
use crate::qa::features::TrainWindow;
use crate::runtime::{Backend, EngineOptions, HostTensor};

/// A one-shot's parameters: (graph input, shape, values) of every f32 initializer input.
type Params = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Prunes every pruning modifier's layers once, calibrates the observers on `n` training windows
/// and writes the trained folder.
pub(super) fn one_shot(
    cfg: &TrainConfig,
    data: &Data,
    run: &mut Run,
    n: usize,
    progress: &mut dyn Progress,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let compiled = &data.compiled;
    let mut params = compiled_params(&compiled.model)?;
    let order = epoch_order(data.windows.len(), cfg.seed, 0);
    let take = n.min(data.windows.len()).max(1);
    let calibration: Vec<&TrainWindow> = order[..take].iter().map(|&i| &data.windows[i]).collect();
    let reports = prune_all(cfg, data, run, &mut params, &calibration, progress)?;
    apply_params_masks(&mut params, run);
    let quant = run.has_quant();
    if quant && !run.sites.is_empty() {
        calibrate(cfg, data, run, &params, &calibration, progress)?;
    }
    let mut bound = bindings(&params);
    bound.extend(run.bound_inputs(quant));
    let mut evals = Vec::new();
    if let Some(ex) = &data.eval_examples {
        let backend = eval_backend(compiled, bound.clone(), cfg.threads)?;
        let r = evaluate(Box::new(backend), data.tokenizer.clone(), cfg, ex)?;
        evals.push(EvalRecord { epoch: 0.0, step: 0, questions: ex.len(), exact_match: r.exact_match, f1: r.f1 });
    }
    write_trained(cfg, compiled, bound)?;
    let (per, overall) = run.sparsity();
    let summary = TrainSummary {
        output_dir: cfg.output_dir.display().to_string(),
        train_examples: data.examples,
        train_windows: data.windows.len(),
        steps: 0,
        steps_per_epoch: 0,
        epochs: 0.0,
        samples_seen: if quant { take as u64 } else { 0 },
        seconds: started.elapsed().as_secs_f64(),
        samples_per_second: 0.0,
        final_loss: None,
        sparsity: per,
        overall_sparsity: overall,
        quantized: quant,
        distillation: false,
        one_shot: true,
        evals,
        resumed_from_step: None,
        forked_from: None,
        pruning: reports,
    };
    crate::files::write_atomic(&cfg.output_dir.join("train_summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
    Ok(summary)
}

fn compiled_params(model: &Model) -> Result<Params> {
    let g = &model.graph;
    let mut params = Vec::new();
    for &v in g.inputs() {
        let Some(t) = g.initializer(v).filter(|t| t.dtype == crate::ir::DType::F32) else { continue };
        let values = t.as_f32s().context("float initializer")?;
        params.push((g.value(v).name.clone(), t.dims.iter().map(|&d| d as usize).collect(), values));
    }
    Ok(params)
}

fn bindings(params: &Params) -> Vec<(String, HostTensor)> {
    params.iter().map(|(n, s, d)| (n.clone(), f32_tensor(s, d.clone()))).collect()
}

/// Each pruning modifier's layers pruned to their final sparsity by its algorithm, with task-loss
/// gradients or the calibration windows' activations as it asks.
fn prune_all(
    cfg: &TrainConfig,
    data: &Data,
    run: &mut Run,
    params: &mut Params,
    calibration: &[&TrainWindow],
    progress: &mut dyn Progress,
) -> Result<Vec<PruneReport>> {
    let compiled = &data.compiled;
    let mut pruners = super::prune::select::pruners(&compiled.plan, &run.slot_params(), cfg.prune_memory_limit, true)?;
    let opts = EngineOptions { threads: cfg.threads, memory: cfg.ort_memory, ..Default::default() };
    let float_model = if run.has_quant() { Some(without_fake_quant(&compiled.model)?) } else { None };
    let model = float_model.as_ref().unwrap_or(&compiled.model);
    let mut reports = Vec::new();
    for (modifier, pruner) in pruners.iter_mut() {
        let inputs = EvidenceInputs {
            model,
            zero_grad_rows: if pruner.needs_gradients() {
                data.zero_grad_rows().unwrap_or_default()
            } else {
                Vec::new()
            },
            data,
            grad_batch: grad_batch_size(compiled.plan.modifier(*modifier)).unwrap_or(cfg.batch_size),
            seed: cfg.seed,
            calibration: Some((calibration, cfg.batch_size)),
            opts: opts.clone(),
            on_batch: None,
        };
        let layers = run.masks.iter().filter(|m| m.modifier == *modifier).count();
        progress.message(&format!("one-shot: {} pruning of {layers} layers", pruner.name()));
        let report = run.prune(*modifier, pruner.as_mut(), params, &|m: &MaskSlot| m.fin, Some(&inputs))?;
        progress.message(&format!(
            "one-shot: {} reached {:.2}% in {:.1} s ({} samples, state {:.1} MB)",
            report.algorithm,
            report.sparsity * 100.0,
            report.seconds,
            report.samples,
            report.state_bytes as f64 / 1e6
        ));
        reports.push(report);
    }
    Ok(reports)
}

/// MinMax calibration of the activation observers on the calibration windows, with the pruned
/// weights and QAT off.
fn calibrate(
    cfg: &TrainConfig,
    data: &Data,
    run: &mut Run,
    params: &Params,
    calibration: &[&TrainWindow],
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut bound = bindings(params);
    bound.extend(run.bound_inputs(false));
    let mut backend = eval_backend(&data.compiled, bound, cfg.threads)?;
    progress.start(calibration.len().div_ceil(cfg.batch_size) as u64, 0);
    let sparsity = run.sparsity().1;
    let names: Vec<String> = backend.output_names().to_vec();
    for (b, chunk) in calibration.chunks(cfg.batch_size).enumerate() {
        let out = backend.run(&data.layout.model_inputs(chunk))?;
        for s in run.sites.iter_mut() {
            let get = |suffix: &str| -> Result<f32> {
                let want = format!("{}.{suffix}", s.base);
                let i = names.iter().position(|n| *n == want).with_context(|| format!("no output '{want}'"))?;
                Ok(*out[i].1.as_f32()?.iter().next().context("empty observer output")?)
            };
            let (lo, hi) = (get("min")?, get("max")?);
            let o = &mut s.observer;
            if o.initialized {
                o.min = o.min.min(lo);
                o.max = o.max.max(hi);
            } else {
                o.observe(lo, hi, 1.0);
            }
        }
        progress.step(&StepLog {
            step: b as u64,
            epoch: 0.0,
            loss: 0.0,
            loss_span: None,
            loss_distill: None,
            loss_layer: None,
            lr: 0.0,
            grad_norm: 0.0,
            sparsity,
            qat: false,
            block_sparse: false,
            samples_per_second: 0.0,
            step_seconds: 0.0,
            seq_len: 0,
        });
    }
    progress.finish();
    Ok(())
}
