//! Block-sparse int8 linear `y = epi(dequant(q(x)·W) + bias) + residual`: u8 activations × i8
//! weights → exact i32 → f32, with per-output-channel weight scales, the activation zero-point
//! correction, bias, GELU and residual fused into the epilogue.
//!
//! One packed format serves every sparsity pattern ([`Blocks`]): output channels in blocks of 4;
//! per block, the sorted input indices that are non-zero in any of its channels, in groups of 4
//! (the last padded with zero weights at a valid index), each group holding its 4 indices and the
//! 16 weights `[channel][k]`. `[4,1]` masks pack without padding; `[1,4]` and unstructured masks
//! pack their per-block union; above [`DENSE_ABOVE`] stored density every index is stored
//! (sequential indices, dense through the same kernel).
//!
//! A call splits the work into tasks of (token tiles × channel blocks) balanced by stored groups.
//! Each token tile is quantized and transposed once into `[K][TW]` (tokens contiguous, padded with
//! the zero point): by the task itself, just before use, when tasks own whole tiles, else for all
//! tiles up front. Then the ISA kernel chosen at creation runs: AVX-512 VNNI (`vpdpbusd`, 64-token
//! tiles), AVX2 (`vpmaddwd` on i16-widened operands, exact, 16-token tiles) or portable scalar.
//! The kernel leaves i32 accumulators token-major; the safe epilogue turns them into f32 rows of
//! `y`. All scratch is per call: the layer holds no mutable state.

use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use crate::gelu::gelu;
use crate::isa::Isa;
use crate::par::Parallel;
use crate::scratch::Buf;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod packed;
mod scalar;

/// How activations are quantized to u8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// ONNX `QuantizeLinear` with a fixed scale and zero point.
    Static { scale: f32, zero_point: u8 },
    /// ONNX `DynamicQuantizeLinear`: range over the whole input, including 0;
    /// `scale = (max − min)/255` (1 when the range is empty), `zp = sat(round_half_even(−min/scale))`.
    Dynamic,
}

/// What runs on each output after scale and bias, before the residual add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// The exact erf GELU ([`crate::gelu::gelu`]).
    Gelu,
}

/// Requantization of the output to an integer type and back, as ONNX `QLinearMatMul` followed by
/// `DequantizeLinear` computes it: `q = clamp(round_half_even(acc · (s_x·s_w[j]) / scale), lo, hi)`
/// with `lo`, `hi` the output type's range minus the zero point, then `y = q · scale + bias`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requant {
    pub scale: f32,
    pub lo: f32,
    pub hi: f32,
}

impl Requant {
    /// For an output of `u8` (`signed = false`) or `i8` with zero point `zero_point`.
    pub fn new(scale: f32, zero_point: i32, signed: bool) -> Result<Requant, KernelError> {
        let (qmin, qmax) = if signed { (-128, 127) } else { (0, 255) };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(kerr!("output scale {scale} is not a finite positive number"));
        }
        if !(qmin..=qmax).contains(&zero_point) {
            return Err(kerr!("output zero point {zero_point} is outside {qmin}..={qmax}"));
        }
        Ok(Requant { scale, lo: (qmin - zero_point) as f32, hi: (qmax - zero_point) as f32 })
    }
}

/// A shape or argument mismatch found by a kernel's safe entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError(pub String);

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KernelError {}

macro_rules! kerr {
    ($($t:tt)*) => { KernelError(format!($($t)*)) };
}
pub(crate) use kerr;

/// The zero structure detected in a weight matrix `W [K, N]` (`y = x·W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// 4 consecutive output channels share each zero input index (SparseML `mask_type: [4, 1]`).
    Block4x1,
    /// Each output channel's zeros come in aligned runs of 4 inputs (SparseML `block4`, `[1, 4]`).
    Block1x4,
    /// Zeros without block structure.
    Unstructured,
    /// Fewer than [`DENSE_BELOW_SPARSITY`] of the weights are zero.
    Dense,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Block4x1 => "[4,1]",
            Pattern::Block1x4 => "[1,4]",
            Pattern::Unstructured => "unstructured",
            Pattern::Dense => "dense",
        })
    }
}

