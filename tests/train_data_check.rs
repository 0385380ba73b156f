//! Training answers that do not match their context: `sparsec train` warns with the count and the
//! first ids, trains them as `run_qa.py` does (an answer beyond the context is labelled at CLS in
//! every window), and with `--strict-data` fails naming the ids.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use serde_json::Value;
use sparsec::qa::{squad, QaTokenizer, WindowOptions};
use sparsec::train::data::{check_answers, train_windows};

/// `fixtures/squad-tiny.json` with question 0's `answer_start` moved past its context and
/// question 1's answer text changed; returns the file and those two ids.
fn broken_squad(dir: &Path) -> (PathBuf, String, String) {
    let mut d: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/squad-tiny.json")).unwrap()).unwrap();
    let mut qas: Vec<&mut Value> = Vec::new();
    for a in d["data"].as_array_mut().unwrap() {
        for p in a["paragraphs"].as_array_mut().unwrap() {
            let n = p["context"].as_str().unwrap().chars().count();
            for q in p["qas"].as_array_mut().unwrap() {
                q["context_chars"] = Value::from(n);
                qas.push(q);
            }
        }
    }
    let beyond = qas[0]["id"].as_str().unwrap().to_string();
    let n = qas[0]["context_chars"].as_u64().unwrap();
    qas[0]["answers"][0]["answer_start"] = Value::from(n + 5);
    let differs = qas[1]["id"].as_str().unwrap().to_string();
    let text = qas[1]["answers"][0]["text"].as_str().unwrap().to_string();
    qas[1]["answers"][0]["text"] = Value::from(format!("{text}zz"));
    for q in qas {
        q.as_object_mut().unwrap().remove("context_chars");
    }
    let path = dir.join("squad-broken.json");
    std::fs::write(&path, serde_json::to_string(&d).unwrap()).unwrap();
    (path, beyond, differs)
}

#[test]
fn mismatched_answers_are_found_by_kind_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let (path, beyond, differs) = broken_squad(dir.path());
    let examples = squad::load(&path).unwrap();
    let check = check_answers(&examples);
    assert_eq!(check.beyond_context, vec![beyond.clone()]);
    assert_eq!(check.text_differs, vec![differs.clone()]);
    assert_eq!(
        check.summary(),
        format!(
            "2 training answers do not match their context: 1 with answer_start beyond the context ({beyond}); \
             1 whose answer text differs from the context at answer_start ({differs})"
        )
    );
    let clean = squad::load(&root().join("fixtures/squad-tiny.json")).unwrap();
    assert_eq!(check_answers(&clean).count(), 0, "the shipped sample matches");
}

#[test]
fn an_answer_beyond_the_context_is_labelled_at_cls_in_every_window() {
    let dir = tempfile::tempdir().unwrap();
    let (path, beyond, _) = broken_squad(dir.path());
    let examples = squad::load(&path).unwrap();
    let tok = QaTokenizer::from_file(&fixture_dir("bert").join("tokenizer.json")).unwrap();
    let windower = tok.windower(WindowOptions { max_seq_len: 64, doc_stride: 32, max_question_len: 64 }).unwrap();
    let bad = examples.iter().find(|e| e.id == beyond).unwrap();
    let ws = train_windows(std::slice::from_ref(bad), &windower).unwrap();
    assert!(ws.len() >= 2, "the context spans several windows");
    for w in &ws {
        assert_eq!((w.start_position, w.end_position), (0, 0), "CLS is token 0 for bert");
        assert_eq!(w.window.input_ids[0], 2, "token 0 is [CLS]");
    }
    let good = examples.iter().position(|e| e.id == beyond).map(|i| &examples[i + 2]).unwrap();
    let ws = train_windows(std::slice::from_ref(good), &windower).unwrap();
    assert!(ws.iter().any(|w| w.start_position > 0), "a matching answer is labelled at its span");
}

fn train(compiled: &Path, data: &Path, out: &Path, strict: bool) -> Output {
    let mut args = vec![
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
        "4",
        "--threads",
        "1",
        "--max-steps",
        "1",
    ];
    if strict {
        args.push("--strict-data");
    }
    sparsec(&args)
}

#[test]
fn train_warns_about_mismatched_answers_and_strict_data_fails_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (data, beyond, differs) = broken_squad(dir.path());
    let compiled = dir.path().join("compiled");
    let model = fixture_dir("bert").join("model.legacy.onnx");
    let recipe = root().join("tests/data/recipes/gmp50-fp32.yaml");
    let o = sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&compiled)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = train(&compiled, &data, &dir.path().join("trained"), false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("WARN"), "{err}");
    assert!(
        err.contains(&format!(
            "2 training answers do not match their context: 1 with answer_start beyond the context ({beyond}); \
             1 whose answer text differs from the context at answer_start ({differs}); they are trained as \
             run_qa.py trains them (an answer beyond the context is labelled at CLS); --strict-data fails instead"
        )),
        "{err}"
    );
    assert!(dir.path().join("trained/model.onnx").exists());

    let out = dir.path().join("strict");
    let o = train(&compiled, &data, &out, true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--strict-data") && err.contains(&beyond) && err.contains(&differs), "{err}");
    assert!(!out.exists(), "nothing written");
}
