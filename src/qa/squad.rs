//! SQuAD v1.1/v2.0 JSON (optionally gzip-compressed) → flat question records.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    #[serde(default)]
    title: String,
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<RefAnswer>,
    #[serde(default)]
    is_impossible: bool,
}

/// A reference answer.
#[derive(Clone, Debug, Deserialize)]
pub struct RefAnswer {
    pub text: String,
    #[serde(default)]
    pub answer_start: Option<usize>,
}

/// One question of a SQuAD file.
#[derive(Clone, Debug)]
pub struct Example {
    pub id: String,
    pub title: String,
    pub question: String,
    pub context: String,
    pub answers: Vec<RefAnswer>,
    pub is_impossible: bool,
}

/// Reads a file as UTF-8 text, gunzipping it when it is gzip-compressed (by its magic bytes).
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("'{}' is not valid gzip", path.display()))?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "'{}' is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parses SQuAD JSON text (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Example>> {
    let file: File = serde_json::from_str(text).with_context(|| format!("'{origin}' is not SQuAD JSON"))?;
    let mut out = Vec::new();
    for a in file.data {
        for p in a.paragraphs {
            for q in p.qas {
                out.push(Example {
                    id: q.id,
                    title: a.title.clone(),
                    question: q.question,
                    context: p.context.clone(),
                    answers: q.answers,
                    is_impossible: q.is_impossible,
                });
            }
        }
    }
    if out.is_empty() {
        bail!("'{origin}' holds no questions");
    }
    Ok(out)
}

/// Reads a SQuAD `.json` or `.json.gz` file.
pub fn load(path: &Path) -> Result<Vec<Example>> {
    parse(&read_text(path)?, &path.display().to_string())
}
