//! Fused attention speed at MiniLM's shape (12 heads × 32, seq 128 and 384, batch 1 and 16), 1
//! and 2 threads, every precision and ISA this CPU runs: median wall time per call, GFLOP/s
//! (`4·B·H·S²·D` over that time) and CPU time per call summed over threads (on a shared machine,
//! wall time includes waiting for a core; CPU time does not); `--json` adds the fastest call.
//! A quarter of each batch item's keys are padding (bias `f32::MIN`), which the kernel skips, so
//! GFLOP/s counts the dense work; `--no-mask` passes no mask (every key computed).
//!
//!   cargo run --release -p sparsec-kernels --example attention_bench [-- --json] [--secs S]
//!       [--only BATCH,SEQ,THREADS] [--isa avx512vnni|avx2|scalar] [--no-mask] [--check DIR]
//!
//! `--json` prints one JSON object per configuration instead of the table; `--only` runs one
//! configuration (`benches/attention_ort.py` runs each between two ONNX Runtime timings).
//! Threads are std::thread::scope workers started per call, so a call pays the thread start
//! (tens of µs) that a persistent pool such as ONNX Runtime's would not.

use sparsec_kernels::attention::{bf16_supported, Attention, AttentionDims, AttentionPrecision};
use sparsec_kernels::Isa;

mod bench_util;
use bench_util::{arg, time, Threads};

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// `--check DIR`: runs every kernel on `DIR/{q,k,v,bias}.f32` (raw little-endian, separate
/// `[B, S, H·D]` tensors and a `[B, S]` bias; `DIR/shape.txt` holds "B S") and writes
/// `DIR/out_<precision>_<isa>.f32`, for `benches/attention_ort.py` to compare with ONNX Runtime.
fn check(dir: &std::path::Path, kernels: &[Attention]) {
    let shape = std::fs::read_to_string(dir.join("shape.txt")).expect("shape.txt");
    let dims: Vec<usize> = shape.split_whitespace().map(|x| x.parse().expect("shape.txt: B S")).collect();
    let (batch, seq) = (dims[0], dims[1]);
    let (q, k, v, bias) = (
        read_f32(&dir.join("q.f32")),
        read_f32(&dir.join("k.f32")),
        read_f32(&dir.join("v.f32")),
        read_f32(&dir.join("bias.f32")),
    );
    for att in kernels {
        let hd = att.heads() * att.head_dim();
        let mut out = vec![0f32; batch * seq * hd];
        let scale = 1.0 / (att.head_dim() as f32).sqrt();
        att.forward(batch, seq, &q, &k, &v, hd, Some(&bias), scale, &mut out, &Threads(2)).unwrap();
        let name = format!("out_{:?}_{}.f32", att.precision(), att.isa()).to_lowercase();
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let secs: f64 = arg(&args, "--secs").unwrap_or(0.5);
    let only: Option<Vec<usize>> = arg::<String>(&args, "--only")
        .map(|s| s.split(',').map(|x| x.parse().expect("--only takes BATCH,SEQ,THREADS")).collect());
    let no_mask = args.iter().any(|a| a == "--no-mask");
    let isa_only = arg::<String>(&args, "--isa").map(|s| Isa::parse(&s).unwrap());
    let (heads, head_dim) = (12, 32);
    let hd = heads * head_dim;
    let mut kernels = vec![];
    for isa in Isa::available().into_iter().filter(|i| isa_only.is_none_or(|o| o == *i)) {
        kernels.push(Attention::new(heads, head_dim, AttentionPrecision::F32, isa).unwrap());
        if isa == Isa::Avx512Vnni && bf16_supported() {
            kernels.push(Attention::new(heads, head_dim, AttentionPrecision::Bf16, isa).unwrap());
        }
    }
    if let Some(dir) = arg::<String>(&args, "--check") {
        return check(std::path::Path::new(&dir), &kernels);
    }
    if !json {
        println!(
            "fused attention, {heads} heads × {head_dim}; CPU ISAs {:?}; avx512bf16 {}",
            Isa::available(),
            bf16_supported()
        );
        println!(
            "{:>6} {:>4} {:>4} {:>7} {:>11} {:>10} {:>10} {:>12}",
            "batch", "seq", "thr", "prec", "isa", "ms/call", "GFLOP/s", "cpu ms/call"
        );
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    for (batch, seq) in [(1, 128), (1, 384), (16, 128), (16, 384)] {
        let dims = AttentionDims { batch, seq, heads, head_dim };
        let qkv: Vec<f32> = (0..batch * seq * 3 * hd).map(|_| rand()).collect();
        let mask: Vec<f32> = (0..batch * seq).map(|t| if t % seq >= seq * 3 / 4 { f32::MIN } else { 0.0 }).collect();
        let mut out = vec![0f32; batch * seq * hd];
        let scale = 1.0 / (head_dim as f32).sqrt();
        for threads in [1, 2] {
            if only.as_ref().is_some_and(|o| o[..] != [batch, seq, threads]) {
                continue;
            }
            let par = Threads(threads);
            for att in &kernels {
                let (t, fastest, cpu) = time(secs, || {
                    att.forward(
                        batch,
                        seq,
                        &qkv,
                        &qkv[hd..],
                        &qkv[2 * hd..],
                        3 * hd,
                        (!no_mask).then_some(&mask[..]),
                        scale,
                        &mut out,
                        &par,
                    )
                    .unwrap()
                });
                let gflops = dims.flops() / t / 1e9;
                let prec = format!("{:?}", att.precision()).to_lowercase();
                if json {
                    println!(
                        "{{\"batch\":{batch},\"seq\":{seq},\"threads\":{threads},\"precision\":\"{prec}\",\
                         \"isa\":\"{}\",\"ms\":{:.4},\"min_ms\":{:.4},\"cpu_ms\":{:.4},\"gflops\":{gflops:.2}}}",
                        att.isa(),
                        t * 1e3,
                        fastest * 1e3,
                        cpu * 1e3
                    );
                } else {
                    println!(
                        "{batch:>6} {seq:>4} {threads:>4} {prec:>7} {:>11} {:>10.3} {gflops:>10.1} {:>12.3}",
                        att.isa().name(),
                        t * 1e3,
                        cpu * 1e3
                    );
                }
            }
        }
    }
}
