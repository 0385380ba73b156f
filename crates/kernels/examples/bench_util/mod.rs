//! What the attention benchmarks share: scoped worker threads started per call, this process's CPU
//! time, a timing loop, and `--name value` arguments.

use sparsec_kernels::Parallel;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Threads(pub usize);

impl Parallel for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i)
        };
        std::thread::scope(|s| {
            for _ in 1..self.0 {
                s.spawn(work);
            }
            work();
        });
    }
}

/// This process's user + system CPU seconds (Linux `/proc/self/stat`, 100 Hz ticks); 0 elsewhere.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Median and fastest wall seconds per call over at least 3 calls and `secs` of calls, after one
/// warm-up call, and the CPU seconds per call (all threads) over the same calls.
pub fn time(secs: f64, mut f: impl FnMut()) -> (f64, f64, f64) {
    f();
    let mut times = vec![];
    let (start, cpu) = (Instant::now(), cpu_seconds());
    while times.len() < 3 || start.elapsed() < Duration::from_secs_f64(secs) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_seconds() - cpu) / times.len() as f64;
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], cpu)
}

pub fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    let v = args.get(i + 1).unwrap_or_else(|| panic!("{name} takes a value"));
    Some(v.parse().unwrap_or_else(|_| panic!("{name}: cannot parse '{v}'")))
}
