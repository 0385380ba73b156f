//! `sparsec bench --compare`: both models measured, percentiles ordered, the ratio is the
//! quotient of their throughputs. (Speed itself is measured in BENCHMARKS.md, not asserted.)

use crate::common;

use serde_json::Value;

#[test]
fn bench_compare_reports_both_models_and_their_ratio() {
    let dir = common::fixture_dir("bert");
    let out = crate::common::sparsec_command()
        .args(["bench", "--model"])
        .arg(dir.join("model.legacy.onnx"))
        .arg("--compare")
        .arg(dir.join("model.dynamo.onnx"))
        .args(["--seconds", "0.3", "--warmup", "0.1", "--seq-len", "64", "--batch-size", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for x in results {
        assert!(x["iterations"].as_u64().unwrap() >= 1);
        let (p50, p90, p99) =
            (x["p50_ms"].as_f64().unwrap(), x["p90_ms"].as_f64().unwrap(), x["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{x}");
    }
    let ratio = results[0]["items_per_second"].as_f64().unwrap() / results[1]["items_per_second"].as_f64().unwrap();
    assert!((r["speed_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
}

#[test]
fn bad_times_are_errors_naming_the_flag() {
    let dir = common::fixture_dir("bert");
    for (flag, v) in [("--seconds", "-1"), ("--warmup", "nan"), ("--seconds", "inf")] {
        let out = crate::common::sparsec_command()
            .args(["bench", "--model"])
            .arg(dir.join("model.legacy.onnx"))
            .arg(format!("{flag}={v}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {v}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{flag} {v}: {err}");
    }
}
