//! `MaskedLinear` (forward, input gradient, weight gradient) against f64 dense references on every
//! ISA this CPU has, forced, with the rounding bound of a summation: an f32 sum of `n` products
//! (each rounded once, by an FMA or by a multiply and an add, in any order and grouping) is
//! within `γ_n · Σ|terms|` of the exact sum, `γ_n = n·u / (1 − n·u)`, `u = 2⁻²⁴` (Higham,
//! *Accuracy and Stability of Numerical Algorithms*, §3.1). Every check uses `n` = the number of
//! terms plus one (the bias add) and the f64 sum of `|terms|`, so cancellation cannot hide an
//! error. Besides: the input gradient is bit-identical on every ISA, the forward product on AVX2
//! and AVX-512, and every result is bit-identical for 1, 2 and 3 threads.
//!
//! bf16 products ([`Precision::Bf16`]): against f64 sums of the bf16-rounded operands (the products
//! of bf16 numbers are exact in f32, so only the f32 sums round: the same bound), and the AVX-512
//! BF16 kernels bit-identical to their portable model (the scalar ISA) for 1, 2 and 3 threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::masked_linear::{KeptBlocks, MaskedLinear, Precision};
use sparsec_kernels::{Isa, Parallel, Serial};

pub struct Threads(pub usize);

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

/// `γ_n` for f32.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::powi(2.0, -24);
    nu / (1.0 - nu)
}

/// A deterministic keep decision per (a, b) cell with probability `1 − s`.
fn hash_keep(a: usize, b: usize, s: f64, salt: u64) -> bool {
    let mut h = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ salt;
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h % 10_000) as f64 >= s * 10_000.0
}

/// A 0/1 mask `[K, N]`: `mode` 0 = [4,1] blocks at sparsity `s`, 1 = unstructured, 2 = all
/// ones, 3 = all zeros.
fn mask(k: usize, n: usize, mode: usize, s: f64) -> Vec<f32> {
    let mut m = vec![0f32; k * n];
    for kk in 0..k {
        for j in 0..n {
            let keep = match mode {
                0 => hash_keep(kk, j / 4, s, 1),
                1 => hash_keep(kk, j, s, 3),
                2 => true,
                _ => false,
            };
            m[kk * n + j] = keep as u8 as f32;
        }
    }
    m
}

struct Case {
    t: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    m: Vec<f32>,
    bias: Option<Vec<f32>>,
    dy: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let mut out = Vec::new();
    for case in 0..60 {
        let t = [1, 3, 17, 64, 65, 130][case % 6];
        let k = [1, 5, 8, 33, 64, 130][rng.random_range(0..6)];
        let n = [1, 3, 4, 13, 36, 70][rng.random_range(0..6)];
        let mode = [0, 0, 1, 2, 3][case % 5];
        let s = [0.5, 0.8, 0.9][case % 3];
        let mut v = |len: usize, r: f32| (0..len).map(|_| rng.random_range(-r..r)).collect::<Vec<f32>>();
        let (x, w, dy) = (v(t * k, 2.0), v(k * n, 1.0), v(t * n, 1.0));
        let bias = (case % 2 == 0).then(|| v(n, 1.0));
        out.push(Case { t, k, n, x, w, m: mask(k, n, mode, s), bias, dy });
    }
    out
}

/// Asserts `|got − want| ≤ γ_terms · mag` element by element.
fn assert_within(what: &str, isa: Isa, got: &[f32], want: &[(f64, f64)], terms: usize) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= gamma(terms) * mag,
            "{isa} {what}[{i}] = {g}, want {w} (|Δ| {err:e}, bound {:e})",
            gamma(terms) * mag
        );
    }
}

#[test]
fn kept_blocks_are_the_blocks_with_a_nonzero_mask_entry() {
    // K = 3, N = 6: blocks are columns 0..4 and 4..6.
    #[rustfmt::skip]
    let m = [
        1., 1., 1., 1.,  0., 0.,
        0., 0., 0., 0.,  0., 1.,
        0., 1., 0., 0.,  0., 0.,
    ];
    let kept = KeptBlocks::from_mask(&m, 3, 6).unwrap();
    assert_eq!((kept.blocks(), kept.kept()), (2, 3));
    assert!((kept.density() - 0.5).abs() < 1e-12);
    assert!(KeptBlocks::from_mask(&m, 4, 6).unwrap_err().to_string().contains("[K=4, N=6]"));
}

