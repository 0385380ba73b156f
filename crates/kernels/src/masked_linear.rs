//! Block-sparse training kernels for a linear layer whose weight `W [K, N]` (`y = x·W`, ONNX
//! `MatMul` layout) is multiplied by a pruning mask `M [K, N]`: the forward product
//! `y = x·(W ⊙ M) + bias`, the input gradient `dx = dy·(W ⊙ M)ᵀ` and the weight gradient
//! `dW = M ⊙ (xᵀ·dy)`, each computed only on the *kept blocks*: a (input index `k`, block of 4
//! consecutive output channels `4b..4b+4`) pair is kept when any of its 4 mask entries is
//! non-zero. A `[4, 1]` mask (SparseML's `mask_type: [4, 1]`) keeps exactly its non-zero blocks;
//! any other mask is computed exactly too, at the density of its block union.
//!
//! Weights change every training step and masks at every pruning update, so nothing is packed
//! ahead: each call scans the mask (`O(K·N)`), lists the kept blocks, and packs what it multiplies
//! from `W ⊙ M` (`O(kept)`); the products cost `O(T·kept)`.
//!
//! - Forward: packs the kept blocks into the [`crate::blocks`] format and runs
//!   [`crate::linear_f32`]'s kernels. AVX2 and AVX-512 sum each output in the same order (one FMA
//!   chain over the kept indices), so they agree bit for bit; the scalar kernel multiplies and
//!   adds separately.
//! - Input gradient: per column block `b`, the 4 transposed `dy` rows of the block stay in
//!   registers while every kept row `k` of the block is updated in an accumulator tile `[K][tw]`:
//!   `acc[k] = fma(w3, dy3, fma(w2, dy2, fma(w1, dy1, fma(w0, dy0, acc[k]))))`, blocks ascending.
//!   Every ISA (the scalar kernel through `f32::mul_add`) computes this same chain, so all three
//!   agree bit for bit.
//! - Weight gradient: per chunk of 512 tokens, `x` and `dy` transposed to rows of the chunk's
//!   tokens; per 256 rows of `x` (kept in L2 while every column block reads them), each block's kept rows in groups
//!   (4 on AVX-512, 2 on AVX2, 1 scalar) × the block's 4 channels, one vector accumulator each,
//!   reduced per chunk and added to the pair's sum in chunk order; the order within a chunk
//!   depends on the ISA's vector width (results agree to f32 rounding).
//!
//! Every result is deterministic for a given ISA and independent of the thread count: each output
//! element is summed by one task in a fixed order.
//!
//! [`Precision::Bf16`] (`bf16.rs`): the same three products with `x`, `dy` and `W ⊙ M` rounded to
//! bf16 and the pair products summed in f32 by `vdpbf16ps` (`avx512_bf16.rs`), or by its portable
//! model on the scalar ISA (`bf16_ref.rs`), which gives the same bits.

use std::fmt;
use std::ops::Range;

use crate::blocks::{Blocks, PackStats, Pattern, BLOCK, GROUP, GW};
use crate::cpu::Isa;
use crate::error::{check_len, kerr, KernelError};
use crate::linear_f32::{transpose_tile, Epilogue, LinearF32};
use crate::par::Parallel;
use crate::plan::{per_tile_chunk, split_even, Out, Plan};
use crate::scratch::Buf;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
mod bf16;
mod bf16_ref;
mod scalar;

use bf16_ref::TilesBf16;

/// Tokens per transposed tile of the weight gradient's operands (every ISA); rows are padded to a
/// multiple of it.
const DW_TW: usize = 64;
/// Tokens per chunk of the weight gradient (a multiple of [`DW_TW`]).
const DW_CHUNK_TOKENS: usize = 512;
/// Rows of `x` per chunk: 256 rows × 512 tokens of f32 is 512 KiB, read by every column block.
const DW_CHUNK_ROWS: usize = 256;

/// The kept blocks of a mask `M [K, N]`, listed per column block.
pub struct KeptBlocks {
    pub k: usize,
    pub n: usize,
    /// Kept rows of column block `b`: `rows[start[b]..start[b + 1]]`, ascending.
    start: Vec<usize>,
    rows: Vec<u32>,
    /// Whether every kept block has all its (in-range) mask entries non-zero.
    whole: bool,
}

