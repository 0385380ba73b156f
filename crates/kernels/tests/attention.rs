//! Fused attention against an f64 reference of the exported graph, on every ISA this CPU runs.
//!
//! The reference computes each score exactly, rounds `scale·q·k + bias` once to f32 (the graph's
//! f32 `Add`, which is what makes an all-`f32::MIN` row uniform), clamps it at `f32::MIN`, then
//! does the softmax and P·V in f64. Error model per output, with `V = max |v|` of the head and
//! `p_j` the reference probabilities:
//! - f32: `|out − ref| ≤ V·(2e-6 + 2·Σ_j p_j·δ_j) + 1e-5·|ref|`, with the per-score error
//!   `δ_j = 2^-23·(scale·Σ_d |q_d·k_jd| + |s_j|)` (one f32 rounding of the dot's magnitude and of
//!   the score; the `|s_j|` term is dropped for biases ≤ -1e30, which f32 absorbs exactly). For
//!   inputs of magnitude ≤ 1 this is ≈ 2e-6 + 1e-5·|ref|; it grows only where f32 itself cannot
//!   do better (|scores| in the thousands, e.g. a row whose keys all carry -10000).
//! - bf16: `V·(2^-7 + 2·Σ_j p_j·(δ_j + 2^-7·scale·Σ_d |q_d·k_jd|)) + 1e-5·|ref|`: twice the
//!   first-order effect of rounding q, k (2^-8 relative on each product), p and v (2^-8·V).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::attention::{bf16_supported, Attention, AttentionDims, AttentionPrecision, AttnError};
use sparsec_kernels::{Isa, Parallel, Serial};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `threads` scoped threads pulling task indices from a shared counter.
struct Threads(usize);

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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mask {
    None,
    /// Random keys of each batch item get the bias; batch item 0 has every key masked when `full`.
    Keys {
        bias: f32,
        full: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Case {
    dims: AttentionDims,
    fused: bool,
    mask: Mask,
    /// Uniform magnitude of q and k, and of v.
    qk_amp: f32,
    v_amp: f32,
}

/// One case's inputs in the layout the kernel takes.
struct Inputs {
    buf_q: Vec<f32>,
    buf_k: Vec<f32>,
    buf_v: Vec<f32>,
    /// Offsets of q, k, v in their buffers (fused: one buffer, offsets 0, HD, 2HD).
    off: [usize; 3],
    stride: usize,
    mask: Option<Vec<f32>>,
    scale: f32,
}

impl Inputs {
    fn new(c: &Case, rng: &mut ChaCha8Rng) -> Inputs {
        let AttentionDims { batch, seq, heads, head_dim } = c.dims;
        let hd = heads * head_dim;
        let tokens = batch * seq;
        let mut fill = |n: usize, amp: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-amp..=amp)).collect() };
        let (q, k, v) = (fill(tokens * hd, c.qk_amp), fill(tokens * hd, c.qk_amp), fill(tokens * hd, c.v_amp));
        let mask = match c.mask {
            Mask::None => None,
            Mask::Keys { bias, full } => {
                Some((0..tokens).map(|t| if (full && t < seq) || rng.random_bool(0.3) { bias } else { 0.0 }).collect())
            }
        };
        let scale = 1.0 / (head_dim as f32).sqrt();
        if c.fused {
            let mut qkv = vec![0f32; tokens * 3 * hd];
            for t in 0..tokens {
                let row = &mut qkv[t * 3 * hd..(t + 1) * 3 * hd];
                row[..hd].copy_from_slice(&q[t * hd..(t + 1) * hd]);
                row[hd..2 * hd].copy_from_slice(&k[t * hd..(t + 1) * hd]);
                row[2 * hd..].copy_from_slice(&v[t * hd..(t + 1) * hd]);
            }
            Inputs {
                buf_q: qkv.clone(),
                buf_k: qkv.clone(),
                buf_v: qkv,
                off: [0, hd, 2 * hd],
                stride: 3 * hd,
                mask,
                scale,
            }
        } else {
            Inputs { buf_q: q, buf_k: k, buf_v: v, off: [0; 3], stride: hd, mask, scale }
        }
    }

    fn q(&self) -> &[f32] {
        &self.buf_q[self.off[0]..]
    }
    fn k(&self) -> &[f32] {
        &self.buf_k[self.off[1]..]
    }
    fn v(&self) -> &[f32] {
        &self.buf_v[self.off[2]..]
    }
    fn at(x: &[f32], stride: usize, seq: usize, d: usize, b: usize, j: usize, h: usize) -> &[f32] {
        let o = (b * seq + j) * stride + h * d;
        &x[o..o + d]
    }

    fn run(&self, att: &Attention, dims: &AttentionDims, par: &dyn Parallel) -> Result<Vec<f32>, AttnError> {
        let mut out = vec![f32::NAN; dims.batch * dims.seq * dims.heads * dims.head_dim];
        att.forward(
            dims.batch,
            dims.seq,
            self.q(),
            self.k(),
            self.v(),
            self.stride,
            self.mask.as_deref(),
            self.scale,
            &mut out,
            par,
        )?;
        Ok(out)
    }
}

