//! `LinearF32` against an f64 dense reference on every ISA this CPU has (forced):
//! `|y − y_ref| ≤ 1e-5·(Σ_k |x·w| + |bias| + |residual|) + 1e-6` (relative to the magnitude of
//! the summed terms, so cancellation cannot hide an error).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::linear_f32::{Epilogue, LinearF32, Pattern};
use sparsec_kernels::{Isa, Parallel, Serial};

struct Threads(usize);

impl Parallel for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.0 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                });
            }
        });
    }
}

/// `W [K, N]`: `mode` 0 = [4,1] blocks, 1 = [1,4] blocks, 2 = unstructured, 3 = dense, 4 = all zero.
fn weights(rng: &mut ChaCha8Rng, k: usize, n: usize, mode: usize, s: f64) -> Vec<f32> {
    let mut w = vec![0f32; k * n];
    for kk in 0..k {
        for j in 0..n {
            let keep = match mode {
                0 => hash_keep(kk, j / 4, s, 1),
                1 => hash_keep(kk / 4, j, s, 2),
                2 => hash_keep(kk, j, s, 3),
                3 => true,
                _ => false,
            };
            if keep {
                w[kk * n + j] = rng.random_range(-1.0f32..1.0);
            }
        }
    }
    w
}

/// A deterministic keep decision per (a, b) cell with probability `1 − s`.
fn hash_keep(a: usize, b: usize, s: f64, salt: u64) -> bool {
    let mut h = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ salt;
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h % 10_000) as f64 >= s * 10_000.0
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn forward_is_within_1e5_of_f64_on_every_isa() {
    let isas = Isa::available();
    eprintln!("ISAs tested: {isas:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let pools: [&dyn Parallel; 3] = [&Serial, &Threads(2), &Threads(3)];
    let mut worst = 0f64;
    let mut cases = 0;
    for case in 0..90 {
        let t = [1, 3, 15, 17, 63, 65, 130][case % 7];
        let k = [1, 5, 7, 33, 64, 130, 384][rng.random_range(0..7)];
        let n = [1, 3, 4, 13, 36, 70][rng.random_range(0..6)];
        let mode = case % 5;
        let s = [0.5, 0.8, 0.9][case % 3];
        let w = weights(&mut rng, k, n, mode, s);
        let bias: Option<Vec<f32>> = (case % 3 != 0).then(|| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let residual: Option<Vec<f32>> =
            (case % 4 < 2).then(|| (0..t * n).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        let epi = if case % 2 == 1 { Epilogue::Gelu } else { Epilogue::None };
        for &isa in &isas {
            let lin = LinearF32::new(&w, k, n, bias.as_deref(), isa).unwrap();
            let mut y = vec![f32::NAN; t * n];
            lin.forward(&x, t, epi, residual.as_deref(), &mut y, pools[case % 3]).unwrap();
            for tt in 0..t {
                for j in 0..n {
                    let (mut dot, mut mag) = (0f64, 0f64);
                    for kk in 0..k {
                        let p = x[tt * k + kk] as f64 * w[kk * n + j] as f64;
                        dot += p;
                        mag += p.abs();
                    }
                    let b = bias.as_ref().map_or(0.0, |b| b[j] as f64);
                    let r = residual.as_ref().map_or(0.0, |r| r[tt * n + j] as f64);
                    let pre = dot + b;
                    let want = if epi == Epilogue::Gelu { gelu_f64(pre) } else { pre } + r;
                    let got = y[tt * n + j] as f64;
                    let scale = mag + b.abs() + r.abs();
                    let err = (got - want).abs();
                    worst = worst.max(err / (scale + 1e-30));
                    assert!(
                        err <= 1e-5 * scale + 1e-6,
                        "{isa} {epi:?} T={t} K={k} N={n} mode {mode} y[{tt},{j}] = {got}, want {want}"
                    );
                }
            }
            cases += 1;
        }
    }
    eprintln!("{cases} cases; worst |Δ|/Σ|terms| = {worst:.2e}");
}

#[test]
fn fp32_packing_detects_patterns() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (mode, want) in
        [(0, Pattern::Block4x1), (1, Pattern::Block1x4), (2, Pattern::Unstructured), (3, Pattern::Dense)]
    {
        let w = weights(&mut rng, 256, 128, mode, 0.8);
        let lin = LinearF32::new(&w, 256, 128, None, Isa::Scalar).unwrap();
        assert_eq!(lin.stats().pattern, want, "mode {mode}");
        assert_eq!(lin.stats().nonzeros, w.iter().filter(|&&v| v != 0.0).count());
    }
}

#[test]
fn fp32_shape_errors_are_reported() {
    let w = vec![1f32; 12];
    assert!(LinearF32::new(&w, 5, 3, None, Isa::Scalar).unwrap_err().to_string().contains("[K=5, N=3]"));
    let lin = LinearF32::new(&w, 4, 3, None, Isa::Scalar).unwrap();
    let mut y = vec![0f32; 5];
    let e = lin.forward(&[0.0; 8], 2, Epilogue::None, None, &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("output have 5 elements"), "{e}");
}
