//! `layer_norm_grad` against an f64 reference of the LayerNorm gradient, bit for bit the same on
//! every ISA this CPU has (forced) and for 1 and 3 threads.

use sparsec_kernels::layer_norm::layer_norm_grad;
use sparsec_kernels::{Isa, Serial};

use crate::masked_linear::Threads;

fn isas() -> Vec<Isa> {
    Isa::available().into_iter().filter(|&i| Isa::forced(i).is_ok()).collect()
}

fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

#[test]
fn layer_norm_grad_matches_f64_and_agrees_on_every_isa() {
    let (rows, n) = (203usize, 384usize);
    let x = values(rows * n, 1, -3.0, 3.0);
    let dy = values(rows * n, 2, -1.0, 1.0);
    let scale = values(n, 3, 0.5, 1.5);
    let (mut mean, mut inv) = (vec![0f32; rows], vec![0f32; rows]);
    for r in 0..rows {
        let row = &x[r * n..(r + 1) * n];
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
        mean[r] = m as f32;
        inv[r] = (1.0 / (var + 1e-12).sqrt()) as f32;
    }
    // f64 reference from the same f32 mean and inv.
    let (mut rdx, mut rds, mut rdb) = (vec![0f64; rows * n], vec![0f64; n], vec![0f64; n]);
    let mut scale_dx = vec![0f64; rows * n];
    for r in 0..rows {
        let (m, s) = (mean[r] as f64, inv[r] as f64);
        let xh: Vec<f64> = (0..n).map(|j| (x[r * n + j] as f64 - m) * s).collect();
        let h: Vec<f64> = (0..n).map(|j| dy[r * n + j] as f64 * scale[j] as f64).collect();
        let m1 = h.iter().sum::<f64>() / n as f64;
        let m2 = h.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        let hm: f64 = h.iter().map(|v| v.abs()).sum::<f64>() / n as f64;
        let hxm: f64 = h.iter().zip(&xh).map(|(a, b)| (a * b).abs()).sum::<f64>() / n as f64;
        for j in 0..n {
            rdx[r * n + j] = s * (h[j] - m1 - xh[j] * m2);
            // The terms of dx's formula in absolute value: h, mean|h|, |x̂|·mean|h·x̂|.
            scale_dx[r * n + j] = s * (h[j].abs() + hm + xh[j].abs() * hxm);
            rds[j] += dy[r * n + j] as f64 * xh[j];
            rdb[j] += dy[r * n + j] as f64;
        }
    }
    let mut first: Option<Vec<f32>> = None;
    for isa in isas() {
        let (mut dx, mut ds, mut db) = (vec![0f32; rows * n], vec![0f32; n], vec![0f32; n]);
        layer_norm_grad(isa, &dy, &x, n, &scale, &mean, &inv, &mut dx, &mut ds, &mut db, &Serial).unwrap();
        // Each dx is a few roundings of terms of size `scale_dx`, after two `n`-term sums (γ_n).
        let gamma = |k: usize| k as f64 * f64::powi(2.0, -24);
        for i in 0..rows * n {
            let err = (dx[i] as f64 - rdx[i]).abs();
            assert!(err <= 2.0 * gamma(n + 8) * scale_dx[i], "{isa}: dx[{i}] = {}, f64 {}", dx[i], rdx[i]);
        }
        for j in 0..n {
            let bound = gamma(rows + 8) * (0..rows).map(|r| (dy[r * n + j] as f64).abs() * 4.0).sum::<f64>();
            assert!((ds[j] as f64 - rds[j]).abs() <= bound, "{isa}: dscale[{j}] = {}, f64 {}", ds[j], rds[j]);
            assert!((db[j] as f64 - rdb[j]).abs() <= bound, "{isa}: dbias[{j}] = {}, f64 {}", db[j], rdb[j]);
        }
        let (mut dx3, mut ds3, mut db3) = (vec![0f32; rows * n], vec![0f32; n], vec![0f32; n]);
        layer_norm_grad(isa, &dy, &x, n, &scale, &mean, &inv, &mut dx3, &mut ds3, &mut db3, &Threads(3)).unwrap();
        assert!(dx3 == dx && ds3 == ds && db3 == db, "{isa}: 3 threads differ from 1");
        let all: Vec<f32> = dx.iter().chain(&ds).chain(&db).copied().collect();
        match &first {
            None => first = Some(all),
            Some(f) => assert!(
                f.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa}: differs from the first ISA"
            ),
        }
    }
}

#[test]
fn layer_norm_grad_rejects_mismatched_lengths() {
    let (mut dx, mut ds, mut db) = (vec![0f32; 8], vec![0f32; 4], vec![0f32; 4]);
    let e = layer_norm_grad(
        Isa::Scalar,
        &[0.0; 8],
        &[0.0; 8],
        4,
        &[1.0; 3],
        &[0.0; 2],
        &[1.0; 2],
        &mut dx,
        &mut ds,
        &mut db,
        &Serial,
    )
    .unwrap_err();
    assert!(e.contains("scale has 3"), "{e}");
    let e = layer_norm_grad(
        Isa::Scalar,
        &[0.0; 8],
        &[0.0; 8],
        4,
        &[1.0; 4],
        &[0.0; 1],
        &[1.0; 2],
        &mut dx,
        &mut ds,
        &mut db,
        &Serial,
    )
    .unwrap_err();
    assert!(e.contains("mean has 1"), "{e}");
}
