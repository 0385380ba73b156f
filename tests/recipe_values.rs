//! Modifier field values are read as SparseML reads them (it passes the YAML values straight to
//! Python constructors): booleans by Python truthiness (1/0, null), ints where floats are
//! expected, a single string where a list is expected, nested lists flattened, the `__ALL__`
//! tokens in any case. Unknown fields and out-of-range values stay errors that name the field.

use std::path::Path;

use sparsec::recipe::{Modifier, PruningModifier, QuantizationModifier, Recipe, RecipeError};

fn parse(yaml: &str) -> Result<Recipe, RecipeError> {
    Recipe::parse(yaml, Path::new("values.yaml"), &serde_json::Map::new())
}

fn quantization(fields: &str) -> Result<QuantizationModifier, RecipeError> {
    let r = parse(&format!("modifiers:\n  - !QuantizationModifier\n    start_epoch: 0.0\n{fields}"))?;
    match r.modifiers.into_iter().next().unwrap().modifier {
        Modifier::Quantization(q) => Ok(*q),
        other => panic!("not a quantization modifier: {other:?}"),
    }
}

fn gmp(fields: &str) -> Result<PruningModifier, RecipeError> {
    let r = parse(&format!(
        "modifiers:\n  - !GMPruningModifier\n    init_sparsity: 0.05\n    start_epoch: 0.0\n    end_epoch: 2.0\n    update_frequency: 1.0\n{fields}"
    ))?;
    match r.modifiers.into_iter().next().unwrap().modifier {
        Modifier::Pruning(p) => Ok(p),
        other => panic!("not a pruning modifier: {other:?}"),
    }
}

#[test]
fn boolean_fields_take_one_and_zero_as_python_truthiness() {
    let q = quantization("    quantize_embeddings: 1\n    reduce_range: 1\n    exclude_batchnorm: 0\n").unwrap();
    assert!(q.quantize_embeddings);
    assert!(q.reduce_range);
    assert!(!q.exclude_batchnorm);
    let q = quantization("    quantize_embeddings: 0\n").unwrap();
    assert!(!q.quantize_embeddings);
    let p = gmp("    final_sparsity: 0.8\n    leave_enabled: 0\n    global_sparsity: 1\n").unwrap();
    assert!(!p.leave_enabled);
    assert!(p.global_sparsity);
}

#[test]
fn boolean_fields_take_float_one_and_zero() {
    let q = quantization("    quantize_embeddings: 1.0\n    reduce_range: 0.0\n").unwrap();
    assert!(q.quantize_embeddings);
    assert!(!q.reduce_range);
}

#[test]
fn boolean_field_set_to_null_is_false_as_none_is_falsy() {
    assert!(quantization("").unwrap().quantize_embeddings, "the default is true");
    assert!(!quantization("    quantize_embeddings: null\n").unwrap().quantize_embeddings);
}

#[test]
fn boolean_field_out_of_range_number_is_an_error_naming_the_field() {
    let e = quantization("    quantize_embeddings: 2\n").unwrap_err().to_string();
    assert!(e.contains("values.yaml:4") && e.contains("QuantizationModifier.quantize_embeddings"), "{e}");
    assert!(e.contains("expected true or false (or 1 or 0), got 2, which is out of range"), "{e}");
}

#[test]
fn boolean_field_given_a_string_is_an_error_not_python_truthiness() {
    let e = quantization("    quantize_embeddings: \"false\"\n").unwrap_err().to_string();
    assert!(e.contains("QuantizationModifier.quantize_embeddings"), "{e}");
    assert!(e.contains("expected true or false (or 1 or 0), got 'false'"), "{e}");
}

#[test]
fn integers_are_read_where_floats_are_expected() {
    let p = gmp("    final_sparsity: 1\n").unwrap_err().to_string();
    assert!(p.contains("final_sparsity"), "1.0 sparsity is out of range: {p}");
    let r = parse(
        "modifiers:\n  - !GMPruningModifier\n    init_sparsity: 0\n    final_sparsity: 0.5\n    start_epoch: 0\n    end_epoch: 3\n    update_frequency: 1\n",
    )
    .unwrap();
    let Modifier::Pruning(p) = &r.modifiers[0].modifier else { panic!() };
    assert_eq!((p.start_epoch, p.end_epoch, p.update_frequency), (0.0, 3.0, 1.0));
    let q = quantization("    disable_quantization_observer_epoch: 2\n    freeze_bn_stats_epoch: 3\n").unwrap();
    assert_eq!(q.disable_quantization_observer_epoch, Some(2.0));
    assert_eq!(q.freeze_bn_stats_epoch, Some(3.0));
}

#[test]
fn a_single_string_is_read_where_a_list_is_expected() {
    let p = gmp("    final_sparsity: 0.8\n    params: re:.*query.weight\n").unwrap();
    assert_eq!(p.params, vec!["re:.*query.weight".to_string()]);
    let q = quantization("    submodules: bert.encoder\n    exclude_module_types: LayerNorm\n").unwrap();
    assert_eq!(q.submodules, Some(vec!["bert.encoder".to_string()]));
    assert_eq!(q.exclude_module_types, vec!["LayerNorm".to_string()]);
    let r = parse(
        "modifiers:\n  - !DistillationModifier\n    start_epoch: 0.0\n    hardness: 1\n    temperature: 2\n    distill_output_keys: start_logits\n",
    )
    .unwrap();
    let Modifier::Distillation(d) = &r.modifiers[0].modifier else { panic!() };
    assert_eq!(d.distill_output_keys, Some(vec!["start_logits".to_string()]));
    assert_eq!((d.hardness, d.temperature), (1.0, 2.0));
}

#[test]
fn unknown_fields_stay_errors() {
    let e = quantization("    quantise_embeddings: 1\n").unwrap_err().to_string();
    assert!(e.contains("unknown field for QuantizationModifier"), "{e}");
    assert!(e.contains("QuantizationModifier.quantise_embeddings"), "{e}");
}

#[test]
fn out_of_range_values_stay_errors() {
    let e = gmp("    final_sparsity: 1.5\n").unwrap_err().to_string();
    assert!(e.contains("GMPruningModifier.final_sparsity"), "{e}");
    let e = parse("modifiers:\n  - !DistillationModifier\n    start_epoch: 0.0\n    hardness: 2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("DistillationModifier.hardness"), "{e}");
}

#[test]
fn nested_param_lists_are_flattened_as_sparseml_flattens_them() {
    let p = gmp("    final_sparsity: 0.8\n    params: [[re:.*query.weight, re:.*key.weight], re:.*value.weight]\n")
        .unwrap();
    assert_eq!(p.params, ["re:.*query.weight", "re:.*key.weight", "re:.*value.weight"]);
}

#[test]
fn the_all_tokens_are_read_in_any_case() {
    let p = gmp("    final_sparsity: 0.8\n    params: __all_prunable__\n").unwrap();
    assert_eq!(p.params, ["__ALL_PRUNABLE__"]);
}

#[test]
fn a_list_holding_a_non_string_is_an_error_naming_the_field() {
    let e = gmp("    final_sparsity: 0.8\n    params: [re:.*query.weight, 3]\n").unwrap_err().to_string();
    assert!(e.contains("GMPruningModifier.params") && e.contains("expected a string or a list of strings"), "{e}");
}
