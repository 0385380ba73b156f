//! Magnitude-pruning masks: which weights of a layer (or of all layers together) to zero for a
//! target sparsity, unstructured, in 2-D blocks (`[1, 4]` along the input dimension, `[4, 1]`
//! across four output channels), or N:M.
//!
//! A mask holds 1.0 (keep) or 0.0 (prune) per weight, in the weight's stored (ONNX) layout.

use std::cmp::Ordering;

/// How weights are grouped before ranking by magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskStructure {
    /// Each weight on its own.
    Unstructured,
    /// Blocks of `out` consecutive output channels × `inp` consecutive inputs (PyTorch's `[out, in]`
    /// view), scored by mean |w|: SparseML's `block4` is `[1, 4]`, `mask_type: [4, 1]` is `out: 4, inp: 1`.
    Block { out: usize, inp: usize },
    /// In every run of `m` consecutive weights along the input dimension keep the `n` largest.
    NOfM { n: usize, m: usize },
}

/// A 2-D weight in stored layout, and which of its axes is PyTorch's input dimension
/// (0 for a MatMul weight stored `[in, out]`, 1 for a Gemm weight stored `[out, in]`).
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub input_axis: usize,
}

impl WeightView<'_> {
    /// Flat indices of each block of `bo` output channels × `bi` inputs (edge blocks smaller).
    fn groups(&self, bo: usize, bi: usize) -> Vec<Vec<usize>> {
        let (outs, ins) = if self.input_axis == 0 { (self.cols, self.rows) } else { (self.rows, self.cols) };
        let mut out = Vec::with_capacity(outs.div_ceil(bo) * ins.div_ceil(bi));
        for o0 in (0..outs).step_by(bo) {
            for i0 in (0..ins).step_by(bi) {
                let mut idx = Vec::with_capacity(bo * bi);
                for o in o0..(o0 + bo).min(outs) {
                    for i in i0..(i0 + bi).min(ins) {
                        idx.push(if self.input_axis == 0 { i * self.cols + o } else { o * self.cols + i });
                    }
                }
                out.push(idx);
            }
        }
        out
    }

    fn block_shape(structure: MaskStructure) -> (usize, usize) {
        match structure {
            MaskStructure::Unstructured => (1, 1),
            MaskStructure::Block { out, inp } => (out.max(1), inp.max(1)),
            MaskStructure::NOfM { m, .. } => (1, m),
        }
    }
}

fn score(w: &[f32], idx: &[usize]) -> f32 {
    idx.iter().map(|&i| w[i].abs()).sum::<f32>() / idx.len() as f32
}

/// Zeroes the lowest-scored groups so that `round(sparsity × weights)` weights are pruned (to
/// whole groups); ties go to the lower flat index.
fn prune_lowest(layers: &[WeightView], sparsity: f64, (bo, bi): (usize, usize)) -> Vec<Vec<f32>> {
    let mut masks: Vec<Vec<f32>> = layers.iter().map(|l| vec![1.0; l.data.len()]).collect();
    let mut cands: Vec<(f32, usize, Vec<usize>)> = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        for g in l.groups(bo, bi) {
            cands.push((score(l.data, &g), li, g));
        }
    }
    let total: usize = layers.iter().map(|l| l.data.len()).sum();
    let target = (sparsity.clamp(0.0, 1.0) * total as f64).round() as usize;
    cands
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1)).then(a.2[0].cmp(&b.2[0])));
    let mut pruned = 0;
    for (_, li, g) in cands {
        if pruned + g.len() > target {
            break;
        }
        pruned += g.len();
        for i in g {
            masks[li][i] = 0.0;
        }
    }
    masks
}

/// The mask of one layer at `sparsity`.
pub fn layer_mask(w: &WeightView, sparsity: f64, structure: MaskStructure) -> Vec<f32> {
    global_masks(std::slice::from_ref(w), sparsity, structure).pop().unwrap()
}