/// The f64 reference output and the f32 and bf16 tolerances of every output value.
struct Reference {
    out: Vec<f64>,
    tol_f32: Vec<f64>,
    tol_bf16: Vec<f64>,
}

fn reference(c: &Case, x: &Inputs) -> Reference {
    let AttentionDims { batch, seq, heads, head_dim: d } = c.dims;
    let n = batch * seq * heads * d;
    let (mut out, mut tol_f32, mut tol_bf16) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (q, k, v, st) = (x.q(), x.k(), x.v(), x.stride);
    let scale = x.scale as f64;
    for b in 0..batch {
        for h in 0..heads {
            let vmax = (0..seq)
                .flat_map(|j| Inputs::at(v, st, seq, d, b, j, h).iter())
                .fold(0f64, |m, &y| m.max(y.abs() as f64));
            for i in 0..seq {
                let qi = Inputs::at(q, st, seq, d, b, i, h);
                let mut s = vec![0f64; seq];
                let mut mag = vec![0f64; seq];
                let mut absorbed = vec![false; seq];
                for j in 0..seq {
                    let kj = Inputs::at(k, st, seq, d, b, j, h);
                    let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    mag[j] = scale * qi.iter().zip(kj).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>();
                    let bias = x.mask.as_ref().map_or(0.0, |m| m[b * seq + j]);
                    absorbed[j] = bias <= -1e30;
                    s[j] = ((scale * dot + bias as f64) as f32).max(f32::MIN) as f64;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|e| e / sum).collect();
                let (mut err32, mut err16) = (0.0, 0.0);
                for j in 0..seq {
                    let delta = 2f64.powi(-23) * (mag[j] + if absorbed[j] { 0.0 } else { s[j].abs() });
                    err32 += p[j] * delta;
                    err16 += p[j] * (delta + 2f64.powi(-7) * mag[j]);
                }
                let o = (b * seq + i) * heads * d + h * d;
                for dd in 0..d {
                    let r: f64 = (0..seq).map(|j| p[j] * Inputs::at(v, st, seq, d, b, j, h)[dd] as f64).sum();
                    out[o + dd] = r;
                    tol_f32[o + dd] = vmax * (2e-6 + 2.0 * err32) + 1e-5 * r.abs();
                    tol_bf16[o + dd] = vmax * (2f64.powi(-7) + 2.0 * err16) + 1e-5 * r.abs();
                }
            }
        }
    }
    Reference { out, tol_f32, tol_bf16 }
}

/// The largest `|got − ref| / tol` (must be ≤ 1) and the largest `|got − ref|`.
fn worst(got: &[f32], r: &Reference, tol: &[f64], what: &str) -> (f64, f64) {
    let (mut ratio, mut abs) = (0f64, 0f64);
    for (i, (&g, &want)) in got.iter().zip(&r.out).enumerate() {
        assert!(g.is_finite(), "{what}: output {i} is {g} (reference {want})");
        let e = (g as f64 - want).abs();
        abs = abs.max(e);
        ratio = ratio.max(e / tol[i]);
        assert!(e <= tol[i], "{what}: output {i} = {g}, reference {want}, |Δ| {e:.3e} > tolerance {:.3e}", tol[i]);
    }
    (ratio, abs)
}

