//! `LinearI8` against a naive dense reference on every ISA this CPU has (forced): i32 accumulators
//! bit-exact, the f32 `forward` within 1e-5 of an f64 evaluation of the same formula.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::linear_i8::{dynamic_quant_params, packed, ActQuant, Epilogue, LinearI8, Pattern, Requant};
use sparsec_kernels::{Isa, Parallel, Serial};

/// `n` OS threads per `run` (scoped), to exercise the multi-task plans.
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

fn isas() -> Vec<Isa> {
    let isas = Isa::available();
    eprintln!(
        "ISAs tested: {:?} (not available here: {:?})",
        isas,
        Isa::ALL.iter().filter(|i| !isas.contains(i)).collect::<Vec<_>>()
    );
    isas
}

#[derive(Clone, Copy, Debug)]
enum Gen {
    B4x1(f64),
    B1x4(f64),
    Unstructured(f64),
    Dense,
    AllZero,
    /// Unstructured plus whole zero input rows and zero 4-channel blocks.
    EmptyRowsAndBlocks(f64),
}

fn nonzero_i8(rng: &mut ChaCha8Rng) -> i8 {
    loop {
        let v = rng.random::<i8>();
        if v != 0 {
            return v;
        }
    }
}

/// `W [K, N]` with the requested zero structure; kept weights span the whole i8 range (-128 included).
fn weights(rng: &mut ChaCha8Rng, k: usize, n: usize, g: Gen) -> Vec<i8> {
    let mut w = vec![0i8; k * n];
    match g {
        Gen::B4x1(s) => {
            for kk in 0..k {
                for b in (0..n).step_by(4) {
                    if !rng.random_bool(s) {
                        for j in b..(b + 4).min(n) {
                            w[kk * n + j] = nonzero_i8(rng);
                        }
                    }
                }
            }
        }
        Gen::B1x4(s) => {
            for j in 0..n {
                for a in (0..k).step_by(4) {
                    if !rng.random_bool(s) {
                        for kk in a..(a + 4).min(k) {
                            w[kk * n + j] = nonzero_i8(rng);
                        }
                    }
                }
            }
        }
        Gen::Unstructured(s) | Gen::EmptyRowsAndBlocks(s) => {
            for v in &mut w {
                if !rng.random_bool(s) {
                    *v = nonzero_i8(rng);
                }
            }
            if let Gen::EmptyRowsAndBlocks(_) = g {
                for kk in (0..k).step_by(3) {
                    w[kk * n..(kk + 1) * n].fill(0);
                }
                for b in (0..n).step_by(8) {
                    for kk in 0..k {
                        for j in b..(b + 4).min(n) {
                            w[kk * n + j] = 0;
                        }
                    }
                }
            }
        }
        Gen::Dense => w.iter_mut().for_each(|v| *v = nonzero_i8(rng)),
        Gen::AllZero => {}
    }
    w
}

fn reference_i32(xq: &[u8], w: &[i8], t: usize, k: usize, n: usize) -> Vec<i32> {
    let mut acc = vec![0i32; t * n];
    for tt in 0..t {
        for j in 0..n {
            let mut s = 0i32;
            for kk in 0..k {
                s += xq[tt * k + kk] as i32 * w[kk * n + j] as i32;
            }
            acc[tt * n + j] = s;
        }
    }
    acc
}

const GENS: [Gen; 12] = [
    Gen::B4x1(0.5),
    Gen::B4x1(0.8),
    Gen::B4x1(0.95),
    Gen::B1x4(0.5),
    Gen::B1x4(0.8),
    Gen::Unstructured(0.3),
    Gen::Unstructured(0.7),
    Gen::Unstructured(0.9),
    Gen::Dense,
    Gen::AllZero,
    Gen::EmptyRowsAndBlocks(0.5),
    Gen::B4x1(0.0),
];

