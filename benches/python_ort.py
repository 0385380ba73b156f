#!/usr/bin/env python3
"""Python onnxruntime + libsparsec_ops.so against `sparsec bench` on the same sparse export.

    python3 benches/python_ort.py MODEL_DIR [--batch 1 16] [--seq 384] [--threads 2]
        [--seconds 5] [--warmup 1] [--rounds 2] [--sparsec target/debug/sparsec]
        [--lib target/debug/libsparsec_ops.so]

MODEL_DIR is a `sparsec export --format sparse` folder. For each batch size, in alternating
rounds: `sparsec bench --model MODEL_DIR --batch-size B --seq-len S --threads T --seconds ...
--json` (a subprocess; the file is already lowered, so nothing is rewritten) and, in this
process, an onnxruntime InferenceSession of the same file with the library registered, the
same thread count (intra_op_num_threads = T, sequential execution, ORT_ENABLE_LAYOUT: the level
sparsec's session uses, `ort` Level3), the same synthetic windows as `sparsec bench` (ids cycling through
[1000, 2000), attention 1, token types 0 then 1) and the same warm-up and measured time. Prints
one JSON line per round and batch, and a summary line with the median items/s of each side and
python/sparsec.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort


def feeds(sess, vocab, batch, seq):
    lo = min(vocab // 2, 1000)
    span = max(1, min(vocab - lo, 1000))
    b, i = np.meshgrid(np.arange(batch), np.arange(seq), indexing="ij")
    all_feeds = {
        "input_ids": (lo + (b * 31 + i * 7919) % span).astype(np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": (i >= seq // 2).astype(np.int64),
    }
    return {x.name: all_feeds[x.name] for x in sess.get_inputs()}


def vocab_size(model_dir):
    try:
        with open(os.path.join(model_dir, "tokenizer.json")) as f:
            return len(json.load(f)["model"]["vocab"])
    except (OSError, KeyError, ValueError):
        return 2000


def python_bench(sess, feed, batch, seconds, warmup):
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    total = sum(times)
    return {"iterations": len(times), "p50_ms": 1e3 * statistics.median(times), "items_per_second": batch * len(times) / total}


def sparsec_bench(exe, model, batch, seq, threads, seconds, warmup):
    out = subprocess.run(
        [exe, "bench", "--model", model, "--batch-size", str(batch), "--seq-len", str(seq), "--threads", str(threads),
         "--seconds", str(seconds), "--warmup", str(warmup), "--json"],
        check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)["results"][0]
    return {"iterations": r["iterations"], "p50_ms": r["p50_ms"], "items_per_second": r["items_per_second"],
            "lowered": r["lowered"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sparsec", default="target/debug/sparsec")
    ap.add_argument("--lib", default="target/debug/libsparsec_ops.so")
    a = ap.parse_args()
    path = os.path.join(a.model, "model.onnx") if os.path.isdir(a.model) else a.model
    so = ort.SessionOptions()
    so.register_custom_ops_library(a.lib)
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    vocab = vocab_size(os.path.dirname(path))
    summary = {}
    for rnd in range(a.rounds):
        for batch in a.batch:
            feed = feeds(sess, vocab, batch, a.seq)
            rs = sparsec_bench(a.sparsec, a.model, batch, a.seq, a.threads, a.seconds, a.warmup)
            rp = python_bench(sess, feed, batch, a.seconds, a.warmup)
            print(json.dumps({"round": rnd, "batch": batch, "seq": a.seq, "threads": a.threads,
                              "sparsec": rs, "python": rp,
                              "ratio_python_over_sparsec": round(rp["items_per_second"] / rs["items_per_second"], 3)}),
                  flush=True)
            summary.setdefault(batch, ([], []))
            summary[batch][0].append(rs["items_per_second"])
            summary[batch][1].append(rp["items_per_second"])
    for batch, (s, p) in summary.items():
        ms, mp = statistics.median(s), statistics.median(p)
        print(json.dumps({"summary": True, "batch": batch, "seq": a.seq, "sparsec_items_per_s": round(ms, 2),
                          "python_items_per_s": round(mp, 2), "ratio_python_over_sparsec": round(mp / ms, 3),
                          "load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
