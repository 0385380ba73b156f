//! Every file and folder `compile`, `train` and `export` write has the mode any other tool's
//! output gets under the umask (`0666 & !umask` for files, `0777 & !umask` for folders: 0644 and
//! 0755 under umask 022), atomic writes and staged folders included, so a deployment folder
//! copied to a server can be read by the user who serves it.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use crate::common::*;

fn ok(out: Output) {
    assert!(out.status.success(), "sparsec failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Checks `dir` and everything under it; returns how many files it checked.
fn check_tree(dir: &Path, file_mode: u32, dir_mode: u32) -> usize {
    assert_eq!(mode(dir), dir_mode, "folder {} has mode {:o}", dir.display(), mode(dir));
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files += check_tree(&p, file_mode, dir_mode);
        } else {
            assert_eq!(mode(&p), file_mode, "{} has mode {:o}, expected {file_mode:o}", p.display(), mode(&p));
            files += 1;
        }
    }
    files
}

#[test]
fn compile_train_and_export_outputs_have_ordinary_file_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("work");
    std::fs::create_dir(&base).unwrap();
    // What this process's umask gives a file and a folder created the ordinary way.
    let probe = base.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let file_mode = mode(&probe);
    std::fs::remove_file(&probe).unwrap();
    std::fs::create_dir(&probe).unwrap();
    let dir_mode = mode(&probe);
    std::fs::remove_dir(&probe).unwrap();
    assert_eq!(file_mode & 0o111, 0, "ordinary files are not executable");
    assert_ne!(file_mode & 0o044, 0, "the umask lets others read files (0{file_mode:o}); the test needs that");

    let compiled = base.join("compiled");
    let model = fixture_dir("bert").join("model.dynamo.onnx");
    let recipe = root().join("tests/data/recipes/matrix/qat-distill.yaml");
    ok(sparsec(&["compile", s(&model), "--recipe", s(&recipe), "-o", s(&compiled)]));
    let trained = base.join("trained");
    let data = root().join("fixtures/squad-tiny.json");
    ok(sparsec(&[
        "train",
        "--model",
        s(&compiled),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&trained),
        "--max-seq-length",
        "64",
        "--doc-stride",
        "32",
        "--per-device-train-batch-size",
        "4",
        "--threads",
        "1",
        "--max-steps",
        "2",
        "--save-steps",
        "1",
    ]));
    let deployed = base.join("deployed");
    ok(sparsec(&["export", "--model", s(&trained), "-o", s(&deployed)]));

    let n: usize = [&compiled, &trained, &deployed].iter().map(|d| check_tree(d, file_mode, dir_mode)).sum();
    for f in ["compiled/model.onnx", "compiled/train.onnx", "trained/model.onnx", "deployed/model.onnx"] {
        assert!(base.join(f).exists(), "{f}");
    }
    println!("{n} files at mode {file_mode:o}, folders at {dir_mode:o}");
    assert!(n >= 15, "{n} files checked");
}
