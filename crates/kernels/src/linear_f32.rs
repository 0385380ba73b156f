//! Block-sparse fp32 linear `y = epi(x·W + bias) + residual` for models pruned without
//! quantization: the same 4-channel-block / 4-index-group packing as [`crate::linear_i8`], with
//! f32 weights; activations transposed once per call into `[tile][K][TW]`; FMA kernels for
//! AVX-512 (64-token tiles) and AVX2 (16-token tiles), and a portable scalar kernel.

use std::fmt;
use std::ops::Range;

use crate::blocks::{pack_blocks, validate_weight_shape, Blocks, BLOCK};
use crate::cpu::Isa;
use crate::epilogue::epilogue_f32;
use crate::error::{check_len, kerr};
use crate::par::Parallel;
use crate::plan::{per_tile_chunk, Out, Plan, BLOCK_STEP};
use crate::scratch::Buf;

pub use crate::blocks::{PackStats, Pattern};
pub use crate::epilogue::Epilogue;
pub use crate::error::KernelError;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

/// A block-sparse fp32 linear layer, packed once; `Send + Sync` and immutable after creation.
pub struct LinearF32 {
    blocks: Blocks<f32>,
    bias: Vec<f32>,
    isa: Isa,
}

impl fmt::Debug for LinearF32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearF32").field("isa", &self.isa).field("stats", &self.blocks.stats).finish_non_exhaustive()
    }
}

/// Copies tokens `t0..t0 + tvalid` of `x [T][K]` into `out [K][tw]`, zero-padding the rest.
#[inline(always)]
fn prep_tile(x: &[f32], k: usize, t0: usize, tvalid: usize, tw: usize, out: &mut [f32]) {
    for tt in 0..tw {
        if tt < tvalid {
            let t = t0 + tt;
            for (kk, &v) in x[t * k..(t + 1) * k].iter().enumerate() {
                out[kk * tw + tt] = v;
            }
        } else {
            for kk in 0..k {
                out[kk * tw + tt] = 0.0;
            }
        }
    }
}

/// Tokens `t0..t0 + tvalid` of `x [T][K]` transposed into `out [K][tw]` (zero-padded to `tw`
/// tokens), with AVX2 8×8 transposes where `isa` has AVX2. Pure data movement: every ISA writes
/// the same values.
///
/// # Panics
/// When `x` holds fewer than `t0 + tvalid` rows, `out` fewer than `K·tw` values, `tvalid > tw`
/// or `tw` is not a multiple of 8.
pub(crate) fn transpose_tile(isa: Isa, x: &[f32], k: usize, t0: usize, tvalid: usize, tw: usize, out: &mut [f32]) {
    assert!(x.len() >= (t0 + tvalid) * k && out.len() >= k * tw && tvalid <= tw && tw.is_multiple_of(8));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is checked just here (a `bool` read after the first call); the slice
        // bounds `prep` needs are asserted above.
        Isa::Avx2 | Isa::Avx512Vnni if Isa::Avx2.supported() => unsafe { avx2::prep(x, k, t0, tvalid, tw, out) },
        _ => prep_tile(x, k, t0, tvalid, tw, out),
    }
}

impl LinearF32 {
    /// `w`: `[K, N]` row-major (`y = x·W`); `bias`: optional `[N]`. Fails on an ISA this CPU lacks.
    pub fn new(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>, isa: Isa) -> Result<LinearF32, KernelError> {
        validate_weight_shape(w.len(), k, n)?;
        if !isa.supported() || (isa == Isa::Avx512Vnni && !Isa::Avx2.supported()) {
            return Err(kerr!("instruction set {isa} is not supported by this CPU"));
        }
        let bias = match bias {
            None => vec![0.0; n],
            Some(b) if b.len() == n => b.to_vec(),
            Some(b) => return Err(kerr!("bias has {} elements, expected N = {n}", b.len())),
        };
        Ok(LinearF32 { blocks: pack_blocks(w, k, n), bias, isa })
    }

    /// A layer over weights already packed (`masked_linear` packs `W ⊙ M` from a mask per call);
    /// `bias`: `[N]`. Fails on an ISA this CPU lacks.
    pub(crate) fn from_blocks(blocks: Blocks<f32>, bias: Vec<f32>, isa: Isa) -> Result<LinearF32, KernelError> {
        if !isa.supported() || (isa == Isa::Avx512Vnni && !Isa::Avx2.supported()) {
            return Err(kerr!("instruction set {isa} is not supported by this CPU"));
        }
        if bias.len() != blocks.n {
            return Err(kerr!("bias has {} elements, expected N = {}", bias.len(), blocks.n));
        }
        Ok(LinearF32 { blocks, bias, isa })
    }

