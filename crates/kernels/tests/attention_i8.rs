//! Quantized attention (`attention_i8`) on every ISA this CPU runs, against a naive evaluation of
//! the exported graph written here: `QuantizeLinear`, `MatMulInteger` in i32 by definition, the
//! f32 chain in the graph's order, and a softmax with the same formula as the kernel's (max
//! subtracted, the kernel's `exp`, its summation order, times `1/Σ`). The integer products are
//! exact and the f32 steps are the same operations in the same order, so the comparison is bit for
//! bit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::attention_i8::{matmul_u8, softmax_exp, softmax_sum, Quant, QuantAttention, QuantAttentionParams};
use sparsec_kernels::{Isa, Parallel, Serial};

fn isas() -> Vec<Isa> {
    Isa::available().into_iter().map(|i| Isa::forced(i).expect("available ISA admitted")).collect()
}

fn naive_matmul(a: &[u8], za: u8, b: &[u8], zb: u8, m: usize, k: usize, n: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|t| (a[i * k + t] as i32 - za as i32) * (b[t * n + j] as i32 - zb as i32)).sum();
        }
    }
    c
}

#[test]
fn integer_products_are_exact_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    let shapes =
        [(1, 1, 1), (5, 32, 7), (33, 32, 384), (17, 64, 129), (3, 384, 32), (9, 383, 64), (4, 3, 17), (2, 5, 16)];
    for isa in isas() {
        for &(m, k, n) in &shapes {
            for (za, zb) in [(0u8, 128u8), (128, 128), (0, 0), (125, 141), (255, 3), (7, 255)] {
                // Extremes included: all 0 and all 255 rows maximise the products' magnitudes.
                let fill = |rng: &mut ChaCha8Rng, len: usize| -> Vec<u8> {
                    match rng.random_range(0..4) {
                        0 => vec![255; len],
                        1 => vec![0; len],
                        _ => (0..len).map(|_| rng.random()).collect(),
                    }
                };
                let (a, b) = (fill(&mut rng, m * k), fill(&mut rng, k * n));
                let got = matmul_u8(isa, &a, za, &b, zb, m, k, n).unwrap();
                assert_eq!(
                    got,
                    naive_matmul(&a, za, &b, zb, m, k, n),
                    "{isa}: [{m}, {k}] × [{k}, {n}] za {za} zb {zb}"
                );
            }
        }
    }
}

/// The graph of a SparseML export's attention, naively: `out [B, S, H·D]`.
#[allow(clippy::too_many_arguments)]
fn reference(
    p: &QuantAttentionParams,
    heads: usize,
    d: usize,
    batch: usize,
    s: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    fused: bool,
) -> Vec<f32> {
    let hd = heads * d;
    // The fused-scale softmax (`softmax::row_levels`): the same levels (the exact integer sums
    // when the scores are not requantized), `exp((l − l_max)·step)` over kept keys (mask 0), one
    // multiplier into the probabilities' levels.
    let (step, span) = match p.scores {
        Some(sq) => (f64::from(sq.scale) / f64::from(p.divisor), 255.0),
        None => (f64::from(p.scores_mul) / f64::from(p.divisor), 2.0 * 255.0 * 255.0 * d as f64),
    };
    let dropped = -((span * step.abs()) as f32 + 128.0);
    let step = step as f32;
    let mut out = vec![0f32; batch * s * hd];
    for b in 0..batch {
        for h in 0..heads {
            let head = |x: &[f32], qz: Quant| -> Vec<u8> {
                (0..s * d).map(|i| qz.quantize(x[(b * s + i / d) * hd + h * d + i % d])).collect()
            };
            let (qa, ka, va) = (head(q, p.q), head(k, p.k), head(v, p.v));
            let kt: Vec<u8> = (0..d * s).map(|i| ka[(i % s) * d + i / s]).collect();
            let a = naive_matmul(&qa, p.q.zero_point, &kt, p.k.zero_point, s, d, s);
            let mut probs = vec![0u8; s * s];
            let kept = |j: usize| mask.is_none_or(|m| m[b * s + j] == 0.0);
            let all_fusable = mask.is_none_or(|m| m[b * s..(b + 1) * s].iter().all(|&x| x == 0.0 || x <= dropped));
            for i in 0..s {
                if fused && all_fusable && (0..s).any(kept) {
                    let lv: Vec<f32> = (0..s)
                        .map(|j| match p.scores {
                            Some(sq) => sq.quantize(a[i * s + j] as f32 * p.scores_mul) as f32,
                            None => a[i * s + j] as f32,
                        })
                        .collect();
                    let lmax = (0..s).filter(|&j| kept(j)).map(|j| lv[j]).fold(f32::NEG_INFINITY, f32::max);
                    let w: Vec<f32> =
                        (0..s).map(|j| if kept(j) { softmax_exp((lv[j] - lmax) * step) } else { 0.0 }).collect();
                    let m = (1.0 / softmax_sum(&w)) * (1.0 / p.probs.scale);
                    for j in 0..s {
                        let level = ((w[j] * m).round_ties_even() + f32::from(p.probs.zero_point)).clamp(0.0, 255.0);
                        probs[i * s + j] = level as u8;
                    }
                    continue;
                }
                let mut row: Vec<f32> = (0..s)
                    .map(|j| {
                        let x = match p.scores {
                            Some(sq) => sq.dequantize(sq.quantize(a[i * s + j] as f32 * p.scores_mul)) / p.divisor,
                            None => (a[i * s + j] as f32 * p.scores_mul) / p.divisor,
                        };
                        mask.map_or(x, |m| x + m[b * s + j])
                    })
                    .collect();
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for x in row.iter_mut() {
                    *x = softmax_exp(*x - max);
                }
                let sum = softmax_sum(&row);
                for (j, x) in row.iter().enumerate() {
                    probs[i * s + j] = p.probs.quantize(x * (1.0 / sum));
                }
            }
            let c = naive_matmul(&probs, p.probs.zero_point, &va, p.v.zero_point, s, s, d);
            for i in 0..s {
                for dd in 0..d {
                    let y = match p.context {
                        Some(cq) => cq.dequantize(cq.quantize(c[i * d + dd] as f32 * p.context_mul)),
                        None => c[i * d + dd] as f32 * p.context_mul,
                    };
                    out[(b * s + i) * hd + h * d + dd] = y;
                }
            }
        }
    }
    out
}

