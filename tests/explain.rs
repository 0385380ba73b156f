//! `sparsec bench --explain`: every node is placed on sparsec's kernels or on ONNX Runtime, each
//! node left on ONNX Runtime carries a reason, and the time shares come from a real profile.

use serde_json::Value;

use crate::common::*;

fn explain(model: &str, kernels: &str) -> Value {
    let out = ok(&sparsec(&[
        "bench",
        "--model",
        model,
        "--kernels",
        kernels,
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--threads",
        "1",
        "--explain",
        "--explain-runs",
        "2",
        "--json",
    ]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn check_groups(e: &Value) -> f64 {
    let groups = e["groups"].as_array().expect("groups");
    let mut nodes = 0;
    let mut share = 0.0;
    for g in groups {
        nodes += g["nodes"].as_u64().unwrap();
        share += g["share"].as_f64().unwrap();
        match g["runs_on"].as_str().unwrap() {
            "sparsec" => assert!(g.get("reason").is_none(), "{g}"),
            "onnxruntime" => assert!(g["reason"].as_str().is_some_and(|r| !r.is_empty()), "no reason: {g}"),
            other => panic!("runs on {other}"),
        }
    }
    assert!(nodes >= e["nodes"].as_u64().unwrap(), "every node is placed: {e}");
    assert!((share - 1.0).abs() < 1e-6, "shares add up to 1: {share}");
    assert!(e["node_ms_per_run"].as_f64().unwrap() > 0.0);
    assert_eq!(e["runs"].as_u64(), Some(2));
    e["sparsec_time_share"].as_f64().unwrap()
}

#[test]
fn explain_places_every_node_and_gives_each_ort_node_a_reason() {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let lowered = explain(model.to_str().unwrap(), "auto");
    let share = check_groups(&lowered);
    let sparsec_nodes = lowered["sparsec_nodes"].as_u64().unwrap();
    assert!(sparsec_nodes > 0, "attention and LayerNorm run on sparsec's kernels: {lowered}");
    assert!(share > 0.0 && share <= 1.0, "{share}");
    let ops: Vec<&str> = lowered["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["runs_on"] == "sparsec")
        .map(|g| g["op"].as_str().unwrap())
        .collect();
    assert!(ops.contains(&"Attention") && ops.contains(&"LayerNorm"), "{ops:?}");
    // The dense fp32 linears stay on ONNX Runtime, and the lowering says why.
    let dense = lowered["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["op"] == "MatMul" && g["runs_on"] == "onnxruntime")
        .expect("dense linears on ONNX Runtime");
    assert!(dense["reason"].as_str().unwrap().contains("too dense"), "{dense}");

    let off = explain(model.to_str().unwrap(), "off");
    assert_eq!(check_groups(&off), 0.0);
    assert_eq!(off["sparsec_nodes"].as_u64(), Some(0));
}
