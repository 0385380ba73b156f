//! Exact `u8 × u8` matrix products with zero points, the two products of quantized attention:
//! `C[i, n] = Σ_k (a[i, k] − za)·(b[k, n] − zb)` in i32, as ONNX `MatMulInteger` defines it.
//!
//! `B` is packed once per (batch, head) for the ISA ([`Packed`]), `A` is read row by row in
//! place. Every path is exact (no saturating instruction), so all ISAs give the same bits:
//! - AVX-512 VNNI (`avx512.rs`): `vpdpbusd` needs a signed operand, so `B` is stored as
//!   `b ^ 0x80 = b − 128` (s8) and the zero points enter through row and column sums:
//!   `C = Σ a·(b − 128) + (128 − zb)·Σ_k a − za·Σ_k b + K·za·zb`.
//! - AVX2 (`avx2.rs`): both operands widened to i16 with their zero points subtracted
//!   (`|x| ≤ 255`), `vpmaddwd` sums pairs of products exactly (≤ 2·255² per lane).
//! - scalar: the definition in i32.
//!
//! Sums stay exact while `K·255² < 2³¹` ([`MAX_DEPTH`]).

use super::packed::Packed;
use crate::cpu::Isa;

/// The largest inner dimension whose sums of `K` products of magnitude ≤ 255² fit i32.
pub(crate) const MAX_DEPTH: usize = (i32::MAX as usize) / (255 * 255);

/// `(a, lda, m, za, b, out, ldo)`: `out[i·ldo + n] = C[i, n]` for `i < m`, `n < b.n`.
///
/// # Safety
/// The ISA of the chosen function must be available; `a` holds `m` rows of `b.k` values `lda`
/// apart, `out` holds `m` rows of `b.n` values `ldo` apart, and `b` was packed for this ISA.
type ProductFn = unsafe fn(&[u8], usize, usize, u8, &Packed, &mut [i32], usize);

/// The product kernel of one ISA, chosen once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    isa: Isa,
    product: ProductFn,
}

