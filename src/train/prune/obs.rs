//! `OBSPruningModifier` (oBERT, arXiv 2203.07259) as SparseML computes it
//! (`sparseml/pytorch/sparsification/pruning/modifier_pruning_obs.py`):
//!
//! - Each weight is flattened ([`obs_order`]) and cut into consecutive chunks of
//!   `fisher_block_size` B (the tail zero-padded). Per chunk, F⁻¹ of
//!   F̂ = damp·I + (1/m) Σ g gᵀ is built from (1/damp)·I by one Sherman–Morrison rank-1 update
//!   per masked mini-batch gradient g (`EmpiricalBlockFisherInverse.add_grad`), in f32 as SparseML.
//! - Scores: unstructured ρ = w² / (2·[F⁻¹]ⱼⱼ + ε); a group of k weights (`[1, k]` / `[k, 1]`)
//!   ρ = ½·wᵀ (F⁻¹_bb)⁻¹ w, with F⁻¹_bb the k×k diagonal sub-block; already pruned weights score
//!   −∞; ε = f32::EPSILON. The lowest-scored groups are pruned to the target sparsity, over all
//!   of the modifier's layers (`global_sparsity`) or per layer.
//! - Update of the weights just pruned (mask 1 → 0): w ← w − F⁻¹·(w ⊙ pruned / (diag F⁻¹ + ε)),
//!   for groups w ← w − F⁻¹·((F⁻¹_bb)⁻¹ w ⊙ pruned); the pruned weights are then set to zero.
//! - `num_recomputations` r: the step is split into r sub-steps whose sparsity goes linearly
//!   from the layers' current sparsity to the target, each with fresh gradients and a fresh F⁻¹.
//!
//! Flattening order: SparseML flattens PyTorch's `[out, in]` row-major (so `block4` = `[1, 4]`
//! groups four consecutive inputs of one output). For `[k, 1]` (k consecutive output channels
//! sharing one input index, the block sparsec's kernels use) the order is `[in, out]` row-major,
//! so that a group is again k consecutive elements inside one Fisher block; SparseML has no
//! `[k, 1]` OBS.
//!
//! An update whose target does not exceed the current sparsity prunes nothing, so the OBS
//! update is the identity: it returns at once, without gradients (`samples` 0).
//!
//! Memory: the inverses hold ⌈d/B⌉·B² ≈ d·B f32 for d weights; [`Obs::prune`] refuses to start
//! when that is over [`ObsConfig::max_state_bytes`].

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::magnitude::prune_lowest_scored;
use super::{overall_sparsity, Evidence, Layer, PruneReport, Pruner};

const EPS: f32 = f32::EPSILON;

#[derive(Clone, Debug)]
pub struct ObsConfig {
    /// m: gradients per Fisher estimate.
    pub num_grads: usize,
    pub damp: f64,
    /// B: the size of the diagonal blocks of F.
    pub fisher_block_size: usize,
    pub num_recomputations: usize,
    /// Pruned group in PyTorch `[out, in]` terms: `(1, 1)` unstructured, `(1, k)` or `(k, 1)`.
    pub group: (usize, usize),
    pub global: bool,
    /// Refuse to build Fisher inverses larger than this.
    pub max_state_bytes: u64,
}

impl ObsConfig {
    fn group_len(&self) -> usize {
        self.group.0 * self.group.1
    }

    /// Checks the group shape and B against each layer (as SparseML's `_validate`).
    pub fn check(&self, layers: &[Layer]) -> Result<()> {
        let (go, gi) = self.group;
        if go != 1 && gi != 1 {
            bail!("OBSPruningModifier: mask_type [{go}, {gi}] is not supported (unstructured, [1, k] or [k, 1])");
        }
        let k = self.group_len();
        if self.fisher_block_size == 0 || self.num_grads == 0 {
            bail!("OBSPruningModifier: fisher_block_size and num_grads must be >= 1");
        }
        if k > 1 && !self.fisher_block_size.is_multiple_of(k) {
            bail!(
                "OBSPruningModifier: fisher_block_size {} must be a multiple of the block size {k}",
                self.fisher_block_size
            );
        }
        for l in layers {
            let (out, inp) = l.torch_shape();
            if k > 1 && (out % go != 0 || inp % gi != 0 || (out * inp) % self.fisher_block_size != 0) {
                bail!(
                    "OBSPruningModifier: '{}' of shape [{out}, {inp}] does not split into [{go}, {gi}] groups inside \
                     Fisher blocks of {} weights",
                    l.param,
                    self.fisher_block_size
                );
            }
        }
        Ok(())
    }

    /// Bytes of the Fisher inverses for `layers`.
    pub fn state_bytes(&self, layers: &[Layer]) -> u64 {
        let b = self.fisher_block_size as u64;
        layers.iter().map(|l| (l.weight.len() as u64).div_ceil(b) * b * b * 4).sum()
    }
}

