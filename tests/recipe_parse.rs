//! Recipes parse as SparseML parses them, and bad recipes fail with the file, line and field.

use std::path::{Path, PathBuf};

use crate::common::*;
use sparsec::recipe::schedule::Schedule;
use sparsec::recipe::{InitSparsity, InterFunc, LrFunc, MaskType, Modifier, PruningAlgorithm, Recipe, RecipeError};

fn no_overrides() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

fn data(name: &str) -> PathBuf {
    root().join("tests/data/recipes").join(name)
}

fn load(path: &Path) -> Recipe {
    Recipe::load(path, &no_overrides()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_err(name: &str) -> RecipeError {
    match Recipe::load(&data(name), &no_overrides()) {
        Ok(_) => panic!("{name} should not parse"),
        Err(e) => e,
    }
}

#[test]
fn every_shipped_recipe_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let r = load(&path);
            assert!(!r.modifiers.is_empty(), "{}", path.display());
            assert_eq!(r.version.as_deref(), Some("1.1.0"), "{}", path.display());
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("# "), "{} must be documented at its top", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 14);
}

#[test]
fn example_obert_recipe_parses_with_every_field() {
    let path = root().join("../shared/reference/example-recipe-obert-unstructured90-squad.yaml");
    if !path.exists() {
        skip("../shared/reference is absent");
        return;
    }
    let r = load(&path);
    let names: Vec<&str> = r.modifiers.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "EpochRangeModifier",
            "LearningRateFunctionModifier",
            "LearningRateFunctionModifier",
            "OBSPruningModifier",
            "DistillationModifier"
        ]
    );
    let groups: Vec<&str> = r.modifiers.iter().map(|m| m.group.as_str()).collect();
    assert_eq!(
        groups,
        ["modifiers", "training_modifiers", "training_modifiers", "training_modifiers", "distillation_modifiers"]
    );
    let Modifier::Pruning(p) = &r.modifiers[3].modifier else { panic!() };
    assert_eq!(r.modifiers[3].line, 21);
    assert_eq!(p.params.len(), 6);
    assert_eq!(p.init_sparsity, InitSparsity::Value(0.7));
    assert_eq!(p.final_sparsity, vec![0.9; 6]);
    assert_eq!((p.start_epoch, p.end_epoch, p.update_frequency), (2.0, 26.0, 4.0));
    assert_eq!(p.inter_func, InterFunc::Cubic);
    assert_eq!(p.mask_type, MaskType::Unstructured);
    assert!(p.global_sparsity && p.leave_enabled);
    let PruningAlgorithm::Obs { num_grads, damp, fisher_block_size, grad_sampler_kwargs, num_recomputations } =
        &p.algorithm
    else {
        panic!("{:?}", p.algorithm)
    };
    assert_eq!((*num_grads, *damp, *fisher_block_size, *num_recomputations), (1024, 1e-7, 50, 1));
    assert_eq!(grad_sampler_kwargs.as_ref().unwrap()["batch_size"], 8);
    let Modifier::LearningRateFunction(lr) = &r.modifiers[2].modifier else { panic!() };
    assert_eq!((lr.lr_func, lr.cycle_epochs, lr.init_lr, lr.final_lr), (LrFunc::CyclicLinear, 4.0, 8e-5, 8e-6));
    let Modifier::Distillation(d) = &r.modifiers[4].modifier else { panic!() };
    assert_eq!((d.hardness, d.temperature), (1.0, 2.0));
    assert_eq!(d.distill_output_keys.as_deref(), Some(&["start_logits".to_string(), "end_logits".to_string()][..]));
    let s = Schedule::new(&r);
    assert_eq!(s.total_epochs(), 30.0);
    assert_eq!(s.learning_rate(1.0, 100), Some(8e-5 + 0.5 * (8e-6 - 8e-5)));
    assert_eq!(s.learning_rate(2.0, 100), Some(8e-5), "the cyclic modifier takes over at epoch 2");
}