impl fmt::Debug for KeptBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptBlocks").field("k", &self.k).field("n", &self.n).field("kept", &self.kept()).finish()
    }
}

impl KeptBlocks {
    /// Scans `mask [K, N]` row-major: one pass, then a counting sort into per-block row lists.
    pub fn from_mask(mask: &[f32], k: usize, n: usize) -> Result<KeptBlocks, KernelError> {
        if k == 0 || n == 0 {
            return Err(kerr!("weight shape [{k}, {n}] is empty"));
        }
        if k > u32::MAX as usize {
            return Err(kerr!("weight K = {k} exceeds {}", u32::MAX));
        }
        if k.checked_mul(n) != Some(mask.len()) {
            return Err(kerr!("mask has {} elements, shape [K={k}, N={n}] needs {}", mask.len(), k * n));
        }
        let nb = n.div_ceil(BLOCK);
        let mut kept = vec![false; k * nb];
        let mut count = vec![0usize; nb];
        let mut whole = true;
        for (kk, row) in mask.chunks_exact(n).enumerate() {
            for (b, blk) in row.chunks(BLOCK).enumerate() {
                let nz = blk.iter().filter(|&&m| m != 0.0).count();
                if nz > 0 {
                    kept[kk * nb + b] = true;
                    count[b] += 1;
                    whole &= nz == blk.len();
                }
            }
        }
        let mut start = Vec::with_capacity(nb + 1);
        start.push(0);
        for c in &count {
            start.push(start.last().copied().unwrap_or(0) + c);
        }
        let mut rows = vec![0u32; start[nb]];
        let mut fill = start[..nb].to_vec();
        for kk in 0..k {
            for b in 0..nb {
                if kept[kk * nb + b] {
                    rows[fill[b]] = kk as u32;
                    fill[b] += 1;
                }
            }
        }
        Ok(KeptBlocks { k, n, start, rows, whole })
    }

    /// Column blocks, `⌈N/4⌉`.
    pub fn blocks(&self) -> usize {
        self.start.len() - 1
    }

    /// Kept (row, column block) pairs.
    pub fn kept(&self) -> usize {
        self.rows.len()
    }

    /// `kept / (K·⌈N/4⌉)`: the share of a dense layer's multiplies the kernels perform.
    pub fn density(&self) -> f64 {
        self.kept() as f64 / (self.k * self.blocks()) as f64
    }

    fn rows_of(&self, b: usize) -> &[u32] {
        &self.rows[self.start[b]..self.start[b + 1]]
    }

    /// Cumulative kept blocks per input row (`[K + 1]`): the input gradient's tasks own row
    /// ranges balanced by these.
    fn row_weights(&self) -> Vec<usize> {
        let mut per_row = vec![0usize; self.k];
        self.rows.iter().for_each(|&r| per_row[r as usize] += 1);
        let mut start = Vec::with_capacity(self.k + 1);
        start.push(0);
        for c in &per_row {
            start.push(start.last().copied().unwrap_or(0) + c);
        }
        start
    }

    /// Per column block, its entries whose row lies in `rows`.
    fn spans(&self, rows: &Range<usize>) -> Vec<Range<usize>> {
        (0..self.blocks())
            .map(|b| {
                let list = self.rows_of(b);
                let lo = list.partition_point(|&r| (r as usize) < rows.start);
                let hi = list.partition_point(|&r| (r as usize) < rows.end);
                self.start[b] + lo..self.start[b] + hi
            })
            .collect()
    }

