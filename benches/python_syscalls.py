#!/usr/bin/env python3
"""Runs MODEL N times from Python onnxruntime with LIB registered (2 intra-op threads, batch B, seq 384):

    python3 benches/python_syscalls.py LIB MODEL_ONNX B N

benches/python_syscalls.sh counts its system calls."""
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.register_custom_ops_library(sys.argv[1]); so.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"])
b, n = int(sys.argv[3]), int(sys.argv[4])
f = {"input_ids": np.full((b, 384), 1000, np.int64), "attention_mask": np.ones((b, 384), np.int64), "token_type_ids": np.zeros((b, 384), np.int64)}
f = {i.name: f[i.name] for i in s.get_inputs()}
for _ in range(n): s.run(None, f)
