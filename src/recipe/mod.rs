//! SparseML recipes: the front end of `sparsec compile`. A recipe file (YAML, or Markdown with YAML
//! front matter) is read the way SparseML reads it (variables, anchors, `eval(...)`, every
//! top-level key containing `modifiers`, staged recipes, `--recipe-args` overrides) into typed
//! [`Modifier`]s; [`schedule`] answers what each modifier does at a given epoch, and [`resolve`]
//! maps `params` patterns onto the IR's parameter names.
//!
//! Sits between the user's recipe and `passes/` (which rewrite the graph) and `train/` (which
//! follows the schedule).

pub mod builtin;
pub mod error;
pub mod eval;
mod fields;
pub mod modifiers;
pub mod resolve;
pub mod schedule;
mod source;
pub mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml::{Mapping, Value};

pub use error::{Location, RecipeError};
use eval::Num;
use fields::FieldReader;
pub use fields::{Scope, ALL_PARAMS, ALL_PRUNABLE};
pub use modifiers::*;
use source::Source;

/// One modifier with where it came from.
#[derive(Clone, Debug, Serialize)]
pub struct ModifierEntry {
    /// The `!Tag` name.
    pub name: String,
    pub modifier: Modifier,
    /// The stage it belongs to, for staged recipes.
    pub stage: Option<String>,
    /// The key of the list that holds it (`modifiers`, `training_modifiers`, …).
    pub group: String,
    /// 1-based line of its tag in the recipe file.
    pub line: usize,
    /// 1-based line of each field present.
    pub field_lines: std::collections::BTreeMap<String, usize>,
}

impl ModifierEntry {
    /// The location of one of its fields (its tag line when the field is absent).
    pub fn at(&self, file: &Path, field: &str) -> Location {
        Location {
            file: file.to_path_buf(),
            line: self.field_lines.get(field).copied().unwrap_or(self.line),
            field: Some(format!("{}.{field}", self.name)),
        }
    }
}

/// A parsed recipe.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    pub path: PathBuf,
    /// The `version` header, when present.
    pub version: Option<String>,
    /// Numeric top-level variables after overrides and evaluation.
    pub variables: std::collections::BTreeMap<String, f64>,
    pub staged: bool,
    /// Every modifier in document order.
    pub modifiers: Vec<ModifierEntry>,
}

impl Recipe {
    /// Reads and parses a recipe file; `overrides` replace variables (SparseML's `recipe_args`).
    pub fn load(path: &Path, overrides: &serde_json::Map<String, serde_json::Value>) -> Result<Recipe, RecipeError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RecipeError::Read { path: path.to_path_buf(), source })?;
        Recipe::parse(&text, path, overrides)
    }

    /// Parses recipe text; `path` names it in errors and decides Markdown (`.md`) handling.
    pub fn parse(
        text: &str,
        path: &Path,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Recipe, RecipeError> {
        let is_md = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("md"));
        let (yaml, offset) = if is_md {
            front_matter(text).ok_or_else(|| RecipeError::NoFrontMatter(path.to_path_buf()))?
        } else {
            (text, 0)
        };
        let src = Source::new(path, yaml, offset);
        let root: Value = serde_yaml::from_str(yaml).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
            RecipeError::Syntax {
                file: path.to_path_buf(),
                line: line + offset,
                column,
                message: strip_location(&e.to_string()),
            }
        })?;
        let Value::Mapping(mut root) = root else {
            return Err(RecipeError::NotAMapping(path.to_path_buf()));
        };
        let staged = root.iter().any(|(_, v)| is_stage(v));
        apply_overrides(&mut root, overrides, staged, path)?;

        let version = root.get("version").map(|v| match v {
            Value::String(s) => s.clone(),
            other => fields::show(other),
        });
        let globals: Mapping = root
            .iter()
            .filter(|(k, v)| !is_stage(v) && !is_modifier_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let global_scope = evaluate_variables(&globals, &Scope::default(), &src, None)?;
        let mut variables: std::collections::BTreeMap<String, f64> =
            global_scope.numbers.iter().map(|(k, v)| (k.clone(), v.as_f64())).collect();

        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (k, v) in &root {
            let key = k.as_str().unwrap_or_default().to_string();
            if is_stage(v) {
                let stage = v.as_mapping().expect("stage is a mapping");
                let locals: Mapping =
                    stage.iter().filter(|(k, _)| !is_modifier_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
                let scope = evaluate_variables(&locals, &global_scope, &src, Some(&key))?;
                for (sk, sv) in stage {
                    if is_modifier_key(sk) {
                        let group = sk.as_str().unwrap_or_default();
                        parse_group(sv, group, Some(&key), &scope, &src, &mut seen, &mut out)?;
                    }
                }
                for (name, n) in scope.numbers {
                    variables.entry(format!("{key}.{name}")).or_insert(n.as_f64());
                }
            } else if is_modifier_key(k) {
                parse_group(v, &key, None, &global_scope, &src, &mut seen, &mut out)?;
            }
        }
        if out.is_empty() && !root.iter().any(|(k, v)| is_modifier_key(k) || is_stage(v)) {
            return Err(RecipeError::NoModifiers(path.to_path_buf()));
        }
        Ok(Recipe { path: path.to_path_buf(), version, variables, staged, modifiers: out })
    }

    /// The location of a modifier's field, for errors raised after parsing.
    pub fn at(&self, entry: &ModifierEntry, field: &str) -> Location {
        entry.at(&self.path, field)
    }
}