/// `order[p]` = the stored index of the p-th weight in OBS's flattening (see the module doc).
pub fn obs_order(l: &Layer, group: (usize, usize)) -> Vec<usize> {
    let (out, inp) = l.torch_shape();
    let mut order = Vec::with_capacity(out * inp);
    if group.0 > 1 {
        for i in 0..inp {
            for o in 0..out {
                order.push(l.stored_index(o, i));
            }
        }
    } else {
        for o in 0..out {
            for i in 0..inp {
                order.push(l.stored_index(o, i));
            }
        }
    }
    order
}

/// SparseML's `EmpiricalBlockFisherInverse`: ⌈d/B⌉ B×B blocks of F⁻¹, row-major.
#[derive(Clone, Debug)]
pub struct BlockFisherInverse {
    pub b: usize,
    pub d: usize,
    m: f64,
    pub data: Vec<f32>,
}

impl BlockFisherInverse {
    pub fn new(d: usize, b: usize, damp: f64, m: usize) -> BlockFisherInverse {
        let n = d.div_ceil(b);
        let mut data = vec![0.0f32; n * b * b];
        let inv = (1.0 / damp) as f32;
        for k in 0..n {
            for i in 0..b {
                data[k * b * b + i * b + i] = inv;
            }
        }
        BlockFisherInverse { b, d, m: m as f64, data }
    }

    /// F⁻¹ ← F⁻¹ − (F⁻¹g)(F⁻¹g)ᵀ / (m + gᵀF⁻¹g) per block; `g` in OBS order.
    pub fn add_grad(&mut self, g: &[f32]) {
        let (b, d, m) = (self.b, self.d, self.m);
        self.data.par_chunks_mut(b * b).enumerate().for_each(|(k, f)| {
            let start = k * b;
            let gb: Vec<f32> = (0..b).map(|i| if start + i < d { g[start + i] } else { 0.0 }).collect();
            if gb.iter().all(|&x| x == 0.0) {
                return;
            }
            let fg: Vec<f32> =
                (0..b).map(|i| f[i * b..(i + 1) * b].iter().zip(&gb).map(|(a, x)| a * x).sum::<f32>()).collect();
            let denom: f32 = (m as f32 + gb.iter().zip(&fg).map(|(a, x)| a * x).sum::<f32>()).sqrt();
            let u: Vec<f32> = fg.iter().map(|x| x / denom).collect();
            for i in 0..b {
                let ui = u[i];
                for (fij, uj) in f[i * b..(i + 1) * b].iter_mut().zip(&u) {
                    *fij -= ui * uj;
                }
            }
        });
    }

    /// diag F⁻¹, the first d entries.
    pub fn diag(&self) -> Vec<f32> {
        let b = self.b;
        (0..self.d).map(|p| self.data[(p / b) * b * b + (p % b) * b + p % b]).collect()
    }

    /// F⁻¹·v (v in OBS order, length d).
    pub fn mul(&self, v: &[f32]) -> Vec<f32> {
        let (b, d) = (self.b, self.d);
        let mut out = vec![0.0f32; self.data.len() / b];
        out.par_chunks_mut(b).enumerate().for_each(|(k, o)| {
            let f = &self.data[k * b * b..(k + 1) * b * b];
            let start = k * b;
            for (i, oi) in o.iter_mut().enumerate() {
                let mut s = 0.0f32;
                for j in 0..b {
                    if start + j < d {
                        s += f[i * b + j] * v[start + j];
                    }
                }
                *oi = s;
            }
        });
        out.truncate(d);
        out
    }

    /// The k×k diagonal sub-block of F⁻¹ at OBS position `p` (k consecutive in one block).
    pub fn sub_block(&self, p: usize, k: usize) -> Vec<f64> {
        let b = self.b;
        let (blk, r) = (p / b, p % b);
        let f = &self.data[blk * b * b..];
        let mut out = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                out[i * k + j] = f[(r + i) * b + r + j] as f64;
            }
        }
        out
    }
}

/// Solves `a x = y` for a small symmetric positive-definite `a` (k×k, row-major) by Gaussian
/// elimination with partial pivoting, in f64.
fn solve(mut a: Vec<f64>, mut y: Vec<f64>) -> Vec<f64> {
    let k = y.len();
    for c in 0..k {
        let p = (c..k).max_by(|&i, &j| a[i * k + c].abs().total_cmp(&a[j * k + c].abs())).unwrap();
        if p != c {
            for j in 0..k {
                a.swap(c * k + j, p * k + j);
            }
            y.swap(c, p);
        }
        let d = a[c * k + c];
        for r in c + 1..k {
            let f = a[r * k + c] / d;
            for j in c..k {
                a[r * k + j] -= f * a[c * k + j];
            }
            y[r] -= f * y[c];
        }
    }
    let mut x = vec![0.0; k];
    for r in (0..k).rev() {
        let s: f64 = (r + 1..k).map(|j| a[r * k + j] * x[j]).sum();
        x[r] = (y[r] - s) / a[r * k + r];
    }
    x
}

