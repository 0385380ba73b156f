//! The f32 steps of one query row (`attention_i8`'s module doc): i32 scores → `Cast`, `Mul`,
//! `QuantizeLinear`, `DequantizeLinear`, `Div`, `Add` mask → softmax → `QuantizeLinear`.
//!
//! Two forms. [`row_levels`], the default, fuses the scales after the scores' quantization. A
//! score's level is the graph's, exactly (`Mul`, then the division of `QuantizeLinear` as a
//! correctly rounded quotient). Since a row's dequantized scores differ only by whole levels,
//! `exp(x_j − max)` is computed as `exp((l_j − l_max) · scale/divisor)`, one multiply from the
//! levels instead of a dequantization, a division and a subtraction (a table of the 256 values,
//! gathered, measured 1.75x slower on Zen 5), and the probabilities are quantized by one multiply
//! by `(1/Σ)/probs.scale`. Keys whose mask bias is 0 count; keys whose bias is so negative that
//! their weight underflows in the graph (`≤ −(255·scale/divisor + 128)`) are dropped. The
//! softmax's argument then differs from the graph's by a few ulp, so a probability can land one
//! quantization step (`probs.scale`) away from the graph's where it lies that close to a rounding
//! boundary. [`row`] computes every step in the graph's order, for masks with other values and
//! rows with no key left.
//!
//! Without the scores' requantization (sparsec's own QAT form) a score's "level" is its exact
//! integer sum `A_j` (as f32: exact while `|A| < 2²⁴`, i.e. head sizes up to 258), the step is
//! `scores_mul / divisor`, and a key is dropped when its bias is below the whole span the sums
//! can take (`2·255²·D` steps) by 128; [`row`] then computes `A_j · scores_mul / divisor`.
//!
//! Written once as portable element-wise code with a fixed order for every reduction (16 partial
//! sums, then a fixed tree), and inlined into each ISA's task (`attention_i8.rs`), which the
//! compiler vectorises with that ISA's target features. Element-wise IEEE operations round the
//! same in any register width, and the only FMAs are explicit ones (`mul_add`, exact in any
//! register and in libm), so every ISA gives the same bits. The two divisions after the scores'
//! quantization are computed as correctly rounded quotients without a divide instruction ([`div`]),
//! which made the row about 30% faster than `vdivps` on Zen 5 and gives the same bits.

use super::{small_int_to_u8, QuantAttentionParams};

/// Partial sums (and maxima) a row is reduced with.
const LANES: usize = 16;

/// `eˣ` (Cephes `expf`: range reduction by `n·ln 2` in two parts, degree-6 polynomial, `2ⁿ` from
/// the exponent bits), with every multiply-add of the reduction and the polynomial an explicit
/// fused one (`mul_add`: one rounding, the same bits in any register width and in libm), within
/// about 1 ulp for `x ∈ [−87.3, 88.7]`; inputs below are clamped (giving ~1e-38 instead of smaller).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.722_83);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(0.693_359_4, x);
    let r = (-n).mul_add(-2.121_944_4e-4, r);
    let z = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(z, r) + 1.0;
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
    /// Whether the scores are requantized (`scale`, `zero` are then theirs).
    pub requantized: bool,
    /// `scores_mul`, and the scores' scale and zero point (as f32).
    pub mul: f32,
    pub scale: f32,
    pub zero: f32,
    /// The `Div` after the scores' `DequantizeLinear`.
    pub divisor: f32,
    pub inv_divisor: f32,
    pub inv_probs_scale: f32,
    /// The probabilities' scale and zero point (as f32).
    pub probs_scale: f32,
    pub probs_zero: f32,
}

impl RowConsts {
    pub fn new(p: &QuantAttentionParams) -> RowConsts {
        let sq = p.scores.unwrap_or(super::Quant { scale: 1.0, zero_point: 0 });
        RowConsts {
            requantized: p.scores.is_some(),
            mul: p.scores_mul,
            scale: sq.scale,
            zero: f32::from(sq.zero_point),
            divisor: p.divisor,
            inv_divisor: 1.0 / p.divisor,
            inv_probs_scale: 1.0 / p.probs.scale,
            probs_scale: p.probs.scale,
            probs_zero: f32::from(p.probs.zero_point),
        }
    }
}

