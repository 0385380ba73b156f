//! Quantized (int8) attention speed at MiniLM's shape (12 heads × 32) with the constants of layer
//! 0 of SparseML's 90% `block4` export: median wall time per call, the integer products' GMAC/s
//! (`2·B·H·S²·D` multiply-adds over that time) and CPU time per call summed over threads, on every
//! ISA this CPU runs (or `--isa`).
//!
//!   cargo run --release -p sparsec-kernels --example attention_i8_bench [-- --secs S]
//!       [--only BATCH,SEQ,THREADS] [--isa avx512vnni|avx2|scalar] [--json]
//!
//! Threads are scoped workers started per call (tens of µs a call that a persistent pool would not
//! pay). Inputs are uniform in ±10, the size SparseML's projections carry, no mask.

use sparsec_kernels::attention_i8::{Quant, QuantAttention, QuantAttentionParams};
use sparsec_kernels::Isa;

mod bench_util;
use bench_util::{arg, time, Threads};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let secs: f64 = arg(&args, "--secs").unwrap_or(0.5);
    let only: Option<Vec<usize>> = arg::<String>(&args, "--only")
        .map(|s| s.split(',').map(|x| x.parse().expect("--only takes BATCH,SEQ,THREADS")).collect());
    let isa_only = arg::<String>(&args, "--isa").map(|s| Isa::parse(&s).unwrap());
    let (heads, d) = (12, 32);
    let hd = heads * d;
    let params = QuantAttentionParams {
        q: Quant { scale: 0.08605653, zero_point: 125 },
        k: Quant { scale: 0.10539387, zero_point: 128 },
        v: Quant { scale: 0.0145753, zero_point: 128 },
        scores_mul: 0.00906983,
        scores: Some(Quant { scale: 2.869952, zero_point: 141 }),
        divisor: 5.656854,
        probs: Quant { scale: 1.0 / 255.0, zero_point: 0 },
        context_mul: 5.7158057e-05,
        context: Some(Quant { scale: 0.00570363, zero_point: 109 }),
    };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
    };
    if !json {
        println!("int8 attention, {heads} heads × {d}; CPU ISAs {:?}", Isa::available());
        println!(
            "{:>6} {:>4} {:>4} {:>11} {:>10} {:>10} {:>12}",
            "batch", "seq", "thr", "isa", "ms/call", "GMAC/s", "cpu ms/call"
        );
    }
    let configs = [(1, 128, 1), (1, 384, 1), (1, 384, 2), (16, 128, 2), (16, 384, 2)];
    for (batch, seq, threads) in configs {
        if only.as_ref().is_some_and(|o| o[..] != [batch, seq, threads]) {
            continue;
        }
        let n = batch * seq * hd;
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) =
            ((0..n).map(|_| rand()).collect(), (0..n).map(|_| rand()).collect(), (0..n).map(|_| rand()).collect());
        let mut out = vec![0f32; n];
        for isa in Isa::available().into_iter().filter(|i| isa_only.is_none_or(|o| o == *i)) {
            let att = QuantAttention::new(heads, d, params, isa).unwrap();
            let par = Threads(threads);
            let (wall, _, cpu) = time(secs, || att.forward(batch, seq, &q, &k, &v, hd, None, &mut out, &par).unwrap());
            let gmac = 2.0 * (batch * heads * seq * seq * d) as f64 / wall / 1e9;
            if json {
                println!(
                    "{{\"batch\":{batch},\"seq\":{seq},\"threads\":{threads},\"isa\":\"{isa}\",\"ms\":{:.4},\"gmac_s\":{gmac:.2},\"cpu_ms\":{:.4}}}",
                    wall * 1e3,
                    cpu * 1e3
                );
            } else {
                println!(
                    "{batch:>6} {seq:>4} {threads:>4} {isa:>11} {:>10.3} {gmac:>10.1} {:>12.3}",
                    wall * 1e3,
                    cpu * 1e3
                );
            }
        }
    }
}
