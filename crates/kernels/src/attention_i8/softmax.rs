//! The f32 steps of one query row (`attention_i8`'s module doc): i32 scores → `Cast`, `Mul`,
//! `QuantizeLinear`, `DequantizeLinear`, `Div`, `Add` mask → softmax → `QuantizeLinear`.
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
    for c in x.chunks(LANES) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// One row: `out[j] = QL_probs(softmax_j(DQ(QL(scores[j] · mul)) / divisor + mask[j]))`.
#[inline(always)]
pub(super) fn row(p: &QuantAttentionParams, scores: &[i32], mask: Option<&[f32]>, row: &mut [f32], out: &mut [u8]) {
    let (m1, sa, za, div) = (p.scores_mul, p.scores.scale, f32::from(p.scores.zero_point), p.divisor);
    for (x, &a) in row.iter_mut().zip(scores) {
        let q = ((a as f32 * m1 / sa).round_ties_even() + za).clamp(0.0, 255.0);
        *x = (q - za) * sa / div;
    }
    if let Some(m) = mask {
        row.iter_mut().zip(m).for_each(|(x, &b)| *x += b);
    }
    let mut mx = [f32::NEG_INFINITY; LANES];
    for c in row.chunks(LANES) {
        for (a, &v) in mx.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let max = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|x| *x = exp(*x - max));
    let r = 1.0 / sum(row);
    let (sp, zp) = (p.probs.scale, f32::from(p.probs.zero_point));
    for (o, &x) in out.iter_mut().zip(row.iter()) {
        *o = small_int_to_u8(((x * r / sp).round_ties_even() + zp).clamp(0.0, 255.0));
    }
}
