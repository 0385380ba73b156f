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
    /// The lanes' bits shifted left by 23 (integer shift), as f32.
    unsafe fn shl23(self) -> Self;
    /// `self` with the lanes where `x < t` (or `x` is -inf) set to 0.
    unsafe fn zero_where_below(self, x: Self, t: f32) -> Self;
    unsafe fn hmax(self) -> f32;
    unsafe fn hsum(self) -> f32;
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5·2^23 + 127: adding it rounds x·log2(e) to an integer n and leaves n + 127 in the low bits.
const MAGIC_BIAS: f32 = 12_583_039.0;
/// ln 2 = LN2_HI + LN2_LO with LN2_HI exact in 9 bits, so n·LN2_HI is exact even without FMA.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, e^x is subnormal in f32; `exp` returns 0 there.
const EXP_LO: f32 = -87.336_54;

/// `e^x` per lane for x ≤ 0 (softmax arguments): x = n·ln2 + t with |t| ≤ ln2/2, e^t by a degree-5
/// minimax polynomial (XNNPACK's `rr2_p5` coefficients), 2^n through the exponent bits. Within 2 ulp
/// on [-87.3, 0] (checked by the tests below); x < -87.34, including -inf, gives exactly 0.
///
/// # Safety
/// `V`'s ISA must be available.
#[inline(always)]
pub(crate) unsafe fn exp<V: F32x>(x: V) -> V {
    const C: [u32; 5] = [0x3f7f_fffb, 0x3eff_fee3, 0x3e2a_ad40, 0x3d2b_9d0d, 0x3c07_cfce];
    // SAFETY: `V`'s ISA is available (this function's contract); these methods touch no memory.
    unsafe {
        let c = |i: usize| V::splat(f32::from_bits(C[i]));
        let biased = x.mul_add(V::splat(LOG2E), V::splat(MAGIC_BIAS));
        let two_n = biased.shl23();
        let n = biased.sub(V::splat(MAGIC_BIAS));
        let t = n.mul_add(V::splat(-LN2_HI), x);
        let t = n.mul_add(V::splat(-LN2_LO), t);
        let p = c(4).mul_add(t, c(3)).mul_add(t, c(2)).mul_add(t, c(1)).mul_add(t, c(0));
        t.mul(two_n).mul_add(p, two_n).zero_where_below(x, EXP_LO)
    }
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
        // SAFETY: `p` points at N readable f32 (the trait's contract); unaligned read.
        Lanes(unsafe { std::ptr::read_unaligned(p as *const [f32; N]) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: `p` points at N writable f32 (the trait's contract); unaligned write.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; N], self.0) }
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
        // SAFETY: portable lanes run on every CPU and touch no memory.
        unsafe { self.mul(b).add(c) }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.zip(o, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    unsafe fn shl23(self) -> Self {
        self.map(|x| f32::from_bits(x.to_bits() << 23))
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
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: AVX2 and FMA are available and `p` points at 8 readable f32 (the trait's contract).
            unsafe { Avx2(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: AVX2 and FMA are available and `p` points at 8 writable f32 (the trait's contract).
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn shl23(self) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe { Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(self.0)))) }
        }
        #[inline(always)]
        unsafe fn zero_where_below(self, x: Self, t: f32) -> Self {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe {
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, _mm256_set1_ps(t));
                Avx2(_mm256_andnot_ps(below, self.0))
            }
        }
        #[inline(always)]
        unsafe fn hmax(self) -> f32 {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe {
                let m = _mm_max_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
                _mm_cvtss_f32(m)
            }
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            // SAFETY: AVX2 and FMA are available (the trait's contract); register-only intrinsics.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }

    /// 16 lanes, AVX-512F.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub(crate) __m512);

    impl F32x for Avx512 {
        const W: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: AVX-512 F is available and `p` points at 16 readable f32 (the trait's contract).
            unsafe { Avx512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: AVX-512 F is available and `p` points at 16 writable f32 (the trait's contract).
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_fmadd_ps(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn shl23(self) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_castps_si512(self.0)))) }
        }
        #[inline(always)]
        unsafe fn zero_where_below(self, x: Self, t: f32) -> Self {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe {
                let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x.0, _mm512_set1_ps(t));
                Avx512(_mm512_maskz_mov_ps(!below, self.0))
            }
        }
        #[inline(always)]
        unsafe fn hmax(self) -> f32 {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { _mm512_reduce_max_ps(self.0) }
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            // SAFETY: AVX-512 F is available (the trait's contract); register-only intrinsics.
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` on a 2^-10-spaced grid over [-87.3, 0] and at -inf, -100, -87.33 and 0 through `V`.
    ///
    /// # Safety
    /// `V`'s ISA must be available.
    unsafe fn exp_all<V: F32x>() -> (Vec<f32>, Vec<f32>) {
        let mut xs: Vec<f32> = (0..)
            .map(|i| -(i as f32) / 1024.0)
            .take_while(|&x| x >= -87.3)
            .chain([f32::NEG_INFINITY, -100.0, f32::MIN, -87.33, -1e-30, 0.0])
            .collect();
        xs.resize(xs.len().next_multiple_of(V::W), 0.0);
        let mut ys = vec![0f32; xs.len()];
        for (x, y) in xs.chunks(V::W).zip(ys.chunks_mut(V::W)) {
            // SAFETY: `V`'s ISA is available (this function's contract); `xs` and `ys` were padded
            // to a multiple of `W`, so each chunk holds `W` values.
            unsafe { exp(V::load(x.as_ptr())).store(y.as_mut_ptr()) };
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
        // SAFETY: portable lanes run on every CPU.
        check("scalar", unsafe { exp_all::<Lanes<8>>() });
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2() -> (Vec<f32>, Vec<f32>) {
                // SAFETY: AVX2 and FMA are enabled here.
                unsafe { exp_all::<Avx2>() }
            }
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512() -> (Vec<f32>, Vec<f32>) {
                // SAFETY: AVX-512 F is enabled here.
                unsafe { exp_all::<Avx512>() }
            }
            if crate::cpu::Isa::Avx2.supported() {
                // SAFETY: AVX2 and FMA are supported (checked just above).
                check("avx2", unsafe { avx2() });
            }
            if crate::cpu::Isa::Avx512Vnni.supported() {
                // SAFETY: AVX-512 F is supported (checked just above, as part of AVX-512 VNNI).
                check("avx512", unsafe { avx512() });
            }
        }
    }
}
