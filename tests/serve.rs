//! `sparsec serve` end to end: the built binary on an ephemeral loopback port with the BERT
//! fixture. Answers must equal `sparsec qa` on the same inputs (value for value when both run
//! each window alone or a request's windows together; text and span equal and scores within
//! 1e-5 when concurrent requests share padded batches), every request shape and error status,
//! health while loading, metrics, a YAML config with two models, and SIGTERM under load; the
//! Open Inference Protocol in [`v2`], the bounds on clients in [`hardening`], the manifests and
//! image layout of `deploy/` in [`deploy`].

#[path = "serve/client.rs"]
mod client;
#[path = "serve/deploy.rs"]
mod deploy;
#[path = "serve/hardening.rs"]
mod hardening;
#[path = "serve/v2.rs"]
mod v2;
use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sparsec::qa::{QaTokenizer, WindowOptions};

const SCORE_TOL: f64 = 1e-5;

fn bert() -> PathBuf {
    common::fixture_dir("bert").join("model.legacy.onnx")
}

/// A running `sparsec serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    lines: Receiver<String>,
}

impl Server {
    fn start(model: &std::path::Path, args: &[&str]) -> Server {
        let mut full = vec!["--model", model.to_str().unwrap()];
        full.extend_from_slice(args);
        Server::start_raw(&full)
    }

    fn start_raw(args: &[&str]) -> Server {
        let mut cmd = crate::common::sparsec_command();
        cmd.arg("serve").args(["--port", "0"]).args(args);
        Server::start_command(cmd)
    }

    /// Starts `cmd`, a `sparsec serve` that prints its `listening on` line.
    fn start_command(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start sparsec serve");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut s = Server { child, addr: "127.0.0.1:0".parse().unwrap(), lines };
        let l = s.wait_line("listening on http://");
        s.addr = l.trim_start_matches("listening on http://").parse().expect("address");
        s
    }

