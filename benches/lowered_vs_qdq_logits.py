#!/usr/bin/env python3
"""Logit differences between a packed sparse export (Python onnxruntime + libsparsec_ops.so) and its
QDQ export on ORT's basic level (LEVEL=all: ORT's default, fully optimised level, whose int8 kernels
are exact on CPUs with VNNI), on the first N dev windows (needs transformers for the tokenizer).
LEVEL=pairs compares all three pairs: sparsec against each ORT level, and ORT's two levels against
each other (how far ONNX Runtime's own two executions of the same QDQ file are apart).

    python3 benches/lowered_vs_qdq_logits.py SPARSE_DIR QDQ_DIR [LIB] [DEV_JSON_GZ] [N=64] [LEVEL=basic|all|pairs]
"""
import json, gzip, numpy as np, onnxruntime as ort, sys
from transformers import AutoTokenizer
SPARSE, QDQ = sys.argv[1], sys.argv[2]
LIB = sys.argv[3] if len(sys.argv) > 3 else 'target/debug/libsparsec_ops.so'
DEV = sys.argv[4] if len(sys.argv) > 4 else '../shared/data/squad-v1.1-dev-split.json.gz'
N = int(sys.argv[5]) if len(sys.argv) > 5 else 64
LEVEL = sys.argv[6] if len(sys.argv) > 6 else 'basic'
tok = AutoTokenizer.from_pretrained(SPARSE)
d = json.load(gzip.open(DEV))
qs=[]
for art in d['data']:
    for p in art['paragraphs']:
        for q in p['qas']:
            qs.append((q['question'], p['context']))
qs=qs[:N]
enc = tok([q for q,_ in qs],[c for _,c in qs], truncation='only_second', max_length=384, padding='max_length', return_tensors='np')
so=ort.SessionOptions(); so.register_custom_ops_library(LIB); so.intra_op_num_threads=2
so.graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
low=ort.InferenceSession(SPARSE + '/model.onnx', so, providers=['CPUExecutionProvider'])
def qdq_session(level):
    sb = ort.SessionOptions(); sb.intra_op_num_threads = 2
    sb.graph_optimization_level = {'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(QDQ + '/model.onnx', sb, providers=['CPUExecutionProvider'])
names=[i.name for i in low.get_inputs()]
feed={n: enc[n].astype(np.int64) for n in names}
m=enc['attention_mask'].astype(bool)
def compare(a, b, label):
    if label:
        print(label)
    for x,y,name in zip(a,b,['start','end']):
        dd=np.abs(x-y)[m]
        print(name, 'max', dd.max(), 'p99', np.quantile(dd,0.99), 'median', np.median(dd), 'frac>1e-3', (dd>1e-3).mean(), 'frac>1e-2', (dd>1e-2).mean())
        print(' argmax differ', (np.where(m,x,-1e9).argmax(1)!=np.where(m,y,-1e9).argmax(1)).sum(), 'of', len(x))
a=low.run(None, feed)
if LEVEL == 'pairs':
    basic = qdq_session('basic').run(None, feed)
    full = qdq_session('all').run(None, feed)
    compare(a, full, 'sparsec vs ORT all')
    compare(a, basic, 'sparsec vs ORT basic')
    compare(basic, full, 'ORT basic vs ORT all')
else:
    compare(a, qdq_session(LEVEL).run(None, feed), None)
