//! The recipes in `recipes/`, built into the binary, and how a `--recipe` argument is found: a
//! file path, a built-in name, or a SparseZoo stub (`zoo:…`) mapped onto the built-in that
//! reproduces its method. Nothing is downloaded: SparseZoo's service is gone.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Recipe, RecipeError};

/// One recipe shipped inside the binary.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// The file name in `recipes/` without `.yaml`.
    pub name: &'static str,
    pub description: &'static str,
    pub text: &'static str,
}

/// `(name, text)` of every `recipes/*.yaml`, in name order (written by build.rs).
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_recipes.rs"));

/// One-line descriptions; a recipe not listed here is described by the first line of its
/// leading comment.
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("block4-90-qat", "90% [1, 4]-block GMP + int8 QAT, 12 epochs"),
    ("dense-finetune", "dense fine-tuning (no pruning, no quantization), 2 epochs: a baseline or a teacher"),
    ("gmp80-block4x1-qat-distill", "80% [4, 1]-block GMP + int8 QAT + distillation, 10 epochs"),
    (
        "gmp80-qat-distill-one-epoch",
        "80% unstructured GMP + int8 QAT + distillation in one pass over the data (CPU budgets)",
    ),
    ("gmp80-unstructured-qat-distill", "80% unstructured GMP + int8 QAT + distillation, 10 epochs"),
    ("gmp90-block4x1-qat-distill", "90% [4, 1]-block GMP + int8 QAT + distillation, 10 epochs"),
    ("obs80-oneshot", "one-shot OBS (oBERT) to 80% unstructured, no training (`--one-shot N`)"),
    ("quantization-only", "int8 QAT of a trained model, no pruning, 2 epochs"),
    (
        "sparse-transfer-distill",
        "sparse transfer: fine-tune a pruned model keeping its zeros, with distillation, 3 epochs",
    ),
    (
        "sparse-transfer-qat-distill",
        "sparse transfer with int8 QAT in the last epoch, keeping the zeros, with distillation, 3 epochs",
    ),
    ("sparsegpt80-oneshot", "one-shot SparseGPT to 80% unstructured, no training (`--one-shot N`)"),
];

fn describe(name: &str, text: &'static str) -> &'static str {
    if let Some((_, d)) = DESCRIPTIONS.iter().find(|(n, _)| *n == name) {
        return d;
    }
    text.lines()
        .find_map(|l| l.strip_prefix('#').map(str::trim))
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_end_matches([',', '.', ':']))
        .unwrap_or("(no description)")
}

/// Every built-in recipe, in name order.
pub fn builtins() -> Vec<Builtin> {
    FILES.iter().map(|&(name, text)| Builtin { name, description: describe(name, text), text }).collect()
}

/// The built-in recipe called `name` (`.yaml` optional).
pub fn find(name: &str) -> Option<Builtin> {
    let name = name.strip_suffix(".yaml").unwrap_or(name);
    builtins().into_iter().find(|b| b.name == name)
}

/// `  name  description` lines, one per built-in.
pub fn listing() -> String {
    let all = builtins();
    let width = all.iter().map(|b| b.name.len()).max().unwrap_or(0);
    all.iter().map(|b| format!("  {:<width$}  {}\n", b.name, b.description)).collect()
}

/// A recipe's text and the path its errors name (`built-in:NAME.yaml` for a built-in).
#[derive(Clone, Debug)]
pub struct RecipeText {
    pub path: PathBuf,
    pub text: String,
    /// The built-in it is, when it is one.
    pub builtin: Option<&'static str>,
    /// What a SparseZoo stub was mapped to, and what differs.
    pub note: Option<String>,
}

impl RecipeText {
    /// Resolves a `--recipe` argument: an existing file, a built-in name, or a `zoo:` stub.
    pub fn resolve(spec: &str) -> Result<RecipeText> {
        if spec.starts_with("zoo:") {
            let (b, note) = zoo(spec)?;
            return Ok(RecipeText { note: Some(note), ..RecipeText::builtin(b) });
        }
        let path = Path::new(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|source| RecipeError::Read { path: path.to_path_buf(), source })?;
            return Ok(RecipeText { path: path.to_path_buf(), text, builtin: None, note: None });
        }
        if let Some(b) = find(spec) {
            return Ok(RecipeText::builtin(b));
        }
        if path.exists() {
            bail!("recipe '{spec}' is not a file");
        }
        let stem = spec.trim_end_matches(".yaml");
        let near = builtins()
            .into_iter()
            .map(|b| (strsim::jaro_winkler(b.name, stem), b.name))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(score, _)| *score > 0.85)
            .map(|(_, n)| format!(" (did you mean '{n}'?)"))
            .unwrap_or_default();
        bail!("recipe '{spec}' is neither a file nor a built-in recipe{near}; the built-in recipes are:\n{}", listing())
    }

    pub fn builtin(b: Builtin) -> RecipeText {
        RecipeText {
            path: PathBuf::from(format!("built-in:{}.yaml", b.name)),
            text: b.text.to_string(),
            builtin: Some(b.name),
            note: None,
        }
    }

    /// Parses the text with `overrides` for its variables.
    pub fn parse(&self, overrides: &serde_json::Map<String, serde_json::Value>) -> Result<Recipe> {
        Recipe::parse(&self.text, &self.path, overrides).map_err(anyhow::Error::from)
    }
}

