//! `sparsec train` end to end on a fixture: the recipe's schedule shows in the step log, the
//! trained model is sparse and answers questions, a run killed mid-epoch and resumed ends with
//! exactly the weights of an uninterrupted run, one-shot pruning, and clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::Value;
use sparsec::ir::DType;

/// Compiles the bert fixture with the 80% GMP + QAT + distillation recipe shortened to 6 epochs
/// (dense epoch 0-1, pruning 1-2, QAT from 4, observers frozen at 5.5).
fn compile(dir: &Path) -> PathBuf {
    let out = dir.join("compiled");
    compile_fixture(&root().join("recipes/gmp80-unstructured-qat-distill.yaml"), r#"{"num_epochs": 6}"#, &out);
    out
}

fn train_args<'a>(compiled: &'a Path, out: &'a Path, data: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        s(compiled),
        "--train-file",
        s(data),
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
    ]
}

fn tiny_squad() -> PathBuf {
    root().join("fixtures/squad-tiny.json")
}

fn log(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every initializer of a model, by name, as raw bytes.
fn initializers(path: &Path) -> Vec<(String, DType, Vec<u8>)> {
    let m = sparsec::onnx::load(path).unwrap();
    let g = &m.graph;
    let mut v: Vec<(String, DType, Vec<u8>)> =
        g.initializers().iter().map(|(&id, t)| (g.value(id).name.clone(), t.dtype, t.raw().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn recipe_schedule_drives_pruning_qat_and_distillation() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let out = dir.path().join("run");
    let data = tiny_squad();
    let mut args = train_args(&compiled, &out, &data);
    args.extend(["--eval-file", s(&data)]);
    let summary: Value = serde_json::from_str(&ok(&sparsec(&args))).unwrap();
    assert_eq!(summary["train_windows"], 84, "the fixture's 20 questions give 84 windows at 64/32");
    assert_eq!(summary["steps_per_epoch"], 11);
    assert_eq!(summary["steps"], 66);
    assert_eq!(summary["distillation"], true);
    assert_eq!(summary["quantized"], true);
    assert_eq!(summary["evals"].as_array().unwrap().len(), 6, "one evaluation per epoch");
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.8).abs() < 0.005, "sparsity {overall}");

    let steps = log(&out);
    assert_eq!(steps.len(), 66);
    for st in &steps {
        let epoch = st["epoch"].as_f64().unwrap();
        let sp = st["sparsity"].as_f64().unwrap();
        assert!(st["loss"].as_f64().unwrap().is_finite());
        assert!(st["loss_distill"].is_number() && st["loss_span"].is_number(), "distillation and span parts logged");
        // SparseML's step-wise schedule with 11 steps per epoch and updates every 0.5 epoch:
        // at step 11 (epoch 1.0, sparsity init = 0), step 17 (epoch 17/11, cubic) and step 22 (end, 80%).
        let want = if epoch < 17.0 / 11.0 {
            0.0
        } else if epoch < 2.0 {
            0.8 * (1.0 - (1.0 - (17.0 / 11.0 - 1.0f64)).powi(3))
        } else {
            0.8
        };
        assert!((sp - want).abs() < 0.005, "sparsity at epoch {epoch}: {sp}, recipe schedule says {want}");
        assert_eq!(st["qat"].as_bool().unwrap(), epoch >= 4.0, "QAT from epoch 4 (epoch {epoch})");
        let lr = st["lr"].as_f64().unwrap();
        let want =
            if epoch < 2.0 { 1e-4 + epoch / 2.0 * (1e-5 - 1e-4) } else { 5e-5 + (epoch - 2.0) / 4.0 * (5e-6 - 5e-5) };
        assert!((lr - want).abs() < 1e-9, "recipe learning rate at epoch {epoch}: {lr} vs {want}");
    }

    // The trained model carries the masked weights: every pruned layer is 80% zeros.
    let m = sparsec::onnx::load(out.join("model.onnx")).unwrap();
    let g = &m.graph;
    let inputs: Vec<String> = g.runtime_inputs().map(|v| g.value(v).name.clone()).collect();
    assert_eq!(inputs, vec!["input_ids", "attention_mask", "token_type_ids"], "only token inputs remain");
    let plan: Value = serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    let mut pruned = 0;
    for m in plan["modifiers"].as_array().unwrap() {
        for t in m["targets"].as_array().unwrap() {
            if t["mask_input"].is_null() {
                continue;
            }
            let w = g.initializer(g.value_by_name(t["initializer"].as_str().unwrap()).unwrap()).unwrap();
            let mask = g.initializer(g.value_by_name(t["mask_input"].as_str().unwrap()).unwrap()).unwrap();
            let (w, mask) = (w.as_f32s().unwrap(), mask.as_f32s().unwrap());
            let zeros = w.iter().filter(|&&x| x == 0.0).count() as f64 / w.len() as f64;
            assert!((zeros - 0.8).abs() < 0.01, "{}: {zeros}", t["param"]);
            assert!(w.iter().zip(&mask).all(|(w, m)| *m != 0.0 || *w == 0.0), "pruned weights are zero");
            pruned += 1;
        }
    }
    assert_eq!(pruned, 12, "2 layers x 6 linears");

    let qa = ok(&sparsec(&[
        "qa",
        "--model",
        s(&out),
        "--question",
        "Who?",
        "--context",
        "Ada Lovelace wrote the first program.",
        "--json",
    ]));
    let answers: Value = serde_json::from_str(&qa).unwrap();
    assert!(answers.to_string().contains("answer"), "the trained folder answers questions: {qa}");
}

/// `--fork-from`: a run branched at a checkpoint before QAT continues exactly (with the same
/// compiled folder: the same weights as the uninterrupted run, bit for bit), or with a recompile
/// that adds int8 attention sites, whose observers start fresh when QAT begins; a checkpoint taken
/// after QAT started cannot take new sites, and a folder with checkpoints is not forked into.
#[test]
fn fork_from_a_checkpoint_branches_a_run_before_qat() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let full = dir.path().join("full");
    ok(&sparsec(&train_args(&compiled, &full, &data)));
    // Killed after step 35: the newest checkpoint is the end of epoch 3 (step 33), before QAT (step 44).
    let part = dir.path().join("part");
    let killed = sparsec_env(&train_args(&compiled, &part, &data), &[("SPARSEC_ABORT_AFTER_STEP", "35")]);
    assert!(!killed.status.success());
    let ckpt = part.join("checkpoints/step-000000033");
    assert!(ckpt.exists(), "{}", ckpt.display());

    // The same compiled folder: bit for bit the uninterrupted run.
    let same = dir.path().join("fork-same");
    let mut args = train_args(&compiled, &same, &data);
    args.extend(["--fork-from", s(&ckpt)]);
    let summary: Value = serde_json::from_str(&ok(&sparsec(&args))).unwrap();
    assert_eq!(summary["forked_from"]["step"], 33, "{summary}");
    let steps: Vec<u64> = log(&same).iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps.first().copied(), Some(33), "the fork's log starts after the checkpoint (0-based steps)");
    assert_eq!(steps.len(), 66 - 33);
    let (a, b) = (initializers(&full.join("model.onnx")), initializers(&same.join("model.onnx")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && x.2 == y.2, "'{}' differs between the uninterrupted run and the fork", x.0);
    }

    // A recompile with int8 attention: the new sites start fresh, QAT still starts at step 44.
    let compiled_b = dir.path().join("compiled-b");
    compile_fixture(&int8_attention_recipe(dir.path()), r#"{"num_epochs": 6}"#, &compiled_b);
    let branch = dir.path().join("fork-attention");
    let mut args = train_args(&compiled_b, &branch, &data);
    args.extend(["--fork-from", s(&ckpt)]);
    let o = sparsec(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("new quantization sites start with fresh observers"));
    let qat: Vec<(u64, bool)> =
        log(&branch).iter().map(|e| (e["step"].as_u64().unwrap(), e["qat"].as_bool().unwrap())).collect();
    assert!(qat.iter().all(|&(step, on)| on == (step >= 44)), "QAT from step 44 (epoch 4): {qat:?}");
    let attention_observers = initializers(&branch.join("model.onnx"))
        .iter()
        .filter(|x| x.0.contains(".attention_scores.") && x.0.ends_with(".input_quant.scale"))
        .count();
    assert!(attention_observers > 0, "the branch trained attention quantization");

    // Into a folder that has checkpoints: refused. From a checkpoint after QAT started: refused.
    let o = sparsec(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already has checkpoints"), "{err}");
    let late = dir.path().join("late");
    let mut late_args = train_args(&compiled, &late, &data);
    late_args.extend(["--save-steps", "3"]);
    let killed = sparsec_env(&late_args, &[("SPARSEC_ABORT_AFTER_STEP", "50")]);
    assert!(!killed.status.success());
    let fork_late = dir.path().join("fork-late");
    let mut args = train_args(&compiled_b, &fork_late, &data);
    // Step 48: QAT started at step 44.
    let late_ckpt = late.join("checkpoints/step-000000048");
    assert!(late_ckpt.exists());
    args.extend(["--fork-from", s(&late_ckpt)]);
    let o = sparsec(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked") && err.contains("has no tensor 'observer/"), "{err}");
}

#[test]
fn killed_mid_epoch_and_resumed_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let full = dir.path().join("full");
    ok(&sparsec(&train_args(&compiled, &full, &data)));

    // Killed (abort, no cleanup) after step 50: mid-epoch 4 of 6, after QAT started; the newest
    // checkpoint is the end of epoch 4 (step 44).
    let part = dir.path().join("part");
    let killed = sparsec_env(&train_args(&compiled, &part, &data), &[("SPARSEC_ABORT_AFTER_STEP", "50")]);
    assert!(!killed.status.success(), "the run must die at step 50");
    assert!(!part.join("model.onnx").exists(), "a killed run leaves no trained model");
    assert_eq!(log(&part).len(), 50);

    // A checkpoint whose tensors do not fit the model (one weight and one observer cut short):
    // an error naming the checkpoint and the tensor, not a panic.
    for prefix in ["param/", "observer/"] {
        let bad = dir.path().join("bad");
        let _ = std::fs::remove_dir_all(&bad);
        assert!(std::process::Command::new("cp").arg("-r").arg(&part).arg(&bad).status().unwrap().success());
        let ckpt = std::fs::read_dir(bad.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
            .max()
            .unwrap();
        let (mut tensors, state): (std::collections::BTreeMap<String, sparsec::train::checkpoint::NamedTensor>, Value) =
            sparsec::train::checkpoint::load(&ckpt).unwrap();
        let victim = tensors.keys().find(|k| k.starts_with(prefix)).cloned().expect(prefix);
        let t = tensors.get_mut(&victim).unwrap();
        t.data.pop();
        t.shape = vec![t.data.len()];
        let list: Vec<_> = tensors.into_values().collect();
        let name = ckpt.file_name().unwrap().to_str().unwrap().to_string();
        sparsec::train::checkpoint::save(ckpt.parent().unwrap(), &name, &list, &state).unwrap();
        let mut args = train_args(&compiled, &bad, &data);
        args.push("--resume");
        let o = sparsec(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(&format!("tensor '{victim}' holds")) && err.contains(&name), "{err}");
    }

    let mut resume = train_args(&compiled, &part, &data);
    resume.push("--resume");
    let summary: Value = serde_json::from_str(&ok(&sparsec(&resume))).unwrap();
    assert_eq!(summary["resumed_from_step"], 44);

    let a = initializers(&full.join("model.onnx"));
    let b = initializers(&part.join("model.onnx"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(x.2 == y.2, "'{}' differs between the uninterrupted and the resumed run", x.0);
    }
    let (la, lb) = (log(&full), log(&part));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
        assert_eq!(x["sparsity"], y["sparsity"]);
    }
}

/// SIGTERM (`timeout`, a scheduler) and SIGINT (Ctrl-C) mid-epoch: the run finishes its step,
/// checkpoints exactly that step, exits non-zero naming the checkpoint, and `--resume` continues
/// from it to the weights and step losses of an uninterrupted run.
#[test]
fn a_signal_checkpoints_the_current_step_and_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let full = dir.path().join("full");
    ok(&sparsec(&train_args(&compiled, &full, &data)));
    let total = log(&full).len() as u64;
    for (flag, name, code) in [("-TERM", "SIGTERM", 143), ("-INT", "SIGINT", 130)] {
        let part = dir.path().join(name);
        let mut child = crate::common::sparsec_command()
            .args(train_args(&compiled, &part, &data))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sparsec");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let logged = std::fs::read_to_string(part.join("train_log.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
            if logged >= 15 {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "{name}: the run ended before the signal was sent");
            assert!(std::time::Instant::now() < deadline, "{name}: no 15 steps in 10 minutes");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let sent = Command::new("kill").args([flag, &child.id().to_string()]).status().expect("run kill");
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: an interrupted run exits 128 + the signal's number");
        let at = stderr
            .split(&format!("training interrupted by {name} after step "))
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no interruption message in: {stderr}"));
        let step: u64 = at.split(';').next().unwrap().parse().unwrap();
        assert!((15..total).contains(&step), "{name}: stopped at step {step} of {total}");
        let ckpt = part.join("checkpoints").join(format!("step-{step:09}"));
        assert!(ckpt.is_dir(), "{name}: no checkpoint of step {step}");
        assert!(stderr.contains(ckpt.to_str().unwrap()) && stderr.contains("--resume"), "{stderr}");
        assert_eq!(log(&part).len() as u64, step, "{name}: the step log ends at the interrupted step");
        assert!(!part.join("model.onnx").exists(), "{name}: an interrupted run leaves no trained model");

        let mut resume = train_args(&compiled, &part, &data);
        resume.push("--resume");
        let summary: Value = serde_json::from_str(&ok(&sparsec(&resume))).unwrap();
        assert_eq!(summary["resumed_from_step"], step);
        let a = initializers(&full.join("model.onnx"));
        let b = initializers(&part.join("model.onnx"));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(x.0 == y.0 && x.2 == y.2, "{name}: '{}' differs from the uninterrupted run", x.0);
        }
        for (x, y) in log(&full).iter().zip(&log(&part)) {
            assert_eq!(x["loss"], y["loss"], "{name}: step {}", x["step"]);
        }
    }
}