/// The constants of [`row_levels`] (the scales fused), derived once per kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelConsts {
    /// Whether the scores are requantized; without, a level is the integer sum itself.
    pub requantized: bool,
    /// `scores_mul`, the scores' scale, its reciprocal and zero point.
    pub mul: f32,
    pub scale: f32,
    pub inv_scale: f32,
    pub zero: f32,
    /// `scores.scale / divisor` (`scores_mul / divisor` without requantization): one level's step
    /// of the softmax's argument.
    pub step: f32,
    /// `1 / probs.scale` and the probabilities' zero point.
    pub inv_probs_scale: f32,
    pub probs_zero: f32,
    /// A key whose mask bias is at most this is dropped; one whose bias is 0 counts.
    pub dropped_at_or_below: f32,
}

impl LevelConsts {
    /// For heads of `head_dim` values (the span of the unrequantized sums).
    pub fn new(p: &QuantAttentionParams, head_dim: usize) -> LevelConsts {
        let (step, span, sq) = match p.scores {
            Some(sq) => (f64::from(sq.scale) / f64::from(p.divisor), 255.0, sq),
            None => (
                f64::from(p.scores_mul) / f64::from(p.divisor),
                2.0 * 255.0 * 255.0 * head_dim as f64,
                super::Quant { scale: 1.0, zero_point: 0 },
            ),
        };
        LevelConsts {
            requantized: p.scores.is_some(),
            mul: p.scores_mul,
            scale: sq.scale,
            inv_scale: 1.0 / sq.scale,
            zero: f32::from(sq.zero_point),
            step: step as f32,
            inv_probs_scale: 1.0 / p.probs.scale,
            probs_zero: f32::from(p.probs.zero_point),
            dropped_at_or_below: -((span * step.abs()) as f32 + 128.0),
        }
    }

