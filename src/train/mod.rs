//! Training: the optimiser, the pruning algorithms, observers and checkpoints that
//! `sparsec train` drives over the forward+backward graph built by `autodiff` and run by `runtime`,
//! from a folder `compile` wrote. [`train`] is the entry: a run step by step ([`session`]), or
//! SparseML's one-shot ([`oneshot`]).
//!
//! Files, from the bottom up: [`config`] (what a run is asked), [`log`] (what it records),
//! [`data`] (windows and batches), [`run`] (masks, observers, one pruning update), [`graphs`],
//! [`teacher`], [`eval`], [`checkpoint`], [`trained`] (the output folder); then the two ways to
//! run, [`session`] and [`oneshot`].

pub mod checkpoint;
pub mod config;
pub mod data;
mod eval;
pub mod evidence;
pub mod graphs;
pub mod interrupt;
pub mod log;
pub mod observers;
mod oneshot;
pub mod optim;
pub mod prune;
mod run;
mod session;
pub mod step;
mod teacher;
pub mod tensorboard;
mod trained;

use anyhow::{Context, Result};

use config::TrainConfig;
use data::Data;
use log::{Progress, TrainSummary};
use run::Run;

/// Runs (or resumes) training per `cfg`; returns the summary. The trained folder is complete
/// only when this returns `Ok`.
pub fn train(cfg: &TrainConfig, progress: &mut dyn Progress) -> Result<TrainSummary> {
    let data = Data::load(cfg)?;
    let mut run = Run::new(&data.compiled)?;
    for w in &data.compiled.plan.warnings {
        tracing::warn!("{w}");
        progress.message(&format!("warning: {w}"));
    }
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create '{}'", cfg.output_dir.display()))?;
    match cfg.one_shot {
        Some(n) => oneshot::one_shot(cfg, &data, &mut run, n, progress),
        None => session::train(cfg, &data, run, progress),
    }
}