/// Layer 0 of minilm-sml-90block4-int8, with the zero points varied per case.
fn params(zq: u8, zk: u8, zv: u8, zp: u8) -> QuantAttentionParams {
    QuantAttentionParams {
        q: Quant { scale: 0.08605653, zero_point: zq },
        k: Quant { scale: 0.10539387, zero_point: zk },
        v: Quant { scale: 0.0145753, zero_point: zv },
        scores_mul: 0.00906983,
        scores: Some(Quant { scale: 2.869952, zero_point: 141 }),
        divisor: 5.656854,
        probs: Quant { scale: 1.0 / 255.0, zero_point: zp },
        context_mul: 5.7158057e-05,
        context: Some(Quant { scale: 0.00570363, zero_point: 109 }),
    }
}

/// sparsec's own QAT form: no requantization of the scores or the context. `scores_mul` is
/// smaller than `s_q·s_k` here so that the random projections give a softmax that is neither
/// flat nor one-hot, and so that −10000 biases drop keys (the span of the sums, `2·255²·D`
/// steps of `scores_mul / divisor`, stays under 10000 − 128).
fn own_params(zq: u8, zk: u8, zv: u8, zp: u8) -> QuantAttentionParams {
    QuantAttentionParams { scores_mul: 0.0005, scores: None, context: None, ..params(zq, zk, zv, zp) }
}

/// Scoped threads pulling task indices from a shared counter.
struct Threads(usize);

impl Parallel for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i)
        };
        std::thread::scope(|sc| {
            for _ in 1..self.0 {
                sc.spawn(work);
            }
            work();
        });
    }
}

/// (batch, seq, heads, head_dim, zero points q k v p, masked)
const CASES: [(usize, usize, usize, usize, [u8; 4], bool); 7] = [
    (1, 1, 1, 32, [125, 128, 128, 0], true),
    (2, 37, 3, 32, [125, 128, 128, 0], true),
    (1, 97, 2, 64, [0, 0, 0, 0], false),
    (2, 50, 2, 32, [128, 7, 200, 3], true),
    (1, 130, 1, 64, [255, 128, 1, 0], true),
    (1, 384, 2, 32, [125, 128, 128, 0], true),
    (1, 21, 2, 7, [9, 128, 128, 0], true),
];

