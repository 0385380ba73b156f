"""sparsec's block-sparse int8 linear (crates/kernels, LinearI8) against ONNX Runtime's dense int8
on the same shapes, in one run.

For each MiniLM linear shape (K→N: 384→384, fused QKV 384→1152, 384→1536, 1536→384), token count
(384, 6144) and thread count (1, 2), ONNX Runtime is timed before and after the Rust bench
(`kernel_bench --only K,N,T,THREADS --json`, every pattern and sparsity), and the mean of the two
ORT medians is the baseline, so that both see the same machine load. Two ORT one-node-chain models:

  - "fwd": x f32 [T,K] → DynamicQuantizeLinear → MatMulInteger(x_q, W int8, x_zp) → Cast →
    Mul(x_scale · w_scale[N]), what `onnxruntime.quantization.quantize_dynamic` emits for a
    MatMul; compared with LinearI8::forward (dynamic quantization, f32 out);
  - "int": x u8 [T,K] → MatMulInteger(x_q, W int8) → i32; compared with LinearI8::matmul_u8_i32.

Then the fp32 kernel (LinearF32::forward, 1 thread, dense and 80/90% of each pattern) against
ORT's fp32 MatMul on the same shapes.

Each configuration runs a short loop (`--secs`, at least 3 calls, after one warm-up) and records
the median wall time per call and the CPU time per call (all threads; ORT: time.process_time,
Rust: CLOCK_PROCESS_CPUTIME_ID). On a shared, oversubscribed machine a call longer than a scheduler slice is
preempted and its wall time counts the wait, so the single-thread tables use CPU time (ORT's
single intra-op thread does not spin); the wall-time table covers 1 and 2 threads.

  python3 benches/kernel_table.py PATH/TO/kernel_bench [--secs S] [--json OUT]

(Named kernel_table.py, not kernels.py: Python puts a script's folder first on sys.path, so a
kernels.py here shadowed the `kernels` package that transformers imports for every script in benches/.)
"""

import argparse
import json
import statistics
import subprocess
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(384, 384), (384, 1152), (384, 1536), (1536, 384)]
TOKENS = [384, 6144]
BERTBASE_SHAPES = [(768, 768), (768, 2304), (768, 3072), (3072, 768)]
THREADS = [1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9]
PATTERNS = ["4x1", "1x4", "unstructured"]