#[test]
fn accumulators_are_bit_exact_on_every_isa() {
    let isas = isas();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let tokens = [1, 3, 16, 17, 63, 64, 65, 130, 383];
    let ks = [1, 2, 5, 7, 33, 64, 130];
    let ns = [1, 3, 4, 6, 13, 36, 70];
    let pools: [&dyn Parallel; 3] = [&Serial, &Threads(2), &Threads(3)];
    let mut cases = 0;
    for case in 0..160 {
        let t = tokens[case % tokens.len()];
        let k = ks[rng.random_range(0..ks.len())];
        let n = ns[rng.random_range(0..ns.len())];
        let g = GENS[case % GENS.len()];
        let w = weights(&mut rng, k, n, g);
        let mut xq: Vec<u8> = (0..t * k).map(|_| rng.random()).collect();
        if case % 5 == 0 {
            xq.iter_mut().step_by(2).for_each(|v| *v = 255);
        }
        let want = reference_i32(&xq, &w, t, k, n);
        for &isa in &isas {
            let lin = LinearI8::new(&w, k, n, &[1.0], None, isa).unwrap();
            let par = pools[case % pools.len()];
            let mut got = vec![i32::MIN; t * n];
            lin.matmul_u8_i32(&xq, t, &mut got, par).unwrap();
            assert_eq!(got, want, "{isa} T={t} K={k} N={n} {g:?} stats {:?}", lin.stats());
            cases += 1;
        }
    }
    eprintln!("{cases} (shape, pattern, ISA) cases bit-exact");
}

#[test]
fn large_layers_are_bit_exact_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &isa in &isas() {
        for (t, k, n, g) in [(65, 384, 1152, Gen::B4x1(0.8)), (130, 1536, 96, Gen::Unstructured(0.7))] {
            let w = weights(&mut rng, k, n, g);
            let xq: Vec<u8> = (0..t * k).map(|_| rng.random()).collect();
            let lin = LinearI8::new(&w, k, n, &[1.0], None, isa).unwrap();
            let mut got = vec![0i32; t * n];
            lin.matmul_u8_i32(&xq, t, &mut got, &Threads(2)).unwrap();
            assert_eq!(got, reference_i32(&xq, &w, t, k, n), "{isa} T={t} K={k} N={n} {g:?}");
        }
    }
}

/// `[1, 4]` layers (SparseML's `block4`): on AVX-512 VNNI, at 80–90% on MiniLM's widths, they run on
/// the quad kernel (one quad per channel per group), which must store under half the union's
/// weights (its condition) and give the exact sums
/// every other ISA gives; its forward pass (epilogue, bias, GELU, residual) is bit-identical to
/// AVX2's, which shares the epilogue and runs the union layout.
#[test]
fn block1x4_layers_run_on_the_quad_kernel_bit_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let isas = isas();
    for (t, k, n, s) in
        [(1, 64, 4, 0.5), (63, 384, 384, 0.9), (130, 384, 1536, 0.8), (65, 1536, 37, 0.9), (3, 8, 6, 0.0)]
    {
        let w = weights(&mut rng, k, n, Gen::B1x4(s));
        let xq: Vec<u8> = (0..t * k).map(|_| rng.random()).collect();
        let want = reference_i32(&xq, &w, t, k, n);
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let res: Vec<f32> = (0..t * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let scales: Vec<f32> = (0..n).map(|_| rng.random_range(0.001f32..0.01)).collect();
        let union_stored = LinearI8::new(&w, k, n, &scales, Some(&bias), Isa::Scalar).unwrap().stats().stored;
        let act = ActQuant::Static { scale: 0.02, zero_point: 131 };
        let mut forwards = vec![];
        for &isa in &isas {
            let lin = LinearI8::new(&w, k, n, &scales, Some(&bias), isa).unwrap();
            if isa == Isa::Avx512Vnni && s >= 0.8 && k >= 384 {
                let stored = lin.stats().stored;
                assert!(2 * stored < union_stored, "K={k} N={n} {s}: quads store {stored}, the union {union_stored}");
            }
            let mut got = vec![i32::MIN; t * n];
            lin.matmul_u8_i32(&xq, t, &mut got, &Threads(2)).unwrap();
            assert_eq!(got, want, "{isa} T={t} K={k} N={n} [1,4] {s}");
            let mut y = vec![f32::NAN; t * n];
            lin.forward(&x, t, act, Epilogue::Gelu, Some(&res), &mut y, &Threads(3)).unwrap();
            forwards.push((isa, y));
        }
        // The forward (quantization, exact product, epilogue with GELU and residual) gives the same
        // bits on every ISA, the portable code included.
        let (a, ya) = &forwards[0];
        for (b, yb) in &forwards[1..] {
            let same = ya.iter().zip(yb).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "T={t} K={k} N={n} [1,4] {s}: {a} and {b} forwards differ");
        }
    }
}

