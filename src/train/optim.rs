//! AdamW with PyTorch's `torch.optim.AdamW` semantics (decoupled weight decay, bias correction),
//! per-parameter decay switch (no decay on biases and LayerNorm), and global-norm gradient clipping.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (PyTorch defaults, HF Trainer's weight decay 0).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Optimiser state of one parameter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParamState {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    /// Whether weight decay applies (false for biases and LayerNorm parameters).
    pub decay: bool,
}

/// AdamW over a fixed list of parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of completed steps.
    pub step: u64,
    pub states: Vec<ParamState>,
}

impl AdamW {
    /// `sizes[i]` and `decay[i]` describe parameter `i`.
    pub fn new(config: AdamWConfig, sizes: &[usize], decay: &[bool]) -> AdamW {
        let states = sizes
            .iter()
            .zip(decay)
            .map(|(&n, &d)| ParamState { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n], decay: d })
            .collect();
        AdamW { config, step: 0, states }
    }

    /// One update of every parameter with learning rate `lr`. `params[i]` and `grads[i]` must have
    /// the sizes given at construction.
    pub fn step(&mut self, lr: f32, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        assert_eq!(params.len(), self.states.len(), "parameter count changed");
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        // Every tensor in chunks of CHUNK elements, all chunks of all tensors in one parallel loop, so
        // the word embeddings (half of MiniLM's parameters) do not run on one thread; each element's
        // update is the same expression in the same order whatever the split, so results are exact.
        const CHUNK: usize = 1 << 15;
        let mut work = Vec::new();
        for ((p, g), s) in params.iter_mut().zip(grads).zip(self.states.iter_mut()) {
            assert_eq!(p.len(), g.len(), "a gradient's size differs from its parameter's");
            let decay = if s.decay { 1.0 - lr * c.weight_decay } else { 1.0 };
            let chunks = p
                .chunks_mut(CHUNK)
                .zip(g.chunks(CHUNK))
                .zip(s.exp_avg.chunks_mut(CHUNK).zip(s.exp_avg_sq.chunks_mut(CHUNK)))
                .map(move |((p, g), (m, v))| (p, g, m, v, decay));
            work.extend(chunks);
        }
        work.into_par_iter().for_each(|(p, g, m, v, decay)| {
            for (((p, &gi), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = c.beta1 * *m + (1.0 - c.beta1) * gi;
                *v = c.beta2 * *v + (1.0 - c.beta2) * gi * gi;
                let denom = v.sqrt() / bc2_sqrt + c.eps;
                *p = *p * decay - step_size * *m / denom;
            }
        });
    }
}

/// Scales gradients in place so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping. Per-tensor sums run in
/// parallel and are added in tensor order, so the result does not depend on how rayon splits the work.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let per_tensor: Vec<f64> =
        grads.par_iter().map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect();
    let sq: f64 = per_tensor.iter().sum();
    let norm = sq.sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads
            .par_iter_mut()
            .flat_map(|g| g.par_chunks_mut(1 << 15))
            .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps on f(p) = sum(p^2)/2 (gradient = p), checked against the update rule
    /// written out by hand: m = (1-b1) g, v = (1-b2) g^2, p -= lr * m/bc1 / (sqrt(v/bc2) + eps), decay first.
    #[test]
    fn adamw_matches_the_written_out_update() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg.clone(), &[2, 1], &[true, false]);
        let mut a = vec![1.0f32, -2.0];
        let mut b = vec![0.5f32];
        let lr = 0.01f32;
        let mut expect_a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        let mut m = [0f64; 2];
        let mut v = [0f64; 2];
        for t in 1..=2 {
            let ga = a.clone();
            let gb = b.clone();
            opt.step(lr, &mut [&mut a, &mut b], &[&ga, &gb]);
            for i in 0..2 {
                let g = expect_a[i];
                expect_a[i] *= 1.0 - (lr as f64) * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expect_a[i] -= lr as f64 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for i in 0..2 {
            assert!((a[i] as f64 - expect_a[i]).abs() < 1e-6, "{} vs {}", a[i], expect_a[i]);
        }
        // No decay on the second parameter: after two steps of sign-constant gradients it moves by ~2 lr.
        assert!((b[0] - (0.5 - 2.0 * lr)).abs() < 1e-4, "{}", b[0]);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g1 = vec![3.0f32, 0.0];
        let mut g2 = vec![4.0f32];
        let n = clip_grad_norm(&mut [&mut g1, &mut g2], 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        let after = (g1[0] * g1[0] + g2[0] * g2[0]).sqrt();
        assert!((after - 1.0).abs() < 1e-5);
    }
}
