//! bf16 numbers as AVX-512 BF16 computes them, in portable code: the reference that the
//! `vdpbf16ps` kernels are tested against bit for bit, and the path that runs them on CPUs without
//! the instructions.
//!
//! A "pair" is two bf16 in one `u32`, the even element in the low half. Both semantics below were
//! checked on a Zen 5 against the instructions (200,000 random pairs; subnormal, NaN and overflow
//! cases):
//! - `vcvtneps2bf16` ([`round`]): round to nearest even, subnormal inputs read as (signed) zero;
//! - `vdpbf16ps` ([`dot_lane`]): bf16 inputs with subnormals read as zero, the product of the odd
//!   (high) elements added to the accumulator first, then that of the even ones, each sum rounded to
//!   f32, subnormal results flushed to zero. A product of two bf16 is exact in f32 unless it leaves
//!   f32's normal range (below about 2⁻¹²⁶ or above f32::MAX), where this model rounds it first;
//!   checked on Zen 5 only, so the bit-identity tests are what vouch for another CPU.

/// f32 → bf16 as `vcvtneps2bf16`: round to nearest even, a subnormal input gives a signed zero, a
/// NaN stays a quiet NaN.
#[inline(always)]
pub(crate) fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((b >> 16) & 0x8000) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
#[inline(always)]
pub(crate) fn value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The pair `(lo, hi)`.
#[inline(always)]
pub(crate) fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// One lane of `vdpbf16ps`: `acc + a.hi·b.hi`, rounded, then `+ a.lo·b.lo`, rounded (see the
/// module doc).
#[inline(always)]
pub(crate) fn dot_lane(acc: f32, a: u32, b: u32) -> f32 {
    let daz = |h: u32| {
        let x = value(h as u16);
        if x.is_subnormal() {
            0.0
        } else {
            x
        }
    };
    let ftz = |x: f32| if x.is_subnormal() { 0.0 } else { x };
    let x = ftz(acc + daz(a >> 16) * daz(b >> 16));
    ftz(x + daz(a & 0xffff) * daz(b & 0xffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even_with_subnormals_as_zero() {
        assert_eq!(round(1.0), 0x3f80);
        assert_eq!(round(1.0 + 2f32.powi(-8)), 0x3f80); // halfway, to even
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82); // halfway, to even (up)
        assert_eq!(round(1.1754942e-38), 0x0000);
        assert_eq!(round(-1.0e-40), 0x8000);
        assert_eq!(round(1.1754944e-38), 0x0080);
        assert_eq!(round(3.4028235e38), 0x7f80);
        assert!(value(round(f32::NAN)).is_nan());
    }

    #[test]
    fn each_sum_is_rounded() {
        // acc = 1 and two products of 2^-24: each sum rounds back to 1 (ties to even), where one
        // fused sum would give 1 + 2^-23.
        let (one, tiny) = (round(1.0), round(2f32.powi(-12)));
        let a = pair(tiny, tiny);
        assert_eq!(dot_lane(1.0, a, a), 1.0);
        assert_eq!(dot_lane(0.0, pair(one, one), pair(one, one)), 2.0);
    }
}