    /// `W ⊙ M` of the kept blocks in [`crate::blocks`] format (groups of 4 kept rows, the last
    /// padded with zero weights at a valid index).
    fn pack_forward(&self, w: &[f32], mask: &[f32]) -> Blocks<f32> {
        let (k, n, nb) = (self.k, self.n, self.blocks());
        let mut group_start = Vec::with_capacity(nb + 1);
        let mut idx = Vec::new();
        let mut packed = Vec::new();
        group_start.push(0);
        for b in 0..nb {
            for chunk in self.rows_of(b).chunks(GROUP) {
                let pad = *chunk.last().expect("chunks are non-empty");
                let ks: [u32; GROUP] = std::array::from_fn(|i| chunk.get(i).copied().unwrap_or(pad));
                idx.extend_from_slice(&ks);
                for c in 0..BLOCK {
                    let j = b * BLOCK + c;
                    for (i, &kk) in ks.iter().enumerate() {
                        let at = kk as usize * n + j;
                        packed.push(if i < chunk.len() && j < n { w[at] * mask[at] } else { 0.0 });
                    }
                }
            }
            group_start.push(idx.len() / GROUP);
        }
        let groups = idx.len() / GROUP;
        let pattern = if self.kept() == k * nb && self.whole {
            Pattern::Dense
        } else if self.whole {
            Pattern::Block4x1
        } else {
            Pattern::Unstructured
        };
        let stats = PackStats {
            pattern,
            k,
            n,
            nonzeros: mask.iter().zip(w).filter(|&(&m, &w)| m * w != 0.0).count(),
            stored: groups * GW,
            bytes: groups * (GW * 4 + GROUP * 4) + (nb + 1) * 8,
        };
        Blocks { k, n, group_start, idx, w: packed, stats }
    }

    /// `W ⊙ M` of each kept block, 4 channels per (block, row) entry in list order (channels
    /// `≥ N` zero).
    fn pack_columns(&self, w: &[f32], mask: &[f32]) -> Vec<f32> {
        let n = self.n;
        let mut out = Vec::with_capacity(self.kept() * BLOCK);
        for b in 0..self.blocks() {
            for &kk in self.rows_of(b) {
                for c in 0..BLOCK {
                    let j = b * BLOCK + c;
                    let at = kk as usize * n + j;
                    out.push(if j < n { w[at] * mask[at] } else { 0.0 });
                }
            }
        }
        out
    }
}

/// The arithmetic of the three products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 products and sums.
    #[default]
    F32,
    /// Activations, output gradients and `W ⊙ M` rounded to bf16 (nearest even), products summed
    /// in f32 (`vdpbf16ps`); outputs f32. Needs [`Isa::Avx512Vnni`] on a CPU with AVX-512 BF16,
    /// or [`Isa::Scalar`], which runs a portable model of the same arithmetic (same bits, slow).
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// The masked-linear training kernels on one instruction set and precision, chosen once at
/// creation.
#[derive(Clone, Copy, Debug)]
pub struct MaskedLinear {
    isa: Isa,
    precision: Precision,
}

impl MaskedLinear {
    /// f32 products. Fails on an ISA this CPU lacks.
    pub fn new(isa: Isa) -> Result<MaskedLinear, KernelError> {
        MaskedLinear::with_precision(isa, Precision::F32)
    }

    /// Fails on an ISA this CPU lacks, and for bf16 on any ISA but `avx512vnni` on a CPU with
    /// AVX-512 BF16 and `scalar` (see [`Precision::Bf16`]).
    pub fn with_precision(isa: Isa, precision: Precision) -> Result<MaskedLinear, KernelError> {
        if !isa.supported() || (isa == Isa::Avx512Vnni && !Isa::Avx2.supported()) {
            return Err(kerr!("instruction set {isa} is not supported by this CPU"));
        }
        if precision == Precision::Bf16 && !(isa == Isa::Scalar || Isa::cpu_has_avx512_bf16() && isa == Isa::Avx512Vnni)
        {
            return Err(kerr!(
                "bf16 products need the avx512vnni ISA on a CPU with AVX-512 BF16 (this CPU: {}), or the scalar ISA \
                 (a portable model of the same arithmetic), not {isa}",
                if Isa::cpu_has_avx512_bf16() { "present" } else { "absent" }
            ));
        }
        Ok(MaskedLinear { isa, precision })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The bf16 code path, for [`Precision::Bf16`].
    fn bf16_path(&self) -> Option<bf16::Path> {
        match (self.precision, self.isa) {
            (Precision::F32, _) => None,
            (Precision::Bf16, Isa::Avx512Vnni) => Some(bf16::Path::Avx512),
            (Precision::Bf16, _) => Some(bf16::Path::Emulated),
        }
    }

    /// `y [T, N] = x [T, K]·(W ⊙ M) + bias` (`bias`: `[N]`, or none).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        t: usize,
        w: &[f32],
        mask: &[f32],
        kept: &KeptBlocks,
        bias: Option<&[f32]>,
        y: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let (k, n) = (kept.k, kept.n);
        check_weights(w, mask, k, n)?;
        let bias = match bias {
            None => vec![0.0; n],
            Some(b) if b.len() == n => b.to_vec(),
            Some(b) => return Err(kerr!("bias has {} elements, expected N = {n}", b.len())),
        };
        if let Some(path) = self.bf16_path() {
            check_len("activations", x.len(), t, k)?;
            check_len("output", y.len(), t, n)?;
            if t == 0 {
                return Ok(());
            }
            return bf16::forward(path, x, t, &kept.pack_forward(w, mask), &bias, y, par);
        }
        let lin = LinearF32::from_blocks(kept.pack_forward(w, mask), bias, self.isa)?;
        lin.forward(x, t, Epilogue::None, None, y, par)
    }

