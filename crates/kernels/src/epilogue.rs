//! What a linear kernel does to its accumulator tile after the product, up to the stored output
//! row: per-channel scale (int8) and bias, optional requantization ([`Requant`]), GELU
//! ([`Epilogue`]) and the residual add, in that order on every ISA; and the plain i32 store of
//! [`LinearI8::matmul_u8_i32`](crate::linear_i8::LinearI8::matmul_u8_i32).

use crate::error::{kerr, KernelError};
use crate::gelu::gelu;
use crate::plan::Out;

/// What runs on each output after scale and bias, before the residual add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// The exact erf GELU ([`crate::gelu::gelu`]).
    Gelu,
}

/// Requantization of the output to an integer type and back, as ONNX `QLinearMatMul` followed by
/// `DequantizeLinear` computes it: `q = clamp(round_half_even(acc · (s_x·s_w[j]) / scale), lo, hi)`
/// with `lo`, `hi` the output type's range minus the zero point, then `y = q · scale + bias`
/// (`acc · ((s_x·s_w[j]) / scale)`: one multiplier, as `QLinearMatMul` rounds it). With
/// [`after_scale`](Requant::after_scale), as `QuantizeLinear` then `DequantizeLinear` after the f32
/// rescale compute it instead: `q = clamp(round_half_even((acc · (s_x·s_w[j])) / scale), lo, hi)`,
/// a true division of the rescaled product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requant {
    pub scale: f32,
    pub lo: f32,
    pub hi: f32,
    /// Divide the rescaled product by `scale` (`QuantizeLinear`) instead of multiplying the
    /// accumulator by one combined multiplier (`QLinearMatMul`).
    pub divide: bool,
}

impl Requant {
    /// For an output of `u8` (`signed = false`) or `i8` with zero point `zero_point`.
    pub fn new(scale: f32, zero_point: i32, signed: bool) -> Result<Requant, KernelError> {
        let (qmin, qmax) = if signed { (-128, 127) } else { (0, 255) };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(kerr!("output scale {scale} is not a finite positive number"));
        }
        if !(qmin..=qmax).contains(&zero_point) {
            return Err(kerr!("output zero point {zero_point} is outside {qmin}..={qmax}"));
        }
        Ok(Requant { scale, lo: (qmin - zero_point) as f32, hi: (qmax - zero_point) as f32, divide: false })
    }

    /// The same output, quantized as ONNX `QuantizeLinear` does after the f32 rescale (a
    /// `MatMulInteger → Cast → Mul → QuantizeLinear → DequantizeLinear` chain).
    pub fn after_scale(self) -> Requant {
        Requant { divide: true, ..self }
    }
}

/// Per-call constants of the f32 epilogue.
pub(crate) struct EpiI8<'a> {
    /// `s_x · s_w[j]`.
    pub mult: &'a [f32],
    /// `zp_x · colsum_w[j] − int_bias[j]`.
    pub corr: &'a [i32],
    pub bias: &'a [f32],
    pub gelu: bool,
    pub residual: Option<&'a [f32]>,
    /// With requantization (not [`after_scale`](Requant::after_scale)), `mult` is `s_x·s_w[j] / scale`.
    pub requant: Option<Requant>,
}

/// Writes `y[t0 + tt, j0 + jj]` for `tt < tvalid`, `jj < ncols` from token-major `acc [tt][ld]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn epilogue_i8(
    e: &EpiI8<'_>,
    acc: &[i32],
    ld: usize,
    t0: usize,
    tvalid: usize,
    j0: usize,
    ncols: usize,
    n: usize,
    y: &Out<f32>,
) {
    let mult = &e.mult[j0..j0 + ncols];
    let corr = &e.corr[j0..j0 + ncols];
    let bias = &e.bias[j0..j0 + ncols];
    let rq = e.requant.unwrap_or(Requant { scale: 1.0, lo: 0.0, hi: 0.0, divide: false });
    for tt in 0..tvalid {
        let t = t0 + tt;
        let a = &acc[tt * ld..tt * ld + ncols];
        // SAFETY: the caller's `Plan` gives each (token, channel) to one task, so no other live range
        // overlaps this row; `Out::range` checks the bounds.
        let row = unsafe { y.range(t * n + j0, ncols) };
        let res = e.residual.map(|r| &r[t * n + j0..t * n + j0 + ncols]).unwrap_or(&[]);
        let c = Cols { a, corr, mult, bias, res, rq };
        match (e.requant.is_some(), e.gelu, e.residual.is_some()) {
            (false, false, false) => epi_row::<false, false, false>(&c, row),
            (false, false, true) => epi_row::<false, false, true>(&c, row),
            (false, true, false) => epi_row::<false, true, false>(&c, row),
            (false, true, true) => epi_row::<false, true, true>(&c, row),
            (true, false, false) => epi_row::<true, false, false>(&c, row),
            (true, false, true) => epi_row::<true, false, true>(&c, row),
            (true, true, false) => epi_row::<true, true, false>(&c, row),
            (true, true, true) => epi_row::<true, true, true>(&c, row),
        }
    }
}