fn quantize_ref(v: f32, s: f32, zp: u8) -> u8 {
    let r = (v / s).round_ties_even() + zp as f32;
    r.clamp(0.0, 255.0) as u8
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn forward_matches_an_f64_evaluation_of_the_formula() {
    let isas = isas();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut worst = 0f64;
    for case in 0..48 {
        let t = [1, 3, 63, 65, 100][case % 5];
        let k = [7, 33, 64, 130][rng.random_range(0..4)];
        let n = [3, 13, 36][rng.random_range(0..3)];
        let g = GENS[case % GENS.len()];
        let w = weights(&mut rng, k, n, g);
        let per_channel = case % 2 == 0;
        let w_scale: Vec<f32> =
            (0..if per_channel { n } else { 1 }).map(|_| rng.random_range(0.001f32..0.05)).collect();
        let bias: Option<Vec<f32>> = (case % 3 != 0).then(|| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect());
        let shift = rng.random_range(-1.0f32..1.0);
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-3.0f32..3.0) + shift).collect();
        let residual: Option<Vec<f32>> =
            (case % 4 < 2).then(|| (0..t * n).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        let act = if case % 2 == 0 { ActQuant::Dynamic } else { ActQuant::Static { scale: 0.021, zero_point: 131 } };
        let epi = if case % 3 == 1 { Epilogue::Gelu } else { Epilogue::None };

        let (sx, zp) = match act {
            ActQuant::Static { scale, zero_point } => (scale, zero_point),
            ActQuant::Dynamic => {
                let mn = x.iter().fold(0f32, |a, &b| a.min(b));
                let mx = x.iter().fold(0f32, |a, &b| a.max(b));
                let s = (mx - mn) / 255.0;
                (s, (0.0 - mn / s).clamp(0.0, 255.0).round_ties_even() as u8)
            }
        };
        let xq: Vec<u8> = x.iter().map(|&v| quantize_ref(v, sx, zp)).collect();
        let acc = reference_i32(&xq, &w, t, k, n);
        let sw = |j: usize| w_scale[if per_channel { j } else { 0 }] as f64;
        for &isa in &isas {
            let lin = LinearI8::new(&w, k, n, &w_scale, bias.as_deref(), isa).unwrap();
            let mut y = vec![f32::NAN; t * n];
            lin.forward(&x, t, act, epi, residual.as_deref(), &mut y, &Threads(2)).unwrap();
            for tt in 0..t {
                for j in 0..n {
                    let colsum: i64 = (0..k).map(|kk| w[kk * n + j] as i64).sum();
                    let lin_part = sx as f64 * sw(j) * (acc[tt * n + j] as i64 - zp as i64 * colsum) as f64;
                    let b = bias.as_ref().map_or(0.0, |b| b[j] as f64);
                    let pre = lin_part + b;
                    let r = residual.as_ref().map_or(0.0, |r| r[tt * n + j] as f64);
                    let want = if epi == Epilogue::Gelu { gelu_f64(pre) } else { pre } + r;
                    let got = y[tt * n + j] as f64;
                    let mag = lin_part.abs() + b.abs() + r.abs();
                    let err = (got - want).abs();
                    worst = worst.max(err / (mag + 1.0));
                    assert!(
                        err <= 1e-5 * mag + 1e-6,
                        "{isa} {act:?} {epi:?} T={t} K={k} N={n} {g:?} y[{tt},{j}] = {got}, want {want}"
                    );
                }
            }
        }
    }
    eprintln!("worst |Δ|/(|terms| + 1) = {worst:.2e}");
}

