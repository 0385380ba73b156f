//! The spine: ONNX load/save round trips, both engines against PyTorch references, module names,
//! and clear errors on bad model files.

use std::collections::BTreeMap;

use crate::common::*;
use sparsec::ir::{infer, modules};
use sparsec::onnx::{self, SaveOptions};
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

/// Groups `caseN.name` reference tensors by case.
fn reference_cases(model: &str) -> BTreeMap<String, Vec<(String, HostTensor)>> {
    let mut cases: BTreeMap<String, Vec<(String, HostTensor)>> = BTreeMap::new();
    for (name, t) in read_safetensors(&fixture_dir(model).join("reference.safetensors")) {
        let (case, field) = name.split_once('.').expect("case.field");
        cases.entry(case.to_string()).or_default().push((field.to_string(), t));
    }
    cases
}

#[test]
fn saved_fixtures_reproduce_pytorch_logits_on_ort_and_tract() {
    let dir = tempfile::tempdir().unwrap();
    for (model, exporter, path) in fixture_exports() {
        let m = onnx::load(&path).unwrap();
        let saved = dir.path().join(format!("{model}.{exporter}.onnx"));
        onnx::save(&m, &saved, &SaveOptions::default()).unwrap();
        for engine in [EngineKind::Ort, EngineKind::Tract] {
            let mut backend = runtime::load_file(&saved, engine, &EngineOptions::default())
                .unwrap_or_else(|e| panic!("{model}.{exporter} on {engine}: {e:#}"));
            for (case, fields) in reference_cases(&model) {
                let inputs: Vec<(&str, HostTensor)> = fields
                    .iter()
                    .filter(|(f, _)| backend.input_names().iter().any(|n| n == f))
                    .map(|(f, t)| (f.as_str(), t.clone()))
                    .collect();
                assert_eq!(
                    inputs.len(),
                    backend.input_names().len(),
                    "{model} {case}: inputs {:?}",
                    backend.input_names()
                );
                let out = backend.run(&inputs).unwrap();
                for (name, got) in out {
                    let want =
                        fields.iter().find(|(f, _)| *f == name).map(|(_, t)| t.as_f32().unwrap().clone()).unwrap();
                    let d = max_abs_diff(got.as_f32().unwrap(), &want);
                    assert!(d <= 1e-4, "{model}.{exporter} {engine} {case} {name}: max abs diff {d}");
                }
            }
        }
    }
}

#[test]
fn load_save_load_is_a_fixed_point() {
    for (model, exporter, path) in fixture_exports() {
        let m1 = onnx::load(&path).unwrap();
        let b1 = onnx::encode_model(&m1);
        let m2 = onnx::decode_model(&b1, &path).unwrap();
        let b2 = onnx::encode_model(&m2);
        assert_eq!(b1, b2, "{model}.{exporter}: second save differs from the first");
        assert_eq!(m1.graph.node_count(), m2.graph.node_count());
        assert_eq!(m1.graph.initializers().len(), m2.graph.initializers().len());
    }
}

#[test]
fn round_trip_keeps_zero_valued_attributes_and_metadata() {
    for (model, exporter, path) in fixture_exports() {
        let m1 = onnx::load(&path).unwrap();
        let m2 = onnx::decode_model(&onnx::encode_model(&m1), &path).unwrap();
        for ((_, a), (_, b)) in m1.graph.nodes().zip(m2.graph.nodes()) {
            assert_eq!(a.attrs, b.attrs, "{model}.{exporter} node {}", a.name);
            assert_eq!(a.metadata, b.metadata, "{model}.{exporter} node {}", a.name);
            assert_eq!(a.domain, b.domain);
        }
        assert_eq!(m1.metadata_props, m2.metadata_props);
        assert_eq!(m1.opset_imports, m2.opset_imports);
    }
}

