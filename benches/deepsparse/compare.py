#!/usr/bin/env python3
"""sparsec against DeepSparse 1.8 on the same files, with ONNX Runtime baselines, in one script.

Issue 27's speed table: for each round (interleaved), batch size and subject, one timed run;
prints one JSON line per run and, at the end, a JSON summary of medians and ratios.

Subjects (seq 384 unless the model fixes another length):
- each SparseML export in ../shared/models/sparseml/*/ on DeepSparse and on sparsec's kernels
  (`sparsec`: one session, 2 threads; `sparsec-streams2`, batch > 1 only: `--streams 2`);
- sparsec's own 80% [4,1] deployment (benches/results/*/deploy, or --deploys GLOB) on sparsec's kernels,
  both ways;
- the dense fp32 MiniLM on plain ONNX Runtime, and ONNX Runtime's quantize_dynamic of it.

DeepSparse's licence allows evaluation only: it is measured here and nowhere else (never in the
product or its tests). It needs its own Python 3.11 venv with deepsparse==1.8.0:
    python3.11 -m venv /tmp/ds-venv && /tmp/ds-venv/bin/pip install deepsparse==1.8.0

    python3 benches/deepsparse/compare.py --sparsec target/release/sparsec \
        --deepsparse /tmp/ds-venv/bin/deepsparse.benchmark [--rounds 3] [--seconds 8] [--out out/deepsparse]

DeepSparse's `-shapes` rewrites the model file in place, so it runs on a copy (in --out).

At BERT-base width (exports made by ../shared/models/sparseml/make_exports.py into OUT_ROOT):
    python3 benches/deepsparse/compare.py --models 'OUT_ROOT/bertbase-random-sml-*' \
        --dense OUT_ROOT/bertbase-random-dense --no-deploys --out out/deepsparse-bertbase
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))


def fixed_seq(model):
    import onnx

    m = onnx.load(model, load_external_data=False)
    for i in m.graph.input:
        if i.name == "input_ids":
            d = i.type.tensor_type.shape.dim
            if len(d) == 2 and d[1].HasField("dim_value"):
                return d[1].dim_value
    return None


def run_sparsec(exe, model, kernels, batch, seq, secs, streams=0):
    cmd = [exe, "bench", "--model", model, "--kernels", kernels, "--batch-size", str(batch), "--seq-len", str(seq),
           "--threads", "2", "--streams", str(streams), "--seconds", str(secs), "--warmup", "1", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    res = r["results"][0] if "results" in r else r
    return res["items_per_second"], res.get("lowered", "-")


def run_deepsparse(exe, model_copy, batch, seq, secs, tmp):
    export = os.path.join(tmp, "ds.json")
    shapes = ",".join([f"[{batch},{seq}]"] * 3)
    cmd = [exe, model_copy, "-b", str(batch), "-shapes", shapes, "-t", str(int(secs)), "-w", "2", "-s", "sync",
           "-ncores", "2", "-q", "-x", export]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with open(export) as f:
        r = json.load(f)
    return r["benchmark_result"]["items_per_sec"]


def make_qdyn(dense, out):
    dst = os.path.join(out, "qdyn")
    if not os.path.exists(os.path.join(dst, "model.onnx")):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        os.makedirs(dst, exist_ok=True)
        quantize_dynamic(os.path.join(dense, "model.onnx"), os.path.join(dst, "model.onnx"), weight_type=QuantType.QInt8)
        if os.path.exists(os.path.join(dense, "tokenizer.json")):
            shutil.copy(os.path.join(dense, "tokenizer.json"), dst)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsec", default=os.path.join(ROOT, "target/release/sparsec"))
    ap.add_argument("--deepsparse", default="/tmp/ds-venv/bin/deepsparse.benchmark")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--batches", default="16,1")
    ap.add_argument("--out", default=os.path.join(ROOT, "out/deepsparse"))
    ap.add_argument("--only", default="", help="comma-separated subject names to run (default: all)")
    ap.add_argument("--models", default=os.path.join(SHARED, "models/sparseml/*"),
                    help="glob of SparseML export folders (default: ../shared/models/sparseml/*)")
    ap.add_argument("--dense", default=os.path.join(SHARED, "models/minilm-l6-squad"),
                    help="dense fp32 model folder for the ORT baselines (default: the MiniLM)")
    ap.add_argument("--no-deploys", action="store_true", help="leave out sparsec's own deployments")
    ap.add_argument("--deploys", default=os.path.join(ROOT, "benches/results/*/deploy"),
                    help="glob of sparsec deployment folders, each named by its parent folder "
                         "(default: benches/results/*/deploy)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dense = a.dense
    qdyn = make_qdyn(dense, a.out)
    deploys = [] if a.no_deploys else sorted(glob.glob(os.path.join(a.deploys, "model.onnx")))

    subjects = []  # (name, engine, model path, seq)
    for d in sorted(glob.glob(os.path.join(a.models, "model.onnx"))):
        name = os.path.basename(os.path.dirname(d))
        seq = fixed_seq(d) or 384
        copy = os.path.join(a.out, "ds-" + name)
        os.makedirs(copy, exist_ok=True)
        shutil.copy(d, os.path.join(copy, "model.onnx"))
        subjects.append((name, "deepsparse", os.path.join(copy, "model.onnx"), seq))
        subjects.append((name, "sparsec", d, seq))
        subjects.append((name, "sparsec-streams2", d, seq))
    for d in deploys:
        name = os.path.basename(os.path.dirname(os.path.dirname(d)))
        subjects.append((name, "sparsec", d, 384))
        subjects.append((name, "sparsec-streams2", d, 384))
    for seq in sorted({s for *_, s in subjects}):
        subjects.append((f"dense-fp32-seq{seq}", "ort", os.path.join(dense, "model.onnx"), seq))
        subjects.append((f"quantize_dynamic-seq{seq}", "ort", os.path.join(qdyn, "model.onnx"), seq))
    if a.only:
        keep = set(a.only.split(","))
        subjects = [s for s in subjects if s[0] in keep or s[0].split("-seq")[0] in keep]

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    machine = {"cpu": cpu, "avx512_vnni": "avx512_vnni" in flags, "threads": 2}
    print(json.dumps({"machine": machine}), flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, a.rounds + 1):
            for b in [int(x) for x in a.batches.split(",")]:
                for name, engine, model, seq in subjects:
                    lowered = "-"
                    if engine == "deepsparse":
                        ips = run_deepsparse(a.deepsparse, model, b, seq, a.seconds, tmp)
                    elif engine.startswith("sparsec-streams") and b == 1:
                        continue  # one sequence: nothing to split
                    else:
                        streams = int(engine[len("sparsec-streams"):]) if engine.startswith("sparsec-streams") else 0
                        kernels = "auto" if engine.startswith("sparsec") else "off"
                        ips, lowered = run_sparsec(a.sparsec, model, kernels, b, seq, a.seconds, streams)
                    row = {"round": r, "batch": b, "seq": seq, "subject": name, "engine": engine,
                           "items_per_s": round(ips, 2), "lowered": lowered}
                    runs.append(row)
                    print(json.dumps(row), flush=True)

    med = {}
    for row in runs:
        med.setdefault((row["subject"], row["engine"], row["batch"], row["seq"]), []).append(row["items_per_s"])
    med = {k: statistics.median(v) for k, v in med.items()}
    table = []
    for (name, engine, b, seq), ips in sorted(med.items()):
        dense_ips = med.get((f"dense-fp32-seq{seq}", "ort", b, seq))
        ds = med.get((name, "deepsparse", b, seq))
        table.append({"subject": name, "engine": engine, "batch": b, "seq": seq, "items_per_s": ips,
                      "vs_dense_fp32": round(ips / dense_ips, 3) if dense_ips else None,
                      "vs_deepsparse_same_file": round(ips / ds, 3) if ds and engine != "deepsparse" else None,
                      "vs_own_batch1": round(ips / b1, 3) if (b1 := med.get((name, "sparsec", 1, seq))) and b > 1
                      and engine.startswith("sparsec") else None})
    summary = {"machine": machine, "rounds": a.rounds, "seconds": a.seconds, "medians": table}
    print(json.dumps({"summary": summary}), flush=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
