//! `AttentionTrain` (forward and backward of the training graph's attention core) against an f64
//! reference on every ISA this CPU has, forced.
//!
//! Error model: each output is a final f32 contraction of `n ≤ S + D` terms (within
//! `γ_n·Σ|terms|`, Higham §3.1) whose probabilities carry the relative error of their scores, a
//! `D`-term dot product with absolute error `γ_D·M` (`M` the row's largest `scale·Σ|q·k|`) which
//! `exp` turns into a relative error of the same size, plus the 2-ulp `exp` and the sum and
//! reciprocal of the row. So every output is checked against
//! `4·γ_{S+D+8}·(1 + M)·A`, with `A` the f64 sum of the absolute terms of its contraction
//! (for the gradients, `|dS|` taken as `p·(|dP| + |Δ|)`). Besides: results are bit-identical for 1
//! and 3 threads, and rows masked entirely with -inf give 0 and no gradient.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsec_kernels::attention::{AttentionTrain, TrainBias, TrainDims};
use sparsec_kernels::{Isa, Parallel, Serial};

use crate::masked_linear::Threads;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::powi(2.0, -24);
    nu / (1.0 - nu)
}

/// The bias layouts a case can use.
#[derive(Clone, Copy, Debug)]
enum BiasKind {
    None,
    /// `[B, 1, 1, S]`: padding keys at -inf (the last `B·2` keys of item 1 onwards).
    Keys,
    /// `[B, 1, S, S]`: random finite values, a -inf key pattern, and query row 1 of item 0 fully
    /// masked.
    Full,
}

struct Case {
    dims: TrainDims,
    bias: BiasKind,
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    dctx: Vec<f32>,
    bias_data: Vec<f32>,
    bias_dims: [usize; 3],
    scale: f32,
}

