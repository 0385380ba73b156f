//! The compiled folder, written and read here alone: `model.onnx` (the rewritten graph),
//! `train.onnx` (its loss and gradients), `plan.json`, `recipe.yaml`, `recipe_args.json` (the
//! variables `--recipe-args` overrode), and the tokenizer and config files that sat beside the
//! model. Written all or nothing. Read back for training, it is the model and the plan: the
//! recipe and its variables are there for people, already resolved into the plan.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::plan::Plan;
use crate::ir::{infer, Model};
use crate::onnx::{self, SaveOptions};
use crate::recipe::builtin::RecipeText;

/// The recipe variables `--recipe-args` overrode at compile time, beside recipe.yaml.
pub const RECIPE_ARGS_FILE: &str = "recipe_args.json";

/// The files beside a model that travel with it.
const MODEL_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json", "vocab.txt"];

/// A compiled folder, read back: its eval graph and plan.
pub struct Compiled {
    pub dir: PathBuf,
    pub model: Model,
    pub plan: Plan,
}

impl Compiled {
    /// Reads the folder `dir`.
    pub fn open(dir: &Path) -> Result<Compiled> {
        let need = |f: &str| -> Result<PathBuf> {
            let p = dir.join(f);
            if !p.exists() {
                bail!("'{}' has no {f}: pass a folder written by `sparsec compile`", dir.display());
            }
            Ok(p)
        };
        let plan = Plan::load(&need("plan.json")?)?;
        let model_path = need("model.onnx")?;
        let mut model = onnx::load(&model_path)?;
        infer::infer_facts(&mut model).with_context(|| format!("'{}'", model_path.display()))?;
        need("tokenizer.json")?;
        Ok(Compiled { dir: dir.to_path_buf(), model, plan })
    }
}

/// What goes into a compiled folder.
pub(super) struct Contents<'a> {
    pub model: &'a Model,
    pub train: &'a Model,
    pub plan: &'a Plan,
    pub recipe: &'a RecipeText,
    pub recipe_args: &'a serde_json::Map<String, serde_json::Value>,
    /// The model compiled; the files in [`MODEL_FILES`] beside it are copied.
    pub model_path: &'a Path,
}

/// Writes everything into a temporary sibling folder, then swaps it in for `out`.
pub(super) fn write(out: &Path, c: &Contents) -> Result<()> {
    let tmp = crate::files::staging_dir(out, ".sparsec-compile-")?;
    onnx::save(c.model, tmp.path().join("model.onnx"), &SaveOptions::default())?;
    onnx::save(c.train, tmp.path().join("train.onnx"), &SaveOptions::default())?;
    std::fs::write(tmp.path().join("plan.json"), c.plan.to_json()?).context("cannot write plan.json")?;
    std::fs::write(tmp.path().join("recipe.yaml"), &c.recipe.text)
        .with_context(|| format!("cannot write the recipe '{}'", c.recipe.path.display()))?;
    std::fs::write(tmp.path().join(RECIPE_ARGS_FILE), serde_json::to_string_pretty(c.recipe_args)? + "\n")
        .context("cannot write recipe_args.json")?;
    if let Some(dir) = c.model_path.parent() {
        for f in MODEL_FILES {
            let src = dir.join(f);
            if src.exists() {
                std::fs::copy(&src, tmp.path().join(f)).with_context(|| format!("cannot copy {f}"))?;
            }
        }
    }
    crate::files::swap_into_place(tmp, out)
}
