//! Layer normalization over the last axis, `y = (x − mean) / sqrt(mean(x²) − mean² + ε) · scale + bias`,
//! in ONNX Runtime's CPU arithmetic bit for bit: f32 throughout, the sums of `x` and of `x·x`
//! accumulated strictly in index order, each product and each operation rounded on its own (no
//! fused multiply-add), a true division by the standard deviation. ORT's `LayerNormalization`
//! kernel is a scalar loop over each row for the same reason: reassociating the sums would change
//! the bits. Here a group of rows (16 with AVX-512, 8 with AVX2 or in scalar code) is summed side
//! by side, each row in its own lane and in its own order (`simd.rs` transposes tiles in
//! registers), which gives the same bits at a multiple of the throughput; the normalization loop
//! is one body compiled per instruction set. Every ISA gets the same bits.

use crate::cpu::Isa;
use crate::par::Parallel;
use crate::plan::Out;

#[cfg(target_arch = "x86_64")]
mod simd;

/// Rows per task unit (a multiple of every ISA's group).
const ROWS: usize = 16;
/// Rows summed side by side (independent chains of scalar additions).
const SIDE: usize = 8;
/// Values of each row read per step of the side-by-side sums.
const CHUNK: usize = 16;

/// `y[r, :] = layer_norm(x[r, :])` for each of the `x.len() / n` rows of `n` values, on `isa`.
///
/// `scale` and `bias` (when given) hold `n` values. Shapes that do not fit, or an `isa` this CPU
/// lacks, give an error naming the argument; nothing is written then.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    isa: Isa,
    x: &[f32],
    n: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    epsilon: f32,
    y: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), String> {
    if !isa.supported() {
        return Err(format!("layer norm: this CPU does not support {isa}"));
    }
    if n == 0 {
        return Err("layer norm: the normalized axis is empty".into());
    }
    if !x.len().is_multiple_of(n) {
        return Err(format!("layer norm: input has {} values, not a whole number of rows of {n}", x.len()));
    }
    if y.len() != x.len() {
        return Err(format!("layer norm: output has {} values, the input {}", y.len(), x.len()));
    }
    if scale.len() != n {
        return Err(format!("layer norm: scale has {} values, the normalized axis {n}", scale.len()));
    }
    if let Some(b) = bias.filter(|b| b.len() != n) {
        return Err(format!("layer norm: bias has {} values, the normalized axis {n}", b.len()));
    }
    let rows = x.len() / n;
    if rows == 0 {
        return Ok(());
    }
    let groups = rows.div_ceil(ROWS);
    let tasks = (4 * par.threads().max(1)).min(groups);
    let out = Out::new(y);
    par.run(tasks, &|t| {
        let (g0, g1) = (t * groups / tasks, (t + 1) * groups / tasks);
        let (r0, r1) = (g0 * ROWS, (g1 * ROWS).min(rows));
        // SAFETY: task `t` owns rows `r0..r1`, and the tasks' row ranges are disjoint.
        let y = unsafe { out.range(r0 * n, (r1 - r0) * n) };
        let x = &x[r0 * n..r1 * n];
        match isa {
            // SAFETY: `layer_norm` returned an error unless `isa.supported()`, and AVX-512 VNNI
            // includes AVX-512 F.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { rows_avx512(x, n, scale, bias, epsilon, y) },
            // SAFETY: `layer_norm` returned an error unless `isa.supported()`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { rows_avx2(x, n, scale, bias, epsilon, y) },
            _ => rows_scalar(x, n, scale, bias, epsilon, y),
        }
    });
    Ok(())
}

/// # Safety
/// AVX-512 F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512(x: &[f32], n: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    // SAFETY: AVX-512 F is available (this function's contract).
    rows_range::<16>(x, n, scale, bias, eps, y, |g, s, q| unsafe { simd::sums16(g, n, s, q) })
}

/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(x: &[f32], n: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    // SAFETY: AVX2 is available (this function's contract).
    rows_range::<8>(x, n, scale, bias, eps, y, |g, s, q| unsafe { simd::sums8(g, n, s, q) })
}

fn rows_scalar(x: &[f32], n: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    rows_range::<SIDE>(x, n, scale, bias, eps, y, |g, s, q| side_by_side(g, n, s, q))
}

/// Columns `from..n` of each row of `g` added to the row's sums, row by row, in index order.
fn row_sums(g: &[f32], n: usize, from: usize, sum: &mut [f32], sq: &mut [f32]) {
    for (i, row) in g.chunks(n).enumerate() {
        for &v in &row[from..] {
            sum[i] += v;
            sq[i] += v * v;
        }
    }
}

