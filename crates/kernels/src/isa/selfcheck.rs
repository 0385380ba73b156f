//! The start-up self-check of the AVX-512 kernels against the scalar ones that `isa.rs` runs
//! (once per process) before it chooses AVX-512: small problems of every kernel kind on both ISAs,
//! the masked-linear training kernels included.

use crate::attention::{Attention, AttentionPrecision};
use crate::attention_i8::{Quant, QuantAttention, QuantAttentionParams};
use crate::cpu::Isa;
use crate::linear_f32::LinearF32;
use crate::linear_i8::{ActQuant, Epilogue, LinearI8};
use crate::masked_linear::{KeptBlocks, MaskedLinear};
use crate::par::Serial;

/// `Ok` when the AVX-512 kernels compute what the scalar kernels compute on small problems of
/// every kind (integer products and int8 attention bit for bit; f32 outputs within 1e-5
/// relative); else what differs.
pub(super) fn avx512() -> Result<(), String> {
    let (k, n, t) = (70, 36, 67);
    let raw = values(k * n, 1);
    // [4, 1] blocks at about 50%, plus a dense layer.
    let sparse: Vec<i8> =
        raw.iter().enumerate().map(|(i, &v)| if (i / 4 + i / n) % 2 == 0 { (v * 127.0) as i8 } else { 0 }).collect();
    let dense: Vec<i8> = raw.iter().map(|&v| (v * 127.0) as i8).collect();
    // [1, 4] quads at about 75% (K = 68, a multiple of 4: the quad kernel), on the first 68 rows.
    let quads: Vec<i8> =
        (0..68 * n).map(|i| if (i / n / 4 + i % n) % 4 == 0 { (raw[i] * 127.0) as i8 } else { 0 }).collect();
    let scale = values(n, 2).iter().map(|v| 0.01 + v.abs() * 0.01).collect::<Vec<_>>();
    let x = values(t * k, 3);
    let xq: Vec<u8> = x.iter().map(|&v| ((v + 1.0) * 127.5) as u8).collect();
    for (w, kw) in [(&sparse, k), (&dense, k), (&quads, 68)] {
        let (k, x, xq) = (kw, &x[..t * kw], &xq[..t * kw]);
        let fast = LinearI8::new(w, k, n, &scale, None, Isa::Avx512Vnni).map_err(|e| e.to_string())?;
        let slow = LinearI8::new(w, k, n, &scale, None, Isa::Scalar).map_err(|e| e.to_string())?;
        let (mut a, mut b) = (vec![0i32; t * n], vec![0i32; t * n]);
        fast.matmul_u8_i32(xq, t, &mut a, &Serial).map_err(|e| e.to_string())?;
        slow.matmul_u8_i32(xq, t, &mut b, &Serial).map_err(|e| e.to_string())?;
        if a != b {
            return Err("int8 products differ".into());
        }
        let (mut ya, mut yb) = (vec![0f32; t * n], vec![0f32; t * n]);
        for act in [ActQuant::Static { scale: 0.01, zero_point: 127 }, ActQuant::Dynamic] {
            fast.forward(x, t, act, Epilogue::Gelu, None, &mut ya, &Serial).map_err(|e| e.to_string())?;
            slow.forward(x, t, act, Epilogue::Gelu, None, &mut yb, &Serial).map_err(|e| e.to_string())?;
            if !close(&ya, &yb) {
                return Err("int8 layer outputs differ".into());
            }
        }
    }
    let wf: Vec<f32> = sparse.iter().map(|&v| v as f32 / 127.0).collect();
    let fast = LinearF32::new(&wf, k, n, None, Isa::Avx512Vnni).map_err(|e| e.to_string())?;
    let slow = LinearF32::new(&wf, k, n, None, Isa::Scalar).map_err(|e| e.to_string())?;
    let (mut ya, mut yb) = (vec![0f32; t * n], vec![0f32; t * n]);
    fast.forward(&x, t, Epilogue::None, None, &mut ya, &Serial).map_err(|e| e.to_string())?;
    slow.forward(&x, t, Epilogue::None, None, &mut yb, &Serial).map_err(|e| e.to_string())?;
    if !close(&ya, &yb) {
        return Err("fp32 layer outputs differ".into());
    }
    masked_linear(&wf, &sparse, &x, k, n, t)?;
    let (heads, d, s) = (3, 16, 37);
    let qkv = values(s * 3 * heads * d, 4);
    let mut mask = vec![0f32; s];
    mask[s - 5..].iter_mut().for_each(|m| *m = f32::MIN);
    let run = |isa: Isa| -> Result<Vec<f32>, String> {
        let a = Attention::new(heads, d, AttentionPrecision::F32, isa).map_err(|e| e.to_string())?;
        let hd = heads * d;
        let mut out = vec![0f32; s * hd];
        a.forward(1, s, &qkv, &qkv[hd..], &qkv[2 * hd..], 3 * hd, Some(&mask), 0.25, &mut out, &Serial)
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    if !close(&run(Isa::Avx512Vnni)?, &run(Isa::Scalar)?) {
        return Err("attention outputs differ".into());
    }
    let q8 = |scale: f32, zero_point: u8| Quant { scale, zero_point };
    let p = QuantAttentionParams {
        q: q8(0.01, 125),
        k: q8(0.012, 128),
        v: q8(0.009, 130),
        scores_mul: 0.0001,
        scores: Some(q8(0.05, 140)),
        divisor: 4.0,
        probs: q8(1.0 / 255.0, 0),
        context_mul: 0.0001,
        context: Some(q8(0.004, 110)),
    };
    let run_i8 = |isa: Isa| -> Result<Vec<f32>, String> {
        let a = QuantAttention::new(heads, d, p, isa).map_err(|e| e.to_string())?;
        let hd = heads * d;
        let mut out = vec![0f32; s * hd];
        a.forward(1, s, &qkv, &qkv[hd..], &qkv[2 * hd..], 3 * hd, Some(&mask), &mut out, &Serial)
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    // The kernel is bit-exact across ISAs (integer products exact, the same f32 steps).
    let (fast, slow) = (run_i8(Isa::Avx512Vnni)?, run_i8(Isa::Scalar)?);
    if fast.iter().zip(&slow).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err("int8 attention outputs differ".into());
    }
    Ok(())
}

/// The masked-linear training kernels on both ISAs: the input gradient bit for bit (both sum it
/// in one FMA order); the forward product and the weight gradient, summed in different orders,
/// each within twice the rounding bound of an f32 sum, `2·γ_n·Σ|terms|` (`γ_n = n·u/(1 − n·u)`).
fn masked_linear(w: &[f32], mask_src: &[i8], x: &[f32], k: usize, n: usize, t: usize) -> Result<(), String> {
    let mask: Vec<f32> = mask_src.iter().map(|&v| (v != 0) as u8 as f32).collect();
    let kept = KeptBlocks::from_mask(&mask, k, n).map_err(|e| e.to_string())?;
    let dy = values(t * n, 5);
    let run = |isa: Isa| -> Result<[Vec<f32>; 3], String> {
        let ml = MaskedLinear::new(isa).map_err(|e| e.to_string())?;
        let (mut y, mut dx, mut dw) = (vec![0f32; t * n], vec![0f32; t * k], vec![0f32; k * n]);
        ml.forward(x, t, w, &mask, &kept, None, &mut y, &Serial).map_err(|e| e.to_string())?;
        ml.grad_input(&dy, t, w, &mask, &kept, &mut dx, &Serial).map_err(|e| e.to_string())?;
        ml.grad_weight(x, &dy, t, &mask, &kept, &mut dw, &Serial).map_err(|e| e.to_string())?;
        Ok([y, dx, dw])
    };
    let ([ya, dxa, dwa], [yb, dxb, dwb]) = (run(Isa::Avx512Vnni)?, run(Isa::Scalar)?);
    let gamma = |terms: usize| {
        let nu = terms as f64 * f64::powi(2.0, -24);
        2.0 * nu / (1.0 - nu)
    };
    for tt in 0..t {
        for j in 0..n {
            let mag: f64 = (0..k).map(|kk| (x[tt * k + kk] * w[kk * n + j] * mask[kk * n + j]).abs() as f64).sum();
            if (ya[tt * n + j] - yb[tt * n + j]).abs() as f64 > gamma(k + 1) * mag {
                return Err("masked-linear forward products differ".into());
            }
        }
    }
    for kk in 0..k {
        for j in 0..n {
            let mag: f64 = (0..t).map(|tt| (x[tt * k + kk] * dy[tt * n + j]).abs() as f64).sum();
            if (dwa[kk * n + j] - dwb[kk * n + j]).abs() as f64 > gamma(t.div_ceil(64) * 64 + 1) * mag {
                return Err("masked-linear weight gradients differ".into());
            }
        }
    }
    if dxa.iter().zip(&dxb).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err("masked-linear input gradients differ".into());
    }
    Ok(())
}

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-6)
}

#[cfg(test)]
mod tests {
    use crate::cpu::Isa;

    #[test]
    fn avx512_kernels_pass_their_self_check_where_the_cpu_has_them() {
        if Isa::Avx512Vnni.supported() {
            assert_eq!(super::avx512(), Ok(()));
        } else {
            eprintln!("SKIPPED: this CPU has no AVX-512 VNNI; the self-check runs where it does");
        }
    }
}
