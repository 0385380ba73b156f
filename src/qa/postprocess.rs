//! Model logits of a question's windows → ranked answers. Two decoders:
//! - [`Decoder::Pipeline`]: the Hugging Face `QuestionAnsweringPipeline` (transformers 4.57)
//!   `postprocess`: per window a softmax over the masked logits, span score
//!   `p_start[s] * p_end[e]`, the top `2 * top_k + 10` spans aligned to whole words, answers with
//!   the same lower-cased text merged by adding their scores, the null answer scored
//!   `min over windows of p_start[0] * p_end[0]`.
//! - [`Decoder::Squad`]: `run_qa.py`'s `postprocess_qa_predictions`: the `n_best` start and end
//!   logits of each window, span score `start_logit + end_logit` compared across windows,
//!   character spans straight from token offsets, SQuAD v2 null answer when
//!   `null_score - best_score > null_score_diff_threshold`.

use std::collections::hash_map::{Entry, HashMap};

use serde::Serialize;

use super::features::Window;

/// Which post-processing turns logits into answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// The HF question-answering pipeline (probability scores, word-aligned spans).
    Pipeline,
    /// `run_qa.py` (n-best logit sums), as SQuAD evaluations are reported.
    Squad,
}

/// Settings of both decoders.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    pub top_k: usize,
    /// Longest answer in tokens.
    pub max_answer_len: usize,
    /// Also consider the empty answer (SQuAD v2).
    pub handle_impossible_answer: bool,
    /// Pipeline: widen spans to whole words.
    pub align_to_words: bool,
    /// Squad: start and end candidates per window.
    pub n_best: usize,
    /// Squad, v2: the empty answer wins when `null_score - best_score` exceeds this.
    pub null_score_diff_threshold: f32,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            align_to_words: true,
            n_best: 20,
            null_score_diff_threshold: 0.0,
        }
    }
}

/// One answer: `answer == context[start..end]` in characters; the empty answer is `("", 0, 0)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    pub answer: String,
    pub score: f64,
    pub start: usize,
    pub end: usize,
}

/// The start and end logits of one window, one value per token of the window.
pub struct WindowLogits<'a> {
    pub start: &'a [f32],
    pub end: &'a [f32],
}

/// Decodes the answers of one question from the logits of all its windows.
pub fn decode(
    decoder: Decoder,
    windows: &[Window],
    logits: &[WindowLogits<'_>],
    context: &str,
    opts: &DecodeOptions,
) -> Vec<Answer> {
    let chars = CharIndex::new(context);
    match decoder {
        Decoder::Pipeline => decode_pipeline(windows, logits, &chars, opts),
        Decoder::Squad => decode_squad(windows, logits, &chars, opts),
    }
}

/// Character → byte positions of a context, for slicing by character offsets.
struct CharIndex<'a> {
    text: &'a str,
    bytes: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        CharIndex { text, bytes }
    }

    /// `text[start..end]` in characters, with Python's slicing rules (clamped, empty if reversed).
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let n = self.bytes.len() - 1;
        let (s, e) = (start.min(n), end.min(n));
        if s >= e {
            return "";
        }
        &self.text[self.bytes[s]..self.bytes[e]]
    }
}

fn masked_softmax(logits: &[f32], allowed: &[bool]) -> Vec<f64> {
    let x: Vec<f64> = logits.iter().zip(allowed).map(|(&l, &ok)| if ok { l as f64 } else { -10000.0 }).collect();
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The `k` best `(score, start, end)` of a window's spans with `s <= e < s + max_answer_len`,
/// best first, ties broken by the row-major index as `np.argmax` does.
fn top_spans(ps: &[f64], pe: &[f64], max_answer_len: usize, k: usize) -> Vec<(f64, usize, usize)> {
    let n = ps.len();
    let mut cands = Vec::new();
    for (s, &p_start) in ps.iter().enumerate() {
        if p_start <= 0.0 {
            continue;
        }
        for (e, &p_end) in pe.iter().enumerate().take(n.min(s + max_answer_len)).skip(s) {
            let score = p_start * p_end;
            if score > 0.0 {
                cands.push((score, s, e));
            }
        }
    }
    let order =
        |a: &(f64, usize, usize), b: &(f64, usize, usize)| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)));
    if cands.len() > k {
        cands.select_nth_unstable_by(k, order);
        cands.truncate(k);
    }
    cands.sort_by(order);
    cands
}

