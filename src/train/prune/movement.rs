//! Movement pruning (`MovementPruningModifier`, Sanh et al. 2020, as SparseML's
//! `MovementPruningParamsScorer` computes it): each masked weight's score is
//! `S = Σ_t −w_t · g_t`, accumulated at every optimiser step while the modifier runs, from the
//! weight and its (clipped) gradient just before the update. A mask update keeps the
//! highest-scored weights or `[out, in]` blocks (block score: the mean over the block), per layer or
//! ranked together (`global_sparsity`). Weights already pruned score −∞, so the mask only grows
//! (as SparseML's scorer sets pruned scores to −∞).

use anyhow::{bail, Result};

use super::magnitude::{prune_lowest_scored, MaskStructure, WeightView};
use super::{overall_sparsity, Evidence, Layer, PruneReport, Pruner};

/// Movement pruning of one modifier's layers.
pub struct Movement {
    pub structure: MaskStructure,
    pub global: bool,
    /// Accumulated scores by graph input (stored layout).
    scores: std::collections::BTreeMap<String, Vec<f32>>,
    /// Steps observed (for the reports).
    steps: std::collections::BTreeMap<String, usize>,
}

/// State name suffix of a layer's observed-step count.
const STEPS: &str = "#steps";

/// A pruning group of one layer: `(mean movement score, layer index, the flat weight indices of the
/// group)`; already-pruned groups score −∞.
type Candidate = (f32, usize, Vec<usize>);

impl Movement {
    /// Refuses N:M masks (SparseML's movement scorer ranks blocks, not runs within blocks).
    pub fn new(structure: MaskStructure, global: bool) -> Result<Movement> {
        if matches!(structure, MaskStructure::NOfM { .. }) {
            bail!("MovementPruningModifier: N:M masks are not supported (unstructured or block masks are)");
        }
        Ok(Movement { structure, global, scores: Default::default(), steps: Default::default() })
    }

    /// The accumulated score of graph input `initializer`, if it has seen a step.
    pub fn scores(&self, initializer: &str) -> Option<&[f32]> {
        self.scores.get(initializer).map(Vec::as_slice)
    }

    fn candidates(&self, layers: &[Layer]) -> Result<Vec<Vec<Candidate>>> {
        let (bo, bi) = match self.structure {
            MaskStructure::Block { out, inp } => (out.max(1), inp.max(1)),
            _ => (1, 1),
        };
        let mut out = Vec::with_capacity(layers.len());
        for (li, l) in layers.iter().enumerate() {
            let zeros = vec![0.0; l.weight.len()];
            let s = self.scores.get(&l.initializer).map(Vec::as_slice).unwrap_or(&zeros);
            if s.len() != l.weight.len() {
                bail!("movement scores of '{}' have {} values for {} weights", l.param, s.len(), l.weight.len());
            }
            let view = WeightView { data: &l.weight, rows: l.rows, cols: l.cols, input_axis: l.input_axis };
            let groups = view.groups(bo, bi);
            let mut c = Vec::with_capacity(groups.len());
            for g in groups {
                let score = if g.iter().any(|&i| l.mask[i] == 0.0) {
                    f32::NEG_INFINITY
                } else {
                    g.iter().map(|&i| s[i]).sum::<f32>() / g.len() as f32
                };
                c.push((score, li, g));
            }
            out.push(c);
        }
        Ok(out)
    }
}

