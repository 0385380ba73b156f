//! The official SQuAD metrics: `evaluate-v1.1.py` (exact match and F1, max over the reference
//! answers) and `evaluate-v2.0.py` (HasAns/NoAns split, best no-answer threshold), with
//! `normalize_answer` exactly as the scripts define it (Python semantics for `str.lower`,
//! `string.punctuation`, the Unicode `\b` of `re` and `str.split()`).

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// Python's `string.punctuation`.
const PUNCTUATION: &str = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;

static ARTICLES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid regex"));

/// Python's `str.isspace()`: Unicode White_Space plus the separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no arguments.
fn py_split(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|t| !t.is_empty()).collect()
}

/// Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower.chars().filter(|c| !PUNCTUATION.contains(*c)).collect();
    let no_articles = ARTICLES.replace_all(&no_punc, " ");
    py_split(&no_articles).join(" ")
}

/// Tokens of a normalised answer (`evaluate-v2.0.py`'s `get_tokens`).
fn tokens(s: &str) -> Vec<String> {
    py_split(&normalize_answer(s)).into_iter().map(str::to_string).collect()
}

pub fn exact_match(prediction: &str, truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(truth)
}

fn overlap(pred: &[String], gold: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in pred {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    same
}

fn f1_of(pred: &[String], gold: &[String]) -> f64 {
    let same = overlap(pred, gold);
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `evaluate-v1.1.py`'s `f1_score`.
pub fn f1_v1(prediction: &str, truth: &str) -> f64 {
    f1_of(&tokens(prediction), &tokens(truth))
}

/// `evaluate-v2.0.py`'s `compute_f1`: an empty prediction or reference scores 1 only if both are.
pub fn f1_v2(prediction: &str, truth: &str) -> f64 {
    let (p, g) = (tokens(prediction), tokens(truth));
    if p.is_empty() || g.is_empty() {
        return (p == g) as u8 as f64;
    }
    f1_of(&p, &g)
}

/// A question's references and prediction.
pub struct Scored<'a> {
    pub id: &'a str,
    pub references: &'a [String],
    pub prediction: Option<&'a str>,
}

/// SQuAD v1.1 result, in percent.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct V1Result {
    pub exact_match: f64,
    pub f1: f64,
    pub total: usize,
}

/// `evaluate-v1.1.py`: a missing prediction scores 0 and still counts.
pub fn evaluate_v1(items: &[Scored<'_>]) -> V1Result {
    let (mut em, mut f1) = (0.0, 0.0);
    for it in items {
        let Some(pred) = it.prediction else { continue };
        em += it.references.iter().map(|t| exact_match(pred, t) as u8 as f64).fold(0.0, f64::max);
        f1 += it.references.iter().map(|t| f1_v1(pred, t)).fold(0.0, f64::max);
    }
    let n = items.len().max(1) as f64;
    V1Result { exact_match: 100.0 * em / n, f1: 100.0 * f1 / n, total: items.len() }
}

/// SQuAD v2.0 result, in percent.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct V2Result {
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
    #[serde(rename = "HasAns_exact", skip_serializing_if = "Option::is_none")]
    pub has_ans_exact: Option<f64>,
    #[serde(rename = "HasAns_f1", skip_serializing_if = "Option::is_none")]
    pub has_ans_f1: Option<f64>,
    #[serde(rename = "HasAns_total")]
    pub has_ans_total: usize,
    #[serde(rename = "NoAns_exact", skip_serializing_if = "Option::is_none")]
    pub no_ans_exact: Option<f64>,
    #[serde(rename = "NoAns_f1", skip_serializing_if = "Option::is_none")]
    pub no_ans_f1: Option<f64>,
    #[serde(rename = "NoAns_total")]
    pub no_ans_total: usize,
    pub best_exact: f64,
    pub best_exact_thresh: f64,
    pub best_f1: f64,
    pub best_f1_thresh: f64,
}