#[test]
fn dynamic_quantization_follows_onnx() {
    assert_eq!(dynamic_quant_params(&[-1.0, 2.0]), (3.0 / 255.0, 85));
    assert_eq!(dynamic_quant_params(&[0.5, 2.0, 1.0]), (2.0 / 255.0, 0));
    assert_eq!(dynamic_quant_params(&[-4.0, -0.5]), (4.0 / 255.0, 255));
    assert_eq!(dynamic_quant_params(&[0.0; 9]), (1.0, 0));
    let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0 - 0.5).collect();
    let (s, zp) = dynamic_quant_params(&x);
    let mn = x.iter().fold(0f32, |a, &b| a.min(b));
    let mx = x.iter().fold(0f32, |a, &b| a.max(b));
    assert_eq!(s, (mx - mn) / 255.0);
    assert_eq!(zp, (-mn / s).round_ties_even() as u8);
}

#[test]
fn packing_detects_the_pattern_and_pads_only_the_union() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (k, n) = (384, 384);
    for (g, want) in [
        (Gen::B4x1(0.8), Pattern::Block4x1),
        (Gen::B1x4(0.8), Pattern::Block1x4),
        (Gen::Unstructured(0.8), Pattern::Unstructured),
        (Gen::Dense, Pattern::Dense),
    ] {
        let w = weights(&mut rng, k, n, g);
        let lin = LinearI8::new(&w, k, n, &[1.0], None, Isa::Scalar).unwrap();
        let st = lin.stats();
        assert_eq!(st.pattern, want, "{g:?}");
        assert_eq!(st.nonzeros, w.iter().filter(|&&v| v != 0).count());
        let union_groups: usize = (0..n / 4)
            .map(|b| (0..k).filter(|&kk| (0..4).any(|c| w[kk * n + b * 4 + c] != 0)).count().div_ceil(4))
            .sum();
        let stored = if union_groups as f64 > 0.85 * (n / 4 * k / 4) as f64 { n * k } else { union_groups * 16 };
        assert_eq!(st.stored, stored, "{g:?}");
        assert_eq!(st.stored_density(), stored as f64 / (k * n) as f64);
        if let Gen::B4x1(_) = g {
            assert!(st.stored < st.nonzeros + n * 4 * 3, "[4,1] pads at most 3 indices per block");
        }
    }
}

#[test]
fn shape_errors_are_reported_not_panicked() {
    let w = vec![1i8; 12];
    assert!(LinearI8::new(&w, 5, 3, &[1.0], None, Isa::Scalar).unwrap_err().to_string().contains("[K=5, N=3]"));
    assert!(LinearI8::new(&w, 4, 3, &[1.0, 2.0], None, Isa::Scalar).unwrap_err().to_string().contains("weight scale"));
    assert!(LinearI8::new(&w, 4, 3, &[1.0], Some(&[0.0; 2]), Isa::Scalar).unwrap_err().to_string().contains("bias"));
    let lin = LinearI8::new(&w, 4, 3, &[1.0], None, Isa::Scalar).unwrap();
    let mut y = vec![0f32; 6];
    let e = lin.forward(&[0.0; 7], 2, ActQuant::Dynamic, Epilogue::None, None, &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("activations have 7 elements"), "{e}");
    let e = lin.forward(&[0.0; 8], 2, ActQuant::Dynamic, Epilogue::None, Some(&[0.0; 5]), &mut y, &Serial).unwrap_err();
    assert!(e.to_string().contains("residual"), "{e}");
    let bad = ActQuant::Static { scale: 0.0, zero_point: 0 };
    assert!(lin.forward(&[0.0; 8], 2, bad, Epilogue::None, None, &mut y, &Serial).is_err());
    let mut acc = vec![0i32; 5];
    assert!(lin.matmul_u8_i32(&[0; 8], 2, &mut acc, &Serial).unwrap_err().to_string().contains("output"));
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        assert!(LinearI8::new(&w, 4, 3, &[1.0], None, isa).is_err(), "{isa} is not on this CPU");
    }
}

#[test]
fn linear_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<LinearI8>();
}