/// Padded tokens the run's steps fed: rows × `seq_len` per step (rows: the batch size, or what
/// was left for the last batch of an epoch).
fn padded_tokens(log: &[Value], windows_per_epoch: u64, batch: u64) -> u64 {
    let steps_per_epoch = windows_per_epoch.div_ceil(batch);
    log.iter()
        .map(|r| {
            let within = r["step"].as_u64().unwrap() % steps_per_epoch;
            let rows = batch.min(windows_per_epoch - within * batch);
            rows * r["seq_len"].as_u64().unwrap()
        })
        .sum()
}

#[test]
fn length_grouped_batches_pad_less_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let random = dir.path().join("random");
    let random_summary: Value = serde_json::from_str(&ok(&sparsec(&train_args(&compiled, &random, &data)))).unwrap();
    let grouped_args = |out: &'static str| {
        let mut a: Vec<String> =
            train_args(&compiled, &dir.path().join(out), &data).iter().map(|x| x.to_string()).collect();
        a.push("--group-by-length".into());
        a
    };
    let run = |args: &[String], env: &[(&str, &str)]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        sparsec_env(&a, env)
    };
    let full = dir.path().join("full");
    ok(&run(&grouped_args("full"), &[]));
    let (lr, lg) = (log(&random), log(&full));
    assert_eq!(lr.len(), lg.len());
    let windows = random_summary["train_windows"].as_u64().expect("train_windows in the summary");
    let (tr, tg) = (padded_tokens(&lr, windows, 8), padded_tokens(&lg, windows, 8));
    assert!(tg < tr, "grouped batches fed {tg} padded tokens, random batches {tr}");
    assert!(lr.iter().zip(&lg).any(|(a, b)| a["loss"] != b["loss"]), "grouping changed no batch");

    let part = dir.path().join("part");
    let killed = run(&grouped_args("part"), &[("SPARSEC_ABORT_AFTER_STEP", "50")]);
    assert!(!killed.status.success(), "the run must die at step 50");
    let mut resume = grouped_args("part");
    resume.push("--resume".into());
    let summary: Value = serde_json::from_str(&ok(&run(&resume, &[]))).unwrap();
    assert_eq!(summary["resumed_from_step"], 44);
    let a = initializers(&full.join("model.onnx"));
    let b = initializers(&part.join("model.onnx"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && x.2 == y.2, "'{}' differs between the uninterrupted and the resumed run", x.0);
    }
    for (x, y) in lg.iter().zip(&log(&part)) {
        assert_eq!((&x["loss"], &x["seq_len"]), (&y["loss"], &y["seq_len"]), "step {}", x["step"]);
    }
}