/// SparseZoo stubs sparsec can reproduce with a built-in, matched on the stub's domain, the
/// model's sparsification tag (its last path segment) and `recipe_type`.
struct ZooRule {
    domain: &'static str,
    tags: &'static [&'static str],
    recipe_type: Option<&'static str>,
    builtin: &'static str,
    differences: &'static str,
}

const ZOO_RULES: &[ZooRule] = &[
    ZooRule {
        domain: "question_answering",
        tags: &["12layer_pruned80_quant-none-vnni", "pruned80_quant-none-vnni", "pruned80_quant"],
        recipe_type: None,
        builtin: "gmp80-unstructured-qat-distill",
        differences: "same method (GMP of the encoder linears to 80% unstructured, cubic, then int8 QAT, with \
                      distillation from the dense model); the built-in's schedule is 10 epochs (1 warm-up, 5 \
                      pruning, 4 fine-tuning with QAT in the last 2), not necessarily SparseZoo's epoch count and \
                      learning rates (its recipe cannot be fetched to compare); change them with --recipe-args",
    },
    ZooRule {
        domain: "masked_language_modeling",
        tags: &["12layer_pruned80_quant-none-vnni", "pruned80_quant-none-vnni", "pruned80_quant"],
        recipe_type: Some("transfer-question_answering"),
        builtin: "sparse-transfer-qat-distill",
        differences: "same method (fine-tune on SQuAD keeping the pretrained zeros, int8 QAT at the end, with \
                      distillation); the built-in runs 3 epochs with QAT in the last, not necessarily SparseZoo's schedule, \
                      and the sparse pretrained model itself must be a local ONNX (nothing is downloaded)",
    },
    ZooRule {
        domain: "masked_language_modeling",
        tags: &["12layer_pruned80-none", "pruned80-none", "pruned80"],
        recipe_type: Some("transfer-question_answering"),
        builtin: "sparse-transfer-distill",
        differences: "same method (fine-tune on SQuAD keeping the pretrained zeros, with distillation); the \
                      built-in runs 3 epochs, not necessarily SparseZoo's schedule, and the sparse pretrained model itself \
                      must be a local ONNX (nothing is downloaded)",
    },
    ZooRule {
        domain: "masked_language_modeling",
        tags: &["base-none"],
        recipe_type: Some("transfer-question_answering"),
        builtin: "dense-finetune",
        differences: "same method (dense fine-tuning on SQuAD); the built-in runs 2 epochs at 5e-5 decaying \
                      linearly, not necessarily SparseZoo's schedule",
    },
    ZooRule {
        domain: "question_answering",
        tags: &["base-none"],
        recipe_type: None,
        builtin: "dense-finetune",
        differences: "same method (dense fine-tuning on SQuAD); the built-in runs 2 epochs at 5e-5 decaying \
                      linearly, not necessarily SparseZoo's schedule",
    },
];

/// Maps a SparseZoo stub onto the built-in that reproduces its method, with a note saying what
/// differs; any other stub is an error listing the built-ins.
fn zoo(stub: &str) -> Result<(Builtin, String)> {
    let body = stub.strip_prefix("zoo:").unwrap_or(stub);
    let (path, query) = body.split_once('?').unwrap_or((body, ""));
    let mut recipe_type: Option<&str> = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("recipe_type", v)) => recipe_type = Some(v),
            _ => bail!("SparseZoo stub '{stub}': unknown query '{kv}' (only `recipe_type=…` is understood)"),
        }
    }
    let recipe_type = recipe_type.filter(|t| *t != "original");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let domain = parts.get(1).copied().unwrap_or("");
    let tag = parts.last().copied().unwrap_or("");
    let rule = ZOO_RULES.iter().find(|r| r.domain == domain && r.tags.contains(&tag) && r.recipe_type == recipe_type);
    let Some(rule) = rule else {
        let why = if parts.len() < 7 || parts[0] != "nlp" {
            "is not a SparseZoo NLP stub (zoo:nlp/DOMAIN/ARCH/FRAMEWORK/REPO/DATASET/TAG)".to_string()
        } else if domain == "masked_language_modeling" && recipe_type.is_none() {
            "is a masked-language-modelling pretraining recipe; sparsec trains question answering only (the \
             transfer recipe is `?recipe_type=transfer-question_answering`)"
                .to_string()
        } else {
            format!("has no built-in recipe that reproduces its method (tag '{tag}')")
        };
        bail!(
            "SparseZoo stub '{stub}' {why}. SparseZoo's service is gone and sparsec downloads nothing; pass a \
             recipe file or one of the built-in recipes (`sparsec recipes`):\n{}",
            listing()
        );
    };
    let b = find(rule.builtin).with_context(|| format!("built-in '{}' is missing", rule.builtin))?;
    let note =
        format!("note: SparseZoo stub '{stub}' resolves to the built-in recipe '{}': {}", b.name, rule.differences);
    Ok((b, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        assert!(builtins().len() >= 11);
        for b in builtins() {
            RecipeText::builtin(b).parse(&serde_json::Map::new()).unwrap_or_else(|e| panic!("{}: {e:#}", b.name));
        }
    }

    #[test]
    fn zoo_stub_with_recipe_type_maps_to_sparse_transfer_with_qat() {
        let r = RecipeText::resolve(
            "zoo:nlp/masked_language_modeling/bert-base/pytorch/huggingface/wikipedia_bookcorpus/\
             12layer_pruned80_quant-none-vnni?recipe_type=transfer-question_answering",
        )
        .unwrap();
        assert_eq!(r.builtin, Some("sparse-transfer-qat-distill"));
        assert!(r.note.unwrap().contains("resolves to the built-in recipe"));
    }
}
