//! SparseML 1.8's quantized attention (`QuantizeLinear` of Q, Kᵀ, V, two `MatMulInteger`s and
//! the QDQ/f32 steps between them) lowered to `ai.sparsec::QuantizedAttention` on the three
//! SparseML exports, against ONNX Runtime running each file as it is, on every ISA this CPU has.

use crate::sparseml_exports::{logits_diff, rewritten, run, sparseml_export, EXPORTS};
use sparsec::passes::SparseExecution;
use sparsec_kernels::Isa;

/// Attention alone lowered (linears and LayerNorms stay on ORT), so the only possible difference
/// from the graph is the softmax: the kernel fuses the scales after the scores' (exact)
/// quantization, `exp((l_j − l_max)·scale/divisor)` for `exp(x_j − max)`, and its `exp`
/// (Cephes-style polynomial) and summation order (16 partial sums) are its own, not ORT's, so where
/// a probability lies within a few ulp of a quantization boundary of `probs` it can land one step
/// (1/255) away, and the layers after propagate that. The integer products and the scores' levels
/// are the graph's, and the kernel is bit-identical across ISAs (checked here on whole models too).
/// Measured max |Δlogit| on an AVX-512 host: 6.0e-3, 0.153 and 0 on the 90% block4, 80%
/// unstructured and seq-128 exports (before the scales were fused: 0, 0, 0; with `f32::exp` and an
/// in-order sum instead, 0.020, 0.122 and 0). ORT's own softmax rounding depends on the host's
/// ISA, so `BOUND` is not 0.
#[test]
fn sparseml_quantized_attention_lowers_and_matches_ort_on_every_isa() {
    const BOUND: f32 = 0.25;
    for &(name, seq) in EXPORTS {
        let Some(path) = sparseml_export(name) else { return };
        let (base, _) = run(&path, seq, None);
        let only_attention = SparseExecution { no_linear: true, no_layer_norm: true, ..SparseExecution::default() };
        let mut first: Option<(Isa, crate::sparseml_exports::Outputs)> = None;
        for isa in Isa::available() {
            std::env::set_var("SPARSEC_ISA", isa.name());
            let (lowered, reports) = run(&path, seq, Some(only_attention.clone()));
            std::env::remove_var("SPARSEC_ISA");
            assert_eq!(rewritten(&reports, "FuseQuantizedAttention"), 6, "{name}: {reports:?}");
            assert_eq!(rewritten(&reports, "FuseAttention"), 0, "{name}");
            let d = logits_diff(&base, &lowered);
            println!("{name} [{isa}]: quantized attention lowered, max |Δlogit| vs ORT {d:.3e}");
            assert!(d <= BOUND, "{name} [{isa}]: max |Δlogit| {d} > {BOUND}");
            match &first {
                None => first = Some((isa, lowered)),
                Some((isa0, out0)) => {
                    for (k, a) in out0 {
                        let same = a.iter().zip(lowered[k].iter()).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{name}: output {k} differs between {isa0} and {isa}");
                    }
                }
            }
        }
    }
}
