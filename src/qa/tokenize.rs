//! The model's `tokenizer.json`, loaded with its baked-in padding and truncation cleared so that
//! [`features`](super::features) alone decides how question/context pairs become windows.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tokenizers::{PostProcessor, Tokenizer};

/// A model's tokenizer, ready to build QA windows.
#[derive(Clone)]
pub struct QaTokenizer {
    pub(crate) inner: Tokenizer,
    /// Id fed at padded positions (the tokenizer's `[PAD]`/`<pad>` token, else 0); masked out by
    /// `attention_mask`, so it never changes the logits of real tokens.
    pub pad_id: i64,
    /// Special tokens the post-processor adds around a question/context pair.
    pub(crate) added_pair_tokens: usize,
}

impl QaTokenizer {
    /// Loads `tokenizer.json`; padding and truncation stored in the file are disabled.
    pub fn from_file(path: &Path) -> Result<QaTokenizer> {
        if !path.exists() {
            anyhow::bail!(
                "tokenizer '{}' not found: put the model's tokenizer.json next to the model (or in its folder)",
                path.display()
            );
        }
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot read tokenizer '{}'", path.display()))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        let pad_id = ["[PAD]", "<pad>", "<PAD>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0) as i64;
        let added_pair_tokens = inner.get_post_processor().map(|p| p.added_tokens(true)).unwrap_or(0);
        Ok(QaTokenizer { inner, pad_id, added_pair_tokens })
    }

    /// The `tokenizer.json` that belongs to a model file: the one in the same folder.
    pub fn path_for_model(model: &Path) -> PathBuf {
        model.parent().unwrap_or_else(|| Path::new(".")).join("tokenizer.json")
    }

    /// Loads the `tokenizer.json` beside a model file.
    pub fn for_model(model: &Path) -> Result<QaTokenizer> {
        Self::from_file(&Self::path_for_model(model))
    }

    /// The wrapped `tokenizers` tokenizer (padding and truncation off).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
