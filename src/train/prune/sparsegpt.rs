//! `SparseGPTModifier` (SparseGPT / OBC, arXiv 2301.00774), as SparseML's
//! `SparseGptWrapper.fasterprune` computes it: per linear layer, from the layer's calibration
//! inputs X,
//!
//! - H = (2/n)·Σ x xᵀ (accumulated in f64 over the n non-padding tokens; SparseML divides by the
//!   number of sequences, a constant factor that changes neither the masks nor the weights);
//!   columns with H_jj = 0 are dead (H_jj := 1, W[:, j] := 0);
//! - H += `dampening_frac`·mean(diag H)·I; U = the upper Cholesky factor of H⁻¹;
//! - columns are swept in blocks of `block_size`: at each block the mask is chosen from
//!   W²/diag(U)² (unstructured: the block's elements up to and including the `⌊n·sparsity⌋`-th
//!   smallest, as the reference; `N:M`: in each run of M columns, the N smallest of every row are
//!   pruned; `[k, 1]` / `[1, k]` blocks: the groups' summed scores, thresholded like
//!   unstructured), then column by column the pruned weights are zeroed and the error
//!   (w − q)/U_ii is fed back onto the remaining columns of the block through U's row, and after
//!   the block onto all later columns.
//!
//! Everything is computed in f64 on PyTorch's `[out, in]` layout. Rows are independent once a
//! block's mask is chosen, so the sweep runs rows in parallel.

use anyhow::{bail, Context, Result};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::{overall_sparsity, Evidence, Layer, PruneReport, Pruner};

/// The mask structure of `mask_structure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgptMask {
    /// `"0:0"`.
    Unstructured,
    /// `"N:M"`: N of every M consecutive inputs are PRUNED (SparseML's `prunen`/`prunem`).
    PruneNOfM { n: usize, m: usize },
    /// `[out, in]` blocks pruned together (a sparsec extension: `[4, 1]` or `[1, 4]`).
    Block { out: usize, inp: usize },
}

/// Settings shared by the layers of one modifier.
#[derive(Clone, Debug)]
pub struct SparseGptConfig {
    pub block_size: usize,
    pub dampening_frac: f64,
    pub mask: SgptMask,
}

/// (2/n)·Σ x xᵀ over the rows x of a layer's input.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub cols: usize,
    sum: Vec<f64>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(cols: usize) -> Hessian {
        Hessian { cols, sum: vec![0.0; cols * cols], samples: 0 }
    }

    /// Adds `n` rows of `x` (`[n, cols]`, row-major).
    pub fn add(&mut self, x: &[f32], n: usize) {
        let c = self.cols;
        let xa = ArrayView2::from_shape((n, c), &x[..n * c]).expect("rows match");
        let g = xa.t().dot(&xa);
        for (s, v) in self.sum.iter_mut().zip(g.iter()) {
            *s += *v as f64;
        }
        self.samples += n;
    }

    /// H, `[cols, cols]` row-major.
    pub fn matrix(&self) -> Vec<f64> {
        let f = if self.samples == 0 { 0.0 } else { 2.0 / self.samples as f64 };
        self.sum.iter().map(|s| s * f).collect()
    }
}

/// Lower Cholesky factor of a symmetric positive-definite `a` (n×n).
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= l[j * n + k] * l[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            bail!("the damped Hessian is not positive definite (pivot {j}: {d}); raise dampening_frac");
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        let (head, tail) = l.split_at_mut((j + 1) * n);
        let lj = &head[j * n..j * n + j];
        tail.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            let i = j + 1 + r;
            let s: f64 = row[..j].iter().zip(lj).map(|(a, b)| a * b).sum();
            row[j] = (a[i * n + j] - s) / d;
        });
    }
    Ok(l)
}

/// U with Uᵀ U = H⁻¹, from H (n×n): H = L Lᵀ, H⁻¹ = L⁻ᵀ L⁻¹, then the upper Cholesky factor of
/// H⁻¹ (torch's `cholesky`, `cholesky_inverse`, `cholesky(upper=True)`).
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>> {
    let l = cholesky(h, n)?;
    // Column j of L⁻¹ by forward substitution; columns are independent.
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0.0; n];
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let s: f64 = (j..i).map(|k| l[i * n + k] * x[k]).sum();
                x[i] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    let li = Array2::from_shape_fn((n, n), |(i, j)| cols[j][i]);
    let hinv = li.t().dot(&li);
    let hinv: Vec<f64> = hinv.iter().copied().collect();
    let lo = cholesky(&hinv, n).context("H⁻¹ is not positive definite")?;
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = lo[i * n + j];
        }
    }
    Ok(u)
}

