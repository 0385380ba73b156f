//! The SQuAD metric against numbers produced by the official evaluate-v1.1.py / evaluate-v2.0.py
//! formulas (tests/data/squad_metric_cases.py → squad_metric_cases.json).

use serde_json::Value;
use sparsec::qa::metric::{evaluate_v1, evaluate_v2, exact_match, f1_v1, f1_v2, normalize_answer, Scored};

fn cases() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/squad_metric_cases.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("committed cases")).expect("valid JSON")
}

fn items(v: &Value) -> (Vec<String>, Vec<Vec<String>>, Vec<Option<String>>) {
    let arr = v.as_array().unwrap();
    let ids = arr.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    let refs = arr
        .iter()
        .map(|i| i["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect())
        .collect();
    let preds = arr.iter().map(|i| i["prediction"].as_str().map(str::to_string)).collect();
    (ids, refs, preds)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn normalisation_and_pair_scores_equal_the_official_script() {
    let c = cases();
    for p in c["pairs"].as_array().unwrap() {
        let (pred, gold) = (p["prediction"].as_str().unwrap(), p["reference"].as_str().unwrap());
        assert_eq!(normalize_answer(pred), p["normalized_prediction"].as_str().unwrap(), "normalize {pred:?}");
        assert_eq!(exact_match(pred, gold), p["exact"].as_bool().unwrap(), "exact {pred:?} vs {gold:?}");
        assert!(close(f1_v1(pred, gold), p["f1_v1"].as_f64().unwrap()), "v1 f1 {pred:?} vs {gold:?}");
        assert!(close(f1_v2(pred, gold), p["f1_v2"].as_f64().unwrap()), "v2 f1 {pred:?} vs {gold:?}");
    }
}

#[test]
fn v1_evaluation_equals_the_official_script() {
    let c = cases();
    let (ids, refs, preds) = items(&c["v1"]["items"]);
    let scored: Vec<Scored> =
        (0..ids.len()).map(|i| Scored { id: &ids[i], references: &refs[i], prediction: preds[i].as_deref() }).collect();
    let r = evaluate_v1(&scored);
    let want = &c["v1"]["result"];
    assert!(close(r.exact_match, want["exact_match"].as_f64().unwrap()), "{r:?} vs {want}");
    assert!(close(r.f1, want["f1"].as_f64().unwrap()), "{r:?} vs {want}");
}

#[test]
fn v2_evaluation_equals_the_official_script() {
    let c = cases();
    let (ids, refs, preds) = items(&c["v2"]["items"]);
    let na: Vec<f64> = c["v2"]["na_probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let scored: Vec<Scored> =
        (0..ids.len()).map(|i| Scored { id: &ids[i], references: &refs[i], prediction: preds[i].as_deref() }).collect();
    let r = serde_json::to_value(evaluate_v2(&scored, &na)).unwrap();
    let want = c["v2"]["result"].as_object().unwrap();
    for (k, v) in want {
        let got = r.get(k).unwrap_or_else(|| panic!("missing {k} in {r}"));
        assert!(close(got.as_f64().unwrap(), v.as_f64().unwrap()), "{k}: {got} vs {v}");
    }
    assert_eq!(r.as_object().unwrap().len(), want.len(), "{r} vs {want:?}");
}
