//! The Open Inference Protocol routes: health and metadata, tensor requests answered like
//! `sparsec qa`, the protocol's errors, and the same routes through the official
//! `tritonclient[http]` (`triton_client.py` beside this file).

use std::process::Command;

use serde_json::{json, Value};

use super::{bert, body, cases, client, common, qa_answers, Server};

const MODEL: &str = "/v2/models/question_answering";

fn bytes(name: &str, values: &[&str]) -> Value {
    json!({ "name": name, "shape": [values.len()], "datatype": "BYTES", "data": values })
}

/// `sparsec qa`'s answers (`{answer, score, start, end}` objects) as the protocol's output tensors.
fn as_tensors(want: &[Value]) -> Value {
    let col = |k: &str| want.iter().map(|w| w[k].clone()).collect::<Vec<_>>();
    let scores: Vec<f32> = want.iter().map(|w| w["score"].as_f64().unwrap() as f32).collect();
    json!([
        { "name": "answer", "datatype": "BYTES", "shape": [want.len()], "data": col("answer") },
        { "name": "score", "datatype": "FP32", "shape": [want.len()], "data": scores },
        { "name": "start", "datatype": "INT64", "shape": [want.len()], "data": col("start") },
        { "name": "end", "datatype": "INT64", "shape": [want.len()], "data": col("end") },
    ])
}

#[test]
fn live_at_once_ready_once_loaded_and_metadata_follows_the_protocol() {
    let server = Server::start(&bert(), &["--load-delay-ms", "3000"]);
    let get = |path: &str| client::get(server.addr, path).unwrap();
    let live = get("/v2/health/live");
    assert_eq!((live.status, live.json()), (200, json!({"live": true})), "live while loading");
    assert_eq!(get("/v2/health/ready").status, 503, "not ready while loading");
    let r = get(&format!("{MODEL}/ready"));
    assert_eq!((r.status, r.json()), (503, json!({"name": "question_answering", "ready": false})));

    let server = server.ready();
    let get = |path: &str| client::get(server.addr, path).unwrap();
    assert_eq!(get("/v2/health/ready").status, 200);
    for path in [format!("{MODEL}/ready"), format!("{MODEL}/versions/1/ready")] {
        let r = get(&path);
        assert_eq!((r.status, r.json()), (200, json!({"name": "question_answering", "ready": true})), "{path}");
    }
    let s = get("/v2").json();
    assert_eq!(s, json!({"name": "sparsec", "version": env!("CARGO_PKG_VERSION"), "extensions": []}));
    let m = get(MODEL).json();
    assert_eq!(m["name"], "question_answering");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(m["platform"], "sparsec");
    let t = |n: &str, d: &str| json!({"name": n, "datatype": d, "shape": [-1]});
    assert_eq!(m["inputs"], json!([t("question", "BYTES"), t("context", "BYTES")]));
    assert_eq!(m["outputs"], json!([t("answer", "BYTES"), t("score", "FP32"), t("start", "INT64"), t("end", "INT64")]));
    assert_eq!(m["engine"], "ort", "sparsec's own fields stay beside the protocol's: {m}");
    assert_eq!(get(&format!("{MODEL}/versions/1")).json(), m);
    assert_eq!(get(&format!("{MODEL}/versions/2")).status, 404);
}

