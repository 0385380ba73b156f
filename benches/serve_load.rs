//! Load test of `sparsec serve` on the MiniLM SQuAD model, loopback only, bounded in requests and
//! time: N concurrent keep-alive clients for S seconds against a server with batching off
//! (`--max-batch-size 1`) and one with it on, and sequential `sparsec qa --file` on the same SQuAD
//! dev questions, all in one command. The four runs alternate for R rounds (the shared machine's
//! load drifts within minutes); throughput is the median over rounds, latency percentiles pool
//! every round's requests. Prints windows per model run, the servers' RSS after warm-up, half-way
//! and at the end, and how many answers differ from `sparsec qa`'s.
//!
//! `cargo bench --profile dev --bench serve_load -- [--clients 8] [--seconds 10] [--rounds 3]
//!  [--questions 64] [--threads 2] [--max-requests 3000] [--model DIR] [--data FILE]`

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
    rounds: usize,
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
        seconds: 10.0,
        rounds: 3,
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
            "--rounds" => o.rounds = v().parse().expect("--rounds"),
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
    requests: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    non_200: usize,
    mismatched: usize,
    windows_per_run: f64,
    rss_start: f64,
    rss_mid: f64,
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
        requests: 0,
        secs: 0.0,
        lat_ms: Vec::new(),
        non_200: 0,
        mismatched: 0,
        windows_per_run: f64::NAN,
        rss_start,
        rss_mid: 0.0,
        rss_end: 0.0,
        clean_exit: false,
    };
    std::thread::sleep(Duration::from_secs_f64(o.seconds / 2.0));
    run.rss_mid = rss_mib(server.child.id());
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

    let n = examples.len() as f64;
    let (mut seq, mut batched, mut offs, mut ons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut load_secs = Vec::new();
    for round in 0..o.rounds {
        let l = run_qa(&o, &one, 1).0;
        let (s1, want) = run_qa(&o, &file, 1);
        let (s16, _) = run_qa(&o, &file, 16);
        load_secs.push(l);
        seq.push((n - 1.0) / (s1 - l));
        batched.push((n - 1.0) / (s16 - l));
        offs.push(load(&o, &format!("round {round}: batching off"), &["--max-batch-size", "1"], &bodies, &want));
        ons.push(load(
            &o,
            &format!("round {round}: batching on"),
            &["--max-batch-size", "16", "--batch-timeout-ms", "5"],
            &bodies,
            &want,
        ));
    }
    let seq_qps = median(&seq);
    let batched_qps = median(&batched);

    println!(
        "{} SQuAD v1.1 dev questions, {} clients, {} s per server run, {} rounds, {} intra-op threads",
        examples.len(),
        o.clients,
        o.seconds,
        o.rounds,
        o.threads
    );
    println!(
        "sparsec qa --file: model load {:.2} s (median; timed on 1 question, subtracted below)",
        median(&load_secs)
    );
    println!(
        "per round q/s: qa bs1 {:?}, qa bs16 {:?}, serve off {:?}, serve on {:?}",
        rounded(&seq),
        rounded(&batched),
        rounded(&offs.iter().map(Run::qps).collect::<Vec<_>>()),
        rounded(&ons.iter().map(Run::qps).collect::<Vec<_>>())
    );
    println!();
    println!("| run | requests | q/s (median) | vs qa --file --batch-size 1 | p50 ms | p90 ms | p99 ms | windows/run | RSS MiB warm → half → end (last round) | answers ≠ qa | non-200 | exits 0 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| sparsec qa --file --batch-size 1 (sequential) | {} | {seq_qps:.2} | 1.00x | | | | 1 | | | | |",
        examples.len() * o.rounds
    );
    println!(
        "| sparsec qa --file --batch-size 16 (offline) | {} | {batched_qps:.2} | {:.2}x | | | | ≤16 | | | | |",
        examples.len() * o.rounds,
        batched_qps / seq_qps
    );
    for (label, runs) in
        [("serve, batching off (--max-batch-size 1)", &offs), ("serve, batching on (--max-batch-size 16, 5 ms)", &ons)]
    {
        let qps = median(&runs.iter().map(Run::qps).collect::<Vec<_>>());
        let mut lat: Vec<f64> = runs.iter().flat_map(|r| r.lat_ms.iter().copied()).collect();
        lat.sort_by(f64::total_cmp);
        let last = runs.last().unwrap();
        println!(
            "| {label} | {} | {qps:.2} | {:.2}x | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} → {:.0} → {:.0} | {} | {} | {}/{} |",
            lat.len(),
            qps / seq_qps,
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            median(&runs.iter().map(|r| r.windows_per_run).collect::<Vec<_>>()),
            last.rss_start,
            last.rss_mid,
            last.rss_end,
            runs.iter().map(|r| r.mismatched).sum::<usize>(),
            runs.iter().map(|r| r.non_200).sum::<usize>(),
            runs.iter().filter(|r| r.clean_exit).count(),
            runs.len(),
        );
    }
    let ratios: Vec<f64> = offs.iter().zip(&ons).map(|(a, b)| b.qps() / a.qps()).collect();
    println!();
    println!(
        "dynamic batching: {:.2}x the throughput of batching off (median of per-round ratios {:?})",
        median(&ratios),
        rounded(&ratios)
    );
    assert!(offs.iter().chain(&ons).all(|r| r.clean_exit), "a server did not exit 0 on SIGTERM");
    assert_eq!(offs.iter().chain(&ons).map(|r| r.non_200).sum::<usize>(), 0, "requests failed under load");
}

impl Run {
    fn qps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}
