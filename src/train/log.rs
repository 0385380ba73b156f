//! What a run records and reports: one [`StepLog`] line per step in `train_log.jsonl`, an
//! [`EvalRecord`] per evaluation, the final [`TrainSummary`], and the [`Progress`] callbacks a
//! front end displays them with.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::prune::PruneReport;

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
    /// Whether the step ran the masked linears on the block-sparse training kernels
    /// (`--sparse-train`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_sparse: bool,
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
    /// The checkpoint `--fork-from` branched (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkedFrom>,
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

/// Callbacks for progress display.
pub trait Progress {
    fn start(&mut self, total_steps: u64, first_step: u64);
    fn step(&mut self, log: &StepLog);
    fn message(&mut self, text: &str);
    fn finish(&mut self);
}

/// Keeps the log lines of the steps before `before` (a resumed run rewrites the rest).
pub(super) fn truncate_log(path: &Path, before: u64) -> Result<()> {
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

/// Where a `--fork-from` run branched off.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForkedFrom {
    pub checkpoint: std::path::PathBuf,
    pub step: u64,
}
