//! ONNX Runtime discovery fails with an actionable message instead of a panic.

#[test]
fn bad_ort_dylib_path_is_reported_by_name() {
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    let err = sparsec::runtime::find_onnxruntime().unwrap_err().to_string();
    assert!(err.contains("ORT_DYLIB_PATH") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bert/model.legacy.onnx");
    let load = sparsec::runtime::load_file(&model, sparsec::runtime::EngineKind::Ort, &Default::default());
    let err = format!("{:#}", load.err().expect("loading must fail without ONNX Runtime"));
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
}
