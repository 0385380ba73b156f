//! Block-sparse int8 linear `y = epi(dequant(q(x)·W) + bias) + residual`: u8 activations × i8
//! weights → exact i32 → f32, with per-output-channel weight scales, the activation zero-point
//! correction, bias, GELU and residual fused into the epilogue.
//!
//! The weights are packed once into [`Blocks`](crate::blocks) (4-channel blocks of 4-index groups,
//! one format for every sparsity pattern). A call splits the work into tasks of (token tiles ×
//! channel blocks) balanced by stored groups ([`Plan`]). Each token tile is quantized and
//! transposed once into `[K][TW]` (tokens contiguous, padded with the zero point): by the task
//! itself, just before use, when tasks own whole tiles, else for all tiles up front. Then the ISA
//! kernel chosen at creation runs: AVX-512 VNNI (`vpdpbusd`, 64-token tiles), AVX2 (`vpmaddwd` on
//! i16-widened operands, exact, 16-token tiles) or portable scalar. On AVX-512 VNNI a layer whose
//! zeros come in aligned input quads per channel (SparseML's `block4`, `[1, 4]`) is packed as
//! per-channel quad lists instead (`blocks::pack_quads`) when that stores under half the weights, and
//! its tiles are interleaved into quads once, so the kernel multiplies each channel's own quads only. The kernel leaves i32
//! accumulators token-major; the safe epilogue (`epilogue.rs`) turns them into f32 rows of `y`.
//! All scratch is per call: the layer holds no mutable state.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::blocks::{pack_blocks, pack_quads, validate_weight_shape, Blocks, BLOCK, GROUP, GW};
use crate::cpu::Isa;
use crate::epilogue::{epilogue_i8, store_i32, EpiI8};
use crate::error::{check_len, kerr};
use crate::par::Parallel;
use crate::plan::{per_tile_chunk, Out, Plan, BLOCK_STEP};
use crate::quant::{dynamic_params_from_range, min_max_with_zero, prep_tile, Rows};
use crate::scratch::Buf;

pub use crate::blocks::{PackStats, Pattern, DENSE_ABOVE, DENSE_BELOW_SPARSITY};
pub use crate::epilogue::{Epilogue, Requant};
pub use crate::error::KernelError;
pub use crate::quant::{quantize_u8, ActQuant};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod packed;
mod scalar;

