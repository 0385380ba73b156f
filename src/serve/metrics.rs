//! The server's counters and histograms, rendered as Prometheus text for `GET /metrics`:
//! requests by route and status, request latency, windows per model run, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency buckets.
pub const LATENCY_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the windows-per-model-run buckets.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A cumulative histogram with fixed bucket bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// HTTP-level metrics, shared by every route.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    received: AtomicU64,
    answered: AtomicU64,
    by_status: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

/// Totals for the shutdown summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Requests whose handling began.
    pub received: u64,
    /// Requests a response was produced for.
    pub answered: u64,
    /// Of those, with status 200.
    pub ok: u64,
}

impl HttpMetrics {
    pub fn begin(&self) {
        self.received.fetch_add(1, Ordering::SeqCst);
    }

    pub fn finish(&self, route: &str, status: u16, elapsed: Duration) {
        *lock(&self.by_status).entry((route.to_string(), status)).or_insert(0) += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(elapsed.as_secs_f64());
        self.answered.fetch_add(1, Ordering::SeqCst);
    }

    pub fn totals(&self) -> Totals {
        let ok = lock(&self.by_status).iter().filter(|((_, s), _)| *s == 200).map(|(_, n)| n).sum();
        Totals { received: self.received.load(Ordering::SeqCst), answered: self.answered.load(Ordering::SeqCst), ok }
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP sparsec_http_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE sparsec_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.by_status).iter() {
            let _ = writeln!(out, "sparsec_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP sparsec_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE sparsec_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            h.render(out, "sparsec_request_duration_seconds", &format!("route=\"{route}\""));
        }
    }
}

/// Open connections, kept by the accept loop ([`listen`](super::listen)).
#[derive(Debug, Default)]
pub struct Connections {
    pub open: AtomicUsize,
    /// Connections accepted past `--max-connections` (served health and metrics only, or closed).
    pub over_limit: AtomicU64,
}

impl Connections {
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP sparsec_open_connections Open client connections.\n");
        out.push_str("# TYPE sparsec_open_connections gauge\n");
        let _ = writeln!(out, "sparsec_open_connections {}", self.open.load(Ordering::SeqCst));
        out.push_str("# HELP sparsec_connections_over_limit_total Connections accepted past --max-connections.\n");
        out.push_str("# TYPE sparsec_connections_over_limit_total counter\n");
        let _ = writeln!(out, "sparsec_connections_over_limit_total {}", self.over_limit.load(Ordering::SeqCst));
    }
}

/// One endpoint's batching state as `/metrics` shows it.
pub struct EndpointSample {
    pub name: String,
    pub batches: Histogram,
    pub queue_depth: usize,
    pub pending: usize,
}

/// The per-endpoint families, each family's samples together: windows per model run, queue
/// depth, admitted requests.
pub fn render_endpoints(out: &mut String, endpoints: &[EndpointSample]) {
    out.push_str("# HELP sparsec_batch_size Windows per model run, gathered across requests.\n");
    out.push_str("# TYPE sparsec_batch_size histogram\n");
    for e in endpoints {
        e.batches.render(out, "sparsec_batch_size", &format!("endpoint=\"{}\"", e.name));
    }
    out.push_str("# HELP sparsec_queue_depth Requests waiting for the inference worker.\n");
    out.push_str("# TYPE sparsec_queue_depth gauge\n");
    for e in endpoints {
        let _ = writeln!(out, "sparsec_queue_depth{{endpoint=\"{}\"}} {}", e.name, e.queue_depth);
    }
    out.push_str(
        "# HELP sparsec_pending_requests Requests admitted (tokenizing, queued or running), not yet answered.\n",
    );
    out.push_str("# TYPE sparsec_pending_requests gauge\n");
    for e in endpoints {
        let _ = writeln!(out, "sparsec_pending_requests{{endpoint=\"{}\"}} {}", e.name, e.pending);
    }
}

/// A poisoned lock only means another request panicked mid-update; the counts stay usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
