#!/usr/bin/env python3
"""Rebuild an fp32 ONNX model from a `sparsec export --format sparse` deployment of a BERT QA model.

    unpack_deploy.py DENSE_MODEL.onnx DEPLOY_DIR OUT_DIR

Takes the dense model's graph (the one the deployment was trained from) and replaces its weights by the
deployment's: each `ai.sparsec::SparseLinear` weight (packed `block4x1` or dense int8) times its per-channel
scale, with the fused Q|K|V weights split back into the three projections; the int8 embedding tables times
their row scales; biases and LayerNorm parameters as stored. The result is the deployment's weights, dequantized,
in the dense graph, with the zeros of its pruned blocks in place: a starting point for sparse transfer
(`ConstantPruningModifier` keeps those zeros). Activation quantization is not carried over (QAT restarts).

Checks what it can: every dense-model initializer it should replace is replaced exactly once, shapes agree,
and OUT_DIR/unpack.json reports per-linear sparsity. The packed layout is the one
`crates/kernels/src/linear_i8/packed.rs` documents.
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def decode_block4x1(p: np.ndarray, k: int, n: int) -> np.ndarray:
    """Packed `block4x1` bytes -> dense int8 [K, N]."""
    m = (k + 7) // 8
    nb = (n + 3) // 4
    mask = p[: nb * m].view(np.uint8).reshape(nb, m)
    bits = np.unpackbits(mask, axis=1, bitorder="little")[:, :k]  # [nb, K]
    w = np.zeros((k, nb * 4), dtype=np.int8)
    off = nb * m
    for b in range(nb):
        idx = np.nonzero(bits[b])[0]
        groups = (len(idx) + 3) // 4
        g = p[off: off + groups * 16].reshape(groups, 4, 4)  # [group][channel][index-in-group]
        off += groups * 16
        vals = g.transpose(0, 2, 1).reshape(groups * 4, 4)[: len(idx)]  # [index][channel]
        w[idx, b * 4: b * 4 + 4] = vals
    if off != len(p):
        raise SystemExit(f"packed weight: {len(p)} bytes, layout accounts for {off}")
    return w[:, :n]


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    dense_path, deploy, out = sys.argv[1:]
    dense = onnx.load(dense_path)
    dep = onnx.load(os.path.join(deploy, "model.onnx"))
    dinit = {i.name: numpy_helper.to_array(i) for i in dep.graph.initializer}
    for n in dep.graph.node:  # Constant nodes may hold small tensors too
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    dinit[n.output[0]] = numpy_helper.to_array(a.t)

    # dense graph: MatMul node name -> (weight initializer, bias initializer)
    producers = {}
    consumers = {}
    for node in dense.graph.node:
        for o in node.output:
            producers[o] = node
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    init_names = {i.name for i in dense.graph.initializer}
    linears = {}
    for node in dense.graph.node:
        if node.op_type == "MatMul" and node.input[1] in init_names:
            adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
            bias = next((i for a in adds for i in a.input if i in init_names), None)
            linears[node.name] = (node.input[1], bias)

    new = {}
    report = []

    def put(name, arr, expect_shape):
        if name in new:
            raise SystemExit(f"{name}: replaced twice")
        if tuple(arr.shape) != tuple(expect_shape):
            raise SystemExit(f"{name}: shape {arr.shape}, dense model has {expect_shape}")
        new[name] = arr.astype(np.float32)

    dshape = {i.name: tuple(i.dims) for i in dense.graph.initializer}

    def own_bias(name, fused):
        # A bias the export did not fold into the operator stays a float initializer of its own name
        # (the operator's is then zeros): prefer it.
        if not fused.any() and name in dinit and dinit[name].dtype == np.float32:
            return dinit[name]
        return fused
    for node in dep.graph.node:
        if node.domain != "ai.sparsec" or node.op_type != "SparseLinear":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        wname, sname, bname = node.input[1], node.input[2], node.input[3]
        fmt = attrs.get("weight_format", b"dense").decode()
        raw = dinit[wname]
        if fmt == "block4x1":
            k, n = attrs["weight_shape"]
            wq = decode_block4x1(raw.astype(np.int8).ravel(), k, n)
        else:
            wq = raw.astype(np.int8)
            k, n = wq.shape
        w = wq.astype(np.float32) * np.asarray(dinit[sname], np.float32).reshape(1, -1)  # per channel or tensor
        bias = np.asarray(dinit[bname], np.float32)
        if sname.startswith("sparsec.qkv/"):
            layer = sname.split("/layer.")[1].split("/")[0]
            parts = [f"/bert/encoder/layer.{layer}/attention/self/{p}/MatMul" for p in ("query", "key", "value")]
            n3 = n // 3
            for j, mm in enumerate(parts):
                wn, bn = linears[mm]
                put(wn, w[:, j * n3:(j + 1) * n3], dshape[wn])
                put(bn, own_bias(bn, bias[j * n3:(j + 1) * n3]), dshape[bn])
                sub = wq[:, j * n3:(j + 1) * n3]
                report.append({"linear": mm, "shape": [k, n3], "zeros": float((sub == 0).mean())})
        else:
            mm = sname[len("sparsec.sparse/"):-len(".w_scale")]
            wn, bn = linears[mm]
            put(wn, w, dshape[wn])
            put(bn, own_bias(bn, bias), dshape[bn])
            report.append({"linear": mm, "shape": [k, n], "zeros": float((wq == 0).mean())})
    for name in list(dinit):
        if name.endswith(".weight.int8") and name[: -len(".int8")] + ".row_scale" in dinit:
            base = name[: -len(".int8")]
            put(base, dinit[name].astype(np.float32) * dinit[base + ".row_scale"].astype(np.float32), dshape[base])
        elif name in dshape and name not in new and dinit[name].dtype == np.float32:
            put(name, dinit[name], dshape[name])
    missing = [i.name for i in dense.graph.initializer if i.name not in new and i.data_type == onnx.TensorProto.FLOAT
               and len(i.dims) >= 1 and np.prod(i.dims) > 1]
    if missing:
        raise SystemExit(f"not found in the deployment: {missing}")
    for i, init in enumerate(dense.graph.initializer):
        if init.name in new:
            dense.graph.initializer[i].CopyFrom(numpy_helper.from_array(new[init.name], init.name))
    os.makedirs(out, exist_ok=True)
    onnx.save(dense, os.path.join(out, "model.onnx"))
    src = os.path.dirname(os.path.abspath(dense_path))
    for f in ("tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"):
        if os.path.exists(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), os.path.join(out, f))
    zeros = sum(r["zeros"] * r["shape"][0] * r["shape"][1] for r in report if "/encoder/" in r["linear"])
    total = sum(r["shape"][0] * r["shape"][1] for r in report if "/encoder/" in r["linear"])
    summary = {"replaced": len(new), "encoder_zeros": zeros / total, "linears": report}
    with open(os.path.join(out, "unpack.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({"replaced": len(new), "encoder_zeros": round(zeros / total, 4), "linears": len(report)}))


if __name__ == "__main__":
    main()
