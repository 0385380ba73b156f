//! `deploy/`: the manifests pass `deploy/validate.py` (kubernetes-validate plus KServe's fields
//! and cross-references), their container arguments start a real server whose probe routes answer
//! 200, and the image layout `deploy/stage.sh` lays out runs as the Containerfile starts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{bert, client, common, Server};

fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

fn yaml(rel: &str) -> Value {
    let p = common::root().join("deploy").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `args` as a test can run them: the model replaced, loopback on a free port.
fn local_args(args: &Value, model: &Path) -> Vec<String> {
    let mut out: Vec<String> = args.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    for (flag, value) in [("--model", model.to_str().unwrap()), ("--host", "127.0.0.1"), ("--port", "0")] {
        let i = out.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing from {out:?}"));
        out[i + 1] = value.to_string();
    }
    out.into_iter().map(|a| a.replace("{{.Name}}", "minilm-qa")).collect()
}

/// Starts the server with `args` and asserts the container's probes read 200 once it is ready.
fn probes_answer(bin: &Path, args: &[String], env: &[(&str, &Path)], container: &Value) -> Server {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server::start_command(cmd).ready();
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        let r = client::get(server.addr, path).unwrap();
        assert_eq!(r.status, 200, "{probe} {path}: {}", r.text());
    }
    server
}

#[test]
fn manifests_pass_the_validator() {
    if !python_has("kubernetes_validate") {
        common::skip("python3 cannot import kubernetes_validate: pip install kubernetes-validate==1.37.0");
        return;
    }
    let out = Command::new("python3").arg(common::root().join("deploy/validate.py")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("checked ").count(), 4, "{text}");
}

#[test]
fn manifest_arguments_start_a_server_whose_probes_answer() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sparsec"));
    let d = yaml("k8s/deployment.yaml");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    probes_answer(&bin, &local_args(&c["args"], &bert()), &[], c);

    let rt = yaml("kserve/cluster-serving-runtime.yaml");
    let c = &rt["spec"]["containers"][0];
    let server = probes_answer(&bin, &local_args(&c["args"], &bert()), &[], c);
    let isvc = yaml("kserve/inference-service.yaml");
    assert_eq!(isvc["metadata"]["name"], "minilm-qa");
    let r = client::get(server.addr, "/v2/models/minilm-qa/ready").unwrap();
    assert_eq!(r.status, 200, "KServe's {{{{.Name}}}} names the model: {}", r.text());
}

#[test]
fn the_staged_image_layout_runs_as_the_containerfile_starts_it() {
    if !python_has("onnxruntime") {
        common::skip("python3 cannot import onnxruntime; deploy/stage.sh takes its libonnxruntime.so");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("deployment");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(bert(), model.join("model.onnx")).unwrap();
    std::fs::copy(common::fixture_dir("bert").join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let ctx = dir.path().join("context");
    let out = Command::new("bash")
        .arg(common::root().join("deploy/stage.sh"))
        .args([&ctx, &model])
        .env("SPARSEC_BIN", env!("CARGO_BIN_EXE_sparsec"))
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "stage.sh: {}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::read_to_string(ctx.join("Containerfile")).unwrap();
    let json_line = |key: &str| -> Vec<String> {
        let l = file.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} line"));
        serde_json::from_str(l.trim()).unwrap()
    };
    let (entry, cmd) = (json_line("ENTRYPOINT "), json_line("CMD "));
    assert_eq!(entry, ["/usr/local/bin/sparsec"]);
    let ort = file.lines().find_map(|l| l.strip_prefix("ENV ORT_DYLIB_PATH=")).expect("ORT_DYLIB_PATH");
    // The image's paths, rooted at the staged context (COPY bin/ -> /usr/local/bin, lib/ -> /opt/sparsec/lib,
    // models/ -> /models).
    let staged = |image_path: &str| {
        let rel = [("/usr/local/bin/", "bin/"), ("/opt/sparsec/lib/", "lib/"), ("/models/", "models/")]
            .iter()
            .find_map(|(from, to)| image_path.strip_prefix(from).map(|r| format!("{to}{r}")))
            .unwrap_or_else(|| panic!("{image_path} is not a staged path"));
        ctx.join(rel)
    };
    let model_arg = cmd[cmd.iter().position(|a| a == "--model").unwrap() + 1].clone();
    let args = local_args(&serde_json::to_value(&cmd).unwrap(), &staged(&model_arg));
    let d = yaml("k8s/deployment.yaml");
    let probes = &d["spec"]["template"]["spec"]["containers"][0];
    probes_answer(&staged(&entry[0]), &args, &[("ORT_DYLIB_PATH", &staged(ort))], probes);
}
