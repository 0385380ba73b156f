//! The block-sparse weight format every linear kernel runs on ([`Blocks`]): output channels in
//! blocks of [`BLOCK`]; per block, the sorted input indices that are non-zero in any of its
//! channels, in groups of [`GROUP`] (the last padded with zero weights at a valid index), each
//! group holding its indices and its [`GW`] weights `[channel][k]`. `[4,1]` masks pack without
//! padding; `[1,4]` and unstructured masks pack their per-block union; above [`DENSE_ABOVE`]
//! stored density every index is stored (sequential indices, dense through the same kernel).
//! Also the zero structure packing detects ([`Pattern`]) and what it kept ([`PackStats`]).

use std::fmt;

use crate::error::{kerr, KernelError};

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

/// Packs `W [K, N]` (`K` a multiple of [`GROUP`]) for the `[1, 4]` kernel as per-channel lists of
/// aligned 4-index quads: channel `j`'s non-zero quads are `q ∈ chan_start[j]..chan_start[j + 1]`
/// (channels padded to whole blocks have none), `idx[q]` the quad's first input index and
/// `w[4q + i]` its weight `i`. No channel is padded to another's length, so multiplies drop from
/// the union of a block's non-zero inputs (what [`pack_blocks`] stores) to each channel's own
/// non-zero quads: for SparseML's `block4` exports at 90%, whose channels keep from a few to twice
/// the average number of quads, about a third. The returned [`Blocks`] has no groups: its
/// `group_start` counts each block's work in groups of 16 multiplies (4 quads), for the task
/// split. `None` when `K` is not a multiple of 4.
pub(crate) fn pack_quads<W: Copy + Default + PartialEq>(
    w: &[W],
    k: usize,
    n: usize,
    stats: &PackStats,
) -> Option<(Blocks<W>, Vec<usize>)> {
    if !k.is_multiple_of(GROUP) {
        return None;
    }
    let n_blocks = n.div_ceil(BLOCK);
    let mut chan_start = Vec::with_capacity(n_blocks * BLOCK + 1);
    let mut group_start = Vec::with_capacity(n_blocks + 1);
    let (mut idx, mut packed) = (Vec::new(), Vec::new());
    chan_start.push(0);
    group_start.push(0);
    for b in 0..n_blocks {
        let first = idx.len();
        for j in b * BLOCK..(b + 1) * BLOCK {
            if j < n {
                for k0 in (0..k).step_by(GROUP) {
                    if (k0..k0 + GROUP).any(|kk| w[kk * n + j] != W::default()) {
                        idx.push(k0 as u32);
                        packed.extend((0..GROUP).map(|i| w[(k0 + i) * n + j]));
                    }
                }
            }
            chan_start.push(idx.len());
        }
        group_start.push(group_start[b] + (idx.len() - first).div_ceil(BLOCK));
    }
    let stats = PackStats {
        stored: packed.len(),
        bytes: packed.len() * std::mem::size_of::<W>() + idx.len() * 4 + (chan_start.len() + group_start.len()) * 8,
        ..stats.clone()
    };
    Some((Blocks { k, n, group_start, idx, w: packed, stats }, chan_start))
}
