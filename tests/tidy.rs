//! House rules checked in code (in the spirit of rust-analyzer's `tidy.rs`), over `src/` and
//! `crates/*/src`:
//! - every module opens with a `//!` doc saying where it sits;
//! - no top-level module of `src/` imports one on a higher layer of [`LAYERS`];
//! - no files import each other in a circle (a module's own submodules aside: a parent declares
//!   and re-exports them);
//! - every `unsafe` block and `unsafe impl` has a `// SAFETY:` comment just above it (or on its line);
//! - no hand-written function runs past [`MAX_FN_LINES`] lines, but the few in [`LONG_FUNCTIONS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// The layers of `src/`, lowest first: a module may import only modules on a strictly lower
/// layer. The pipeline reads bottom-up: the IR and file helpers; the ONNX codec and recipes;
/// graph passes and autodiff; the runtime that executes graphs; the compiler and model
/// inspection; the QA pipeline; training, serving and benchmarking; export (one-shot export
/// trains); the one-command flow; the command line.
const LAYERS: &[(&str, u32)] = &[
    ("files", 0),
    ("ir", 0),
    ("onnx", 1),
    ("recipe", 1),
    ("autodiff", 2),
    ("passes", 2),
    ("runtime", 3),
    ("compile", 4),
    ("info", 4),
    ("qa", 5),
    ("train", 6),
    ("serve", 6),
    ("bench", 6),
    ("export", 7),
    ("sparsify", 8),
    ("cli", 9),
];

/// The longest a function may be, from its `fn` line to its closing brace (STYLE.md: a function
/// that does not fit on a screen is doing several things).
const MAX_FN_LINES: usize = 100;

