//! Training data: SQuAD examples → training windows (run_qa.py's `prepare_train_features`, built
//! in parallel) → shuffled, padded batches with target positions; and [`Data`], everything a run
//! reads before its first step: the compiled folder, the tokenizer, the windows and the
//! evaluation questions.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::config::TrainConfig;
use crate::compile::Compiled;
use crate::ir::Model;
use crate::qa::features::{TrainWindow, Windower};
use crate::qa::squad::{self, Example};
use crate::qa::{QaTokenizer, WindowOptions};
use crate::runtime::HostTensor;

/// Training windows of `examples`: the first reference answer's token span, or the CLS token when
/// the answer is not inside a window (and for unanswerable questions).
pub fn train_windows(examples: &[Example], windower: &Windower) -> Result<Vec<TrainWindow>> {
    let per: Vec<Result<Vec<TrainWindow>>> = examples
        .par_iter()
        .map(|e| {
            let answer = e.answers.iter().find_map(|a| a.answer_start.map(|s| (s, a.text.chars().count())));
            let ws = match answer {
                Some((start, chars)) => windower.train_windows(&e.question, &e.context, start, chars),
                None => windower.train_windows(&e.question, &e.context, usize::MAX / 2, 0),
            };
            ws.with_context(|| format!("training example '{}'", e.id))
        })
        .collect();
    let mut out = Vec::new();
    for ws in per {
        out.extend(ws?);
    }
    Ok(out)
}

/// Training examples whose answer (the first with an `answer_start`, the one trained on) does not
/// match the context: `answer_start` beyond the context, or `text` not what the context holds at
/// `answer_start`. They are trained as `run_qa.py` trains them (it checks nothing): the
/// character span `[answer_start, answer_start + len(text))` is labelled where a window holds it,
/// so an answer beyond the context is labelled at CLS in every window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerCheck {
    /// Ids of the examples whose `answer_start` is at or past the end of the context (or whose
    /// span runs past it).
    pub beyond_context: Vec<String>,
    /// Ids of the examples whose answer text differs from the context at `answer_start`.
    pub text_differs: Vec<String>,
}

/// How many ids a message lists.
const IDS_SHOWN: usize = 5;

impl AnswerCheck {
    pub fn count(&self) -> usize {
        self.beyond_context.len() + self.text_differs.len()
    }

    /// One line: the counts and the first few ids of each kind.
    pub fn summary(&self) -> String {
        let list = |ids: &[String]| {
            let shown: Vec<&str> = ids.iter().take(IDS_SHOWN).map(String::as_str).collect();
            let more =
                if ids.len() > IDS_SHOWN { format!(", … {} more", ids.len() - IDS_SHOWN) } else { String::new() };
            format!("{}{more}", shown.join(", "))
        };
        let mut parts = Vec::new();
        if !self.beyond_context.is_empty() {
            parts.push(format!(
                "{} with answer_start beyond the context ({})",
                self.beyond_context.len(),
                list(&self.beyond_context)
            ));
        }
        if !self.text_differs.is_empty() {
            parts.push(format!(
                "{} whose answer text differs from the context at answer_start ({})",
                self.text_differs.len(),
                list(&self.text_differs)
            ));
        }
        format!("{} training answers do not match their context: {}", self.count(), parts.join("; "))
    }
}

/// Checks the answer each example is trained on against its context (characters are Unicode
/// scalar values, as Python's `str` indexes them).
pub fn check_answers(examples: &[Example]) -> AnswerCheck {
    let mut check = AnswerCheck::default();
    for e in examples {
        let Some((start, text)) = e.answers.iter().find_map(|a| a.answer_start.map(|s| (s, a.text.as_str()))) else {
            continue;
        };
        let len = text.chars().count();
        let ctx_len = e.context.chars().count();
        if start >= ctx_len || start + len > ctx_len {
            check.beyond_context.push(e.id.clone());
        } else if !e.context.chars().skip(start).take(len).eq(text.chars()) {
            check.text_differs.push(e.id.clone());
        }
    }
    check
}

/// The order in which epoch `epoch` visits `n` windows: a permutation that depends only on
/// `(seed, epoch)`, so a resumed run sees the same batches.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch);
    order.shuffle(&mut rng);
    order
}

/// Windows per length-sorted group, in batches (HF `LengthGroupedSampler`'s megabatch).
pub const LENGTH_GROUP_BATCHES: usize = 50;