impl Pruner for Movement {
    fn name(&self) -> &'static str {
        "movement"
    }

    fn observes_steps(&self) -> bool {
        true
    }

    fn observe_step(&mut self, initializer: &str, weight: &[f32], grad: &[f32]) {
        *self.steps.entry(initializer.to_string()).or_default() += 1;
        let s = self.scores.entry(initializer.to_string()).or_insert_with(|| vec![0.0; weight.len()]);
        for ((s, &w), &g) in s.iter_mut().zip(weight).zip(grad) {
            *s -= w * g;
        }
    }

    fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut out: Vec<(String, Vec<f32>)> = self.scores.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.extend(self.steps.iter().map(|(k, &n)| (format!("{k}{STEPS}"), vec![n as f32])));
        out
    }

    fn restore_state(&mut self, state: Vec<(String, Vec<f32>)>) -> Result<()> {
        self.scores.clear();
        self.steps.clear();
        for (k, v) in state {
            match k.strip_suffix(STEPS) {
                Some(layer) => {
                    self.steps.insert(layer.to_string(), v.first().copied().unwrap_or(0.0) as usize);
                }
                None => {
                    self.scores.insert(k, v);
                }
            }
        }
        Ok(())
    }

    fn prune(&mut self, layers: &mut [Layer], _evidence: &mut Evidence) -> Result<PruneReport> {
        let started = std::time::Instant::now();
        let cands = self.candidates(layers)?;
        let new: Vec<Vec<f32>> = if self.global {
            let s = layers.first().map(|l| l.sparsity).unwrap_or(0.0);
            let sizes: Vec<usize> = layers.iter().map(|l| l.weight.len()).collect();
            prune_lowest_scored(&sizes, cands.into_iter().flatten().collect(), s)
        } else {
            layers
                .iter()
                .zip(cands)
                .map(|(l, c)| {
                    let c = c.into_iter().map(|(s, _, g)| (s, 0, g)).collect();
                    prune_lowest_scored(&[l.weight.len()], c, l.sparsity).pop().unwrap_or_default()
                })
                .collect()
        };
        for (l, m) in layers.iter_mut().zip(new) {
            for (w, &k) in l.weight.iter_mut().zip(&m) {
                if k == 0.0 {
                    *w = 0.0;
                }
            }
            l.mask = m;
        }
        Ok(PruneReport {
            algorithm: self.name().into(),
            seconds: started.elapsed().as_secs_f64(),
            sparsity: overall_sparsity(layers),
            state_bytes: self.scores.values().map(|v| v.len() as u64 * 4).sum(),
            samples: self.steps.values().copied().max().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, rows: usize, cols: usize, input_axis: usize, weight: Vec<f32>, sparsity: f64) -> Layer {
        Layer {
            param: format!("{name}.weight"),
            initializer: name.into(),
            rows,
            cols,
            input_axis,
            mask: vec![1.0; weight.len()],
            weight,
            sparsity,
        }
    }

    #[test]
    fn scores_accumulate_minus_weight_times_gradient() {
        let mut m = Movement::new(MaskStructure::Unstructured, false).unwrap();
        m.observe_step("a", &[1.0, -2.0, 0.5], &[0.5, 0.25, -4.0]);
        m.observe_step("a", &[2.0, -2.0, 0.0], &[1.0, -1.0, 3.0]);
        assert_eq!(m.scores("a").unwrap(), &[-0.5 - 2.0, 0.5 - 2.0, 2.0 - 0.0]);
        let restored = {
            let mut r = Movement::new(MaskStructure::Unstructured, false).unwrap();
            r.restore_state(m.state()).unwrap();
            r
        };
        assert_eq!(restored.scores("a"), m.scores("a"));
    }

    #[test]
    fn keeps_the_highest_scores_not_the_largest_weights() {
        let mut m = Movement::new(MaskStructure::Unstructured, false).unwrap();
        let w = vec![10.0, 0.1, -5.0, 0.2];
        m.observe_step("a", &w, &[1.0, -1.0, -1.0, -1.0]);
        let mut layers = vec![layer("a", 2, 2, 0, w, 0.5)];
        m.prune(&mut layers, &mut Evidence::default()).unwrap();
        assert_eq!(layers[0].mask, vec![0.0, 1.0, 0.0, 1.0]);
        assert_eq!(layers[0].weight, vec![0.0, 0.1, 0.0, 0.2]);
    }

    #[test]
    fn pruned_weights_stay_pruned_and_blocks_rank_by_mean_score() {
        // Stored [in=2, out=8] (input_axis 0): [4, 1] blocks are four consecutive outputs of one input.
        let mut m = Movement::new(MaskStructure::Block { out: 4, inp: 1 }, false).unwrap();
        let w: Vec<f32> = (0..16).map(|i| 1.0 + i as f32).collect();
        let g: Vec<f32> = (0..16)
            .map(|i| {
                if i < 4 {
                    -1.0
                } else if i >= 12 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        m.observe_step("a", &w, &g);
        let mut layers = vec![layer("a", 2, 8, 0, w.clone(), 0.25)];
        m.prune(&mut layers, &mut Evidence::default()).unwrap();
        let pruned: Vec<usize> = (0..16).filter(|&i| layers[0].mask[i] == 0.0).collect();
        assert_eq!(pruned, vec![12, 13, 14, 15], "the block with the most negative movement goes first");
        // A pruned block scores −∞ whatever its accumulated score: give it the highest.
        let mut state = m.state();
        assert_eq!(state[1], ("a#steps".to_string(), vec![1.0]));
        state[0].1[12..16].iter_mut().for_each(|s| *s = 1000.0);
        m.restore_state(state).unwrap();
        layers[0].sparsity = 0.5;
        m.prune(&mut layers, &mut Evidence::default()).unwrap();
        let pruned: Vec<usize> = (0..16).filter(|&i| layers[0].mask[i] == 0.0).collect();
        assert_eq!(pruned, vec![4, 5, 6, 7, 12, 13, 14, 15]);
    }

    #[test]
    fn global_ranking_spans_layers() {
        let mut m = Movement::new(MaskStructure::Unstructured, true).unwrap();
        m.observe_step("a", &[1.0, 1.0], &[1.0, 1.0]);
        m.observe_step("b", &[1.0, 1.0], &[-1.0, -1.0]);
        let mut layers = vec![layer("a", 1, 2, 0, vec![1.0, 1.0], 0.5), layer("b", 1, 2, 0, vec![1.0, 1.0], 0.5)];
        m.prune(&mut layers, &mut Evidence::default()).unwrap();
        assert_eq!(layers[0].mask, vec![0.0, 0.0]);
        assert_eq!(layers[1].mask, vec![1.0, 1.0]);
        assert!(Movement::new(MaskStructure::NOfM { n: 2, m: 4 }, false).is_err());
    }
}
