//! Batches that stay in cache: a batch split along its first axis into small pieces (one
//! sequence each by default), run through the whole model on several single-thread sessions of
//! the same model at once, and put back together in order.
//!
//! One sequence's activations (MiniLM at 384 tokens: 384 × 1536 f32 for the FFN, 2.4 MB) stay
//! near the core that made them through every layer, where a whole batch of 16 streams
//! 16 times as much through memory at every node, and each core runs its own sequence without
//! waiting for the other at every node. Outputs are the same values as one run of the whole
//! batch: every piece runs the same graph on its own rows (tested).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use ndarray::{concatenate, ArrayD, Axis};

use super::{Backend, EngineKind, HostTensor};

/// A run's named outputs.
type Outputs = Vec<(String, HostTensor)>;

/// Several sessions of one model, each on one thread, sharing the rows of a batch.
pub struct Streams {
    sessions: Vec<Mutex<Box<dyn Backend>>>,
    /// Rows per piece.
    piece: usize,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Streams {
    /// `sessions` must be sessions of the same model (at least one).
    pub fn new(sessions: Vec<Box<dyn Backend>>, piece: usize) -> Result<Streams> {
        let first = sessions.first().context("streams need at least one session")?;
        let (inputs, outputs) = (first.input_names().to_vec(), first.output_names().to_vec());
        Ok(Streams { sessions: sessions.into_iter().map(Mutex::new).collect(), piece: piece.max(1), inputs, outputs })
    }

    pub fn streams(&self) -> usize {
        self.sessions.len()
    }
}

impl Backend for Streams {
    fn engine(&self) -> EngineKind {
        self.sessions[0].lock().unwrap_or_else(|p| p.into_inner()).engine()
    }
    fn input_names(&self) -> &[String] {
        &self.inputs
    }
    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let Some(rows) = inputs.first().and_then(|(_, t)| t.shape().first().copied()) else {
            return self.sessions[0].get_mut().unwrap_or_else(|p| p.into_inner()).run(inputs);
        };
        for (name, t) in inputs {
            if t.shape().first() != Some(&rows) {
                bail!(
                    "input '{name}' has {:?} rows, the first input {rows}: a batch splits along its first axis",
                    t.shape().first()
                );
            }
        }
        let pieces: Vec<(usize, usize)> =
            (0..rows).step_by(self.piece).map(|lo| (lo, (lo + self.piece).min(rows))).collect();
        if pieces.len() <= 1 || self.sessions.len() == 1 {
            return self.sessions[0].get_mut().unwrap_or_else(|p| p.into_inner()).run(inputs);
        }
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Outputs>>>> = pieces.iter().map(|_| Mutex::new(None)).collect();
        let work = |session: &Mutex<Box<dyn Backend>>| {
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(lo, hi)) = pieces.get(i) else { break };
                let piece: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (*n, t.rows(lo, hi))).collect();
                let out = s.run(&piece);
                let failed = out.is_err();
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
                if failed {
                    break;
                }
            }
        };
        std::thread::scope(|scope| {
            let (first, rest) = self.sessions.split_first().expect("at least one session");
            for s in rest {
                scope.spawn(|| work(s));
            }
            work(first);
        });
        let mut outs: Vec<Vec<(String, HostTensor)>> = Vec::with_capacity(pieces.len());
        for (i, r) in results.into_iter().enumerate() {
            let r = r.into_inner().unwrap_or_else(|p| p.into_inner());
            let (lo, hi) = pieces[i];
            outs.push(r.with_context(|| format!("rows {lo}..{hi} of the batch did not run"))??);
        }
        concat_rows(outs, rows)
    }
}

/// The pieces' outputs put back together along the first axis; each output must have one row per
/// input row.
fn concat_rows(outs: Vec<Vec<(String, HostTensor)>>, rows: usize) -> Result<Vec<(String, HostTensor)>> {
    let names: Vec<String> = outs[0].iter().map(|(n, _)| n.clone()).collect();
    let mut columns: Vec<Vec<HostTensor>> = names.iter().map(|_| Vec::with_capacity(outs.len())).collect();
    for out in outs {
        for (j, (_, t)) in out.into_iter().enumerate() {
            columns[j].push(t);
        }
    }
    names
        .into_iter()
        .zip(columns)
        .map(|(name, parts)| {
            let t = HostTensor::concat_rows(&parts).with_context(|| format!("output '{name}'"))?;
            if t.shape().first() != Some(&rows) {
                bail!("output '{name}' has no row per batch row (shape {:?}): the batch cannot be split", t.shape());
            }
            Ok((name, t))
        })
        .collect()
}

fn cat<T: Clone>(parts: &[&ArrayD<T>]) -> Result<ArrayD<T>> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    concatenate(Axis(0), &views).context("pieces of different shapes")
}

impl HostTensor {
    /// Rows `lo..hi` of the first axis.
    pub fn rows(&self, lo: usize, hi: usize) -> HostTensor {
        fn s<T: Clone>(a: &ArrayD<T>, lo: usize, hi: usize) -> ArrayD<T> {
            a.slice_axis(Axis(0), (lo..hi).into()).to_owned()
        }
        match self {
            HostTensor::F32(a) => HostTensor::F32(s(a, lo, hi)),
            HostTensor::I64(a) => HostTensor::I64(s(a, lo, hi)),
            HostTensor::I32(a) => HostTensor::I32(s(a, lo, hi)),
            HostTensor::I8(a) => HostTensor::I8(s(a, lo, hi)),
            HostTensor::U8(a) => HostTensor::U8(s(a, lo, hi)),
            HostTensor::Bool(a) => HostTensor::Bool(s(a, lo, hi)),
        }
    }

    /// Tensors of one type joined along the first axis.
    pub fn concat_rows(parts: &[HostTensor]) -> Result<HostTensor> {
        macro_rules! join {
            ($variant:ident) => {{
                let arrays: Option<Vec<_>> =
                    parts.iter().map(|p| if let HostTensor::$variant(a) = p { Some(a) } else { None }).collect();
                HostTensor::$variant(cat(&arrays.context("pieces of different types")?)?)
            }};
        }
        Ok(match parts.first().context("no pieces")? {
            HostTensor::F32(_) => join!(F32),
            HostTensor::I64(_) => join!(I64),
            HostTensor::I32(_) => join!(I32),
            HostTensor::I8(_) => join!(I8),
            HostTensor::U8(_) => join!(U8),
            HostTensor::Bool(_) => join!(Bool),
        })
    }
}