/// What packing found and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackStats {
    pub pattern: Pattern,
    pub k: usize,
    pub n: usize,
    /// Non-zero weights of `W`.
    pub nonzeros: usize,
    /// Weights stored and multiplied, padding included (16 per group).
    pub stored: usize,
    /// Bytes of the packed weights, indices and group offsets.
    pub bytes: usize,
}

impl PackStats {
    /// `nonzeros / (K·N)`.
    pub fn density(&self) -> f64 {
        self.nonzeros as f64 / (self.k * self.n) as f64
    }

    /// `stored / (K·4·⌈N/4⌉)`: the share of a dense layer's multiplies the kernel performs (on
    /// AVX2 the int8 kernel beats ONNX Runtime's dense int8 below about 0.5; see BENCHMARKS.md).
    pub fn stored_density(&self) -> f64 {
        self.stored as f64 / (self.k * self.n.div_ceil(BLOCK) * BLOCK) as f64
    }
}

/// Output channels per block.
pub(crate) const BLOCK: usize = 4;
/// Input indices per group.
pub(crate) const GROUP: usize = 4;
/// Weights per group.
pub(crate) const GW: usize = BLOCK * GROUP;
/// Above this stored density (`stored / (4·⌈N/4⌉·K)`) every input index is stored.
pub const DENSE_ABOVE: f64 = 0.85;
/// Below this fraction of zeros a matrix is reported as [`Pattern::Dense`].
pub const DENSE_BELOW_SPARSITY: f64 = 0.05;
/// A pattern is `[4,1]` (`[1,4]`) when at least this fraction of the zeros lie in all-zero blocks.
const BLOCK_ZERO_SHARE: f64 = 0.95;
/// Channel blocks a kernel call covers before its epilogue runs (bounds the accumulator tile).
pub(crate) const BLOCK_STEP: usize = 16;

/// Weights packed in 4-channel blocks of 4-index groups (see the module doc).
pub(crate) struct Blocks<W> {
    pub k: usize,
    pub n: usize,
    /// Groups of block `b`: `group_start[b]..group_start[b + 1]`.
    pub group_start: Vec<usize>,
    /// 4 input indices per group, each `< k`.
    pub idx: Vec<u32>,
    /// 16 weights per group, `[channel][index-in-group]`; zero for padding and channels `≥ n`.
    pub w: Vec<W>,
    pub stats: PackStats,
}

pub(crate) fn validate_weight_shape(len: usize, k: usize, n: usize) -> Result<(), KernelError> {
    if k == 0 || n == 0 {
        return Err(kerr!("weight shape [{k}, {n}] is empty"));
    }
    if k > u32::MAX as usize {
        return Err(kerr!("weight K = {k} exceeds {}", u32::MAX));
    }
    if k.checked_mul(n) != Some(len) {
        return Err(kerr!("weight has {len} elements, shape [K={k}, N={n}] needs {}", k * n));
    }
    Ok(())
}

/// The zero structure of `W [K, N]`, given which entries are non-zero.
pub(crate) fn detect_pattern(nz: &[bool], k: usize, n: usize) -> Pattern {
    let zeros = nz.iter().filter(|&&b| !b).count();
    if (zeros as f64) < DENSE_BELOW_SPARSITY * (k * n) as f64 {
        return Pattern::Dense;
    }
    let mut in_4x1 = 0;
    for kk in 0..k {
        for b in (0..n).step_by(BLOCK) {
            let cols = b..(b + BLOCK).min(n);
            if cols.clone().all(|j| !nz[kk * n + j]) {
                in_4x1 += cols.len();
            }
        }
    }
    let mut in_1x4 = 0;
    for j in 0..n {
        for a in (0..k).step_by(GROUP) {
            let rows = a..(a + GROUP).min(k);
            if rows.clone().all(|kk| !nz[kk * n + j]) {
                in_1x4 += rows.len();
            }
        }
    }
    let share = |c: usize| c as f64 >= BLOCK_ZERO_SHARE * zeros as f64;
    if share(in_4x1) {
        Pattern::Block4x1
    } else if share(in_1x4) {
        Pattern::Block1x4
    } else {
        Pattern::Unstructured
    }
}

