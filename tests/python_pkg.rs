//! The Python package (`pyproject.toml`, crates/python): its wheel is built with maturin (dev
//! profile, in this build's target folder so the workspace's compiled crates are reused),
//! installed into a fresh virtual environment with onnxruntime and pytest, and
//! crates/python/tests run there: `Pipeline` answers equal `sparsec qa`'s on the fixtures
//! (answer, start, end; score to 1e-6), lists in give lists out, `sparsec --version` and exit codes
//! from the venv's command, and plain onnxruntime runs a `--format sparse` export with
//! `sparsec.session_options()`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::common::{root, skip};

/// The versions `.ci/run` installs (keep the two in step).
const ONNXRUNTIME: &str = "onnxruntime==1.23.2";
const PYTEST: &str = "pytest==9.2.0";

/// This build's target folder: the test binary is `TARGET/debug/deps/tests-*`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("TARGET/PROFILE/deps/EXE").to_path_buf()
}

fn run(what: &str, cmd: &mut Command) -> Output {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `python3 -c CODE` succeeds (a module is importable, say).
fn python_has(code: &str) -> bool {
    Command::new("python3").args(["-c", code]).output().is_ok_and(|o| o.status.success())
}

/// Builds the wheel into `out` the way the README says: the operator library, then maturin.
fn build_wheel(out: &Path) -> PathBuf {
    let target = target_dir();
    let staged = run(
        "libsparsec_ops.so (sparsec_build_backend.py: cargo build -p sparsec-python)",
        Command::new("python3")
            .arg(root().join("crates/python/backend/sparsec_build_backend.py"))
            .args(["--profile", "dev"])
            .env("CARGO_TARGET_DIR", &target),
    );
    assert!(staged.status.success(), "staging libsparsec_ops.so failed:\n{}", text(&staged));
    let built = run(
        "maturin build --profile dev",
        Command::new("python3")
            .args(["-m", "maturin", "build", "--profile", "dev", "--locked", "--out"])
            .arg(out)
            .current_dir(root())
            .env("CARGO_TARGET_DIR", &target),
    );
    assert!(built.status.success(), "maturin build failed:\n{}", text(&built));
    let wheels: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "one wheel: {wheels:?}");
    let name = wheels[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with(&format!("sparsec-{}-cp39-abi3-", sparsec::cli::VERSION)), "{name}");
    assert!(name.contains("manylinux"), "{name}");
    wheels[0].clone()
}

/// The files of a wheel (a zip), read with Python's zipfile.
fn wheel_files(wheel: &Path) -> Vec<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))"])
        .arg(wheel)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn the_wheel_installs_into_a_fresh_venv_and_passes_its_python_tests() {
    if !python_has("import maturin, venv") {
        skip("python3 with maturin (pip install maturin) is needed to build the Python package");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wheel = build_wheel(&dir.path().join("wheels"));
    let files = wheel_files(&wheel);
    for f in ["sparsec/__init__.py", "sparsec/py.typed", "sparsec/__init__.pyi", "sparsec/_native.pyi"] {
        assert!(files.iter().any(|x| x == f), "{f} missing from the wheel: {files:?}");
    }
    for f in ["sparsec/_native.abi3.so", "sparsec/libsparsec_ops.so"] {
        assert!(files.iter().any(|x| x == f), "{f} missing from the wheel: {files:?}");
    }

    let venv = dir.path().join("venv");
    let made = run("python3 -m venv", Command::new("python3").args(["-m", "venv"]).arg(&venv));
    assert!(made.status.success(), "{}", text(&made));
    let python = venv.join("bin/python");
    let installed = run(
        "pip install (wheel, onnxruntime, pytest)",
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(&wheel)
            .args([ONNXRUNTIME, PYTEST]),
    );
    if !installed.status.success() {
        skip(&format!("cannot install the wheel's dependencies from the package index:\n{}", text(&installed)));
        return;
    }
    let tested = run(
        "pytest crates/python/tests",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
            .arg(root().join("crates/python/tests"))
            .current_dir(dir.path())
            .env("SPARSEC_BIN", env!("CARGO_BIN_EXE_sparsec"))
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("PYTHONPATH")
            .env_remove("VIRTUAL_ENV"),
    );
    let report = text(&tested);
    println!("{report}");
    assert!(tested.status.success(), "pytest failed:\n{report}");
    assert!(!report.contains("skipped"), "no Python test may skip:\n{report}");
}
