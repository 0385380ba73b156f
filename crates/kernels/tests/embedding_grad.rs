//! `embedding_grad` against a sequential scatter-add into zeros (what ONNX `ScatterND` with
//! `reduction = "add"` computes): bit-identical for 1 and 3 threads, duplicate and negative
//! indices included, zero rows left at +0; bad indices and lengths are errors naming them.

use sparsec_kernels::embedding_grad::embedding_grad;
use sparsec_kernels::Serial;

use crate::masked_linear::Threads;

fn reference(indices: &[i64], dy: &[f32], rows: usize, width: usize, zero: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    for (t, &i) in indices.iter().enumerate() {
        let r = if i < 0 { (i + rows as i64) as usize } else { i as usize };
        for e in 0..width {
            out[r * width + e] += dy[t * width + e];
        }
    }
    for &z in zero {
        out[z * width..(z + 1) * width].fill(0.0);
    }
    out
}

#[test]
fn embedding_grad_is_the_sequential_scatter_add_for_any_thread_count() {
    let (rows, width) = (2600, 7);
    let indices: Vec<i64> = (0..500i64)
        .map(|t| match t % 7 {
            0 => 0,
            1 => -1,
            2 => 1023,
            3 => 1024,
            _ => (t * 7919) % rows as i64,
        })
        .collect();
    let dy: Vec<f32> = (0..indices.len() * width).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 997.0 - 0.5).collect();
    for zero in [vec![], vec![0usize, 1024]] {
        let want = reference(&indices, &dy, rows, width, &zero);
        for threads in [1, 3] {
            let mut out = vec![f32::NAN; rows * width];
            if threads == 1 {
                embedding_grad(&indices, &dy, rows, width, &zero, &mut out, &Serial).unwrap();
            } else {
                embedding_grad(&indices, &dy, rows, width, &zero, &mut out, &Threads(threads)).unwrap();
            }
            let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{threads} threads, zero rows {zero:?}: differs from the sequential scatter-add");
        }
    }
}

#[test]
fn embedding_grad_rejects_bad_indices_and_lengths() {
    let mut out = vec![0f32; 4 * 2];
    let e = embedding_grad(&[0, 4], &[0.0; 4], 4, 2, &[], &mut out, &Serial).unwrap_err();
    assert!(e.to_string().contains("index 4 at position 1"), "{e}");
    let e = embedding_grad(&[0, -5], &[0.0; 4], 4, 2, &[], &mut out, &Serial).unwrap_err();
    assert!(e.to_string().contains("index -5"), "{e}");
    let e = embedding_grad(&[0, 1], &[0.0; 3], 4, 2, &[], &mut out, &Serial).unwrap_err();
    assert!(e.to_string().contains("dY has 3"), "{e}");
    let e = embedding_grad(&[0], &[0.0; 2], 4, 2, &[9], &mut out, &Serial).unwrap_err();
    assert!(e.to_string().contains("zero row 9"), "{e}");
}
