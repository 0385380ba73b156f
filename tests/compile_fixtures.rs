//! `sparsec compile` on the fixtures: the rewritten graph computes what the original computes
//! (masks of ones, quantization off), masks zero exactly the masked weights, fake quantization
//! matches an independent computation, and targets resolve identically on both exporters.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::common::*;
use ndarray::{ArrayD, IxDyn};
use sparsec::compile::{compile, Plan};
use sparsec::ir::{modules, DType, Facts, Model, NodeSpec, Patch, Tensor, ValueId};
use sparsec::onnx;
use sparsec::passes::{ExposeTrainableParams, Pass, PassError, QUANT_ENABLED_INPUT};
use sparsec::recipe::Recipe;
use sparsec::runtime::{self, EngineKind, EngineOptions, HostTensor};

fn recipe(name: &str) -> Recipe {
    let p = root().join("recipes").join(name);
    Recipe::load(&p, &serde_json::Map::new()).unwrap()
}

fn compiled(path: &Path, r: &Recipe) -> (Model, Model, Plan) {
    let original = onnx::load(path).unwrap();
    let mut m = original.clone();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let plan = compile(&mut m, path, r).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    (original, m, plan)
}

/// The first reference case's model inputs.
fn model_inputs(model: &str) -> Vec<(String, HostTensor)> {
    let mut by_case: BTreeMap<String, Vec<(String, HostTensor)>> = BTreeMap::new();
    for (name, t) in read_safetensors(&fixture_dir(model).join("reference.safetensors")) {
        let (case, field) = name.split_once('.').unwrap();
        by_case.entry(case.into()).or_default().push((field.into(), t));
    }
    let (_, fields) = by_case.into_iter().next().unwrap();
    fields
        .into_iter()
        .filter(|(f, _)| ["input_ids", "attention_mask", "token_type_ids"].contains(&f.as_str()))
        .collect()
}

fn run(m: &Model, feeds: &[(String, HostTensor)]) -> HashMap<String, ArrayD<f32>> {
    run_with(m, feeds, &EngineOptions::default())
}

/// Runs on ORT without the fusions that change float rounding (used where a rounding-sensitive
/// comparison needs both graphs to see identical upstream values).
fn run_basic(m: &Model, feeds: &[(String, HostTensor)]) -> HashMap<String, ArrayD<f32>> {
    run_with(m, feeds, &EngineOptions { basic_optimizations_only: true, ..EngineOptions::default() })
}

fn run_with(m: &Model, feeds: &[(String, HostTensor)], opts: &EngineOptions) -> HashMap<String, ArrayD<f32>> {
    let bytes = onnx::encode_model(m);
    let mut b = runtime::load_bytes(&bytes, EngineKind::Ort, opts).unwrap();
    let names = b.input_names().to_vec();
    let inputs: Vec<(&str, HostTensor)> =
        feeds.iter().filter(|(n, _)| names.contains(n)).map(|(n, t)| (n.as_str(), t.clone())).collect();
    b.run(&inputs).unwrap().into_iter().filter_map(|(n, t)| t.into_f32().ok().map(|a| (n, a))).collect()
}

fn logits_diff(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>) -> f32 {
    ["start_logits", "end_logits"].iter().map(|k| max_abs_diff(&a[*k], &b[*k])).fold(0.0, f32::max)
}

fn mask_shape(plan: &Plan) -> BTreeMap<String, Vec<i64>> {
    plan.modifiers
        .iter()
        .flat_map(|m| m.targets.iter())
        .filter_map(|t| t.mask_input.clone().map(|n| (n, t.shape.clone())))
        .collect()
}

