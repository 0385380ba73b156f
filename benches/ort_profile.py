"""Summarises an ONNX Runtime profile (`sparsec bench --profile PREFIX`): milliseconds per run
spent in each op type, largest first, and the share of the total.

    python3 benches/ort_profile.py PREFIX_*.json [--runs N]
"""
import collections
import json
import sys

path = sys.argv[1]
events = json.load(open(path))
per_op = collections.Counter()
runs = 0
for e in events:
    if e.get("cat") == "Session" and e.get("name") == "model_run":
        runs += 1
    if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"] / 1000.0
runs = max(runs, 1)
total = sum(per_op.values())
print(f"{path}: {runs} runs, {total / runs:.2f} ms of node time per run")
for op, ms in per_op.most_common():
    print(f"  {op:<28} {ms / runs:8.2f} ms  {100 * ms / total:5.1f}%")
