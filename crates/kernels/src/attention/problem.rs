//! One attention call as the per-ISA tasks see it: the problem with its slices checked and
//! reduced to pointers ([`Problem`]), one task's query rows ([`Task`]), and the tiling constants
//! every task shares.

use std::ops::Range;

/// Biases at or below this mark padding keys that f32 absorbs exactly (see `f32::kept_keys`);
/// tasks skip those keys.
pub(crate) const ABSORBING_BIAS: f32 = -1e30;

/// Query rows per tile: the score tile is `TILE × S` f32 (144 KiB at S = 384, in L2; 48 and 96
/// measured equal at MiniLM's shapes).
pub(crate) const TILE: usize = 96;

/// What one call computes, with the slices checked against the shape; the kernels index through
/// these pointers without further checks.
pub(crate) struct Problem {
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub row_stride: usize,
    pub q: *const f32,
    pub k: *const f32,
    pub v: *const f32,
    pub mask: Option<*const f32>,
    pub scale: f32,
    /// `[B, S, H·D]`; each task writes only its own (batch, head, rows) cells.
    pub out: *mut f32,
}

// SAFETY: the inputs are read-only for the whole call and the tasks write disjoint cells of `out`.
unsafe impl Sync for Problem {}

/// Query rows `rows` of head `h` in batch item `b`.
pub(crate) struct Task {
    pub b: usize,
    pub h: usize,
    pub rows: Range<usize>,
}