def fwd_model(k, n, rng):
    w = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    w_scale = (0.01 + 1e-5 * np.arange(n)).astype(np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xzp"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "w_scale"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dq_matmulinteger",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale, "w_scale")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def int_model(k, n, rng):
    w = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["xq", "w"], ["acc"])],
        "matmulinteger",
        [helper.make_tensor_value_info("xq", TensorProto.UINT8, ["T", k])],
        [helper.make_tensor_value_info("acc", TensorProto.INT32, ["T", n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def f32_model(k, n, rng):
    w = rng.uniform(-1, 1, size=(k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul_f32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def session(model, threads):
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def median_time(fn, secs):
    """(median wall seconds per call, process CPU seconds per call)."""
    fn()
    times = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < secs:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / len(times)
    return statistics.median(times), cpu


def ort_times(sessions, feeds, secs):
    return {name: median_time(lambda: s.run(None, feeds[name]), secs) for name, s in sessions.items()}


def cell(ms, ratio):
    return f"{ms:.3f} {ratio:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="path to the kernel_bench example binary (release build)")
    ap.add_argument("--secs", type=float, default=0.15, help="timing loop per configuration (s)")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--shapes", choices=["minilm", "bertbase"], default="minilm",
                    help="linear shapes: MiniLM's (default) or BERT-base's (768/2304/3072, 384 tokens only)")
    args = ap.parse_args()
    global SHAPES, TOKENS
    if args.shapes == "bertbase":
        SHAPES, TOKENS = BERTBASE_SHAPES, [384]

    rng = np.random.default_rng(12)
    headers = []
    rows = []
    for k, n in SHAPES:
        models = {"fwd": fwd_model(k, n, rng), "int": int_model(k, n, rng)}
        for t in TOKENS:
            feeds = {
                "fwd": {"x": rng.uniform(-3, 3, size=(t, k)).astype(np.float32)},
                "int": {"xq": rng.integers(0, 256, size=(t, k), dtype=np.uint8)},
            }
            for th in THREADS:
                sessions = {name: session(m, th) for name, m in models.items()}
                before = ort_times(sessions, feeds, args.secs)
                out = subprocess.run(
                    [args.bench, "--json", "--secs", str(args.secs), "--only", f"{k},{n},{t},{th}"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                after = ort_times(sessions, feeds, args.secs)
                lines = [json.loads(line) for line in out.splitlines() if line.strip()]
                headers.append(lines[0])
                base = {name: [(b + a) / 2 for b, a in zip(before[name], after[name])] for name in before}
                for r in lines[1:]:
                    r["ort_fwd_s"], r["ort_fwd_cpu_s"] = base["fwd"]
                    r["ort_int_s"], r["ort_int_cpu_s"] = base["int"]
                    rows.append(r)
                print(
                    f"# {k}->{n} T={t} threads={th}: ORT fwd {base['fwd'][0] * 1e3:.3f} ms "
                    f"(cpu {base['fwd'][1] * 1e3:.3f}), int {base['int'][0] * 1e3:.3f} ms (cpu {base['int'][1] * 1e3:.3f})",
                    flush=True,
                )

    f32_rows = []
    for k, n in SHAPES:
        model = f32_model(k, n, rng)
        sess = {"f32": session(model, 1)}
        for t in TOKENS:
            feeds = {"f32": {"x": rng.uniform(-3, 3, size=(t, k)).astype(np.float32)}}
            before = ort_times(sess, feeds, args.secs)
            out = subprocess.run(
                [args.bench, "--json", "--f32", "--secs", str(args.secs), "--only", f"{k},{n},{t},1"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            after = ort_times(sess, feeds, args.secs)
            base = [(b + a) / 2 for b, a in zip(before["f32"], after["f32"])]
            for line in out.splitlines()[1:]:
                r = json.loads(line)
                r["ort_s"], r["ort_cpu_s"] = base
                f32_rows.append(r)
            print(f"# fp32 {k}->{n} T={t}: ORT MatMul {base[0] * 1e3:.3f} ms (cpu {base[1] * 1e3:.3f})", flush=True)

    isa = headers[0]["isa"]
    peaks = [h["isa_peak_gmacs"] for h in headers if h["isa_peak_gmacs"]]
    vnni = [h["vnni_peak_gmacs"] for h in headers if h["vnni_peak_gmacs"]]
    peak = max(peaks) if peaks else None
    print()
    print(
        f"ISA {isa}; per-core integer peak (best register-only microbench in CPU time over {len(headers)} runs): "
        f"{peak} GMAC/s; vpdpbusd: {max(vnni) if vnni else 'not available on this CPU'}"
    )
    cols = [("dense", 0.0)] + [(p, s) for p in PATTERNS for s in SPARSITIES]
    names = ["dense"] + [f"{p} {int(s * 100)}%" for p in PATTERNS for s in SPARSITIES]

    def table(title, threads, ort_key, fmt):
        print(f"\n{title}\n")
        print("| K→N | T | thr | ORT ms | " + " | ".join(names) + " |")
        print("|" + "---|" * (4 + len(names)))
        for k, n in SHAPES:
            for t in TOKENS:
                for th in threads:
                    sel = {(r["pattern"], r["sparsity"]): r for r in rows if (r["k"], r["n"], r["t"], r["threads"]) == (k, n, t, th)}
                    if not sel:
                        continue
                    ort_ms = next(iter(sel.values()))[ort_key] * 1e3
                    print(f"| {k}→{n} | {t} | {th} | {ort_ms:.3f} | " + " | ".join(fmt(sel[c]) for c in cols) + " |")

    def rate(r):
        g = r["t"] * r["nonzeros"] / r["forward_cpu_s"] / 1e9
        return f"{g:.1f} {100 * g / peak:.0f}%" if peak else f"{g:.1f}"

    table(
        "forward (f32 in, dynamic quantization, f32 out), 1 thread, CPU time per call: ms and speed-up over "
        "ORT's DynamicQuantizeLinear+MatMulInteger (CPU time too)",
        [1],
        "ort_fwd_cpu_s",
        lambda r: cell(r["forward_cpu_s"] * 1e3, r["ort_fwd_cpu_s"] / r["forward_cpu_s"]),
    )
    table(
        f"forward, 1 thread: non-zero GMAC/s (T·nnz(W) per CPU second) and % of the measured {isa} per-core peak",
        [1],
        "ort_fwd_cpu_s",
        rate,
    )
    table(
        "integer product only (u8 in, i32 out), 1 thread, CPU time: ms and speed-up over ORT's MatMulInteger",
        [1],
        "ort_int_cpu_s",
        lambda r: cell(r["int_cpu_s"] * 1e3, r["ort_int_cpu_s"] / r["int_cpu_s"]),
    )
    table(
        "forward, 1 and 2 threads, median wall time per call: ms and speed-up over ORT (wall time; "
        "on a loaded machine, noisy, and 2 threads often do not get 2 cores)",
        THREADS,
        "ort_fwd_s",
        lambda r: cell(r["forward_s"] * 1e3, r["ort_fwd_s"] / r["forward_s"]),
    )
    f32_cols = [("dense", 0.0)] + [(p, s) for p in PATTERNS for s in (0.8, 0.9)]
    print(
        "\nfp32 (LinearF32::forward), 1 thread, CPU time per call: ms and speed-up over ORT's fp32 MatMul "
        "(CPU time); in brackets non-zero GFMA/s\n"
    )
    print("| K→N | T | ORT ms | " + " | ".join(f"{p} {int(s * 100)}%" if s else p for p, s in f32_cols) + " |")
    print("|" + "---|" * (3 + len(f32_cols)))
    for k, n in SHAPES:
        for t in TOKENS:
            sel = {(r["pattern"], r["sparsity"]): r for r in f32_rows if (r["k"], r["n"], r["t"]) == (k, n, t)}
            if not sel:
                continue
            ort_cpu = next(iter(sel.values()))["ort_cpu_s"]
            cells = [
                f"{r['forward_cpu_s'] * 1e3:.3f} {ort_cpu / r['forward_cpu_s']:.2f}x "
                f"({r['t'] * r['nonzeros'] / r['forward_cpu_s'] / 1e9:.0f})"
                for r in (sel[c] for c in f32_cols)
            ]
            print(f"| {k}→{n} | {t} | {ort_cpu * 1e3:.3f} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"headers": headers, "rows": rows, "f32_rows": f32_rows}, f, indent=1)


if __name__ == "__main__":
    main()
