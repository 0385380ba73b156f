//! Errors of loading a recipe. Each names the recipe file and, where it has one, the line and the
//! modifier field at fault, so that a user can go straight to it.

use std::path::PathBuf;

/// Where in a recipe something is: file, 1-based line, and the modifier field (`GMPruningModifier.final_sparsity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub field: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{file}:{line}:{column}: YAML syntax error: {message}")]
    Syntax { file: PathBuf, line: usize, column: usize, message: String },
    #[error("{0}: recipe must be a YAML mapping of variables and `*modifiers` lists")]
    NotAMapping(PathBuf),
    #[error("{0}: Markdown recipe has no YAML front matter between `---` lines")]
    NoFrontMatter(PathBuf),
    #[error("{0}: recipe defines no modifiers (no top-level key containing `modifiers`)")]
    NoModifiers(PathBuf),
    #[error("{at}: unknown modifier `!{name}`; known modifiers: {known}")]
    UnknownModifier { at: Location, name: String, known: String },
    #[error("{at}: unknown field for {modifier}; its fields are: {known}")]
    UnknownField { at: Location, modifier: String, known: String },
    #[error("{at}: required field is missing")]
    MissingField { at: Location },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error("{at}: cannot evaluate `{expr}`: {message}")]
    Eval { at: Location, expr: String, message: String },
    #[error("{file}: --recipe-args: {message}")]
    Override { file: PathBuf, message: String },
    #[error("{at}: pattern `{pattern}` matches no parameter of the model; closest names: {closest}")]
    NoMatch { at: Location, pattern: String, closest: String },
}

impl RecipeError {
    /// The location this error points at, when it has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            RecipeError::UnknownModifier { at, .. }
            | RecipeError::UnknownField { at, .. }
            | RecipeError::MissingField { at }
            | RecipeError::Invalid { at, .. }
            | RecipeError::Eval { at, .. }
            | RecipeError::NoMatch { at, .. } => Some(at),
            _ => None,
        }
    }
}