#[test]
fn forward_is_within_the_summation_bound_of_f64_on_every_isa() {
    let isas = Isa::available();
    eprintln!("ISAs tested: {isas:?}");
    for (ci, c) in cases().iter().enumerate() {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        let mut want = Vec::with_capacity(c.t * c.n);
        for tt in 0..c.t {
            for j in 0..c.n {
                let b = c.bias.as_ref().map_or(0.0, |b| b[j] as f64);
                let (mut dot, mut mag) = (b, b.abs());
                for kk in 0..c.k {
                    let p = c.x[tt * c.k + kk] as f64 * (c.w[kk * c.n + j] * c.m[kk * c.n + j]) as f64;
                    dot += p;
                    mag += p.abs();
                }
                want.push((dot, mag));
            }
        }
        let mut outs = Vec::new();
        for &isa in &isas {
            let ml = MaskedLinear::new(isa).unwrap();
            let mut y = vec![f32::NAN; c.t * c.n];
            ml.forward(&c.x, c.t, &c.w, &c.m, &kept, c.bias.as_deref(), &mut y, &Threads(1 + ci % 3)).unwrap();
            assert_within(&format!("case {ci} y"), isa, &y, &want, c.k + 1);
            outs.push((isa, y));
        }
        let simd: Vec<_> = outs.iter().filter(|(i, _)| *i != Isa::Scalar).collect();
        if let [(_, a), (_, b)] = simd[..] {
            assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "case {ci}: AVX2 and AVX-512 differ");
        }
    }
}

#[test]
fn input_gradient_is_within_the_summation_bound_and_bit_identical_on_every_isa() {
    let isas = Isa::available();
    for (ci, c) in cases().iter().enumerate() {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        let mut want = Vec::with_capacity(c.t * c.k);
        for tt in 0..c.t {
            for kk in 0..c.k {
                let (mut dot, mut mag) = (0f64, 0f64);
                for j in 0..c.n {
                    let p = c.dy[tt * c.n + j] as f64 * (c.w[kk * c.n + j] * c.m[kk * c.n + j]) as f64;
                    dot += p;
                    mag += p.abs();
                }
                want.push((dot, mag));
            }
        }
        let mut first: Option<Vec<f32>> = None;
        for &isa in &isas {
            let ml = MaskedLinear::new(isa).unwrap();
            let mut dx = vec![f32::NAN; c.t * c.k];
            ml.grad_input(&c.dy, c.t, &c.w, &c.m, &kept, &mut dx, &Threads(1 + ci % 3)).unwrap();
            assert_within(&format!("case {ci} dx"), isa, &dx, &want, c.n.div_ceil(4) * 4 + 1);
            match &first {
                None => first = Some(dx),
                Some(f) => {
                    assert!(f.iter().zip(&dx).all(|(p, q)| p.to_bits() == q.to_bits()), "case {ci}: {isa} differs")
                }
            }
        }
    }
}