    /// `dx [T, K] = dy [T, N]·(W ⊙ M)ᵀ`, over the kept blocks only.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_input(
        &self,
        dy: &[f32],
        t: usize,
        w: &[f32],
        mask: &[f32],
        kept: &KeptBlocks,
        dx: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let (k, n) = (kept.k, kept.n);
        check_weights(w, mask, k, n)?;
        check_len("output gradients", dy.len(), t, n)?;
        check_len("input gradients", dx.len(), t, k)?;
        if t == 0 {
            return Ok(());
        }
        let cw = kept.pack_columns(w, mask);
        if let Some(path) = self.bf16_path() {
            return bf16::grad_input(path, dy, t, kept, &cw, dx, par);
        }
        let tw = match self.isa {
            Isa::Avx512Vnni => 64,
            _ => 16,
        };
        let n4 = kept.blocks() * BLOCK;
        let n_tiles = t.div_ceil(tw);
        // Tasks own (token tiles, row ranges), rows balanced by their kept blocks.
        let plan = Plan::new(n_tiles, &kept.row_weights(), par.threads());
        // Tasks that own whole tiles transpose them just before use (hot in cache); otherwise all
        // tiles are transposed first and shared.
        let shared = (plan.blocks.len() > 1).then(|| transposed_tiles(self.isa, dy, t, n, n4, tw, par));
        let out = Out::new(dx);
        let isa = self.isa;
        par.run(plan.tasks(), &|i| {
            let (tiles, rows) = plan.task(i);
            let kr = rows.len();
            let spans = kept.spans(&rows);
            let kr8 = kr.div_ceil(8) * 8;
            let mut acc = Buf::<f32>::zeroed(kr * tw);
            let mut rows_out = Buf::<f32>::zeroed(tw * kr8);
            let mut own = Buf::<f32>::zeroed(if shared.is_none() { n4 * tw } else { 0 });
            for tile in tiles {
                let t0 = tile * tw;
                let tvalid = tw.min(t - t0);
                let ytile = match &shared {
                    Some(yt) => &yt[tile * n4 * tw..(tile + 1) * n4 * tw],
                    None => {
                        transpose_tile(isa, dy, n, t0, tvalid, tw, &mut own);
                        &own[..]
                    }
                };
                acc.fill(0.0);
                let k0 = rows.start as u32;
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `new` admitted AVX-512 only on a CPU that has it (and AVX2); the
                    // tile holds 4·⌈N/4⌉ rows of 64 tokens; every listed row lies in
                    // `rows.start..rows.end` (the spans were cut to it), so `acc` (kr·64) holds
                    // it; `cw` has 4 weights per entry.
                    Isa::Avx512Vnni => unsafe { avx512::dx_tile(ytile, &spans, &kept.rows, &cw, k0, &mut acc) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as for AVX-512, with AVX2 + FMA (admitted by `new`) and 16-token tiles.
                    Isa::Avx2 => unsafe { avx2::dx_tile(ytile, &spans, &kept.rows, &cw, k0, &mut acc) },
                    _ => scalar::dx_tile(ytile, tw, &spans, &kept.rows, &cw, k0, &mut acc),
                }
                // `acc [kr][tw]` → `[tw][kr8]`, then each valid token's row to its place.
                store_dx_tile(isa, &acc, &mut rows_out, &out, t0, tvalid, k, &rows);
            }
        });
        Ok(())
    }

    /// `dW [K, N] = M ⊙ (x [T, K]ᵀ·dy [T, N])` on the kept blocks, zero elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        t: usize,
        mask: &[f32],
        kept: &KeptBlocks,
        dw: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let (k, n) = (kept.k, kept.n);
        if Some(mask.len()) != k.checked_mul(n) {
            return Err(kerr!("mask has {} elements, shape [K={k}, N={n}] needs {}", mask.len(), k * n));
        }
        check_len("activations", x.len(), t, k)?;
        check_len("output gradients", dy.len(), t, n)?;
        if Some(dw.len()) != k.checked_mul(n) {
            return Err(kerr!("the weight gradient has {} elements, shape [K={k}, N={n}] needs {}", dw.len(), k * n));
        }
        dw.fill(0.0);
        if t == 0 || kept.kept() == 0 {
            return Ok(());
        }
        let n4 = kept.blocks() * BLOCK;
        let plan = Plan::new(1, &kept.start, par.threads());
        let isa = self.isa;
        let group = match isa {
            _ if self.precision == Precision::Bf16 => 4,
            Isa::Avx512Vnni => 4,
            Isa::Avx2 => 2,
            Isa::Scalar => 1,
        };
        // Per kept (row, block) pair, its 4 channel sums so far; each task owns its blocks' pairs.
        let mut partial = Buf::<f32>::zeroed(kept.kept() * BLOCK);
        let sums_out = Out::new(&mut partial);
        // Token chunks, each transposed once into rows of the chunk's tokens; within a chunk, row
        // ranges whose transposed `x` stays in L2 while every block of a task reads it. Each pair
        // adds its chunk sums in chunk order, so the result does not depend on the tasks.
        let bf16_path = self.bf16_path();
        for t0 in (0..t).step_by(DW_CHUNK_TOKENS) {
            let tc = DW_CHUNK_TOKENS.min(t - t0);
            // The f32 operands, or the bf16 path's: the same rows rounded (consecutive tokens pair up).
            let (xt, yt, halves) = match bf16_path {
                None => (
                    transposed_rows(isa, &x[t0 * k..], tc, k, k, par),
                    transposed_rows(isa, &dy[t0 * n..], tc, n, n4, par),
                    None,
                ),
                Some(path) => (
                    Buf::<f32>::zeroed(0),
                    Buf::<f32>::zeroed(0),
                    Some((
                        path,
                        bf16::transposed_rows(path, &x[t0 * k..], tc, k, k, par),
                        bf16::transposed_rows(path, &dy[t0 * n..], tc, n, n4, par),
                    )),
                ),
            };
            let tp = tc.div_ceil(DW_TW) * DW_TW;
            let tiles = Tiles { xt: &xt, yt: &yt, k, n4, tp };
            let tiles_h = halves.as_ref().map(|(path, xh, yh)| (*path, TilesBf16 { xt: xh, yt: yh, k, n4, tp }));
            par.run(plan.tasks(), &|i| {
                let (_, blocks) = plan.task(i);
                let e0 = kept.start[blocks.start];
                // SAFETY: the plan gives each block, so each range of pairs, to one task.
                let partial = unsafe { sums_out.range(e0 * BLOCK, (kept.start[blocks.end] - e0) * BLOCK) };
                for k0 in (0..k).step_by(DW_CHUNK_ROWS) {
                    let k1 = (k0 + DW_CHUNK_ROWS).min(k);
                    for b in blocks.clone() {
                        let list = kept.rows_of(b);
                        let lo = list.partition_point(|&r| (r as usize) < k0);
                        let hi = list.partition_point(|&r| (r as usize) < k1);
                        for (gi, rows) in list[lo..hi].chunks(group).enumerate() {
                            let mut sums = [[0f32; BLOCK]; 4];
                            dw_group(isa, &tiles, tiles_h.as_ref(), rows, b, &mut sums);
                            let e = kept.start[b] + lo + gi * group - e0;
                            for (r, s) in sums[..rows.len()].iter().enumerate() {
                                for (p, v) in partial[(e + r) * BLOCK..(e + r + 1) * BLOCK].iter_mut().zip(s) {
                                    *p += v;
                                }
                            }
                        }
                    }
                }
            });
        }
        scatter_dw(kept, mask, &partial, &plan, dw, par);
        Ok(())
    }
}

