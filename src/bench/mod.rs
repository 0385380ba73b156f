//! Latency and throughput of QA models on synthetic full-length windows, behind `sparsec bench`
//! and `sparsec sparsify`: several models run alternately in one process, so their ratio is
//! measured under the same load. [`explain`] says what runs where.

pub mod explain;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ndarray::Array2;
use serde::Serialize;

use crate::runtime::{Backend, EngineKind, EngineOptions, HostTensor, Kernels};

/// What every model of one benchmark runs with.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    pub batch_size: usize,
    pub seq_len: usize,
    pub threads: Option<usize>,
    /// Measured time per model.
    pub seconds: f64,
    /// Unmeasured warm-up time per model.
    pub warmup: f64,
    /// ONNX Runtime profile prefix for the models that ask for it.
    pub profile: Option<PathBuf>,
}

/// One model of a benchmark.
#[derive(Clone, Debug)]
pub struct BenchModel {
    pub path: PathBuf,
    pub engine: EngineKind,
    pub kernels: Kernels,
    pub profile: bool,
    /// Sessions sharing the threads, each running one sequence of the batch at a time
    /// ([`crate::runtime::Streams`]); 0 or 1: one session runs the whole batch.
    pub streams: usize,
}

/// Latency and throughput of one model.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub engine: EngineKind,
    pub kernels: Kernels,
    /// What the in-memory lowering rewrote (`-` when the model ran as it is).
    pub lowered: String,
    /// Sessions running the batch's sequences at once (1: the whole batch in one session).
    pub streams: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub iterations: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub items_per_second: f64,
}

/// [`inputs`] with the vocabulary size of the `tokenizer.json` beside `model` (2000 without one).
fn synthetic_inputs(
    backend: &dyn Backend,
    model: &std::path::Path,
    batch: usize,
    seq: usize,
) -> Result<Vec<(String, HostTensor)>> {
    let vocab = crate::qa::QaTokenizer::for_model(model).map(|t| t.inner().get_vocab_size(true)).unwrap_or(2000);
    inputs(backend, vocab, batch, seq)
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
    streams: usize,
    lowered: String,
    path: PathBuf,
    backend: Box<dyn Backend>,
    feed: Vec<(String, HostTensor)>,
    times: Vec<Duration>,
    /// Sum of `times`.
    measured: Duration,
}

impl Subject {
    fn load(m: &BenchModel, args: &BenchSettings) -> Result<Subject> {
        let (path, engine, kernels) = (m.path.as_path(), m.engine, m.kernels);
        let mut file = crate::qa::ModelFile::open(path)?;
        let fixed = file.fixed;
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
            profile: args.profile.clone().filter(|_| m.profile),
            streams: m.streams,
            ..Default::default()
        };
        file.lower(engine, kernels)?;
        let backend = file.load(engine, &opts)?;
        let lowered = lowering_summary(file.lowering());
        let feed = synthetic_inputs(backend.as_ref(), path, args.batch_size, args.seq_len)?;
        Ok(Subject {
            streams: m.streams.max(1),
            path: path.to_path_buf(),
            backend,
            feed,
            times: Vec::new(),
            measured: Duration::ZERO,
            kernels,
            lowered,
        })
    }

    fn step(&mut self) -> Result<Duration> {
        let feed: Vec<(&str, HostTensor)> = self.feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let t = Instant::now();
        self.backend.run(&feed)?;
        Ok(t.elapsed())
    }

    fn result(&self, args: &BenchSettings) -> BenchResult {
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
            streams: self.streams,
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
fn lowering_summary(reports: Option<&[crate::passes::PassReport]>) -> String {
    match reports {
        Some(r) => r
            .iter()
            .filter(|r| r.pass != "RemoveDead")
            .map(|r| format!("{} {}", r.pass, r.rewritten))
            .collect::<Vec<_>>()
            .join(", "),
        None => "-".into(),
    }
}

/// Time slice each model runs for before the next one takes over.
const SLICE: Duration = Duration::from_secs(1);
/// Uncounted time at the start of each slice (at least one run).
const SETTLE: Duration = Duration::from_millis(250);

/// Runs `models` in turn, in slices of about [`SLICE`] each (warm-up, then the measured time), and
/// returns one result each. The first [`SETTLE`] of every slice (at least one run) is not counted:
/// ONNX Runtime's idle intra-op threads keep spinning for a while after a run, so a session that
/// follows another one immediately shares the cores with the other's spinning pool (alternating
/// every run made an 80%-sparse MiniLM 1.75x slower, and dense fp32 1.2x, on 2 cores).
pub fn bench(models: &[BenchModel], args: &BenchSettings) -> Result<Vec<BenchResult>> {
    if args.batch_size == 0 || args.seq_len == 0 {
        bail!("--batch-size and --seq-len must be at least 1");
    }
    for (flag, x) in [("--seconds", args.seconds), ("--warmup", args.warmup)] {
        if !(x.is_finite() && (0.0..=1e6).contains(&x)) {
            bail!("{flag} must be a number of seconds from 0 to 1000000, got {x}");
        }
    }
    let mut subjects = Vec::new();
    for m in models {
        subjects.push(Subject::load(m, args)?);
    }
    for s in subjects.iter_mut() {
        let until = Instant::now() + Duration::from_secs_f64(args.warmup);
        s.step()?;
        while Instant::now() < until {
            s.step()?;
        }
    }
    let measured = Duration::from_secs_f64(args.seconds);
    while subjects.iter().any(|s| s.measured < measured || s.times.is_empty()) {
        for s in subjects.iter_mut().filter(|s| s.measured < measured || s.times.is_empty()) {
            let settle = Instant::now() + SETTLE;
            s.step()?;
            while Instant::now() < settle {
                s.step()?;
            }
            let until = Instant::now() + SLICE.min(measured.saturating_sub(s.measured));
            loop {
                let d = s.step()?;
                s.times.push(d);
                s.measured += d;
                if Instant::now() >= until {
                    break;
                }
            }
        }
    }
    Ok(subjects.iter().map(|s| s.result(args)).collect())
}
