//! Magnitude-pruning masks: which weights of a layer (or of all layers together) to zero for a
//! target sparsity, unstructured, in blocks along the input dimension, or N:M.
//!
//! A mask holds 1.0 (keep) or 0.0 (prune) per weight, in the weight's stored (ONNX) layout.

use std::cmp::Ordering;

/// How weights are grouped before ranking by magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskStructure {
    /// Each weight on its own.
    Unstructured,
    /// Runs of `size` consecutive weights along the input dimension, scored by mean |w| (SparseML's `block4` is 4).
    Block { size: usize },
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
    /// Flat indices of each group of `k` consecutive weights along the input axis.
    fn groups(&self, k: usize) -> Vec<Vec<usize>> {
        let (outer, inner) = if self.input_axis == 0 { (self.cols, self.rows) } else { (self.rows, self.cols) };
        let mut out = Vec::with_capacity(outer * inner.div_ceil(k));
        for o in 0..outer {
            for start in (0..inner).step_by(k) {
                let idx = (start..(start + k).min(inner))
                    .map(|i| if self.input_axis == 0 { i * self.cols + o } else { o * self.cols + i })
                    .collect();
                out.push(idx);
            }
        }
        out
    }

    fn group_size(structure: MaskStructure) -> usize {
        match structure {
            MaskStructure::Unstructured => 1,
            MaskStructure::Block { size } => size,
            MaskStructure::NOfM { m, .. } => m,
        }
    }
}

fn score(w: &[f32], idx: &[usize]) -> f32 {
    idx.iter().map(|&i| w[i].abs()).sum::<f32>() / idx.len() as f32
}

/// Zeroes the lowest-scored groups so that `round(sparsity × weights)` weights are pruned (to
/// whole groups); ties go to the lower flat index.
fn prune_lowest(layers: &[WeightView], sparsity: f64, k: usize) -> Vec<Vec<f32>> {
    let mut masks: Vec<Vec<f32>> = layers.iter().map(|l| vec![1.0; l.data.len()]).collect();
    let mut cands: Vec<(f32, usize, Vec<usize>)> = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        for g in l.groups(k) {
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
                    for g in l.groups(m) {
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
        s => prune_lowest(layers, sparsity, WeightView::group_size(s)),
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
        let m = layer_mask(&view(&w, 8, 2, 0), 0.25, MaskStructure::Block { size: 4 });
        let zeros: Vec<usize> = (0..16).filter(|&i| m[i] == 0.0).collect();
        assert_eq!(zeros, vec![0, 2, 4, 6]);
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
