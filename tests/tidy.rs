//! House rules checked in code (in the spirit of rust-analyzer's `tidy.rs`), over `src/` and
//! `crates/*/src`:
//! - every module opens with a `//!` doc saying where it sits;
//! - no top-level module of `src/` imports one on a higher layer of [`LAYERS`];
//! - no files import each other in a circle (a module's own submodules aside: a parent declares
//!   and re-exports them);
//! - every `unsafe` block and `unsafe impl` has a `// SAFETY:` comment just above it (or on its line).

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

/// The source with comments and string literals blanked out, so that doc links and messages do
/// not count as imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut s = String::new();
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                }
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
                s.push_str("\"\"");
                continue;
            }
            s.push(c);
        }
        out.push_str(&s);
        out.push('\n');
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