    /// The next stdout line starting with `prefix` (earlier lines are skipped).
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("no '{prefix}' line from the server: {e}"),
            }
        }
    }

    fn ready(mut self) -> Server {
        self.wait_line("ready: ");
        self
    }

    fn predict(&self, body: &Value) -> client::Response {
        client::post_json(self.addr, "/predict", body).expect("request")
    }

    fn terminate(&mut self) {
        self.signal("-TERM");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the server did not exit within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sparsec(args: &[&str]) -> Output {
    crate::common::sparsec_command().args(args).output().expect("run sparsec")
}

/// The questions of the fixture's reference cases.
fn cases() -> Vec<(String, String, String)> {
    let p = common::fixture_dir("bert").join("qa_reference.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["question"].as_str().unwrap().to_string(),
                c["context"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `sparsec qa --file` on `cases` with `flags`: one answer value per case, as the server shapes
/// it (an object for top-k 1, a list otherwise).
fn qa_answers(model: &std::path::Path, cases: &[(String, String, String)], flags: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.jsonl");
    let lines: Vec<String> =
        cases.iter().map(|(id, q, c)| json!({"id": id, "question": q, "context": c}).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut args = vec!["qa", "--model", model.to_str().unwrap(), "--file", file.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = sparsec(&args);
    assert!(out.status.success(), "sparsec qa: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.get("answer").or(v.get("answers")).cloned().expect("answer or answers")
        })
        .collect()
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    }
}

/// Same texts and spans, scores within [`SCORE_TOL`]; returns the largest score difference.
fn assert_close(what: &str, got: &Value, want: &Value) -> f64 {
    let (g, w) = (as_list(got), as_list(want));
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    let mut worst = 0.0f64;
    for (a, b) in g.iter().zip(&w) {
        for k in ["answer", "start", "end"] {
            assert_eq!(a[k], b[k], "{what}: {k}: {got} vs {want}");
        }
        let d = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
        assert!(d <= SCORE_TOL, "{what}: score differs by {d}: {got} vs {want}");
        worst = worst.max(d);
    }
    worst
}

fn body(q: &str, c: &str) -> Value {
    json!({"question": q, "context": c})
}

/// Values of one metric family by its label set, e.g. `{route="/predict",status="200"}`.
fn metric(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, v) = l.rsplit_once(' ')?;
            let labels = key.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then(|| (labels.to_string(), v.parse().unwrap()))
        })
        .collect()
}

#[test]
fn answers_equal_sparsec_qa_value_for_value() {
    let cases = cases();
    // Each window alone on both sides: the same model inputs, so the same floats.
    let want = qa_answers(&bert(), &cases, &["--batch-size", "1"]);
    let server = Server::start(&bert(), &["--max-batch-size", "1"]).ready();
    for ((name, q, c), w) in cases.iter().zip(&want) {
        let r = server.predict(&body(q, c));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(&r.json(), w, "{name}");
    }
    // One request alone with batching on: its windows run together as `sparsec qa` runs them.
    let flags = ["--top-k", "3", "--max-seq-len", "96", "--doc-stride", "32", "--max-answer-length", "8"];
    let server = Server::start(&bert(), &flags).ready();
    let model = bert();
    for (name, q, c) in &cases {
        let mut args = vec!["qa", "--model", model.to_str().unwrap(), "--question", q, "--context", c, "--json"];
        args.extend_from_slice(&flags);
        let out = sparsec(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want: Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = server.predict(&body(q, c));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json(), want, "{name} with {flags:?}");
        assert_eq!(r.json().as_array().map(Vec::len), Some(3), "{name}: top-k 3");
    }
}

#[test]
fn concurrent_requests_share_batches_and_answer_like_sparsec_qa() {
    let cases = cases();
    let want = qa_answers(&bert(), &cases, &["--batch-size", "1"]);
    let server = Server::start(&bert(), &["--max-batch-size", "32", "--batch-timeout-ms", "100"]).ready();
    let addr = server.addr;
    let rounds = 3;
    let handles: Vec<_> = cases
        .iter()
        .cloned()
        .zip(want.clone())
        .map(|((name, q, c), w)| {
            std::thread::spawn(move || {
                let mut worst = 0.0f64;
                for _ in 0..rounds {
                    let r = client::post_json(addr, "/predict", &body(&q, &c)).unwrap();
                    assert_eq!(r.status, 200, "{name}: {}", r.text());
                    worst = worst.max(assert_close(&name, &r.json(), &w));
                }
                worst
            })
        })
        .collect();
    let worst = handles.into_iter().map(|h| h.join().unwrap()).fold(0.0, f64::max);
    eprintln!("largest score difference to sparsec qa: {worst:e}");
    let m = client::get(addr, "/metrics").unwrap().text();
    let batches = metric(&m, "sparsec_batch_size_bucket");
    let runs = batches[r#"{endpoint="question_answering",le="+Inf"}"#];
    let single = batches[r#"{endpoint="question_answering",le="1"}"#];
    let windows = metric(&m, "sparsec_batch_size_sum")[r#"{endpoint="question_answering"}"#];
    let tok = QaTokenizer::for_model(&bert()).unwrap();
    let windower = tok.windower(WindowOptions::default()).unwrap();
    let per_round: usize = cases.iter().map(|(_, q, c)| windower.windows(q, c).unwrap().len()).sum();
    assert_eq!(windows, (rounds * per_round) as f64, "every window ran once: {m}");
    assert!(runs < windows, "no two windows shared a model run ({runs} runs for {windows} windows)");
    assert!(single < runs, "every run held one window: {m}");
    let reqs = metric(&m, "sparsec_http_requests_total");
    assert_eq!(reqs[r#"{route="/predict",status="200"}"#], (rounds * cases.len()) as f64);
}

#[test]
fn list_requests_and_the_hf_shape_answer_each_item() {
    let cases: Vec<_> = cases().into_iter().take(3).collect();
    let server = Server::start(&bert(), &[]).ready();
    let singles: Vec<Value> = cases.iter().map(|(_, q, c)| server.predict(&body(q, c)).json()).collect();
    let list: Vec<Value> = cases.iter().map(|(_, q, c)| body(q, c)).collect();

    let r = server.predict(&Value::Array(list.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got.as_array().unwrap().len(), 3, "{got}");
    for (i, (g, s)) in got.as_array().unwrap().iter().zip(&singles).enumerate() {
        assert_close(&format!("list item {i}"), g, s);
        assert!(g.is_object(), "top-k 1 items are objects: {g}");
    }

    let (_, q, c) = &cases[0];
    let hf =
        client::post_json(server.addr, "/v2/models/question_answering/infer", &json!({"inputs": body(q, c)})).unwrap();
    assert_eq!(hf.status, 200, "{}", hf.text());
    assert_eq!(hf.json(), singles[0], "HF {{inputs: {{question, context}}}}");

    let hf_list = server.predict(&json!({"inputs": list}));
    assert_eq!(hf_list.status, 200, "{}", hf_list.text());
    assert_eq!(hf_list.json().as_array().unwrap().len(), 3);

    let columns = json!({
        "question": cases.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        "context": cases.iter().map(|x| x.2.clone()).collect::<Vec<_>>(),
    });
    let r = server.predict(&columns);
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, (g, s)) in r.json().as_array().unwrap().iter().zip(&singles).enumerate() {
        assert_close(&format!("column item {i}"), g, s);
    }
}

#[test]
fn every_error_is_json_with_its_status_and_the_server_keeps_answering() {
    let limits = ["--max-request-bytes", "4000", "--max-context-chars", "1000", "--body-timeout-s", "1"];
    let server = Server::start(&bert(), &limits).ready();
    let addr = server.addr;
    let (_, q, c) = cases().remove(0);
    let raw = |b: &[u8]| client::request(addr, "POST", "/predict", b).unwrap();
    let checks: Vec<(&str, client::Response, u16, &str)> = vec![
        ("malformed JSON", raw(b"{\"question\": "), 400, "not valid JSON"),
        ("not an object", raw(b"42"), 400, "expected"),
        ("missing context", server.predict(&json!({"question": q})), 400, "missing field 'context'"),
        ("missing question", server.predict(&json!({"inputs": {"context": c}})), 400, "missing field 'question'"),
        ("wrong type", server.predict(&json!({"question": 7, "context": c})), 400, "must be a string"),
        ("empty list", server.predict(&json!([])), 400, "no questions"),
        ("list item", server.predict(&json!([body(&q, &c), {"question": "x"}])), 400, "item 1: missing field"),
        ("empty question", server.predict(&body("  ", &c)), 422, "question is empty"),
        ("empty context", server.predict(&body(&q, "")), 422, "context is empty"),
        ("body too large", server.predict(&body(&q, &"word ".repeat(1000))), 413, "--max-request-bytes 4000"),
        ("context too long", server.predict(&body(&q, &"x".repeat(1001))), 413, "--max-context-chars 1000"),
        ("wrong method", client::get(addr, "/predict").unwrap(), 405, "POST"),
        ("unknown route", client::get(addr, "/nope").unwrap(), 404, "no such route"),
    ];
    for (what, r, status, needle) in &checks {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let e =
            r.json()["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {}", r.text())).to_string();
        assert!(e.contains(needle), "{what}: {e:?} lacks {needle:?}");
    }
    // A chunked body over the limit (no Content-Length to reject it early).
    let mut conn = client::Conn::open(addr).unwrap();
    let chunk = "a".repeat(3000);
    let req = format!(
        "POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let r = conn.send_raw(req.as_bytes()).unwrap();
    assert_eq!(r.status, 413, "chunked: {}", r.text());
    // A body that stops arriving: 408 after --body-timeout-s, not a held slot.
    let mut conn = client::Conn::open(addr).unwrap();
    let t = Instant::now();
    let r = conn.send_raw(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"question\"").unwrap();
    assert_eq!(r.status, 408, "slow body: {}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("did not arrive"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // Still answering, and the statuses are counted.
    let ok = server.predict(&body(&q, &c));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let m = client::get(addr, "/metrics").unwrap().text();
    let reqs = metric(&m, "sparsec_http_requests_total");
    assert_eq!(reqs[r#"{route="/predict",status="400"}"#], 7.0, "{m}");
    assert_eq!(reqs[r#"{route="/predict",status="413"}"#], 3.0, "{m}");
    assert_eq!(reqs[r#"{route="/predict",status="422"}"#], 2.0, "{m}");
    assert_eq!(reqs[r#"{route="/predict",status="200"}"#], 1.0, "{m}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server =
        Server::start(&bert(), &["--queue-size", "2", "--batch-timeout-ms", "400", "--max-batch-size", "64"]).ready();
    let addr = server.addr;
    let (_, q, c) = cases().remove(0);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let b = body(&q, &c);
            std::thread::spawn(move || client::post_json(addr, "/predict", &b).unwrap())
        })
        .collect();
    let rs: Vec<client::Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&client::Response> = rs.iter().filter(|r| r.status == 503).collect();
    let ok = rs.iter().filter(|r| r.status == 200).count();
    assert!(!busy.is_empty(), "8 concurrent requests, 2 admitted at once, none got 503");
    assert_eq!(ok + busy.len(), 8, "only 200 or 503: {:?}", rs.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(ok >= 2, "{ok} answered");
    for r in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.json()["error"].as_str().unwrap().contains("busy"), "{}", r.text());
    }
    assert_eq!(server.predict(&body(&q, &c)).status, 200, "answers again once the queue drained");
}

#[test]
fn health_is_503_while_loading_then_200_and_metadata_describes_the_model() {
    let server = Server::start(&bert(), &["--load-delay-ms", "3000"]);
    let h = client::get(server.addr, "/health").unwrap();
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["status"], "loading");
    let (_, q, c) = cases().remove(0);
    let p = server.predict(&body(&q, &c));
    assert_eq!(p.status, 503, "{}", p.text());
    assert_eq!(p.header("retry-after"), Some("1"));
    assert!(p.json()["error"].as_str().unwrap().contains("loading"));
    let meta = client::get(server.addr, "/v2/models/question_answering").unwrap().json();
    assert_eq!(meta["ready"], false);

    let server = server.ready();
    let h = client::get(server.addr, "/health").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(h.json()["status"], "ready");
    let meta = client::get(server.addr, "/v2/models/question_answering").unwrap();
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["ready"], true);
    assert_eq!(meta["engine"], "ort");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["model"], bert().display().to_string());
    let s = meta["sparsity"].as_f64().expect("sparsity of the fixture's linear layers");
    assert!((0.0..0.01).contains(&s), "the BERT fixture is dense: {s}");
    assert_eq!(server.predict(&body(&q, &c)).status, 200);
}

#[test]
fn metrics_are_prometheus_text_and_sigint_stops_cleanly() {
    let server = Server::start(&bert(), &[]).ready();
    let (_, q, c) = cases().remove(0);
    for _ in 0..3 {
        assert_eq!(server.predict(&body(&q, &c)).status, 200);
    }
    let r = client::get(server.addr, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    for family in ["sparsec_http_requests_total", "sparsec_request_duration_seconds", "sparsec_batch_size"] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family} missing: {m}");
    }
    assert_eq!(metric(&m, "sparsec_http_requests_total")[r#"{route="/predict",status="200"}"#], 3.0);
    assert_eq!(metric(&m, "sparsec_request_duration_seconds_count")[r#"{route="/predict"}"#], 3.0);
    let lat = metric(&m, "sparsec_request_duration_seconds_bucket");
    assert_eq!(lat[r#"{route="/predict",le="+Inf"}"#], 3.0);
    assert_eq!(metric(&m, "sparsec_batch_size_count")[r#"{endpoint="question_answering"}"#], 3.0);
    assert_eq!(metric(&m, "sparsec_queue_depth")[r#"{endpoint="question_answering"}"#], 0.0);
    assert_eq!(metric(&m, "sparsec_pending_requests")[r#"{endpoint="question_answering"}"#], 0.0);
    let mut server = server;
    server.signal("-INT");
    assert!(server.wait_exit().success(), "SIGINT: exit 0");
    assert_eq!(server.wait_line("stopped: "), "stopped: 4 requests received, 4 answered, 4 with status 200");
}

#[test]
fn a_yaml_config_serves_two_models_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let distil = common::fixture_dir("distilbert").join("model.legacy.onnx");
    let yaml = format!(
        "num_cores: 1\nendpoints:\n  - task: question_answering\n    model: {}\n    route: /bert/predict\n  \
         - task: question_answering\n    name: distil\n    model: {}\n    route: /distil/predict\n    batch_size: 4\n    \
         kwargs:\n      top_k: 2\n      doc_stride: 64\n",
        bert().display(),
        distil.display()
    );
    let cfg = dir.path().join("server.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut server = Server::start_raw(&["--config", cfg.to_str().unwrap()]);
    server.wait_line("ready: question_answering");
    server.wait_line("ready: distil");
    let cases = cases();
    let want_bert = qa_answers(&bert(), &cases, &["--threads", "1", "--batch-size", "1"]);
    let want_distil =
        qa_answers(&distil, &cases, &["--threads", "1", "--top-k", "2", "--doc-stride", "64", "--batch-size", "1"]);
    for (i, (name, q, c)) in cases.iter().enumerate() {
        for (route, want) in [
            ("/bert/predict", &want_bert[i]),
            ("/v2/models/question_answering/infer", &want_bert[i]),
            ("/predict", &want_bert[i]),
            ("/distil/predict", &want_distil[i]),
            ("/v2/models/distil/infer", &want_distil[i]),
        ] {
            let r = client::post_json(server.addr, route, &body(q, c)).unwrap();
            assert_eq!(r.status, 200, "{route} {name}: {}", r.text());
            assert_close(&format!("{route} {name}"), &r.json(), want);
        }
    }
    let meta = client::get(server.addr, "/v2/models/distil").unwrap().json();
    assert_eq!(meta["max_batch_size"], 4);
    assert_eq!(meta["top_k"], 2);
    assert_eq!(meta["doc_stride"], 64);
}

#[test]
fn bad_configs_and_models_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let m = bert().display().to_string();
    let cases = [
        (
            write("a.yaml", &format!("endpoints:\n  - task: text_classification\n    model: {m}\n")),
            "text_classification",
        ),
        (
            write("b.yaml", &format!("endpoints:\n  - task: qa\n    model: {m}\n    kwargs: {{top_kk: 2}}\n")),
            "--top-kk",
        ),
        (write("c.yaml", &format!("endpoints:\n  - task: qa\n    model: {m}\n    rout: /x\n")), "rout"),
        (write("d.yaml", "endpoints: []\n"), "empty"),
        (write("e.yaml", &format!("endpoints:\n  - task: qa\n    model: {m}\n    route: /predict\n")), "taken twice"),
    ];
    for (cfg, needle) in &cases {
        let out = sparsec(&["serve", "--port", "0", "--config", cfg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cfg}: {err}");
        assert!(err.contains("error: ") && err.contains(needle), "{cfg}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = sparsec(&["serve", "--port", "0", "--model", dir.path().join("none.onnx").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("none.onnx") && !err.contains("panicked"), "{err}");
}

/// Clients keep sending while the server gets SIGTERM: every 200 carries the right answer,
/// every request the server began answering got its response, and the exit code is 0.
#[test]
fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let cases = cases();
    let want = qa_answers(&bert(), &cases, &["--batch-size", "1"]);
    // The signal must land while requests are in flight for the test to show anything; on a loaded
    // machine it can land between batches, so such a round is run again (at most three rounds).
    for round in 1..=3 {
        let in_flight = sigterm_round(&cases, &want);
        if in_flight > 0 {
            return;
        }
        eprintln!("round {round}: the signal landed with no request in flight; running again");
    }
    panic!("in three rounds the signal never landed while requests waited in the 150 ms batch window");
}

/// One server under 8 clients, SIGTERM after 40 answers; asserts every accepted request was answered
/// correctly and the exit code is 0, and returns how many requests were in flight at the signal.
fn sigterm_round(cases: &[(String, String, String)], want: &[Value]) -> u64 {
    let mut server = Server::start(&bert(), &["--batch-timeout-ms", "150", "--max-batch-size", "64"]).ready();
    let addr = server.addr;
    let (done_tx, done_rx) = mpsc::channel::<(u16, bool)>();
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let (cases, want, done) = (cases.to_vec(), want.to_vec(), done_tx.clone());
            std::thread::spawn(move || {
                let mut refused = 0;
                for n in 0..400 {
                    let i = (k + n) % cases.len();
                    let (_, q, c) = &cases[i];
                    match client::post_json(addr, "/predict", &body(q, c)) {
                        Ok(r) => {
                            let correct = r.status == 200 && {
                                assert_close(&cases[i].0, &r.json(), &want[i]);
                                true
                            };
                            done.send((r.status, correct)).unwrap();
                        }
                        Err(_) => {
                            refused += 1;
                            if refused > 20 {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
        })
        .collect();
    drop(done_tx);
    let mut got = Vec::new();
    while got.len() < 40 {
        got.push(done_rx.recv_timeout(Duration::from_secs(60)).expect("answers before the signal"));
    }
    server.terminate();
    let stopping = server.wait_line("stopping: ");
    let status = server.wait_exit();
    for c in clients {
        c.join().expect("a client saw a wrong answer");
    }
    got.extend(done_rx.try_iter());
    let stopped = server.wait_line("stopped: ");
    assert!(status.success(), "exit status {status:?}");
    let in_flight: u64 = stopping.split_whitespace().nth(1).unwrap().parse().unwrap();
    let nums: Vec<u64> = stopped.split_whitespace().filter_map(|w| w.trim_end_matches(',').parse().ok()).collect();
    let (received, answered, ok) = (nums[0], nums[1], nums[2]);
    assert_eq!(received, answered, "{stopped}");
    assert_eq!(got.len() as u64, answered, "responses the clients read vs the server's count: {stopped}");
    assert!(got.iter().all(|&(s, correct)| s == 200 && correct), "only correct 200s under load: {got:?}");
    assert_eq!(ok, answered, "{stopped}");
    eprintln!("{stopping}; {stopped}");
    in_flight
}

#[test]
fn a_fixed_shape_model_is_served_at_its_own_sequence_length() {
    let model = common::fixture_dir("bert").join("model.static-b128.onnx");
    let (_, q, c) = cases().remove(0);
    // Long enough for several 128-token windows, and for more than one at the default 384.
    let long = [c.as_str(); 6].join(" ");
    // The default stride (128) does not fit 128-token windows; 64 does, on both sides.
    let server = Server::start(&model, &["--max-batch-size", "4", "--doc-stride", "64"]).ready();
    let meta = client::get(server.addr, "/v2/models/question_answering").unwrap().json();
    assert_eq!(meta["max_seq_len"], 128, "{meta}");
    let want = qa_answers(&model, &[("long".into(), q.clone(), long.clone())], &["--doc-stride", "64"]);
    let r = server.predict(&body(&q, &long));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_close("fixed [batch, 128] model", &r.json(), &want[0]);
}