/// Runs every case on every ISA (serial and 3 threads) with the mask `mask(batch, seq)` and
/// checks the output bit for bit against `reference(.., fused)`; returns the outputs of the last
/// ISA with the graph's (unfused) reference, per case.
fn check_cases(
    mask: impl Fn(usize, usize) -> Option<Vec<f32>>,
    fused: bool,
    params: fn(u8, u8, u8, u8) -> QuantAttentionParams,
) -> Vec<(Vec<f32>, Vec<f32>, f32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut outs = vec![];
    for isa in isas() {
        outs.clear();
        for &(batch, seq, heads, d, [zq, zk, zv, zp], masked) in &CASES {
            let p = params(zq, zk, zv, zp);
            let hd = heads * d;
            let n = batch * seq * hd;
            // Projections of the size SparseML's carry (|x| up to ~10), so that scores saturate.
            let mut fill = || -> Vec<f32> { (0..n).map(|_| rng.random_range(-10.0f32..10.0)).collect() };
            let (q, k, v) = (fill(), fill(), fill());
            let mask = if masked { mask(batch, seq) } else { None };
            let want = reference(&p, heads, d, batch, seq, &q, &k, &v, mask.as_deref(), fused);
            let att = QuantAttention::new(heads, d, p, isa).unwrap();
            let mut got = vec![f32::NAN; n];
            for par in [&Serial as &dyn Parallel, &Threads(3)] {
                got.fill(f32::NAN);
                att.forward(batch, seq, &q, &k, &v, hd, mask.as_deref(), &mut got, par).unwrap();
                let first = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(first.is_none(), "{isa}: B {batch} S {seq} H {heads} D {d}: first difference at {first:?}");
            }
            assert!(want.iter().any(|&x| x != want[0]), "degenerate case B {batch} S {seq} H {heads} D {d}");
            let graph = reference(&p, heads, d, batch, seq, &q, &k, &v, mask.as_deref(), false);
            // The unit of the fused row's difference from the graph: a context step, or (without
            // the context's requantization) one probability level's largest effect, 255·context_mul.
            let unit = p.context.map_or(255.0 * p.context_mul, |c| c.scale);
            outs.push((got, graph, unit));
        }
    }
    outs
}

/// Masks with a bias that is neither 0 nor low enough to drop its key (here −0.5) take the exact
/// row: the graph's operations in its order, bit for bit on every ISA.
fn mixed_mask(batch: usize, seq: usize) -> Option<Vec<f32>> {
    Some(
        (0..batch * seq)
            .map(|t| match t % seq {
                j if j > seq / 2 && t >= seq => -10000.0,
                j if j % 5 == 1 => -0.5,
                _ => 0.0,
            })
            .collect(),
    )
}

fn padding_mask(batch: usize, seq: usize) -> Option<Vec<f32>> {
    Some((0..batch * seq).map(|t| if t % seq > seq / 2 && t >= seq { -10000.0 } else { 0.0 }).collect())
}

#[test]
fn exact_rows_match_the_graph_bit_for_bit_on_every_isa() {
    check_cases(mixed_mask, false, params);
}

/// Over `check_cases`' outputs against the graph: (outputs that differ, all outputs, the largest
/// difference in each case's unit).
fn tally(outs: &[(Vec<f32>, Vec<f32>, f32)]) -> (usize, usize, f32) {
    let (mut differ, mut total, mut worst) = (0usize, 0usize, 0f32);
    for (got, graph, unit) in outs {
        for (a, b) in got.iter().zip(graph) {
            total += 1;
            if a != b {
                differ += 1;
                worst = worst.max((a - b).abs() / unit);
            }
        }
    }
    (differ, total, worst)
}

/// The same without the scores' and the context's requantization (sparsec's own QAT form).
#[test]
fn unrequantized_exact_rows_match_the_graph_bit_for_bit_on_every_isa() {
    check_cases(mixed_mask, false, own_params);
}

/// sparsec's own QAT form through the fused row: bit for bit against its reference on every ISA,
/// and against the graph's operations within two probability levels' effect on an output
/// (`2·255·context_mul`). With no requantization after the product, every probability a level
/// off shows in the output, so more outputs differ than with it, all by a fraction of that unit.
#[test]
fn unrequantized_fused_rows_match_their_reference_on_every_isa_and_the_graph_closely() {
    let (differ, total, worst) = tally(&check_cases(padding_mask, true, own_params));
    eprintln!("unrequantized fused vs graph: {differ} of {total} outputs differ, by at most {worst:.3} units");
    assert!(worst <= 2.0, "{worst} units of 255·context_mul");
}