#[test]
fn weight_gradient_is_within_the_summation_bound_and_zero_off_the_kept_blocks() {
    let isas = Isa::available();
    for (ci, c) in cases().iter().enumerate() {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        let mut want = Vec::with_capacity(c.k * c.n);
        for kk in 0..c.k {
            for j in 0..c.n {
                let (mut dot, mut mag) = (0f64, 0f64);
                for tt in 0..c.t {
                    let p = c.x[tt * c.k + kk] as f64 * c.dy[tt * c.n + j] as f64;
                    dot += p;
                    mag += p.abs();
                }
                let m = c.m[kk * c.n + j] as f64;
                want.push((dot * m, mag * m));
            }
        }
        for &isa in &isas {
            let ml = MaskedLinear::new(isa).unwrap();
            let mut dw = vec![f32::NAN; c.k * c.n];
            ml.grad_weight(&c.x, &c.dy, c.t, &c.m, &kept, &mut dw, &Threads(1 + ci % 3)).unwrap();
            assert_within(&format!("case {ci} dW"), isa, &dw, &want, c.t.div_ceil(64) * 64 + 1);
            for (i, (&g, &m)) in dw.iter().zip(&c.m).enumerate() {
                assert!(m != 0.0 || g == 0.0, "{isa} case {ci}: dW[{i}] = {g} where the mask is 0");
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    for c in cases().iter().filter(|c| c.t >= 64) {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        for isa in Isa::available() {
            let ml = MaskedLinear::new(isa).unwrap();
            let run = |par: &dyn Parallel| {
                let mut y = vec![0f32; c.t * c.n];
                let mut dx = vec![0f32; c.t * c.k];
                let mut dw = vec![0f32; c.k * c.n];
                ml.forward(&c.x, c.t, &c.w, &c.m, &kept, c.bias.as_deref(), &mut y, par).unwrap();
                ml.grad_input(&c.dy, c.t, &c.w, &c.m, &kept, &mut dx, par).unwrap();
                ml.grad_weight(&c.x, &c.dy, c.t, &c.m, &kept, &mut dw, par).unwrap();
                [y, dx, dw].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
            };
            let one = run(&Serial);
            assert!(one == run(&Threads(2)) && one == run(&Threads(3)), "{isa} T={} K={} N={}", c.t, c.k, c.n);
        }
    }
}

#[test]
fn shape_errors_are_reported() {
    let ml = MaskedLinear::new(Isa::Scalar).unwrap();
    let m = vec![1f32; 12];
    let kept = KeptBlocks::from_mask(&m, 4, 3).unwrap();
    let w = vec![1f32; 12];
    let mut y = vec![0f32; 5];
    let e = ml.forward(&[0.0; 8], 2, &w, &m, &kept, None, &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("output have 5 elements"), "{e}");
    let e = ml.grad_input(&[0.0; 6], 2, &w[..8], &m, &kept, &mut [0.0; 8], &Serial).unwrap_err();
    assert!(e.to_string().contains("weights have 8 elements"), "{e}");
    let e = ml.grad_weight(&[0.0; 8], &[0.0; 6], 2, &m, &kept, &mut [0.0; 11], &Serial).unwrap_err();
    assert!(e.to_string().contains("weight gradient has 11 elements"), "{e}");
}

#[test]
fn weight_gradient_over_several_token_and_row_chunks_is_within_the_bound() {
    // 1100 tokens and 300 rows span 3 token chunks (512) and 2 row ranges (256).
    let (t, k, n) = (1100, 300, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut v = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let (x, dy) = (v(t * k), v(t * n));
    let m = mask(k, n, 0, 0.5);
    let kept = KeptBlocks::from_mask(&m, k, n).unwrap();
    let mut want = Vec::with_capacity(k * n);
    for kk in 0..k {
        for j in 0..n {
            let (mut dot, mut mag) = (0f64, 0f64);
            for tt in 0..t {
                let p = x[tt * k + kk] as f64 * dy[tt * n + j] as f64;
                dot += p;
                mag += p.abs();
            }
            let mv = m[kk * n + j] as f64;
            want.push((dot * mv, mag * mv));
        }
    }
    for isa in Isa::available() {
        let ml = MaskedLinear::new(isa).unwrap();
        let mut dw = vec![f32::NAN; k * n];
        ml.grad_weight(&x, &dy, t, &m, &kept, &mut dw, &Threads(2)).unwrap();
        assert_within("chunked dW", isa, &dw, &want, t.div_ceil(64) * 64 + 1);
        let mut one = vec![f32::NAN; k * n];
        ml.grad_weight(&x, &dy, t, &m, &kept, &mut one, &Serial).unwrap();
        assert!(one.iter().zip(&dw).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa}: threads change dW");
    }
}

/// f32 → bf16 → f32, rounding to nearest even (the test values are never subnormal or NaN).
fn bf(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(((b + 0x7fff + ((b >> 16) & 1)) >> 16) << 16)
}

/// The bf16 kernels on this CPU: the portable model always, AVX-512 BF16 where the CPU has it.
fn bf16_kernels() -> Vec<MaskedLinear> {
    let mut out = vec![MaskedLinear::with_precision(Isa::Scalar, Precision::Bf16).unwrap()];
    if Isa::cpu_has_avx512_bf16() {
        out.push(MaskedLinear::with_precision(Isa::Avx512Vnni, Precision::Bf16).unwrap());
    } else {
        eprintln!("SKIPPED: the AVX-512 BF16 path (this CPU lacks AVX-512 BF16); the portable model is tested");
    }
    out
}

/// All three products of a case on bf16 kernels.
fn run_bf16(ml: &MaskedLinear, c: &Case, kept: &KeptBlocks, par: &dyn Parallel) -> [Vec<f32>; 3] {
    let mut y = vec![f32::NAN; c.t * c.n];
    let mut dx = vec![f32::NAN; c.t * c.k];
    let mut dw = vec![f32::NAN; c.k * c.n];
    ml.forward(&c.x, c.t, &c.w, &c.m, kept, c.bias.as_deref(), &mut y, par).unwrap();
    ml.grad_input(&c.dy, c.t, &c.w, &c.m, kept, &mut dx, par).unwrap();
    ml.grad_weight(&c.x, &c.dy, c.t, &c.m, kept, &mut dw, par).unwrap();
    [y, dx, dw]
}

#[test]
fn bf16_products_are_within_the_summation_bound_of_f64_sums_of_the_rounded_operands() {
    for (ci, c) in cases().iter().enumerate() {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        let xb: Vec<f32> = c.x.iter().map(|&v| bf(v)).collect();
        let wb: Vec<f32> = c.w.iter().zip(&c.m).map(|(&w, &m)| bf(w * m)).collect();
        let yb: Vec<f32> = c.dy.iter().map(|&v| bf(v)).collect();
        let dot = |terms: &mut dyn Iterator<Item = f64>, start: f64| {
            terms.fold((start, start.abs()), |(d, m), p| (d + p, m + p.abs()))
        };
        let mut want_y = Vec::new();
        for tt in 0..c.t {
            for j in 0..c.n {
                let b = c.bias.as_ref().map_or(0.0, |b| b[j] as f64);
                want_y.push(dot(&mut (0..c.k).map(|kk| xb[tt * c.k + kk] as f64 * wb[kk * c.n + j] as f64), b));
            }
        }
        let mut want_dx = Vec::new();
        for tt in 0..c.t {
            for kk in 0..c.k {
                want_dx.push(dot(&mut (0..c.n).map(|j| yb[tt * c.n + j] as f64 * wb[kk * c.n + j] as f64), 0.0));
            }
        }
        let mut want_dw = Vec::new();
        for kk in 0..c.k {
            for j in 0..c.n {
                let (d, m) = dot(&mut (0..c.t).map(|tt| xb[tt * c.k + kk] as f64 * yb[tt * c.n + j] as f64), 0.0);
                let mv = c.m[kk * c.n + j] as f64;
                want_dw.push((d * mv, m * mv));
            }
        }
        for ml in bf16_kernels() {
            let [y, dx, dw] = run_bf16(&ml, c, &kept, &Threads(1 + ci % 3));
            let isa = ml.isa();
            assert_within(&format!("case {ci} bf16 y"), isa, &y, &want_y, c.k + 1);
            assert_within(&format!("case {ci} bf16 dx"), isa, &dx, &want_dx, c.n.div_ceil(4) * 4 + 1);
            assert_within(&format!("case {ci} bf16 dW"), isa, &dw, &want_dw, c.t.div_ceil(64) * 64 + 1);
            for (i, (&g, &m)) in dw.iter().zip(&c.m).enumerate() {
                assert!(m != 0.0 || g == 0.0, "{isa} bf16 case {ci}: dW[{i}] = {g} where the mask is 0");
            }
        }
    }
}

#[test]
fn bf16_avx512_kernels_are_bit_identical_to_their_portable_model_for_any_thread_count() {
    if !Isa::cpu_has_avx512_bf16() {
        eprintln!("SKIPPED: this CPU lacks AVX-512 BF16");
        return;
    }
    let model = MaskedLinear::with_precision(Isa::Scalar, Precision::Bf16).unwrap();
    let hw = MaskedLinear::with_precision(Isa::Avx512Vnni, Precision::Bf16).unwrap();
    let mut big = cases();
    // Several token chunks (512) and row ranges (256) of the weight gradient, tiles shared by tasks.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (t, k, n) = (1100, 300, 40);
    let mut v = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    big.push(Case { t, k, n, x: v(t * k), w: v(k * n), m: mask(k, n, 0, 0.5), bias: Some(v(n)), dy: v(t * n) });
    // Values with subnormal bf16 products and sums (flushed by `vdpbf16ps`, and by the model).
    let tiny: Vec<f32> = (0..64 * 8).map(|i| if i % 3 == 0 { 1e-20 } else { -3e-19 }).collect();
    big.push(Case { t: 64, k: 8, n: 8, x: tiny.clone(), w: vec![1e-19; 64], m: vec![1.0; 64], bias: None, dy: tiny });
    for (ci, c) in big.iter().enumerate() {
        let kept = KeptBlocks::from_mask(&c.m, c.k, c.n).unwrap();
        let want = run_bf16(&model, c, &kept, &Serial);
        for threads in 1..=3 {
            let got = run_bf16(&hw, c, &kept, &Threads(threads));
            for (what, (g, w)) in ["y", "dx", "dW"].iter().zip(got.iter().zip(&want)) {
                let bad = g.iter().zip(w).position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(
                    bad.is_none(),
                    "case {ci} (T={} K={} N={}) {what}, {threads} threads: element {bad:?} is {} on AVX-512 BF16, {} in the model",
                    c.t,
                    c.k,
                    c.n,
                    bad.map_or(0.0, |i| g[i]),
                    bad.map_or(0.0, |i| w[i])
                );
            }
        }
    }
}

#[test]
fn bf16_needs_avx512_bf16_or_the_scalar_model() {
    if Isa::Avx2.supported() {
        let e = MaskedLinear::with_precision(Isa::Avx2, Precision::Bf16).unwrap_err().to_string();
        assert!(e.contains("bf16 products need the avx512vnni ISA"), "{e}");
    }
    if Isa::Avx512Vnni.supported() && !Isa::cpu_has_avx512_bf16() {
        let e = MaskedLinear::with_precision(Isa::Avx512Vnni, Precision::Bf16).unwrap_err().to_string();
        assert!(e.contains("this CPU: absent"), "{e}");
    }
    assert_eq!(MaskedLinear::with_precision(Isa::Scalar, Precision::Bf16).unwrap().precision(), Precision::Bf16);
}
