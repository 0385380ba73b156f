//! Load test of `sparsec serve` on the MiniLM SQuAD model, loopback only, bounded in requests and
//! time: N concurrent keep-alive clients for S seconds, batching off (`--max-batch-size 1`) then
//! on, against sequential `sparsec qa --file` on the same SQuAD dev questions, all in one command.
//! Prints throughput, latency percentiles, windows per model run, RSS after warm-up and at the
//! end, and how many answers differ from `sparsec qa`'s.
//!
//! `cargo bench --profile dev --bench serve_load -- [--clients 8] [--seconds 20] [--questions 64]
//!  [--threads 2] [--max-requests 3000] [--model DIR] [--data FILE]`

#[path = "../tests/serve/client.rs"]
mod client;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Opts {
    model: PathBuf,
    data: PathBuf,
    clients: usize,
    seconds: f64,
    questions: usize,
    threads: usize,
    max_requests: usize,
}

fn parse_opts() -> Opts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        model: root.join("../shared/models/minilm-l6-squad"),
        data: root.join("../shared/data/squad-v1.1-dev-split.json.gz"),
        clients: 8,
        seconds: 20.0,
        questions: 64,
        threads: 2,
        max_requests: 3000,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.model = v().into(),
            "--data" => o.data = v().into(),
            "--clients" => o.clients = v().parse().expect("--clients"),
            "--seconds" => o.seconds = v().parse().expect("--seconds"),
            "--questions" => o.questions = v().parse().expect("--questions"),
            "--threads" => o.threads = v().parse().expect("--threads"),
            "--max-requests" => o.max_requests = v().parse().expect("--max-requests"),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Seconds `sparsec qa --file` takes on `file`, and its answers' texts.