    /// Which keys of a `[S]` mask bias count (1) or are dropped (0), or `None` when some bias is
    /// neither 0 nor low enough to drop its key (the exact [`row`] handles those).
    pub fn keep(&self, mask: &[f32]) -> Option<Vec<f32>> {
        mask.iter()
            .map(|&m| {
                if m == 0.0 {
                    Some(1.0)
                } else if m <= self.dropped_at_or_below {
                    Some(0.0)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// One row with the scales fused (the module doc): `out[j] = QL_probs(w_j / Σ w)` with
/// `w_j = exp((l_j − l_max) · step)` for kept keys and 0 for dropped ones; `lv` is scratch of the row's
/// length. Returns false, with nothing written, when no key is kept.
#[inline(always)]
pub fn row_levels(c: &LevelConsts, scores: &[i32], keep: Option<&[f32]>, lv: &mut [f32], out: &mut [u8]) -> bool {
    if c.requantized {
        for (l, &a) in lv.iter_mut().zip(scores) {
            *l = (div(a as f32 * c.mul, c.scale, c.inv_scale).round_ties_even() + c.zero).clamp(0.0, 255.0);
        }
    } else {
        for (l, &a) in lv.iter_mut().zip(scores) {
            *l = a as f32;
        }
    }
    let lmax = match keep {
        None => max(lv),
        Some(k) => masked_max(lv, k),
    };
    if lmax <= NO_KEY {
        return false;
    }
    match keep {
        None => lv.iter_mut().for_each(|l| *l = exp((*l - lmax) * c.step)),
        Some(k) => lv.iter_mut().zip(k).for_each(|(l, &kk)| *l = exp((*l - lmax) * c.step) * kk),
    }
    let m = (1.0 / sum(lv)) * c.inv_probs_scale;
    let zp = c.probs_zero;
    for (o, &w) in out.iter_mut().zip(lv.iter()) {
        *o = small_int_to_u8(((w * m).round_ties_even() + zp).clamp(0.0, 255.0));
    }
    true
}

/// `a / b`, correctly rounded, from `inv = 1/b` (correctly rounded): `q = a·inv`, then one Newton
/// step on the exact residual `a − q·b` (two FMAs). Markstein's theorem makes `q + r·inv` the
/// correctly rounded quotient when `q` is within an ulp of it and nothing underflows (`|a| ≥ 2⁻¹⁰⁰`
/// here; the row's numerators are 0, at least a scale, or probabilities so small that their level
/// is 0 whichever ulp they land on); the tests check it against true division.
#[inline(always)]
fn div(a: f32, b: f32, inv: f32) -> f32 {
    let q = a * inv;
    let r = (-q).mul_add(b, a);
    r.mul_add(inv, q)
}

/// One row: `out[j] = QL_probs(softmax_j(DQ(QL(scores[j] · mul)) / divisor + mask[j]))`, with
/// the softmax as `exp(x_j − max) · (1/Σ)`; a row whose every key is masked with −∞ gives
/// probabilities 0 (as torch's NaN guard does).
#[inline(always)]
pub fn row(c: &RowConsts, scores: &[i32], mask: Option<&[f32]>, row: &mut [f32], out: &mut [u8]) {
    let (mul, sa, za) = (c.mul, c.scale, c.zero);
    if c.requantized {
        for (x, &a) in row.iter_mut().zip(scores) {
            let q = ((a as f32 * mul / sa).round_ties_even() + za).clamp(0.0, 255.0);
            *x = div((q - za) * sa, c.divisor, c.inv_divisor);
        }
    } else {
        for (x, &a) in row.iter_mut().zip(scores) {
            *x = (a as f32 * mul) / c.divisor;
        }
    }
    if let Some(m) = mask {
        row.iter_mut().zip(m).for_each(|(x, &b)| *x += b);
    }
    let max = max(row);
    if max == f32::NEG_INFINITY {
        // Every key masked with −∞: the graph's softmax is NaN, which torch's exports guard to
        // probabilities 0 (`Where(IsNaN(p), 0, p)`); their level is the zero point.
        out.fill(small_int_to_u8(c.probs_zero));
        return;
    }
    row.iter_mut().for_each(|x| *x = exp(*x - max));
    let (r, sp) = (1.0 / sum(row), c.probs_scale);
    let zp = c.probs_zero;
    for (o, &x) in out.iter_mut().zip(row.iter()) {
        *o = small_int_to_u8((div(x * r, sp, c.inv_probs_scale).round_ties_even() + zp).clamp(0.0, 255.0));
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

/// What [`masked_max`] gives when no key is kept: −2³⁰, below every level (requantized levels
/// are in `[0, 255]`, integer sums in magnitude at most `255²·D < 2²⁴`: `QuantAttention::new`
/// admits unrequantized scores only for `D ≤ MAX_EXACT_HEAD_DIM`).
const NO_KEY: f32 = -1_073_741_824.0;

/// The largest of `x[j]` over `keep[j] = 1` (`keep[j] ∈ {0, 1}`), [`NO_KEY`] for none: the
/// maximum of `x·k + (k − 1)·2³⁰`, exact (`x·k` is `x` or 0, and the sum is exact for levels
/// under 2²⁴), by the same lanes as [`max`], branch-free so that it vectorises (a conditional
/// read of `x[j]` does not).
#[inline(always)]
fn masked_max(x: &[f32], keep: &[f32]) -> f32 {
    let mut mx = [NO_KEY; LANES];
    let (chunks, kc) = (x.chunks_exact(LANES), keep.chunks_exact(LANES));
    let (tail, ktail) = (chunks.remainder(), kc.remainder());
    for (c, kk) in chunks.zip(kc) {
        for l in 0..LANES {
            let v = c[l].mul_add(kk[l], (kk[l] - 1.0) * -NO_KEY);
            mx[l] = if v > mx[l] { v } else { mx[l] };
        }
    }
    for ((m, &v), &kk) in mx.iter_mut().zip(tail).zip(ktail) {
        let v = v.mul_add(kk, (kk - 1.0) * -NO_KEY);
        *m = if v > *m { v } else { *m };
    }
    mx.iter().fold(NO_KEY, |a, &b| if b > a { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::div;

    /// `div` against the divide instruction over the ranges attention uses (dequantized scores
    /// over √D-like divisors, probabilities over 1/255-like scales), plus random magnitudes.
    #[test]
    fn div_is_the_correctly_rounded_quotient() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let unit = |v: u64| (v >> 40) as f32 / (1u64 << 24) as f32;
        let mut checked = 0;
        for i in 0..2_000_000u32 {
            let (u, v) = (unit(next()), unit(next()));
            let (a, b) = match i % 4 {
                0 => ((u - 0.5) * 800.0, 1.0 + v * 15.0),
                1 => (u, 1.0 / (1.0 + (v * 1000.0).floor())),
                2 => ((u - 0.5) * 2f32.powi((v * 60.0) as i32 - 30), 0.01 + v * 100.0),
                _ => (
                    f32::from_bits(next() as u32 & 0x3fff_ffff),
                    f32::from_bits(0x3000_0000 + (next() as u32 & 0x1fff_ffff)),
                ),
            };
            // Markstein's condition: the residual must not underflow, so |a| ≥ 2⁻¹⁰⁰ (attention's
            // numerators are 0 or at least a scale; a smaller probability rounds to level 0 either way).
            if !(a.is_finite() && b.is_finite() && b != 0.0)
                || a.abs() < 2f32.powi(-100)
                || (a / b).abs() < f32::MIN_POSITIVE * 16.0
            {
                continue;
            }
            assert_eq!(div(a, b, 1.0 / b).to_bits(), (a / b).to_bits(), "{a:e} / {b:e}");
            checked += 1;
        }
        assert!(checked > 1_800_000, "{checked}");
    }
}