/// A layer loaded from the stored form ([`packed`]) computes bit for bit what the layer built from
/// the dense `W` computes (accumulators and f32 outputs), on every ISA, for every pattern (padded
/// `[1,4]`/unstructured and the dense fallback included); the stored form decodes back to `W`.
#[test]
fn packed_weights_load_to_the_same_layer_on_every_isa() {
    let isas = isas();
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    let ks = [1, 5, 8, 9, 33, 130];
    let ns = [1, 3, 4, 6, 13, 70];
    let mut cases = 0;
    for case in 0..72 {
        let (k, n, t) = (ks[case % ks.len()], ns[(case / ks.len()) % ns.len()], 1 + case % 37);
        let g = GENS[case % GENS.len()];
        let w = weights(&mut rng, k, n, g);
        let p = packed::encode(&w, k, n).unwrap();
        assert_eq!(packed::decode_dense(&p, k, n).unwrap(), w, "K={k} N={n} {g:?}");
        let scale: Vec<f32> = (0..n).map(|_| rng.random_range(0.001..0.1)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-4.0..4.0)).collect();
        let xq: Vec<u8> = (0..t * k).map(|_| rng.random()).collect();
        for &isa in &isas {
            let dense = LinearI8::new(&w, k, n, &scale, Some(&bias), isa).unwrap();
            let loaded = LinearI8::from_packed(&p, k, n, &scale, Some(&bias), isa).unwrap();
            assert_eq!(loaded.stats(), dense.stats(), "{isa} K={k} N={n} {g:?}");
            let (mut a, mut b) = (vec![0i32; t * n], vec![1i32; t * n]);
            dense.matmul_u8_i32(&xq, t, &mut a, &Threads(2)).unwrap();
            loaded.matmul_u8_i32(&xq, t, &mut b, &Threads(2)).unwrap();
            assert_eq!(a, b, "{isa} K={k} N={n} {g:?}");
            let (mut ya, mut yb) = (vec![0f32; t * n], vec![1f32; t * n]);
            dense.forward(&x, t, ActQuant::Dynamic, Epilogue::Gelu, None, &mut ya, &Serial).unwrap();
            loaded.forward(&x, t, ActQuant::Dynamic, Epilogue::Gelu, None, &mut yb, &Serial).unwrap();
            assert_eq!(
                ya.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                yb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            cases += 1;
        }
    }
    eprintln!("{cases} (shape, pattern, ISA) packed cases identical");
}

/// The stored form of an 80% `[4,1]` MiniLM-sized layer is about 1/4.5 of the dense int8 bytes.
#[test]
fn packed_4x1_weights_store_the_kept_weights_and_a_bit_per_block_index() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (k, n) = (384, 1536);
    let w = weights(&mut rng, k, n, Gen::B4x1(0.8));
    let p = packed::encode(&w, k, n).unwrap();
    let nz = w.iter().filter(|&&v| v != 0).count();
    let mask = packed::mask_len(k, n);
    assert_eq!(mask, n / 4 * k / 8);
    assert!(p.len() >= mask + nz && p.len() <= mask + nz + n / 4 * 3 * 4, "{} bytes for {nz} non-zeros", p.len());
    assert!((p.len() as f64) < 0.25 * (k * n) as f64, "{} bytes", p.len());
}

/// Corrupt stored forms are errors that say what is wrong, never a panic or a wrong layer.
#[test]
fn corrupt_packed_weights_are_reported() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (k, n) = (13, 10);
    let w = weights(&mut rng, k, n, Gen::B4x1(0.5));
    let p = packed::encode(&w, k, n).unwrap();
    let load =
        |p: &[i8], k, n| LinearI8::from_packed(p, k, n, &[1.0], None, Isa::Scalar).map(|_| ()).unwrap_err().to_string();
    let e = load(&p[..p.len() - 1], k, n);
    assert!(e.contains("groups, which need"), "{e}");
    let mut longer = p.clone();
    longer.push(0);
    assert!(load(&longer, k, n).contains("groups, which need"));
    assert!(load(&p[..3], k, n).contains("fewer than its [13, 10] block mask"), "{}", load(&p[..3], k, n));
    let mut bad_index = p.clone();
    bad_index[1] |= 1 << 7; // block 0, input index 15 >= K = 13
    let e = load(&bad_index, k, n);
    assert!(e.contains("sets input index 15, K is 13"), "{e}");
    // The last byte is channel 11 of block 2, which does not exist (N = 10): padding.
    let mut bad_pad = p.clone();
    *bad_pad.last_mut().unwrap() = 7;
    let e = load(&bad_pad, k, n);
    assert!(e.contains("non-zero padding weight in channel block 2"), "{e}");
    assert!(load(&p, 0, n).contains("empty"));
}

