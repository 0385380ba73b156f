//! Windows → logits through a runtime [`Backend`]: batches windows across questions, pads each
//! batch to its longest window, feeds only the inputs the model declares, and hands each
//! question's logits to [`postprocess`](super::postprocess). A model exported with fixed input
//! dims ([`FixedShape`](super::model::FixedShape), SparseML's and DeepSparse's `[batch, 384]`) gets windows split at its
//! sequence length and padded to it, and its last batch padded to its batch size, as DeepSparse's
//! pipeline does with its `sequence_length`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

use super::features::{Window, WindowOptions, Windower};
use super::model::{FixedShape, ModelFile};
use super::postprocess::{decode, Answer, DecodeOptions, Decoder, WindowLogits};
use super::tokenize::QaTokenizer;
use crate::runtime::{Backend, EngineKind, EngineOptions, HostTensor, Kernels};

/// One question about one context.
#[derive(Clone, Debug)]
pub struct QaRequest {
    pub question: String,
    pub context: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

/// Start and end logits of one window, owned.
pub type StartEnd = (Vec<f32>, Vec<f32>);

/// A QA model (on an engine) with its tokenizer.
pub struct QaPipeline {
    backend: Box<dyn Backend>,
    pub tokenizer: QaTokenizer,
    feeds: Vec<(String, Feed)>,
    start_output: usize,
    end_output: usize,
    fixed: FixedShape,
}

/// A question's windows and the answers decoded from them.
pub struct Answered {
    pub answers: Vec<Answer>,
    pub windows: usize,
}

impl QaPipeline {
    /// Decodes `model` once, lowers it to sparsec's kernels as `kernels` asks, and loads it on
    /// `engine` with the `tokenizer.json` beside it.
    pub fn load(model: &Path, engine: EngineKind, kernels: Kernels, opts: &EngineOptions) -> Result<QaPipeline> {
        let tokenizer = QaTokenizer::for_model(model)?;
        let mut file = ModelFile::open(model)?;
        file.lower(engine, kernels)?;
        Self::from_model(&file, tokenizer, engine, opts)
    }

    /// Loads an already-decoded (and perhaps lowered) model on `engine`.
    pub fn from_model(
        file: &ModelFile,
        tokenizer: QaTokenizer,
        engine: EngineKind,
        opts: &EngineOptions,
    ) -> Result<QaPipeline> {
        let backend = file.load(engine, opts)?;
        let mut p = Self::new(backend, tokenizer).with_context(|| format!("model '{}'", file.path.display()))?;
        p.fixed = file.fixed;
        Ok(p)
    }

    /// Wraps a loaded model; fails unless it takes `input_ids` (and optionally `attention_mask`
    /// and `token_type_ids`) and returns start and end logits.
    pub fn new(backend: Box<dyn Backend>, tokenizer: QaTokenizer) -> Result<QaPipeline> {
        let mut feeds = Vec::new();
        for name in backend.input_names() {
            let feed = match name.as_str() {
                "input_ids" => Feed::InputIds,
                "attention_mask" => Feed::AttentionMask,
                "token_type_ids" => Feed::TokenTypeIds,
                other => bail!(
                    "unsupported model input '{other}': a QA model takes input_ids, attention_mask and optionally \
                     token_type_ids"
                ),
            };
            feeds.push((name.clone(), feed));
        }
        if !feeds.iter().any(|(_, f)| *f == Feed::InputIds) {
            bail!("the model has no 'input_ids' input");
        }
        let outs = backend.output_names();
        let find =
            |want: &str, fallback: usize| outs.iter().position(|o| o == want).or((outs.len() >= 2).then_some(fallback));
        let (Some(start_output), Some(end_output)) = (find("start_logits", 0), find("end_logits", 1)) else {
            bail!("the model must have start_logits and end_logits outputs, it has {outs:?}");
        };
        Ok(QaPipeline { backend, tokenizer, feeds, start_output, end_output, fixed: FixedShape::default() })
    }

    /// The input dims the model fixes (set by [`load`](Self::load); dynamic for [`new`](Self::new)).
    pub fn fixed_shape(&self) -> FixedShape {
        self.fixed
    }

    /// Sets the dims the model fixes, for a pipeline made with [`new`](Self::new).
    pub fn set_fixed_shape(&mut self, fixed: FixedShape) {
        self.fixed = fixed;
    }

    /// A window builder for `opts`, split at the model's fixed sequence length when it has one
    /// (which then replaces `opts.max_seq_len`, as in DeepSparse); an error naming the model's
    /// shape when the options cannot fit it.
    pub fn windower(&self, mut opts: WindowOptions) -> Result<Windower> {
        let Some(seq) = self.fixed.seq else { return self.tokenizer.windower(opts) };
        if opts.max_seq_len != seq {
            tracing::info!(
                "the model's inputs are fixed at {}: windows of {seq} tokens (not {})",
                self.fixed.describe(),
                opts.max_seq_len
            );
            opts.max_seq_len = seq;
        }
        self.tokenizer
            .windower(opts)
            .with_context(|| format!("the model's inputs are fixed at {}", self.fixed.describe()))
    }

    pub fn engine(&self) -> EngineKind {
        self.backend.engine()
    }

