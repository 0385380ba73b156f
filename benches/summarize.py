#!/usr/bin/env python3
"""Small JSON summaries of benchmark outputs, for benches/results/ (the raw outputs stay in out/,
which git ignores).

    python3 benches/summarize.py run RUN        # a training run: benches/headline/run.sh RUN,
                                                # a run of benches/frontier/run.sh or layerdistill/ab.sh
    python3 benches/summarize.py floors OUTDIR  # benches/oneshot_floors.sh OUTDIR
    python3 benches/summarize.py time FILE      # one `/usr/bin/time -v` output

`run` reads whatever the run folder holds: eval.json, budget.tsv, train_summary.json,
train_log.jsonl (in RUN or RUN/train), export*.json, recipe_args.json, sizes.txt, time.txt, *.log,
and prints EM/F1, the budget, the training summary (per-layer sparsity, each pruning update), the
loss curve as means over windows of 100 and 200 steps (labelled 1-based: "1-200" is steps 0..199 of
the log) and the export reports without their per-tensor lists. `floors` prints one row per recipe
run (EM/F1, the pruner's report, wall / user CPU / peak RSS of the one-shot process) and the dense
model's score.
"""
import glob
import json
import os
import re
import statistics
import sys


def rnd(x, digits=4):
    return None if x is None else round(x, digits)


def load(path):
    with open(path) as f:
        return json.load(f)


def time_v(path):
    """The useful lines of a GNU `/usr/bin/time -v` output (other lines before them are ignored)."""
    out = {}
    with open(path, errors="replace") as f:
        text = f.read()
    pats = {
        "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
        "user_s": r"User time \(seconds\): ([\d.]+)",
        "system_s": r"System time \(seconds\): ([\d.]+)",
        "peak_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
        "exit_status": r"Exit status: (\d+)",
    }
    for k, p in pats.items():
        m = re.search(p, text)
        if m:
            v = m.group(1)
            out[k] = v if k == "wall" else (int(v) if k in ("peak_rss_kb", "exit_status") else float(v))
    if "wall" in out:
        parts = [float(p) for p in out["wall"].split(":")]
        s = 0.0
        for p in parts:
            s = s * 60 + p
        out["wall_s"] = round(s, 2)
    return out


def eval_report(path):
    e = load(path)
    v1 = e.get("v1", {})
    return {
        "exact_match": v1.get("exact_match"),
        "f1": v1.get("f1"),
        "questions": e.get("questions"),
        "windows": e.get("windows"),
        "seconds": rnd(e.get("seconds"), 1),
        "engine": e.get("engine"),
    }


def budget(path):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 3:
                row = {"at": p[0], "what": p[1], "seconds": int(p[2])}
                if len(p) >= 4:
                    row["rev"] = p[3]
                rows.append(row)
    return {"rows": rows, "total_seconds": sum(r["seconds"] for r in rows)}


def train_summary(path):
    t = load(path)
    out = {}
    for k, v in t.items():
        if k in ("output_dir",):
            continue
        if k == "sparsity" and isinstance(v, dict):
            out["sparsity_per_layer"] = {n: rnd(x) for n, x in v.items()}
        elif k == "pruning" and isinstance(v, list):
            out["pruning"] = [
                {**p, "seconds": rnd(p.get("seconds"), 1), "sparsity": rnd(p.get("sparsity"))} for p in v
            ]
        elif isinstance(v, float):
            out[k] = rnd(v, 6)
        else:
            out[k] = v
    return out


LOSS_KEYS = ("loss", "loss_span", "loss_distill", "loss_layer")


def window(rows, label):
    w = {"steps": label, "n": len(rows)}
    for k in LOSS_KEYS:
        xs = [r[k] for r in rows if r.get(k) is not None]
        if xs:
            w[k] = rnd(statistics.mean(xs))
    w["sparsity_end"] = rnd(rows[-1].get("sparsity"))
    w["qat_share"] = rnd(sum(1 for r in rows if r.get("qat")) / len(rows), 3)
    st = [r["step_seconds"] for r in rows if r.get("step_seconds") is not None]
    if st:
        w["step_seconds"] = rnd(statistics.mean(st), 3)
    return w


