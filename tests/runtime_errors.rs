//! ONNX Runtime discovery fails with an actionable message instead of a panic.

use std::process::Command;

/// Set in the child process that runs the check: ONNX Runtime is loaded once per process, so a
/// missing library can only be seen by a process that has not loaded it yet.
const CHILD: &str = "SPARSEC_TEST_ORT_MISSING_CHILD";

#[test]
fn bad_ort_dylib_path_is_reported_by_name() {
    if std::env::var_os(CHILD).is_none() {
        let me = std::env::current_exe().expect("test binary path");
        let out = Command::new(me)
            .args(["--exact", "runtime_errors::bad_ort_dylib_path_is_reported_by_name", "--nocapture"])
            .env(CHILD, "1")
            .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let err = sparsec::runtime::find_onnxruntime().unwrap_err().to_string();
    assert!(err.contains("ORT_DYLIB_PATH") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert/model.legacy.onnx");
    let load = sparsec::runtime::load_file(&model, sparsec::runtime::EngineKind::Ort, &Default::default());
    let err = format!("{:#}", load.err().expect("loading must fail without ONNX Runtime"));
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
}