/// Functions allowed past [`MAX_FN_LINES`]: (file from the repository root, function, why). At
/// most three.
const LONG_FUNCTIONS: &[(&str, &str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One crate's source: its `src/` folder and every `.rs` file under it (relative paths).
struct Crate {
    name: String,
    src: PathBuf,
    files: Vec<PathBuf>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read source dir").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn crates() -> Vec<Crate> {
    let mut srcs = vec![("sparsec".to_string(), root().join("src"))];
    let mut members: Vec<_> =
        std::fs::read_dir(root().join("crates")).expect("crates/").map(|e| e.unwrap().path()).collect();
    members.sort();
    for m in members {
        if m.join("src").is_dir() {
            srcs.push((m.file_name().unwrap().to_string_lossy().to_string(), m.join("src")));
        }
    }
    srcs.into_iter()
        .map(|(name, src)| {
            let mut files = Vec::new();
            rs_files(&src, &mut files);
            let files = files.into_iter().map(|f| f.strip_prefix(&src).unwrap().to_path_buf()).collect();
            Crate { name, src, files }
        })
        .collect()
}

/// The module path of a file relative to its crate's `src/` (`a/b.rs` and `a/b/mod.rs` → `a::b`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().to_string()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The source with comments and string and char literals blanked to spaces (line breaks kept,
/// so lines still match the file), so that doc links, messages and braces inside literals do not
/// count as code.
fn code_only(text: &str) -> String {
    let s: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < s.len() {
        match literal_end(&s, i) {
            Some(end) => {
                out.extend(s[i..end].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
                i = end;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

/// Where the comment or literal that starts at `s[i]` ends (exclusive), if one starts there:
/// `//` and nested `/* */` comments, `"…"` strings, raw strings `r#"…"#` (also `br`), and char
/// literals (`'{'`, `'\''`; a lifetime `'a` is code).
fn literal_end(s: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| s.get(k).copied();
    let after_ident = i > 0 && (s[i - 1].is_alphanumeric() || s[i - 1] == '_');
    match (s[i], at(i + 1)) {
        ('/', Some('/')) => Some(s[i..].iter().position(|&c| c == '\n').map_or(s.len(), |p| i + p)),
        ('/', Some('*')) => {
            let (mut depth, mut k) = (0, i);
            while k < s.len() {
                match (s[k], at(k + 1)) {
                    ('/', Some('*')) => (depth, k) = (depth + 1, k + 2),
                    ('*', Some('/')) if depth == 1 => return Some(k + 2),
                    ('*', Some('/')) => (depth, k) = (depth - 1, k + 2),
                    _ => k += 1,
                }
            }
            Some(s.len())
        }
        ('"', _) => {
            let mut k = i + 1;
            while k < s.len() {
                match s[k] {
                    '\\' => k += 2,
                    '"' => return Some(k + 1),
                    _ => k += 1,
                }
            }
            Some(s.len())
        }
        ('r', _) | ('b', Some('r')) if !after_ident => {
            let open = if s[i] == 'b' { i + 2 } else { i + 1 };
            let hashes = s[open..].iter().take_while(|&&c| c == '#').count();
            if at(open + hashes) != Some('"') {
                return None;
            }
            let closes =
                |k: usize| s[k] == '"' && s[k + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes;
            let close = (open + hashes + 1..s.len()).find(|&k| closes(k));
            Some(close.map_or(s.len(), |k| k + 1 + hashes))
        }
        ('\'', Some('\\')) => Some(s[i + 3..].iter().position(|&c| c == '\'').map_or(s.len(), |p| i + 4 + p)),
        ('\'', Some(_)) if at(i + 2) == Some('\'') => Some(i + 3),
        _ => None,
    }
}

/// One function of a source file: its name, the line of its `fn`, and its length in lines (from
/// the `fn` line to its closing brace).
#[derive(Debug, PartialEq)]
struct FnSpan {
    name: String,
    line: usize,
    lines: usize,
}

/// Every function with a body in `text`, methods and nested functions included, in source order:
/// each `fn name`, its body found as the first `{` outside the signature's brackets (a `;` there
/// means no body), matched to its closing brace with comments and literals blanked.
fn functions(text: &str) -> Vec<FnSpan> {
    let code: Vec<char> = code_only(text).chars().collect();
    let mut line_of = Vec::with_capacity(code.len() + 1);
    let mut line = 1;
    for &c in &code {
        line_of.push(line);
        line += usize::from(c == '\n');
    }
    line_of.push(line);
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for k in 0..code.len() {
        let keyword = code[k..].starts_with(&['f', 'n'])
            && (k == 0 || !ident(code[k - 1]))
            && code.get(k + 2).is_some_and(|c| c.is_whitespace());
        if !keyword {
            continue;
        }
        let start = k + 2 + code[k + 2..].iter().take_while(|c| c.is_whitespace()).count();
        let name_len = code[start..].iter().take_while(|&&c| ident(c)).count();
        if name_len == 0 {
            continue;
        }
        let name: String = code[start..start + name_len].iter().collect();
        let mut depth = 0i32;
        let body = (start + name_len..code.len()).find(|&j| {
            match code[j] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ';' | '{' if depth == 0 => return true,
                _ => {}
            }
            false
        });
        let Some(open) = body.filter(|&j| code[j] == '{') else { continue };
        let mut depth = 0i32;
        let close = (open..code.len())
            .find(|&j| {
                match code[j] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap_or(code.len());
        out.push(FnSpan { name, line: line_of[k], lines: line_of[close] - line_of[k] + 1 });
    }
    out
}

/// The paths a file names: `crate::…`, `super::…`, `self::…` in code and every leaf of its `use`
/// trees, resolved to absolute module paths (item names included; callers take the longest
/// prefix that is a module).
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut raw: Vec<String> = Vec::new();
    let use_re = Regex::new(r"(?s)\buse\s+([^;]+);").unwrap();
    for c in use_re.captures_iter(code) {
        expand_use_tree(&c[1].split_whitespace().collect::<String>(), "", &mut raw);
    }
    let path_re = Regex::new(r"\b(?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+").unwrap();
    raw.extend(path_re.find_iter(code).map(|m| m.as_str().to_string()));
    raw.iter().filter_map(|p| absolute(p, here)).collect()
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand_use_tree(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or(tree);
        out.push(format!("{prefix}{leaf}"));
        return;
    };
    let head = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        expand_use_tree(p, &format!("{prefix}{head}"), out);
    }
}

fn absolute(path: &str, here: &[String]) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut at: Vec<String>;
    let mut rest = segs.as_slice();
    match *rest.first()? {
        "crate" => {
            at = Vec::new();
            rest = &rest[1..];
        }
        "self" => {
            at = here.to_vec();
            rest = &rest[1..];
        }
        "super" => {
            at = here.to_vec();
            while rest.first() == Some(&"super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    at.extend(rest.iter().filter(|s| **s != "self" && **s != "*").map(|s| s.to_string()));
    Some(at)
}

/// Every file-to-file import of one crate (`from → to`), a module's edges to its own
/// submodules aside.
fn imports(c: &Crate) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeMap<Vec<String>, &PathBuf> =
        c.files.iter().filter(|f| !f.ends_with("main.rs")).map(|f| (module_of(f), f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (here, file) in &modules {
        let text = std::fs::read_to_string(c.src.join(file)).unwrap();
        let set = edges.entry(here.clone()).or_default();
        for mut p in named_paths(&code_only(&text), here) {
            while !p.is_empty() && !modules.contains_key(&p) {
                p.pop();
            }
            if p != *here && !p.starts_with(here) {
                set.insert(p);
            }
        }
    }
    edges
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate root".into()
    } else {
        m.join("::")
    }
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(s: &mut State, v: &Vec<String>) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        let next: Vec<Vec<String>> = s.edges.get(v).map(|e| e.iter().cloned().collect()).unwrap_or_default();
        for w in next {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(&w);
                let done = w == *v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn every_module_opens_with_a_doc() {
    let mut missing = Vec::new();
    for c in crates() {
        for f in &c.files {
            let text = std::fs::read_to_string(c.src.join(f)).unwrap();
            if text.contains("@generated") {
                continue;
            }
            if !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!")) {
                missing.push(format!("{}/{}", c.name, f.display()));
            }
        }
    }
    assert!(missing.is_empty(), "modules without a `//!` doc on their first line: {missing:#?}");
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let c = crates().into_iter().find(|c| c.name == "sparsec").unwrap();
    let mut wrong = Vec::new();
    let mut unknown = BTreeSet::new();
    for (from, tos) in imports(&c) {
        let Some(top) = from.first() else { continue };
        for to in tos {
            let Some(to_top) = to.first() else { continue };
            if to_top == top {
                continue;
            }
            match (layer.get(top.as_str()), layer.get(to_top.as_str())) {
                (Some(a), Some(b)) if a > b => {}
                (Some(a), Some(b)) => {
                    wrong.push(format!("{} (layer {a}) imports {} (layer {b})", show(&from), show(&to)))
                }
                (None, _) => {
                    unknown.insert(top.clone());
                }
                (_, None) => {
                    unknown.insert(to_top.clone());
                }
            }
        }
    }
    assert!(unknown.is_empty(), "modules missing from tidy.rs's LAYERS table: {unknown:?}");
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let mut found = Vec::new();
    for c in crates() {
        for comp in circles(&imports(&c)) {
            found.push(format!("{}: {}", c.name, comp.iter().map(|m| show(m)).collect::<Vec<_>>().join(", ")));
        }
    }
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn every_unsafe_block_says_why_it_is_safe() {
    let block = Regex::new(r"\bunsafe\s*(\{|impl\b)").unwrap();
    let mut missing = Vec::new();
    for c in crates() {
        for f in &c.files {
            let text = std::fs::read_to_string(c.src.join(f)).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let code: Vec<String> = code_only(&text).lines().map(str::to_string).collect();
            for (i, l) in code.iter().enumerate() {
                if !block.is_match(l) || lines[i].contains("SAFETY:") {
                    continue;
                }
                // The comment lines just above, through attributes and the statement's own
                // earlier lines (`let x =` on the line before).
                let mut j = i;
                let mut said = false;
                while j > 0 {
                    j -= 1;
                    let above = lines[j].trim();
                    if above.contains("SAFETY:") {
                        said = true;
                        break;
                    }
                    let comment = above.starts_with("//") || above.starts_with("#[");
                    let statement_ends = above.is_empty() || above.ends_with([';', '{', '}']);
                    if !comment && statement_ends {
                        break;
                    }
                }
                if !said {
                    missing.push(format!("{}/{}:{}", c.name, f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "`unsafe` without a `// SAFETY:` line just above: {} places: {missing:#?}",
        missing.len()
    );
}

#[test]
fn unsafe_lives_only_in_the_kernels_and_ops_crates() {
    let word = Regex::new(r"\bunsafe\b").unwrap();
    let c = crates().into_iter().find(|c| c.name == "sparsec").unwrap();
    let mut found = Vec::new();
    for f in &c.files {
        let text = std::fs::read_to_string(c.src.join(f)).unwrap();
        if text.contains("@generated") {
            continue;
        }
        for (i, l) in code_only(&text).lines().enumerate() {
            if word.is_match(l) {
                found.push(format!("src/{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(found.is_empty(), "`unsafe` outside the kernel crates: {found:#?}");
}

#[test]
fn no_function_runs_past_a_screen() {
    let mut all: Vec<(String, FnSpan)> = Vec::new();
    for c in crates() {
        let dir = c.src.strip_prefix(root()).unwrap().to_path_buf();
        for f in &c.files {
            let text = std::fs::read_to_string(c.src.join(f)).unwrap();
            if text.contains("@generated") {
                continue;
            }
            all.extend(functions(&text).into_iter().map(|s| (dir.join(f).display().to_string(), s)));
        }
    }
    assert!(all.len() > 1000, "the scan found only {} functions", all.len());
    all.sort_by_key(|(_, s)| std::cmp::Reverse(s.lines));
    println!("the longest functions:");
    for (file, s) in all.iter().take(5) {
        println!("  {} lines: {}:{} fn {}", s.lines, file, s.line, s.name);
    }
    assert!(LONG_FUNCTIONS.len() <= 3, "at most three functions may be listed in LONG_FUNCTIONS");
    let listed = |file: &str, s: &FnSpan| LONG_FUNCTIONS.iter().any(|&(f, n, _)| f == file && n == s.name);
    let too_long: Vec<String> = all
        .iter()
        .filter(|(file, s)| s.lines > MAX_FN_LINES && !listed(file, s))
        .map(|(file, s)| format!("{file}:{} fn {} ({} lines)", s.line, s.name, s.lines))
        .collect();
    assert!(
        too_long.is_empty(),
        "functions over {MAX_FN_LINES} lines: split each by phase, or list it in LONG_FUNCTIONS with a reason: \
         {too_long:#?}"
    );
    let stale: Vec<&str> = LONG_FUNCTIONS
        .iter()
        .filter(|&&(f, n, _)| !all.iter().any(|(file, s)| file == f && s.name == n && s.lines > MAX_FN_LINES))
        .map(|&(_, n, _)| n)
        .collect();
    assert!(stale.is_empty(), "LONG_FUNCTIONS lists functions that are no longer long: {stale:?}");
}

/// A 101-line function, a method with braces in comments and literals, a nested function, a
/// declaration without a body and a function-pointer type.
const SAMPLE: &str = r##"
fn long() {
BODY}

type Callback = fn(u8) -> u8;

impl Thing {
    /// A doc comment with a brace: }
    fn method<'a>(&'a self, x: [u8; 4]) -> &'a str {
        let open = '{';
        let quote = '\'';
        let s = "}} { \" }";
        // } a comment
        /* } /* nested */ } */
        let r = r#"}"#;
        fn nested(b: u8) -> bool {
            b == b'}'
        }
        s
    }

    fn declared(&self);
}
"##;

#[test]
fn function_scan_matches_braces_outside_comments_and_literals() {
    let body: String = (0..99).map(|i| format!("    step({i});\n")).collect();
    let found = functions(&SAMPLE.replace("BODY", &body));
    let span = |name: &str, line, lines| FnSpan { name: name.into(), line, lines };
    assert_eq!(found, [span("long", 2, 101), span("method", 108, 12), span("nested", 115, 3)]);
    let long: Vec<&str> = found.iter().filter(|s| s.lines > MAX_FN_LINES).map(|s| s.name.as_str()).collect();
    assert_eq!(long, ["long"]);
}
