//! Portable fp32 kernel: one token tile of `tw` tokens against a range of channel blocks.

use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};

/// `acc [tw][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][tw]` × the blocks' weights.
pub(super) fn tile(
    xt: &[f32],
    tw: usize,
    group_start: &[usize],
    idx: &[u32],
    w: &[f32],
    blocks: Range<usize>,
    acc: &mut [f32],
) {
    let ld = blocks.len() * BLOCK;
    let mut local = vec![0f32; BLOCK * tw];
    for (bl, b) in blocks.enumerate() {
        local.fill(0.0);
        for g in group_start[b]..group_start[b + 1] {
            let ks = &idx[g * GROUP..(g + 1) * GROUP];
            let wg = &w[g * GW..(g + 1) * GW];
            for (i, &kk) in ks.iter().enumerate() {
                let row = &xt[kk as usize * tw..(kk as usize + 1) * tw];
                for c in 0..BLOCK {
                    let wv = wg[c * GROUP + i];
                    for (a, &x) in local[c * tw..(c + 1) * tw].iter_mut().zip(row) {
                        *a += x * wv;
                    }
                }
            }
        }
        for tt in 0..tw {
            for c in 0..BLOCK {
                acc[tt * ld + bl * BLOCK + c] = local[c * tw + tt];
            }
        }
    }
}
