//! Embeds every `recipes/*.yaml` into the binary (`sparsec recipes`, `--recipe NAME`): writes
//! `$OUT_DIR/builtin_recipes.rs`, a name-ordered list of `(name, include_str!(file))`.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("recipes");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("recipes/ exists")
        .map(|e| e.expect("readable recipes/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort_by(|a, b| a.file_stem().cmp(&b.file_stem()));
    let mut out = String::from("&[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_stem().unwrap().to_str().expect("UTF-8 recipe names");
        out.push_str(&format!("    ({name:?}, include_str!({:?})),\n", f.display().to_string()));
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_recipes.rs");
    std::fs::write(dest, out).expect("writable OUT_DIR");
}