fn decode_pipeline(
    windows: &[Window],
    logits: &[WindowLogits<'_>],
    ctx: &CharIndex,
    opts: &DecodeOptions,
) -> Vec<Answer> {
    let mut min_null_score = 1_000_000.0f64;
    let mut answers: Vec<Answer> = Vec::new();
    let mut by_text: HashMap<String, usize> = HashMap::new();
    let pre_topk = if opts.align_to_words { opts.top_k * 2 + 10 } else { opts.top_k };
    for (w, l) in windows.iter().zip(logits) {
        let allowed: Vec<bool> = w.p_mask.iter().map(|m| !m).collect();
        let mut ps = masked_softmax(l.start, &allowed);
        let mut pe = masked_softmax(l.end, &allowed);
        if opts.handle_impossible_answer {
            min_null_score = min_null_score.min(ps[0] * pe[0]);
        }
        ps[0] = 0.0;
        pe[0] = 0.0;
        for (score, s, e) in top_spans(&ps, &pe, opts.max_answer_len, pre_topk) {
            let (start, end) = char_span(w, s, e, opts.align_to_words);
            let text = ctx.slice(start, end);
            match by_text.entry(text.to_lowercase()) {
                Entry::Occupied(i) => answers[*i.get()].score += score,
                Entry::Vacant(v) => {
                    v.insert(answers.len());
                    answers.push(Answer { answer: text.to_string(), score, start, end });
                }
            }
        }
    }
    if opts.handle_impossible_answer {
        answers.push(Answer { answer: String::new(), score: min_null_score, start: 0, end: 0 });
    }
    answers.sort_by(|a, b| b.score.total_cmp(&a.score));
    answers.truncate(opts.top_k);
    answers
}

/// The character span of tokens `s..=e` of a window: widened to whole words
/// (`token_to_word` then `word_to_chars`) when asked, else the tokens' own offsets.
fn char_span(w: &Window, s: usize, e: usize, align_to_words: bool) -> (usize, usize) {
    if align_to_words {
        let enc = &w.encoding;
        let words = enc.token_to_word(s).zip(enc.token_to_word(e));
        if let Some(((_, ws), (_, we))) = words {
            if let (Some(a), Some(b)) = (enc.word_to_chars(ws, 1), enc.word_to_chars(we, 1)) {
                return (a.0, b.1);
            }
        }
    }
    (w.offsets[s].0, w.offsets[e].1)
}

fn top_indices(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(b.cmp(&a)));
    idx.truncate(k);
    idx
}

fn decode_squad(windows: &[Window], logits: &[WindowLogits<'_>], ctx: &CharIndex, opts: &DecodeOptions) -> Vec<Answer> {
    struct Prelim {
        start: usize,
        end: usize,
        score: f32,
        null: bool,
    }
    let mut null: Option<f32> = None;
    let mut prelim: Vec<Prelim> = Vec::new();
    for (w, l) in windows.iter().zip(logits) {
        let feature_null = l.start[0] + l.end[0];
        if null.is_none_or(|n| n > feature_null) {
            null = Some(feature_null);
        }
        let in_context = |i: usize| w.sequence_ids[i] == Some(1);
        for &s in &top_indices(l.start, opts.n_best) {
            for &e in &top_indices(l.end, opts.n_best) {
                if !in_context(s) || !in_context(e) || e < s || e - s + 1 > opts.max_answer_len {
                    continue;
                }
                prelim.push(Prelim {
                    start: w.offsets[s].0,
                    end: w.offsets[e].1,
                    score: l.start[s] + l.end[e],
                    null: false,
                });
            }
        }
    }
    let null_score = null.unwrap_or(0.0);
    if opts.handle_impossible_answer {
        prelim.push(Prelim { start: 0, end: 0, score: null_score, null: true });
    }
    prelim.sort_by(|a, b| b.score.total_cmp(&a.score));
    prelim.truncate(opts.n_best);
    if opts.handle_impossible_answer && !prelim.iter().any(|p| p.null) {
        prelim.push(Prelim { start: 0, end: 0, score: null_score, null: true });
    }
    if prelim.is_empty() {
        return Vec::new();
    }
    let max = prelim.iter().map(|p| p.score).fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = prelim.iter().map(|p| (p.score as f64 - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    let mut answers: Vec<Answer> = prelim
        .iter()
        .zip(&exp)
        .map(|(p, x)| Answer {
            answer: ctx.slice(p.start, p.end).to_string(),
            score: x / total,
            start: p.start,
            end: p.end,
        })
        .collect();
    if opts.handle_impossible_answer {
        let best = prelim.iter().position(|p| !p.null && !ctx.slice(p.start, p.end).is_empty());
        let null_wins = match best {
            Some(i) => null_score - prelim[i].score > opts.null_score_diff_threshold,
            None => true,
        };
        let pick = if null_wins { prelim.iter().position(|p| p.null) } else { best };
        if let Some(i) = pick {
            let a = answers.remove(i);
            let a = if null_wins { Answer { answer: String::new(), start: 0, end: 0, ..a } } else { a };
            answers.insert(0, a);
        }
    }
    answers.truncate(opts.top_k);
    answers
}
