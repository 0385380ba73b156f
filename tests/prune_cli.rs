//! `sparsec train --one-shot` runs the algorithm the recipe names (SparseGPT from calibration
//! activations, OBS from task-loss gradients), on the tiny BERT fixture; training runs OBS and
//! movement mask updates; modifiers sparsec does not carry out are errors, ignored fields loud
//! warnings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use serde_json::Value;

fn compile(dir: &Path, recipe: &Path, args: &str) -> Output {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let out = dir.join("compiled");
    let mut a = vec!["compile", s(&model), "--recipe", s(recipe), "-o", s(&out)];
    if !args.is_empty() {
        a.extend(["--recipe-args", args]);
    }
    sparsec(&a)
}

fn one_shot(dir: &Path, n: &str) -> Output {
    let c = dir.join("compiled");
    let o = dir.join("oneshot");
    let data = root().join("fixtures/squad-tiny.json");
    sparsec(&[
        "train",
        "--model",
        s(&c),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&o),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "4",
        "--threads",
        "1",
        "--one-shot",
        n,
        "--json",
    ])
}

/// (torch param, stored initializer, transposed) of every mask target in plan.json.
fn targets(compiled: &Path) -> Vec<(String, String, bool)> {
    let plan: Value = serde_json::from_slice(&std::fs::read(compiled.join("plan.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for m in plan["modifiers"].as_array().unwrap() {
        for t in m["targets"].as_array().unwrap() {
            if t.get("mask_input").is_some() {
                out.push((
                    t["param"].as_str().unwrap().to_string(),
                    t["initializer"].as_str().unwrap().to_string(),
                    t["transposed"].as_bool().unwrap(),
                ));
            }
        }
    }
    out
}

fn init(path: &Path, name: &str) -> (Vec<i64>, Vec<f32>) {
    let m = sparsec::onnx::load(path).unwrap();
    let v = m.graph.value_by_name(name).unwrap_or_else(|| panic!("no '{name}'"));
    let t = m.graph.initializer(v).unwrap_or_else(|| panic!("'{name}' is not an initializer"));
    (t.dims.clone(), t.as_f32s().unwrap())
}

fn recipe_in(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Checks 80% sparsity per the summary and in the written model, and that the algorithm moved
/// kept weights (magnitude pruning keeps them as they were).
fn check_pruned(dir: &Path, summary: &Value, algorithm: &str) -> usize {
    let rep = &summary["pruning"][0];
    assert_eq!(rep["algorithm"], algorithm, "{summary}");
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((0.795..=0.81).contains(&overall), "{algorithm}: overall sparsity {overall}");
    let compiled = dir.join("compiled");
    let ts = targets(&compiled);
    assert!(ts.len() >= 12, "{} targets", ts.len());
    let mut moved = 0;
    for (param, initializer, _) in &ts {
        let (_, w0) = init(&compiled.join("model.onnx"), initializer);
        let (_, w) = init(&dir.join("oneshot/model.onnx"), initializer);
        let (_, mask) = init(&dir.join("oneshot/model.onnx"), &format!("{param}.mask"));
        for ((a, b), m) in w0.iter().zip(&w).zip(&mask) {
            if *m == 0.0 {
                assert_eq!(*b, 0.0, "{algorithm}: {param}: pruned weights are zero");
            } else if a != b {
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "{algorithm}: no kept weight was updated");
    moved
}

#[test]
fn one_shot_sparsegpt_prunes_each_layer_from_its_calibration_inputs() {
    let dir = tempfile::tempdir().unwrap();
    ok(&compile(dir.path(), &root().join("recipes/sparsegpt80-oneshot.yaml"), ""));
    let summary: Value = serde_json::from_str(&ok(&one_shot(dir.path(), "16"))).unwrap();
    let moved = check_pruned(dir.path(), &summary, "sparsegpt");
    assert_eq!(summary["pruning"][0]["samples"], 16);
    eprintln!("sparsegpt: {moved} kept weights updated; summary {}", summary["pruning"]);
}

#[test]
fn one_shot_sparsegpt_4x1_blocks_are_four_output_channels() {
    let dir = tempfile::tempdir().unwrap();
    // With a QuantizationModifier: SparseGPT runs on the graph without fake quantization, then
    // the int8 observers are calibrated.
    ok(&compile(
        dir.path(),
        &root().join("benches/oneshot/sparsegpt-int8.yaml"),
        r#"{"final_sparsity": 0.8, "mask_type": [4, 1]}"#,
    ));
    let summary: Value = serde_json::from_str(&ok(&one_shot(dir.path(), "8"))).unwrap();
    check_pruned(dir.path(), &summary, "sparsegpt");
    assert_eq!(summary["quantized"], true);
    for (param, _, transposed) in targets(&dir.path().join("compiled")) {
        let (dims, mask) = init(&dir.path().join("oneshot/model.onnx"), &format!("{param}.mask"));
        let (rows, cols) = (dims[0] as usize, dims[1] as usize);
        let at = |o: usize, i: usize| if transposed { mask[i * cols + o] } else { mask[o * cols + i] };
        let (out, inp) = if transposed { (cols, rows) } else { (rows, cols) };
        for i in 0..inp {
            for o0 in (0..out).step_by(4) {
                let g: Vec<f32> = (o0..o0 + 4).map(|o| at(o, i)).collect();
                assert!(g.iter().all(|&x| x == g[0]), "{param}: outputs {o0}..{} at input {i}: {g:?}", o0 + 4);
            }
        }
    }
}

#[test]
fn one_shot_obs_prunes_from_task_loss_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let o = compile(
        dir.path(),
        &root().join("benches/oneshot/obs-int8.yaml"),
        r#"{"final_sparsity": 0.8, "mask_type": "unstructured", "num_grads": 6, "damp": 1e-4}"#,
    );
    ok(&o);
    let out = one_shot(dir.path(), "8");
    let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
    check_pruned(dir.path(), &summary, "obs");
    assert_eq!(summary["quantized"], true);
    let rep = &summary["pruning"][0];
    assert_eq!(rep["samples"], 6, "num_grads gradient batches");
    // d × B floats: d prunable weights, B = 16, 4 bytes each (the tiny BERT's blocks divide evenly).
    let d: usize = targets(&dir.path().join("compiled"))
        .iter()
        .map(|(_, i, _)| init(&dir.path().join("compiled/model.onnx"), i).1.len())
        .sum();
    assert_eq!(rep["state_bytes"].as_u64().unwrap() as usize, d * 16 * 4);
}

#[test]
fn unsupported_modifiers_fail_and_ignored_fields_warn() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("recipes/obs80-oneshot.yaml")).unwrap();
    let movement = base.replace("!OBSPruningModifier", "!MovementPruningModifier").replace("    global_sparsity: true\n", "").replace(
        "    num_grads: eval(num_grads)\n    damp: eval(damp)\n    fisher_block_size: eval(fisher_block_size)\n    num_recomputations: eval(num_recomputations)\n    grad_sampler_kwargs:\n      batch_size: 8\n",
        "",
    );
    let r = recipe_in(dir.path(), "movement.yaml", &movement);
    ok(&compile(dir.path(), &r, ""));
    let o = one_shot(dir.path(), "4");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "movement pruning cannot run one-shot: {err}");
    assert!(err.contains("MovementPruningModifier") && err.contains("one-shot"), "{err}");
    let layer = "modifiers:\n  - !LayerPruningModifier\n    layers: ['bert.encoder.layer.0']\n";
    let o = compile(dir.path(), &recipe_in(dir.path(), "layer.yaml", layer), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("LayerPruningModifier"), "{err}");

    let noisy = base.replace("      batch_size: 8\n", "      batch_size: 8\n      shuffle: false\n");
    let o = compile(dir.path(), &recipe_in(dir.path(), "noisy.yaml", &noisy), r#"{"num_grads": 2}"#);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: OBSPruningModifier.grad_sampler_kwargs") && err.contains("'shuffle'"), "{err}");
    let o = one_shot(dir.path(), "4");
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: OBSPruningModifier.grad_sampler_kwargs"), "train warns too: {err}");

    ok(&compile(dir.path(), &root().join("recipes/sparsegpt80-oneshot.yaml"), ""));
    let data = root().join("fixtures/squad-tiny.json");
    let c = dir.path().join("compiled");
    let o = sparsec(&["train", "--model", s(&c), "--train-file", s(&data), "--output-dir", s(&dir.path().join("t"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("one-shot"), "SparseGPT without --one-shot: {err}");
}

#[test]
fn obs_mask_updates_during_training_use_fresh_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = r#"
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 2.0
  - !OBSPruningModifier
    params: ["re:.*layer\\.\\d+\\..*(query|key|value|dense)\\.weight$"]
    init_sparsity: 0.5
    final_sparsity: 0.8
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    inter_func: linear
    num_grads: 3
    damp: 1e-4
    fisher_block_size: 16
    num_recomputations: 2
    grad_sampler_kwargs:
      batch_size: 4
"#;
    let r = recipe_in(dir.path(), "obs-train.yaml", recipe);
    ok(&compile(dir.path(), &r, ""));
    let c = dir.path().join("compiled");
    let o = dir.path().join("trained");
    let data = root().join("fixtures/squad-tiny.json");
    let out = sparsec(&[
        "train",
        "--model",
        s(&c),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&o),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "8",
        "--threads",
        "1",
        "--json",
    ]);
    let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
    // Two updates (epochs 0 and 1), each of two recomputations with 3 gradients.
    let reports = summary["pruning"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in reports {
        assert_eq!((r["algorithm"].as_str(), r["samples"].as_u64()), (Some("obs"), Some(6)), "{r}");
    }
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.8).abs() < 0.005, "final sparsity {overall}");
    let log: Vec<Value> = std::fs::read_to_string(o.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = log[0]["sparsity"].as_f64().unwrap();
    assert!((first - 0.5).abs() < 0.005, "sparsity after the first update {first}");
}

fn movement_recipe(algorithm: &str) -> String {
    format!(
        r#"
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 3.0
  - !{algorithm}
    params: ["re:.*layer\\.\\d+\\..*(query|key|value|dense)\\.weight$"]
    init_sparsity: 0.2
    final_sparsity: 0.75
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 0.5
    inter_func: cubic
    mask_type: [4, 1]
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: 3.0
    lr_func: linear
    init_lr: 1e-3
    final_lr: 1e-4
"#
    )
}

fn train_tiny(compiled: &Path, out: &Path, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let data = root().join("fixtures/squad-tiny.json");
    crate::common::sparsec_command()
        .args([
            "train",
            "--model",
            s(compiled),
            "--train-file",
            s(&data),
            "--output-dir",
            s(out),
            "--max-seq-length",
            "64",
            "--doc-stride",
            "32",
            "--per-device-train-batch-size",
            "8",
            "--threads",
            "1",
            "--json",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("run sparsec")
}

#[test]
fn movement_pruning_trains_from_step_gradients_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mv = dir.path().join("mv");
    let mg = dir.path().join("mg");
    std::fs::create_dir_all(&mv).unwrap();
    std::fs::create_dir_all(&mg).unwrap();
    ok(&compile(&mv, &recipe_in(&mv, "movement.yaml", &movement_recipe("MovementPruningModifier")), ""));
    ok(&compile(&mg, &recipe_in(&mg, "gmp.yaml", &movement_recipe("GMPruningModifier")), ""));
    let (cm, cg) = (mv.join("compiled"), mg.join("compiled"));
    let summary: Value = serde_json::from_str(&ok(&train_tiny(&cm, &mv.join("full"), &[], &[]))).unwrap();
    ok(&train_tiny(&cg, &mg.join("full"), &[], &[]));
    // Updates every 0.5 epoch from 0 to 2 (the first before any step: no scores yet, not
    // reported); each reports the steps observed so far, the last all steps of epochs 0 and 1.
    let reports = summary["pruning"].as_array().unwrap();
    assert_eq!(reports.len(), 4, "{reports:?}");
    let spe = summary["steps_per_epoch"].as_u64().unwrap() as usize;
    let seen: Vec<usize> = reports.iter().map(|r| r["samples"].as_u64().unwrap() as usize).collect();
    assert!(reports.iter().all(|r| r["algorithm"] == "movement"), "{reports:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen[3] == 2 * spe, "{seen:?}, {spe} steps per epoch");
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.75).abs() < 0.01, "final sparsity {overall}");

    let ts = targets(&cm);
    let mut differ = 0;
    for (param, _, transposed) in &ts {
        let mask_m = init(&mv.join("full/model.onnx"), &format!("{param}.mask")).1;
        let mask_g = init(&mg.join("full/model.onnx"), &format!("{param}.mask")).1;
        let (dims, _) = init(&mv.join("full/model.onnx"), &format!("{param}.mask"));
        // [4, 1] blocks: four consecutive output channels share a mask value per input.
        let (rows, cols) = (dims[0] as usize, dims[1] as usize);
        for r in 0..rows {
            for c in 0..cols {
                let (o, i) = if *transposed { (c, r) } else { (r, c) };
                let first = if *transposed { r * cols + (o / 4) * 4 } else { (o / 4) * 4 * cols + i };
                assert_eq!(mask_m[r * cols + c], mask_m[first], "{param}: a [4, 1] block is split");
            }
        }
        differ += mask_m.iter().zip(&mask_g).filter(|(a, b)| a != b).count();
    }
    assert!(differ > 0, "movement masks equal magnitude masks everywhere");

    // Killed in epoch 1; resumed from the checkpoint at the end of epoch 0, the updates at 1.5 and 2
    // rank the scores restored from it, and the run ends as the uninterrupted one.
    let part = mv.join("part");
    let abort = (spe + spe / 2 + 1).to_string();
    let killed = train_tiny(&cm, &part, &[("SPARSEC_ABORT_AFTER_STEP", abort.as_str())], &[]);
    assert!(!killed.status.success(), "the run must die");
    let resumed = train_tiny(&cm, &part, &[], &["--resume"]);
    let rs: Value = serde_json::from_str(&ok(&resumed)).unwrap();
    assert_eq!(rs["resumed_from_step"].as_u64().unwrap() as usize, spe);
    for (param, initializer, _) in &ts {
        for name in [initializer.clone(), format!("{param}.mask")] {
            let a = init(&mv.join("full/model.onnx"), &name).1;
            let b = init(&part.join("model.onnx"), &name).1;
            assert!(a == b, "'{name}' differs between the uninterrupted and the resumed run");
        }
    }
}

/// A SIGTERM that lands while an OBS update gathers its gradients stops the run within seconds
/// (not after the update), checkpoints the steps done before that update without any of its
/// changes, and `--resume` runs the update again to the weights of an uninterrupted run. While it
/// runs, the update says how far it is and how long the rest will take.
#[test]
fn a_signal_during_an_obs_update_stops_it_within_seconds_and_resume_redoes_it() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let recipe = r#"
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 2.0
  - !OBSPruningModifier
    params: ["re:.*layer\\.\\d+\\..*(query|key|value|dense)\\.weight$"]
    init_sparsity: 0.5
    final_sparsity: 0.8
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    inter_func: linear
    mask_type: [4, 1]
    num_grads: 3000
    damp: 1e-4
    fisher_block_size: 16
    grad_sampler_kwargs:
      batch_size: 2
"#;
    let r = recipe_in(dir.path(), "obs-signal.yaml", recipe);
    ok(&compile(dir.path(), &r, ""));
    let c = dir.path().join("compiled");
    let full = dir.path().join("full");
    let full_out = train_tiny(&c, &full, &[], &[]);
    let err = String::from_utf8_lossy(&full_out.stderr).to_string();
    ok(&full_out);
    assert!(err.contains("obs update: 2/3000 gradient batches (") && err.contains("s to go"), "{err}");
    assert!(err.contains("obs update: 3000/3000 gradient batches"), "{err}");

    let part = dir.path().join("part");
    let data = root().join("fixtures/squad-tiny.json");
    let mut child = crate::common::sparsec_command()
        .args(["train", "--model", s(&c), "--train-file", s(&data), "--output-dir", s(&part)])
        .args(["--max-seq-length", "64", "--doc-stride", "32", "--per-device-train-batch-size", "8"])
        .args(["--threads", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sparsec");
    // Wait for the second update (the one after step 0) to report its second gradient batch.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let update_step: u64 = loop {
        let l = lines.next().expect("the run ended before its second OBS update").unwrap();
        seen.push(l.clone());
        if let Some(rest) = l.strip_prefix("step ") {
            let (n, tail) = rest.split_once(':').unwrap();
            if n != "0" && tail.contains("obs update: 2/3000 gradient batches") {
                break n.parse().unwrap();
            }
        }
    };
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let waited = sent.elapsed();
    let stderr = seen.iter().chain(&rest).cloned().collect::<Vec<_>>().join("\n");
    eprintln!("stopped {waited:?} after the signal");
    assert!(waited < Duration::from_secs(20), "the run took {waited:?} to stop: {stderr}");
    let ended = format!("step {update_step}: obs update: 3000/3000");
    assert!(!stderr.contains(&ended), "the update ran to its end: {stderr}");
    assert_eq!(status.code(), Some(143), "{stderr}");
    let msg = format!("training interrupted by SIGTERM after step {update_step};");
    assert!(stderr.contains(&msg), "the steps before the update are checkpointed: {stderr}");
    assert!(part.join("checkpoints").join(format!("step-{update_step:09}")).is_dir());

    let resumed = train_tiny(&c, &part, &[], &["--resume"]);
    let summary: Value = serde_json::from_str(&ok(&resumed)).unwrap();
    assert_eq!(summary["resumed_from_step"], update_step);
    let (a, b) = (initializer_bytes(&full.join("model.onnx")), initializer_bytes(&part.join("model.onnx")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && x.1 == y.1, "'{}' differs from the uninterrupted run", x.0);
    }
}
