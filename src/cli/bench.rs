//! `sparsec bench`: latency percentiles and throughput of a QA model on synthetic full-length
//! windows, like `deepsparse.benchmark`; `--compare` alternates two models in one process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ndarray::Array2;
use serde::Serialize;

use crate::runtime::{self, Backend, EngineKind, EngineOptions, HostTensor, Kernels};

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
    #[arg(long)]
    json: bool,
}

/// Latency and throughput of one model.
#[derive(Serialize)]
pub struct BenchResult {
    pub model: String,
    pub engine: EngineKind,
    pub kernels: Kernels,
    /// What the in-memory lowering rewrote (`-` when the model ran as it is).
    pub lowered: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub iterations: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub items_per_second: f64,
}

#[derive(Serialize)]
struct Report {
    results: Vec<BenchResult>,
    /// items/s of the first model over items/s of the --compare model.
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_ratio: Option<f64>,
}

/// Synthetic inputs for every declared input: token ids cycling through `[1000, 2000)` (or the
/// upper half of a smaller vocabulary, read from the `tokenizer.json` beside the model), attention
/// 1, token types 0 then 1.
fn inputs(backend: &dyn Backend, vocab: usize, batch: usize, seq: usize) -> Result<Vec<(String, HostTensor)>> {
    let lo = (vocab / 2).min(1000);
    let span = (vocab - lo).clamp(1, 1000);
    backend
        .input_names()
        .iter()
        .map(|name| {
            let a = match name.as_str() {
                "input_ids" => Array2::from_shape_fn((batch, seq), |(b, i)| (lo + (b * 31 + i * 7919) % span) as i64),
                "attention_mask" => Array2::from_elem((batch, seq), 1i64),
                "token_type_ids" => Array2::from_shape_fn((batch, seq), |(_, i)| (i >= seq / 2) as i64),
                other => bail!("cannot synthesise model input '{other}'"),
            };
            Ok((name.clone(), HostTensor::I64(a.into_dyn())))
        })
        .collect()
}

struct Subject {
    kernels: Kernels,
    lowered: String,
    path: PathBuf,
    backend: Box<dyn Backend>,
    feed: Vec<(String, HostTensor)>,
    times: Vec<Duration>,
}

impl Subject {
    fn load(path: &Path, engine: EngineKind, kernels: Kernels, profile: bool, args: &BenchArgs) -> Result<Subject> {
        let fixed = crate::qa::FixedShape::of_file(path)?;
        let fits = |dim: Option<usize>, asked: usize| dim.is_none_or(|d| d == asked);
        if !fits(fixed.batch, args.batch_size) || !fits(fixed.seq, args.seq_len) {
            bail!(
                "--batch-size {} --seq-len {} do not fit the inputs of '{}', fixed at {}",
                args.batch_size,
                args.seq_len,
                path.display(),
                fixed.describe()
            );
        }
        let opts = EngineOptions {
            threads: args.threads,
            sparse: kernels.sparse_execution(),
            profile: args.profile.clone().filter(|_| profile),
            ..Default::default()
        };
        let backend = runtime::load_file(path, engine, &opts)?;
        let lowered = lowering_summary(backend.as_ref());
        let vocab = crate::qa::QaTokenizer::for_model(path).map(|t| t.inner().get_vocab_size(true)).unwrap_or(2000);
        let feed = inputs(backend.as_ref(), vocab, args.batch_size, args.seq_len)?;
        Ok(Subject { path: path.to_path_buf(), backend, feed, times: Vec::new(), kernels, lowered })
    }

    fn step(&mut self) -> Result<Duration> {
        let feed: Vec<(&str, HostTensor)> = self.feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let t = Instant::now();
        self.backend.run(&feed)?;
        Ok(t.elapsed())
    }

    fn result(&self, args: &BenchArgs) -> BenchResult {
        let mut ms: Vec<f64> = self.times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (ms.len() - 1) as f64).round() as usize;
            ms[i.min(ms.len() - 1)]
        };
        let total: f64 = ms.iter().sum();
        BenchResult {
            model: self.path.display().to_string(),
            engine: self.backend.engine(),
            kernels: self.kernels,
            lowered: self.lowered.clone(),
            batch_size: args.batch_size,
            seq_len: args.seq_len,
            iterations: ms.len(),
            mean_ms: total / ms.len().max(1) as f64,
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            items_per_second: (ms.len() * args.batch_size) as f64 / (total / 1e3).max(f64::MIN_POSITIVE),
        }
    }
}

/// `"LowerSparseLinear 36, FuseAttention 6, FuseQkv 6"`, or `-` when nothing was lowered.
fn lowering_summary(b: &dyn Backend) -> String {
    match b.lowering() {
        Some(r) => r
            .iter()
            .filter(|r| r.pass != "RemoveDead")
            .map(|r| format!("{} {}", r.pass, r.rewritten))
            .collect::<Vec<_>>()
            .join(", "),
        None => "-".into(),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch_size == 0 || args.seq_len == 0 {
        bail!("--batch-size and --seq-len must be at least 1");
    }
    let mut subjects =
        vec![Subject::load(&super::resolve_model_path(&args.model), args.engine, args.kernels, true, &args)?];
    if let Some(other) = &args.compare {
        subjects.push(Subject::load(
            &super::resolve_model_path(other),
            args.compare_engine.unwrap_or(args.engine),
            args.compare_kernels,
            false,
            &args,
        )?);
    }
    let n = subjects.len() as f64;
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup * n);
    while Instant::now() < warm_until {
        for s in subjects.iter_mut() {
            s.step()?;
        }
    }
    let until = Instant::now() + Duration::from_secs_f64(args.seconds * n);
    while Instant::now() < until || subjects.iter().any(|s| s.times.is_empty()) {
        for s in subjects.iter_mut() {
            let d = s.step()?;
            s.times.push(d);
        }
    }
    let results: Vec<BenchResult> = subjects.iter().map(|s| s.result(&args)).collect();
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