/// Deterministic pseudo-random bits (xorshift), ~half ones.
fn random_mask(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if s.is_multiple_of(2) {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

fn f32_input(shape: &[i64], data: Vec<f32>) -> HostTensor {
    HostTensor::F32(
        ArrayD::from_shape_vec(IxDyn(&shape.iter().map(|&d| d as usize).collect::<Vec<_>>()), data).unwrap(),
    )
}

fn flag(on: bool) -> (String, HostTensor) {
    (QUANT_ENABLED_INPUT.into(), HostTensor::Bool(ArrayD::from_elem(IxDyn(&[]), on)))
}

/// Activation qparams inputs set to harmless values (unused when quantization is off).
fn neutral_qparams(m: &Model) -> Vec<(String, HostTensor)> {
    let g = &m.graph;
    g.runtime_inputs()
        .filter_map(|v| {
            let n = g.value(v).name.clone();
            if n.ends_with(".input_quant.scale") {
                Some((n, HostTensor::F32(ArrayD::from_elem(IxDyn(&[]), 1.0))))
            } else if n.ends_with(".input_quant.zero_point") {
                Some((n, HostTensor::U8(ArrayD::from_elem(IxDyn(&[]), 0))))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn masks_of_ones_and_quantization_off_reproduce_the_original_exactly() {
    let r = recipe("gmp80-unstructured-qat-distill.yaml");
    for (model, exporter, path) in fixture_exports() {
        let (original, m, plan) = compiled(&path, &r);
        let mut feeds = model_inputs(&model);
        let want = run(&original, &feeds);
        for (name, shape) in mask_shape(&plan) {
            let n = shape.iter().product::<i64>() as usize;
            feeds.push((name, f32_input(&shape, vec![1.0; n])));
        }
        feeds.push(flag(false));
        feeds.extend(neutral_qparams(&m));
        let got = run(&m, &feeds);
        let d = logits_diff(&got, &want);
        eprintln!("{model}.{exporter}: {} masks, quant off: max abs diff {d:e}", mask_shape(&plan).len());
        assert!(d <= 1e-5, "{model}.{exporter}: {d}");
        assert!(!mask_shape(&plan).is_empty());
    }
}

#[test]
fn random_masks_equal_the_original_with_those_weights_zeroed() {
    let r = recipe("block4-90-qat.yaml");
    for (model, exporter, path) in fixture_exports() {
        let (original, m, plan) = compiled(&path, &r);
        let mut feeds = model_inputs(&model);
        let mut zeroed = original.clone();
        let targets: Vec<_> =
            plan.modifiers.iter().flat_map(|x| x.targets.iter()).filter(|t| t.mask_input.is_some()).collect();
        let mut edits: Vec<(String, Vec<f32>)> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let n = t.shape.iter().product::<i64>() as usize;
            let mask = random_mask(n, 0x9e37_79b9 + i as u64);
            let w = original
                .graph
                .initializer(original.graph.value_by_name(&t.initializer).unwrap())
                .unwrap()
                .to_f32()
                .unwrap();
            edits.push((t.initializer.clone(), w.iter().zip(&mask).map(|(w, m)| w * m).collect()));
            feeds.push((t.mask_input.clone().unwrap(), f32_input(&t.shape, mask)));
        }
        let shapes: HashMap<String, Vec<i64>> =
            targets.iter().map(|t| (t.initializer.clone(), t.shape.clone())).collect();
        zeroed
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                for (name, data) in &edits {
                    let v = p.graph().value_by_name(name).unwrap();
                    p.set_initializer(v, Tensor::from_f32(shapes[name].clone(), data));
                }
                Ok(())
            })
            .unwrap();
        let want = run(&zeroed, &feeds);
        feeds.push(flag(false));
        feeds.extend(neutral_qparams(&m));
        let got = run(&m, &feeds);
        let d = logits_diff(&got, &want);
        let dense = logits_diff(&got, &run(&original, &feeds));
        eprintln!("{model}.{exporter}: {} random masks: diff vs zeroed {d:e} (vs dense {dense:e})", targets.len());
        assert!(d <= 1e-5, "{model}.{exporter}: {d}");
        assert!(dense > 1e-3, "{model}.{exporter}: masks must change the output ({dense})");
    }
}

/// Per-channel (or per-tensor) symmetric int8 quantize-dequantize in plain Rust, torch's formula:
/// `s = max(absmax / 127.5, eps)`, `q = clamp(round_half_even(w / s), -128, 127)`, `w' = q * s`.
fn qdq_weights(w: &[f32], dims: &[i64], channel_axis: Option<usize>) -> Vec<f32> {
    let (rows, cols) = (dims[0] as usize, dims.get(1).copied().unwrap_or(1) as usize);
    let channel = |i: usize| match channel_axis {
        Some(0) => i / cols,
        Some(_) => i % cols,
        None => 0,
    };
    let nch = match channel_axis {
        Some(0) => rows,
        Some(_) => cols,
        None => 1,
    };
    let mut absmax = vec![0f32; nch];
    for (i, &x) in w.iter().enumerate() {
        absmax[channel(i)] = absmax[channel(i)].max(x.abs());
    }
    let scale: Vec<f32> = absmax.iter().map(|&a| (a / 127.5f32).max(f32::EPSILON)).collect();
    w.iter()
        .enumerate()
        .map(|(i, &x)| {
            let s = scale[channel(i)];
            (x / s).round_ties_even().clamp(-128.0, 127.0) * s
        })
        .collect()
}

/// The reference for one activation: `(clip(round(x / s) + zp, 0, 255) - zp) * s` from plain
/// arithmetic nodes (Div, Round, Add, Clip, Sub, Mul), not QuantizeLinear/DequantizeLinear.
fn arithmetic_fake_quant(p: &mut Patch, x: ValueId, s: f32, zp: f32, tag: &str) -> ValueId {
    let f = Facts::default();
    let sv = p.add_initializer(&format!("{tag}.ref_s"), Tensor::scalar_f32(s));
    let zv = p.add_initializer(&format!("{tag}.ref_zp"), Tensor::scalar_f32(zp));
    let lo = p.add_initializer(&format!("{tag}.ref_lo"), Tensor::scalar_f32(0.0));
    let hi = p.add_initializer(&format!("{tag}.ref_hi"), Tensor::scalar_f32(255.0));
    let d = p.op(NodeSpec::new("Div", format!("{tag}/ref_div"), &[x, sv]), &format!("{tag}.rd"), f.clone());
    let r = p.op(NodeSpec::new("Round", format!("{tag}/ref_round"), &[d]), &format!("{tag}.rr"), f.clone());
    let a = p.op(NodeSpec::new("Add", format!("{tag}/ref_add"), &[r, zv]), &format!("{tag}.ra"), f.clone());
    let c = p.op(NodeSpec::new("Clip", format!("{tag}/ref_clip"), &[a, lo, hi]), &format!("{tag}.rc"), f.clone());
    let b = p.op(NodeSpec::new("Sub", format!("{tag}/ref_sub"), &[c, zv]), &format!("{tag}.rs"), f.clone());
    p.op(NodeSpec::new("Mul", format!("{tag}/ref_mul"), &[b, sv]), &format!("{tag}.rm"), f)
}

#[test]
fn fake_quant_matches_an_independent_reference() {
    // Compared: logits of the compiled graph with `sparsec.quant_enabled = true` against the
    // original model whose linear weights and embedding tables were quantize-dequantized in plain
    // Rust (above) and whose linear-layer input activations pass through arithmetic fake-quant
    // nodes built here, both using the same fixed activation scales/zero points (derived from the
    // compiled graph's observer outputs on this input, quantization off). Both run on ORT with
    // basic optimizations only: ORT's level-3 fusions apply differently to the two graphs and move
    // upstream activations by an ulp, enough to flip a rounding in fake quantization.
    let r = recipe("quantization-only.yaml");
    for (model, exporter, path) in fixture_exports() {
        let (original, m, _plan) = compiled(&path, &r);
        let mut feeds = model_inputs(&model);
        feeds.push(flag(false));
        feeds.extend(neutral_qparams(&m));
        let observed = run(&m, &feeds);
        let mut qparams: HashMap<String, (f32, u8)> = HashMap::new();
        for (name, mn) in &observed {
            let Some(base) = name.strip_suffix(".input_quant.min") else { continue };
            let mx = observed[&format!("{base}.input_quant.max")].iter().copied().next().unwrap();
            let mn = mn.iter().copied().next().unwrap();
            let (lo, hi) = (mn.min(0.0), mx.max(0.0));
            let s = ((hi - lo) / 255.0).max(f32::EPSILON);
            let zp = (-lo / s).round().clamp(0.0, 255.0) as u8;
            qparams.insert(base.to_string(), (s, zp));
        }
        assert!(!qparams.is_empty());
        feeds.retain(|(n, _)| !n.contains(".input_quant.") && n != QUANT_ENABLED_INPUT);
        for (base, (s, zp)) in &qparams {
            feeds.push((format!("{base}.input_quant.scale"), HostTensor::F32(ArrayD::from_elem(IxDyn(&[]), *s))));
            feeds.push((format!("{base}.input_quant.zero_point"), HostTensor::U8(ArrayD::from_elem(IxDyn(&[]), *zp))));
        }
        feeds.push(flag(true));
        let got = run_basic(&m, &feeds);

        let mut reference = original.clone();
        sparsec::ir::infer::infer_facts(&mut reference).unwrap();
        let layers = modules::linear_layers(&reference.graph);
        let g0 = reference.graph.clone();
        reference
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let mut done: HashMap<ValueId, ValueId> = HashMap::new();
                for l in &layers {
                    let t = g0.initializer(l.weight).unwrap();
                    let axis = if l.transposed { 1 } else { 0 };
                    let q = qdq_weights(&t.to_f32().unwrap(), &t.dims, Some(axis));
                    p.set_initializer(l.weight, Tensor::from_f32(t.dims.clone(), &q));
                    let x = g0.node(l.node).input(0).unwrap();
                    let xq = match done.get(&x) {
                        Some(&v) => v,
                        None => {
                            let (s, zp) = qparams[&l.module];
                            let v = arithmetic_fake_quant(p, x, s, zp as f32, &l.module);
                            done.insert(x, v);
                            v
                        }
                    };
                    p.set_node_input(l.node, 0, Some(xq));
                }
                for (_, n) in g0.nodes() {
                    let Some(table) = n.input(0) else { continue };
                    if n.op_type == "Gather"
                        && g0.initializer(table).is_some_and(|t| t.dims.len() == 2 && t.dtype == DType::F32)
                    {
                        let t = g0.initializer(table).unwrap();
                        let q = qdq_weights(&t.to_f32().unwrap(), &t.dims, None);
                        p.set_initializer(table, Tensor::from_f32(t.dims.clone(), &q));
                    }
                }
                Ok(())
            })
            .unwrap();
        // Parameters are graph inputs in the compiled graph; expose the same ones here so ORT
        // runs the same (non-constant-weight) kernels and upstream values agree bit for bit.
        let exposed: Vec<String> = m
            .graph
            .inputs()
            .iter()
            .filter(|&&v| m.graph.is_initializer(v))
            .map(|&v| m.graph.value(v).name.clone())
            .filter(|n| reference.graph.value_by_name(n).is_some())
            .collect();
        ExposeTrainableParams { initializers: exposed }.run(&mut reference).unwrap();
        let want = run_basic(&reference, &feeds);
        let d = logits_diff(&got, &want);
        let fused = logits_diff(&run(&m, &feeds), &run(&reference, &feeds));
        let off = logits_diff(&got, &run(&original, &feeds));
        eprintln!(
            "{model}.{exporter}: fake-quant vs independent reference {d:e} (vs float model {off:e}; with ORT's level-3 fusions on both {fused:e}); {} activation sites",
            qparams.len()
        );
        assert!(d <= 1e-4, "{model}.{exporter}: {d}");
        assert!(off > d, "quantization must change the output");
    }
}

#[test]
fn targets_resolve_identically_on_every_exporter() {
    let names = [
        "gmp80-unstructured-qat-distill.yaml",
        "block4-90-qat.yaml",
        "sparse-transfer-distill.yaml",
        "quantization-only.yaml",
        "dense-finetune.yaml",
    ];
    for model in FIXTURE_MODELS {
        let legacy = fixture_dir(model).join("model.legacy.onnx");
        for (exporter, other) in
            EXPORTERS.iter().skip(1).map(|e| (e, fixture_dir(model).join(format!("model.{e}.onnx"))))
        {
            for n in names {
                let r = recipe(n);
                let per = |p: &PathBuf| -> Vec<Vec<(String, Vec<i64>)>> {
                    let (_, _, plan) = compiled(p, &r);
                    plan.modifiers
                        .iter()
                        .map(|m| {
                            m.targets
                                .iter()
                                .map(|t| {
                                    let mut s = t.shape.clone();
                                    if t.transposed {
                                        s.reverse();
                                    }
                                    (t.param.clone(), s)
                                })
                                .collect()
                        })
                        .collect()
                };
                let (a, b) = (per(&legacy), per(&other));
                let count: usize = a.iter().map(Vec::len).sum();
                eprintln!("{model} {n}: {count} targets on legacy and {exporter}");
                assert_eq!(a, b, "{model} {n} legacy vs {exporter}");
                if n.contains("gmp80") || n.contains("block4") || n.contains("transfer") {
                    let pruned = a.iter().map(Vec::len).max().unwrap();
                    assert!(pruned >= 12, "{model} {n}: {pruned} pruned targets");
                }
            }
        }
    }
}

#[test]
fn minilm_plan_of_the_example_recipe_targets_36_layers() {
    let Some(dir) = shared_minilm() else { return };
    let path = dir.join("model.onnx");
    let r = Recipe::load(
        &root().join("../shared/reference/example-recipe-obert-unstructured90-squad.yaml"),
        &serde_json::Map::new(),
    )
    .unwrap();
    let (_, m, plan) = compiled(&path, &r);
    let obs = plan.modifiers.iter().find(|m| m.name == "OBSPruningModifier").unwrap();
    assert_eq!(obs.targets.len(), 36);
    for t in &obs.targets {
        assert!(t.param.starts_with("bert.encoder.layer.") && t.param.ends_with(".weight"), "{}", t.param);
        assert_eq!((t.init_sparsity, t.final_sparsity), (Some(0.7), Some(0.9)));
        assert!(m.graph.value_by_name(t.mask_input.as_ref().unwrap()).is_some());
    }
    let epochs: Vec<f64> = obs.mask_updates.iter().map(|u| u.epoch).collect();
    assert_eq!(epochs, vec![2.0, 6.0, 10.0, 14.0, 18.0, 22.0, 26.0]);
    let s: Vec<f64> = obs.mask_updates.iter().map(|u| u.sparsity.unwrap()).collect();
    // cubic: 0.7 + 0.2 * (1 - (1 - t)^3), t = (epoch - 2) / 24
    for (e, s) in epochs.iter().zip(&s) {
        let t: f64 = (e - 2.0) / 24.0;
        assert!((s - (0.7 + 0.2 * (1.0 - (1.0 - t).powi(3)))).abs() < 1e-12);
    }
    assert_eq!((s[0], s[6]), (0.7, 0.9));
    assert!(obs.status.contains("scores by OBS"), "{}", obs.status);
    assert_eq!(plan.total_epochs, 30.0);
    eprintln!(
        "minilm: {} OBS targets, mask updates {:?}",
        obs.targets.len(),
        epochs.iter().zip(&s).collect::<Vec<_>>()
    );
}

/// Every shipped recipe's plan, and one with a warning, reads back from plan.json with each
/// modifier's settings as the recipe sets them, the same schedule and the same warnings: what
/// training follows.
#[test]
fn every_recipe_plan_reads_back_with_its_settings_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "{paths:?}");
    let gmp = std::fs::read_to_string(root().join("tests/data/recipes/gmp50-fp32.yaml")).unwrap();
    let warned_recipe = dir.path().join("param-groups.yaml");
    let text = gmp.replace("    lr_func: linear\n", "    lr_func: linear\n    param_groups: [0]\n");
    std::fs::write(&warned_recipe, text).unwrap();
    paths.push(warned_recipe);
    let mut warned = 0;
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy();
        let r = Recipe::load(path, &serde_json::Map::new()).unwrap();
        let (_, _, plan) = compiled(&model, &r);
        let written = dir.path().join(format!("{name}.plan.json"));
        std::fs::write(&written, plan.to_json().unwrap()).unwrap();
        let back = Plan::load(&written).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(back.modifiers.len(), r.modifiers.len(), "{name}");
        for (m, e) in back.modifiers.iter().zip(&r.modifiers) {
            let (got, want) = (serde_json::to_value(&m.settings).unwrap(), serde_json::to_value(&e.modifier).unwrap());
            assert_eq!(got, want, "{name}: {}", e.name);
        }
        assert_eq!(back.schedule().total_epochs(), plan.total_epochs, "{name}");
        assert_eq!(back.warnings, plan.warnings, "{name}");
        warned += usize::from(!back.warnings.is_empty());
    }
    assert!(warned > 0, "param-groups.yaml has a warning, so their round trip is checked");
}