fn run_qa(o: &Opts, file: &Path, batch: usize) -> (f64, Vec<String>) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sparsec"))
        .args(["qa", "--model", o.model.to_str().unwrap(), "--file", file.to_str().unwrap()])
        .args(["--batch-size", &batch.to_string(), "--threads", &o.threads.to_string()])
        .output()
        .expect("run sparsec qa");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "sparsec qa: {}", String::from_utf8_lossy(&out.stderr));
    let answers = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["answer"]["answer"].as_str().unwrap().to_string())
        .collect();
    (secs, answers)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(o: &Opts, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sparsec"))
            .args(["serve", "--port", "0", "--model", o.model.to_str().unwrap()])
            .args(["--threads", &o.threads.to_string(), "--queue-size", &(4 * o.clients).to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sparsec serve");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut s = Server { child, addr: "127.0.0.1:0".parse().unwrap(), lines };
        s.addr = s.wait("listening on http://").trim_start_matches("listening on http://").parse().unwrap();
        s.wait("ready: ");
        s
    }

    fn wait(&mut self, prefix: &str) -> String {
        loop {
            let l = self.lines.recv_timeout(Duration::from_secs(120)).expect("server line");
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    fn stop(mut self) -> (bool, String) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let stopped = self.wait("stopped: ");
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        (ok, stopped)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    label: String,
    requests: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    non_200: usize,
    mismatched: usize,
    windows_per_run: f64,
    rss_start: f64,
    rss_end: f64,
    clean_exit: bool,
}

fn load(o: &Opts, label: &str, extra: &[&str], bodies: &[Value], want: &[String]) -> Run {
    let server = Server::start(o, extra);
    let addr = server.addr;
    let mut warm = client::Conn::open(addr).unwrap();
    for b in bodies.iter().take(8) {
        assert_eq!(warm.send("POST", "/predict", b.to_string().as_bytes(), false).unwrap().status, 200);
    }
    let rss_start = rss_mib(server.child.id());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.seconds);
    let per_client = o.max_requests.div_ceil(o.clients);
    let handles: Vec<_> = (0..o.clients)
        .map(|k| {
            let (bodies, want, clients) = (bodies.to_vec(), want.to_vec(), o.clients);
            std::thread::spawn(move || {
                let mut conn = client::Conn::open(addr).unwrap();
                let (mut lat, mut non_200, mut mismatched) = (Vec::new(), 0, 0);
                for n in 0..per_client {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let i = (k + n * clients) % bodies.len();
                    let t = Instant::now();
                    let r = conn.send("POST", "/predict", bodies[i].to_string().as_bytes(), false).unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if r.status != 200 {
                        non_200 += 1;
                    } else if r.json()["answer"].as_str() != Some(want[i].as_str()) {
                        mismatched += 1;
                    }
                }
                (lat, non_200, mismatched)
            })
        })
        .collect();
    let mut run = Run {
        label: label.to_string(),
        requests: 0,
        secs: 0.0,
        lat_ms: Vec::new(),
        non_200: 0,
        mismatched: 0,
        windows_per_run: f64::NAN,
        rss_start,
        rss_end: 0.0,
        clean_exit: false,
    };
    for h in handles {
        let (l, n, m) = h.join().unwrap();
        run.lat_ms.extend(l);
        run.non_200 += n;
        run.mismatched += m;
    }
    run.secs = t0.elapsed().as_secs_f64();
    run.requests = run.lat_ms.len();
    run.lat_ms.sort_by(f64::total_cmp);
    let m = client::get(addr, "/metrics").unwrap().text();
    let value = |key: &str| m.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok());
    if let (Some(sum), Some(count)) = (
        value(r#"sparsec_batch_size_sum{endpoint="question_answering"}"#),
        value(r#"sparsec_batch_size_count{endpoint="question_answering"}"#),
    ) {
        run.windows_per_run = sum / count;
    }
    run.rss_end = rss_mib(server.child.id());
    let (ok, stopped) = server.stop();
    run.clean_exit = ok;
    eprintln!("{label}: {stopped}");
    run
}

fn main() {
    let o = parse_opts();
    if !o.model.join("model.onnx").exists() || !o.data.exists() {
        println!("SKIPPED: {} or {} is absent", o.model.display(), o.data.display());
        return;
    }
    let examples = sparsec::qa::squad::load(&o.data).expect("SQuAD data");
    let examples: Vec<_> = examples.into_iter().take(o.questions).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("questions.jsonl");
    let lines: Vec<String> = examples
        .iter()
        .map(|e| json!({"id": e.id, "question": e.question, "context": e.context}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, &lines[0]).unwrap();
    let bodies: Vec<Value> = examples.iter().map(|e| json!({"question": e.question, "context": e.context})).collect();

    let load_secs = run_qa(&o, &one, 1).0;
    let (seq_secs, want) = run_qa(&o, &file, 1);
    let (batched_secs, _) = run_qa(&o, &file, 16);
    let n = examples.len() as f64;
    let seq_qps = (n - 1.0) / (seq_secs - load_secs);
    let batched_qps = (n - 1.0) / (batched_secs - load_secs);

    let off = load(&o, "serve, batching off (--max-batch-size 1)", &["--max-batch-size", "1"], &bodies, &want);
    let on = load(
        &o,
        "serve, batching on (--max-batch-size 16 --batch-timeout-ms 5)",
        &["--max-batch-size", "16", "--batch-timeout-ms", "5"],
        &bodies,
        &want,
    );

    println!(
        "{} SQuAD v1.1 dev questions, {} clients, {} s per server run, {} intra-op threads",
        examples.len(),
        o.clients,
        o.seconds,
        o.threads
    );
    println!("sparsec qa --file: model load {load_secs:.2} s (timed on 1 question, subtracted below)");
    println!();
    println!("| run | requests | q/s | vs qa --file --batch-size 1 | p50 ms | p90 ms | p99 ms | windows/run | RSS start → end MiB | answers ≠ qa | non-200 | exit |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| sparsec qa --file --batch-size 1 (sequential) | {} | {seq_qps:.2} | 1.00x | | | | 1 | | | | |",
        examples.len()
    );
    println!(
        "| sparsec qa --file --batch-size 16 (offline) | {} | {batched_qps:.2} | {:.2}x | | | | ≤16 | | | | |",
        examples.len(),
        batched_qps / seq_qps
    );
    for r in [&off, &on] {
        let qps = r.requests as f64 / r.secs;
        println!(
            "| {} | {} | {qps:.2} | {:.2}x | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} → {:.0} | {} | {} | {} |",
            r.label,
            r.requests,
            qps / seq_qps,
            percentile(&r.lat_ms, 0.5),
            percentile(&r.lat_ms, 0.9),
            percentile(&r.lat_ms, 0.99),
            r.windows_per_run,
            r.rss_start,
            r.rss_end,
            r.mismatched,
            r.non_200,
            if r.clean_exit { "0" } else { "FAILED" },
        );
    }
    let (qoff, qon) = (off.requests as f64 / off.secs, on.requests as f64 / on.secs);
    println!();
    println!("dynamic batching: {:.2}x the throughput of batching off", qon / qoff);
    assert!(off.clean_exit && on.clean_exit, "a server did not exit 0 on SIGTERM");
    assert_eq!(off.non_200 + on.non_200, 0, "requests failed under load");
}