/// The order of epoch `epoch` with length grouping (HF `group_by_length`): the epoch's
/// permutation ([`epoch_order`]) cut into groups of [`LENGTH_GROUP_BATCHES`] batches, each group
/// sorted by window length (longest first, ties in permutation order) and cut into batches, and
/// the full batches shuffled among themselves; a last, partial batch stays last. Each batch is
/// then padded to nearly its own windows' length. Depends only on `(lengths, batch, seed,
/// epoch)`, so a resumed run sees the same batches.
pub fn grouped_epoch_order(lengths: &[usize], batch: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = epoch_order(lengths.len(), seed, epoch);
    let batch = batch.max(1);
    for group in order.chunks_mut(batch * LENGTH_GROUP_BATCHES) {
        group.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let full = order.len() / batch;
    let mut batches: Vec<usize> = (0..full).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ epoch);
    batches.shuffle(&mut rng);
    let mut out: Vec<usize> = batches.iter().flat_map(|&b| order[b * batch..(b + 1) * batch].iter().copied()).collect();
    out.extend_from_slice(&order[full * batch..]);
    out
}

/// Which token inputs the model takes.
#[derive(Clone, Debug)]
pub struct BatchLayout {
    pub pad_id: i64,
    pub token_type_ids: bool,
    pub attention_mask: bool,
    /// Pad every batch to this length (HF `pad_to_max_length`); otherwise to its longest window.
    pub pad_to: Option<usize>,
}

impl BatchLayout {
    /// Model inputs (`input_ids`, `attention_mask`, `token_type_ids` as the model takes them).
    pub fn model_inputs(&self, windows: &[&TrainWindow]) -> Vec<(&'static str, HostTensor)> {
        let longest = windows.iter().map(|w| w.window.len()).max().unwrap_or(0);
        let len = self.pad_to.unwrap_or(longest).max(longest);
        let fill = |pad: i64, pick: &dyn Fn(&TrainWindow) -> &[i64]| {
            let mut a = Array2::from_elem((windows.len(), len), pad);
            for (r, w) in windows.iter().enumerate() {
                for (c, &v) in pick(w).iter().enumerate() {
                    a[[r, c]] = v;
                }
            }
            HostTensor::I64(a.into_dyn())
        };
        let mut out = vec![("input_ids", fill(self.pad_id, &|w| &w.window.input_ids))];
        if self.attention_mask {
            out.push(("attention_mask", fill(0, &|w| &w.window.attention_mask)));
        }
        if self.token_type_ids {
            out.push(("token_type_ids", fill(0, &|w| &w.window.type_ids)));
        }
        out
    }

    /// Model inputs plus `start_positions` / `end_positions`.
    pub fn training_inputs(&self, windows: &[&TrainWindow]) -> Vec<(&'static str, HostTensor)> {
        let mut out = self.model_inputs(windows);
        let pos = |f: &dyn Fn(&TrainWindow) -> usize| {
            HostTensor::I64(ndarray::Array1::from_iter(windows.iter().map(|w| f(w) as i64)).into_dyn())
        };
        out.push(("start_positions", pos(&|w| w.start_position)));
        out.push(("end_positions", pos(&|w| w.end_position)));
        out
    }
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
    pub fn load(cfg: &TrainConfig) -> Result<Data> {
        if cfg.batch_size == 0 || cfg.eval_batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        let compiled = Compiled::open(&cfg.compiled)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(100, 42, 0);
        assert_eq!(a, epoch_order(100, 42, 0));
        assert_ne!(a, epoch_order(100, 42, 1));
        assert_ne!(a, epoch_order(100, 43, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn grouped_orders_pad_less_and_keep_every_window_once() {
        let lengths: Vec<usize> = (0..1003).map(|i| 20 + (i * 7919) % 365).collect();
        let batch = 16;
        let a = grouped_epoch_order(&lengths, batch, 7, 3);
        assert_eq!(a, grouped_epoch_order(&lengths, batch, 7, 3));
        assert_ne!(a, grouped_epoch_order(&lengths, batch, 7, 4));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..lengths.len()).collect::<Vec<_>>());
        let padded = |o: &[usize]| -> usize {
            o.chunks(batch).map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum()
        };
        let random = epoch_order(lengths.len(), 7, 3);
        let (grouped, shuffled): (usize, usize) = (padded(&a), padded(&random));
        let real: usize = lengths.iter().sum();
        assert!(grouped < shuffled, "grouped {grouped} vs shuffled {shuffled}");
        assert!((grouped as f64) < 1.1 * real as f64, "grouped {grouped} padded tokens for {real} real");
        let last = &a[a.len() - lengths.len() % batch..];
        assert_eq!(last.len(), 1003 % 16);
        for b in a[..a.len() - last.len()].chunks(batch) {
            let group = |i: usize| random.iter().position(|&x| x == i).unwrap() / (batch * LENGTH_GROUP_BATCHES);
            assert!(b.iter().all(|&i| group(i) == group(b[0])), "a batch mixes length groups");
        }
    }
}