/// One layer's Fisher inverse and its OBS-ordered view of the weights.
pub struct LayerFisher {
    pub order: Vec<usize>,
    pub finv: BlockFisherInverse,
}

/// Builds F⁻¹ for each layer from `count` gradients of `source` (each multiplied by the layer's
/// current mask, as SparseML's `pre_optim_step_update`). Returns the inverses and the number of
/// gradients used.
pub fn fisher_inverses(
    cfg: &ObsConfig,
    layers: &[Layer],
    source: &mut dyn super::GradientSource,
) -> Result<(Vec<LayerFisher>, usize)> {
    let mut fishers: Vec<LayerFisher> = layers
        .iter()
        .map(|l| LayerFisher {
            order: obs_order(l, cfg.group),
            finv: BlockFisherInverse::new(l.weight.len(), cfg.fisher_block_size, cfg.damp, cfg.num_grads),
        })
        .collect();
    let mut seen = 0usize;
    let used = source.gradients(layers, cfg.num_grads, &mut |grads: &[Vec<f32>]| {
        if grads.len() != layers.len() {
            bail!("the gradient source returned {} gradients for {} layers", grads.len(), layers.len());
        }
        for ((f, l), g) in fishers.iter_mut().zip(layers).zip(grads) {
            if g.len() != l.weight.len() {
                bail!("gradient of '{}' has {} elements, expected {}", l.param, g.len(), l.weight.len());
            }
            let ordered: Vec<f32> = f.order.iter().map(|&s| g[s] * l.mask[s]).collect();
            f.finv.add_grad(&ordered);
        }
        seen += 1;
        Ok(())
    })?;
    if seen != cfg.num_grads || used != cfg.num_grads {
        bail!("OBSPruningModifier needs num_grads = {} gradients; the source gave {seen}", cfg.num_grads);
    }
    Ok((fishers, used))
}

/// Per-layer OBS scores (stored layout; pruned weights −∞), and for groups the cached
/// (F⁻¹_bb)⁻¹ w in OBS order (empty for unstructured).
pub fn scores(cfg: &ObsConfig, layers: &[Layer], fishers: &[LayerFisher]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let k = cfg.group_len();
    layers
        .par_iter()
        .zip(fishers)
        .map(|(l, f)| {
            let w: Vec<f32> = f.order.iter().map(|&s| l.weight[s]).collect();
            let mut sc = vec![0.0f32; w.len()];
            let mut finv_w = Vec::new();
            if k == 1 {
                let diag = f.finv.diag();
                for p in 0..w.len() {
                    sc[p] = w[p] * w[p] / (2.0 * diag[p] + EPS);
                }
            } else {
                finv_w = vec![0.0f32; w.len()];
                for p in (0..w.len()).step_by(k) {
                    let wb: Vec<f64> = w[p..p + k].iter().map(|&x| x as f64).collect();
                    let x = solve(f.finv.sub_block(p, k), wb.clone());
                    let s = 0.5 * wb.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>();
                    for j in 0..k {
                        sc[p + j] = s as f32;
                        finv_w[p + j] = x[j] as f32;
                    }
                }
            }
            let mut stored = vec![0.0f32; w.len()];
            for (p, &s) in f.order.iter().enumerate() {
                stored[s] = if l.mask[s] == 0.0 { f32::NEG_INFINITY } else { sc[p] };
            }
            (stored, finv_w)
        })
        .collect()
}

/// New masks from the scores: lowest groups pruned to each layer's target (all layers together
/// when `global`, at the first layer's target).
pub fn masks_from_scores(cfg: &ObsConfig, layers: &[Layer], fishers: &[LayerFisher], sc: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let k = cfg.group_len();
    let groups = |li: usize| -> Vec<(f32, usize, Vec<usize>)> {
        let order = &fishers[li].order;
        (0..order.len())
            .step_by(k)
            .map(|p| {
                let idx: Vec<usize> = order[p..p + k].to_vec();
                let mut idx_sorted = idx.clone();
                idx_sorted.sort_unstable();
                (sc[li][idx[0]], li, idx_sorted)
            })
            .collect()
    };
    if cfg.global {
        let sizes: Vec<usize> = layers.iter().map(|l| l.weight.len()).collect();
        let cands: Vec<_> = (0..layers.len()).flat_map(groups).collect();
        prune_lowest_scored(&sizes, cands, layers.first().map(|l| l.sparsity).unwrap_or(0.0))
    } else {
        (0..layers.len())
            .into_par_iter()
            .map(|li| {
                let cands: Vec<_> = groups(li).into_iter().map(|(s, _, g)| (s, 0, g)).collect();
                prune_lowest_scored(&[layers[li].weight.len()], cands, layers[li].sparsity).pop().unwrap()
            })
            .collect()
    }
}

