//! Magnitude pruning (`GMPruningModifier`, `MagnitudePruningModifier`,
//! `GlobalMagnitudePruningModifier`): which weights of a layer (or of all layers together) to zero
//! for a target sparsity, unstructured, in `[out, in]` blocks, or N:M, ranked by |w|.
//!
//! A mask holds 1.0 (keep) or 0.0 (prune) per weight, in the weight's stored (ONNX) layout.

use std::cmp::Ordering;

use anyhow::Result;

use super::{overall_sparsity, Evidence, Layer, PruneReport, Pruner};

/// How weights are grouped before ranking by magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskStructure {
    /// Each weight on its own.
    Unstructured,
    /// Blocks of `out` consecutive output channels × `inp` consecutive inputs (PyTorch's
    /// `[out, in]` block shape), scored by mean |w|. SparseML's `block4` is `[1, 4]`; sparsec's
    /// sparse kernels want `[4, 1]` (four output channels sharing one input index).
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
    /// Flat (stored) indices of each `bo × bi` block of PyTorch's `[out, in]` view, blocks in
    /// row-major order, indices within a block output-major.
    pub fn groups(&self, bo: usize, bi: usize) -> Vec<Vec<usize>> {
        let (outer, inner) = if self.input_axis == 0 { (self.cols, self.rows) } else { (self.rows, self.cols) };
        let at = |o: usize, i: usize| if self.input_axis == 0 { i * self.cols + o } else { o * self.cols + i };
        let mut out = Vec::with_capacity(outer.div_ceil(bo) * inner.div_ceil(bi));
        for o0 in (0..outer).step_by(bo) {
            for i0 in (0..inner).step_by(bi) {
                let mut idx = Vec::with_capacity(bo * bi);
                for o in o0..(o0 + bo).min(outer) {
                    for i in i0..(i0 + bi).min(inner) {
                        idx.push(at(o, i));
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
    let mut cands: Vec<(f32, usize, Vec<usize>)> = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        for g in l.groups(bo, bi) {
            cands.push((score(l.data, &g), li, g));
        }
    }
    let sizes: Vec<usize> = layers.iter().map(|l| l.data.len()).collect();
    prune_lowest_scored(&sizes, cands, sparsity)
}

/// Zeroes the lowest-scored groups `(score, layer, stored indices)` so that
/// `round(sparsity × weights)` weights are pruned (to whole groups); ties go to the lower layer,
/// then the lower first index. A NaN score sorts as equal.
pub fn prune_lowest_scored(sizes: &[usize], mut cands: Vec<(f32, usize, Vec<usize>)>, sparsity: f64) -> Vec<Vec<f32>> {
    let mut masks: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![1.0; n]).collect();
    let total: usize = sizes.iter().sum();
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

/// Magnitude pruning of one modifier's layers, ranked together (`global`) or per layer.
pub struct Magnitude {
    pub structure: MaskStructure,
    pub global: bool,
}

impl Pruner for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }

    fn prune(&mut self, layers: &mut [Layer], _evidence: &mut Evidence) -> Result<PruneReport> {
        let started = std::time::Instant::now();
        let st = self.structure;
        let new: Vec<Vec<f32>> = if self.global {
            let s = layers.first().map(|l| l.sparsity).unwrap_or(0.0);
            let views: Vec<WeightView> = layers.iter().map(Layer::view).collect();
            global_masks(&views, s, st)
        } else {
            use rayon::prelude::*;
            layers.par_iter().map(|l| layer_mask(&l.view(), l.sparsity, st)).collect()
        };
        for (l, m) in layers.iter_mut().zip(new) {
            l.mask = m;
        }
        Ok(PruneReport {
            algorithm: self.name().into(),
            seconds: started.elapsed().as_secs_f64(),
            sparsity: overall_sparsity(layers),
            ..PruneReport::default()
        })
    }
}

/// `ConstantPruningModifier`: the mask keeps exactly the weights that are nonzero now.
pub struct Constant;

impl Pruner for Constant {
    fn name(&self) -> &'static str {
        "constant"
    }

    fn prune(&mut self, layers: &mut [Layer], _evidence: &mut Evidence) -> Result<PruneReport> {
        for l in layers.iter_mut() {
            l.mask = l.weight.iter().map(|&w| if w == 0.0 { 0.0 } else { 1.0 }).collect();
        }
        Ok(PruneReport { algorithm: self.name().into(), sparsity: overall_sparsity(layers), ..PruneReport::default() })
    }
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
    fn block_4x1_zeroes_four_output_channels_at_one_input() {
        // [in=2, out=8] MatMul layout: stored row r holds input r for all 8 outputs, so a [4, 1]
        // block is four consecutive entries of one stored row.
        let mut w = vec![1.0f32; 16];
        for o in 4..8 {
            w[8 + o] = 0.01;
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