/// Masks for several layers ranked together (global magnitude pruning). For N:M the ranking is
/// within each run of `m`, so the result is the same as per layer and `sparsity` only switches it on.
pub fn global_masks(layers: &[WeightView], sparsity: f64, structure: MaskStructure) -> Vec<Vec<f32>> {
    match structure {
        MaskStructure::NOfM { n, m } => layers
            .iter()
            .map(|l| {
                let mut mask = vec![1.0; l.data.len()];
                if sparsity > 0.0 {
                    for g in l.groups(1, m) {
                        let mut ranked = g.clone();
                        ranked
                            .sort_by(|&a, &b| l.data[a].abs().partial_cmp(&l.data[b].abs()).unwrap_or(Ordering::Equal));
                        let drop = ranked.len().saturating_sub(n);
                        for &i in &ranked[..drop] {
                            mask[i] = 0.0;
                        }
                    }
                }
                mask
            })
            .collect(),
        s => prune_lowest(layers, sparsity, WeightView::block_shape(s)),
    }
}

/// Fraction of zeros in a mask.
pub fn mask_sparsity(mask: &[f32]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(data: &[f32], rows: usize, cols: usize, input_axis: usize) -> WeightView<'_> {
        WeightView { data, rows, cols, input_axis }
    }

    #[test]
    fn unstructured_prunes_exactly_the_smallest() {
        let w: Vec<f32> = (0..20).map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) }).collect();
        let m = layer_mask(&view(&w, 4, 5, 0), 0.8, MaskStructure::Unstructured);
        assert_eq!(mask_sparsity(&m), 0.8);
        for (i, &k) in m.iter().enumerate() {
            assert_eq!(k == 1.0, i >= 16, "index {i}");
        }
    }

    #[test]
    fn block4_zeroes_whole_runs_along_the_input_axis() {
        // [in=8, out=2] MatMul layout: input runs are column slices of 4 rows.
        let mut w = vec![1.0f32; 16];
        for r in 0..4 {
            w[r * 2] = 0.01;
        }
        let m = layer_mask(&view(&w, 8, 2, 0), 0.25, MaskStructure::Block { out: 1, inp: 4 });
        let zeros: Vec<usize> = (0..16).filter(|&i| m[i] == 0.0).collect();
        assert_eq!(zeros, vec![0, 2, 4, 6]);
    }

    #[test]
    fn block_4x1_zeroes_four_output_channels_of_one_input() {
        // [in=2, out=8] MatMul layout: a [4, 1] block is 4 consecutive columns of one row.
        let mut w = vec![1.0f32; 16];
        for c in 4..8 {
            w[8 + c] = 0.01;
        }
        let m = layer_mask(&view(&w, 2, 8, 0), 0.25, MaskStructure::Block { out: 4, inp: 1 });
        let zeros: Vec<usize> = (0..16).filter(|&i| m[i] == 0.0).collect();
        assert_eq!(zeros, vec![12, 13, 14, 15]);
        // The same weight stored [out=8, in=2] (Gemm, transB): the block is 4 consecutive rows of one column.
        let wt: Vec<f32> = (0..16).map(|i| w[(i % 2) * 8 + i / 2]).collect();
        let mt = layer_mask(&view(&wt, 8, 2, 1), 0.25, MaskStructure::Block { out: 4, inp: 1 });
        let zeros_t: Vec<usize> = (0..16).filter(|&i| mt[i] == 0.0).collect();
        assert_eq!(zeros_t, vec![9, 11, 13, 15]);
    }

    #[test]
    fn two_of_four_keeps_two_largest_per_run() {
        let w = vec![0.1f32, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0];
        let m = layer_mask(&view(&w, 1, 8, 1), 0.5, MaskStructure::NOfM { n: 2, m: 4 });
        assert_eq!(m, vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn global_ranking_spreads_sparsity_by_magnitude() {
        let small = vec![0.1f32; 10];
        let big = vec![5.0f32; 10];
        let masks = global_masks(&[view(&small, 2, 5, 1), view(&big, 2, 5, 1)], 0.5, MaskStructure::Unstructured);
        assert_eq!(mask_sparsity(&masks[0]), 1.0);
        assert_eq!(mask_sparsity(&masks[1]), 0.0);
    }
}