/// Without a mask, or with 0 / −10000 biases (BERT's padding mask), the fused row runs: bit for
/// bit the same on every ISA as its reference, and against the graph's operations every output
/// within 4 steps of the context's quantization (a probability one level off moves the context's
/// integer sum by at most `|v − z_v| ≤ 255`, i.e. `255·context_mul`, about 1.5e-2 here, 2.6
/// context steps), with under 1% of the outputs differing at all.
#[test]
fn fused_rows_match_their_reference_on_every_isa_and_the_graph_within_four_steps() {
    let (differ, total, worst) = tally(&check_cases(padding_mask, true, params));
    eprintln!("fused vs graph: {differ} of {total} outputs differ, by at most {worst:.2} context steps");
    assert!(worst <= 4.0 + 1e-3, "{worst} context steps");
    assert!(differ * 100 < total, "{differ} of {total} outputs differ");
}

/// A batch item whose every key is masked with −∞ (the graph's softmax is NaN there, which torch's
/// exports guard to 0) gets probabilities 0 on every ISA: its outputs are the context of zero
/// probabilities, while the other item's match the reference bit for bit.
#[test]
fn rows_masked_entirely_with_minus_infinity_get_zero_probabilities() {
    let (batch, seq, heads, d) = (2, 40, 2, 32);
    let hd = heads * d;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = batch * seq * hd;
    let mut fill = || -> Vec<f32> { (0..n).map(|_| rng.random_range(-10.0f32..10.0)).collect() };
    let (q, k, v) = (fill(), fill(), fill());
    let mut mask = vec![0f32; batch * seq];
    mask[seq..].fill(f32::NEG_INFINITY);
    for p in [params(125, 128, 128, 0), own_params(125, 128, 128, 3)] {
        let zero_context = p.context.map_or(0.0, |c| c.dequantize(c.quantize(0.0)));
        let want = reference(&p, heads, d, 1, seq, &q[..seq * hd], &k[..seq * hd], &v[..seq * hd], None, true);
        for isa in isas() {
            let att = QuantAttention::new(heads, d, p, isa).unwrap();
            let mut got = vec![f32::NAN; n];
            att.forward(batch, seq, &q, &k, &v, hd, Some(&mask), &mut got, &Serial).unwrap();
            assert!(got[seq * hd..].iter().all(|&y| y.to_bits() == zero_context.to_bits()), "{isa}: masked item");
            let same = got[..seq * hd].iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{isa}: the unmasked item");
        }
    }
}

#[test]
fn rejects_bad_shapes_and_constants() {
    let p = params(125, 128, 128, 0);
    let att = QuantAttention::new(2, 4, p, Isa::Scalar).unwrap();
    let x = vec![0f32; 2 * 3 * 8];
    let mut out = vec![0f32; 2 * 3 * 8];
    assert!(att.forward(2, 3, &x, &x, &x, 8, None, &mut out[1..], &Serial).is_err());
    assert!(att.forward(2, 3, &x, &x, &x[1..], 8, None, &mut out, &Serial).is_err());
    assert!(att.forward(2, 3, &x, &x, &x, 8, Some(&[0.0; 5]), &mut out, &Serial).is_err());
    assert!(att.forward(2, 3, &x, &x, &x, 7, None, &mut out, &Serial).is_err());
    assert!(QuantAttention::new(2, 4, QuantAttentionParams { divisor: 0.0, ..p }, Isa::Scalar).is_err());
    let bad_scale = QuantAttentionParams { probs: Quant { scale: f32::NAN, zero_point: 0 }, ..p };
    assert!(QuantAttention::new(2, 4, bad_scale, Isa::Scalar).is_err());
    let bad_scores = QuantAttentionParams { scores: Some(Quant { scale: 0.0, zero_point: 0 }), ..p };
    assert!(QuantAttention::new(2, 4, bad_scores, Isa::Scalar).is_err());
    // Unrequantized scores must stay exact in f32.
    assert!(QuantAttention::new(1, 258, own_params(0, 0, 0, 0), Isa::Scalar).is_ok());
    assert!(QuantAttention::new(1, 259, own_params(0, 0, 0, 0), Isa::Scalar).is_err());
    assert!(QuantAttention::new(0, 4, p, Isa::Scalar).is_err());
}

/// The softmax's `exp` is within 2 ulp of the correctly rounded value on the range softmax uses
/// (`x − max ≤ 0`) and a little above.
#[test]
fn softmax_exp_is_within_two_ulp() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x < 10.0 {
        let want = (x as f64).exp();
        let ulp = f64::from(f32::from_bits((want as f32).to_bits() + 1)) - f64::from(want as f32);
        worst = worst.max((f64::from(softmax_exp(x)) - want).abs() / ulp);
        x += 0.000_97;
    }
    assert!(worst <= 2.0, "worst error {worst} ulp");
    assert_eq!(softmax_exp(0.0), 1.0);
}
