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

/// Rows per task of [`layer_norm_grad`]; the scale and bias gradients are summed per chunk of this
/// many rows, then the chunks in order, so the result does not depend on the thread count.
const GRAD_ROWS: usize = 64;

/// The gradient of `y = x̂·scale + bias`, `x̂ = (x − mean)·inv`, over the last axis of `n` values,
/// from the forward's saved `mean` and `inv` (one per row): `dx = inv·(h − mean(h) − x̂·mean(h·x̂))`
/// with `h = dy·scale`, `dscale = Σ_rows dy·x̂`, `dbias = Σ_rows dy`. Each row's values are
/// computed in index order; the per-row sums go in chunks of [`GRAD_ROWS`] rows, then chunk by
/// chunk. One loop compiled per instruction set, the same operations in the same order, so every
/// ISA gets the same bits.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_grad(
    isa: Isa,
    dy: &[f32],
    x: &[f32],
    n: usize,
    scale: &[f32],
    mean: &[f32],
    inv: &[f32],
    dx: &mut [f32],
    dscale: &mut [f32],
    dbias: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), String> {
    if !isa.supported() {
        return Err(format!("layer_norm_grad: this CPU does not support {isa}"));
    }
    if n == 0 || !x.len().is_multiple_of(n) {
        return Err(format!("layer_norm_grad: x has {} values, not a multiple of the row length {n}", x.len()));
    }
    let rows = x.len() / n;
    for (name, len, want) in [
        ("dy", dy.len(), x.len()),
        ("dx", dx.len(), x.len()),
        ("scale", scale.len(), n),
        ("dscale", dscale.len(), n),
        ("dbias", dbias.len(), n),
        ("mean", mean.len(), rows),
        ("inv_std_dev", inv.len(), rows),
    ] {
        if len != want {
            return Err(format!("layer_norm_grad: {name} has {len} values, expected {want}"));
        }
    }
    let chunks = rows.div_ceil(GRAD_ROWS);
    let mut partial = vec![0f32; chunks * 2 * n];
    let (pout, dxout) = (Out::new(&mut partial), Out::new(dx));
    let body: GradFn = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => grad_rows_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => grad_rows_avx2,
        _ => grad_rows_scalar,
    };
    par.run(chunks, &|c| {
        let r = c * GRAD_ROWS..((c + 1) * GRAD_ROWS).min(rows);
        let e = r.start * n..r.end * n;
        // SAFETY: chunk `c` alone writes rows `r` of `dx` and its own `2·n` partial sums; `body` was
        // chosen for an ISA this CPU supports (checked above).
        unsafe {
            let (dxc, pc) = (dxout.range(e.start, e.len()), pout.range(c * 2 * n, 2 * n));
            body(&dy[e.clone()], &x[e], n, scale, &mean[r.clone()], &inv[r], dxc, pc)
        }
    });
    dscale.fill(0.0);
    dbias.fill(0.0);
    for p in partial.chunks(2 * n) {
        for (d, &v) in dscale.iter_mut().zip(&p[..n]) {
            *d += v;
        }
        for (d, &v) in dbias.iter_mut().zip(&p[n..]) {
            *d += v;
        }
    }
    Ok(())
}

/// Rows of [`layer_norm_grad`]: `dx` for each row, and `partial = [Σ dy·x̂ ; Σ dy]` over them.
///
/// # Safety
/// The function's ISA must be available.
type GradFn = unsafe fn(&[f32], &[f32], usize, &[f32], &[f32], &[f32], &mut [f32], &mut [f32]);

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn grad_rows_body(
    dy: &[f32],
    x: &[f32],
    n: usize,
    scale: &[f32],
    mean: &[f32],
    inv: &[f32],
    dx: &mut [f32],
    partial: &mut [f32],
) {
    let (ps, pb) = partial.split_at_mut(n);
    ps.fill(0.0);
    pb.fill(0.0);
    let inv_n = 1.0 / n as f32;
    for (r, ((g, xr), d)) in dy.chunks(n).zip(x.chunks(n)).zip(dx.chunks_mut(n)).enumerate() {
        let (m, s) = (mean[r], inv[r]);
        let (mut m1, mut m2) = (0f32, 0f32);
        for ((&gi, &xi), &sc) in g.iter().zip(xr).zip(scale) {
            let h = gi * sc;
            m1 += h;
            m2 += h * ((xi - m) * s);
        }
        let (m1, m2) = (m1 * inv_n, m2 * inv_n);
        for ((((o, &gi), &xi), &sc), (a, b)) in
            d.iter_mut().zip(g).zip(xr).zip(scale).zip(ps.iter_mut().zip(pb.iter_mut()))
        {
            let xhat = (xi - m) * s;
            *o = s * (gi * sc - m1 - xhat * m2);
            *a += gi * xhat;
            *b += gi;
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn grad_rows_scalar(
    dy: &[f32],
    x: &[f32],
    n: usize,
    scale: &[f32],
    mean: &[f32],
    inv: &[f32],
    dx: &mut [f32],
    partial: &mut [f32],
) {
    grad_rows_body(dy, x, n, scale, mean, inv, dx, partial)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_rows_avx2(
    dy: &[f32],
    x: &[f32],
    n: usize,
    scale: &[f32],
    mean: &[f32],
    inv: &[f32],
    dx: &mut [f32],
    partial: &mut [f32],
) {
    grad_rows_body(dy, x, n, scale, mean, inv, dx, partial)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn grad_rows_avx512(
    dy: &[f32],
    x: &[f32],
    n: usize,
    scale: &[f32],
    mean: &[f32],
    inv: &[f32],
    dx: &mut [f32],
    partial: &mut [f32],
) {
    grad_rows_body(dy, x, n, scale, mean, inv, dx, partial)
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
