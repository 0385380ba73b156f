#!/usr/bin/env python3
"""Training throughput and peak memory: `sparsec train` vs PyTorch on MiniLM-L6 (seq 384), one command.

Both sides run the same work per step: batch B of full-length 384-token windows (sparsec pads SQuAD
training windows to 384 with --pad-to-max-length; PyTorch uses random ids with every position real),
QA span loss, backward, clip_grad_norm 1.0, AdamW, no dropout on either side (the exported ONNX graph
has none). sparsec runs --recipe (default: the dense-finetune recipe: no masks), distillation
disabled; PyTorch is benches/train_pytorch.py (its own process, dropout off). With --baseline, a
second sparsec binary (e.g. an older build) runs the same thing in the same command. The first
--warmup steps of each are not timed. Peak RSS: /usr/bin/time -v for sparsec, VmHWM for PyTorch.

    python3 benches/train_throughput.py --sparsec target/release/sparsec [--baseline OLD_SPARSEC]
        [--recipe recipes/gmp80-qat-distill-one-epoch.yaml] [--batch 16] [--steps 4] [--warmup 1]

With --table: issue 29's table (sparsec at 0% and 80% [4, 1] against PyTorch fp32 and bf16 autocast, on grouped
real-length batches and on full 384-token batches). With --sparse-train-ab S, instead: MiniLM with the smallest-norm S of each encoder linear's [4, 1]
blocks zeroed (4 consecutive output channels of one input), compiled with the sparse-transfer recipe
(ConstantPruning keeps those zeros from step 0), trained on real SQuAD windows with --group-by-length,
--sparse-train off then auto, alternating (--pairs times, default 2), in one command.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def run_sparsec(args, binary, tmp, grouped=False, model=None, extra=()):
    model = model or SHARED / "models/minilm-l6-squad/model.onnx"
    compiled = tmp / "c"
    subprocess.run([binary, "compile", str(model), "--recipe", str(args.recipe), "-o", str(compiled)],
                   check=True, capture_output=True)
    out = tmp / "t"
    steps = args.warmup + args.steps
    cmd = ["/usr/bin/time", "-v", binary, "train", "--model", str(compiled),
           "--train-file", str(SHARED / "data/squad-v1.1-train.json.gz"), "--output-dir", str(out),
           "--max-train-samples", str(args.train_samples or args.batch * steps * 2), "--max-steps", str(steps),
           "--per-device-train-batch-size", str(args.batch), "--distill-teacher", "disable",
           "--threads", str(args.threads), "--json"] + (["--group-by-length"] if grouped else
                                                         [] if args.real_lengths else ["--pad-to-max-length"])
    cmd += list(extra)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"sparsec train failed:\n{p.stderr[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    timed = log[args.warmup:]
    secs = sum(r["step_seconds"] for r in timed)
    return {"system": f"sparsec (ORT) {binary}" + (" --group-by-length" if grouped else "") + "".join(" " + e for e in extra),
            "block_sparse_steps": sum(1 for r in timed if r.get("block_sparse")),
            "recipe": str(args.recipe), "batch": args.batch, "seq_lens": [r.get("seq_len") for r in log],
            "qat_steps": sum(1 for r in timed if r["qat"]), "timed_steps": len(timed),
            "samples_per_second": args.batch * len(timed) / secs, "step_seconds": secs / len(timed),
            "peak_rss_mib": rss_kib / 1024}


def run_torch(args, seq_lens=None, autocast="off"):
    cmd = [sys.executable, str(ROOT / "benches/train_pytorch.py"), "--batch-sizes", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--dropout", "off", "--autocast", autocast]
    if seq_lens:
        cmd += ["--seq-lens", ",".join(str(x) for x in seq_lens)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsec", default=str(ROOT / "target/release/sparsec"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default=str(ROOT / "recipes/dense-finetune.yaml"))
    ap.add_argument("--baseline", help="another sparsec binary to run the same way")
    ap.add_argument("--baseline-args", default="", help="extra train flags for --baseline (space-separated)")
    ap.add_argument("--real-lengths", action="store_true",
                    help="train on real SQuAD windows padded per batch, with and without --group-by-length; "
                         "PyTorch runs the grouped run's batch shapes")
    ap.add_argument("--train-samples", type=int, help="SQuAD questions to build windows from")
    ap.add_argument("--sparse-train-ab", type=float, metavar="S",
                    help="A/B of --sparse-train off/auto on MiniLM with S of its encoder [4,1] blocks zeroed")
    ap.add_argument("--pairs", type=int, default=2, help="off/auto pairs of --sparse-train-ab")
    ap.add_argument("--table", action="store_true",
                    help="issue 29's table: sparsec at 0%% and 80%% [4,1] against PyTorch fp32 and bf16 autocast on the "
                         "same grouped shapes, and every side's peak on full 384-token batches (default flags)")
    args = ap.parse_args()
    if args.sparse_train_ab is not None:
        return sparse_train_ab(args)
    if args.table:
        return table(args)
    if args.real_lengths:
        return real_lengths(args)
    runs = {}
    for key, binary in [("sparsec", args.sparsec), ("baseline", args.baseline)]:
        if binary:
            with tempfile.TemporaryDirectory() as t:
                runs[key] = run_sparsec(args, binary, Path(t))
    t = run_torch(args)
    runs["pytorch"] = t
    print(json.dumps(runs, indent=1))
    ts = t.get("samples_per_s")
    for key in ("sparsec", "baseline"):
        s = runs.get(key)
        if s and ts:
            print(f"{key}: {s['samples_per_second']:.2f} samples/s vs PyTorch {ts:.2f} "
                  f"({s['samples_per_second'] / ts:.2f}x); peak RSS {s['peak_rss_mib']:.0f} MiB vs "
                  f"{t.get('peak_rss_mib', float('nan')):.0f} MiB")
    if "baseline" in runs:
        b = runs["baseline"]["samples_per_second"]
        print(f"sparsec vs baseline: {runs['sparsec']['samples_per_second'] / b:.2f}x")


def real_lengths(args):
    args.train_samples = args.train_samples or 2000
    runs = {}
    with tempfile.TemporaryDirectory() as t:
        runs["sparsec_random_batches"] = run_sparsec(args, args.sparsec, Path(t))
    with tempfile.TemporaryDirectory() as t:
        runs["sparsec_grouped"] = run_sparsec(args, args.sparsec, Path(t), grouped=True)
    lens = runs["sparsec_grouped"]["seq_lens"]
    runs["pytorch_grouped_shapes"] = run_torch(args, lens)
    print(json.dumps(runs, indent=1))
    g, r, p = (runs["sparsec_grouped"]["samples_per_second"], runs["sparsec_random_batches"]["samples_per_second"],
               runs["pytorch_grouped_shapes"]["samples_per_s"])
    print(f"grouped vs random batches (sparsec): {g / r:.2f}x; sparsec grouped vs PyTorch on the same shapes: "
          f"{g / p:.2f}x; peak RSS {runs['sparsec_grouped']['peak_rss_mib']:.0f} MiB vs "
          f"{runs['pytorch_grouped_shapes']['peak_rss_mib']:.0f} MiB")


def table(args):
    """sparsec (default flags; 80%: the smallest-norm 80% of every encoder linear's [4, 1] blocks zeroed and
    kept zero by the sparse-transfer recipe, --sparse-train auto) against PyTorch fp32 and bf16 autocast
    (dense: PyTorch has no sparse training kernels, so its 80% step is its 0% step), first on the grouped
    shapes of real SQuAD windows, then on full 384-token batches (memory)."""
    args.train_samples = args.train_samples or 2000
    rows = {}
    with tempfile.TemporaryDirectory() as t:
        src = SHARED / "models/minilm-l6-squad"
        (Path(t) / "pruned").mkdir()
        for f in src.iterdir():
            if f.is_file() and f.name != "model.onnx":
                shutil.copy(f, Path(t) / "pruned" / f.name)
        pruned = Path(t) / "pruned/model.onnx"
        prune_4x1(src / "model.onnx", pruned, 0.8)
        dense_recipe = args.recipe
        for pad in (False, True):
            shape = "full384" if pad else "grouped"
            args.real_lengths = False
            sides = [("sparsec", args.sparsec, ())]
            if args.baseline:
                sides.append(("baseline", args.baseline, tuple(args.baseline_args.split())))
            for s, model, recipe in [("0", None, dense_recipe),
                                     ("80", pruned, str(ROOT / "recipes/sparse-transfer-distill.yaml"))]:
                args.recipe = recipe
                for side, binary, extra in sides:
                    name = f"{side}_{s}"
                    with tempfile.TemporaryDirectory() as r:
                        rows[f"{name}_{shape}"] = run_sparsec(args, binary, Path(r), grouped=not pad, model=model,
                                                              extra=extra)
                    print(f"{name} {shape}: {rows[f'{name}_{shape}']['samples_per_second']:.2f} samples/s, "
                          f"peak {rows[f'{name}_{shape}']['peak_rss_mib']:.0f} MiB", flush=True)
            lens = None if pad else rows["sparsec_0_grouped"]["seq_lens"]
            for ac in ("off", "bf16"):
                rows[f"pytorch_{ac}_{shape}"] = run_torch(args, lens, ac)
                print(f"pytorch autocast={ac} {shape}: {rows[f'pytorch_{ac}_{shape}']['samples_per_s']:.2f} samples/s, "
                      f"peak {rows[f'pytorch_{ac}_{shape}']['peak_rss_mib']:.0f} MiB", flush=True)
        args.recipe = dense_recipe
    print(json.dumps(rows, indent=1))
    for shape in ("grouped", "full384"):
        for side in ("sparsec", "baseline"):
            for s in ("0", "80"):
                r = rows.get(f"{side}_{s}_{shape}")
                if r is None:
                    continue
                for ac in ("off", "bf16"):
                    p = rows[f"pytorch_{ac}_{shape}"]
                    print(f"{shape}: {side} {s}% vs PyTorch {'fp32' if ac == 'off' else 'bf16 autocast'}: "
                          f"{r['samples_per_second'] / p['samples_per_s']:.2f}x samples/s, "
                          f"{r['peak_rss_mib'] / p['peak_rss_mib']:.2f}x peak memory")


def prune_4x1(src, dst, sparsity):
    """Zeroes the smallest-L2 `sparsity` of the [4, 1] blocks of every encoder linear weight (a
    MatMul initializer [K, N] read by a node of `/encoder/layer.`), per layer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    done = 0
    for node in m.graph.node:
        if node.op_type != "MatMul" or "/encoder/layer." not in node.name or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        w = numpy_helper.to_array(t).copy()
        if w.ndim != 2 or w.shape[1] % 4:
            continue
        k, n = w.shape
        norms = np.sqrt((w.reshape(k, n // 4, 4) ** 2).sum(-1))
        cut = int(round(sparsity * norms.size))
        drop = np.argsort(norms, axis=None, kind="stable")[:cut]
        blocks = np.ones(norms.size, dtype=bool)
        blocks[drop] = False
        w *= np.repeat(blocks.reshape(k, n // 4), 4, axis=1)
        t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
        done += 1
    onnx.save(m, str(dst))
    return done


def sparse_train_ab(args):
    args.recipe = str(ROOT / "recipes/sparse-transfer-distill.yaml")
    args.train_samples = args.train_samples or 2000
    runs = []
    with tempfile.TemporaryDirectory() as t:
        src = SHARED / "models/minilm-l6-squad"
        (Path(t) / "pruned").mkdir()
        for f in src.iterdir():
            if f.is_file() and f.name != "model.onnx":
                shutil.copy(f, Path(t) / "pruned" / f.name)
        pruned = Path(t) / "pruned/model.onnx"
        layers = prune_4x1(src / "model.onnx", pruned, args.sparse_train_ab)
        for mode in ["off", "auto"] * args.pairs:
            with tempfile.TemporaryDirectory() as r:
                run = run_sparsec(args, args.sparsec, Path(r), grouped=True, model=pruned, extra=["--sparse-train", mode])
            run["mode"] = mode
            runs.append(run)
            print(f"--sparse-train {mode}: {run['step_seconds']:.3f} s/step, {run['samples_per_second']:.2f} samples/s, "
                  f"{run['block_sparse_steps']} of {run['timed_steps']} timed steps block-sparse, "
                  f"peak RSS {run['peak_rss_mib']:.0f} MiB", flush=True)
    print(json.dumps({"sparsity_4x1": args.sparse_train_ab, "pruned_layers": layers, "runs": runs}, indent=1))
    off = [r["step_seconds"] for r in runs if r["mode"] == "off"]
    on = [r["step_seconds"] for r in runs if r["mode"] == "auto"]
    print(f"{layers} layers at {args.sparse_train_ab:.0%} [4,1]: auto vs off, s/step {sum(on) / len(on):.3f} vs "
          f"{sum(off) / len(off):.3f}: {sum(off) / sum(on):.2f}x (per pair: "
          + ", ".join(f"{a / b:.2f}x" for a, b in zip(off, on)) + ")")


if __name__ == "__main__":
    main()
