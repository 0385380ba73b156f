//! Block-sparse int8 linear speed at every MiniLM linear shape (384→384, fused QKV 384→1152,
//! 384→1536, 1536→384), 384 and 6144 tokens, sparsity 0/50/70/80/90% for the [4,1], [1,4] and
//! unstructured patterns, 1 and 2 threads, on the ISA `SPARSEC_ISA` selects (default: the best this
//! CPU has). Per configuration it times `LinearI8::forward` (f32 in, dynamic quantization, f32 out)
//! and `matmul_u8_i32` (u8 in, i32 out): median wall time per call over a short loop (`--secs`,
//! at least 3 calls) and CPU time per call (all threads, `CLOCK_PROCESS_CPUTIME_ID`: on a
//! shared machine a long call is preempted, and wall time then counts the wait), non-zero GMAC/s
//! (`T·nnz(W)` over the time) and the share of the integer peak measured here by a register-only
//! microbench in CPU time (`vpdpbusd` on AVX-512 VNNI, `vpmaddwd`+`vpaddd` on AVX2; per core).
//!
//!   cargo run --release -p sparsec-kernels --example kernel_bench -- [--json] [--secs S]
//!       [--only K,N,T,THREADS] [--pattern dense|4x1|1x4|unstructured] [--f32] [--gelu]
//!
//! `--only` takes any shape (K, N a multiple of 4 for the `[1, 4]` pattern), not only MiniLM's.
//!
//! `--f32` times `LinearF32::forward` instead (fp32 weights with the same zero patterns, at 0,
//! 80 and 90% sparsity; no peak share, the integer peak does not apply).
//!
//! `--gelu` runs the int8 forward with the exact GELU fused into its epilogue (an FFN's first
//! linear), to time the epilogue's share.
//!
//! `--json` prints one JSON object per line (first the peaks) for `benches/kernel_table.py`, which
//! times ONNX Runtime's dense int8 on the same shapes around each group. Threads come from a small
//! persistent pool (condvar wake-up, as ONNX Runtime's intra-op pool), not per-call spawns.

use sparsec_kernels::linear_f32::LinearF32;
use sparsec_kernels::linear_i8::{ActQuant, Epilogue, LinearI8};
use sparsec_kernels::{Isa, Parallel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

const SHAPES: [(usize, usize); 4] = [(384, 384), (384, 1152), (384, 1536), (1536, 384)];
const TOKENS: [usize; 2] = [384, 6144];
const SPARSITIES: [f64; 4] = [0.5, 0.7, 0.8, 0.9];
const PATTERNS: [&str; 3] = ["4x1", "1x4", "unstructured"];

type Job = *const (dyn Fn(usize) + Sync);

struct State {
    generation: u64,
    job: Option<(usize, (usize, usize))>,
    active: usize,
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    next: AtomicUsize,
}

/// `threads − 1` persistent workers plus the calling thread.
struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    threads: usize,
}

fn job_to_raw<'a>(f: &'a (dyn Fn(usize) + Sync + 'a)) -> (usize, usize) {
    let p: *const (dyn Fn(usize) + Sync + 'a) = f;
    // SAFETY: a fat pointer is two words; `run` keeps `f` alive until every worker is done with it.
    unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'a), (usize, usize)>(p) }
}

fn work(shared: &Shared, n: usize, raw: (usize, usize)) {
    // SAFETY: see `job_to_raw`.
    let f: &(dyn Fn(usize) + Sync) = unsafe { &*std::mem::transmute::<(usize, usize), Job>(raw) };
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { generation: 0, job: None, active: 0, quit: false }),
            wake: Condvar::new(),
            done: Condvar::new(),
            next: AtomicUsize::new(0),
        });
        let workers = (1..threads)
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let mut seen = 0;
                    loop {
                        let (n, raw) = {
                            let mut st = shared.state.lock().unwrap();
                            while st.generation == seen && !st.quit {
                                st = shared.wake.wait(st).unwrap();
                            }
                            if st.quit {
                                return;
                            }
                            seen = st.generation;
                            st.job.unwrap()
                        };
                        work(&shared, n, raw);
                        let mut st = shared.state.lock().unwrap();
                        st.active -= 1;
                        if st.active == 0 {
                            shared.done.notify_all();
                        }
                    }
                })
            })
            .collect();
        Pool { shared, workers, threads }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().quit = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Parallel for Pool {
    fn threads(&self) -> usize {
        self.threads
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || n <= 1 {
            (0..n).for_each(f);
            return;
        }
        let raw = job_to_raw(f);
        self.shared.next.store(0, Ordering::Relaxed);
        {
            let mut st = self.shared.state.lock().unwrap();
            st.job = Some((n, raw));
            st.active = self.threads - 1;
            st.generation += 1;
        }
        self.shared.wake.notify_all();
        work(&self.shared, n, raw);
        let mut st = self.shared.state.lock().unwrap();
        while st.active > 0 {
            st = self.shared.done.wait(st).unwrap();
        }
        st.job = None;
    }
}

