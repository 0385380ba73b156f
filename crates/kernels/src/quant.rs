//! Activation quantization for the int8 linear, in portable code: ONNX `QuantizeLinear` and
//! `DynamicQuantizeLinear` arithmetic ([`ActQuant`], [`quantize_u8`], the dynamic range), and the
//! quantize-and-transpose of one token tile into the kernels' `[K][TW]` layout ([`prep_tile`]).
//! The AVX2 builds of the same passes (`linear_i8/avx2.rs`) give the same bytes.

/// How activations are quantized to u8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// ONNX `QuantizeLinear` with a fixed scale and zero point.
    Static { scale: f32, zero_point: u8 },
    /// ONNX `DynamicQuantizeLinear`: range over the whole input, including 0;
    /// `scale = (max − min)/255` (1 when the range is empty), `zp = sat(round_half_even(−min/scale))`.
    Dynamic,
}

/// The min and max of `x` (NaNs ignored), both widened to include 0.
pub(crate) fn min_max_with_zero(x: &[f32]) -> (f32, f32) {
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let mut mn = 0f32;
    let mut mx = 0f32;
    for &v in chunks.remainder().iter().chain(&lo) {
        mn = if v < mn { v } else { mn };
    }
    for &v in chunks.remainder().iter().chain(&hi) {
        mx = if v > mx { v } else { mx };
    }
    (mn, mx)
}

/// `DynamicQuantizeLinear`'s scale and zero point from the range `mn ≤ 0 ≤ mx` of the input.
pub(crate) fn dynamic_params_from_range(mn: f32, mx: f32) -> (f32, u8) {
    let scale = if mx == mn { 1.0 } else { (mx - mn) / 255.0 };
    let zp = (0.0 - mn / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

/// ONNX `QuantizeLinear` to u8: `sat(round_half_even(v / scale) + zp)`; NaN maps to 0.
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN; max/min map it to 0 like the SIMD paths
#[inline(always)]
pub fn quantize_u8(v: f32, scale: f32, zp: f32) -> u8 {
    ((v / scale).round_ties_even() + zp).max(0.0).min(255.0) as u8
}

#[inline(always)]
fn quantize_row(x: &[f32], scale: f32, zp: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_u8(v, scale, zp);
    }
}

/// Where activation rows come from: f32 rows to quantize, or rows already in u8.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32 { x: &'a [f32], scale: f32, zp: u8 },
    U8(&'a [u8]),
}

/// Quantizes (or copies) tokens `t0..t0 + tvalid` into `out [K][tw]`, padding tokens with `zp`.
#[inline(always)]
pub(crate) fn prep_tile<E: Copy + From<u8>>(
    rows: Rows<'_>,
    k: usize,
    t0: usize,
    tvalid: usize,
    tw: usize,
    rowbuf: &mut [u8],
    out: &mut [E],
) {
    let pad = match rows {
        Rows::F32 { zp, .. } => zp,
        Rows::U8(_) => 0,
    };
    let rowbuf = &mut rowbuf[..k];
    for tt in 0..tw {
        let src: &[u8] = if tt < tvalid {
            let t = t0 + tt;
            match rows {
                Rows::F32 { x, scale, zp } => {
                    quantize_row(&x[t * k..(t + 1) * k], scale, zp as f32, rowbuf);
                    rowbuf
                }
                Rows::U8(xq) => &xq[t * k..(t + 1) * k],
            }
        } else {
            rowbuf.fill(pad);
            rowbuf
        };
        for (kk, &v) in src.iter().enumerate() {
            out[kk * tw + tt] = E::from(v);
        }
    }
}
