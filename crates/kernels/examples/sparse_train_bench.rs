//! The masked-linear training kernels (`sparsec_kernels::masked_linear`) at MiniLM's linear shapes
//! (384→384, 384→1536, 1536→384), 6144 tokens (16 windows of 384) and 2560 (16 length-grouped
//! windows of about 160), 0/50/80/90% `[4, 1]` block sparsity, one thread, on the ISA
//! `SPARSEC_ISA` selects (default: the best this CPU has). Per configuration: the forward product,
//! the input gradient and the weight gradient (each call includes listing the kept blocks from the
//! mask and packing the weights, as the training operators do), min and median thread CPU time
//! over a short loop (`--secs`, at least 3 calls after one warm-up), and the dense-equivalent GFLOP/s
//! (`2·T·K·N` over the min). Kernel times only: `benches/sparse_train_ops.rs` times the same
//! work against ONNX Runtime's dense MatMul/Gemm, the path training takes without the kernels.
//!
//! `--threads N` (N > 1) runs each call on N scoped threads and times wall seconds instead.
//! `--precision bf16` times the bf16 products (`vdpbf16ps`, AVX-512 BF16) instead, `both` the two
//! one after the other per configuration.
//!
//!   cargo run --release -p sparsec-kernels --example sparse_train_bench -- [--secs S] [--tokens T] [--json]
//!       [--only K,N,SPARSITY] [--precision f32|bf16|both] [--threads N]

use std::time::Instant;

use sparsec_kernels::masked_linear::{KeptBlocks, MaskedLinear, Precision};
use sparsec_kernels::{Isa, Parallel, Serial};

#[allow(dead_code)] // this example uses only its thread pool
mod bench_util;

const SHAPES: [(usize, usize); 3] = [(384, 384), (384, 1536), (1536, 384)];
const TOKENS: [usize; 2] = [6144, 2560];
const SPARSITIES: [f64; 4] = [0.0, 0.5, 0.8, 0.9];

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[K, N]` mask of `[4, 1]` blocks at sparsity `s` (exactly `round(s·K·N/4)` blocks zero, by
/// a fixed pseudo-random order).
fn block_mask(k: usize, n: usize, s: f64) -> Vec<f32> {
    let nb = n / 4;
    let mut order: Vec<(u64, usize)> = (0..k * nb)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xC2B2_AE3D_27D4_EB4F, i))
        .collect();
    order.sort_unstable();
    let zero = (s * (k * nb) as f64).round() as usize;
    let mut m = vec![1f32; k * n];
    for &(_, blk) in &order[..zero] {
        let (kk, b) = (blk / nb, blk % nb);
        m[kk * n + 4 * b..kk * n + 4 * b + 4].fill(0.0);
    }
    m
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[cfg(target_os = "linux")]
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU seconds of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`); wall seconds elsewhere.
fn thread_seconds(epoch: Instant) -> f64 {
    #[cfg(target_os = "linux")]
    {
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.sec as f64 + ts.nsec as f64 * 1e-9;
        }
    }
    epoch.elapsed().as_secs_f64()
}