/// Packs `W [K, N]` row-major into [`Blocks`].
pub(crate) fn pack_blocks<W: Copy + Default + PartialEq>(w: &[W], k: usize, n: usize) -> Blocks<W> {
    let nz: Vec<bool> = w.iter().map(|v| *v != W::default()).collect();
    let pattern = detect_pattern(&nz, k, n);
    let n_blocks = n.div_ceil(BLOCK);
    let used: Vec<Vec<u32>> = (0..n_blocks)
        .map(|b| {
            (0..k)
                .filter(|&kk| (b * BLOCK..(b * BLOCK + BLOCK).min(n)).any(|j| nz[kk * n + j]))
                .map(|kk| kk as u32)
                .collect()
        })
        .collect();
    let union_groups: usize = used.iter().map(|u| u.len().div_ceil(GROUP)).sum();
    let dense = union_groups as f64 > DENSE_ABOVE * (n_blocks * k.div_ceil(GROUP)) as f64;
    let all: Vec<u32> = (0..k as u32).collect();

    let mut group_start = Vec::with_capacity(n_blocks + 1);
    let mut idx = Vec::new();
    let mut packed = Vec::new();
    group_start.push(0);
    for (b, used) in used.iter().enumerate() {
        let list = if dense { &all } else { used };
        for chunk in list.chunks(GROUP) {
            let pad = *chunk.last().expect("chunks are non-empty");
            let ks: [u32; GROUP] = std::array::from_fn(|i| chunk.get(i).copied().unwrap_or(pad));
            idx.extend_from_slice(&ks);
            for c in 0..BLOCK {
                let j = b * BLOCK + c;
                for (i, &kk) in ks.iter().enumerate() {
                    let real = i < chunk.len() && j < n;
                    packed.push(if real { w[kk as usize * n + j] } else { W::default() });
                }
            }
        }
        group_start.push(idx.len() / GROUP);
    }
    let groups = idx.len() / GROUP;
    let stats = PackStats {
        pattern,
        k,
        n,
        nonzeros: nz.iter().filter(|&&b| b).count(),
        stored: groups * GW,
        bytes: groups * (GW * std::mem::size_of::<W>() + GROUP * 4) + (n_blocks + 1) * 8,
    };
    Blocks { k, n, group_start, idx, w: packed, stats }
}

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

/// Token tiles × channel-block ranges, balanced by stored groups.
pub(crate) struct Plan {
    pub tiles: Vec<Range<usize>>,
    pub blocks: Vec<Range<usize>>,
}

impl Plan {
    pub fn new(n_tiles: usize, group_start: &[usize], threads: usize) -> Plan {
        let n_blocks = group_start.len() - 1;
        if threads <= 1 {
            return Plan { tiles: split_even(n_tiles, 1), blocks: split_even(n_blocks, 1) };
        }
        let target = threads * 4;
        let tile_parts = n_tiles.min(target);
        let block_parts = target.div_ceil(tile_parts).min(n_blocks).max(1);
        Plan { tiles: split_even(n_tiles, tile_parts), blocks: split_weighted(group_start, block_parts) }
    }

    pub fn tasks(&self) -> usize {
        self.tiles.len() * self.blocks.len()
    }

    pub fn task(&self, i: usize) -> (Range<usize>, Range<usize>) {
        (self.tiles[i / self.blocks.len()].clone(), self.blocks[i % self.blocks.len()].clone())
    }
}

pub(crate) fn split_even(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|p| p * n / parts..(p + 1) * n / parts).filter(|r| !r.is_empty()).collect()
}