/// `evaluate-v2.0.py`: questions without a prediction are skipped; references that normalise to
/// nothing are dropped and a question without any is a no-answer question (gold `""`).
/// `na_probs[i]` is the no-answer score of question `i` (the script's `--na-prob-file`); the
/// headline numbers use `--na-prob-thresh 1.0` as the script does, `best_*` sweep the threshold.
pub fn evaluate_v2(items: &[Scored<'_>], na_probs: &[f64]) -> V2Result {
    let mut exact = Vec::new();
    let mut f1 = Vec::new();
    let mut exact_raw = Vec::new();
    let mut f1_raw = Vec::new();
    let mut has_ans = Vec::new();
    let mut preds = Vec::new();
    let mut probs = Vec::new();
    for (it, &na) in items.iter().zip(na_probs) {
        let Some(pred) = it.prediction else { continue };
        let mut gold: Vec<&str> =
            it.references.iter().map(String::as_str).filter(|t| !normalize_answer(t).is_empty()).collect();
        let answerable = !gold.is_empty();
        if !answerable {
            gold = vec![""];
        }
        let e = gold.iter().map(|g| (normalize_answer(g) == normalize_answer(pred)) as u8 as f64).fold(0.0, f64::max);
        let f = gold.iter().map(|g| f1_v2(pred, g)).fold(0.0, f64::max);
        exact_raw.push(e);
        f1_raw.push(f);
        let (e, f) = if na > 1.0 { ((!answerable) as u8 as f64, (!answerable) as u8 as f64) } else { (e, f) };
        exact.push(e);
        f1.push(f);
        has_ans.push(answerable);
        preds.push(pred);
        probs.push(na);
    }
    let mean = |v: &[f64], sel: &dyn Fn(usize) -> bool| {
        let picked: Vec<f64> = v.iter().enumerate().filter(|(i, _)| sel(*i)).map(|(_, x)| *x).collect();
        (!picked.is_empty()).then(|| 100.0 * picked.iter().sum::<f64>() / picked.len() as f64)
    };
    let all = |_: usize| true;
    let has = |i: usize| has_ans[i];
    let no = |i: usize| !has_ans[i];
    let (best_exact, best_exact_thresh) = best_thresh(&preds, &exact_raw, &probs, &has_ans);
    let (best_f1, best_f1_thresh) = best_thresh(&preds, &f1_raw, &probs, &has_ans);
    V2Result {
        exact: mean(&exact, &all).unwrap_or(0.0),
        f1: mean(&f1, &all).unwrap_or(0.0),
        total: exact.len(),
        has_ans_exact: mean(&exact, &has),
        has_ans_f1: mean(&f1, &has),
        has_ans_total: has_ans.iter().filter(|h| **h).count(),
        no_ans_exact: mean(&exact, &no),
        no_ans_f1: mean(&f1, &no),
        no_ans_total: has_ans.iter().filter(|h| !**h).count(),
        best_exact,
        best_exact_thresh,
        best_f1,
        best_f1_thresh,
    }
}

/// `find_best_thresh`: predicting "no answer" for every question whose no-answer score is at
/// most the threshold, the best total score and that threshold.
fn best_thresh(preds: &[&str], scores: &[f64], na_probs: &[f64], has_ans: &[bool]) -> (f64, f64) {
    let num_no_ans = has_ans.iter().filter(|h| !**h).count() as f64;
    let (mut cur, mut best, mut thresh) = (num_no_ans, num_no_ans, 0.0);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| na_probs[a].total_cmp(&na_probs[b]));
    for i in order {
        let diff = if has_ans[i] {
            scores[i]
        } else if !preds[i].is_empty() {
            -1.0
        } else {
            0.0
        };
        cur += diff;
        if cur > best {
            best = cur;
            thresh = na_probs[i];
        }
    }
    (100.0 * best / scores.len().max(1) as f64, thresh)
}