#[test]
fn lean_ort_memory_trains_exactly_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let run = |name: &str, memory: &str| {
        let out = dir.path().join(name);
        let mut a = train_args(&compiled, &out, &data);
        a.extend(["--group-by-length", "--max-steps", "30", "--ort-memory", memory]);
        ok(&sparsec(&a));
        out
    };
    let (arena, lean) = (run("arena", "arena"), run("lean", "lean"));
    let (la, ll) = (log(&arena), log(&lean));
    assert_eq!(la.len(), 30);
    let lengths: std::collections::BTreeSet<u64> = la.iter().filter_map(|x| x["seq_len"].as_u64()).collect();
    assert!(lengths.len() > 1, "batch shapes must vary: {lengths:?}");
    for (x, y) in la.iter().zip(&ll) {
        assert_eq!((&x["loss"], &x["grad_norm"]), (&y["loss"], &y["grad_norm"]), "step {}", x["step"]);
    }
    let (a, b) = (initializers(&arena.join("model.onnx")), initializers(&lean.join("model.onnx")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && x.2 == y.2, "'{}' differs between arena and lean memory", x.0);
    }
    let bad =
        sparsec(&[&train_args(&compiled, &dir.path().join("bad"), &data)[..], &["--ort-memory", "tiny"]].concat());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ort-memory"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn one_shot_prunes_to_the_final_sparsity_and_calibrates() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let out = dir.path().join("oneshot");
    let mut args = train_args(&compiled, &out, &data);
    args.extend(["--one-shot", "32"]);
    let summary: Value = serde_json::from_str(&ok(&sparsec(&args))).unwrap();
    assert_eq!(summary["one_shot"], true);
    assert_eq!(summary["samples_seen"], 32);
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.8).abs() < 0.005, "{overall}");
    let m = sparsec::onnx::load(out.join("model.onnx")).unwrap();
    let g = &m.graph;
    let flag = g.initializer(g.value_by_name("sparsec.quant_enabled").unwrap()).unwrap();
    assert_eq!(flag.raw(), &[1u8], "fake quantization on");
    let scales: Vec<f32> = g
        .initializers()
        .iter()
        .filter(|(&v, _)| g.value(v).name.ends_with(".input_quant.scale"))
        .map(|(_, t)| t.as_f32s().unwrap()[0])
        .collect();
    assert_eq!(scales.len(), 9, "one activation site per distinct linear input: 4 per layer and the QA head");
    assert!(scales.iter().all(|&s| s > 0.0 && s != 1.0), "calibrated scales {scales:?}");
}