/// Defines `$name`, [`epilogue_i8`] compiled with the target features `$features` so that its
/// element-wise code is vectorised with that ISA's registers; the operations are the same (FMAs
/// only where written), so the bits are too. One per ISA file (`linear_i8/avx2.rs`, `avx512.rs`).
macro_rules! isa_epilogue {
    ($(#[$doc:meta])* $name:ident, $features:literal) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(
            e: &$crate::epilogue::EpiI8<'_>,
            acc: &[i32],
            ld: usize,
            t0: usize,
            tvalid: usize,
            j0: usize,
            ncols: usize,
            n: usize,
            y: &$crate::plan::Out<f32>,
        ) {
            $crate::epilogue::epilogue_i8(e, acc, ld, t0, tvalid, j0, ncols, n, y)
        }
    };
}
pub(crate) use isa_epilogue;

/// One output row's inputs, all `ncols` long (`res` empty without a residual).
struct Cols<'a> {
    a: &'a [i32],
    corr: &'a [i32],
    mult: &'a [f32],
    bias: &'a [f32],
    res: &'a [f32],
    rq: Requant,
}

/// The epilogue of one row in a single pass (each value is loaded, finished and stored once):
/// scale and bias (or requantize), then GELU, then the residual, in that order for every ISA.
#[inline(always)]
fn epi_row<const RQ: bool, const GELU: bool, const RES: bool>(c: &Cols<'_>, row: &mut [f32]) {
    let n = row.len();
    let (a, corr, mult, bias) = (&c.a[..n], &c.corr[..n], &c.mult[..n], &c.bias[..n]);
    let res = if RES { &c.res[..n] } else { &c.res[..0] };
    for jj in 0..n {
        let mut x = (a[jj].wrapping_sub(corr[jj]) as f32) * mult[jj];
        if RQ && c.rq.divide {
            x /= c.rq.scale;
        }
        // `+ 0.0`: a requantized output is dequantized from an integer, so its zero is +0.0.
        let mut v = if RQ {
            (x.max(c.rq.lo).min(c.rq.hi).round_ties_even() + 0.0) * c.rq.scale + bias[jj]
        } else {
            x + bias[jj]
        };
        if GELU {
            v = gelu(v);
        }
        if RES {
            v += res[jj];
        }
        row[jj] = v;
    }
}

/// Copies token-major `acc [tt][ld]` into `out[t0 + tt, j0 + jj]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_i32(
    acc: &[i32],
    ld: usize,
    t0: usize,
    tvalid: usize,
    j0: usize,
    ncols: usize,
    n: usize,
    out: &Out<i32>,
) {
    for tt in 0..tvalid {
        // SAFETY: the caller's `Plan` gives each (token, channel) to one task, so no other live range
        // overlaps this row; `Out::range` checks the bounds.
        let row = unsafe { out.range((t0 + tt) * n + j0, ncols) };
        row.copy_from_slice(&acc[tt * ld..tt * ld + ncols]);
    }
}

/// The fp32 linear's epilogue: writes `y[t0 + tt, j0 + jj]` from token-major `acc [tt][ld]`:
/// bias, GELU, residual.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn epilogue_f32(
    acc: &[f32],
    ld: usize,
    t0: usize,
    tvalid: usize,
    j0: usize,
    ncols: usize,
    n: usize,
    bias: &[f32],
    gelu_on: bool,
    residual: Option<&[f32]>,
    y: &Out<f32>,
) {
    let bias = &bias[j0..j0 + ncols];
    for tt in 0..tvalid {
        let t = t0 + tt;
        // SAFETY: the caller's `Plan` gives each (token, channel) to one task, so no other live range
        // overlaps this row; `Out::range` checks the bounds.
        let row = unsafe { y.range(t * n + j0, ncols) };
        for ((v, &a), &b) in row.iter_mut().zip(&acc[tt * ld..tt * ld + ncols]).zip(bias) {
            *v = a + b;
        }
        if gelu_on {
            for v in row.iter_mut() {
                *v = gelu(*v);
            }
        }
        if let Some(r) = residual {
            for (v, r) in row.iter_mut().zip(&r[t * n + j0..t * n + j0 + ncols]) {
                *v += r;
            }
        }
    }
}