impl Gemm {
    /// The kernel for `isa`, which the caller has checked this CPU supports.
    pub(crate) fn new(isa: Isa) -> Gemm {
        let product: ProductFn = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => super::avx512::product,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::avx2::product,
            _ => scalar_product,
        };
        Gemm { isa, product }
    }

    /// `b [k, n]` (row `r` at `b[r·ldb..]`) packed for this kernel.
    pub(crate) fn pack(&self, b: &[u8], ldb: usize, k: usize, n: usize, zb: u8) -> Packed {
        assert!(k <= MAX_DEPTH && (k == 0 || n == 0 || b.len() >= (k - 1) * ldb + n) && ldb >= n);
        if self.isa == Isa::Avx512Vnni && cfg!(target_arch = "x86_64") && k.is_multiple_of(4) {
            // Each lane's 4-deep slice gathered from 4 rows as one word.
            let (nb, k4) = (n.div_ceil(16), k / 4);
            let mut bytes = vec![0u8; nb * k4 * 64];
            let mut colsum = vec![0i32; nb * 16];
            for q in 0..k4 {
                let rows: [&[u8]; 4] = std::array::from_fn(|i| &b[(4 * q + i) * ldb..(4 * q + i) * ldb + n]);
                for c in 0..n {
                    let quad = [rows[0][c], rows[1][c], rows[2][c], rows[3][c]];
                    colsum[c] += quad.iter().map(|&x| i32::from(x)).sum::<i32>();
                    let at = ((c / 16 * k4 + q) * 16 + c % 16) * 4;
                    bytes[at..at + 4].copy_from_slice(&(u32::from_le_bytes(quad) ^ 0x8080_8080).to_le_bytes());
                }
            }
            return Packed { k, n, zb, bytes, colsum, words: Vec::new() };
        }
        self.pack_with(k, n, zb, |r, c| b[r * ldb + c])
    }

    /// `b = aᵀ [k, n]` packed for this kernel, from `a [n, k]` row-major (row `c` of `a` is column
    /// `c` of `b`): on AVX-512 VNNI each 4-deep slice of a column is 4 adjacent bytes of `a`,
    /// copied as one word.
    pub(crate) fn pack_transposed(&self, a: &[u8], k: usize, n: usize, zb: u8) -> Packed {
        assert!(k <= MAX_DEPTH && a.len() >= k * n);
        if !(self.isa == Isa::Avx512Vnni && cfg!(target_arch = "x86_64") && k.is_multiple_of(4)) {
            return self.pack_with(k, n, zb, |r, c| a[c * k + r]);
        }
        let (nb, k4) = (n.div_ceil(16), k / 4);
        let mut bytes = vec![0u8; nb * k4 * 64];
        let mut colsum = vec![0i32; nb * 16];
        for (c, col) in a.chunks_exact(k).take(n).enumerate() {
            colsum[c] = col.iter().map(|&x| i32::from(x)).sum();
            for (q, quad) in col.chunks_exact(4).enumerate() {
                let at = ((c / 16 * k4 + q) * 16 + c % 16) * 4;
                let word = u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]) ^ 0x8080_8080;
                bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
        Packed { k, n, zb, bytes, colsum, words: Vec::new() }
    }

    /// `B [k, n]` with `B[r, c] = at(r, c)` packed for this kernel.
    fn pack_with(&self, k: usize, n: usize, zb: u8, at: impl Fn(usize, usize) -> u8) -> Packed {
        let mut p = Packed { k, n, zb, bytes: Vec::new(), colsum: Vec::new(), words: Vec::new() };
        match self.isa {
            Isa::Avx512Vnni if cfg!(target_arch = "x86_64") => {
                let (nb, k4) = (n.div_ceil(16), k.div_ceil(4));
                p.bytes = vec![0u8; nb * k4 * 64];
                p.colsum = vec![0i32; nb * 16];
                for r in 0..k {
                    let row = (r / 4) * 64 + r % 4;
                    for c in 0..n {
                        let x = at(r, c);
                        p.bytes[(c / 16) * k4 * 64 + row + (c % 16) * 4] = x ^ 0x80;
                        p.colsum[c] += i32::from(x);
                    }
                }
            }
            Isa::Avx2 if cfg!(target_arch = "x86_64") => {
                let (nb, k2) = (n.div_ceil(8), k.div_ceil(2));
                p.words = vec![0i16; nb * k2 * 16];
                for r in 0..k {
                    for c in 0..n {
                        p.words[((c / 8 * k2 + r / 2) * 8 + c % 8) * 2 + r % 2] = i16::from(at(r, c)) - i16::from(zb);
                    }
                }
            }
            _ => {
                p.words = (0..k * n).map(|i| i16::from(at(i / n, i % n)) - i16::from(zb)).collect();
            }
        }
        p
    }

    /// `out[i·ldo + n] = Σ_k (a[i·lda + k] − za)·(b[k, n] − zb)` for `i < m`, `n < b.n`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product(&self, a: &[u8], lda: usize, m: usize, za: u8, b: &Packed, out: &mut [i32], ldo: usize) {
        if m == 0 || b.n == 0 {
            return;
        }
        assert!(lda >= b.k && a.len() >= (m - 1) * lda + b.k, "A too short");
        assert!(ldo >= b.n && out.len() >= (m - 1) * ldo + b.n, "C too short");
        // SAFETY: `new` picked the function for `self.isa`, which the caller checked runs here;
        // the shapes were checked just above and `b` was packed by `self.pack` for this ISA.
        unsafe { (self.product)(a, lda, m, za, b, out, ldo) }
    }
}

/// The definition, on the `[K][N]` words of `pack`'s scalar layout.
///
/// # Safety
/// None beyond [`ProductFn`]'s shapes (checked by indexing); `unsafe` only to share its type.
unsafe fn scalar_product(a: &[u8], lda: usize, m: usize, za: u8, b: &Packed, out: &mut [i32], ldo: usize) {
    let (k, n) = (b.k, b.n);
    for i in 0..m {
        let row = &mut out[i * ldo..i * ldo + n];
        row.fill(0);
        for (r, &x) in a[i * lda..i * lda + k].iter().enumerate() {
            let x = i32::from(x) - i32::from(za);
            for (o, &w) in row.iter_mut().zip(&b.words[r * n..(r + 1) * n]) {
                *o += x * i32::from(w);
            }
        }
    }
}
