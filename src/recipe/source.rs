//! Line numbers for recipe errors. `serde_yaml` values carry no positions, so a modifier is found
//! as the n-th occurrence of its `!Tag` in the text (document order, comments skipped) and a field
//! as the first `field:` key after that tag and before the next tag or top-level key.

use std::path::{Path, PathBuf};

use super::error::Location;

/// The recipe text (the YAML part) and where it starts in the file.
pub struct Source {
    pub file: PathBuf,
    lines: Vec<String>,
    /// Lines before the YAML (Markdown front matter opening), added to every reported line.
    offset: usize,
}

impl Source {
    pub fn new(file: &Path, yaml: &str, offset: usize) -> Source {
        let lines = yaml.lines().map(|l| strip_comment(l).to_string()).collect();
        Source { file: file.to_path_buf(), lines, offset }
    }

    pub fn at(&self, line0: usize, field: Option<String>) -> Location {
        Location { file: self.file.clone(), line: line0 + 1 + self.offset, field }
    }

    /// 0-based line of the `occurrence`-th (0-based) `!name` tag.
    pub fn tag_line(&self, name: &str, occurrence: usize) -> Option<usize> {
        let tag = format!("!{name}");
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.match_indices(&tag).any(|(i, _)| {
                    !l[i + tag.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.')
                })
            })
            .map(|(i, _)| i)
            .nth(occurrence)
    }

    /// 0-based line of `field:` within the modifier whose tag is on `tag_line`.
    pub fn field_line(&self, tag_line: usize, field: &str) -> Option<usize> {
        let first = &self.lines[tag_line];
        if let Some(after) = first.split_once('!').map(|x| x.1) {
            if has_key(after, field) {
                return Some(tag_line);
            }
        }
        for (i, l) in self.lines.iter().enumerate().skip(tag_line + 1) {
            let t = l.trim_start();
            if t.starts_with("- !") || t.starts_with('!') || (!l.is_empty() && !l.starts_with(char::is_whitespace)) {
                break;
            }
            if has_key(t, field) {
                return Some(i);
            }
        }
        None
    }

    /// 0-based line of a key `name:` at the top level, or within `stage` when given.
    pub fn key_line(&self, stage: Option<&str>, name: &str) -> Option<usize> {
        let start = match stage {
            Some(s) => self.key_line(None, s)? + 1,
            None => 0,
        };
        for (i, l) in self.lines.iter().enumerate().skip(start) {
            let top_level = !l.is_empty() && !l.starts_with(char::is_whitespace);
            if stage.is_some() && top_level && i > start {
                break;
            }
            if (stage.is_some() || top_level) && has_key(l.trim_start(), name) {
                return Some(i);
            }
        }
        None
    }
}

fn has_key(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(i, _)| {
        let before_ok = i == 0 || text[..i].ends_with(|c: char| c.is_whitespace() || c == '{' || c == ',');
        before_ok && text[i + key.len()..].trim_start().starts_with(':')
    })
}

fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(char::is_whitespace) => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tags_fields_and_keys_past_comments() {
        let text = "num_epochs: 10 # !GMPruningModifier in a comment\nmodifiers:\n  - !GMPruningModifier\n    start_epoch: 1\n    final_sparsity: 0.9\n  - !GMPruningModifier\n    final_sparsity: 0.5\n";
        let s = Source::new(Path::new("r.yaml"), text, 2);
        assert_eq!(s.tag_line("GMPruningModifier", 0), Some(2));
        assert_eq!(s.tag_line("GMPruningModifier", 1), Some(5));
        assert_eq!(s.field_line(2, "final_sparsity"), Some(4));
        assert_eq!(s.field_line(5, "final_sparsity"), Some(6));
        assert_eq!(s.field_line(5, "start_epoch"), None);
        assert_eq!(s.key_line(None, "num_epochs"), Some(0));
        assert_eq!(s.at(4, None).line, 7);
    }
}