impl Case {
    fn new(dims: TrainDims, bias: BiasKind, rng: &mut ChaCha8Rng) -> Case {
        let TrainDims { batch, heads, seq, head_dim } = dims;
        let n = batch * heads * seq * head_dim;
        let mut r = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let (q, kt, v, dctx) = (r(n), r(n), r(n), r(n));
        let (bias_data, bias_dims) = match bias {
            BiasKind::None => (vec![], [0; 3]),
            BiasKind::Keys => {
                let d = (0..batch * seq)
                    .map(|t| if (t % seq) + 2 * (t / seq) >= seq && t / seq > 0 { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                (d, [batch, 1, 1])
            }
            BiasKind::Full => {
                let mut d = r(batch * seq * seq);
                for (t, x) in d.iter_mut().enumerate() {
                    let (b, i, j) = (t / (seq * seq), (t / seq) % seq, t % seq);
                    if (j % 5 == 3 && j != i) || (b == 0 && i == 1 && seq > 1) {
                        *x = f32::NEG_INFINITY;
                    }
                }
                (d, [batch, 1, seq])
            }
        };
        Case { dims, bias, q, kt, v, dctx, bias_data, bias_dims, scale: 1.0 / (head_dim as f32).sqrt() }
    }

    fn bias(&self) -> Option<TrainBias<'_>> {
        match self.bias {
            BiasKind::None => None,
            _ => Some(TrainBias { data: &self.bias_data, dims: self.bias_dims }),
        }
    }

    fn bias_at(&self, b: usize, i: usize, j: usize) -> f64 {
        let s = self.dims.seq;
        match self.bias {
            BiasKind::None => 0.0,
            BiasKind::Keys => self.bias_data[b * s + j] as f64,
            BiasKind::Full => self.bias_data[(b * s + i) * s + j] as f64,
        }
    }

    /// `(ctx, dq, dkt, dv)` from `att`.
    fn run(&self, att: &AttentionTrain, par: &dyn Parallel) -> [Vec<f32>; 4] {
        let n = self.q.len();
        let (mut ctx, mut stats) = (vec![0f32; n], vec![0f32; 2 * n / self.dims.head_dim]);
        att.forward(self.dims, &self.q, &self.kt, &self.v, self.bias(), self.scale, &mut ctx, &mut stats, par).unwrap();
        let (mut dq, mut dkt, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        att.backward(
            self.dims,
            &self.q,
            &self.kt,
            &self.v,
            self.bias(),
            self.scale,
            &ctx,
            &stats,
            &self.dctx,
            &mut dq,
            &mut dkt,
            &mut dv,
            par,
        )
        .unwrap();
        [ctx, dq, dkt, dv]
    }

    /// f64 `(value, bound)` per output of `(ctx, dq, dkt, dv)`.
    fn reference(&self) -> [Vec<(f64, f64)>; 4] {
        let TrainDims { batch, heads, seq: s, head_dim: d } = self.dims;
        let n = self.q.len();
        let g = 4.0 * gamma(s + d + 8);
        let sc = self.scale as f64;
        let mut out: [Vec<(f64, f64)>; 4] = std::array::from_fn(|_| vec![(0.0, 0.0); n]);
        for b in 0..batch {
            for h in 0..heads {
                let off = (b * heads + h) * s * d;
                let q = |i: usize, e: usize| self.q[off + i * d + e] as f64;
                let k = |j: usize, e: usize| self.kt[off + e * s + j] as f64;
                let v = |j: usize, e: usize| self.v[off + j * d + e] as f64;
                let go = |i: usize, e: usize| self.dctx[off + i * d + e] as f64;
                let mut p = vec![vec![0f64; s]; s];
                let mut mag = vec![0f64; s];
                for i in 0..s {
                    let row: Vec<f64> = (0..s)
                        .map(|j| sc * (0..d).map(|e| q(i, e) * k(j, e)).sum::<f64>() + self.bias_at(b, i, j))
                        .collect();
                    mag[i] =
                        (0..s).map(|j| sc * (0..d).map(|e| (q(i, e) * k(j, e)).abs()).sum::<f64>()).fold(0.0, f64::max);
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    if m == f64::NEG_INFINITY {
                        continue;
                    }
                    let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
                    for j in 0..s {
                        p[i][j] = (row[j] - m).exp() / z;
                    }
                }
                let ctx: Vec<Vec<f64>> =
                    (0..s).map(|i| (0..d).map(|e| (0..s).map(|j| p[i][j] * v(j, e)).sum()).collect()).collect();
                let dp: Vec<Vec<f64>> =
                    (0..s).map(|i| (0..s).map(|j| (0..d).map(|e| go(i, e) * v(j, e)).sum()).collect()).collect();
                let delta: Vec<f64> = (0..s).map(|i| (0..d).map(|e| go(i, e) * ctx[i][e]).sum()).collect();
                let ds = |i: usize, j: usize| p[i][j] * (dp[i][j] - delta[i]);
                let ads = |i: usize, j: usize| p[i][j] * (dp[i][j].abs() + delta[i].abs());
                for i in 0..s {
                    for e in 0..d {
                        let a: f64 = (0..s).map(|j| p[i][j] * v(j, e).abs()).sum();
                        out[0][off + i * d + e] = (ctx[i][e], g * (1.0 + mag[i]) * a);
                        let val: f64 = sc * (0..s).map(|j| ds(i, j) * k(j, e)).sum::<f64>();
                        let a: f64 = sc * (0..s).map(|j| ads(i, j) * k(j, e).abs()).sum::<f64>();
                        out[1][off + i * d + e] = (val, g * (1.0 + mag[i]) * a);
                    }
                }
                let mmax = mag.iter().cloned().fold(0.0, f64::max);
                for j in 0..s {
                    for e in 0..d {
                        let val: f64 = sc * (0..s).map(|i| q(i, e) * ds(i, j)).sum::<f64>();
                        let a: f64 = sc * (0..s).map(|i| q(i, e).abs() * ads(i, j)).sum::<f64>();
                        out[2][off + e * s + j] = (val, g * (1.0 + mmax) * a);
                        let val: f64 = (0..s).map(|i| p[i][j] * go(i, e)).sum();
                        let a: f64 = (0..s).map(|i| p[i][j] * go(i, e).abs()).sum();
                        out[3][off + j * d + e] = (val, g * (1.0 + mmax) * a);
                    }
                }
            }
        }
        out
    }
}

fn isas() -> Vec<Isa> {
    Isa::available().into_iter().filter(|&i| Isa::forced(i).is_ok()).collect()
}

fn cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
    let shapes = [(2, 3, 37, 32), (1, 2, 130, 64), (2, 2, 1, 8), (1, 1, 50, 7), (2, 2, 17, 20)];
    let mut out = vec![];
    for (batch, heads, seq, head_dim) in shapes {
        for bias in [BiasKind::None, BiasKind::Keys, BiasKind::Full] {
            out.push(Case::new(TrainDims { batch, heads, seq, head_dim }, bias, rng));
        }
    }
    out
}

#[test]
fn attention_train_matches_f64_reference_on_every_isa() {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let cases = cases(&mut rng);
    for isa in isas() {
        let att = AttentionTrain::new(isa).unwrap();
        let mut worst = [0f64; 4];
        for c in &cases {
            let got = c.run(&att, &Serial);
            let want = c.reference();
            for (t, name) in ["ctx", "dq", "dkt", "dv"].iter().enumerate() {
                for (idx, (&x, &(r, bound))) in got[t].iter().zip(&want[t]).enumerate() {
                    assert!(x.is_finite(), "{isa} {:?} {:?}: {name}[{idx}] = {x}", c.dims, c.bias);
                    let err = (x as f64 - r).abs();
                    assert!(
                        err <= bound,
                        "{isa} {:?} {:?}: {name}[{idx}] = {x}, f64 {r}, error {err:.3e} > bound {bound:.3e}",
                        c.dims,
                        c.bias
                    );
                    if bound > 0.0 {
                        worst[t] = worst[t].max(err / bound);
                    }
                }
            }
            assert_eq!(c.run(&att, &Threads(3)), got, "{isa} {:?}: 3 threads differ from 1", c.dims);
        }
        println!(
            "{isa}: worst error / bound: ctx {:.3}, dq {:.3}, dkt {:.3}, dv {:.3}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }
}

#[test]
fn fully_masked_rows_give_zero_and_pass_no_gradient() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let c = Case::new(TrainDims { batch: 1, heads: 2, seq: 9, head_dim: 16 }, BiasKind::Full, &mut rng);
    for isa in isas() {
        let [ctx, dq, _, _] = c.run(&AttentionTrain::new(isa).unwrap(), &Serial);
        for h in 0..2 {
            let row = (h * 9 + 1) * 16..(h * 9 + 2) * 16;
            assert!(ctx[row.clone()].iter().all(|&x| x == 0.0), "{isa}: masked row's context is not 0");
            assert!(dq[row].iter().all(|&x| x == 0.0), "{isa}: masked row's dq is not 0");
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_argument() {
    let att = AttentionTrain::new(Isa::Scalar).unwrap();
    let dims = TrainDims { batch: 1, heads: 2, seq: 3, head_dim: 4 };
    let x = vec![0f32; 24];
    let (mut ctx, mut stats) = (vec![0f32; 24], vec![0f32; 12]);
    let e = att.forward(dims, &x[..20], &x, &x, None, 1.0, &mut ctx, &mut stats, &Serial).unwrap_err();
    assert!(e.to_string().contains("q has 20"), "{e}");
    let bias = TrainBias { data: &x[..5], dims: [1, 2, 1] };
    let e = att.forward(dims, &x, &x, &x, Some(bias), 1.0, &mut ctx, &mut stats, &Serial).unwrap_err();
    assert!(e.to_string().contains("bias has 5"), "{e}");
    let bias = TrainBias { data: &x[..9], dims: [1, 3, 1] };
    let e = att.forward(dims, &x, &x, &x, Some(bias), 1.0, &mut ctx, &mut stats, &Serial).unwrap_err();
    assert!(e.to_string().contains("does not broadcast"), "{e}");
    let e = att.forward(dims, &x, &x, &x, None, 1.0, &mut ctx, &mut stats[..10], &Serial).unwrap_err();
    assert!(e.to_string().contains("stats"), "{e}");
}