/// SparseGPT on one layer: `w` (`[rows, cols]` row-major, PyTorch layout, f64) is pruned to
/// `sparsity` with `h` (`[cols, cols]`) and updated in place; returns the mask (true = pruned).
pub fn fasterprune(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: &[f64],
    sparsity: f64,
    cfg: &SparseGptConfig,
) -> Result<Vec<bool>> {
    let h = dampened_hessian(w, rows, cols, h, cfg);
    let u = inverse_cholesky_upper(&h, cols)?;
    let bs = cfg.block_size.max(1);
    let mut mask = vec![false; rows * cols];
    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        select_block_mask(w, rows, cols, &u, i1, i2, sparsity, cfg.mask, &mut mask);
        w.par_chunks_mut(cols).zip(mask.par_chunks_mut(cols)).for_each(|(wr, mr)| {
            let mut err = vec![0.0; count];
            for (i, ei) in err.iter_mut().enumerate() {
                let c = i1 + i;
                if let SgptMask::PruneNOfM { n, m } = cfg.mask {
                    if i.is_multiple_of(m) {
                        let end = (c + m).min(i2);
                        let mut idx: Vec<usize> = (c..end).collect();
                        let sc = |k: usize| {
                            let d = u[k * cols + k];
                            wr[k] * wr[k] / (d * d)
                        };
                        idx.sort_by(|&a, &b| sc(a).total_cmp(&sc(b)).then(a.cmp(&b)));
                        for &k in idx.iter().take(n) {
                            mr[k] = true;
                        }
                    }
                }
                let wv = wr[c];
                let q = if mr[c] { 0.0 } else { wv };
                let d = u[c * cols + c];
                let e = (wv - q) / d;
                for k in c..i2 {
                    wr[k] -= e * u[c * cols + k];
                }
                wr[c] = q;
                *ei = e;
            }
            for k in i2..cols {
                let mut s = 0.0;
                for (i, e) in err.iter().enumerate() {
                    s += e * u[(i1 + i) * cols + k];
                }
                wr[k] -= s;
            }
        });
    }
    Ok(mask)
}

