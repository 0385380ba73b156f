//! The f32 steps of one query row (`attention_i8`'s module doc): i32 scores → `Cast`, `Mul`,
//! `QuantizeLinear` (the graph's exact division), then the dequantized score over the divisor as
//! one multiply, `Add` mask → softmax → `QuantizeLinear` as one multiply by `1/Σ / scale`.
//!
//! Written once as portable element-wise code with a fixed order for every reduction (16 partial
//! sums, then a fixed tree), and inlined into each ISA's task (`attention_i8.rs`), which the
//! compiler vectorises with that ISA's target features. Element-wise IEEE operations round the
//! same in any register width and nothing is contracted into FMAs, so every ISA gives the same
//! bits.

use super::{small_int_to_u8, QuantAttentionParams};

/// Partial sums (and maxima) a row is reduced with.
const LANES: usize = 16;

/// `eˣ` in plain f32 multiplies and adds (Cephes `expf`: range reduction by `n·ln 2` in two parts,
/// degree-6 polynomial, `2ⁿ` from the exponent bits), within about 1 ulp for
/// `x ∈ [−87.3, 88.7]`; inputs below are clamped (giving ~1e-38 instead of smaller).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.722_83);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_359_4;
    let r = r - n * -2.121_944_4e-4;
    let z = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * z + r + 1.0;
    // 2ⁿ from its biased exponent `n + 127 ∈ [1, 255]`, read out of the mantissa of `n + 127 + 2²³`.
    y * f32::from_bits(u32::from(small_int_to_u8(n + 127.0)) << 23)
}

/// `Σ x` as this module sums: `LANES` partial sums over `x[l], x[l + 16], …`, then pairwise.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    tree(acc)
}

/// The lanes' partial sums added pairwise: `acc[l] += acc[l + 8]`, then `+ acc[l + 4]`, … .
#[inline(always)]
fn tree(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// The constants of [`row`], derived once per kernel from its [`QuantAttentionParams`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowConsts {
    /// `scores_mul`, and the scores' scale and zero point (as f32).
    pub mul: f32,
    pub scale: f32,
    pub zero: f32,
    /// `scores.scale / divisor`, rounded once: the dequantized score over the divisor is
    /// `(level − zero)·step`.
    pub step: f32,
    /// The probabilities' scale and zero point (as f32).
    pub probs_scale: f32,
    pub probs_zero: f32,
}

impl RowConsts {
    pub fn new(p: &QuantAttentionParams) -> RowConsts {
        RowConsts {
            mul: p.scores_mul,
            scale: p.scores.scale,
            zero: f32::from(p.scores.zero_point),
            step: p.scores.scale / p.divisor,
            probs_scale: p.probs.scale,
            probs_zero: f32::from(p.probs.zero_point),
        }
    }
}

/// One row: `out[j] = QL_probs(softmax_j((QL(scores[j] · mul) − zero)·step + mask[j]))`, with
/// the softmax as `e_j · (1/Σe / probs_scale)` where `e_j = exp(x_j − max)`. Against the graph,
/// the scores' `DequantizeLinear` and `Div` are one multiply by `step` and the probabilities'
/// `1/Σ` and `QuantizeLinear` division one multiply: one rounding each instead of two, which moves
/// an `x` by at most an ulp (an f32 division per element costs more than the rest of the row).
#[inline(always)]
pub fn row(c: &RowConsts, scores: &[i32], mask: Option<&[f32]>, row: &mut [f32], out: &mut [u8]) {
    let (mul, sa, za, step) = (c.mul, c.scale, c.zero, c.step);
    for (x, &a) in row.iter_mut().zip(scores) {
        let q = ((a as f32 * mul / sa).round_ties_even() + za).clamp(0.0, 255.0);
        *x = (q - za) * step;
    }
    if let Some(m) = mask {
        row.iter_mut().zip(m).for_each(|(x, &b)| *x += b);
    }
    let max = max(row);
    row.iter_mut().for_each(|x| *x = exp(*x - max));
    let r = 1.0 / sum(row) / c.probs_scale;
    let zp = c.probs_zero;
    for (o, &x) in out.iter_mut().zip(row.iter()) {
        *o = small_int_to_u8(((x * r).round_ties_even() + zp).clamp(0.0, 255.0));
    }
}

/// The largest of `x` (`−∞` for none), by a compare-and-select per lane that the compiler keeps
/// in one register (`f32::max`'s NaN rule costs a compare and a blend per step; the scores are
/// never NaN).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    for (m, &v) in mx.iter_mut().zip(tail) {
        *m = if v > *m { v } else { *m };
    }
    mx.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}