/// A plan written before the `QuantizationModifier` gained `quantize_attention_matmuls` (session
/// 17) still loads, with the field off: compiled folders of runs in progress stay trainable.
#[test]
fn a_plan_without_quantize_attention_matmuls_loads_with_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let (_, _, plan) = compiled(&model, &recipe("gmp80-unstructured-qat-distill.yaml"));
    let mut json: serde_json::Value = serde_json::from_str(&plan.to_json().unwrap()).unwrap();
    let mut removed = 0;
    for m in json["modifiers"].as_array_mut().unwrap() {
        removed += usize::from(m["settings"].as_object_mut().unwrap().remove("quantize_attention_matmuls").is_some());
    }
    assert_eq!(removed, 1, "the recipe has one QuantizationModifier: {json}");
    let path = dir.path().join("plan.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let back = Plan::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    let flags: Vec<bool> = back
        .modifiers
        .iter()
        .filter_map(|m| serde_json::to_value(&m.settings).unwrap().get("quantize_attention_matmuls").cloned())
        .map(|b| b.as_bool().unwrap())
        .collect();
    assert_eq!(flags, vec![false]);
}

/// A plan.json from before the plan carried the recipe is refused, naming the file and the
/// `format` field; a current one missing a field names that field.
#[test]
fn an_old_plan_is_an_error_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let (_, _, plan) = compiled(&model, &recipe("gmp80-unstructured-qat-distill.yaml"));
    let mut json: serde_json::Value = serde_json::from_str(&plan.to_json().unwrap()).unwrap();
    let path = dir.path().join("plan.json");
    let load_error = |json: &serde_json::Value| {
        std::fs::write(&path, json.to_string()).unwrap();
        format!("{:#}", Plan::load(&path).unwrap_err())
    };
    json.as_object_mut().unwrap().remove("warnings");
    let e = load_error(&json);
    assert!(e.contains(s(&path)) && e.contains("warnings"), "{e}");
    json.as_object_mut().unwrap().remove("format");
    let e = load_error(&json);
    assert!(e.contains(s(&path)) && e.contains("`format`") && e.contains("compile the model again"), "{e}");
    json["format"] = 1.into();
    let e = load_error(&json);
    assert!(e.contains(s(&path)) && e.contains("format 1"), "{e}");
}