/// One group's `sums[r][c]` (up to 4 kept rows of block `b` × its 4 channels, over the chunk's
/// tokens) on the kernel's path: the bf16 tiles when `th` is given, else the f32 ones on `isa`.
fn dw_group(
    isa: Isa,
    tiles: &Tiles,
    th: Option<&(bf16::Path, TilesBf16)>,
    rows: &[u32],
    b: usize,
    sums: &mut [[f32; BLOCK]; 4],
) {
    let cols = 0..tiles.tp;
    match (isa, th) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the AVX-512 BF16 path is only chosen on a CPU with AVX-512 F and BF16; bounds
        // are checked by `TilesBf16`.
        (_, Some((bf16::Path::Avx512, th))) => unsafe { avx512_bf16::dw_rows(th, rows, b, cols, sums) },
        (_, Some((_, th))) => bf16_ref::dw_rows(th, rows, b, cols, sums),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `MaskedLinear::with_precision` admitted AVX-512 only on a CPU that has it; rows,
        // block and token range are checked against the buffers by `Tiles`.
        (Isa::Avx512Vnni, None) => unsafe { avx512::dw_rows(tiles, rows, b, cols, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for AVX-512, with AVX2 + FMA (admitted by `MaskedLinear::with_precision`).
        (Isa::Avx2, None) => unsafe { avx2::dw_rows(tiles, rows, b, cols, sums) },
        _ => scalar::dw_rows(tiles, rows, b, cols, sums),
    }
}

/// `dW = M ⊙ partial` on the kept blocks (`partial`: 4 channel sums per kept pair, in list order;
/// `dW` is zero elsewhere already), each task writing its column blocks.
fn scatter_dw(kept: &KeptBlocks, mask: &[f32], partial: &[f32], plan: &Plan, dw: &mut [f32], par: &dyn Parallel) {
    let n = kept.n;
    let out = Out::new(dw);
    par.run(plan.tasks(), &|i| {
        let (_, blocks) = plan.task(i);
        for b in blocks {
            let j0 = b * BLOCK;
            let nc = BLOCK.min(n - j0);
            for (idx, &kk) in kept.rows_of(b).iter().enumerate() {
                let e = kept.start[b] + idx;
                let at = kk as usize * n + j0;
                // SAFETY: the plan gives each column block to one task, so this task alone writes
                // columns j0..j0 + nc; `Out::range` checks the bounds.
                let dst = unsafe { out.range(at, nc) };
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = mask[at + c] * partial[e * BLOCK + c];
                }
            }
        }
    });
}