/// The OBS update of the weights pruned by `new_masks` (1 → 0), then zeros them; sets the masks.
pub fn apply_update(
    cfg: &ObsConfig,
    layers: &mut [Layer],
    fishers: &[LayerFisher],
    finv_w: &[Vec<f32>],
    new_masks: Vec<Vec<f32>>,
) {
    let k = cfg.group_len();
    layers.par_iter_mut().zip(fishers).zip(finv_w).zip(new_masks).for_each(|(((l, f), fw), m)| {
        let pruned = |s: usize| l.mask[s] != 0.0 && m[s] == 0.0;
        let v: Vec<f32> = if k == 1 {
            let diag = f.finv.diag();
            f.order
                .iter()
                .enumerate()
                .map(|(p, &s)| if pruned(s) { l.weight[s] / (diag[p] + EPS) } else { 0.0 })
                .collect()
        } else {
            f.order.iter().enumerate().map(|(p, &s)| if pruned(s) { fw[p] } else { 0.0 }).collect()
        };
        let delta = f.finv.mul(&v);
        let newly: Vec<bool> = (0..m.len()).map(pruned).collect();
        for (p, &s) in f.order.iter().enumerate() {
            l.weight[s] -= delta[p];
        }
        for (s, n) in newly.into_iter().enumerate() {
            if n {
                l.weight[s] = 0.0;
            }
        }
        l.mask = m;
    });
}

pub struct Obs {
    pub cfg: ObsConfig,
}

impl Pruner for Obs {
    fn name(&self) -> &'static str {
        "obs"
    }

    fn needs_gradients(&self) -> bool {
        true
    }

    fn prune(&mut self, layers: &mut [Layer], evidence: &mut Evidence) -> Result<PruneReport> {
        let started = std::time::Instant::now();
        let cfg = &self.cfg;
        cfg.check(layers)?;
        let bytes = cfg.state_bytes(layers);
        if bytes > cfg.max_state_bytes {
            bail!(
                "OBSPruningModifier: the block Fisher inverses of {} weights with fisher_block_size {} take {:.2} GB, \
                 over the limit of {:.2} GB (lower fisher_block_size, or raise --prune-memory-limit-mb)",
                layers.iter().map(|l| l.weight.len()).sum::<usize>(),
                cfg.fisher_block_size,
                bytes as f64 / 1e9,
                cfg.max_state_bytes as f64 / 1e9
            );
        }
        let targets: Vec<f64> = layers.iter().map(|l| l.sparsity).collect();
        let starts: Vec<f64> = layers.iter().map(|l| super::mask_sparsity(&l.mask)).collect();
        let start_global = overall_sparsity(layers);
        let nothing_to_prune = if cfg.global {
            targets.first().is_none_or(|&t| t <= start_global)
        } else {
            targets.iter().zip(&starts).all(|(t, s)| t <= s)
        };
        if nothing_to_prune {
            return Ok(PruneReport {
                algorithm: self.name().into(),
                samples: 0,
                state_bytes: 0,
                seconds: started.elapsed().as_secs_f64(),
                sparsity: start_global,
            });
        }
        let source = evidence
            .gradients
            .as_deref_mut()
            .context("OBSPruningModifier needs task-loss gradients, and none are available here")?;
        let r = cfg.num_recomputations.max(1);
        let mut samples = 0;
        for j in 1..=r {
            let t = j as f64 / r as f64;
            for (i, l) in layers.iter_mut().enumerate() {
                let s0 = if cfg.global { start_global } else { starts[i] };
                l.sparsity = s0 + (targets[i] - s0) * t;
            }
            tracing::info!(substep = j, of = r, sparsity = layers[0].sparsity, "OBS: collecting gradients");
            let (fishers, used) = fisher_inverses(cfg, layers, source)?;
            samples += used;
            let sc = scores(cfg, layers, &fishers);
            let (sc, fw): (Vec<Vec<f32>>, Vec<Vec<f32>>) = sc.into_iter().unzip();
            let masks = masks_from_scores(cfg, layers, &fishers, &sc);
            apply_update(cfg, layers, &fishers, &fw, masks);
        }
        for (l, t) in layers.iter_mut().zip(targets) {
            l.sparsity = t;
        }
        Ok(PruneReport {
            algorithm: self.name().into(),
            samples,
            state_bytes: bytes,
            seconds: started.elapsed().as_secs_f64(),
            sparsity: overall_sparsity(layers),
        })
    }
}