/// `Σ_k w[k, j]` for each output channel `j` (padding weights are zero).
fn column_sums(b: &Blocks<i8>) -> Vec<i32> {
    let mut colsum = vec![0i32; b.n];
    for blk in 0..b.group_start.len() - 1 {
        for g in b.group_start[blk]..b.group_start[blk + 1] {
            for c in 0..BLOCK {
                let j = blk * BLOCK + c;
                if j < b.n {
                    colsum[j] +=
                        b.w[g * GW + c * GROUP..g * GW + (c + 1) * GROUP].iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
    }
    colsum
}

/// ONNX `DynamicQuantizeLinear`'s scale and zero point for `x` (as ONNX Runtime computes them), on
/// the instruction set `SPARSEC_ISA` forces, else the best this CPU has (every ISA gives the same
/// values; an unknown or unsupported `SPARSEC_ISA` gets the portable code). A layer's
/// [`ActQuant::Dynamic`] runs on the layer's own ISA.
pub fn dynamic_quant_params(x: &[f32]) -> (f32, u8) {
    dynamic_quant_params_on(Isa::requested().unwrap_or(Isa::Scalar), x)
}

/// [`dynamic_quant_params`] on `isa`.
fn dynamic_quant_params_on(isa: Isa, x: &[f32]) -> (f32, u8) {
    let (mn, mx) = match isa {
        // SAFETY: the guard checks that this CPU has AVX2, the only feature the function enables.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if Isa::Avx2.supported() => unsafe { avx2::min_max_with_zero(x) },
        _ => min_max_with_zero(x),
    };
    dynamic_params_from_range(mn, mx)
}

/// The packed activations of one call.
enum Acts {
    U8(Buf<u8>),
    I16(Buf<i16>),
}

/// A block-sparse int8 linear layer, packed once; `Send + Sync` and immutable after creation.
pub struct LinearI8 {
    blocks: Blocks<i8>,
    /// The weights widened to i16 for the AVX2 kernel (empty on other ISAs).
    w16: Vec<i16>,
    w_scale: Vec<f32>,
    bias: Vec<f32>,
    /// `Σ_k w[k, j]`.
    colsum: Vec<i32>,
    /// An integer bias added to the exact accumulators (empty: none).
    int_bias: Vec<i32>,
    requant: Option<Requant>,
    isa: Isa,
    /// With per-channel quad lists (`pack_quads`, AVX-512 only): each channel's first quad in
    /// `blocks.idx` (`N` rounded up to whole blocks, plus one); the activation tiles are
    /// interleaved into quads before the kernel.
    quads: Option<Vec<usize>>,
}

impl fmt::Debug for LinearI8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearI8").field("isa", &self.isa).field("stats", &self.blocks.stats).finish_non_exhaustive()
    }
}

impl LinearI8 {
    /// `w`: int8 weights `[K, N]` row-major (`y = x·W`, weight zero point 0); `w_scale`: `N`
    /// per-channel scales or one; `bias`: optional `[N]`. Fails on an ISA this CPU lacks.
    pub fn new(
        w: &[i8],
        k: usize,
        n: usize,
        w_scale: &[f32],
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> Result<LinearI8, KernelError> {
        validate_weight_shape(w.len(), k, n)?;
        let union = pack_blocks(w, k, n);
        // On AVX-512 VNNI, `[1, 4]` (and any) zeros whose per-channel quads store well under half
        // the block union's weights run on the quad kernel: it loads one activation register per
        // `vpdpbusd` where the union kernel loads one per four, so a stored weight costs it about
        // twice as much (`kernel_bench --pattern 1x4`, 384→1536: 1.13x the union's time at 50%,
        // 0.94x at 90%, where it stores 0.6x and 0.42x as many).
        let (blocks, quads) = Self::layout(isa, union, |_| Cow::Borrowed(w));
        Self::finish(blocks, quads, w_scale, bias, isa)
    }

    /// A layer from the stored form of its weights ([`packed`], e.g. `ai.sparsec::SparseLinear`'s
    /// `weight_format = "block4x1"` initializer): the blocks are copied, not searched again (on
    /// AVX-512 VNNI the per-channel quad lists are derived from them as [`LinearI8::new`] does), and
    /// compute exactly what [`LinearI8::new`] on the dense `W` computes. A malformed stored form
    /// (wrong length, an index `≥ K`, a non-zero padding weight) is an error.
    pub fn from_packed(
        packed: &[i8],
        k: usize,
        n: usize,
        w_scale: &[f32],
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> Result<LinearI8, KernelError> {
        let union = packed::from_bytes(packed, k, n)?;
        let (blocks, quads) = Self::layout(isa, union, |b| Cow::Owned(packed::dense(b)));
        Self::finish(blocks, quads, w_scale, bias, isa)
    }

    /// The block union `union` of `W`, or on AVX-512 VNNI `W`'s per-channel quad lists (with each
    /// channel's first quad) where they store under half the union's weights. `dense` gives `W`,
    /// asked for only on AVX-512 VNNI.
    fn layout<'w>(
        isa: Isa,
        union: Blocks<i8>,
        dense: impl FnOnce(&Blocks<i8>) -> Cow<'w, [i8]>,
    ) -> (Blocks<i8>, Option<Vec<usize>>) {
        if isa != Isa::Avx512Vnni {
            return (union, None);
        }
        let w = dense(&union);
        match pack_quads(&w, union.k, union.n, &union.stats) {
            Some((q, chan_start)) if 2 * q.stats.stored < union.stats.stored => (q, Some(chan_start)),
            _ => (union, None),
        }
    }

    fn finish(
        mut blocks: Blocks<i8>,
        quads: Option<Vec<usize>>,
        w_scale: &[f32],
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> Result<LinearI8, KernelError> {
        let n = blocks.n;
        if !isa.supported() || (isa == Isa::Avx512Vnni && !Isa::Avx2.supported()) {
            return Err(kerr!("instruction set {isa} is not supported by this CPU"));
        }
        let w_scale = match w_scale.len() {
            1 => vec![w_scale[0]; n],
            l if l == n => w_scale.to_vec(),
            l => return Err(kerr!("weight scale has {l} elements, expected 1 or N = {n}")),
        };
        if let Some(j) = w_scale.iter().position(|s| !s.is_finite()) {
            return Err(kerr!("weight scale of channel {j} is {}", w_scale[j]));
        }
        let bias = match bias {
            None => vec![0.0; n],
            Some(b) if b.len() == n => b.to_vec(),
            Some(b) => return Err(kerr!("bias has {} elements, expected N = {n}", b.len())),
        };
        let colsum = match &quads {
            None => column_sums(&blocks),
            Some(chan_start) => (0..n)
                .map(|j| blocks.w[chan_start[j] * GROUP..chan_start[j + 1] * GROUP].iter().map(|&v| v as i32).sum())
                .collect(),
        };
        let w16 = if isa == Isa::Avx2 { blocks.w.iter().map(|&v| v as i16).collect() } else { Vec::new() };
        if isa == Isa::Avx2 {
            blocks.stats.bytes += w16.len() * 2 - blocks.w.len();
            blocks.w = Vec::new();
        }
        Ok(LinearI8 { blocks, w16, w_scale, bias, colsum, int_bias: Vec::new(), requant: None, isa, quads })
    }

    /// The layer with its output requantized before the bias ([`Requant`]: ONNX `QLinearMatMul`).
    pub fn with_requant(mut self, requant: Requant) -> LinearI8 {
        self.requant = Some(requant);
        self
    }

    /// The layer with an int32 bias `[N]` added to the exact accumulators before the rescale, as
    /// an ONNX `Add` of an int32 bias between `MatMulInteger` and its `Cast` computes it (i32
    /// arithmetic wraps on overflow, as ONNX Runtime's does).
    pub fn with_int_bias(mut self, bias: &[i32]) -> Result<LinearI8, KernelError> {
        if bias.len() != self.n() {
            return Err(kerr!("integer bias has {} elements, expected N = {}", bias.len(), self.n()));
        }
        self.int_bias = bias.to_vec();
        Ok(self)
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

    /// Tokens per kernel tile on this ISA.
    fn tw(&self) -> usize {
        match self.isa {
            Isa::Avx2 => 16,
            _ => 64,
        }
    }

    /// Exact integer product `acc[t·N + j] = Σ_k xq[t·K + k]·w[k·N + j]` (u8 × i8 → i32).
    pub fn matmul_u8_i32(&self, xq: &[u8], t: usize, acc: &mut [i32], par: &dyn Parallel) -> Result<(), KernelError> {
        let (k, n) = (self.k(), self.n());
        check_len("activations", xq.len(), t, k)?;
        check_len("output", acc.len(), t, n)?;
        if t == 0 {
            return Ok(());
        }
        let out = Out::new(acc);
        self.run(Rows::U8(xq), t, par, &|a, ld, t0, tv, j0, nc| store_i32(a, ld, t0, tv, j0, nc, n, &out));
        Ok(())
    }

    /// `x`: f32 `[T, K]`; `y[t, j] = epi((s_x·s_w[j])·(acc[t, j] − zp_x·colsum_w[j] + ib[j]) + bias[j]) + residual[t, j]`
    /// with `acc` the exact product of `q = sat_u8(round_half_even(x / s_x) + zp_x)` and `W`, `ib`
    /// the integer bias ([`with_int_bias`](LinearI8::with_int_bias), else 0), the integer sum in
    /// i32 and converted to f32 once (with [`Requant`], the product is requantized before the bias).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        t: usize,
        act: ActQuant,
        epilogue: Epilogue,
        residual: Option<&[f32]>,
        y: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let (k, n) = (self.k(), self.n());
        check_len("activations", x.len(), t, k)?;
        check_len("output", y.len(), t, n)?;
        if let Some(r) = residual {
            check_len("residual", r.len(), t, n)?;
        }
        if t == 0 {
            return Ok(());
        }
        let (scale, zp) = self.act_params(act, x)?;
        let rows = Rows::F32 { x, scale, zp };
        let (mult, corr) = self.epi_consts(scale, zp);
        let e = self.epi(&mult, &corr, epilogue, residual);
        let out = Out::new(y);
        self.run(rows, t, par, &|a, ld, t0, tv, j0, nc| self.emit(&e, a, ld, t0, tv, j0, nc, &out));
        Ok(())
    }

    /// The quantization parameters of `x` under `act`.
    fn act_params(&self, act: ActQuant, x: &[f32]) -> Result<(f32, u8), KernelError> {
        match act {
            ActQuant::Static { scale, zero_point } => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(kerr!("activation scale {scale} is not a finite positive number"));
                }
                Ok((scale, zero_point))
            }
            ActQuant::Dynamic => Ok(dynamic_quant_params_on(self.isa, x)),
        }
    }

    /// The epilogue's per-channel multiplier `s_x·s_w[j]` (over the requantization scale) and
    /// integer correction `zp_x·colsum_w[j] − int_bias[j]` for activations quantized with `scale`, `zp`.
    fn epi_consts(&self, scale: f32, zp: u8) -> (Vec<f32>, Vec<i32>) {
        let mult: Vec<f32> = match self.requant {
            Some(r) if !r.divide => self.w_scale.iter().map(|s| scale * s / r.scale).collect(),
            _ => self.w_scale.iter().map(|s| scale * s).collect(),
        };
        let mut corr: Vec<i32> = self.colsum.iter().map(|c| zp as i32 * c).collect();
        for (c, b) in corr.iter_mut().zip(&self.int_bias) {
            *c = c.wrapping_sub(*b);
        }
        (mult, corr)
    }

    fn epi<'a>(
        &'a self,
        mult: &'a [f32],
        corr: &'a [i32],
        epilogue: Epilogue,
        residual: Option<&'a [f32]>,
    ) -> EpiI8<'a> {
        EpiI8 { mult, corr, bias: &self.bias, gelu: epilogue == Epilogue::Gelu, residual, requant: self.requant }
    }

    /// Runs the epilogue `e` on one accumulator tile into `out` (rows of N).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn emit(&self, e: &EpiI8<'_>, a: &[i32], ld: usize, t0: usize, tv: usize, j0: usize, nc: usize, out: &Out<f32>) {
        let n = self.n();
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `finish` admitted AVX2 only on a CPU that has it (with FMA, `cpu.rs`).
            Isa::Avx2 => unsafe { avx2::epilogue(e, a, ld, t0, tv, j0, nc, n, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `finish` admitted AVX-512 VNNI only on a CPU that has it with AVX-512 F/BW
            // (`cpu.rs`) and AVX2 with FMA.
            Isa::Avx512Vnni => unsafe { avx512::epilogue(e, a, ld, t0, tv, j0, nc, n, out) },
            _ => epilogue_i8(e, a, ld, t0, tv, j0, nc, n, out),
        }
    }

    /// Quantizes (or copies) and transposes token tile `tile` into `out` (`[K][TW]`).
    fn prep_one(&self, rows: Rows<'_>, t: usize, tile: usize, rowbuf: &mut [u8], out: ActsMut<'_>) {
        let (k, tw) = (self.k(), self.tw());
        let t0 = tile * tw;
        let tvalid = tw.min(t - t0);
        match (self.isa, out) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `finish` admitted AVX2 only on a CPU that has it; `rowbuf` holds 16·K (every
            // caller allocates it so) and `out` is one tile of K·16 (`acts` and `run`).
            (Isa::Avx2, ActsMut::I16(out)) => unsafe { avx2::prep_i16(rows, k, t0, tvalid, rowbuf, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `finish` admitted AVX-512 only on a CPU that also has AVX2; `rowbuf` holds
            // 16·K and `out` is one tile of K·64, 64 a multiple of 16; `interleave_quads` needs
            // AVX-512 F/BW, which VNNI's admission implies.
            (Isa::Avx512Vnni, ActsMut::U8(out)) => unsafe {
                avx2::prep_u8(rows, k, t0, tvalid, tw, rowbuf, out);
                if self.quads.is_some() {
                    // `pack_quads` made the lists only for K a multiple of 4.
                    avx512::interleave_quads(out, k)
                }
            },
            (_, ActsMut::U8(out)) => prep_tile(rows, k, t0, tvalid, tw, rowbuf, out),
            (_, ActsMut::I16(out)) => prep_tile(rows, k, t0, tvalid, tw, rowbuf, out),
        }
    }

    /// A zeroed activation buffer of `tiles` tiles in this ISA's element type.
    fn acts(&self, tiles: usize) -> Acts {
        let len = tiles * self.k() * self.tw();
        match self.isa {
            Isa::Avx2 => Acts::I16(Buf::zeroed(len)),
            _ => Acts::U8(Buf::zeroed(len)),
        }
    }

    /// Quantizes/transposes every token tile into one `[tile][K][TW]` buffer, in parallel.
    fn prepare(&self, rows: Rows<'_>, t: usize, par: &dyn Parallel) -> Acts {
        let (k, tw) = (self.k(), self.tw());
        let n_tiles = t.div_ceil(tw);
        let mut acts = self.acts(n_tiles);
        let prep = |tiles: Range<usize>, mut chunk: ActsMut<'_>| {
            let mut rowbuf = Buf::<u8>::zeroed(16 * k);
            for (i, tile) in tiles.enumerate() {
                self.prep_one(rows, t, tile, &mut rowbuf, chunk.tile(i, k * tw));
            }
        };
        match &mut acts {
            Acts::U8(xt) => per_tile_chunk(xt, k * tw, n_tiles, par, &|r, c| prep(r, ActsMut::U8(c))),
            Acts::I16(xt) => per_tile_chunk(xt, k * tw, n_tiles, par, &|r, c| prep(r, ActsMut::I16(c))),
        }
        acts
    }

    /// Runs the kernel over the plan; `epi(acc, ld, t0, tvalid, j0, ncols)` consumes each
    /// token-major accumulator tile. When every task owns whole token tiles (all channel blocks),
    /// each task prepares its tiles just before using them (hot in cache); otherwise all tiles are
    /// prepared first and shared.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        rows: Rows<'_>,
        t: usize,
        par: &dyn Parallel,
        epi: &(dyn Fn(&[i32], usize, usize, usize, usize, usize) + Sync),
    ) {
        let (k, tw) = (self.k(), self.tw());
        let plan = Plan::new(t.div_ceil(tw), &self.blocks.group_start, par.threads());
        let shared = (plan.blocks.len() > 1).then(|| self.prepare(rows, t, par));
        par.run(plan.tasks(), &|i| {
            let (tiles, blocks) = plan.task(i);
            let mut acc = Buf::<i32>::zeroed(tw * BLOCK_STEP * BLOCK);
            let mut own = shared.is_none().then(|| (self.acts(1), Buf::<u8>::zeroed(16 * k)));
            for tile in tiles {
                let acts = match (&shared, &mut own) {
                    (Some(Acts::U8(xt)), _) => ActsRef::U8(&xt[tile * k * tw..(tile + 1) * k * tw]),
                    (Some(Acts::I16(xt)), _) => ActsRef::I16(&xt[tile * k * tw..(tile + 1) * k * tw]),
                    (None, Some((buf, rowbuf))) => {
                        self.prep_one(rows, t, tile, rowbuf, buf.as_mut());
                        buf.as_ref()
                    }
                    (None, None) => unreachable!("a task without shared activations owns a buffer"),
                };
                let t0 = tile * tw;
                self.tile_blocks(acts, blocks.clone(), t0, tw.min(t - t0), &mut acc, epi);
            }
        });
    }

    /// Multiplies one prepared token tile (tokens `t0..t0 + tvalid`) by channel blocks `blocks`,
    /// [`BLOCK_STEP`] blocks at a time, handing each accumulator tile to `epi` (as in [`run`](Self::run)).
    #[allow(clippy::type_complexity)]
    fn tile_blocks(
        &self,
        acts: ActsRef<'_>,
        blocks: Range<usize>,
        t0: usize,
        tvalid: usize,
        acc: &mut [i32],
        epi: &(dyn Fn(&[i32], usize, usize, usize, usize, usize) + Sync),
    ) {
        let (n, tw) = (self.n(), self.tw());
        let b = &self.blocks;
        for bs in (blocks.start..blocks.end).step_by(BLOCK_STEP) {
            let be = (bs + BLOCK_STEP).min(blocks.end);
            let ld = (be - bs) * BLOCK;
            let acc = &mut acc[..tw * ld];
            match (self.isa, acts) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `finish` admitted AVX-512 VNNI only on a CPU that has it; `xt` is
                // one tile of K·64 interleaved by `prep_one`; `pack_quads` made `chan_start`
                // (4 per block, plus one, non-decreasing) and every quad start `k0` with
                // `k0 + 4 ≤ K`, 4 weights per quad; `acc` was cut to 64·ld.
                (Isa::Avx512Vnni, ActsRef::U8(xt)) if self.quads.is_some() => unsafe {
                    let chan_start = self.quads.as_deref().unwrap_or_default();
                    avx512::tile_quads(xt, chan_start, &b.idx, &b.w, bs..be, acc)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `finish` admitted AVX-512 VNNI only on a CPU that has it; `xt` is
                // one tile of K·64 and every stored index is < K (`pack_blocks` takes
                // them from 0..K, `packed::from_bytes` rejects any other); the weights
                // hold 16 per group; `acc` was cut to 64·ld.
                (Isa::Avx512Vnni, ActsRef::U8(xt)) => unsafe {
                    avx512::tile(xt, &b.group_start, &b.idx, &b.w, bs..be, acc)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as for AVX-512 with AVX2 (admitted by `finish`), 16-token tiles of
                // K·16 and the i16 weights `w16`, 16 per group.
                (Isa::Avx2, ActsRef::I16(xt)) => unsafe {
                    avx2::tile(xt, &b.group_start, &b.idx, &self.w16, bs..be, acc)
                },
                (_, ActsRef::U8(xt)) => scalar::tile(xt, tw, &b.group_start, &b.idx, &b.w, bs..be, acc),
                (_, ActsRef::I16(_)) => unreachable!("i16 activations are only prepared for AVX2"),
            }
            let j0 = bs * BLOCK;
            epi(acc, ld, t0, tvalid, j0, (be * BLOCK).min(n) - j0);
        }
    }
}

