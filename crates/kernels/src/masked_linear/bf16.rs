//! The bf16 products of the masked-linear kernels ([`super::Precision::Bf16`]): activations,
//! output gradients and `W ⊙ M` rounded to bf16 (nearest even), products accumulated in f32 by
//! `vdpbf16ps` on AVX-512 BF16, or by its portable model (`bf16_ref.rs`) when the scalar ISA is
//! forced. Both give the same bits. Master weights, biases, masks and every output stay f32.
//!
//! Drivers for the forward and the input gradient (the weight gradient shares the f32 driver in
//! `masked_linear.rs`, converting its transposed chunks); tasks and tiles as in the f32 path, with
//! 64-token tiles on both paths.

use std::ops::Range;

use super::bf16_ref;
use super::{KeptBlocks, DW_TW};
use crate::bf16::{pair, round};
use crate::blocks::{Blocks, BLOCK};
use crate::cpu::Isa;
use crate::epilogue::epilogue_f32;
use crate::error::KernelError;
use crate::linear_f32::transpose_tile;
use crate::par::Parallel;
use crate::plan::{per_tile_chunk, split_even, Out, Plan, BLOCK_STEP};
use crate::scratch::Buf;

#[cfg(target_arch = "x86_64")]
use super::avx512_bf16;

/// Tokens per tile, both paths.
const TW: usize = 64;

/// Which code computes the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    /// `vdpbf16ps` (AVX-512 F/BW and BF16, admitted by `MaskedLinear::with_precision`).
    Avx512,
    /// The portable model of the same arithmetic.
    Emulated,
}

impl Path {
    /// The ISA that moves the data (transposes): any gives the same values.
    fn move_isa(self) -> Isa {
        match self {
            Path::Avx512 => Isa::Avx512Vnni,
            Path::Emulated => Isa::Scalar,
        }
    }
}

/// `dst = bf16(src)`.
pub(super) fn convert(path: Path, src: &[f32], dst: &mut [u16]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::Avx512` is only chosen on a CPU with AVX-512 F and BF16.
        Path::Avx512 => unsafe { avx512_bf16::to_bf16(src, dst) },
        _ => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = round(s)),
    }
}

/// Consecutive pairs of `bf16(v)` (`v.len()` even).
fn pairs_of(path: Path, v: &[f32]) -> Vec<u32> {
    let mut h = vec![0u16; v.len()];
    convert(path, v, &mut h);
    h.chunks_exact(2).map(|p| pair(p[0], p[1])).collect()
}

/// `y [T, N] = x [T, K]·W + bias` over the packed kept blocks of `W ⊙ M`, in bf16 products.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    path: Path,
    x: &[f32],
    t: usize,
    blocks: &Blocks<f32>,
    bias: &[f32],
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (k, n) = (blocks.k, blocks.n);
    let n_tiles = t.div_ceil(TW);
    let wp = pairs_of(path, &blocks.w);
    let prep = |tile: usize, scratch: &mut [f32], out: &mut [u16]| {
        let t0 = tile * TW;
        transpose_tile(path.move_isa(), x, k, t0, TW.min(t - t0), TW, scratch);
        convert(path, &scratch[..k * TW], out);
    };
    let plan = Plan::new(n_tiles, &blocks.group_start, par.threads());
    let shared = (plan.blocks.len() > 1).then(|| {
        let mut xt = Buf::<u16>::zeroed(n_tiles * k * TW);
        per_tile_chunk(&mut xt, k * TW, n_tiles, par, &|tiles: Range<usize>, chunk: &mut [u16]| {
            let mut scratch = Buf::<f32>::zeroed(k * TW);
            for (i, tile) in tiles.enumerate() {
                prep(tile, &mut scratch, &mut chunk[i * k * TW..(i + 1) * k * TW]);
            }
        });
        xt
    });
    let out = Out::new(y);
    par.run(plan.tasks(), &|i| {
        let (tiles, bl) = plan.task(i);
        let mut acc = Buf::<f32>::zeroed(TW * BLOCK_STEP * BLOCK);
        let own_len = if shared.is_none() { k * TW } else { 0 };
        let (mut own, mut scratch) = (Buf::<u16>::zeroed(own_len), Buf::<f32>::zeroed(own_len));
        for tile in tiles {
            let t0 = tile * TW;
            let tvalid = TW.min(t - t0);
            let xt = match &shared {
                Some(xt) => &xt[tile * k * TW..(tile + 1) * k * TW],
                None => {
                    prep(tile, &mut scratch, &mut own);
                    &own[..]
                }
            };
            for bs in (bl.start..bl.end).step_by(BLOCK_STEP) {
                let be = (bs + BLOCK_STEP).min(bl.end);
                let ld = (be - bs) * BLOCK;
                let acc = &mut acc[..TW * ld];
                match path {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Path::Avx512` is only chosen on a CPU with AVX-512 F/BW and BF16;
                    // `xt` is one tile of K·64, every stored index is < K (packing), `wp` holds 8
                    // pairs per group; `acc` was cut to 64·ld.
                    Path::Avx512 => unsafe {
                        avx512_bf16::fwd_tile(xt, &blocks.group_start, &blocks.idx, &wp, bs..be, acc)
                    },
                    _ => bf16_ref::fwd_tile(xt, &blocks.group_start, &blocks.idx, &wp, bs..be, acc),
                }
                let j0 = bs * BLOCK;
                let nc = (be * BLOCK).min(n) - j0;
                epilogue_f32(acc, ld, t0, tvalid, j0, nc, n, bias, false, None, &out);
            }
        }
    });
    Ok(())
}