#[test]
fn variables_eval_and_overrides_follow_sparseml() {
    let path = root().join("recipes/gmp80-unstructured-qat-distill.yaml");
    let r = load(&path);
    assert_eq!(r.variables["pruning_end"], 6.0);
    let Modifier::Pruning(p) = &r.modifiers[3].modifier else { panic!() };
    assert_eq!((p.start_epoch, p.end_epoch, p.final_sparsity[0]), (1.0, 6.0, 0.8));
    let mut args = serde_json::Map::new();
    args.insert("num_epochs".into(), serde_json::json!(8));
    args.insert("final_sparsity".into(), serde_json::json!(0.7));
    let r8 = Recipe::load(&path, &args).unwrap();
    let Modifier::Pruning(p) = &r8.modifiers[3].modifier else { panic!() };
    assert_eq!((p.end_epoch, p.final_sparsity[0]), (4.0, 0.7));
    let Modifier::Quantization(q) = &r8.modifiers[4].modifier else { panic!() };
    assert_eq!((q.start_epoch, q.disable_quantization_observer_epoch), (6.0, Some(7.5)));
    assert!(q.legacy && !q.quantize_embeddings && q.exclude_module_types == ["LayerNorm", "Tanh"]);
    assert_eq!(Schedule::new(&r8).total_epochs(), 8.0);
    let mut bad = serde_json::Map::new();
    bad.insert("num_epoch".into(), serde_json::json!(8));
    let e = Recipe::load(&path, &bad).unwrap_err().to_string();
    assert!(e.contains("num_epoch") && e.contains("not set in the recipe"), "{e}");
}

#[test]
fn staged_recipe_stages_inherit_and_shadow_globals() {
    let r = load(&data("staged.yaml"));
    assert!(r.staged);
    let stages: Vec<_> = r.modifiers.iter().map(|m| m.stage.as_deref().unwrap()).collect();
    assert_eq!(stages, ["dense_stage", "dense_stage", "pruning_stage", "pruning_stage"]);
    let Modifier::SetLearningRate(a) = &r.modifiers[1].modifier else { panic!() };
    let Modifier::SetLearningRate(b) = &r.modifiers[3].modifier else { panic!() };
    assert_eq!((a.learning_rate, b.learning_rate), (1e-4, 5e-5));
    let Modifier::Pruning(p) = &r.modifiers[2].modifier else { panic!() };
    assert_eq!(p.init_sparsity, InitSparsity::FromParam);
    assert_eq!(p.mask_type, MaskType::Block { rows: 1, cols: 4 });
    assert_eq!((p.inter_func, p.end_epoch), (InterFunc::InverseCubic, 10.0));
    let Modifier::EpochRange(e) = &r.modifiers[0].modifier else { panic!() };
    assert_eq!(e.end_epoch, 2.0);
    assert_eq!(r.modifiers[2].line, 18);
    let mut args = serde_json::Map::new();
    args.insert("lr".into(), serde_json::json!(3e-5));
    let r2 = Recipe::load(&data("staged.yaml"), &args).unwrap();
    let Modifier::SetLearningRate(a) = &r2.modifiers[1].modifier else { panic!() };
    let Modifier::SetLearningRate(b) = &r2.modifiers[3].modifier else { panic!() };
    assert_eq!((a.learning_rate, b.learning_rate), (3e-5, 3e-5), "overrides replace the variable in every stage");
}

#[test]
fn markdown_front_matter_is_read_with_file_line_numbers() {
    let r = load(&data("card.md"));
    assert_eq!(r.modifiers[0].line, 6);
    assert_eq!(r.modifiers[0].field_lines["mask_type"], 13);
    let Modifier::Pruning(p) = &r.modifiers[0].modifier else { panic!() };
    assert_eq!(p.mask_type, MaskType::NM { n: 2, m: 4 });
    assert_eq!((p.end_epoch, p.leave_enabled, p.inter_func), (2.0, false, InterFunc::Linear));
    assert_eq!(p.target_sparsity(3.0, 0.0, 0.5), None, "leave_enabled: false removes masks after end_epoch");
}