fn is_modifier_key(k: &Value) -> bool {
    k.as_str().is_some_and(|s| s.contains("modifiers"))
}

fn is_stage(v: &Value) -> bool {
    v.as_mapping().is_some_and(|m| m.keys().any(is_modifier_key))
}

/// The YAML between the first pair of `---` (or `+++`) lines, and how many lines precede it.
fn front_matter(text: &str) -> Option<(&str, usize)> {
    let re = regex::Regex::new(r"(?ms)^\s*(?:---|\+\+\+)(.*?)(?:---|\+\+\+)").expect("valid regex");
    let caps = re.captures(text)?;
    let m = caps.get(1)?;
    let offset = text[..m.start()].matches('\n').count();
    Some((m.as_str(), offset))
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// SparseML's `update_recipe_variables`: an override must name an existing variable (top level,
/// or for staged recipes also inside any stage); it replaces every such variable.
fn apply_overrides(
    root: &mut Mapping,
    overrides: &serde_json::Map<String, serde_json::Value>,
    staged: bool,
    path: &Path,
) -> Result<(), RecipeError> {
    for (name, value) in overrides {
        let new: Value = serde_yaml::to_value(value)
            .map_err(|e| RecipeError::Override { file: path.to_path_buf(), message: format!("{name}: {e}") })?;
        let key = Value::from(name.as_str());
        let mut found = false;
        let is_variable = |v: &Value| !matches!(v, Value::Sequence(_) | Value::Mapping(_));
        if root.get(&key).is_some_and(is_variable) {
            root.insert(key.clone(), new.clone());
            found = true;
        }
        if staged {
            for (_, v) in root.iter_mut() {
                if let Value::Mapping(stage) = v {
                    if stage.get(&key).is_some_and(is_variable) {
                        stage.insert(key.clone(), new.clone());
                        found = true;
                    }
                }
            }
        }
        if !found {
            return Err(RecipeError::Override {
                file: path.to_path_buf(),
                message: format!("variable `{name}` is not set in the recipe; set it there to override it"),
            });
        }
    }
    Ok(())
}

/// SparseML's `_evaluate_container_variables`: numbers are variables; `eval(...)` strings are
/// evaluated once the variables they use are known (in any order); other values are kept for
/// `eval(name)` lookups. Stage variables see the globals and shadow them.
fn evaluate_variables(vars: &Mapping, parent: &Scope, src: &Source, stage: Option<&str>) -> Result<Scope, RecipeError> {
    let mut scope = parent.clone();
    let mut pending: Vec<(String, String)> = Vec::new();
    for (k, v) in vars {
        let Some(name) = k.as_str() else { continue };
        match v {
            Value::Number(n) => {
                let num = match n.as_i64() {
                    Some(i) => Num::Int(i),
                    None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
                };
                scope.numbers.insert(name.to_string(), num);
                scope.others.remove(name);
            }
            Value::String(s) if eval::eval_body(s).is_some() => pending.push((name.to_string(), s.clone())),
            other => {
                scope.numbers.remove(name);
                scope.others.insert(name.to_string(), other.clone());
            }
        }
    }
    for (name, _) in &pending {
        scope.numbers.remove(name);
    }
    while !pending.is_empty() {
        let before = pending.len();
        let mut still = Vec::new();
        for (name, expr) in pending {
            let body = eval::eval_body(&expr).unwrap();
            if let Some(v) = scope.others.get(body.trim()).cloned() {
                scope.others.insert(name, v);
                continue;
            }
            match eval::evaluate(body, &scope.numbers) {
                Ok(n) => {
                    scope.numbers.insert(name, n);
                }
                Err(eval::EvalError::UnknownVariable(_)) => still.push((name, expr)),
                Err(eval::EvalError::Invalid(message)) => {
                    let line = src.key_line(stage, &name).unwrap_or(0);
                    return Err(RecipeError::Eval { at: src.at(line, Some(name)), expr, message });
                }
            }
        }
        if still.len() == before {
            let (name, expr) = &still[0];
            let line = src.key_line(stage, name).unwrap_or(0);
            let err = eval::evaluate(eval::eval_body(expr).unwrap(), &scope.numbers).unwrap_err();
            return Err(RecipeError::Eval {
                at: src.at(line, Some(name.clone())),
                expr: expr.clone(),
                message: format!("{err}: undefined, or part of a cycle of variables"),
            });
        }
        pending = still;
    }
    Ok(scope)
}

fn parse_group(
    v: &Value,
    group: &str,
    stage: Option<&str>,
    scope: &Scope,
    src: &Source,
    seen: &mut HashMap<String, usize>,
    out: &mut Vec<ModifierEntry>,
) -> Result<(), RecipeError> {
    // `- !Tag {fields}` entries, or (SparseML's newer form) a mapping `Name: {fields}`.
    let items: Vec<(String, &Value)> = match v {
        Value::Sequence(s) => {
            let mut out = Vec::new();
            for item in s {
                let Value::Tagged(t) = item else {
                    let line = src.key_line(stage, group).unwrap_or(0);
                    return Err(RecipeError::Invalid {
                        at: src.at(line, Some(group.to_string())),
                        message: format!(
                            "each entry must be a tagged modifier like `- !GMPruningModifier`, got {}",
                            fields::show(item)
                        ),
                    });
                };
                out.push((t.tag.to_string().trim_start_matches('!').to_string(), &t.value));
            }
            out
        }
        Value::Null => Vec::new(),
        Value::Tagged(t) => vec![(t.tag.to_string().trim_start_matches('!').to_string(), &t.value)],
        Value::Mapping(m) => m.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v)).collect(),
        other => {
            let line = src.key_line(stage, group).unwrap_or(0);
            return Err(RecipeError::Invalid {
                at: src.at(line, Some(group.to_string())),
                message: format!("expected a list of `!Modifier` entries, got {}", fields::kind(other)),
            });
        }
    };
    for (name, body) in items {
        let occurrence = seen.entry(name.clone()).or_insert(0);
        let tag_line = src
            .tag_line(&name, *occurrence)
            .or_else(|| src.key_line(stage, &name))
            .or_else(|| src.key_line(stage, group))
            .unwrap_or(0);
        *occurrence += 1;
        let Some(parse) = modifiers::parser(&name) else {
            return Err(RecipeError::UnknownModifier {
                at: src.at(tag_line, Some(name.clone())),
                name,
                known: modifiers::known_modifiers().join(", "),
            });
        };
        let mut reader = FieldReader::new(&name, body, src, scope, tag_line)?;
        let modifier = parse(&name, &mut reader)?;
        let field_lines = reader.finish()?.into_iter().map(|(k, l)| (k, src.at(l, None).line)).collect();
        out.push(ModifierEntry {
            name,
            modifier,
            stage: stage.map(str::to_string),
            group: group.to_string(),
            line: src.at(tag_line, None).line,
            field_lines,
        });
    }
    Ok(())
}