/// Writes one task's input-gradient tile `acc [rows][tw]` (`tw` = `acc.len() / rows.len()`) to
/// tokens `t0..t0 + tvalid` of `dx [T, K]`, through `rows_out` (`tw × ⌈rows/8⌉·8`).
#[allow(clippy::too_many_arguments)]
fn store_dx_tile(
    isa: Isa,
    acc: &[f32],
    rows_out: &mut [f32],
    out: &Out<f32>,
    t0: usize,
    tvalid: usize,
    k: usize,
    rows: &Range<usize>,
) {
    let kr = rows.len();
    let (tw, kr8) = (acc.len() / kr, kr.div_ceil(8) * 8);
    transpose_tile(isa, acc, tw, 0, kr, kr8, rows_out);
    for tt in 0..tvalid {
        // SAFETY: the plan gives each (token, row range) to one task, so no other live range
        // overlaps this one; `Out::range` checks the bounds.
        unsafe { out.range((t0 + tt) * k + rows.start, kr) }.copy_from_slice(&rows_out[tt * kr8..tt * kr8 + kr]);
    }
}

/// `Ok` when the weights and the mask both hold `K·N` values.
fn check_weights(w: &[f32], mask: &[f32], k: usize, n: usize) -> Result<(), KernelError> {
    for (what, len) in [("weights", w.len()), ("mask", mask.len())] {
        if Some(len) != k.checked_mul(n) {
            return Err(kerr!("{what} have {len} elements, shape [K={k}, N={n}] needs {}", k * n));
        }
    }
    Ok(())
}