fn isas() -> Vec<Isa> {
    let isas = Isa::available();
    println!("ISAs run: {}", isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "));
    isas
}

/// Caps a case at ~2·10^7 flops so the debug-built suite stays quick: heads, then batch, shrink.
fn capped(mut dims: AttentionDims) -> AttentionDims {
    while dims.flops() > 2e7 && dims.heads > 1 {
        dims.heads = dims.heads.div_ceil(2);
    }
    while dims.flops() > 2e7 && dims.batch > 1 {
        dims.batch -= 1;
    }
    dims
}

fn random_cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
    let mut cases = vec![];
    for seq in [1, 7, 64, 127, 384] {
        for head_dim in [8, 32, 64, 20] {
            for variant in 0..2 {
                let dims = capped(AttentionDims {
                    batch: rng.random_range(1..=3),
                    seq,
                    heads: rng.random_range(1..=12),
                    head_dim,
                });
                let mask = match rng.random_range(0..4) {
                    0 => Mask::None,
                    1 => Mask::Keys { bias: f32::MIN, full: variant == 1 },
                    2 => Mask::Keys { bias: -10000.0, full: variant == 1 },
                    _ => Mask::Keys { bias: f32::NEG_INFINITY, full: variant == 1 },
                };
                cases.push(Case { dims, fused: variant == 0, mask, qk_amp: 1.0, v_amp: 1.0 });
            }
        }
    }
    cases
}

#[test]
fn f32_matches_f64_reference_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let isas = isas();
    let mut worst_ratio = vec![0f64; isas.len()];
    let mut worst_abs = vec![0f64; isas.len()];
    for c in random_cases(&mut rng) {
        let x = Inputs::new(&c, &mut rng);
        let r = reference(&c, &x);
        for (n, &isa) in isas.iter().enumerate() {
            let att = Attention::new(c.dims.heads, c.dims.head_dim, AttentionPrecision::F32, isa).unwrap();
            let got = x.run(&att, &c.dims, &Serial).unwrap();
            let (ratio, abs) = worst(&got, &r, &r.tol_f32, &format!("{isa} {c:?}"));
            worst_ratio[n] = worst_ratio[n].max(ratio);
            if !matches!(c.mask, Mask::Keys { bias: -10000.0, full: true }) {
                worst_abs[n] = worst_abs[n].max(abs);
            }
        }
    }
    for ((isa, w), a) in isas.iter().zip(worst_ratio).zip(worst_abs) {
        println!("{isa}: worst |Δ|/tolerance {w:.3}; max |Δ| {a:.2e} (rows fully masked with -10000 aside)");
    }
}

#[test]
fn large_magnitude_inputs_stay_within_the_f32_error_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let isas = isas();
    for (qk_amp, v_amp) in [(10.0, 1.0), (4.0, 1000.0), (50.0, 100.0)] {
        for (seq, head_dim) in [(127, 32), (64, 64)] {
            let dims = AttentionDims { batch: 2, seq, heads: 3, head_dim };
            let c = Case { dims, fused: true, mask: Mask::Keys { bias: f32::MIN, full: false }, qk_amp, v_amp };
            let x = Inputs::new(&c, &mut rng);
            let r = reference(&c, &x);
            for &isa in &isas {
                let att = Attention::new(dims.heads, dims.head_dim, AttentionPrecision::F32, isa).unwrap();
                let (ratio, abs) =
                    worst(&x.run(&att, &dims, &Serial).unwrap(), &r, &r.tol_f32, &format!("{isa} {c:?}"));
                println!("{isa} q,k ±{qk_amp} v ±{v_amp} seq {seq} D {head_dim}: max |Δ| {abs:.3e}, /tol {ratio:.3}");
            }
        }
    }
}