/// Contiguous block ranges with about equal stored groups (each block weighs one group more, so
/// empty blocks still cost their epilogue).
fn split_weighted(group_start: &[usize], parts: usize) -> Vec<Range<usize>> {
    let n_blocks = group_start.len() - 1;
    let weight = |b: usize| group_start[b] + b;
    let total = weight(n_blocks);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 1..=parts {
        let goal = total * p / parts;
        let mut end = start;
        while end < n_blocks && (weight(end) < goal || end == start) {
            end += 1;
        }
        if p == parts {
            end = n_blocks;
        }
        if end > start {
            out.push(start..end);
        }
        start = end;
    }
    out
}

/// A shared output that tasks write in disjoint rectangles; it holds the slice's mutable borrow
/// for its whole life.
pub(crate) struct Out<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: tasks write disjoint ranges (each (token, channel) belongs to exactly one task of a
// `Plan`), and the owner of the slice waits in `Parallel::run` for every task.
unsafe impl<T: Send> Sync for Out<'_, T> {}

impl<'a, T> Out<'a, T> {
    pub fn new(s: &'a mut [T]) -> Out<'a, T> {
        Out { ptr: s.as_mut_ptr(), len: s.len(), _borrow: std::marker::PhantomData }
    }

    /// `start..start + len` of the output.
    ///
    /// # Safety
    /// No other live reference may overlap that range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "output range out of bounds");
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Runs `f` once per tile chunk on exclusive slices of `scratch` (`tile_len` elements per tile).
pub(crate) fn per_tile_chunk<E: Send>(
    scratch: &mut [E],
    tile_len: usize,
    n_tiles: usize,
    par: &dyn Parallel,
    f: &(dyn Fn(Range<usize>, &mut [E]) + Sync),
) {
    let parts = if par.threads() <= 1 { 1 } else { par.threads() * 2 };
    let ranges = split_even(n_tiles, parts);
    let mut rest = scratch;
    let mut chunks = Vec::with_capacity(ranges.len());
    for r in &ranges {
        let (head, tail) = rest.split_at_mut(r.len() * tile_len);
        chunks.push(Mutex::new(head));
        rest = tail;
    }
    par.run(ranges.len(), &|i| {
        let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        f(ranges[i].clone(), &mut chunk);
    });
}

/// The min and max of `x` (NaNs ignored), both widened to include 0.
fn min_max_with_zero(x: &[f32]) -> (f32, f32) {
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let mut mn = 0f32;
    let mut mx = 0f32;
    for &v in chunks.remainder().iter().chain(&lo) {
        mn = if v < mn { v } else { mn };
    }
    for &v in chunks.remainder().iter().chain(&hi) {
        mx = if v > mx { v } else { mx };
    }
    (mn, mx)
}

/// ONNX `DynamicQuantizeLinear`'s scale and zero point for `x` (as ONNX Runtime computes them).
pub fn dynamic_quant_params(x: &[f32]) -> (f32, u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 checked just before.
    let (mn, mx) = if Isa::Avx2.supported() { unsafe { avx2::min_max_with_zero(x) } } else { min_max_with_zero(x) };
    #[cfg(not(target_arch = "x86_64"))]
    let (mn, mx) = min_max_with_zero(x);
    let scale = if mx == mn { 1.0 } else { (mx - mn) / 255.0 };
    let zp = (0.0 - mn / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

/// ONNX `QuantizeLinear` to u8: `sat(round_half_even(v / scale) + zp)`; NaN maps to 0.
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN; max/min map it to 0 like the SIMD paths
#[inline(always)]
pub fn quantize_u8(v: f32, scale: f32, zp: f32) -> u8 {
    ((v / scale).round_ties_even() + zp).max(0.0).min(255.0) as u8
}

#[inline(always)]
fn quantize_row(x: &[f32], scale: f32, zp: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_u8(v, scale, zp);
    }
}

/// Where activation rows come from: f32 rows to quantize, or rows already in u8.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32 { x: &'a [f32], scale: f32, zp: u8 },
    U8(&'a [u8]),
}

/// Quantizes (or copies) tokens `t0..t0 + tvalid` into `out [K][tw]`, padding tokens with `zp`.
#[inline(always)]
pub(crate) fn prep_tile<E: Copy + From<u8>>(
    rows: Rows<'_>,
    k: usize,
    t0: usize,
    tvalid: usize,
    tw: usize,
    rowbuf: &mut [u8],
    out: &mut [E],
) {
    let pad = match rows {
        Rows::F32 { zp, .. } => zp,
        Rows::U8(_) => 0,
    };
    let rowbuf = &mut rowbuf[..k];
    for tt in 0..tw {
        let src: &[u8] = if tt < tvalid {
            let t = t0 + tt;
            match rows {
                Rows::F32 { x, scale, zp } => {
                    quantize_row(&x[t * k..(t + 1) * k], scale, zp as f32, rowbuf);
                    rowbuf
                }
                Rows::U8(xq) => &xq[t * k..(t + 1) * k],
            }
        } else {
            rowbuf.fill(pad);
            rowbuf
        };
        for (kk, &v) in src.iter().enumerate() {
            out[kk * tw + tt] = E::from(v);
        }
    }
}

/// Per-call constants of the f32 epilogue.
pub(crate) struct EpiI8<'a> {
    /// `s_x · s_w[j]`.
    pub mult: &'a [f32],
    /// `zp_x · colsum_w[j]`.
    pub corr: &'a [i32],
    pub bias: &'a [f32],
    pub gelu: bool,
    pub residual: Option<&'a [f32]>,
    /// With requantization, `mult` is `s_x·s_w[j] / scale`.
    pub requant: Option<Requant>,
}

/// Writes `y[t0 + tt, j0 + jj]` for `tt < tvalid`, `jj < ncols` from token-major `acc [tt][ld]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn epilogue_i8(
    e: &EpiI8<'_>,
    acc: &[i32],
    ld: usize,
    t0: usize,
    tvalid: usize,
    j0: usize,
    ncols: usize,
    n: usize,
    y: &Out<f32>,
) {
    let mult = &e.mult[j0..j0 + ncols];
    let corr = &e.corr[j0..j0 + ncols];
    let bias = &e.bias[j0..j0 + ncols];
    let rq = e.requant.unwrap_or(Requant { scale: 1.0, lo: 0.0, hi: 0.0 });
    for tt in 0..tvalid {
        let t = t0 + tt;
        let a = &acc[tt * ld..tt * ld + ncols];
        // SAFETY: the plan gives each (token, channel) to one task.
        let row = unsafe { y.range(t * n + j0, ncols) };
        let res = e.residual.map(|r| &r[t * n + j0..t * n + j0 + ncols]).unwrap_or(&[]);
        let c = Cols { a, corr, mult, bias, res, rq };
        match (e.requant.is_some(), e.gelu, e.residual.is_some()) {
            (false, false, false) => epi_row::<false, false, false>(&c, row),
            (false, false, true) => epi_row::<false, false, true>(&c, row),
            (false, true, false) => epi_row::<false, true, false>(&c, row),
            (false, true, true) => epi_row::<false, true, true>(&c, row),
            (true, false, false) => epi_row::<true, false, false>(&c, row),
            (true, false, true) => epi_row::<true, false, true>(&c, row),
            (true, true, false) => epi_row::<true, true, false>(&c, row),
            (true, true, true) => epi_row::<true, true, true>(&c, row),
        }
    }
}

/// One output row's inputs, all `ncols` long (`res` empty without a residual).
struct Cols<'a> {
    a: &'a [i32],
    corr: &'a [i32],
    mult: &'a [f32],
    bias: &'a [f32],
    res: &'a [f32],
    rq: Requant,
}

/// The epilogue of one row in a single pass (each value is loaded, finished and stored once):
/// scale and bias (or requantize), then GELU, then the residual, in that order for every ISA.
#[inline(always)]
fn epi_row<const RQ: bool, const GELU: bool, const RES: bool>(c: &Cols<'_>, row: &mut [f32]) {
    let n = row.len();
    let (a, corr, mult, bias) = (&c.a[..n], &c.corr[..n], &c.mult[..n], &c.bias[..n]);
    let res = if RES { &c.res[..n] } else { &c.res[..0] };
    for jj in 0..n {
        let x = ((a[jj] - corr[jj]) as f32) * mult[jj];
        let mut v =
            if RQ { x.max(c.rq.lo).min(c.rq.hi).round_ties_even() * c.rq.scale + bias[jj] } else { x + bias[jj] };
        if GELU {
            v = gelu(v);
        }
        if RES {
            v += res[jj];
        }
        row[jj] = v;
    }
}

/// Copies token-major `acc [tt][ld]` into `out[t0 + tt, j0 + jj]`.
#[allow(clippy::too_many_arguments)]
fn store_i32(acc: &[i32], ld: usize, t0: usize, tvalid: usize, j0: usize, ncols: usize, n: usize, out: &Out<i32>) {
    for tt in 0..tvalid {
        // SAFETY: the plan gives each (token, channel) to one task.
        let row = unsafe { out.range((t0 + tt) * n + j0, ncols) };
        row.copy_from_slice(&acc[tt * ld..tt * ld + ncols]);
    }
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
    requant: Option<Requant>,
    isa: Isa,
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
        if isa == Isa::Avx512Vnni && isa.supported() {
            crate::selfcheck::avx512().map_err(KernelError)?;
        }
        Self::build(w, k, n, w_scale, bias, isa)
    }

    /// A layer from the stored form of its weights ([`packed`], e.g. `ai.sparsec::SparseLinear`'s
    /// `weight_format = "block4x1"` initializer): the blocks are copied, not searched again, and
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
        if isa == Isa::Avx512Vnni && isa.supported() {
            crate::selfcheck::avx512().map_err(KernelError)?;
        }
        Self::finish(packed::from_bytes(packed, k, n)?, w_scale, bias, isa)
    }

    /// [`LinearI8::new`] without the AVX-512 start-up self-check (which builds layers itself).
    pub(crate) fn build(
        w: &[i8],
        k: usize,
        n: usize,
        w_scale: &[f32],
        bias: Option<&[f32]>,
        isa: Isa,
    ) -> Result<LinearI8, KernelError> {
        validate_weight_shape(w.len(), k, n)?;
        Self::finish(pack_blocks(w, k, n), w_scale, bias, isa)
    }

    fn finish(
        mut blocks: Blocks<i8>,
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
        let colsum = column_sums(&blocks);
        let w16 = if isa == Isa::Avx2 { blocks.w.iter().map(|&v| v as i16).collect() } else { Vec::new() };
        if isa == Isa::Avx2 {
            blocks.stats.bytes += w16.len() * 2 - blocks.w.len();
            blocks.w = Vec::new();
        }
        Ok(LinearI8 { blocks, w16, w_scale, bias, colsum, requant: None, isa })
    }

    /// The layer with its output requantized before the bias ([`Requant`]: ONNX `QLinearMatMul`).
    pub fn with_requant(mut self, requant: Requant) -> LinearI8 {
        self.requant = Some(requant);
        self
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

    /// `x`: f32 `[T, K]`; `y[t, j] = epi((s_x·s_w[j])·(acc[t, j] − zp_x·colsum_w[j]) + bias[j]) + residual[t, j]`
    /// with `acc` the exact product of `q = sat_u8(round_half_even(x / s_x) + zp_x)` and `W`
    /// (with [`Requant`], the product is requantized before the bias).
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
        let (scale, zp) = match act {
            ActQuant::Static { scale, zero_point } => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(kerr!("activation scale {scale} is not a finite positive number"));
                }
                (scale, zero_point)
            }
            ActQuant::Dynamic => dynamic_quant_params(x),
        };
        let rows = Rows::F32 { x, scale, zp };
        let mult: Vec<f32> = match self.requant {
            None => self.w_scale.iter().map(|s| scale * s).collect(),
            Some(r) => self.w_scale.iter().map(|s| scale * s / r.scale).collect(),
        };
        let corr: Vec<i32> = self.colsum.iter().map(|c| zp as i32 * c).collect();
        let e = EpiI8 {
            mult: &mult,
            corr: &corr,
            bias: &self.bias,
            gelu: epilogue == Epilogue::Gelu,
            residual,
            requant: self.requant,
        };
        let out = Out::new(y);
        let isa = self.isa;
        self.run(rows, t, par, &|a, ld, t0, tv, j0, nc| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the ISA was checked supported at creation.
            Isa::Avx2 | Isa::Avx512Vnni => unsafe { avx2::epilogue(&e, a, ld, t0, tv, j0, nc, n, &out) },
            _ => epilogue_i8(&e, a, ld, t0, tv, j0, nc, n, &out),
        });
        Ok(())
    }

    /// Quantizes (or copies) and transposes token tile `tile` into `out` (`[K][TW]`).
    fn prep_one(&self, rows: Rows<'_>, t: usize, tile: usize, rowbuf: &mut [u8], out: ActsMut<'_>) {
        let (k, tw) = (self.k(), self.tw());
        let t0 = tile * tw;
        let tvalid = tw.min(t - t0);
        match (self.isa, out) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the ISA was checked supported at creation (AVX-512 implies AVX2 there).
            (Isa::Avx2, ActsMut::I16(out)) => unsafe { avx2::prep_i16(rows, k, t0, tvalid, rowbuf, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Isa::Avx512Vnni, ActsMut::U8(out)) => unsafe { avx2::prep_u8(rows, k, t0, tvalid, tw, rowbuf, out) },
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
        let (k, n, tw) = (self.k(), self.n(), self.tw());
        let b = &self.blocks;
        let plan = Plan::new(t.div_ceil(tw), &b.group_start, par.threads());
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
                let tvalid = tw.min(t - t0);
                for bs in (blocks.start..blocks.end).step_by(BLOCK_STEP) {
                    let be = (bs + BLOCK_STEP).min(blocks.end);
                    let ld = (be - bs) * BLOCK;
                    let acc = &mut acc[..tw * ld];
                    match (self.isa, acts) {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the ISA was checked supported at creation; `xt` holds `K·64`
                        // values, every index is `< K`, `acc` holds `64·ld`.
                        (Isa::Avx512Vnni, ActsRef::U8(xt)) => unsafe {
                            avx512::tile(xt, &b.group_start, &b.idx, &b.w, bs..be, acc)
                        },
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as above with 16-token tiles.
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
        });
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

pub(crate) fn check_len(what: &str, len: usize, t: usize, cols: usize) -> Result<(), KernelError> {
    match t.checked_mul(cols) {
        Some(want) if want == len => Ok(()),
        _ => Err(kerr!("{what} have {len} elements, expected T·{cols} = {t}·{cols}")),
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
            // SAFETY: AVX2 checked above.
            assert_eq!(unsafe { avx2::min_max_with_zero(&x) }, min_max_with_zero(&x), "K={k} T={t}");
            for rows in [Rows::F32 { x: &x, scale: 0.037, zp: 117 }, Rows::U8(&xq)] {
                for tw in [16, 64] {
                    for t0 in (0..t).step_by(tw) {
                        let tvalid = tw.min(t - t0);
                        let mut want = vec![0u8; k * tw];
                        prep_tile(rows, k, t0, tvalid, tw, &mut vec![0; k], &mut want);
                        let mut rowbuf = vec![0u8; 16 * k];
                        let mut got = vec![0u8; k * tw];
                        // SAFETY: AVX2 checked above.
                        unsafe { avx2::prep_u8(rows, k, t0, tvalid, tw, &mut rowbuf, &mut got) };
                        assert_eq!(got, want, "u8 K={k} T={t} t0={t0} tw={tw}");
                        if tw == 16 {
                            let mut got16 = vec![0i16; k * 16];
                            // SAFETY: AVX2 checked above.
                            unsafe { avx2::prep_i16(rows, k, t0, tvalid, &mut rowbuf, &mut got16) };
                            assert!(got16.iter().zip(&want).all(|(&a, &b)| a == b as i16), "i16 K={k} t0={t0}");
                        }
                    }
                }
            }
        }
    }
}