/// `x [T][cols]` as `⌈T/tw⌉` transposed tiles `[rows][tw]` (`rows ≥ cols`; rows past `cols` and
/// tokens past `T` zero), prepared in parallel.
fn transposed_tiles(
    isa: Isa,
    x: &[f32],
    t: usize,
    cols: usize,
    rows: usize,
    tw: usize,
    par: &dyn Parallel,
) -> Buf<f32> {
    let n_tiles = t.div_ceil(tw);
    let mut out = Buf::<f32>::zeroed(n_tiles * rows * tw);
    per_tile_chunk(&mut out, rows * tw, n_tiles, par, &|tiles: Range<usize>, chunk: &mut [f32]| {
        for (i, tile) in tiles.enumerate() {
            let t0 = tile * tw;
            transpose_tile(isa, x, cols, t0, tw.min(t - t0), tw, &mut chunk[i * rows * tw..(i + 1) * rows * tw]);
        }
    });
    out
}

/// Tokens `0..t` of `x [·][cols]` transposed into rows, `[rows][Tp]` (`Tp` = `t` rounded up to
/// 64; rows past `cols` and tokens past `t` zero): 64-token tiles transposed in parallel, each row
/// of a tile copied to its place.
fn transposed_rows(isa: Isa, x: &[f32], t: usize, cols: usize, rows: usize, par: &dyn Parallel) -> Buf<f32> {
    let tp = t.div_ceil(DW_TW) * DW_TW;
    let mut out = Buf::<f32>::zeroed(rows * tp);
    let parts = split_even(tp / DW_TW, if par.threads() <= 1 { 1 } else { par.threads() });
    let dst = Out::new(&mut out);
    par.run(parts.len(), &|i| {
        let mut tile = Buf::<f32>::zeroed(cols * DW_TW);
        for ti in parts[i].clone() {
            let t0 = ti * DW_TW;
            transpose_tile(isa, x, cols, t0, DW_TW.min(t - t0), DW_TW, &mut tile);
            for (r, row) in tile.chunks_exact(DW_TW).enumerate() {
                // SAFETY: each task owns its tiles' token columns, so no other live range overlaps
                // this one; `Out::range` checks the bounds.
                unsafe { dst.range(r * tp + t0, DW_TW) }.copy_from_slice(row);
            }
        }
    });
    out
}

/// The transposed operands of the weight gradient for one token chunk: `xt [K][Tp]`,
/// `yt [4·⌈N/4⌉][Tp]`, in f32, or in bf16 (`E = u16`, where consecutive tokens of a row are the
/// pairs the products take).
pub(crate) struct Tiles<'a, E = f32> {
    xt: &'a [E],
    yt: &'a [E],
    k: usize,
    n4: usize,
    /// Tokens per row (a multiple of 64).
    tp: usize,
}

impl<E> Tiles<'_, E> {
    /// Offsets of row `r` of `xt` and of channel row `4b` of `yt`, checking them and the token
    /// range `cols` (64-aligned, inside a row) against the buffers.
    fn offsets(&self, r: u32, b: usize, cols: &Range<usize>) -> (usize, usize) {
        assert!((r as usize) < self.k && b * BLOCK + BLOCK <= self.n4, "row or block outside the tiles");
        assert!(cols.start.is_multiple_of(DW_TW) && cols.end.is_multiple_of(DW_TW) && cols.end <= self.tp);
        assert!(
            self.xt.len() >= self.k * self.tp && self.yt.len() >= self.n4 * self.tp && self.tp.is_multiple_of(DW_TW)
        );
        (r as usize * self.tp, b * BLOCK * self.tp)
    }
}