/// [`SIDE`] rows summed side by side in scalar code (independent chains of additions, each row
/// in its own index order; [`CHUNK`] values of every row per step, read without bounds checks).
#[allow(clippy::needless_range_loop)] // c[i][j]: the loop order is the point
fn side_by_side(g: &[f32], n: usize, sum: &mut [f32; SIDE], sq: &mut [f32; SIDE]) {
    let rows: [&[f32]; SIDE] = std::array::from_fn(|i| &g[i * n..(i + 1) * n]);
    let whole = n - n % CHUNK;
    for h0 in (0..whole).step_by(CHUNK) {
        let c: [&[f32; CHUNK]; SIDE] =
            std::array::from_fn(|i| rows[i][h0..h0 + CHUNK].try_into().expect("CHUNK values"));
        for j in 0..CHUNK {
            for i in 0..SIDE {
                let v = c[i][j];
                sum[i] += v;
                sq[i] += v * v;
            }
        }
    }
    row_sums(g, n, whole, sum, sq);
}

/// Groups of `R` rows: their sums by `full` (a whole group) or [`row_sums`] (the last, short
/// one), then each row normalized.
#[inline(always)]
fn rows_range<const R: usize>(
    x: &[f32],
    n: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
    full: impl Fn(&[f32], &mut [f32; R], &mut [f32; R]),
) {
    for (xg, yg) in x.chunks(R * n).zip(y.chunks_mut(R * n)) {
        let (mut sum, mut sq) = ([0f32; R], [0f32; R]);
        if xg.len() == R * n {
            full(xg, &mut sum, &mut sq);
        } else {
            row_sums(xg, n, 0, &mut sum, &mut sq);
        }
        let nf = n as f32;
        for (i, (xr, yr)) in xg.chunks(n).zip(yg.chunks_mut(n)).enumerate() {
            let mean = sum[i] / nf;
            let sd = (sq[i] / nf - mean * mean + eps).sqrt();
            match bias {
                Some(b) => {
                    for (((o, &v), &s), &b) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                        *o = (v - mean) / sd * s + b;
                    }
                }
                None => {
                    for ((o, &v), &s) in yr.iter_mut().zip(xr).zip(scale) {
                        *o = (v - mean) / sd * s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Serial;

    /// The arithmetic of ORT's scalar loop, one row at a time.
    fn reference(x: &[f32], n: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f32> {
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(n) {
            let (mut mean, mut sq) = (0f32, 0f32);
            for &v in row {
                mean += v;
                sq += v * v;
            }
            mean /= n as f32;
            let sd = (sq / n as f32 - mean * mean + eps).sqrt();
            for (h, &v) in row.iter().enumerate() {
                y.push((v - mean) / sd * scale[h] + bias.map_or(0.0, |b| b[h]));
            }
        }
        y
    }

    struct Two;
    impl Parallel for Two {
        fn threads(&self) -> usize {
            2
        }
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|s| {
                for i in 0..n {
                    s.spawn(move || f(i));
                }
            });
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn equals_the_row_by_row_reference_bit_for_bit() {
        let mut seed = 7;
        for &(rows, n) in
            &[(1, 1), (1, 384), (7, 5), (8, 384), (9, 384), (37, 33), (48, 7), (17, 24), (100, 1536), (0, 4)]
        {
            let x: Vec<f32> = (0..rows * n).map(|i| lcg(&mut seed) * 4.0 + (i / n.max(1)) as f32 * 0.37).collect();
            let scale: Vec<f32> = (0..n).map(|_| lcg(&mut seed) + 1.0).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            for b in [Some(&bias[..]), None] {
                let want = reference(&x, n, &scale, b, 1e-12);
                for isa in Isa::available() {
                    for par in [&Serial as &dyn Parallel, &Two] {
                        let mut y = vec![f32::NAN; x.len()];
                        layer_norm(isa, &x, n, &scale, b, 1e-12, &mut y, par).unwrap();
                        let same = y.iter().zip(&want).all(|(a, w)| a.to_bits() == w.to_bits());
                        assert!(same, "{isa}: rows {rows}, n {n}, bias {}", b.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_shapes_that_do_not_fit() {
        let x = vec![0f32; 12];
        let mut y = vec![0f32; 12];
        assert!(layer_norm(Isa::Scalar, &x, 5, &[1.0; 5], None, 1e-5, &mut y, &Serial)
            .unwrap_err()
            .contains("whole number"));
        assert!(layer_norm(Isa::Scalar, &x, 4, &[1.0; 3], None, 1e-5, &mut y, &Serial).unwrap_err().contains("scale"));
        assert!(layer_norm(Isa::Scalar, &x, 4, &[1.0; 4], Some(&[0.0; 5]), 1e-5, &mut y, &Serial)
            .unwrap_err()
            .contains("bias"));
        assert!(layer_norm(Isa::Scalar, &x, 0, &[], None, 1e-5, &mut y, &Serial).unwrap_err().contains("empty"));
        assert!(layer_norm(Isa::Scalar, &x, 4, &[1.0; 4], None, 1e-5, &mut y[..8], &Serial)
            .unwrap_err()
            .contains("output"));
    }
}