#[test]
fn external_data_round_trips() {
    let (_, _, path) = fixture_exports().remove(0);
    let m = onnx::load(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    onnx::save(&m, &out, &SaveOptions { external_data: Some("model.onnx.data".into()), external_threshold: Some(64) })
        .unwrap();
    assert!(dir.path().join("model.onnx.data").exists());
    let inline_len = onnx::encode_model(&m).len() as u64;
    assert!(std::fs::metadata(&out).unwrap().len() < inline_len / 2, "weights did not move out of the model file");
    let back = onnx::load(&out).unwrap();
    for ((v1, t1), (v2, t2)) in m.graph.initializers().iter().zip(back.graph.initializers()) {
        assert_eq!(m.graph.value(*v1).name, back.graph.value(*v2).name);
        assert_eq!(t1, t2);
    }
    let mut ort = runtime::load_file(&out, EngineKind::Ort, &EngineOptions::default()).unwrap();
    assert!(!ort.input_names().is_empty());
    let _ = &mut ort;
}

fn expected_modules(model: &str, layers: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..layers {
        let block: Vec<String> = match model {
            "distilbert" => {
                ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"]
                    .iter()
                    .map(|s| format!("distilbert.transformer.layer.{i}.{s}"))
                    .collect()
            }
            _ => [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ]
            .iter()
            .map(|s| format!("{model}.encoder.layer.{i}.{s}"))
            .collect(),
        };
        names.extend(block);
    }
    names.push("qa_outputs".into());
    names.sort();
    names
}

#[test]
fn module_names_resolve_for_both_exporters() {
    for (model, exporter, path) in fixture_exports() {
        let m = onnx::load(&path).unwrap();
        let mut got: Vec<String> = modules::linear_layers(&m.graph).into_iter().map(|l| l.module).collect();
        got.sort();
        assert_eq!(got, expected_modules(&model, 2), "{model}.{exporter}");
        let params = modules::parameter_names(&m.graph);
        for name in &got {
            assert!(params.contains_key(&format!("{name}.weight")), "{model}.{exporter}: {name}.weight unnamed");
            assert!(params.contains_key(&format!("{name}.bias")), "{model}.{exporter}: {name}.bias unnamed");
        }
    }
}

/// Every node output of `m` gets a dtype and a shape whose dims are all numbers or symbols.
fn assert_fully_inferred(label: &str, m: &mut sparsec::ir::Model) {
    infer::infer_facts(m).unwrap_or_else(|e| panic!("{label}: {e}"));
    let g = &m.graph;
    for (_, node) in g.nodes() {
        for v in node.outputs.iter().flatten() {
            let f = &g.value(*v).facts;
            let complete = f.dtype.is_some()
                && f.shape.as_ref().is_some_and(|s| s.iter().all(|d| !matches!(d, sparsec::ir::Dim::Unknown)));
            assert!(complete, "{label}: {} ({}) has facts {f}", g.value(*v).name, node.op_type);
        }
    }
}

#[test]
fn shape_inference_covers_every_fixture() {
    for (model, exporter, path) in fixture_exports() {
        let mut m = onnx::load(&path).unwrap();
        assert_fully_inferred(&format!("{model}.{exporter}"), &mut m);
        let g = &m.graph;
        let (batch, seq) = dim_names(&exporter);
        for &o in g.outputs() {
            assert_eq!(g.value(o).facts.to_string(), format!("f32[{batch},{seq}]"), "{model}.{exporter}");
        }
    }
}

#[test]
fn shape_inference_covers_minilm_with_symbolic_attention_shapes() {
    let Some(dir) = shared_minilm() else { return };
    let mut m = onnx::load(dir.join("model.onnx")).unwrap();
    assert_fully_inferred("minilm", &mut m);
    let g = &m.graph;
    let softmax = g.nodes().find(|(_, n)| n.op_type == "Softmax").map(|(_, n)| n.output(0).unwrap()).unwrap();
    assert_eq!(g.value(softmax).facts.to_string(), "f32[batch,12,sequence,sequence]");
}

#[test]
fn minilm_lists_37_layers() {
    let Some(dir) = shared_minilm() else { return };
    let m = onnx::load(dir.join("model.onnx")).unwrap();
    let layers = modules::linear_layers(&m.graph);
    assert_eq!(layers.len(), 37);
    let mut got: Vec<String> = layers.into_iter().map(|l| l.module).collect();
    got.sort();
    assert_eq!(got, expected_modules("bert", 6));
}

fn assert_clean_failure(out: &std::process::Output, must_mention: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    for m in must_mention {
        assert!(stderr.contains(m), "error should mention '{m}': {stderr}");
    }
}

#[test]
fn info_lists_fixture_layers_as_json() {
    for (model, _, path) in fixture_exports() {
        let out = sparsec(&["info", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> =
            v["layers"].as_array().unwrap().iter().map(|l| l["module"].as_str().unwrap().to_string()).collect();
        names.sort();
        assert_eq!(names, expected_modules(&model, 2));
        assert!(v["parameters"].as_u64().unwrap() > 0);
        assert!(v["op_histogram"]["MatMul"].as_u64().unwrap() >= 13);
    }
}

#[test]
fn corrupt_truncated_and_foreign_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, good) = fixture_exports().remove(0);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_failure(&sparsec(&["info", truncated.to_str().unwrap()]), &["truncated.onnx"]);

    let corrupt = dir.path().join("corrupt.onnx");
    let mut c = bytes.clone();
    for b in c.iter_mut().skip(10).step_by(7) {
        *b ^= 0xA5;
    }
    std::fs::write(&corrupt, &c).unwrap();
    assert_clean_failure(&sparsec(&["info", corrupt.to_str().unwrap()]), &["corrupt.onnx"]);

    let foreign = dir.path().join("notes.onnx");
    std::fs::write(&foreign, "this is a text file, not a model\n").unwrap();
    assert_clean_failure(&sparsec(&["info", foreign.to_str().unwrap()]), &["notes.onnx"]);

    let missing = dir.path().join("missing.onnx");
    assert_clean_failure(&sparsec(&["info", missing.to_str().unwrap()]), &["missing.onnx"]);
}

#[test]
fn unsupported_op_is_named_with_its_node() {
    let (_, _, good) = fixture_exports().remove(0);
    let mut m = onnx::load(&good).unwrap();
    let victim = m
        .graph
        .nodes()
        .find(|(_, n)| n.op_type == "Erf" || n.op_type == "Tanh" || n.op_type == "Softmax")
        .map(|(id, _)| id)
        .unwrap();
    let name = m.graph.node(victim).name.clone();
    let x = m.graph.node(victim).input(0).unwrap();
    let y = m.graph.node(victim).output(0).unwrap();
    m.graph
        .edit(|p| -> Result<(), sparsec::ir::IrError> {
            p.remove_node(victim);
            let spec = sparsec::ir::NodeSpec::new("FancyActivation", name.clone(), &[x]).domain("org.example");
            p.add_node_with_outputs(spec, vec![Some(y)]);
            Ok(())
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.onnx");
    onnx::save(&m, &path, &SaveOptions::default()).unwrap();
    assert_clean_failure(&sparsec(&["info", path.to_str().unwrap()]), &["custom.onnx", &name, "FancyActivation"]);
}

/// A one-node graph `y = op(x, s)` with `s` an i64 graph input declared with `s_dims`, `x` f32 `[2, 3]`,
/// and the given initializers.
fn crafted(op: &str, s_dims: &[i64], initializers: Vec<onnx::proto::TensorProto>) -> Vec<u8> {
    use onnx::proto::{tensor_shape_proto::dimension::Value as D, type_proto, *};
    use prost::Message;
    let vi = |name: &str, elem: i32, dims: &[i64]| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension { value: Some(D::DimValue(d)), ..Default::default() })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let inputs: Vec<String> = if op == "ConstantOfShape" { vec!["s".into()] } else { vec!["x".into(), "s".into()] };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            name: Some("crafted".into()),
            node: vec![NodeProto {
                input: inputs,
                output: vec!["y".into()],
                name: Some("the_node".into()),
                op_type: Some(op.into()),
                ..Default::default()
            }],
            initializer: initializers,
            input: vec![vi("x", 1, &[2, 3]), vi("s", 7, s_dims)],
            output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn crafted_sizes_and_declared_shapes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let huge = onnx::proto::TensorProto {
        name: Some("giant_weight".into()),
        dims: vec![1 << 62],
        data_type: Some(1),
        raw_data: Some(Vec::new()),
        ..Default::default()
    };
    let path = dir.path().join("giant.onnx");
    std::fs::write(&path, crafted("Reshape", &[2], vec![huge])).unwrap();
    assert_clean_failure(&sparsec(&["info", path.to_str().unwrap()]), &["giant.onnx", "giant_weight"]);

    // Shape inputs declared with absurd or negative lengths: the output rank stays unknown.
    for (op, dims) in [
        ("Reshape", vec![1_000_000_000_000_000_000]),
        ("Reshape", vec![-1]),
        ("Expand", vec![1 << 40]),
        ("ConstantOfShape", vec![i64::MAX]),
        ("ConstantOfShape", vec![-7]),
    ] {
        let path = dir.path().join(format!("{op}.onnx"));
        std::fs::write(&path, crafted(op, &dims, vec![])).unwrap();
        let m = onnx::load(&path).unwrap_or_else(|e| panic!("{op} {dims:?}: {e}"));
        let out = sparsec(&["info", path.to_str().unwrap(), "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{op} {dims:?}: {stderr}");
        let s = m.graph.inputs().iter().find(|&&v| m.graph.value(v).name == "s").copied().unwrap();
        let declared = m.graph.value(s).facts.shape.clone().unwrap();
        assert_eq!(declared.len(), 1);
        assert_eq!(declared[0].known(), (dims[0] >= 0).then_some(dims[0]), "{op}: a negative dim_value is unknown");
    }
}

#[test]
fn tract_keeps_a_bounded_number_of_shape_plans() {
    use sparsec::runtime::{Backend, TractBackend, TRACT_PLAN_CACHE as cap};
    let path = fixture_dir("bert").join("model.legacy.onnx");
    let mut b = TractBackend::from_file(&path, &EngineOptions::default()).unwrap();
    let feed = |s: usize| -> Vec<(&'static str, HostTensor)> {
        let ids = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, s]), |i| (i[1] as i64 * 7 + 3) % 1000);
        let ones = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, s]), 1i64);
        let zeros = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, s]), 0i64);
        vec![
            ("input_ids", HostTensor::I64(ids)),
            ("attention_mask", HostTensor::I64(ones)),
            ("token_type_ids", HostTensor::I64(zeros)),
        ]
    };
    let run = |b: &mut TractBackend, s: usize| {
        let f = feed(s);
        let inputs: Vec<(&str, HostTensor)> = f.into_iter().collect();
        b.run(&inputs).unwrap()
    };
    let first = run(&mut b, 2);
    for s in 2..2 + cap + 4 {
        run(&mut b, s);
        assert!(b.cached_plans() <= cap, "{} plans cached after length {s}", b.cached_plans());
    }
    assert_eq!(b.cached_plans(), cap);
    let again = run(&mut b, 2);
    for ((n, x), (_, y)) in first.iter().zip(&again) {
        assert_eq!(x.as_f32().unwrap(), y.as_f32().unwrap(), "{n}: a re-planned shape gives the same outputs");
    }
}