#[test]
fn bad_inputs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile(dir.path());
    let data = tiny_squad();
    let out = dir.path().join("o");
    let err = |args: &[&str]| {
        let o = sparsec(args);
        assert!(!o.status.success(), "{args:?} must fail");
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(e.starts_with("error: ") && !e.contains("panicked"), "{e}");
        e
    };
    let e = err(&train_args(&fixture_dir("bert"), &out, &data));
    assert!(e.contains("plan.json") && e.contains("sparsec compile"), "{e}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"data\": 3}").unwrap();
    let e = err(&train_args(&compiled, &out, &bad));
    assert!(e.contains("bad.json"), "{e}");
    let mut a = train_args(&compiled, &out, &data);
    a.extend(["--num-train-epochs", "3"]);
    let e = err(&a);
    assert!(e.contains("--recipe-args") && e.contains('6'), "{e}");
    let mut a = train_args(&compiled, &out, &data);
    a.extend(["--distill-teacher", s(&bad)]);
    let e = err(&a);
    assert!(e.contains("teacher") && e.contains("bad.json"), "{e}");
}

/// Training reads what the recipe says from plan.json alone: with the compiled folder's
/// recipe.yaml edited (3 epochs, another learning rate, 90%) and recipe_args.json gone, the run
/// follows the plan (2 epochs, the compiled learning rate, 50%); without recipe.yaml it still
/// runs; and `train --recipe-args` is an error sending the variables to `sparsec compile`.
#[test]
fn training_follows_the_plan_not_the_recipe_file_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_squad();
    let c = dir.path().join("c");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let gmp = root().join("tests/data/recipes/gmp50-fp32.yaml");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(&gmp), "-o", s(&c)]));
    let text = std::fs::read_to_string(c.join("recipe.yaml")).unwrap();
    let edited = text
        .replace("end_epoch: 2.0", "end_epoch: 3.0")
        .replace("init_lr: 1e-3", "init_lr: 1e-2")
        .replace("final_sparsity: 0.5", "final_sparsity: 0.9");
    assert_eq!(edited.matches("end_epoch: 3.0").count(), 2, "both 2-epoch ends edited");
    assert!(edited.contains("init_lr: 1e-2") && edited.contains("final_sparsity: 0.9"));
    std::fs::write(c.join("recipe.yaml"), edited).unwrap();
    std::fs::remove_file(c.join("recipe_args.json")).unwrap();

    let out = dir.path().join("t");
    let summary: Value = serde_json::from_str(&ok(&sparsec(&train_args(&c, &out, &data)))).unwrap();
    assert_eq!(summary["epochs"], 2.0, "the plan's epochs");
    assert_eq!(summary["steps"], 22, "2 epochs of 11 steps");
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.5).abs() < 0.005, "the plan's 50%: {overall}");
    let lr = log(&out)[0]["lr"].as_f64().unwrap();
    assert!((lr - 1e-3).abs() < 1e-12, "the plan's initial learning rate: {lr}");

    std::fs::remove_file(c.join("recipe.yaml")).unwrap();
    let out = dir.path().join("t2");
    let mut a = train_args(&c, &out, &data);
    a.extend(["--max-steps", "2"]);
    ok(&sparsec(&a));
    assert_eq!(log(&out).len(), 2);

    let mut a = train_args(&c, &out, &data);
    a.extend(["--recipe-args", r#"{"num_epochs": 3}"#]);
    let o = sparsec(&a);
    assert!(!o.status.success(), "train --recipe-args must fail");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--recipe-args") && e.contains("sparsec compile") && e.contains("plan.json"), "{e}");
}

#[test]
fn sparse_transfer_keeps_every_zero_of_a_sparse_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_squad();
    // A 50%-sparse model: GMP on the fixture, exported (masks folded into the weights).
    let c = dir.path().join("c");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let gmp = root().join("tests/data/recipes/gmp50-fp32.yaml");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(&gmp), "-o", s(&c)]));
    let t = dir.path().join("t");
    ok(&sparsec(&train_args(&c, &t, &data)));
    let sparse = dir.path().join("sparse");
    ok(&sparsec(&["export", "--model", s(&t), "-o", s(&sparse)]));

    // Sparse transfer: ConstantPruning + distillation from the dense fixture, one epoch.
    let c2 = dir.path().join("c2");
    let recipe = root().join("recipes/sparse-transfer-distill.yaml");
    ok(&sparsec(&[
        "compile",
        s(&sparse),
        "--recipe",
        s(&recipe),
        "--recipe-args",
        r#"{"num_epochs": 1}"#,
        "-o",
        s(&c2),
    ]));
    let out = dir.path().join("st");
    let mut args = train_args(&c2, &out, &data);
    args.extend(["--distill-teacher", s(&model)]);
    let summary: Value = serde_json::from_str(&ok(&sparsec(&args))).unwrap();
    let overall = summary["overall_sparsity"].as_f64().unwrap();
    assert!((overall - 0.5).abs() < 0.005, "the masks hold the sparse model's zeros: {overall}");

    let before = sparsec::onnx::load(sparse.join("model.onnx")).unwrap();
    let after = sparsec::onnx::load(out.join("model.onnx")).unwrap();
    let plan: Value = serde_json::from_slice(&std::fs::read(c2.join("plan.json")).unwrap()).unwrap();
    let mut checked = 0;
    for m in plan["modifiers"].as_array().unwrap() {
        for tg in m["targets"].as_array().unwrap() {
            let Some(init) = tg["initializer"].as_str() else { continue };
            if tg["mask_input"].is_null() {
                continue;
            }
            let w = |mdl: &sparsec::ir::Model| {
                let g = &mdl.graph;
                g.initializer(g.value_by_name(init).unwrap()).unwrap().as_f32s().unwrap()
            };
            let (w0, w1) = (w(&before), w(&after));
            assert!(w0.iter().zip(&w1).all(|(a, b)| *a != 0.0 || *b == 0.0), "{init}: a zero came back");
            assert!(w0.iter().zip(&w1).any(|(a, b)| a != b), "{init}: the kept weights were trained");
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// `PerLayerDistillationModifier` on the bert fixture's two layer outputs: the step log carries
/// the hidden-state part, zero before the first update (the student is the teacher), the total
/// is `distill + gain * layer` (hardness 1.0), and what sparsec cannot do is an error naming the
/// field.
#[test]
fn per_layer_distillation_adds_the_hidden_state_loss_and_names_what_it_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("recipes/gmp80-unstructured-qat-distill.yaml")).unwrap();
    let layers = "\nlayer_distillation_modifiers:\n  - !PerLayerDistillationModifier\n    gain: 2.0\n    \
                  project_features: false\n    student_layer_names: [bert.encoder.layer.0.output, \
                  bert.encoder.layer.1.output]\n";
    let recipe = dir.path().join("layers.yaml");
    std::fs::write(&recipe, format!("{base}{layers}")).unwrap();
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let compiled = dir.path().join("compiled");
    let compile = |recipe: &Path, out: &Path| {
        sparsec(&["compile", s(&model), "--recipe", s(recipe), "--recipe-args", r#"{"num_epochs": 6}"#, "-o", s(out)])
    };
    ok(&compile(&recipe, &compiled));
    let out = dir.path().join("run");
    let data = tiny_squad();
    let mut args = train_args(&compiled, &out, &data);
    args.extend(["--max-steps", "24"]);
    ok(&sparsec(&args));
    let steps = log(&out);
    assert_eq!(steps.len(), 24);
    let layer = |st: &Value| st["loss_layer"].as_f64().expect("loss_layer logged");
    assert!(layer(&steps[0]) < 1e-6, "before any update the student is the teacher: {}", layer(&steps[0]));
    for st in &steps {
        let (loss, distill) = (st["loss"].as_f64().unwrap(), st["loss_distill"].as_f64().unwrap());
        let want = distill + 2.0 * layer(st);
        assert!(
            (loss - want).abs() <= 1e-4 * loss.abs().max(1.0),
            "step {}: loss {loss}, parts give {want}",
            st["step"]
        );
    }
    let all: Vec<f64> = steps.iter().map(layer).collect();
    assert!(
        all[22..].iter().all(|&l| l > 1e-3),
        "80% pruning (step 22) moves the hidden states off the teacher's: {all:?}"
    );

    let bad = |text: &str, name: &str| {
        let r = dir.path().join(name);
        std::fs::write(&r, format!("{base}{text}")).unwrap();
        let o = compile(&r, &dir.path().join(format!("{name}.out")));
        assert!(!o.status.success(), "{name} must fail");
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(e.starts_with("error: ") && !e.contains("panicked"), "{e}");
        e
    };
    let e = bad(&layers.replace("    project_features: false\n", ""), "projected.yaml");
    assert!(e.contains("project_features") && e.contains("PerLayerDistillationModifier"), "{e}");
    let e = bad(&layers.replace("bert.encoder.layer.1.output", "bert.encoder.layer.7.output"), "unknown.yaml");
    assert!(e.contains("bert.encoder.layer.7.output") && e.contains("student_layer_names"), "{e}");
    let e = bad(&format!("{layers}    teacher_layer_names: [bert.encoder.layer.1.output]\n"), "unpaired.yaml");
    assert!(e.contains("teacher_layer_names"), "{e}");
}