/// Views of [`Acts`].
#[derive(Clone, Copy)]
enum ActsRef<'a> {
    U8(&'a [u8]),
    I16(&'a [i16]),
}

enum ActsMut<'a> {
    U8(&'a mut [u8]),
    I16(&'a mut [i16]),
}

impl ActsMut<'_> {
    /// Tile `i` of `len` elements.
    fn tile(&mut self, i: usize, len: usize) -> ActsMut<'_> {
        match self {
            ActsMut::U8(v) => ActsMut::U8(&mut v[i * len..(i + 1) * len]),
            ActsMut::I16(v) => ActsMut::I16(&mut v[i * len..(i + 1) * len]),
        }
    }
}

impl Acts {
    fn as_ref(&self) -> ActsRef<'_> {
        match self {
            Acts::U8(v) => ActsRef::U8(v),
            Acts::I16(v) => ActsRef::I16(v),
        }
    }

    fn as_mut(&mut self) -> ActsMut<'_> {
        match self {
            Acts::U8(v) => ActsMut::U8(v),
            Acts::I16(v) => ActsMut::I16(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 transposing passes give the same `[K][TW]` layout as the portable [`prep_tile`]
    /// (the VNNI kernel's u8 layout is prepared by AVX2 code, so it is checked on AVX2-only CPUs
    /// too), and the AVX2 min/max the portable one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_activation_passes_match_the_portable_one() {
        if !Isa::Avx2.supported() {
            eprintln!("SKIPPED: no AVX2");
            return;
        }
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed
        };
        for (k, t) in [(1, 1), (31, 17), (32, 64), (70, 100), (384, 65)] {
            let x: Vec<f32> = (0..t * k)
                .map(|i| match i % 97 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => -1e30,
                    _ => (next() % 20_000) as f32 / 1000.0 - 10.0,
                })
                .collect();
            let xq: Vec<u8> = (0..t * k).map(|_| next() as u8).collect();
            // SAFETY: this test returned early unless the CPU has AVX2.
            assert_eq!(unsafe { avx2::min_max_with_zero(&x) }, min_max_with_zero(&x), "K={k} T={t}");
            for rows in [Rows::F32 { x: &x, scale: 0.037, zp: 117 }, Rows::U8(&xq)] {
                for tw in [16, 64] {
                    for t0 in (0..t).step_by(tw) {
                        let tvalid = tw.min(t - t0);
                        let mut want = vec![0u8; k * tw];
                        prep_tile(rows, k, t0, tvalid, tw, &mut vec![0; k], &mut want);
                        let mut rowbuf = vec![0u8; 16 * k];
                        let mut got = vec![0u8; k * tw];
                        // SAFETY: this test returned early unless the CPU has AVX2.
                        unsafe { avx2::prep_u8(rows, k, t0, tvalid, tw, &mut rowbuf, &mut got) };
                        assert_eq!(got, want, "u8 K={k} T={t} t0={t0} tw={tw}");
                        if tw == 16 {
                            let mut got16 = vec![0i16; k * 16];
                            // SAFETY: this test returned early unless the CPU has AVX2.
                            unsafe { avx2::prep_i16(rows, k, t0, tvalid, &mut rowbuf, &mut got16) };
                            assert!(got16.iter().zip(&want).all(|(&a, &b)| a == b as i16), "i16 K={k} t0={t0}");
                        }
                    }
                }
            }
        }
    }
}