/// A small deterministic generator (SplitMix64), so the example needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn nonzero_i8(&mut self) -> i8 {
        loop {
            let v = self.next() as i8;
            if v != 0 {
                return v;
            }
        }
    }
}

/// `W [K, N]` at `sparsity` with the given zero pattern (exactly that share of blocks zeroed).
fn weights(rng: &mut Rng, k: usize, n: usize, pattern: &str, sparsity: f64) -> Vec<i8> {
    let mut w: Vec<i8> = (0..k * n).map(|_| rng.nonzero_i8()).collect();
    let cells: Vec<Vec<usize>> = match pattern {
        "4x1" => (0..k).flat_map(|kk| (0..n / 4).map(move |b| (0..4).map(|c| kk * n + 4 * b + c).collect())).collect(),
        "1x4" => (0..k / 4).flat_map(|a| (0..n).map(move |j| (0..4).map(|i| (4 * a + i) * n + j).collect())).collect(),
        _ => (0..k * n).map(|i| vec![i]).collect(),
    };
    let mut order: Vec<usize> = (0..cells.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    for &c in &order[..(sparsity * cells.len() as f64).round() as usize] {
        for &i in &cells[c] {
            w[i] = 0;
        }
    }
    w
}

#[cfg(target_os = "linux")]
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[cfg(target_os = "linux")]
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU seconds of all this process's threads (Linux `CLOCK_PROCESS_CPUTIME_ID`); 0 elsewhere.
fn cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
        if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.sec as f64 + ts.nsec as f64 * 1e-9;
        }
    }
    0.0
}

