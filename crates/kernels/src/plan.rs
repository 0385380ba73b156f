//! How a kernel call's work is split into tasks and how the tasks share the call's buffers: a
//! linear's [`Plan`] of token tiles × channel-block ranges balanced by stored groups, the output
//! ([`Out`]) that tasks write in disjoint ranges, and per-task chunks of a shared scratch buffer
//! ([`per_tile_chunk`]).

use std::ops::Range;
use std::sync::Mutex;

use crate::par::Parallel;

/// Channel blocks a kernel call covers before its epilogue runs (bounds the accumulator tile).
pub(crate) const BLOCK_STEP: usize = 16;

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

// SAFETY: a shared `&Out` gives mutable access only through the unsafe `range`, whose callers
// promise that no two live ranges overlap (a linear's `Plan` gives each (token, channel) to one
// task, `layer_norm` each task its own rows); `T: Send` because tasks write from other threads,
// and the slice's owner waits in `Parallel::run` for every task before the borrow ends.
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