/// With [`Requant`] every output is `clamp(round_half_even(acc·(s_x·s_w)/s_y), lo, hi)·s_y + bias`
/// bit for bit (ONNX `QLinearMatMul` then `DequantizeLinear` then the bias `Add`, in f32), on
/// every ISA, for u8 and i8 outputs, saturating outputs included.
#[test]
fn requantized_outputs_follow_qlinearmatmul_on_every_isa() {
    let isas = isas();
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    for (case, &(k, n, t)) in [(33, 13, 17), (64, 36, 40), (130, 70, 5)].iter().enumerate() {
        let w = weights(&mut rng, k, n, GENS[case * 3]);
        let scale: Vec<f32> = (0..n).map(|_| rng.random_range(0.001..0.05)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-3.0..3.0)).collect();
        let (sx, zx) = (0.025f32, 131u8);
        for (ys, yzp, signed) in [(0.05f32, 128, false), (0.2, 0, false), (0.01, -3, true)] {
            let r = Requant::new(ys, yzp, signed).unwrap();
            let xq: Vec<u8> = x.iter().map(|&v| quantize_ref(v, sx, zx)).collect();
            let acc = reference_i32(&xq, &w, t, k, n);
            let colsum: Vec<i32> = (0..n).map(|j| (0..k).map(|kk| w[kk * n + j] as i32).sum()).collect();
            let want: Vec<u32> = (0..t * n)
                .map(|i| {
                    let j = i % n;
                    let m = sx * scale[j] / ys;
                    let v = ((acc[i] - zx as i32 * colsum[j]) as f32 * m).round_ties_even().clamp(r.lo, r.hi);
                    (v * ys + bias[j]).to_bits()
                })
                .collect();
            for &isa in &isas {
                let lin = LinearI8::new(&w, k, n, &scale, Some(&bias), isa).unwrap().with_requant(r);
                let mut y = vec![0f32; t * n];
                let act = ActQuant::Static { scale: sx, zero_point: zx };
                lin.forward(&x, t, act, Epilogue::None, None, &mut y, &Threads(2)).unwrap();
                let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{isa} K={k} N={n} y_scale={ys} zp={yzp} signed={signed}");
            }
        }
    }
    assert!(Requant::new(0.0, 0, false).is_err());
    assert!(Requant::new(1.0, 200, true).is_err());
}

/// SparseML's int8 linear (`MatMulInteger → Add(int32 bias) → Cast → Mul(r)`, then optionally
/// `QuantizeLinear → DequantizeLinear`): with an integer bias and [`Requant::after_scale`] every
/// output is `f32(acc − zp_x·colsum + ib)·r`, and requantized `clamp(round_half_even(that / s_y),
/// lo, hi)·s_y`, bit for bit on every ISA (`r = s_x·s_w` in f32, one scale per layer or per
/// channel).
#[test]
fn integer_bias_and_quantize_after_scale_follow_matmul_integer_chains_on_every_isa() {
    let isas = isas();
    let mut rng = ChaCha8Rng::seed_from_u64(78);
    for (case, &(k, n, t)) in [(33, 13, 17), (64, 36, 70), (384, 68, 5)].iter().enumerate() {
        let w = weights(&mut rng, k, n, [Gen::B1x4(0.8), Gen::Unstructured(0.7), Gen::B4x1(0.8)][case]);
        let scale: Vec<f32> =
            if case == 1 { vec![0.0123] } else { (0..n).map(|_| rng.random_range(0.001..0.05)).collect() };
        let ib: Vec<i32> = (0..n).map(|_| rng.random_range(-40_000..40_000)).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-3.0..3.0)).collect();
        let (sx, zx) = (0.025f32, 94u8);
        let xq: Vec<u8> = x.iter().map(|&v| quantize_ref(v, sx, zx)).collect();
        let acc = reference_i32(&xq, &w, t, k, n);
        let colsum: Vec<i32> = (0..n).map(|j| (0..k).map(|kk| w[kk * n + j] as i32).sum()).collect();
        let rescaled = |i: usize| {
            let j = i % n;
            (acc[i] - zx as i32 * colsum[j] + ib[j]) as f32 * (sx * scale[j % scale.len()])
        };
        for requant in [None, Some((0.05f32, 104, false)), Some((0.3, 0, false)), Some((0.01, -3, true))] {
            let r = requant.map(|(ys, yzp, signed)| Requant::new(ys, yzp, signed).unwrap().after_scale());
            let want: Vec<u32> = (0..t * n)
                .map(|i| match r {
                    None => rescaled(i).to_bits(),
                    Some(r) => {
                        let q = (rescaled(i) / r.scale).round_ties_even().clamp(r.lo, r.hi) as i32;
                        (q as f32 * r.scale).to_bits()
                    }
                })
                .collect();
            for &isa in &isas {
                let mut lin = LinearI8::new(&w, k, n, &scale, None, isa).unwrap().with_int_bias(&ib).unwrap();
                if let Some(r) = r {
                    lin = lin.with_requant(r);
                }
                let mut y = vec![0f32; t * n];
                let act = ActQuant::Static { scale: sx, zero_point: zx };
                lin.forward(&x, t, act, Epilogue::None, None, &mut y, &Threads(2)).unwrap();
                let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{isa} K={k} N={n} requant={requant:?}");
            }
        }
    }
    let lin = LinearI8::new(&[1i8; 12], 3, 4, &[1.0], None, Isa::Scalar).unwrap();
    assert!(lin.with_int_bias(&[1, 2, 3]).unwrap_err().to_string().contains("expected N = 4"));
}