/// `(min, median)` CPU seconds of this thread per call of `f` (a call preempted by other work
/// on a shared machine does not count the wait) over at least 3 calls and `secs` seconds of wall
/// time, after one warm-up call.
fn time(secs: f64, wall: bool, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let start = Instant::now();
    let now = |s: Instant| if wall { s.elapsed().as_secs_f64() } else { thread_seconds(s) };
    let mut v = Vec::new();
    while v.len() < 3 || start.elapsed().as_secs_f64() < secs {
        let t = now(start);
        f();
        v.push(now(start) - t);
    }
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let secs: f64 = arg("--secs").map_or(0.3, |s| s.parse().expect("--secs"));
    let tokens: Vec<usize> = arg("--tokens").map_or(TOKENS.to_vec(), |t| vec![t.parse().expect("--tokens")]);
    let json = args.iter().any(|a| a == "--json");
    let only: Option<(usize, usize, f64)> = arg("--only").map(|o| {
        let v: Vec<&str> = o.split(',').collect();
        (v[0].parse().expect("K"), v[1].parse().expect("N"), v[2].parse().expect("sparsity"))
    });
    let isa = Isa::from_env().expect("SPARSEC_ISA");
    let threads: usize = arg("--threads").map_or(1, |t| t.parse().expect("--threads"));
    let pool = bench_util::Threads(threads);
    let par: &dyn Parallel = if threads > 1 { &pool } else { &Serial };
    let wall = threads > 1;
    let precisions: Vec<Precision> = match arg("--precision").as_deref() {
        None | Some("f32") => vec![Precision::F32],
        Some("bf16") => vec![Precision::Bf16],
        Some("both") => vec![Precision::F32, Precision::Bf16],
        Some(p) => panic!("--precision must be f32, bf16 or both, not {p}"),
    };
    let kernels: Vec<MaskedLinear> =
        precisions.iter().map(|&p| MaskedLinear::with_precision(isa, p).expect("ISA and precision")).collect();
    if !json {
        if threads > 1 {
            println!("masked-linear training kernels, {isa}, {threads} threads; wall ms per call (min / median), dense-equivalent GFLOP/s of the min");
        } else {
            println!("masked-linear training kernels, {isa}, 1 thread; CPU ms per call (min / median), dense-equivalent GFLOP/s of the min");
        }
        println!(
            "{:>4} {:>5} {:>5} {:>5} {:>4} | {:>17} {:>6} | {:>17} {:>6} | {:>17} {:>6}",
            "K", "N", "T", "sp", "prec", "forward", "GF/s", "dX", "GF/s", "dW", "GF/s"
        );
    }
    for &(k, n) in &SHAPES {
        for &t in &tokens {
            let (x, w, dy) = (values(t * k, 1), values(k * n, 2), values(t * n, 3));
            let bias = values(n, 4);
            let (mut y, mut dx, mut dw) = (vec![0f32; t * n], vec![0f32; t * k], vec![0f32; k * n]);
            for &s in &SPARSITIES {
                if only.is_some_and(|(ok, on, os)| (ok, on) != (k, n) || (os - s).abs() > 1e-9) {
                    continue;
                }
                let mask = block_mask(k, n, s);
                let kept = |m: &[f32]| KeptBlocks::from_mask(m, k, n).expect("mask");
                for ml in &kernels {
                    let prec = ml.precision();
                    let fwd = time(secs, wall, || {
                        ml.forward(&x, t, &w, &mask, &kept(&mask), Some(&bias), &mut y, par).expect("forward")
                    });
                    let gin =
                        time(secs, wall, || ml.grad_input(&dy, t, &w, &mask, &kept(&mask), &mut dx, par).expect("dX"));
                    let gw =
                        time(secs, wall, || ml.grad_weight(&x, &dy, t, &mask, &kept(&mask), &mut dw, par).expect("dW"));
                    let flop = 2.0 * (t * k * n) as f64;
                    if json {
                        println!(
                        "{{\"isa\":\"{isa}\",\"precision\":\"{prec}\",\"k\":{k},\"n\":{n},\"t\":{t},\"sparsity\":{s},\"forward_ms\":[{:.4},{:.4}],\"dx_ms\":[{:.4},{:.4}],\"dw_ms\":[{:.4},{:.4}]}}",
                        fwd.0 * 1e3, fwd.1 * 1e3, gin.0 * 1e3, gin.1 * 1e3, gw.0 * 1e3, gw.1 * 1e3
                    );
                    } else {
                        let cell = |(lo, med): (f64, f64)| {
                            format!("{:>8.3} / {:>6.3} {:>6.1}", lo * 1e3, med * 1e3, flop / lo / 1e9)
                        };
                        println!(
                            "{k:>4} {n:>5} {t:>5} {:>4.0}% {prec:>4} | {} | {} | {}",
                            s * 100.0,
                            cell(fwd),
                            cell(gin),
                            cell(gw)
                        );
                    }
                }
            }
        }
    }
}