    /// Names of the inputs the model declares.
    pub fn input_names(&self) -> Vec<&str> {
        self.feeds.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Builds the padded input tensors of a batch of windows: rows padded to the longest window,
    /// or to the model's fixed sequence length, and (with a fixed batch size) padding rows added.
    pub fn batch_inputs(&self, windows: &[&Window]) -> Vec<(String, HostTensor)> {
        let len = self.fixed.seq.unwrap_or_else(|| windows.iter().map(|w| w.len()).max().unwrap_or(0));
        let rows = self.fixed.batch.unwrap_or(windows.len()).max(windows.len());
        let fill = |f: Feed| {
            let pad = if f == Feed::InputIds { self.tokenizer.pad_id } else { 0 };
            let mut a = Array2::from_elem((rows, len), pad);
            for (mut row, w) in a.axis_iter_mut(Axis(0)).zip(windows) {
                let src = match f {
                    Feed::InputIds => &w.input_ids,
                    Feed::AttentionMask => &w.attention_mask,
                    Feed::TokenTypeIds => &w.type_ids,
                };
                for (d, s) in row.iter_mut().zip(src) {
                    *d = *s;
                }
            }
            HostTensor::I64(a.into_dyn())
        };
        self.feeds.iter().map(|(n, f)| (n.clone(), fill(*f))).collect()
    }

    /// Runs one batch; returns each window's (start, end) logits cut to its length. With a fixed
    /// batch size the windows run in groups of that size, the last padded with empty rows.
    pub fn run_batch(&mut self, windows: &[&Window]) -> Result<Vec<StartEnd>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(b) = self.fixed.batch.filter(|&b| b > 0 && windows.len() > b) {
            let mut out = Vec::with_capacity(windows.len());
            for chunk in windows.chunks(b) {
                out.extend(self.run_batch(chunk)?);
            }
            return Ok(out);
        }
        if let Some(seq) = self.fixed.seq {
            if let Some(w) = windows.iter().find(|w| w.len() > seq) {
                bail!("a window of {} tokens does not fit the model's fixed inputs {}", w.len(), self.fixed.describe());
            }
        }
        let inputs = self.batch_inputs(windows);
        let feed: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let mut out = self.backend.run(&feed)?;
        let end = std::mem::replace(&mut out[self.end_output].1, HostTensor::Bool(ndarray::ArrayD::default(vec![0])));
        let start = out.swap_remove(self.start_output).1.into_f32().context("start logits")?;
        let end = end.into_f32().context("end logits")?;
        let shape = inputs.first().map(|(_, t)| t.shape().to_vec()).unwrap_or_default();
        if start.shape() != shape || end.shape() != shape {
            bail!("the model returned logits of shape {:?}/{:?}, expected {:?}", start.shape(), end.shape(), shape);
        }
        Ok(windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let s = start.index_axis(Axis(0), i).iter().take(w.len()).copied().collect();
                let e = end.index_axis(Axis(0), i).iter().take(w.len()).copied().collect();
                (s, e)
            })
            .collect())
    }

    /// Answers many questions: windows of all of them are sorted by length and run in batches of
    /// `batch_size`, then each question is decoded. One result per request, errors kept per
    /// request (an empty question fails alone).
    pub fn answer(
        &mut self,
        windower: &Windower,
        requests: &[QaRequest],
        batch_size: usize,
        decoder: Decoder,
        opts: &DecodeOptions,
        mut on_batch: impl FnMut(usize),
    ) -> Result<Vec<Result<Answered>>> {
        let fixed = self.fixed;
        let windows: Vec<Result<Vec<Window>>> = requests
            .par_iter()
            .map(|r| {
                let ws = windower.windows(&r.question, &r.context);
                match fixed.seq {
                    Some(_) => ws.with_context(|| format!("the model's inputs are fixed at {}", fixed.describe())),
                    None => ws,
                }
            })
            .collect();
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (q, ws) in windows.iter().enumerate() {
            if let Ok(ws) = ws {
                order.extend((0..ws.len()).map(|i| (q, i)));
            }
        }
        let lens = |&(q, i): &(usize, usize)| windows[q].as_ref().map(|w| w[i].len()).unwrap_or(0);
        order.sort_by_key(|k| std::cmp::Reverse(lens(k)));
        let mut logits: Vec<Vec<Option<StartEnd>>> =
            windows.iter().map(|w| w.as_ref().map(|w| vec![None; w.len()]).unwrap_or_default()).collect();
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&Window> =
                chunk.iter().map(|&(q, i)| &windows[q].as_ref().expect("only ok requests are batched")[i]).collect();
            let out = self.run_batch(&batch)?;
            for (&(q, i), l) in chunk.iter().zip(out) {
                logits[q][i] = Some(l);
            }
            on_batch(chunk.len());
        }
        Ok(windows
            .into_iter()
            .zip(logits)
            .zip(requests)
            .map(|((ws, ls), r)| {
                let ws = ws?;
                let ls: Vec<(Vec<f32>, Vec<f32>)> = ls.into_iter().map(|l| l.expect("every window ran")).collect();
                let views: Vec<WindowLogits> = ls.iter().map(|(s, e)| WindowLogits { start: s, end: e }).collect();
                Ok(Answered { answers: decode(decoder, &ws, &views, &r.context, opts), windows: ws.len() })
            })
            .collect())
    }

    /// Answers one question.
    pub fn answer_one(
        &mut self,
        question: &str,
        context: &str,
        window_opts: WindowOptions,
        decoder: Decoder,
        opts: &DecodeOptions,
        batch_size: usize,
    ) -> Result<Vec<Answer>> {
        let windower = self.windower(window_opts)?;
        let req = [QaRequest { question: question.to_string(), context: context.to_string() }];
        let mut out = self.answer(&windower, &req, batch_size, decoder, opts, |_| {})?;
        Ok(out.pop().expect("one result per request")?.answers)
    }
}