#[test]
fn fully_masked_rows_are_the_uniform_average_of_v() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let dims = AttentionDims { batch: 2, seq: 65, heads: 2, head_dim: 32 };
    for bias in [f32::MIN, f32::NEG_INFINITY] {
        let c = Case { dims, fused: false, mask: Mask::Keys { bias, full: true }, qk_amp: 3.0, v_amp: 1.0 };
        let x = Inputs::new(&c, &mut rng);
        let hd = dims.heads * dims.head_dim;
        for isa in isas() {
            let att = Attention::new(dims.heads, dims.head_dim, AttentionPrecision::F32, isa).unwrap();
            let got = x.run(&att, &dims, &Serial).unwrap();
            for i in 0..dims.seq {
                for e in 0..hd {
                    let mean = (0..dims.seq).map(|j| x.v()[j * x.stride + e] as f64).sum::<f64>() / dims.seq as f64;
                    let g = got[i * hd + e] as f64;
                    assert!((g - mean).abs() <= 2e-6, "{isa} bias {bias}: row {i} col {e}: {g} vs mean of V {mean}");
                }
            }
        }
    }
}

#[test]
fn fused_and_separate_layouts_and_thread_counts_give_identical_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let dims = AttentionDims { batch: 2, seq: 100, heads: 5, head_dim: 32 };
    let c = Case { dims, fused: true, mask: Mask::Keys { bias: f32::MIN, full: false }, qk_amp: 1.0, v_amp: 1.0 };
    let fused = Inputs::new(&c, &mut rng);
    let hd = dims.heads * dims.head_dim;
    let split = |off: usize| -> Vec<f32> {
        (0..dims.batch * dims.seq).flat_map(|t| fused.buf_q[t * 3 * hd + off..t * 3 * hd + off + hd].to_vec()).collect()
    };
    let separate = Inputs {
        buf_q: split(0),
        buf_k: split(hd),
        buf_v: split(2 * hd),
        off: [0; 3],
        stride: hd,
        mask: fused.mask.clone(),
        scale: fused.scale,
    };
    for isa in isas() {
        let att = Attention::new(dims.heads, dims.head_dim, AttentionPrecision::F32, isa).unwrap();
        let a = fused.run(&att, &dims, &Serial).unwrap();
        let b = separate.run(&att, &dims, &Serial).unwrap();
        let t = fused.run(&att, &dims, &Threads(3)).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa}: fused vs separate layout differ");
        assert!(a.iter().zip(&t).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa}: 1 vs 3 threads differ");
    }
}

fn bf16_cases() -> Vec<Case> {
    let mut cases = vec![];
    for (seq, head_dim, heads) in [(1, 8, 3), (7, 32, 12), (64, 64, 2), (127, 32, 4), (384, 32, 1), (33, 7, 2)] {
        let mask = Mask::Keys { bias: f32::MIN, full: seq > 1 };
        let dims = AttentionDims { batch: 2, seq, heads, head_dim };
        cases.push(Case { dims, fused: seq % 2 == 1, mask, qk_amp: 1.0, v_amp: 1.0 });
        cases.push(Case { dims, fused: false, mask: Mask::None, qk_amp: 4.0, v_amp: 10.0 });
    }
    cases
}

fn check_bf16(att: &Attention, what: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (mut ratio, mut abs_unit) = (0f64, 0f64);
    for c in bf16_cases() {
        let att = if att.is_emulated() {
            Attention::bf16_emulated(c.dims.heads, c.dims.head_dim).unwrap()
        } else {
            Attention::new(c.dims.heads, c.dims.head_dim, AttentionPrecision::Bf16, att.isa()).unwrap()
        };
        let x = Inputs::new(&c, &mut rng);
        let r = reference(&c, &x);
        let (q, a) = worst(&x.run(&att, &c.dims, &Serial).unwrap(), &r, &r.tol_bf16, &format!("{what} {c:?}"));
        ratio = ratio.max(q);
        if c.qk_amp == 1.0 {
            abs_unit = abs_unit.max(a);
        }
    }
    println!("{what}: max |Δ| {abs_unit:.3e} on unit inputs, worst |Δ|/bf16 tolerance {ratio:.3}");
}