#[test]
fn compile_writes_model_plan_recipe_and_tokenizer() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("compiled");
    let model = fixture_dir("bert").join("model.dynamo.onnx");
    let recipe = root().join("recipes/gmp80-unstructured-qat-distill.yaml");
    let o = crate::common::sparsec_command()
        .args([
            "compile",
            model.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--recipe-args",
            r#"{"num_epochs": 8}"#,
            "--explain",
            "-o",
        ])
        .arg(&dest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("{stdout}");
    assert!(stdout.contains("GMPruningModifier") && stdout.contains("mask updates"));
    for f in ["model.onnx", "plan.json", "recipe.yaml", "tokenizer.json"] {
        assert!(dest.join(f).exists(), "{f}");
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["total_epochs"], 8.0);
    assert_eq!(plan["quant_enabled_input"], QUANT_ENABLED_INPUT);
    let m = onnx::load(dest.join("model.onnx")).unwrap();
    assert!(m.graph.value_by_name(QUANT_ENABLED_INPUT).is_some());
}

#[test]
fn block_masks_must_tile_the_outputs_and_inputs_of_each_layer() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    // qa_outputs is 2 outputs x 32 inputs, the intermediate dense 64 x 32 (stored [in, out]).
    let cases = [
        ("qa_outputs.weight", "[4, 1]", Some("2 outputs x 32 inputs")),
        ("qa_outputs.weight", "[1, 4]", None),
        ("bert.encoder.layer.0.intermediate.dense.weight", "[1, 64]", Some("64 outputs x 32 inputs")),
        ("bert.encoder.layer.0.intermediate.dense.weight", "[64, 1]", None),
        ("bert.encoder.layer.0.intermediate.dense.weight", "[4, 32]", None),
    ];
    for (param, mask, err) in cases {
        let text = format!(
            "modifiers:\n  - !GMPruningModifier\n    params: [\"{param}\"]\n    init_sparsity: 0.0\n    \
             final_sparsity: 0.5\n    start_epoch: 0.0\n    end_epoch: 1.0\n    update_frequency: 0.5\n    \
             mask_type: {mask}\n"
        );
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, text).unwrap();
        let r = Recipe::load(&path, &serde_json::Map::new()).unwrap();
        let mut m = onnx::load(&model).unwrap();
        sparsec::ir::infer::infer_facts(&mut m).unwrap();
        let got = compile(&mut m, &model, &r).map(|_| ()).map_err(|e| format!("{e:#}"));
        match err {
            None => assert!(got.is_ok(), "{param} {mask}: {got:?}"),
            Some(what) => {
                let e = got.expect_err(&format!("{param} {mask} must be refused"));
                assert!(e.contains(param) && e.contains(what) && e.contains(&format!("{mask} blocks")), "{e}");
            }
        }
    }
}

#[test]
fn a_weight_shared_by_two_layers_is_an_error_naming_it_not_a_panic() {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let mut m = onnx::load(&model).unwrap();
    let layers = modules::linear_layers(&m.graph);
    let query = |i: usize| {
        layers.iter().find(|l| l.module == format!("bert.encoder.layer.{i}.attention.self.query")).unwrap().clone()
    };
    let (q0, q1) = (query(0), query(1));
    let slot = m.graph.node(q1.node).inputs.iter().position(|&v| v == Some(q1.weight)).unwrap();
    m.graph
        .edit(|p| -> Result<(), sparsec::ir::IrError> {
            p.set_node_input(q1.node, slot, Some(q0.weight));
            Ok(())
        })
        .unwrap();
    sparsec::ir::infer::infer_facts(&mut m).unwrap();
    let e = format!("{:#}", compile(&mut m, &model, &recipe("gmp80-unstructured-qat-distill.yaml")).unwrap_err());
    assert!(e.contains("has no initializer of its own") && e.contains("attention.self.query.weight"), "{e}");
}