/// `h` with each dead input's diagonal set to 1 (and its weight column zeroed in `w`), then
/// dampened by `dampening_frac` times the mean diagonal.
fn dampened_hessian(w: &mut [f64], rows: usize, cols: usize, h: &[f64], cfg: &SparseGptConfig) -> Vec<f64> {
    let mut h = h.to_vec();
    for j in 0..cols {
        if h[j * cols + j] == 0.0 {
            h[j * cols + j] = 1.0;
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let mean_diag = (0..cols).map(|j| h[j * cols + j]).sum::<f64>() / cols as f64;
    let damp = cfg.dampening_frac * mean_diag;
    for j in 0..cols {
        h[j * cols + j] += damp;
    }
    h
}

/// The unstructured or block mask of the columns `i1..i2` (N:M masks are chosen during the
/// sweep), by the OBS saliency `w^2 / u_cc^2`.
#[allow(clippy::too_many_arguments)]
fn select_block_mask(
    w: &[f64],
    rows: usize,
    cols: usize,
    u: &[f64],
    i1: usize,
    i2: usize,
    sparsity: f64,
    structure: SgptMask,
    mask: &mut [bool],
) {
    let score = |r: usize, c: usize| {
        let d = u[c * cols + c];
        w[r * cols + c] * w[r * cols + c] / (d * d)
    };
    match structure {
        SgptMask::Unstructured => {
            let mut tmp: Vec<f64> =
                (0..rows).flat_map(|r| (i1..i2).map(move |c| (r, c))).map(|(r, c)| score(r, c)).collect();
            let k = (tmp.len() as f64 * sparsity) as usize;
            let thresh = kth(&mut tmp, k);
            for r in 0..rows {
                for c in i1..i2 {
                    mask[r * cols + c] = score(r, c) <= thresh;
                }
            }
        }
        SgptMask::Block { out, inp } => {
            let mut groups: Vec<(f64, usize, usize)> = Vec::new();
            for r0 in (0..rows).step_by(out) {
                for c0 in (i1..i2).step_by(inp) {
                    let mut s = 0.0;
                    for r in r0..(r0 + out).min(rows) {
                        for c in c0..(c0 + inp).min(i2) {
                            s += score(r, c);
                        }
                    }
                    groups.push((s, r0, c0));
                }
            }
            let mut vals: Vec<f64> = groups.iter().map(|g| g.0).collect();
            let thresh = kth(&mut vals, (groups.len() as f64 * sparsity) as usize);
            for (s, r0, c0) in groups {
                if s <= thresh {
                    for r in r0..(r0 + out).min(rows) {
                        for c in c0..(c0 + inp).min(i2) {
                            mask[r * cols + c] = true;
                        }
                    }
                }
            }
        }
        SgptMask::PruneNOfM { .. } => {}
    }
}

/// The k-th smallest value (0-based, clamped), as `torch.sort(x)[0][k]`.
fn kth(v: &mut [f64], k: usize) -> f64 {
    if v.is_empty() {
        return f64::NEG_INFINITY;
    }
    let k = k.min(v.len() - 1);
    v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    v[k]
}

/// SparseGPT over the layers of one modifier, in groups (the modules `targets` names, in model
/// order); with `sequential_update` each group's inputs are captured after the groups before it
/// were pruned, otherwise all from the model as it was.
pub struct SparseGpt {
    pub cfg: SparseGptConfig,
    pub groups: Vec<Vec<usize>>,
    pub sequential_update: bool,
    pub max_state_bytes: u64,
}

impl SparseGpt {
    fn prune_group(&self, layers: &mut [Layer], group: &[usize], hs: &[Hessian]) -> Result<()> {
        for (k, &li) in group.iter().enumerate() {
            let l = &mut layers[li];
            let (rows, cols) = l.torch_shape();
            if hs[k].samples == 0 {
                bail!("SparseGPTModifier: no calibration rows reached '{}'", l.param);
            }
            let mut w: Vec<f64> = l.torch(&l.weight).into_iter().map(f64::from).collect();
            let mask = fasterprune(&mut w, rows, cols, &hs[k].matrix(), l.sparsity, &self.cfg)
                .with_context(|| format!("SparseGPTModifier on '{}'", l.param))?;
            let wt: Vec<f32> = w.iter().map(|&x| x as f32).collect();
            let mt: Vec<f32> = mask.iter().map(|&p| if p { 0.0 } else { 1.0 }).collect();
            let mut weight = l.weight.clone();
            l.set_torch(&mut weight, &wt);
            let mut m = l.mask.clone();
            l.set_torch(&mut m, &mt);
            l.weight = weight;
            l.mask = m;
            tracing::info!(layer = %l.param, samples = hs[k].samples, sparsity = super::mask_sparsity(&l.mask), "SparseGPT");
        }
        Ok(())
    }
}

impl Pruner for SparseGpt {
    fn name(&self) -> &'static str {
        "sparsegpt"
    }

    fn needs_activations(&self) -> bool {
        true
    }

    fn prune(&mut self, layers: &mut [Layer], evidence: &mut Evidence) -> Result<PruneReport> {
        let started = std::time::Instant::now();
        if let SgptMask::PruneNOfM { m, .. } = self.cfg.mask {
            if !self.cfg.block_size.is_multiple_of(m) {
                bail!("SparseGPTModifier: block_size {} must be a multiple of M = {m}", self.cfg.block_size);
            }
        }
        if let SgptMask::Block { out, inp } = self.cfg.mask {
            for l in layers.iter() {
                let (o, i) = l.torch_shape();
                if !o.is_multiple_of(out) || !i.is_multiple_of(inp) || !self.cfg.block_size.is_multiple_of(inp) {
                    bail!(
                        "SparseGPTModifier: '{}' [{o}, {i}] does not split into [{out}, {inp}] blocks within column \
                         blocks of {}",
                        l.param,
                        self.cfg.block_size
                    );
                }
            }
        }
        let bytes_of = |g: &[usize], layers: &[Layer]| -> u64 {
            g.iter().map(|&i| (layers[i].torch_shape().1 as u64).pow(2) * 8).sum()
        };
        let phases: Vec<Vec<usize>> =
            if self.sequential_update { self.groups.clone() } else { vec![self.groups.concat()] };
        let peak = phases.iter().map(|p| bytes_of(p, layers)).max().unwrap_or(0);
        if peak > self.max_state_bytes {
            bail!(
                "SparseGPTModifier: the Hessians take {:.2} GB, over the limit of {:.2} GB (use sequential_update: true)",
                peak as f64 / 1e9,
                self.max_state_bytes as f64 / 1e9
            );
        }
        let source = evidence
            .activations
            .as_deref_mut()
            .context("SparseGPTModifier needs calibration activations, and none are available here")?;
        let mut samples = 0;
        for phase in &phases {
            let mut hs: Vec<Hessian> = phase.iter().map(|&i| Hessian::new(layers[i].torch_shape().1)).collect();
            let mut alias: Vec<usize> = (0..phase.len()).collect();
            let windows = source.layer_inputs(layers, phase, &mut |ks: &[usize], x: &[f32], n: usize| {
                hs[ks[0]].add(x, n);
                for &k in ks {
                    alias[k] = ks[0];
                }
                Ok(())
            })?;
            for k in 0..phase.len() {
                if alias[k] != k {
                    hs[k] = hs[alias[k]].clone();
                }
            }
            samples = samples.max(windows);
            self.prune_group(layers, phase, &hs)?;
        }
        Ok(PruneReport {
            algorithm: self.name().into(),
            samples,
            state_bytes: peak,
            seconds: started.elapsed().as_secs_f64(),
            sparsity: overall_sparsity(layers),
        })
    }
}
