//! The server's bounds on clients: a deadline for request headers (slow or idle connections are
//! closed), a cap on open connections that health probes get past, and a cap on questions per
//! request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{bert, body, cases, client, metric, Server};

/// Reads until the server closes the connection (or 20 s pass); returns what arrived and when.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn slow_headers_and_idle_connections_are_cut_after_the_header_timeout() {
    let server = Server::start(&bert(), &["--header-timeout-s", "1"]).ready();
    // A client trickling header lines, one every 200 ms, never ending them.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for i in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if writer.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    // Meanwhile other clients are answered.
    assert_eq!(client::get(server.addr, "/v2/health/live").unwrap().status, 200);
    let (got, at) = read_until_closed(&mut slow);
    let took = at - t0;
    assert!(!String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "a 200 for unfinished headers");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the 1 s timeout");
    assert!(took < Duration::from_secs(6), "the trickling client held its connection {took:?}");
    drop(slow);
    trickle.join().unwrap();

    // A kept-alive connection waiting for its next request is on the same clock.
    let mut conn = client::Conn::open(server.addr).unwrap();
    assert_eq!(conn.send("GET", "/v2/health/live", b"", false).unwrap().status, 200);
    let t0 = Instant::now();
    let next = conn.send_raw(b"");
    let took = t0.elapsed();
    assert!(next.is_err(), "the idle connection was not closed: {:?}", next.map(|r| r.status));
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(6), "closed after {took:?}");
}

#[test]
fn connections_past_the_cap_get_503_while_health_answers() {
    let server = Server::start(&bert(), &["--max-connections", "2", "--header-timeout-s", "60"]).ready();
    let (_, q, c) = cases().remove(0);
    let b = body(&q, &c).to_string();
    // Two clients hold the two full connections.
    let mut held: Vec<client::Conn> = (0..2).map(|_| client::Conn::open(server.addr).unwrap()).collect();
    for h in &mut held {
        assert_eq!(h.send("POST", "/predict", b.as_bytes(), false).unwrap().status, 200);
    }
    let r = client::post_json(server.addr, "/predict", &body(&q, &c)).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.json()["error"].as_str().unwrap().contains("--max-connections 2"), "{}", r.text());
    let r = client::post_json(server.addr, "/v2/models/question_answering/infer", &body(&q, &c)).unwrap();
    assert_eq!(r.status, 503, "v2 infer past the cap: {}", r.text());
    for probe in ["/v2/health/live", "/v2/health/ready", "/health"] {
        let r = client::get(server.addr, probe).unwrap();
        assert_eq!(r.status, 200, "{probe} past the cap: {}", r.text());
    }
    let m = client::get(server.addr, "/metrics").unwrap().text();
    assert_eq!(metric(&m, "sparsec_connections_over_limit_total")[""], 6.0, "{m}");
    // The held connections still work; once one closes, a new client gets in.
    assert_eq!(held[0].send("POST", "/predict", b.as_bytes(), false).unwrap().status, 200);
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::post_json(server.addr, "/predict", &body(&q, &c)).unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "no slot freed 10 s after a client left");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn too_many_questions_in_one_request_get_413() {
    let server = Server::start(&bert(), &["--max-questions-per-request", "2"]).ready();
    let (_, q, c) = cases().remove(0);
    let tensor = |n: usize| {
        let qs = vec![q.clone(); n];
        json!({"inputs": [
            {"name": "question", "shape": [n], "datatype": "BYTES", "data": qs},
            {"name": "context", "shape": [1], "datatype": "BYTES", "data": [c]},
        ]})
    };
    let list = |n: usize| Value::Array(vec![body(&q, &c); n]);
    for (what, path, req, status) in [
        ("list of 2", "/predict", list(2), 200),
        ("list of 3", "/predict", list(3), 413),
        ("tensor of 2", "/v2/models/question_answering/infer", tensor(2), 200),
        ("tensor of 3", "/v2/models/question_answering/infer", tensor(3), 413),
    ] {
        let r = client::post_json(server.addr, path, &req).unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status == 413 {
            let e = r.json()["error"].as_str().unwrap().to_string();
            assert!(e.contains("3 questions, over --max-questions-per-request 2"), "{what}: {e}");
        }
    }
}