fn assert_names(e: &RecipeError, file: &str, line: usize, field: &str) {
    let msg = e.to_string();
    assert!(msg.contains(&format!("{file}:{line}")), "expected {file}:{line} in: {msg}");
    assert!(msg.contains(field), "expected field {field} in: {msg}");
    eprintln!("{msg}");
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let e = load_err("bad-syntax.yaml");
    assert!(matches!(e, RecipeError::Syntax { .. }), "{e:?}");
    assert_names(&e, "bad-syntax.yaml", 5, "YAML syntax error");
}

#[test]
fn unknown_modifier_names_file_line_and_tag() {
    let e = load_err("bad-unknown-modifier.yaml");
    assert_names(&e, "bad-unknown-modifier.yaml", 8, "MagicPruningModifier");
    assert!(e.to_string().contains("GMPruningModifier"), "lists the known modifiers");
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let e = load_err("bad-unknown-field.yaml");
    assert_names(&e, "bad-unknown-field.yaml", 4, "DistillationModifier.temprature");
    assert!(e.to_string().contains("temperature"), "lists the real fields");
}

#[test]
fn final_sparsity_out_of_range_names_the_field() {
    let e = load_err("bad-final-sparsity.yaml");
    assert_names(&e, "bad-final-sparsity.yaml", 5, "GMPruningModifier.final_sparsity");
    assert!(e.to_string().contains("[0, 1)"));
}

#[test]
fn end_epoch_before_start_epoch_names_the_field() {
    let e = load_err("bad-end-before-start.yaml");
    assert_names(&e, "bad-end-before-start.yaml", 9, "GMPruningModifier.end_epoch");
}

#[test]
fn n_m_mask_keeping_more_than_the_group_is_rejected() {
    let e = load_err("bad-mask-4-2.yaml");
    assert_names(&e, "bad-mask-4-2.yaml", 9, "GMPruningModifier.mask_type");
    assert!(e.to_string().contains("keeps 4 of every 2"));
}

#[test]
fn regex_matching_nothing_names_field_and_closest_parameters() {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let out = tempfile::tempdir().unwrap();
    let o = crate::common::sparsec_command()
        .args(["compile", model.to_str().unwrap(), "--recipe"])
        .arg(data("bad-regex-no-match.yaml"))
        .arg("-o")
        .arg(out.path().join("compiled"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{stderr}");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr.contains("bad-regex-no-match.yaml:8: MagnitudePruningModifier.params"), "{stderr}");
    assert!(stderr.contains("re:bert.encoder.layer.*.attention.self.quer.weight"), "{stderr}");
    assert!(stderr.contains("closest names: bert.encoder.layer."), "{stderr}");
    assert!(!out.path().join("compiled").exists(), "nothing is written on failure");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "no temporary folder is left behind");
}

#[test]
fn binary_reports_bad_recipes_with_exit_code_one() {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    for (file, needle) in [
        ("bad-syntax.yaml", "bad-syntax.yaml:5"),
        ("bad-unknown-modifier.yaml", "bad-unknown-modifier.yaml:8: MagicPruningModifier"),
        ("bad-final-sparsity.yaml", "bad-final-sparsity.yaml:5: GMPruningModifier.final_sparsity"),
        ("bad-end-before-start.yaml", "bad-end-before-start.yaml:9: GMPruningModifier.end_epoch"),
        ("bad-mask-4-2.yaml", "bad-mask-4-2.yaml:9: GMPruningModifier.mask_type"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let o = crate::common::sparsec_command()
            .args(["compile", model.to_str().unwrap(), "--recipe"])
            .arg(data(file))
            .arg("-o")
            .arg(out.path().join("c"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
