"""QA throughput of the MiniLM SQuAD model at sequence length 384, batch 1 and 16:
`sparsec bench` on ONNX Runtime and on tract against PyTorch (eager, CPU, fp32) running the same
weights as transformers' BertForQuestionAnswering, all in this one command on this machine.

The PyTorch model is built from ../shared/models/minilm-l6-squad/config.json and the ONNX file's
initializers (MatMul weights are stored transposed under anonymous names; the module path is in the
node name), and the script checks that its logits equal ONNX Runtime's before timing anything.

Usage: python3 benches/qa_throughput.py [--seconds 3] [--threads 2] [--sparsec target/release/sparsec]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertForQuestionAnswering

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "..", "shared", "models", "minilm-l6-squad")


def torch_model(threads):
    torch.set_num_threads(threads)
    onnx_model = onnx.load(os.path.join(MODEL_DIR, "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    state = {k: torch.from_numpy(v.copy()) for k, v in inits.items() if not k.startswith("onnx::")}
    for node in onnx_model.graph.node:
        if node.op_type == "MatMul":
            w = [x for x in node.input if x in inits and x.startswith("onnx::")]
            if w:
                module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
                state[module + ".weight"] = torch.from_numpy(inits[w[0]].T.copy())
    config = BertConfig.from_json_file(os.path.join(MODEL_DIR, "config.json"))
    model = BertForQuestionAnswering(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        sys.exit(f"weights do not map onto BertForQuestionAnswering: missing {missing}, unexpected {unexpected}")
    return model


def inputs(batch, seq):
    i = np.arange(seq)[None, :]
    b = np.arange(batch)[:, None]
    ids = (1000 + (b * 31 + i * 7919) % 1000).astype(np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.broadcast_to((i >= seq // 2).astype(np.int64), (batch, seq)).copy(),
    }


def check_torch_equals_ort(model):
    feed = inputs(2, 384)
    sess = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"), providers=["CPUExecutionProvider"])
    start, end = sess.run(["start_logits", "end_logits"], feed)
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    diff = max(np.abs(out.start_logits.numpy() - start).max(), np.abs(out.end_logits.numpy() - end).max())
    if diff > 1e-3:
        sys.exit(f"PyTorch and ONNX Runtime logits differ by {diff}")
    return float(diff)


def bench_torch(model, batch, seq, seconds, warmup):
    feed = {k: torch.from_numpy(v) for k, v in inputs(batch, seq).items()}
    times = []
    with torch.inference_mode():
        t_end = time.perf_counter() + warmup
        while time.perf_counter() < t_end:
            model(**feed)
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or not times:
            t = time.perf_counter()
            model(**feed)
            times.append(time.perf_counter() - t)
    ms = np.sort(np.array(times) * 1e3)
    pct = lambda p: float(ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))])
    return {
        "engine": "pytorch",
        "iterations": len(ms),
        "mean_ms": float(ms.mean()),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "items_per_second": len(ms) * batch / (ms.sum() / 1e3),
    }


def bench_sparsec(exe, engine, batch, seq, seconds, warmup, threads):
    cmd = [exe, "bench", "--model", MODEL_DIR, "--engine", engine, "--batch-size", str(batch), "--seq-len", str(seq),
           "--seconds", str(seconds), "--warmup", str(warmup), "--threads", str(threads), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout)["results"][0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--sparsec", default=os.path.join(ROOT, "target", "release", "sparsec"))
    args = ap.parse_args()

    model = torch_model(args.threads)
    diff = check_torch_equals_ort(model)
    print(f"PyTorch BertForQuestionAnswering loaded from the ONNX weights; max |logit diff| vs ONNX Runtime {diff:.2e}")
    print(f"machine: {os.cpu_count()} CPUs visible, {args.threads} threads each, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; seq {args.seq_len}; {args.seconds} s per measurement")
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        res = {"pytorch": bench_torch(model, batch, args.seq_len, args.seconds, args.warmup)}
        for engine in ["ort", "tract"]:
            res[engine] = bench_sparsec(args.sparsec, engine, batch, args.seq_len, args.seconds, args.warmup, args.threads)
        for name, r in res.items():
            rows.append((batch, name, r))
        base = res["pytorch"]["items_per_second"]
        print(f"\nbatch {batch}, seq {args.seq_len}")
        print(f"{'engine':<16}{'items/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'vs PyTorch':>12}")
        for name, r in res.items():
            label = name if name == "pytorch" else f"sparsec {name}"
            if "error" in r:
                print(f"{label:<16}  failed: {r['error']}")
                continue
            print(f"{label:<16}{r['items_per_second']:>10.2f}{r['p50_ms']:>10.1f}{r['p90_ms']:>10.1f}{r['p99_ms']:>10.1f}"
                  f"{r['items_per_second'] / base:>11.2f}x")
        if "error" not in res["ort"] and "error" not in res["tract"]:
            print(f"ort / tract: {res['ort']['items_per_second'] / res['tract']['items_per_second']:.2f}x")
    json.dump([{"batch": b, "engine": n, **r} for b, n, r in rows], sys.stderr)
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
