#!/usr/bin/env python3
"""Which forward values a training graph keeps alive for its backward, and how much memory they hold.

Reads a `train.onnx` written by `sparsec compile`, fixes the batch and sequence dimensions, infers every value's
shape (onnx.shape_inference), then walks the nodes in file order freeing each value after its last reader (graph
outputs stay), as ONNX Runtime's planner does without a memory pattern (`train --ort-memory lean`). Prints the
peak, the op types whose outputs are alive at the peak, and the largest of them. File order is sparsec's
topological order; ORT may order nodes differently, so treat the peak as an estimate and the list as the finding.

    python3 benches/train_liveness.py COMPILED/train.onnx [--batch 16] [--seq 384] [--top 25]
"""

import argparse
import collections
import sys

import onnx
from onnx import TensorProto, shape_inference

BYTES = {TensorProto.FLOAT: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1, TensorProto.INT32: 4,
         TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    m = onnx.load(args.model, load_external_data=False)
    for i in m.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.dim_param == "batch":
                d.dim_value = args.batch
            elif d.dim_param == "sequence":
                d.dim_value = args.seq
    m = shape_inference.infer_shapes(m, data_prop=True)
    g = m.graph
    size, unknown = {}, 0
    for vi in list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if all(d > 0 for d in dims):
            n = 1
            for d in dims:
                n *= d
            size[vi.name] = n * BYTES.get(t.elem_type, 4)
        else:
            unknown += 1
    last = {}
    for idx, n in enumerate(g.node):
        for x in n.input:
            last[x] = idx
    outputs = {o.name for o in g.output}
    live, producer = {}, {}
    peak, peak_at, peak_set = 0, 0, {}
    for idx, n in enumerate(g.node):
        for o in n.output:
            producer[o] = n.op_type
            live[o] = size.get(o, 0)
        cur = sum(live.values())
        if cur > peak:
            peak, peak_at, peak_set = cur, idx, dict(live)
        for x in set(n.input):
            if x in live and last.get(x) == idx and x not in outputs:
                del live[x]
        for o in n.output:
            if o not in last and o not in outputs:
                live.pop(o, None)
    at = g.node[peak_at]
    print(f"{args.model}: batch {args.batch} x {args.seq}; {unknown} values of unknown shape counted as 0")
    print(f"peak of intermediate values {peak / 2**20:.0f} MiB, at node {peak_at} ({at.op_type} {at.name})")
    by, count = collections.Counter(), collections.Counter()
    for k, v in peak_set.items():
        by[producer[k]] += v
        count[producer[k]] += 1
    for op, v in by.most_common(12):
        print(f"  {op:20s} {count[op]:4d} values {v / 2**20:8.0f} MiB")
    for k, v in sorted(peak_set.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {v / 2**20:7.1f} MiB  {producer[k]:12s} {k}")


if __name__ == "__main__":
    sys.exit(main())