/// `[1, 4]` layers whose channels keep very different numbers of quads (0 to all of them, as in
/// SparseML's `block4` exports, where some channels keep twice the average): on AVX-512 VNNI they
/// run on per-channel quad lists (no channel padded to another's length), storing exactly the
/// non-zero quads; accumulators and outputs equal the reference and the other ISAs bit for bit,
/// and the stored form loads to the same layer.
#[test]
fn ragged_quad_lists_are_exact_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(91);
    for (k, n, t) in [(64, 13, 70), (384, 36, 130), (1536, 8, 65)] {
        let quads = k / 4;
        let mut w = vec![0i8; k * n];
        let mut kept = 0;
        for j in 0..n {
            // Channel j keeps a share from 0 up to about a third of its quads, by its index.
            let keep = match j % 5 {
                0 => 0,
                1 => quads / 3,
                _ => 1 + (j * 7) % (quads / 6).max(1),
            };
            for q in 0..quads {
                if rng.random_range(0..quads) < keep {
                    kept += 1;
                    for i in 0..4 {
                        w[(4 * q + i) * n + j] = rng.random_range(-127i8..=127).max(-127) | 1;
                    }
                }
            }
        }
        let xq: Vec<u8> = (0..t * k).map(|_| rng.random()).collect();
        let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let want = reference_i32(&xq, &w, t, k, n);
        let scales: Vec<f32> = (0..n).map(|_| rng.random_range(0.001f32..0.01)).collect();
        let p = packed::encode(&w, k, n).unwrap();
        let mut outs = vec![];
        for isa in isas() {
            let lin = LinearI8::new(&w, k, n, &scales, None, isa).unwrap();
            if isa == Isa::Avx512Vnni {
                assert_eq!(lin.stats().stored, 4 * kept, "K={k} N={n}: the quad lists store exactly the kept quads");
            }
            let loaded = LinearI8::from_packed(&p, k, n, &scales, None, isa).unwrap();
            assert_eq!(loaded.stats(), lin.stats(), "{isa} K={k} N={n}");
            for layer in [&lin, &loaded] {
                let mut got = vec![i32::MIN; t * n];
                layer.matmul_u8_i32(&xq, t, &mut got, &Threads(2)).unwrap();
                assert_eq!(got, want, "{isa} K={k} N={n}");
            }
            let mut y = vec![f32::NAN; t * n];
            let act = ActQuant::Static { scale: 0.02, zero_point: 131 };
            lin.forward(&x, t, act, Epilogue::Gelu, None, &mut y, &Threads(3)).unwrap();
            outs.push((isa, y));
        }
        for (isa, y) in &outs[1..] {
            assert!(y.iter().zip(&outs[0].1).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa} K={k} N={n}");
        }
    }
}
