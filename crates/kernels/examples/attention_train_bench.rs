//! Times `AttentionTrain` forward and backward on one thread at MiniLM's attention shape
//! (16 × 12 heads × 32, S = 160 and 384): `cargo run --release -p sparsec-kernels --example
//! attention_train_bench`. Prints ms per call and GFLOP/s counting the products' multiply-adds
//! as 2 FLOP (forward 2 products, backward 5 with the recomputed scores).

use sparsec_kernels::attention::{AttentionTrain, TrainDims};
use sparsec_kernels::{Isa, Serial};
use std::time::Instant;

fn main() {
    let isa = Isa::from_env().expect("ISA");
    let att = AttentionTrain::new(isa).unwrap();
    for seq in [160usize, 384] {
        let dims = TrainDims { batch: 16, heads: 12, seq, head_dim: 32 };
        let n = 16 * 12 * seq * 32;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let (mut ctx, mut stats) = (vec![0f32; n], vec![0f32; 2 * n / 32]);
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let flop = 2.0 * 16.0 * 12.0 * (seq * seq * 32) as f64;
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            att.forward(dims, &x, &x, &x, None, 0.17, &mut ctx, &mut stats, &Serial).unwrap();
            tf = tf.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            att.backward(dims, &x, &x, &x, None, 0.17, &ctx, &stats, &x, &mut dq, &mut dk, &mut dv, &Serial).unwrap();
            tb = tb.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{isa} S {seq}: forward {:.1} ms ({:.1} GFLOP/s), backward {:.1} ms ({:.1} GFLOP/s)",
            tf * 1e3,
            2.0 * flop / tf / 1e9,
            tb * 1e3,
            5.0 * flop / tb / 1e9
        );
    }
}
