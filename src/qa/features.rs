//! Question/context pairs → model windows ("features"), exactly as the Hugging Face
//! question-answering pipeline (fast tokenizer, question first) and `run_qa.py` build them: one
//! `only_second` truncation with overflowing windows that share `doc_stride` tokens, character
//! offsets, sequence ids and a `p_mask`. Also the training features `sparsec train` needs (answer
//! start/end token positions, CLS where the answer is not inside a window).

use anyhow::{anyhow, bail, Result};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::tokenize::QaTokenizer;

/// How a question/context pair is cut into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowOptions {
    /// Tokens per window, special tokens included.
    pub max_seq_len: usize,
    /// Tokens that consecutive windows share (not the step between them).
    pub doc_stride: usize,
    /// Questions longer than this many tokens are cut to it. The HF pipeline with a fast tokenizer
    /// ignores this setting; it only matters for questions longer than it (none in SQuAD v1.1).
    pub max_question_len: usize,
}

impl WindowOptions {
    /// The HF pipeline's defaults for a given window length: stride `min(max_seq_len / 2, 128)`.
    pub fn new(max_seq_len: usize) -> WindowOptions {
        WindowOptions { max_seq_len, doc_stride: (max_seq_len / 2).min(128), max_question_len: 64 }
    }
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions::new(384)
    }
}

/// One model input row: `[CLS] question [SEP] context-slice [SEP]` (or the model's equivalent).
#[derive(Clone, Debug)]
pub struct Window {
    pub input_ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    /// Character offsets into the question (sequence 0) or the context (sequence 1).
    pub offsets: Vec<(usize, usize)>,
    pub sequence_ids: Vec<Option<usize>>,
    /// `true` where a token cannot be part of an answer: everything outside the context except
    /// the CLS token(s), as the HF pipeline sets it.
    pub p_mask: Vec<bool>,
    /// The window's tokenizer encoding (word ids for aligning answers to whole words).
    pub encoding: Encoding,
}

impl Window {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Index of the first context token and one past the last one.
    pub fn context_range(&self) -> Option<(usize, usize)> {
        let first = self.sequence_ids.iter().position(|s| *s == Some(1))?;
        let last = self.sequence_ids.iter().rposition(|s| *s == Some(1))?;
        Some((first, last + 1))
    }
}

/// Builds windows for one set of [`WindowOptions`]; cheap to share across threads.
pub struct Windower {
    plain: Tokenizer,
    pair: Tokenizer,
    opts: WindowOptions,
    added: usize,
}

impl QaTokenizer {
    /// A window builder for `opts`; fails when the options cannot produce a window.
    pub fn windower(&self, opts: WindowOptions) -> Result<Windower> {
        if opts.max_question_len == 0 {
            bail!("--max-question-len must be at least 1");
        }
        let room = opts.max_seq_len.saturating_sub(self.added_pair_tokens);
        if opts.doc_stride >= room {
            bail!(
                "--doc-stride {} must be smaller than --max-seq-len {} minus the {} special tokens of a window",
                opts.doc_stride,
                opts.max_seq_len,
                self.added_pair_tokens
            );
        }
        let mut pair = self.inner.clone();
        pair.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: opts.max_seq_len,
            strategy: TruncationStrategy::OnlySecond,
            stride: opts.doc_stride,
        }))
        .map_err(|e| anyhow!("{e}"))?;
        Ok(Windower { plain: self.inner.clone(), pair, opts, added: self.added_pair_tokens })
    }
}

impl Windower {
    pub fn options(&self) -> WindowOptions {
        self.opts
    }

    /// The windows of one question/context pair, in context order.
    pub fn windows(&self, question: &str, context: &str) -> Result<Vec<Window>> {
        if question.trim().is_empty() {
            bail!("the question is empty");
        }
        if context.trim().is_empty() {
            bail!("the context is empty");
        }
        let (question, question_tokens) = self.cut_question(question)?;
        let room = self.opts.max_seq_len.saturating_sub(self.added + question_tokens);
        if self.opts.doc_stride >= room {
            bail!(
                "the question ({question_tokens} tokens) leaves {room} context tokens per window, not more than \
                 --doc-stride {}: raise --max-seq-len or lower --max-question-len or --doc-stride",
                self.opts.doc_stride
            );
        }
        let mut enc = self.pair.encode_char_offsets((question, context), true).map_err(|e| anyhow!("{e}"))?;
        let overflow = enc.take_overflowing();
        let mut out = Vec::with_capacity(1 + overflow.len());
        for mut e in std::iter::once(enc).chain(overflow) {
            e.take_overflowing();
            out.push(window_from(e));
        }
        Ok(out)
    }

    /// The question, cut after its `max_question_len`-th token when it is longer.
    fn cut_question<'a>(&self, question: &'a str) -> Result<(&'a str, usize)> {
        let enc = self.plain.encode(question, false).map_err(|e| anyhow!("{e}"))?;
        if enc.len() <= self.opts.max_question_len {
            return Ok((question, enc.len()));
        }
        let end = enc.get_offsets()[self.opts.max_question_len - 1].1;
        let cut = question.get(..end).unwrap_or(question);
        let n = self.plain.encode(cut, false).map_err(|e| anyhow!("{e}"))?.len();
        Ok((cut, n))
    }
}

fn window_from(e: Encoding) -> Window {
    let sequence_ids = e.get_sequence_ids();
    let specials = e.get_special_tokens_mask();
    let cls = if specials.first() == Some(&1) { e.get_ids().first().copied() } else { None };
    let p_mask = sequence_ids.iter().zip(e.get_ids()).map(|(s, id)| *s != Some(1) && Some(*id) != cls).collect();
    Window {
        input_ids: e.get_ids().iter().map(|&i| i as i64).collect(),
        type_ids: e.get_type_ids().iter().map(|&i| i as i64).collect(),
        attention_mask: e.get_attention_mask().iter().map(|&i| i as i64).collect(),
        offsets: e.get_offsets().to_vec(),
        sequence_ids,
        p_mask,
        encoding: e,
    }
}

/// A training window with its target token positions (both 0, the CLS token, when the answer is
/// not wholly inside the window), as `run_qa.py`'s `prepare_train_features` computes them.
#[derive(Clone, Debug)]
pub struct TrainWindow {
    pub window: Window,
    pub start_position: usize,
    pub end_position: usize,
}

impl Windower {
    /// Training windows for a question whose answer starts at character `answer_start` of
    /// `context` and spans `answer_chars` characters.
    pub fn train_windows(
        &self,
        question: &str,
        context: &str,
        answer_start: usize,
        answer_chars: usize,
    ) -> Result<Vec<TrainWindow>> {
        let start_char = answer_start;
        let end_char = answer_start.saturating_add(answer_chars);
        let windows = self.windows(question, context)?;
        Ok(windows
            .into_iter()
            .map(|w| {
                let cls = w.p_mask.iter().position(|m| !m).filter(|&i| w.sequence_ids[i].is_none()).unwrap_or(0);
                let (start_position, end_position) = match w.context_range() {
                    Some((first, end)) if w.offsets[first].0 <= start_char && w.offsets[end - 1].1 >= end_char => {
                        let mut s = first;
                        while s < end && w.offsets[s].0 <= start_char {
                            s += 1;
                        }
                        let mut e = end - 1;
                        while e >= first && w.offsets[e].1 >= end_char {
                            if e == 0 {
                                break;
                            }
                            e -= 1;
                        }
                        (s - 1, e + 1)
                    }
                    _ => (cls, cls),
                };
                TrainWindow { window: w, start_position, end_position }
            })
            .collect())
    }
}