def train_log(path):
    with open(path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    log = [r for r in log if "step" in r]
    if not log:
        return {}
    out = {"logged_steps": len(log), "first_step": log[0]["step"], "last_step": log[-1]["step"]}
    first = log[0]["step"]
    for size in (100, 200):
        ws = []
        for a in range(0, len(log), size):
            chunk = log[a : a + size]
            ws.append(window(chunk, f"{chunk[0]['step'] - first + 1}-{chunk[-1]['step'] - first + 1}"))
        out[f"per_{size}_steps"] = ws
    out["first_20"] = window(log[:20], "first 20")
    out["last_100"] = window(log[-100:], "last 100")
    out["last_200"] = window(log[-200:], "last 200")
    layer = [(r["step"], r["loss_layer"]) for r in log if r.get("loss_layer") is not None]
    if layer:
        step, peak = max(layer, key=lambda x: x[1])
        out["loss_layer_peak"] = {"step": step, "value": rnd(peak)}
    return out


def export_report(path):
    e = load(path)
    out = {k: (rnd(v, 6) if isinstance(v, float) else v) for k, v in e.items()
           if k not in ("source", "output", "storage", "passes", "layers")}
    if "passes" in e:
        out["passes"] = [[p["pass"], p["rewritten"]] for p in e["passes"]]
    if "layers" in e:
        # the int8 weight matrices stored as plain initializers (packed weights are not listed)
        int8 = [l for l in e["layers"] if l.get("dtype") in ("i8", "int8") and len(l.get("shape", [])) == 2]
        zs = [l["zeros"] for l in int8]
        out["int8_matrices"] = len(int8)
        if zs:
            out["int8_matrix_zeros_min_max"] = [rnd(min(zs)), rnd(max(zs))]
    return out


def sizes(path):
    out = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 2 and p[1].endswith("model.onnx"):
                out[p[1]] = int(p[0])
    return out


def run(d):
    d = d.rstrip("/")
    out = {"run": os.path.basename(d)}
    f = lambda n: os.path.join(d, n)
    if os.path.exists(f("recipe_args.json")):
        out["recipe_args"] = load(f("recipe_args.json"))
    if os.path.exists(f("eval.json")):
        out["eval"] = eval_report(f("eval.json"))
    if os.path.exists(f("budget.tsv")):
        out["budget"] = budget(f("budget.tsv"))
    if os.path.exists(f("train_summary.json")):
        try:
            out["train"] = train_summary(f("train_summary.json"))
        except json.JSONDecodeError:
            pass
    for p in (f("train_log.jsonl"), f("train/train_log.jsonl")):
        if os.path.exists(p):
            out["train_log"] = train_log(p)
            break
    for p in sorted(glob.glob(f("export*.json"))):
        out[os.path.basename(p)[:-5]] = export_report(p)
    if os.path.exists(f("sizes.txt")):
        out["model_onnx_bytes"] = sizes(f("sizes.txt"))
    if os.path.exists(f("time.txt")):
        out["train_time_v"] = time_v(f("time.txt"))
    logs = {}
    for p in sorted(glob.glob(f("*.log"))):
        with open(p, errors="replace") as fh:
            # the log's own lines; a JSON report printed into it is in eval.json already
            lines = [l.rstrip("\n") for l in fh if l.strip() and not l.startswith(("{", "}", " "))]
        if len(lines) <= 20:
            logs[os.path.basename(p)] = lines
    if logs:
        out["logs"] = logs
    return out


def floors(d):
    out = {"runs": {}}
    f = lambda n: os.path.join(d, n)
    if os.path.exists(f("dense.eval.json")):
        out["dense"] = eval_report(f("dense.eval.json"))
        if os.path.exists(f("dense.eval.time")):
            out["dense"]["eval_time_v"] = time_v(f("dense.eval.time"))
    for p in sorted(glob.glob(f("*.eval.json"))):
        name = os.path.basename(p)[: -len(".eval.json")]
        if name == "dense":
            continue
        r = {"eval": eval_report(p)}
        if os.path.exists(f(name + ".args.json")):
            r["recipe_args"] = load(f(name + ".args.json"))
        if os.path.exists(f(name + ".summary.json")):
            t = train_summary(f(name + ".summary.json"))
            r["one_shot"] = {k: t.get(k) for k in ("samples_seen", "seconds", "overall_sparsity", "quantized", "pruning")}
        if os.path.exists(f(name + ".time")):
            r["one_shot_time_v"] = time_v(f(name + ".time"))
        if os.path.exists(f(name + ".eval.time")):
            r["eval_time_v"] = time_v(f(name + ".eval.time"))
        log = f(name + ".compile.log")
        if os.path.exists(log) and os.path.getsize(log):
            with open(log, errors="replace") as fh:
                r["compile_warnings"] = [l.strip() for l in fh if l.startswith("warning")]
        out["runs"][name] = r
    return out


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("run", "floors", "time"):
        sys.exit(__doc__)
    what, path = sys.argv[1], sys.argv[2]
    r = {"run": run, "floors": floors, "time": time_v}[what](path)
    print(json.dumps(r, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