#[test]
fn tensor_requests_answer_like_sparsec_qa() {
    let cases = cases();
    let want = qa_answers(&bert(), &cases, &["--batch-size", "1"]);
    let server = Server::start(&bert(), &["--max-batch-size", "1"]).ready();
    let qs: Vec<&str> = cases.iter().map(|c| c.1.as_str()).collect();
    let cs: Vec<&str> = cases.iter().map(|c| c.2.as_str()).collect();
    let req = json!({"id": "batch-1", "inputs": [bytes("question", &qs), bytes("context", &cs)]});
    for path in [format!("{MODEL}/infer"), format!("{MODEL}/versions/1/infer")] {
        let r = client::post_json(server.addr, &path, &req).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let got = r.json();
        assert_eq!(got["model_name"], "question_answering");
        assert_eq!(got["model_version"], "1");
        assert_eq!(got["id"], "batch-1");
        assert_eq!(got["outputs"], as_tensors(&want), "{path}");
    }
    // One context for every question, and only the outputs asked for, in their order.
    let (_, q, c) = &cases[0];
    let req = json!({
        "inputs": [bytes("question", &[q, q]), bytes("context", &[c])],
        "outputs": [{"name": "end"}, {"name": "answer"}],
    });
    let got = client::post_json(server.addr, &format!("{MODEL}/infer"), &req).unwrap().json();
    let names: Vec<&str> = got["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["end", "answer"]);
    assert_eq!(got["outputs"][1]["data"], json!([want[0]["answer"], want[0]["answer"]]));
    assert_eq!(got["id"], "", "no id asked, an empty one");
    // DeepSparse's body still works on the same route.
    let r = client::post_json(server.addr, &format!("{MODEL}/infer"), &body(q, c)).unwrap();
    assert_eq!(r.json(), want[0]);
}

#[test]
fn top_k_above_one_gives_n_by_k_tensors() {
    let server = Server::start(&bert(), &["--top-k", "3"]).ready();
    let (_, q, c) = cases().remove(0);
    let req = json!({"inputs": [bytes("question", &[&q, &q]), bytes("context", &[&c, &c])]});
    let got = client::post_json(server.addr, &format!("{MODEL}/infer"), &req).unwrap().json();
    for o in got["outputs"].as_array().unwrap() {
        assert_eq!(o["shape"], json!([2, 3]), "{o}");
        assert_eq!(o["data"].as_array().unwrap().len(), 6, "{o}");
    }
    let meta = client::get(server.addr, MODEL).unwrap().json();
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]));
}

#[test]
fn protocol_errors_are_json_with_400_or_404() {
    let server = Server::start(&bert(), &[]).ready();
    let (_, q, c) = cases().remove(0);
    let (q, c) = (q.as_str(), c.as_str());
    let infer = |path: &str, v: Value| client::post_json(server.addr, path, &v).unwrap();
    let at = &format!("{MODEL}/infer");
    let float = json!({"name": "question", "shape": [1], "datatype": "FP32", "data": [1.0]});
    let checks: Vec<(&str, client::Response, u16, &str)> = vec![
        (
            "unknown model",
            infer("/v2/models/nope/infer", json!({"inputs": [bytes("question", &[q])]})),
            404,
            "unknown model 'nope'",
        ),
        ("unknown model metadata", client::get(server.addr, "/v2/models/nope").unwrap(), 404, "unknown model"),
        ("unknown model ready", client::get(server.addr, "/v2/models/nope/ready").unwrap(), 404, "unknown model"),
        ("unknown version", infer(&format!("{MODEL}/versions/7/infer"), json!({})), 404, "no version '7'"),
        ("wrong datatype", infer(at, json!({"inputs": [float, bytes("context", &[c])]})), 400, "datatype FP32"),
        (
            "shape mismatch",
            infer(
                at,
                json!({"inputs": [{"name": "question", "shape": [2], "datatype": "BYTES", "data": [q]}, bytes("context", &[c])]}),
            ),
            400,
            "shape [2] but holds 1",
        ),
        (
            "two dimensions",
            infer(
                at,
                json!({"inputs": [{"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": [[q]]}, bytes("context", &[c])]}),
            ),
            400,
            "must be [n]",
        ),
        ("missing input", infer(at, json!({"inputs": [bytes("question", &[q])]})), 400, "missing input 'context'"),
        ("unknown input", infer(at, json!({"inputs": [bytes("query", &[q])]})), 400, "unknown input 'query'"),
        ("twice", infer(at, json!({"inputs": [bytes("question", &[q]), bytes("question", &[q])]})), 400, "given twice"),
        (
            "counts",
            infer(at, json!({"inputs": [bytes("question", &[q, q, q]), bytes("context", &[c, c])]})),
            400,
            "2 strings for 3 questions",
        ),
        (
            "not strings",
            infer(
                at,
                json!({"inputs": [{"name": "question", "shape": [1], "datatype": "BYTES", "data": [5]}, bytes("context", &[c])]}),
            ),
            400,
            "must be strings",
        ),
        (
            "unknown output",
            infer(
                at,
                json!({"inputs": [bytes("question", &[q]), bytes("context", &[c])], "outputs": [{"name": "logits"}]}),
            ),
            400,
            "unknown output 'logits'",
        ),
        (
            "empty question: 400, not 422",
            infer(at, json!({"inputs": [bytes("question", &[" "]), bytes("context", &[c])]})),
            400,
            "question is empty",
        ),
        ("wrong method", client::get(server.addr, at).unwrap(), 405, "POST"),
    ];
    for (what, r, status, needle) in &checks {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let e = r.json()["error"].as_str().unwrap_or_else(|| panic!("{what}: no error: {}", r.text())).to_string();
        assert!(e.contains(needle), "{what}: {e:?} lacks {needle:?}");
    }
}