/// Median wall seconds per call of `f` over at least 3 calls and `secs` seconds (after one
/// warm-up), and CPU seconds per call (all threads; excludes time spent waiting for a core).
fn time(secs: f64, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    while times.len() < 3 || start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_seconds() - cpu0) / times.len() as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], cpu)
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    const CHAINS: usize = 12;
    const ITERS: usize = 2_000_000;

    /// `vpdpbusd` MAC/s on one core: 12 independent accumulator chains, registers only.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni() -> f64 {
        let a = _mm512_set1_epi8(black_box(3));
        let b = _mm512_set1_epi8(black_box(-2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        let t = super::cpu_seconds();
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let s = super::cpu_seconds() - t;
        black_box(acc);
        (ITERS * CHAINS * 64) as f64 / s
    }

    /// `vpmaddwd` + `vpaddd` MAC/s on one core (the AVX2 kernel's exact inner pair); the
    /// multiplicand passes through an empty `asm!` each iteration so the multiplies stay in the loop.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2() -> f64 {
        const CHAINS: usize = 6;
        let mut a = [_mm256_set1_epi16(black_box(3)); CHAINS];
        let b = _mm256_set1_epi16(black_box(-2));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        let t = super::cpu_seconds();
        for _ in 0..ITERS {
            for (v, a) in acc.iter_mut().zip(a.iter_mut()) {
                // SAFETY: an empty instruction string; it only hides `a`'s value from the optimiser.
                unsafe { std::arch::asm!("/* {0} */", inout(ymm_reg) * a, options(nomem, nostack)) };
                *v = _mm256_add_epi32(*v, _mm256_madd_epi16(*a, b));
            }
        }
        let s = super::cpu_seconds() - t;
        black_box(acc);
        (ITERS * CHAINS * 16) as f64 / s
    }

    /// Best of 5 runs of the ISA's microbench, MAC/s per core of CPU time (not wall time, which a
    /// shared machine inflates); `None` when the CPU lacks it.
    pub fn measure(isa: super::Isa) -> Option<f64> {
        let run = || match isa {
            // SAFETY: only called when the CPU supports the ISA (checked below).
            super::Isa::Avx512Vnni => unsafe { vnni() },
            super::Isa::Avx2 => unsafe { avx2() },
            super::Isa::Scalar => 0.0,
        };
        (isa.supported() && isa != super::Isa::Scalar).then(|| (0..5).map(|_| run()).fold(0.0, f64::max))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod peak {
    pub fn measure(_: super::Isa) -> Option<f64> {
        None
    }
}

struct Args {
    json: bool,
    secs: f64,
    only: Option<(usize, usize, usize, usize)>,
    pattern: Option<String>,
    f32: bool,
    gelu: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { json: false, secs: 0.15, only: None, pattern: None, f32: false, gelu: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--f32" => a.f32 = true,
            "--gelu" => a.gelu = true,
            "--secs" => a.secs = it.next().and_then(|s| s.parse().ok()).ok_or("--secs needs a number")?,
            "--only" => {
                let v: Vec<usize> = it
                    .next()
                    .ok_or("--only needs K,N,T,THREADS")?
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("--only: '{s}' is not a number")))
                    .collect::<Result<_, _>>()?;
                let [k, n, t, th] = v[..] else { return Err("--only needs K,N,T,THREADS".into()) };
                a.only = Some((k, n, t, th));
            }
            "--pattern" => a.pattern = Some(it.next().ok_or("--pattern needs dense|4x1|1x4|unstructured")?),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kernel_bench: {e}");
            std::process::exit(2);
        }
    };
    let isa = match Isa::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("kernel_bench: {e}");
            std::process::exit(2);
        }
    };
    let vnni_peak = peak::measure(Isa::Avx512Vnni);
    let isa_peak = peak::measure(isa);
    let fmt_peak = |p: Option<f64>| p.map_or("null".to_string(), |p| format!("{:.1}", p / 1e9));
    if args.json {
        println!(
            "{{\"isa\":\"{isa}\",\"vnni_peak_gmacs\":{},\"isa_peak_gmacs\":{}}}",
            fmt_peak(vnni_peak),
            fmt_peak(isa_peak)
        );
    } else {
        println!(
            "ISA {isa}; per-core integer peak: vpdpbusd {} GMAC/s, this ISA {} GMAC/s",
            fmt_peak(vnni_peak),
            fmt_peak(isa_peak)
        );
        println!(
            "{:>5}→{:<5} {:>5} {:>2} {:>12} {:>4} {:>10} {:>9} {:>10} {:>6} {:>8} {:>8} {:>8}",
            "K",
            "N",
            "T",
            "th",
            "pattern",
            "sp%",
            "fwd ms",
            "int ms",
            "nz GMAC/s",
            "%peak",
            "fwd cpu",
            "int cpu",
            "int cpuG"
        );
    }
    let mut rng = Rng(12);
    let mut pools: Vec<Pool> = Vec::new();
    // `--only` runs exactly its configuration (any K, N, T: BERT-base's widths too), else every
    // MiniLM shape.
    let grid: Vec<(usize, usize, usize, usize)> = match args.only {
        Some(o) => vec![o],
        None => {
            SHAPES.iter().flat_map(|&(k, n)| TOKENS.iter().flat_map(move |&t| [1, 2].map(|th| (k, n, t, th)))).collect()
        }
    };
    for (k, n, t, threads) in grid {
        {
            {
                if !pools.iter().any(|p| p.threads == threads) {
                    pools.push(Pool::new(threads));
                }
                let pool = pools.iter().find(|p| p.threads == threads).expect("pool made above");
                let x: Vec<f32> = (0..t * k).map(|_| (rng.unit() * 6.0 - 3.0) as f32).collect();
                let xq: Vec<u8> = (0..t * k).map(|_| rng.next() as u8).collect();
                let mut y = vec![0f32; t * n];
                let mut acc = vec![0i32; t * n];
                let mut configs: Vec<(&str, f64)> = vec![("dense", 0.0)];
                for p in PATTERNS {
                    configs.extend(SPARSITIES.iter().map(|&s| (p, s)));
                }
                configs.retain(|(p, _)| args.pattern.as_deref().is_none_or(|want| want == *p));
                if args.f32 {
                    configs.retain(|&(_, s)| s == 0.0 || s >= 0.8);
                    for (pattern, sparsity) in configs {
                        let w: Vec<f32> =
                            weights(&mut rng, k, n, pattern, sparsity).iter().map(|&v| v as f32 / 128.0).collect();
                        let lin = LinearF32::new(&w, k, n, None, isa).expect("valid shapes");
                        let (fwd, fwd_cpu) = time(args.secs, || {
                            lin.forward(&x, t, Epilogue::None, None, &mut y, pool).expect("valid shapes")
                        });
                        let nz = lin.stats().nonzeros;
                        if args.json {
                            println!(
                                "{{\"kind\":\"f32\",\"k\":{k},\"n\":{n},\"t\":{t},\"threads\":{threads},\"pattern\":\"{pattern}\",\"sparsity\":{sparsity},\"nonzeros\":{nz},\"forward_s\":{fwd:e},\"forward_cpu_s\":{fwd_cpu:e}}}"
                            );
                        } else {
                            println!(
                                "{k:>5}→{n:<5} {t:>5} {threads:>2} {pattern:>12} {:>4.0} {:>10.3} {:>9} {:>10.1} {:>6} {:>8.3}",
                                sparsity * 100.0,
                                fwd * 1e3,
                                "f32",
                                (t * nz) as f64 / fwd_cpu / 1e9,
                                "-",
                                fwd_cpu * 1e3
                            );
                        }
                    }
                    continue;
                }
                let epilogue = if args.gelu { Epilogue::Gelu } else { Epilogue::None };
                for (pattern, sparsity) in configs {
                    let w = weights(&mut rng, k, n, pattern, sparsity);
                    let w_scale: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-5).collect();
                    let lin = LinearI8::new(&w, k, n, &w_scale, None, isa).expect("valid shapes");
                    let (fwd, fwd_cpu) = time(args.secs, || {
                        lin.forward(&x, t, ActQuant::Dynamic, epilogue, None, &mut y, pool).expect("valid shapes")
                    });
                    let (int, int_cpu) =
                        time(args.secs, || lin.matmul_u8_i32(&xq, t, &mut acc, pool).expect("valid shapes"));
                    let st = lin.stats();
                    let gmacs = (t * st.nonzeros) as f64 / fwd / 1e9;
                    let pct = isa_peak.map(|p| 100.0 * gmacs * 1e9 / (p * threads as f64));
                    let cpu_gmacs = (t * st.nonzeros) as f64 / int_cpu / 1e9;
                    if args.json {
                        println!(
                            "{{\"k\":{k},\"n\":{n},\"t\":{t},\"threads\":{threads},\"pattern\":\"{pattern}\",\"sparsity\":{sparsity},\"detected\":\"{}\",\"nonzeros\":{},\"stored\":{},\"forward_s\":{fwd:e},\"int_s\":{int:e},\"forward_cpu_s\":{fwd_cpu:e},\"int_cpu_s\":{int_cpu:e}}}",
                            st.pattern, st.nonzeros, st.stored
                        );
                    } else {
                        println!(
                            "{k:>5}→{n:<5} {t:>5} {threads:>2} {pattern:>12} {:>4.0} {:>10.3} {:>9.3} {gmacs:>10.1} {:>6} {:>8.3} {:>8.3} {cpu_gmacs:>8.1}",
                            sparsity * 100.0,
                            fwd * 1e3,
                            int * 1e3,
                            pct.map_or("-".into(), |p| format!("{p:.0}%")),
                            fwd_cpu * 1e3,
                            int_cpu * 1e3,
                        );
                    }
                }
            }
        }
    }
}
