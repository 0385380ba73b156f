//! `sparsec eval` end to end: the shared MiniLM SQuAD model on the first questions of the shared
//! dev split (skipped when ../shared is absent), and SQuAD v2 bookkeeping on a fixture model.

use crate::common;

use serde_json::Value;

fn sparsec(args: &[&str]) -> Value {
    let out = crate::common::sparsec_command().args(args).output().expect("run sparsec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// Measured: EM 85.0, F1 88.4 on the first 100 questions (the whole split: EM 74.13, F1 83.33 in
/// the model's README).
#[test]
fn minilm_scores_well_on_the_first_100_dev_questions() {
    let (Some(model), Some(data)) = (common::shared_minilm(), common::shared_data("squad-v1.1-dev-split.json.gz"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("predictions.json");
    let r = sparsec(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "100",
        "--threads",
        "2",
        "--predictions",
        preds.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["questions"], 100);
    assert!(r["windows"].as_u64().unwrap() >= 100);
    let (em, f1) = (r["v1"]["exact_match"].as_f64().unwrap(), r["v1"]["f1"].as_f64().unwrap());
    assert!(em >= 80.0 && f1 >= 85.0, "EM {em} F1 {f1}");
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&preds).unwrap()).unwrap();
    assert_eq!(p.as_object().unwrap().len(), 100);
}

#[test]
fn version_2_splits_answerable_and_unanswerable_questions() {
    let context = "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a \
                   golden statue of the Virgin Mary.";
    let squad = serde_json::json!({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "What is atop the dome?", "answers": [{"text": "a golden statue", "answer_start": 92}], "is_impossible": false},
        {"id": "b", "question": "What colour is the dome?", "answers": [{"text": "gold", "answer_start": 80}], "is_impossible": false},
        {"id": "c", "question": "Who built the dome?", "answers": [], "is_impossible": true}
    ]}]}]});
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("v2.json");
    std::fs::write(&f, squad.to_string()).unwrap();
    let model = common::fixture_dir("bert").join("model.legacy.onnx");
    let r =
        sparsec(&["eval", "--model", model.to_str().unwrap(), "--data", f.to_str().unwrap(), "--version-2", "--json"]);
    let v2 = &r["v2"];
    assert_eq!(v2["total"], 3);
    assert_eq!(v2["HasAns_total"], 2);
    assert_eq!(v2["NoAns_total"], 1);
    for k in ["exact", "f1", "best_exact", "best_f1"] {
        let x = v2[k].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{k} = {x}");
    }
}
