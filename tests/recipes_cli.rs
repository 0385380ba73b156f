//! Recipes by name: `sparsec recipes` lists every file of `recipes/` (built into the binary),
//! `recipes show` prints each byte for byte, `--recipe NAME` compiles like the path does, unknown
//! names list the built-ins, and SparseZoo stubs resolve to the built-in that reproduces them (with
//! a note) or fail with the list.

use std::path::Path;
use std::process::Output;

use crate::common::*;
use serde_json::Value;

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "sparsec failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn recipe_files() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn recipes_lists_and_shows_every_builtin() {
    let files = recipe_files();
    assert!(files.len() >= 11);
    let list = stdout(&sparsec(&["recipes"]));
    let lines: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(lines.len(), files.len(), "one line per file of recipes/:\n{list}");
    for ((name, text), line) in files.iter().zip(&lines) {
        let mut cols = line.split_whitespace();
        assert_eq!(cols.next(), Some(name.as_str()), "{line}");
        assert!(cols.count() >= 3, "a description after the name: {line}");
        assert_eq!(&stdout(&sparsec(&["recipes", "show", name])), text, "`recipes show {name}` prints the file");
    }
}

#[test]
fn unknown_recipe_names_list_the_builtins() {
    let o = sparsec(&["recipes", "show", "gmp95"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for (name, _) in recipe_files() {
        assert!(err.contains(&name), "the error lists '{name}': {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let out = dir.path().join("c");
    let o = sparsec(&["compile", model.to_str().unwrap(), "--recipe", "no-such-recipe", "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("neither a file nor a built-in recipe"), "{err}");
    assert!(err.contains("gmp80-unstructured-qat-distill") && err.contains("sparsegpt80-oneshot"), "{err}");
    assert!(!out.exists());
}

fn compile(recipe: &str, out: &Path) -> Output {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    sparsec(&["compile", model.to_str().unwrap(), "--recipe", recipe, "-o", out.to_str().unwrap(), "--json"])
}

#[test]
fn a_builtin_name_compiles_like_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let by_name = dir.path().join("by-name");
    let by_path = dir.path().join("by-path");
    let plan: Value = serde_json::from_str(&stdout(&compile("gmp80-block4x1-qat-distill", &by_name))).unwrap();
    assert_eq!(plan["recipe"], "built-in:gmp80-block4x1-qat-distill.yaml");
    stdout(&compile(root().join("recipes/gmp80-block4x1-qat-distill.yaml").to_str().unwrap(), &by_path));
    assert_eq!(
        std::fs::read(by_name.join("recipe.yaml")).unwrap(),
        std::fs::read(root().join("recipes/gmp80-block4x1-qat-distill.yaml")).unwrap()
    );
    assert!(
        std::fs::read(by_name.join("train.onnx")).unwrap() == std::fs::read(by_path.join("train.onnx")).unwrap(),
        "the same training graph"
    );
}

#[test]
fn zoo_stubs_resolve_to_the_builtin_that_reproduces_them_or_fail_with_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("zoo:nlp/question_answering/bert-base/pytorch/huggingface/squad/12layer_pruned80_quant-none-vnni", "gmp80-unstructured-qat-distill"),
        (
            "zoo:nlp/masked_language_modeling/bert-base/pytorch/huggingface/wikipedia_bookcorpus/12layer_pruned80_quant-none-vnni?recipe_type=transfer-question_answering",
            "sparse-transfer-qat-distill",
        ),
        (
            "zoo:nlp/masked_language_modeling/bert-base/pytorch/huggingface/wikipedia_bookcorpus/base-none?recipe_type=transfer-question_answering",
            "dense-finetune",
        ),
    ];
    for (i, (stub, builtin)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("c{i}"));
        let o = compile(stub, &out);
        let plan: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(plan["recipe"], format!("built-in:{builtin}.yaml"), "{stub}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("resolves to the built-in recipe '{builtin}'")), "the note says so: {err}");
        assert!(err.contains("not necessarily SparseZoo's"), "differences: {err}");
    }
    for stub in [
        "zoo:nlp/question_answering/bert-base/pytorch/huggingface/squad/pruned-aggressive_98",
        "zoo:nlp/masked_language_modeling/bert-base/pytorch/huggingface/wikipedia_bookcorpus/12layer_pruned80_quant-none-vnni",
        "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95-none",
    ] {
        let out = dir.path().join("bad");
        let o = compile(stub, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stub}");
        assert!(err.contains("downloads nothing"), "{err}");
        for (name, _) in recipe_files() {
            assert!(err.contains(&name), "the error lists '{name}': {err}");
        }
        assert!(!out.exists());
    }
}
