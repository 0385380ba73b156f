//! Bad input to `sparsec qa` / `sparsec eval` gives a one-line error and exit code 1 (never a
//! panic), or a sensible answer.

use crate::common;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

fn sparsec(args: &[&str]) -> Output {
    crate::common::sparsec_command().args(args).output().expect("run sparsec")
}

fn bert() -> String {
    common::fixture_dir("bert").join("model.legacy.onnx").display().to_string()
}

/// Fails with exit code 1 and an `error:` line containing every `needle`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.starts_with("error: ") || stderr.contains("\nerror: "), "no error line: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bert(), dir.path().join("model.onnx")).unwrap();
    let out = sparsec(&["qa", "--model", dir.path().to_str().unwrap(), "--question", "Who?", "--context", "Bob."]);
    assert_clean_error(&out, &["tokenizer", "tokenizer.json", "not found"]);
}

#[test]
fn missing_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::fixture_dir("bert").join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let out = sparsec(&["qa", "--model", dir.path().to_str().unwrap(), "--question", "Who?", "--context", "Bob."]);
    assert_clean_error(&out, &["model.onnx", "not found"]);
}

#[test]
fn empty_question_or_context_is_a_clear_error() {
    let out = sparsec(&["qa", "--model", &bert(), "--question", "", "--context", "Bob went home."]);
    assert_clean_error(&out, &["question is empty"]);
    let out = sparsec(&["qa", "--model", &bert(), "--question", "Who went home?", "--context", "  "]);
    assert_clean_error(&out, &["context is empty"]);
}

#[test]
fn a_one_megabyte_context_is_answered() {
    let paragraph = "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a \
                     golden statue of the Virgin Mary. Next to the Main Building is the Basilica of the Sacred Heart. ";
    let context: String = paragraph.repeat(1_000_000 / paragraph.len() + 1);
    assert!(context.len() >= 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    let line = serde_json::json!({"id": "big", "question": "What is atop the Main Building?", "context": context});
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let out = sparsec(&["qa", "--model", &bert(), "--file", file.to_str().unwrap(), "--batch-size", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &v["answer"];
    let (start, end) = (a["start"].as_u64().unwrap() as usize, a["end"].as_u64().unwrap() as usize);
    assert!(start < end && end <= context.chars().count(), "{v}");
    let text: String = context.chars().skip(start).take(end - start).collect();
    assert_eq!(a["answer"].as_str().unwrap(), text);
    assert!(a["score"].as_f64().unwrap() > 0.0);
}

#[test]
fn non_utf8_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, b"{\"question\": \"caf\xe9?\", \"context\": \"x\"}\n").unwrap();
    let out = sparsec(&["qa", "--model", &bert(), "--file", file.to_str().unwrap()]);
    assert_clean_error(&out, &["bad.jsonl", "not UTF-8"]);
    let out = sparsec(&["eval", "--model", &bert(), "--data", file.to_str().unwrap()]);
    assert_clean_error(&out, &["bad.jsonl", "not UTF-8"]);
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn malformed_squad_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = write(dir.path(), "truncated.json", r#"{"data": [{"title": "x", "paragraphs": [{"context": "#);
    assert_clean_error(
        &sparsec(&["eval", "--model", &bert(), "--data", &truncated]),
        &["truncated.json", "not SQuAD JSON"],
    );
    let no_context = write(dir.path(), "no_context.json", r#"{"data": [{"paragraphs": [{"qas": []}]}]}"#);
    assert_clean_error(&sparsec(&["eval", "--model", &bert(), "--data", &no_context]), &["no_context.json", "context"]);
    let empty = write(dir.path(), "empty.json", r#"{"data": []}"#);
    assert_clean_error(&sparsec(&["eval", "--model", &bert(), "--data", &empty]), &["empty.json", "no questions"]);
    let not_gz = dir.path().join("bad.json.gz");
    std::fs::write(&not_gz, [0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02]).unwrap();
    assert_clean_error(
        &sparsec(&["eval", "--model", &bert(), "--data", not_gz.to_str().unwrap()]),
        &["bad.json.gz", "gzip"],
    );
    let bad_line = write(dir.path(), "q.jsonl", "{\"question\": \"Who?\", \"context\": \"Bob.\"}\n{\"question\": 3}\n");
    assert_clean_error(&sparsec(&["qa", "--model", &bert(), "--file", &bad_line]), &["q.jsonl", "line 2", "question"]);
}

#[test]
fn a_bad_question_in_a_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "q.jsonl",
        "{\"id\": \"ok\", \"question\": \"Who went home?\", \"context\": \"Bob went home.\"}\n\
         {\"id\": \"empty\", \"question\": \"\", \"context\": \"Bob went home.\"}\n",
    );
    let out = sparsec(&["qa", "--model", &bert(), "--file", &f]);
    assert_clean_error(&out, &["question 'empty'", "1 of 2 questions failed"]);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["answer"]["answer"].is_string());
    assert!(lines[1]["error"].as_str().unwrap().contains("question is empty"));
}

#[test]
fn impossible_window_settings_are_a_clear_error() {
    let out = sparsec(&[
        "qa",
        "--model",
        &bert(),
        "--question",
        "Who?",
        "--context",
        "Bob.",
        "--max-seq-len",
        "64",
        "--doc-stride",
        "64",
    ]);
    assert_clean_error(&out, &["--doc-stride 64"]);
}
