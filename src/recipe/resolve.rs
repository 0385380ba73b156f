//! `params` patterns against a model's parameter names (the PyTorch names that
//! [`ir::modules`](crate::ir::modules) recovers): exact names, `re:` regexes (Python `re.match`:
//! anchored at the start), `__ALL_PRUNABLE__` (every linear layer's weight) and `__ALL__`.
//! A pattern that matches nothing is an error that lists the closest names.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{modules, Graph, ValueId};

use super::error::{Location, RecipeError};
use super::fields::{ALL_PARAMS, ALL_PRUNABLE};

/// The names a recipe can refer to in one graph.
#[derive(Clone, Debug)]
pub struct ParamIndex {
    /// Parameter name → initializer.
    pub params: BTreeMap<String, ValueId>,
    /// Weights of linear layers (`__ALL_PRUNABLE__`), in graph order.
    pub prunable: Vec<String>,
}

impl ParamIndex {
    pub fn new(g: &Graph) -> ParamIndex {
        let params = modules::parameter_names(g);
        let mut prunable = Vec::new();
        for l in modules::linear_layers(g) {
            let n = l.weight_name();
            if !prunable.contains(&n) {
                prunable.push(n);
            }
        }
        ParamIndex { params, prunable }
    }

    /// Resolves every pattern; the result is sorted by name and free of duplicates.
    /// `at` locates the `params` field for errors.
    pub fn resolve(&self, patterns: &[String], at: &Location) -> Result<Vec<String>, RecipeError> {
        let mut out = BTreeSet::new();
        for p in patterns {
            let hits: Vec<String> = if p == ALL_PRUNABLE {
                self.prunable.clone()
            } else if p == ALL_PARAMS {
                self.params.keys().cloned().collect()
            } else if let Some(re) = p.strip_prefix("re:") {
                let rx = regex::Regex::new(&format!("^(?:{re})")).map_err(|e| RecipeError::Invalid {
                    at: at.clone(),
                    message: format!("invalid regex `{re}`: {e}"),
                })?;
                self.params.keys().filter(|n| rx.is_match(n)).cloned().collect()
            } else {
                self.params.keys().filter(|n| *n == p).cloned().collect()
            };
            if hits.is_empty() {
                return Err(RecipeError::NoMatch { at: at.clone(), pattern: p.clone(), closest: self.closest(p, 3) });
            }
            out.extend(hits);
        }
        Ok(out.into_iter().collect())
    }

    /// The `n` names nearest to `pattern` by edit distance, comma-separated.
    pub fn closest(&self, pattern: &str, n: usize) -> String {
        let target = pattern.strip_prefix("re:").unwrap_or(pattern);
        let mut scored: Vec<(usize, &String)> =
            self.params.keys().map(|k| (strsim::levenshtein(target, k), k)).collect();
        scored.sort();
        scored.into_iter().take(n).map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(", ")
    }
}
