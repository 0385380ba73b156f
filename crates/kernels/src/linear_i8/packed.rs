//! The stored form of [`Blocks`]: the int8 weights of a block-sparse linear as one byte string
//! that a file can hold and a kernel loads by copying (`ai.sparsec::SparseLinear` with
//! `weight_format = "block4x1"`).
//!
//! Layout, for `W [K, N]` with `B = ⌈N/4⌉` blocks of 4 output channels and `M = ⌈K/8⌉`:
//! - the block mask, `B × M` bytes: bit `k % 8` (least significant first) of byte `b·M + k/8` is
//!   set when block `b` stores input index `k`; bits at `k ≥ K` are zero;
//! - then, block by block, the block's `⌈popcount/4⌉` groups of 16 weights `[channel][index-in-group]`
//!   over its set indices in ascending order, the last group padded with zero weights (its index
//!   slots repeat the last set index), channels `≥ N` zero.
//!
//! That is exactly the kernel's packed format ([`Blocks::idx`] is the mask's set bits, grouped), so
//! decoding only expands the mask into index lists: no pattern search, no pass over `K·N`.

use crate::blocks::{detect_pattern, pack_blocks, validate_weight_shape, Blocks, PackStats, BLOCK, GROUP, GW};
use crate::error::{kerr, KernelError};

/// Bytes of the block mask of a `[K, N]` weight.
pub fn mask_len(k: usize, n: usize) -> usize {
    n.div_ceil(BLOCK) * k.div_ceil(8)
}

/// Packs `W [K, N]` (row-major int8) into the stored form, choosing the same blocks, groups and
/// dense fallback as a kernel built from `W` does.
pub fn encode(w: &[i8], k: usize, n: usize) -> Result<Vec<i8>, KernelError> {
    validate_weight_shape(w.len(), k, n)?;
    Ok(to_bytes(&pack_blocks(w, k, n)))
}

pub(crate) fn to_bytes(b: &Blocks<i8>) -> Vec<i8> {
    let m = b.k.div_ceil(8);
    let n_blocks = b.group_start.len() - 1;
    let mut out = vec![0i8; n_blocks * m];
    for blk in 0..n_blocks {
        for g in b.group_start[blk]..b.group_start[blk + 1] {
            for &kk in &b.idx[g * GROUP..(g + 1) * GROUP] {
                let kk = kk as usize;
                out[blk * m + kk / 8] |= (1u8 << (kk % 8)) as i8;
            }
        }
    }
    out.extend_from_slice(&b.w);
    out
}

