//! The f32 vector operations the attention kernels are written in, one implementation per ISA
//! (portable lanes, AVX2+FMA, AVX-512F), and the vectorised `exp` built from them. Every method is
//! `#[inline(always)]` so that it compiles into the `#[target_feature]` entry point that calls it.

/// A vector of `W` f32 lanes.
///
/// # Safety
/// Every method may only run on a CPU with the implementation's ISA; pointer methods read or
/// write `W` consecutive f32s, which must be valid.
pub(crate) trait F32x: Copy {
    const W: usize;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `self * b + c` (fused where the ISA has FMA).
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    /// Round to the nearest integer, ties to even; only used on |x| < 2^22.
    unsafe fn round(self) -> Self;
    /// `2^self` for integral lanes in [-126, 127].
    unsafe fn pow2i(self) -> Self;
    /// `self` with the lanes where `x < t` (or `x` is -inf) set to 0.
    unsafe fn zero_where_below(self, x: Self, t: f32) -> Self;
    unsafe fn hmax(self) -> f32;
    unsafe fn hsum(self) -> f32;
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;

/// `e^x` per lane, Cephes `expf`: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two so n·ln2_hi is
/// exact), e^r by a degree-7 polynomial, 2^n through the exponent bits. Relative error ≤ 2 ulp on
/// [-87.3, 88]; inputs below -87.3 (results that would be subnormal) give exactly 0, -inf gives 0.
#[inline(always)]
pub(crate) unsafe fn exp<V: F32x>(x: V) -> V {
    let xc = x.min(V::splat(EXP_HI)).max(V::splat(EXP_LO));
    let n = xc.mul(V::splat(LOG2E)).round();
    let r = n.mul_add(V::splat(-0.693_359_4), xc);
    let r = n.mul_add(V::splat(2.121_944_4e-4), r);
    let z = r.mul(r);
    let mut y = V::splat(1.987_569_1e-4);
    y = y.mul_add(r, V::splat(1.398_2e-3));
    y = y.mul_add(r, V::splat(8.333_452e-3));
    y = y.mul_add(r, V::splat(4.166_579_6e-2));
    y = y.mul_add(r, V::splat(0.166_666_65));
    y = y.mul_add(r, V::splat(0.5));
    y = y.mul_add(z, r.add(V::splat(1.0)));
    y.mul(n.pow2i()).zero_where_below(x, EXP_LO)
}

/// Portable lanes: the `Scalar` ISA, and the carrier of the emulated bf16 kernel.
#[derive(Clone, Copy)]
pub(crate) struct Lanes<const N: usize>(pub(crate) [f32; N]);

impl<const N: usize> Lanes<N> {
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        Lanes(self.0.map(f))
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut r = self.0;
        for (a, b) in r.iter_mut().zip(o.0) {
            *a = f(*a, b);
        }
        Lanes(r)
    }
}

impl<const N: usize> F32x for Lanes<N> {
    const W: usize = N;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Lanes([x; N])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f32; N]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; N], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self.zip(o, |a, b| a * b)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        self.mul(b).add(c)
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.zip(o, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        self.zip(o, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        const MAGIC: f32 = 12_582_912.0;
        self.map(|x| (x + MAGIC) - MAGIC)
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        self.map(|n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, t: f32) -> Self {
        self.zip(x, |y, x| if x < t { 0.0 } else { y })
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        self.0.into_iter().fold(f32::NEG_INFINITY, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        self.0.into_iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F32x;
    use std::arch::x86_64::*;

    /// 8 lanes, AVX2 + FMA.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(pub(crate) __m256);

    impl F32x for Avx2 {
        const W: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx2(_mm256_sub_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx2(_mm256_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2(_mm256_fmadd_ps(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx2(_mm256_max_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Avx2(_mm256_min_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            Avx2(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0))
        }
        #[inline(always)]
        unsafe fn pow2i(self) -> Self {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
            Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
        }
        #[inline(always)]
        unsafe fn zero_where_below(self, x: Self, t: f32) -> Self {
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, _mm256_set1_ps(t));
            Avx2(_mm256_andnot_ps(below, self.0))
        }
        #[inline(always)]
        unsafe fn hmax(self) -> f32 {
            let m = _mm_max_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    /// 16 lanes, AVX-512F.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub(crate) __m512);

    impl F32x for Avx512 {
        const W: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx512(_mm512_sub_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512(_mm512_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_ps(self.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx512(_mm512_max_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Avx512(_mm512_min_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            Avx512(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0))
        }
        #[inline(always)]
        unsafe fn pow2i(self) -> Self {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
            Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
        }
        #[inline(always)]
        unsafe fn zero_where_below(self, x: Self, t: f32) -> Self {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x.0, _mm512_set1_ps(t));
            Avx512(_mm512_maskz_mov_ps(!below, self.0))
        }
        #[inline(always)]
        unsafe fn hmax(self) -> f32 {
            _mm512_reduce_max_ps(self.0)
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            _mm512_reduce_add_ps(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` of every 4096th f32 in [-87.3, 88] and of -inf, -100 and 0 through `V`.
    unsafe fn exp_all<V: F32x>() -> (Vec<f32>, Vec<f32>) {
        let mut xs: Vec<f32> = (0..)
            .map(|i| -87.3 + i as f32 * (175.3 / 4096.0 / 16.0))
            .take_while(|&x| x <= 88.0)
            .chain([f32::NEG_INFINITY, -100.0, 0.0, -87.33, 88.0])
            .collect();
        xs.resize(xs.len().next_multiple_of(V::W), 0.0);
        let mut ys = vec![0f32; xs.len()];
        for (x, y) in xs.chunks(V::W).zip(ys.chunks_mut(V::W)) {
            exp(V::load(x.as_ptr())).store(y.as_mut_ptr());
        }
        (xs, ys)
    }

    fn check(name: &str, (xs, ys): (Vec<f32>, Vec<f32>)) {
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if x < EXP_LO {
                assert_eq!(y, 0.0, "{name}: exp({x}) = {y}, expected a flush to 0");
                continue;
            }
            let ulp = (want as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
            let err = (y as f64 - want).abs() / ulp;
            worst = worst.max(err);
            assert!(err <= 2.0, "{name}: exp({x}) = {y}, f64 says {want}: {err:.2} ulp");
        }
        assert_eq!(ys[xs.iter().position(|&x| x == 0.0).unwrap()], 1.0, "{name}: exp(0) must be exactly 1");
        println!("{name}: exp worst error {worst:.2} ulp over {} points", xs.len());
    }

    #[test]
    fn exp_is_within_two_ulp_on_every_isa() {
        check("scalar", unsafe { exp_all::<Lanes<8>>() });
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2() -> (Vec<f32>, Vec<f32>) {
                exp_all::<Avx2>()
            }
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512() -> (Vec<f32>, Vec<f32>) {
                exp_all::<Avx512>()
            }
            if crate::Isa::Avx2.supported() {
                check("avx2", unsafe { avx2() });
            }
            if crate::Isa::Avx512Vnni.supported() {
                check("avx512", unsafe { avx512() });
            }
        }
    }
}