/// One tile of `dy [T, N]` as channel pairs `[n4/2][64]`.
#[allow(clippy::too_many_arguments)]
fn pair_tile(path: Path, dy: &[f32], n: usize, n4: usize, t: usize, tile: usize, scratch: &mut [f32], out: &mut [u32]) {
    let t0 = tile * TW;
    transpose_tile(path.move_isa(), dy, n, t0, TW.min(t - t0), TW, scratch);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::Avx512` is only chosen on a CPU with AVX-512 F and BF16; `scratch` holds
        // n4 rows of 64 (rows past N zero), `out` n4/2 pair rows.
        Path::Avx512 => unsafe { avx512_bf16::pair_rows(scratch, n4, out) },
        _ => {
            for j in 0..n4 / 2 {
                for tt in 0..TW {
                    out[j * TW + tt] = pair(round(scratch[2 * j * TW + tt]), round(scratch[(2 * j + 1) * TW + tt]));
                }
            }
        }
    }
}

/// `dx [T, K] = dy [T, N]·(W ⊙ M)ᵀ` over the kept blocks, in bf16 products (`cw`: the kept
/// blocks' weights, 4 per entry in list order).
#[allow(clippy::too_many_arguments)]
pub(super) fn grad_input(
    path: Path,
    dy: &[f32],
    t: usize,
    kept: &KeptBlocks,
    cw: &[f32],
    dx: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (k, n) = (kept.k, kept.n);
    let cw = pairs_of(path, cw);
    let n4 = kept.blocks() * BLOCK;
    let n_tiles = t.div_ceil(TW);
    let plan = Plan::new(n_tiles, &kept.row_weights(), par.threads());
    let tile_len = n4 / 2 * TW;
    let shared = (plan.blocks.len() > 1).then(|| {
        let mut yp = Buf::<u32>::zeroed(n_tiles * tile_len);
        per_tile_chunk(&mut yp, tile_len, n_tiles, par, &|tiles: Range<usize>, chunk: &mut [u32]| {
            let mut scratch = Buf::<f32>::zeroed(n4 * TW);
            for (i, tile) in tiles.enumerate() {
                pair_tile(path, dy, n, n4, t, tile, &mut scratch, &mut chunk[i * tile_len..(i + 1) * tile_len]);
            }
        });
        yp
    });
    let out = Out::new(dx);
    par.run(plan.tasks(), &|i| {
        let (tiles, rows) = plan.task(i);
        let kr = rows.len();
        let spans = kept.spans(&rows);
        let kr8 = kr.div_ceil(8) * 8;
        let mut acc = Buf::<f32>::zeroed(kr * TW);
        let mut rows_out = Buf::<f32>::zeroed(TW * kr8);
        let own = shared.is_none();
        let mut own_tile = Buf::<u32>::zeroed(if own { tile_len } else { 0 });
        let mut scratch = Buf::<f32>::zeroed(if own { n4 * TW } else { 0 });
        for tile in tiles {
            let t0 = tile * TW;
            let tvalid = TW.min(t - t0);
            let ytile = match &shared {
                Some(yp) => &yp[tile * tile_len..(tile + 1) * tile_len],
                None => {
                    pair_tile(path, dy, n, n4, t, tile, &mut scratch, &mut own_tile);
                    &own_tile[..]
                }
            };
            acc.fill(0.0);
            let k0 = rows.start as u32;
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Path::Avx512` is only chosen on a CPU with AVX-512 F and BF16; the tile
                // holds 2·⌈N/4⌉ pair rows of 64 tokens; every listed row lies in `rows` (the spans
                // were cut to it), so `acc` (kr·64) holds it; `cw` has 2 pairs per entry.
                Path::Avx512 => unsafe { avx512_bf16::dx_tile(ytile, &spans, &kept.rows, &cw, k0, &mut acc) },
                _ => bf16_ref::dx_tile(ytile, &spans, &kept.rows, &cw, k0, &mut acc),
            }
            super::store_dx_tile(path.move_isa(), &acc, &mut rows_out, &out, t0, tvalid, k, &rows);
        }
    });
    Ok(())
}

/// Tokens `0..t` of `x [·][cols]` transposed into rows of bf16, `[rows][Tp]` (`Tp` = `t` rounded
/// up to 64; rows past `cols` and tokens past `t` zero): 64-token tiles transposed in parallel,
/// each row of a tile rounded into its place (the f32 rows are never stored whole).
pub(super) fn transposed_rows(
    path: Path,
    x: &[f32],
    t: usize,
    cols: usize,
    rows: usize,
    par: &dyn Parallel,
) -> Buf<u16> {
    let tp = t.div_ceil(DW_TW) * DW_TW;
    let mut out = Buf::<u16>::zeroed(rows * tp);
    let parts = split_even(tp / DW_TW, if par.threads() <= 1 { 1 } else { par.threads() });
    let dst = Out::new(&mut out);
    par.run(parts.len(), &|i| {
        let mut tile = Buf::<f32>::zeroed(cols * DW_TW);
        for ti in parts[i].clone() {
            let t0 = ti * DW_TW;
            transpose_tile(path.move_isa(), x, cols, t0, DW_TW.min(t - t0), DW_TW, &mut tile);
            for (r, row) in tile.chunks_exact(DW_TW).enumerate() {
                // SAFETY: each task owns its tiles' token columns, so no other live range overlaps
                // this one; `Out::range` checks the bounds.
                convert(path, row, unsafe { dst.range(r * tp + t0, DW_TW) });
            }
        }
    });
    out
}