#[test]
fn bf16_error_is_bounded_where_the_cpu_has_avx512bf16() {
    if !bf16_supported() {
        println!("skipped: no avx512bf16");
        return;
    }
    let att = Attention::new(1, 1, AttentionPrecision::Bf16, Isa::Avx512Vnni).unwrap();
    check_bf16(&att, "bf16 avx512");
}

#[test]
fn bf16_layout_emulated_in_portable_code_has_bounded_error() {
    check_bf16(&Attention::bf16_emulated(1, 1).unwrap(), "bf16 emulated");
}

#[test]
fn bf16_is_an_error_where_it_cannot_run() {
    for isa in Isa::available() {
        let r = Attention::new(12, 32, AttentionPrecision::Bf16, isa);
        if isa == Isa::Avx512Vnni && bf16_supported() {
            assert!(r.is_ok());
        } else {
            let e = r.unwrap_err();
            assert_eq!(e, AttnError::Bf16Unavailable { isa });
            assert!(e.to_string().contains("avx512bf16"), "{e}");
        }
    }
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        assert_eq!(Attention::new(12, 32, AttentionPrecision::F32, isa).unwrap_err(), AttnError::UnsupportedIsa(isa));
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_argument() {
    let att = Attention::new(2, 4, AttentionPrecision::F32, Isa::Scalar).unwrap();
    let x = vec![0f32; 3 * 5 * 8];
    let mut out = vec![0f32; 3 * 5 * 8];
    let err = |r: Result<(), AttnError>| match r {
        Err(AttnError::BadInput(m)) => m,
        other => panic!("expected BadInput, got {other:?}"),
    };
    assert!(err(att.forward(3, 5, &x, &x, &x, 7, None, 1.0, &mut out, &Serial)).contains("row_stride 7"));
    assert!(err(att.forward(3, 5, &x, &x, &x, 8, None, 1.0, &mut out[1..], &Serial)).contains("out has 119"));
    assert!(
        err(att.forward(3, 5, &x, &x, &x, 8, Some(&[0.0; 14]), 1.0, &mut out, &Serial)).contains("mask_bias has 14")
    );
    assert!(err(att.forward(3, 5, &x[1..], &x, &x, 8, None, 1.0, &mut out, &Serial)).starts_with("q has 119"));
    assert!(err(att.forward(3, 5, &x, &x, &x[..100], 8, None, 1.0, &mut out, &Serial)).starts_with("v has 100"));
    assert!(err(att.forward(3, 5, &x, &x, &x, 8, None, f32::NAN, &mut out, &Serial)).contains("scale NaN"));
    assert!(err(att.forward(usize::MAX, 2, &x, &x, &x, 8, None, 1.0, &mut out, &Serial)).contains("overflows"));
    assert_eq!(
        Attention::new(0, 32, AttentionPrecision::F32, Isa::Scalar).unwrap_err(),
        AttnError::BadDims { heads: 0, head_dim: 32 }
    );
    att.forward(0, 5, &[], &[], &[], 8, Some(&[]), 1.0, &mut [], &Serial).unwrap();
    // The last token row needs only heads × head_dim values, not a whole stride.
    let fused = vec![0.5f32; 2 * 24];
    let mut out = vec![0f32; 2 * 8];
    att.forward(1, 2, &fused, &fused[8..], &fused[16..], 24, None, 1.0, &mut out, &Serial).unwrap();
    assert!(out.iter().all(|&o| o == 0.5));
}

#[test]
fn kernel_is_send_and_sync_for_concurrent_runs() {
    fn shared<T: Send + Sync + Copy>(_: &T) {}
    shared(&Attention::new(12, 32, AttentionPrecision::F32, Isa::Scalar).unwrap());
    let att = Attention::new(2, 8, AttentionPrecision::F32, Isa::detect()).unwrap();
    let x: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut out = vec![0f32; 3 * 16 * 16];
                    att.forward(3, 16, &x, &x, &x, 16, None, 0.3, &mut out, &Serial).unwrap();
                    out
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(results.iter().all(|r| r == &results[0]), "concurrent calls on one kernel disagree");
}
