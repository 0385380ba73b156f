//! The weight gradient of an embedding lookup (`Gather(table [V, E], indices)` on axis 0):
//! `dTable[r] = Σ_{t : indices[t] = r} dY[t]`, zero elsewhere, with optional rows forced to zero
//! (PyTorch's `padding_idx`). Computed in one pass per output chunk: each task zeroes its own rows
//! and adds the rows of `dY` whose index falls in them, tokens in order, so every row is the same
//! f32 sum in the same order as a sequential scatter-add (ONNX `ScatterND`, `reduction = "add"`,
//! into zeros), for any thread count.

use crate::error::{kerr, KernelError};
use crate::par::Parallel;
use crate::plan::Out;

/// Rows of the table per task.
const CHUNK_ROWS: usize = 1024;

/// `out [rows, width] = Σ dy[t] at row indices[t]` (negative indices count from the end, as
/// `Gather` reads them), with `zero_rows` left at zero. An index outside `-rows..rows` or a slice
/// of the wrong length is an error naming it; nothing is written then.
pub fn embedding_grad(
    indices: &[i64],
    dy: &[f32],
    rows: usize,
    width: usize,
    zero_rows: &[usize],
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    if dy.len() != indices.len() * width {
        return Err(kerr!(
            "dY has {} values, {} indices × width {width} need {}",
            dy.len(),
            indices.len(),
            indices.len() * width
        ));
    }
    if out.len() != rows * width {
        return Err(kerr!("the gradient has {} values, [{rows}, {width}] needs {}", out.len(), rows * width));
    }
    let mut target = Vec::with_capacity(indices.len());
    for (t, &i) in indices.iter().enumerate() {
        let r = if i < 0 { i + rows as i64 } else { i };
        if !(0..rows as i64).contains(&r) {
            return Err(kerr!("index {i} at position {t} is out of range for {rows} rows"));
        }
        target.push(r as usize);
    }
    if let Some(&z) = zero_rows.iter().find(|&&z| z >= rows) {
        return Err(kerr!("zero row {z} is out of range for {rows} rows"));
    }
    // Tokens sorted by row (stable: token order within a row), so each task reads only its own.
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by_key(|&t| target[t]);
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let shared = Out::new(out);
    par.run(chunks, &|c| {
        let (r0, r1) = (c * CHUNK_ROWS, ((c + 1) * CHUNK_ROWS).min(rows));
        // SAFETY: chunk `c` owns rows `r0..r1` of the output alone; chunks do not overlap.
        let dst = unsafe { shared.range(r0 * width, (r1 - r0) * width) };
        dst.fill(0.0);
        let first = order.partition_point(|&t| target[t] < r0);
        for &t in order[first..].iter().take_while(|&&t| target[t] < r1) {
            let r = target[t];
            if zero_rows.contains(&r) {
                continue;
            }
            let row = &mut dst[(r - r0) * width..(r - r0 + 1) * width];
            for (o, &g) in row.iter_mut().zip(&dy[t * width..(t + 1) * width]) {
                *o += g;
            }
        }
    });
    Ok(())
}