    pub fn stats(&self) -> &PackStats {
        &self.blocks.stats
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn k(&self) -> usize {
        self.blocks.k
    }

    pub fn n(&self) -> usize {
        self.blocks.n
    }

    fn tw(&self) -> usize {
        match self.isa {
            Isa::Avx512Vnni => 64,
            _ => 16,
        }
    }

    /// `x`: `[T, K]`; `y[t, j] = epi(Σ_k x[t, k]·w[k, j] + bias[j]) + residual[t, j]`, `y`: `[T, N]`.
    pub fn forward(
        &self,
        x: &[f32],
        t: usize,
        epilogue_kind: Epilogue,
        residual: Option<&[f32]>,
        y: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let (k, n, tw) = (self.k(), self.n(), self.tw());
        check_len("activations", x.len(), t, k)?;
        check_len("output", y.len(), t, n)?;
        if let Some(r) = residual {
            check_len("residual", r.len(), t, n)?;
        }
        if t == 0 {
            return Ok(());
        }
        let n_tiles = t.div_ceil(tw);
        let isa = self.isa;
        let prep = |tile: usize, out: &mut [f32]| {
            let t0 = tile * tw;
            transpose_tile(isa, x, k, t0, tw.min(t - t0), tw, out)
        };
        let b = &self.blocks;
        let plan = Plan::new(n_tiles, &b.group_start, par.threads());
        // Tasks that own whole tiles prepare them just before use (hot in cache); otherwise all
        // tiles are prepared first and shared.
        let shared = (plan.blocks.len() > 1).then(|| {
            let mut xt = Buf::<f32>::zeroed(n_tiles * k * tw);
            per_tile_chunk(&mut xt, k * tw, n_tiles, par, &|tiles: Range<usize>, chunk: &mut [f32]| {
                for (i, tile) in tiles.enumerate() {
                    prep(tile, &mut chunk[i * k * tw..(i + 1) * k * tw]);
                }
            });
            xt
        });
        let gelu_on = epilogue_kind == Epilogue::Gelu;
        let out = Out::new(y);
        par.run(plan.tasks(), &|i| {
            let (tiles, blocks) = plan.task(i);
            let mut acc = Buf::<f32>::zeroed(tw * BLOCK_STEP * BLOCK);
            let mut own = Buf::<f32>::zeroed(if shared.is_none() { k * tw } else { 0 });
            for tile in tiles {
                let t0 = tile * tw;
                let tvalid = tw.min(t - t0);
                let xt = match &shared {
                    Some(xt) => &xt[tile * k * tw..(tile + 1) * k * tw],
                    None => {
                        prep(tile, &mut own);
                        &own[..]
                    }
                };
                for bs in (blocks.start..blocks.end).step_by(BLOCK_STEP) {
                    let be = (bs + BLOCK_STEP).min(blocks.end);
                    let ld = (be - bs) * BLOCK;
                    let acc = &mut acc[..tw * ld];
                    let j0 = bs * BLOCK;
                    let nc = (be * BLOCK).min(n) - j0;
                    let epi =
                        |acc: &[f32]| epilogue_f32(acc, ld, t0, tvalid, j0, nc, n, &self.bias, gelu_on, residual, &out);
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `new` admitted AVX-512 only on a CPU that also has AVX2; `xt` is
                        // one tile of K·64, every stored index is < K (`pack_blocks` takes them
                        // from 0..K), the weights hold 16 per group; `acc` was cut to 64·ld.
                        Isa::Avx512Vnni => unsafe {
                            avx512::tile(xt, &b.group_start, &b.idx, &b.w, bs..be, acc);
                            avx2::with_avx2(|| epi(acc))
                        },
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as for AVX-512 with AVX2 (admitted by `new`) and tiles of K·16.
                        Isa::Avx2 => unsafe {
                            avx2::tile(xt, &b.group_start, &b.idx, &b.w, bs..be, acc);
                            avx2::with_avx2(|| epi(acc))
                        },
                        _ => {
                            scalar::tile(xt, tw, &b.group_start, &b.idx, &b.w, bs..be, acc);
                            epi(acc)
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 transpose gives the portable layout for both tile widths (64 is the AVX-512
    /// kernel's, prepared by AVX2 code, so it is checked on AVX2-only CPUs too).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_transpose_matches_the_portable_one() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED: no AVX2");
            return;
        }
        for (k, t) in [(1, 1), (7, 9), (8, 16), (30, 70), (384, 65)] {
            let x: Vec<f32> = (0..t * k).map(|i| i as f32 * 0.5 - 7.0).collect();
            for tw in [16, 64] {
                for t0 in (0..t).step_by(tw) {
                    let tvalid = tw.min(t - t0);
                    let mut want = vec![f32::NAN; k * tw];
                    prep_tile(&x, k, t0, tvalid, tw, &mut want);
                    let mut got = vec![f32::NAN; k * tw];
                    // SAFETY: this test returned early unless the CPU has AVX2.
                    unsafe { avx2::prep(&x, k, t0, tvalid, tw, &mut got) };
                    assert_eq!(got, want, "K={k} T={t} t0={t0} tw={tw}");
                }
            }
        }
    }
}