/// Decodes the stored form into [`Blocks`], checking that it is well formed: the length the mask
/// implies, no mask bit at `k ≥ K`, zeros in every padding weight.
pub(crate) fn from_bytes(p: &[i8], k: usize, n: usize) -> Result<Blocks<i8>, KernelError> {
    if k == 0 || n == 0 {
        return Err(kerr!("packed weight shape [{k}, {n}] is empty"));
    }
    if k > u32::MAX as usize {
        return Err(kerr!("weight K = {k} exceeds {}", u32::MAX));
    }
    let m = k.div_ceil(8);
    let n_blocks = n.div_ceil(BLOCK);
    let mlen = n_blocks * m;
    if p.len() < mlen {
        return Err(kerr!("packed weight has {} bytes, fewer than its [{k}, {n}] block mask's {mlen}", p.len()));
    }
    let (mask, values) = p.split_at(mlen);
    let mut group_start = Vec::with_capacity(n_blocks + 1);
    let mut idx = Vec::new();
    let mut used_in = Vec::with_capacity(n_blocks);
    group_start.push(0);
    for blk in 0..n_blocks {
        let row = &mask[blk * m..(blk + 1) * m];
        let first = idx.len();
        for (byte_i, &byte) in row.iter().enumerate() {
            let mut bits = byte as u8;
            while bits != 0 {
                let kk = byte_i * 8 + bits.trailing_zeros() as usize;
                if kk >= k {
                    return Err(kerr!("packed weight's mask for channel block {blk} sets input index {kk}, K is {k}"));
                }
                idx.push(kk as u32);
                bits &= bits - 1;
            }
        }
        let used = idx.len() - first;
        used_in.push(used);
        let pad = used.div_ceil(GROUP) * GROUP - used;
        if let Some(&last) = idx.last().filter(|_| pad > 0) {
            idx.extend(std::iter::repeat_n(last, pad));
        }
        group_start.push(idx.len() / GROUP);
    }
    let groups = idx.len() / GROUP;
    if values.len() != groups * GW {
        return Err(kerr!(
            "packed weight has {} bytes; its block mask ({mlen} bytes) stores {groups} groups, which need {} more",
            p.len(),
            groups * GW
        ));
    }
    let mut nonzeros = 0;
    for blk in 0..n_blocks {
        let (g0, g1) = (group_start[blk], group_start[blk + 1]);
        let used = used_in[blk];
        for g in g0..g1 {
            for c in 0..BLOCK {
                for i in 0..GROUP {
                    let v = values[g * GW + c * GROUP + i];
                    let real = (g - g0) * GROUP + i < used && blk * BLOCK + c < n;
                    if v != 0 {
                        if !real {
                            return Err(kerr!(
                                "packed weight has a non-zero padding weight in channel block {blk}, group {}",
                                g - g0
                            ));
                        }
                        nonzeros += 1;
                    }
                }
            }
        }
    }
    let nz = nonzero_map(&group_start, &idx, values, k, n);
    let stats = PackStats {
        pattern: detect_pattern(&nz, k, n),
        k,
        n,
        nonzeros,
        stored: groups * GW,
        bytes: groups * (GW + GROUP * 4) + (n_blocks + 1) * 8,
    };
    debug_assert_eq!(stats.nonzeros, nz.iter().filter(|&&b| b).count());
    Ok(Blocks { k, n, group_start, idx, w: values.to_vec(), stats })
}

/// Which entries of `W [K, N]` are non-zero, from packed blocks.
fn nonzero_map(group_start: &[usize], idx: &[u32], w: &[i8], k: usize, n: usize) -> Vec<bool> {
    let mut nz = vec![false; k * n];
    for blk in 0..group_start.len() - 1 {
        for g in group_start[blk]..group_start[blk + 1] {
            for c in 0..BLOCK {
                let j = blk * BLOCK + c;
                if j >= n {
                    continue;
                }
                for i in 0..GROUP {
                    if w[g * GW + c * GROUP + i] != 0 {
                        nz[idx[g * GROUP + i] as usize * n + j] = true;
                    }
                }
            }
        }
    }
    nz
}

/// The dense `W [K, N]` a stored form holds (for inspection and tests; kernels load [`Blocks`]).
pub fn decode_dense(p: &[i8], k: usize, n: usize) -> Result<Vec<i8>, KernelError> {
    Ok(dense(&from_bytes(p, k, n)?))
}

/// The dense `W [K, N]` of block-union [`Blocks`] (as [`pack_blocks`](crate::blocks) or
/// [`from_bytes`] make them).
pub(crate) fn dense(b: &Blocks<i8>) -> Vec<i8> {
    let (k, n) = (b.k, b.n);
    let mut w = vec![0i8; k * n];
    for blk in 0..b.group_start.len() - 1 {
        for g in b.group_start[blk]..b.group_start[blk + 1] {
            for c in 0..BLOCK {
                let j = blk * BLOCK + c;
                if j >= n {
                    continue;
                }
                for i in 0..GROUP {
                    let v = b.w[g * GW + c * GROUP + i];
                    if v != 0 {
                        w[b.idx[g * GROUP + i] as usize * n + j] = v;
                    }
                }
            }
        }
    }
    w
}

/// What a stored form holds, without building a kernel.
pub fn stats(p: &[i8], k: usize, n: usize) -> Result<PackStats, KernelError> {
    Ok(from_bytes(p, k, n)?.stats)
}
