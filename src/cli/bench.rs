//! `sparsec bench`: latency percentiles and throughput of a QA model on synthetic full-length
//! windows, like `deepsparse.benchmark`; `--compare` alternates two models in one process.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::bench::{bench, BenchModel, BenchResult, BenchSettings};
use crate::runtime::{EngineKind, Kernels};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A model.onnx, or a folder holding one.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 384)]
    seq_len: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = EngineKind::Ort)]
    engine: EngineKind,
    /// sparsec's sparse linear and fused attention kernels on ONNX Runtime (`off` for A/B runs).
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    kernels: Kernels,
    /// Run the batch as one-sequence pieces on this many single-thread sessions at once, so each
    /// sequence's activations stay in its core's cache through every layer (0 or 1: one session
    /// runs the whole batch with all threads).
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// --streams for the --compare model.
    #[arg(long, default_value_t = 0)]
    compare_streams: usize,
    /// Measured time (per model).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured warm-up time (per model).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// A second model, run alternately with the first; prints the speed ratio.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Engine of the --compare model [default: --engine].
    #[arg(long, value_enum)]
    compare_engine: Option<EngineKind>,
    /// Write ONNX Runtime's node-by-node trace of the first model to PREFIX_<date>.json
    /// (summarise it with benches/ort_profile.py).
    #[arg(long, value_name = "PREFIX")]
    profile: Option<PathBuf>,
    /// Kernels of the --compare model; `off` by default, so it is the plain ONNX Runtime baseline.
    #[arg(long, value_enum, default_value_t = Kernels::Off)]
    compare_kernels: Kernels,
    /// Instead of timing: which kernel runs each node of the model (sparsec's or ONNX Runtime's),
    /// why each node that stays on ONNX Runtime stays, and the share of the node time spent in
    /// sparsec's kernels, from ONNX Runtime's profile of --explain-runs runs.
    #[arg(long)]
    explain: bool,
    #[arg(long, default_value_t = 5)]
    explain_runs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    results: Vec<BenchResult>,
    /// items/s of the first model over items/s of the --compare model.
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_ratio: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.explain {
        return explain(&args);
    }
    let settings = BenchSettings {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        threads: args.threads,
        seconds: args.seconds,
        warmup: args.warmup,
        profile: args.profile.clone(),
    };
    let mut models = vec![BenchModel {
        path: super::resolve_model_path(&args.model),
        engine: args.engine,
        kernels: args.kernels,
        streams: args.streams,
        profile: true,
    }];
    if let Some(other) = &args.compare {
        models.push(BenchModel {
            path: super::resolve_model_path(other),
            engine: args.compare_engine.unwrap_or(args.engine),
            kernels: args.compare_kernels,
            streams: args.compare_streams,
            profile: false,
        });
    }
    let results = bench(&models, &settings)?;
    let speed_ratio = (results.len() == 2).then(|| results[0].items_per_second / results[1].items_per_second);
    let report = Report { results, speed_ratio };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for r in &report.results {
        println!(
            "{} [{}, kernels {:?}: {}] batch {} seq {}: {} iterations, mean {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {:.2} items/s",
            r.model, r.engine, r.kernels, r.lowered, r.batch_size, r.seq_len, r.iterations, r.mean_ms, r.p50_ms, r.p90_ms, r.p99_ms, r.items_per_second
        );
    }
    if let Some(x) = report.speed_ratio {
        println!("speed ratio (first / --compare): {x:.3}x");
    }
    Ok(())
}

fn explain(args: &BenchArgs) -> Result<()> {
    if args.engine != EngineKind::Ort {
        anyhow::bail!("--explain profiles the model on ONNX Runtime (--engine ort), where sparsec's kernels run");
    }
    let path = super::resolve_model_path(&args.model);
    let e = crate::bench::explain::explain(
        &path,
        args.kernels,
        args.batch_size,
        args.seq_len,
        args.threads,
        args.explain_runs,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!(
        "{} (kernels {:?}, batch {} seq {}, {} profiled runs): {} of {} nodes on sparsec's kernels, {:.1}% of {:.2} ms node time per run",
        e.model,
        e.kernels,
        e.batch_size,
        e.seq_len,
        e.runs,
        e.sparsec_nodes,
        e.nodes,
        100.0 * e.sparsec_time_share,
        e.node_ms_per_run
    );
    println!(
        "{:>6} {:>9}  {:<12} {:<22} {:>5}  why it stays on ONNX Runtime",
        "share", "ms/run", "runs on", "op", "nodes"
    );
    for g in &e.groups {
        println!(
            "{:>5.1}% {:>9.3}  {:<12} {:<22} {:>5}  {}",
            100.0 * g.share,
            g.ms_per_run,
            g.runs_on,
            g.op,
            g.nodes,
            g.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
