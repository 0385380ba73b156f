//! Typed reading of one modifier's fields: evaluates `eval(...)` values, converts to the field's
//! type, remembers which fields the modifier knows, and reports unknown, missing or invalid ones
//! at their line.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_yaml::Value;

use super::error::{Location, RecipeError};
use super::eval::{self, EvalError, Num};
use super::source::Source;

/// Variables visible to a modifier: numeric ones for `eval`, and the rest (strings, lists) that
/// `eval(name)` may name directly, as SparseML allows.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub numbers: HashMap<String, Num>,
    pub others: HashMap<String, Value>,
}

/// `__ALL_PRUNABLE__`: every linear layer's weight.
pub const ALL_PRUNABLE: &str = "__ALL_PRUNABLE__";
/// `__ALL__`: every named parameter.
pub const ALL_PARAMS: &str = "__ALL__";

pub(crate) struct FieldReader<'a> {
    pub modifier: String,
    map: BTreeMap<String, Value>,
    known: Vec<&'static str>,
    used: HashSet<String>,
    src: &'a Source,
    scope: &'a Scope,
    pub tag_line: usize,
    pub field_lines: BTreeMap<String, usize>,
}

impl<'a> FieldReader<'a> {
    pub fn new(
        modifier: &str,
        body: &Value,
        src: &'a Source,
        scope: &'a Scope,
        tag_line: usize,
    ) -> Result<FieldReader<'a>, RecipeError> {
        let mut map = BTreeMap::new();
        let loc = src.at(tag_line, Some(modifier.to_string()));
        match body {
            Value::Null => {}
            Value::Mapping(m) => {
                for (k, v) in m {
                    let Some(k) = k.as_str() else {
                        return Err(RecipeError::Invalid {
                            at: loc,
                            message: format!("field name {k:?} is not a string"),
                        });
                    };
                    map.insert(k.to_string(), v.clone());
                }
            }
            other => {
                return Err(RecipeError::Invalid {
                    at: loc,
                    message: format!("expected a mapping of fields, got {}", kind(other)),
                })
            }
        }
        let field_lines = map.keys().map(|k| (k.clone(), src.field_line(tag_line, k).unwrap_or(tag_line))).collect();
        Ok(FieldReader {
            modifier: modifier.to_string(),
            map,
            known: Vec::new(),
            used: HashSet::new(),
            src,
            scope,
            tag_line,
            field_lines,
        })
    }

    pub fn at(&self, field: &str) -> Location {
        let line = self.field_lines.get(field).copied().unwrap_or(self.tag_line);
        self.src.at(line, Some(format!("{}.{field}", self.modifier)))
    }

    pub fn invalid(&self, field: &str, message: impl Into<String>) -> RecipeError {
        RecipeError::Invalid { at: self.at(field), message: message.into() }
    }

    /// The evaluated value of `field`, if present.
    pub fn value(&mut self, field: &'static str) -> Result<Option<Value>, RecipeError> {
        self.known.push(field);
        let Some(v) = self.map.get(field).cloned() else { return Ok(None) };
        self.used.insert(field.to_string());
        self.evaluate(field, v).map(Some)
    }

    fn evaluate(&self, field: &str, v: Value) -> Result<Value, RecipeError> {
        Ok(match v {
            Value::String(s) => match eval::eval_body(&s) {
                Some(body) => {
                    if let Some(v) = self.scope.others.get(body.trim()) {
                        return Ok(v.clone());
                    }
                    match eval::evaluate(body, &self.scope.numbers) {
                        Ok(Num::Int(i)) => Value::from(i),
                        Ok(Num::Float(f)) => Value::from(f),
                        Err(e) => {
                            let message = match e {
                                EvalError::UnknownVariable(v) => format!(
                                    "unknown variable `{v}` (numeric variables: {})",
                                    sorted(self.scope.numbers.keys())
                                ),
                                EvalError::Invalid(m) => m,
                            };
                            return Err(RecipeError::Eval { at: self.at(field), expr: s.clone(), message });
                        }
                    }
                }
                None => Value::String(s),
            },
            Value::Sequence(items) => {
                Value::Sequence(items.into_iter().map(|x| self.evaluate(field, x)).collect::<Result<_, _>>()?)
            }
            Value::Mapping(m) => {
                let mut out = serde_yaml::Mapping::new();
                for (k, x) in m {
                    out.insert(k, self.evaluate(field, x)?);
                }
                Value::Mapping(out)
            }
            other => other,
        })
    }

    pub fn f64_opt(&mut self, field: &'static str) -> Result<Option<f64>, RecipeError> {
        match self.value(field)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                as_f64(&v).map(Some).ok_or_else(|| self.invalid(field, format!("expected a number, got {}", show(&v))))
            }
        }
    }

    pub fn f64_or(&mut self, field: &'static str, default: f64) -> Result<f64, RecipeError> {
        Ok(self.f64_opt(field)?.unwrap_or(default))
    }

    pub fn f64_req(&mut self, field: &'static str) -> Result<f64, RecipeError> {
        self.f64_opt(field)?.ok_or_else(|| self.missing(field))
    }

    pub fn missing(&self, field: &str) -> RecipeError {
        RecipeError::MissingField { at: self.src.at(self.tag_line, Some(format!("{}.{field}", self.modifier))) }
    }

    pub fn int_or(&mut self, field: &'static str, default: i64) -> Result<i64, RecipeError> {
        match self.f64_opt(field)? {
            None => Ok(default),
            Some(x) if x.fract() == 0.0 => Ok(x as i64),
            Some(x) => Err(self.invalid(field, format!("expected an integer, got {x}"))),
        }
    }

    pub fn int_opt(&mut self, field: &'static str) -> Result<Option<i64>, RecipeError> {
        match self.f64_opt(field)? {
            None => Ok(None),
            Some(x) if x.fract() == 0.0 => Ok(Some(x as i64)),
            Some(x) => Err(self.invalid(field, format!("expected an integer, got {x}"))),
        }
    }

    /// A boolean read as SparseML reads one: Python truthiness of the YAML value, where `true`/`false`,
    /// `1`/`0` (and `1.0`/`0.0`) and `null` (false: `None` is falsy) are what recipes write. Any
    /// other number, a string (`"false"` would be truthy in Python) or a list is an error.
    pub fn bool_or(&mut self, field: &'static str, default: bool) -> Result<bool, RecipeError> {
        match self.value(field)? {
            None => Ok(default),
            Some(v) => truthy(&v).ok_or_else(|| self.invalid(field, not_a_bool(&v))),
        }
    }

    pub fn bool_req(&mut self, field: &'static str) -> Result<bool, RecipeError> {
        match self.value(field)? {
            None => Err(self.missing(field)),
            Some(v) => truthy(&v).ok_or_else(|| self.invalid(field, not_a_bool(&v))),
        }
    }

    pub fn string_opt(&mut self, field: &'static str) -> Result<Option<String>, RecipeError> {
        match self.value(field)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(field, format!("expected a string, got {}", show(&v)))),
        }
    }

    /// A string or a list of strings (SparseML's `Union[str, List[str]]`).
    pub fn strings_opt(&mut self, field: &'static str) -> Result<Option<Vec<String>>, RecipeError> {
        match self.value(field)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => strings(&v).map(Some).ok_or_else(|| {
                self.invalid(field, format!("expected a string or a list of strings, got {}", show(&v)))
            }),
        }
    }

    pub fn ints_opt(&mut self, field: &'static str) -> Result<Option<Vec<i64>>, RecipeError> {
        match self.value(field)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|x| x.as_i64())
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.invalid(field, "expected a list of integers")),
            Some(v) => Err(self.invalid(field, format!("expected a list of integers, got {}", show(&v)))),
        }
    }

    /// Any YAML value, as JSON (for free-form kwargs dictionaries).
    pub fn json_opt(&mut self, field: &'static str) -> Result<Option<serde_json::Value>, RecipeError> {
        match self.value(field)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::to_value(&v).map(Some).map_err(|e| self.invalid(field, e.to_string())),
        }
    }

    /// Fails on any field the modifier did not ask for.
    pub fn finish(self) -> Result<BTreeMap<String, usize>, RecipeError> {
        if let Some(unknown) = self.map.keys().find(|k| !self.used.contains(*k)) {
            let mut known: Vec<&str> = self.known.clone();
            known.sort();
            known.dedup();
            return Err(RecipeError::UnknownField {
                at: self.at(unknown),
                modifier: self.modifier.clone(),
                known: known.join(", "),
            });
        }
        Ok(self.field_lines)
    }
}

pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Python truthiness for the YAML values a boolean field may hold: booleans, 0/1, null.
pub(crate) fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Null => Some(false),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Some(false),
            Some(1.0) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

fn not_a_bool(v: &Value) -> String {
    match v {
        Value::Number(_) => format!("expected true or false (or 1 or 0), got {}, which is out of range", show(v)),
        _ => format!("expected true or false (or 1 or 0), got {}", show(v)),
    }
}

/// A string or a (possibly nested) list of strings, flattened depth first as SparseML's
/// `validate_str_iterable` flattens it; the `__ALL__` and `__ALL_PRUNABLE__` tokens in any case
/// (SparseML upper-cases them).
pub(crate) fn strings(v: &Value) -> Option<Vec<String>> {
    fn token(s: &str) -> String {
        let up = s.to_ascii_uppercase();
        if up == ALL_PARAMS || up == ALL_PRUNABLE {
            up
        } else {
            s.to_string()
        }
    }
    fn flatten(v: &Value, out: &mut Vec<String>) -> Option<()> {
        match v {
            Value::String(s) => out.push(token(s)),
            Value::Sequence(items) => items.iter().try_for_each(|x| flatten(x, out))?,
            _ => return None,
        }
        Some(())
    }
    let mut out = Vec::new();
    flatten(v, &mut out)?;
    Some(out)
}

pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => {
            serde_yaml::to_string(other).map(|s| s.trim().replace('\n', " ")).unwrap_or_else(|_| kind(other).into())
        }
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn sorted<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = it.map(String::as_str).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