/// The protocol through a client written elsewhere: tritonclient's health, metadata and infer
/// calls (BYTES inputs as JSON and as binary data) against the server, answers equal to
/// `sparsec qa`'s, and its errors raised with the server's statuses.
#[test]
fn tritonclient_speaks_to_the_server_and_gets_sparsec_qa_answers() {
    let probe = Command::new("python3").args(["-c", "import tritonclient.http"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        common::skip("python3 cannot import tritonclient.http: pip install 'tritonclient[http]==2.73.0'");
        return;
    }
    let cases = cases();
    let want = qa_answers(&bert(), &cases, &["--batch-size", "1"]);
    let server = Server::start(&bert(), &["--max-batch-size", "1"]).ready();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    let list: Vec<Value> = cases.iter().map(|(_, q, c)| json!({"question": q, "context": c})).collect();
    std::fs::write(&file, Value::Array(list).to_string()).unwrap();
    let script = common::root().join("tests/serve/triton_client.py");
    let out =
        Command::new("python3").arg(&script).arg(server.addr.to_string()).arg(&file).output().expect("run python3");
    assert!(out.status.success(), "triton_client.py: {}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for k in ["live", "ready", "model_ready", "model_ready_v1"] {
        assert_eq!(got[k], true, "{k}: {got}");
    }
    assert_eq!(got["server_metadata"]["name"], "sparsec");
    let meta = &got["metadata"];
    assert_eq!(meta["name"], "question_answering");
    assert_eq!(meta["inputs"][0], json!({"name": "question", "datatype": "BYTES", "shape": [-1]}));
    assert_eq!(meta["engine"], "ort", "tritonclient hands back sparsec's own fields too");
    for form in ["json", "binary"] {
        let rows = got[form].as_array().unwrap();
        assert_eq!(rows.len(), want.len());
        for ((name, ..), (g, w)) in cases.iter().zip(rows.iter().zip(&want)) {
            for k in ["answer", "start", "end"] {
                assert_eq!(g[k], w[k], "{form} {name}: {k}");
            }
            let (gs, ws) = (g["score"].as_f64().unwrap() as f32, w["score"].as_f64().unwrap() as f32);
            assert_eq!(gs, ws, "{form} {name}: the FP32 score is sparsec qa's, rounded to f32");
        }
        let m = &got[format!("{form}_meta")];
        assert_eq!(m["id"], "req-1");
        assert_eq!(m["dtypes"], json!({"answer": "object", "score": "float32", "start": "int64", "end": "int64"}));
    }
    let e = &got["errors"];
    let check = |k: &str, status: &str, needle: &str| {
        assert_eq!(e[k]["status"], status, "{k}: {e}");
        assert!(e[k]["message"].as_str().unwrap().contains(needle), "{k}: {e}");
    };
    check("unknown_model_metadata", "404", "unknown model 'nope'");
    check("unknown_model_infer", "404", "unknown model 'nope'");
    check("wrong_datatype", "400", "datatype FP32");
    check("missing_input", "400", "missing input 'context'");
    check("context_count", "400", "2 strings for 3 questions");
    assert_eq!(e["unknown_model_ready"], false);
}
