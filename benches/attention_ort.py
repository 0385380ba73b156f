"""sparsec's fused attention kernel against ONNX Runtime on the same attention, in one run:

1. Semantics: the kernel (every ISA/precision this CPU runs, via attention_bench --check) against
   ORT's standard-op graph on the same inputs, including a batch item whose every key is masked
   with f32 min (the graph then averages V uniformly): max |difference| printed and bounded.
2. Speed: for each shape and thread count, ORT's two baselines are timed before and after the
   Rust bench (attention_bench --only B,S,T --json) so that all three see the same machine load.

Two ORT baselines, both fed Q, K, V as separate [B, S, H*D] fp32 tensors and a [B, S] key bias
with a quarter of the keys at f32 min (as the Rust bench):
  - "onnx ops": the exported graph's standard ops, Reshape/Transpose to heads, MatMul(Q, K^T),
    Div by sqrt(D), Add of the [B, 1, 1, S] bias, Softmax(axis=-1), MatMul(P, V), Transpose and
    Reshape back (what ORT runs on sparsec's exports today, where it fuses nothing);
  - "ORT MHA": ORT's own fused com.microsoft.MultiHeadAttention contrib op with the same bias
    as attention_bias [B, 1, S, S] (the bias repeated per query: the op has no per-key float mask).

Per call: the median and the fastest wall time, and the process CPU time (all threads), which on
a shared machine excludes time spent waiting for a core (ORT's pool spins while it waits, so its
2-thread CPU time counts spinning too).

  python3 benches/attention_ort.py PATH/TO/attention_bench [--secs S]
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

HEADS, HEAD_DIM = 12, 32


def standard_ops_model(b, s):
    hd = HEADS * HEAD_DIM
    f = TensorProto.FLOAT
    init = [
        helper.make_tensor("heads_shape", TensorProto.INT64, [4], [b, s, HEADS, HEAD_DIM]),
        helper.make_tensor("out_shape", TensorProto.INT64, [3], [b, s, hd]),
        helper.make_tensor("bias_shape", TensorProto.INT64, [4], [b, 1, 1, s]),
        helper.make_tensor("sqrt_d", f, [], [math.sqrt(HEAD_DIM)]),
    ]
    nodes = [
        helper.make_node("Reshape", ["q", "heads_shape"], ["q4"]),
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["k", "heads_shape"], ["k4"]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["v", "heads_shape"], ["v4"]),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["qk"]),
        helper.make_node("Div", ["qk", "sqrt_d"], ["scaled"]),
        helper.make_node("Reshape", ["bias", "bias_shape"], ["bias4"]),
        helper.make_node("Add", ["scaled", "bias4"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "out_shape"], ["out"]),
    ]
    inputs = [helper.make_tensor_value_info(n, f, [b, s, hd]) for n in ("q", "k", "v")]
    inputs.append(helper.make_tensor_value_info("bias", f, [b, s]))
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", f, [b, s, hd])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def mha_model(b, s):
    hd = HEADS * HEAD_DIM
    f = TensorProto.FLOAT
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "", "attn_bias"],
        ["out"],
        domain="com.microsoft",
        num_heads=HEADS,
    )
    inputs = [helper.make_tensor_value_info(n, f, [b, s, hd]) for n in ("q", "k", "v")]
    inputs.append(helper.make_tensor_value_info("attn_bias", f, [b, 1, s, s]))
    graph = helper.make_graph([node], "mha", inputs, [helper.make_tensor_value_info("out", f, [b, s, hd])])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8
    )


def session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def timed(secs, f):
    """Per-call wall seconds (a list) and CPU seconds per call, after one warm-up call."""
    f()
    times = []
    start, cpu = time.perf_counter(), time.process_time()
    while len(times) < 3 or time.perf_counter() - start < secs:
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return times, (time.process_time() - cpu) / len(times)


def inputs(b, s, rng, fully_masked_item=False):
    hd = HEADS * HEAD_DIM
    q, k, v = (rng.uniform(-1, 1, (b, s, hd)).astype(np.float32) for _ in range(3))
    bias = np.zeros((b, s), np.float32)
    bias[:, s * 3 // 4:] = np.finfo(np.float32).min
    if fully_masked_item:
        bias[0, :] = np.finfo(np.float32).min
    return {"q": q, "k": k, "v": v, "bias": bias}


def check(bench, rng):
    print("semantics: kernel vs ORT standard ops on the same inputs (batch item 0 fully masked)")
    for b, s in [(2, 77), (3, 384)]:
        feeds = inputs(b, s, rng, fully_masked_item=True)
        want = session(standard_ops_model(b, s), 1).run(None, feeds)[0]
        with tempfile.TemporaryDirectory() as d:
            for name, x in feeds.items():
                x.tofile(os.path.join(d, name + ".f32"))
            with open(os.path.join(d, "shape.txt"), "w") as f:
                f.write(f"{b} {s}")
            subprocess.run([bench, "--check", d], check=True)
            for out in sorted(n for n in os.listdir(d) if n.startswith("out_")):
                got = np.fromfile(os.path.join(d, out), np.float32).reshape(want.shape)
                diff = np.abs(got.astype(np.float64) - want).max()
                bound = 2e-2 if "bf16" in out else 1e-5
                verdict = "ok" if diff <= bound and np.isfinite(got).all() else "FAIL"
                print(f"  B {b} S {s:>3} {out[4:-4]:>16}: max |kernel - ORT| {diff:.2e} (bound {bound:g}) {verdict}")
                if verdict != "ok":
                    raise SystemExit(f"{out}: kernel disagrees with ORT")


def ratio(a, b):
    return f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench", help="the built attention_bench example")
    ap.add_argument("--secs", type=float, default=1.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    check(args.bench, rng)
    print(f"\nspeed: onnxruntime {ort.__version__}, {HEADS} heads x {HEAD_DIM}, a quarter of the keys masked (f32 min); "
          "per call: med = median wall ms, min = fastest call ms, cpu = CPU ms (all threads); "
          "GFLOP/s = 4*B*H*S^2*D / fastest call")
    print(f"{'batch':>5} {'seq':>4} {'thr':>3} | {'ORT ops med':>11} {'min':>8} {'cpu':>8} | {'ORT MHA med':>11} {'min':>8} "
          f"{'cpu':>8} | {'kernel':>16} {'med':>8} {'min':>8} {'cpu':>8} {'GFLOP/s':>7} | "
          f"{'vs ops med':>10} {'min':>6} {'cpu':>6} | {'vs MHA med':>10} {'min':>6} {'cpu':>6}")
    for b, s in [(1, 128), (1, 384), (16, 128), (16, 384)]:
        for threads in (1, 2):
            feeds = inputs(b, s, rng)
            ops = session(standard_ops_model(b, s), threads)
            mha = session(mha_model(b, s), threads)
            bias = feeds["bias"]
            mha_feeds = {"q": feeds["q"], "k": feeds["k"], "v": feeds["v"],
                         "attn_bias": np.ascontiguousarray(np.broadcast_to(bias[:, None, None, :], (b, 1, s, s)))}
            diff = np.abs(ops.run(None, feeds)[0] - mha.run(None, mha_feeds)[0]).max()
            assert diff < 1e-4, f"ORT MHA disagrees with the standard ops: {diff}"
            t_ops, c_ops = timed(args.secs / 2, lambda: ops.run(None, feeds))
            t_mha, c_mha = timed(args.secs / 2, lambda: mha.run(None, mha_feeds))
            out = subprocess.run([args.bench, "--json", "--secs", str(args.secs), "--only", f"{b},{s},{threads}"],
                                 check=True, capture_output=True, text=True).stdout
            t2, c2 = timed(args.secs / 2, lambda: ops.run(None, feeds))
            t3, c3 = timed(args.secs / 2, lambda: mha.run(None, mha_feeds))
            t_ops, c_ops = t_ops + t2, (c_ops + c2) / 2
            t_mha, c_mha = t_mha + t3, (c_mha + c3) / 2
            o_med, o_min, m_med, m_min = statistics.median(t_ops), min(t_ops), statistics.median(t_mha), min(t_mha)
            flops = 4 * b * HEADS * s * s * HEAD_DIM
            for r in (json.loads(line) for line in out.splitlines() if line.startswith("{")):
                k_med, k_min, k_cpu = r["ms"] / 1e3, r["min_ms"] / 1e3, r["cpu_ms"] / 1e3
                name = f"{r['precision']} {r['isa']}"
                print(f"{b:>5} {s:>4} {threads:>3} | {o_med * 1e3:>11.3f} {o_min * 1e3:>8.3f} {c_ops * 1e3:>8.3f} | "
                      f"{m_med * 1e3:>11.3f} {m_min * 1e3:>8.3f} {c_mha * 1e3:>8.3f} | {name:>16} {k_med * 1e3:>8.3f} "
                      f"{k_min * 1e3:>8.3f} {k_cpu * 1e3:>8.3f} {flops / k_min / 1e9:>7.1f} | "
                      f"{ratio(o_med, k_med):>10} {ratio(o_min, k_min):>6} {ratio(c_ops, k_cpu):>6} | "
                      f"{ratio(m_med, k_med):>10} {ratio(m_min, k_min):>6} {ratio(c_mha, k_cpu):>6}", flush=True)


if __name__ == "__main__":
    main()
