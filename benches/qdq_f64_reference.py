#!/usr/bin/env python3
"""Which side of the lowered-vs-QDQ difference is off: the exact QDQ semantics of an int8 export,
evaluated in float64, against (a) its QDQ export on ONNX Runtime (basic level: f32 products of
dequantized values) and (b) the packed sparse export on sparsec's kernels (Python onnxruntime +
libsparsec_ops.so: exact i32 products, f32 scaling), on the first N dev windows.

The reference is the QDQ graph with every float tensor in float64, each DequantizeLinear written as
(q - z) * s and each QuantizeLinear as clip(round_half_even(x / s) + z) in float64 (ONNX's
definition of both), and Erf (which ONNX Runtime has only in f32) as a Taylor series for |x| <= 2 and
a continued fraction of erfc beyond, checked against math.erf to 1e-14 before use. Then counted:
per activation quantizer, how many of its uint8 values differ from the reference's (first window
batch), and per output, logit distances and arg-max disagreements against the reference.

    python3 benches/qdq_f64_reference.py SPARSE_DIR QDQ_DIR [LIB] [DEV_JSON_GZ] [N=64] [--json OUT]
(needs onnx, onnxruntime, numpy and transformers' tokenizer)
"""
import gzip, json, math, sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T, helper as h, numpy_helper as nh

args = [a for a in sys.argv[1:] if not a.startswith('--')]
OUT = sys.argv[sys.argv.index('--json') + 1] if '--json' in sys.argv else None
if OUT in args:
    args.remove(OUT)
SPARSE, QDQ = args[0], args[1]
LIB = args[2] if len(args) > 2 else 'target/debug/libsparsec_ops.so'
DEV = args[3] if len(args) > 3 else '../shared/data/squad-v1.1-dev-split.json.gz'
N = int(args[4]) if len(args) > 4 else 64
BATCH = 8


class Builder:
    def __init__(self, prefix):
        self.nodes, self.inits, self.k, self.prefix = [], [], 0, prefix

    def name(self):
        self.k += 1
        return f'{self.prefix}/{self.k}'

    def const(self, v, dtype=np.float64):
        n = self.name()
        self.inits.append(nh.from_array(np.array(v, dtype=dtype), n))
        return n

    def op(self, op, ins, **attrs):
        out = self.name()
        self.nodes.append(h.make_node(op, ins, [out], name=out, **attrs))
        return out


def erf_nodes(b, x):
    """erf(x) in float64 from ONNX ops: Taylor series for |x| <= 2, 1 - erfc by continued fraction above."""
    ax = b.op('Abs', [x])
    two = b.const(2.0)
    small = b.op('LessOrEqual', [ax, two])
    xs = b.op('Clip', [x, b.const(-2.0), two])
    x2 = b.op('Mul', [xs, xs])
    term, acc = xs, xs
    for n in range(1, 60):
        # term_n = term_{n-1} * (-x^2) / n ; erf sum adds term_n / (2n + 1)
        term = b.op('Mul', [term, b.op('Mul', [x2, b.const(-1.0 / n)])])
        acc = b.op('Add', [acc, b.op('Mul', [term, b.const(1.0 / (2 * n + 1))])])
    taylor = b.op('Mul', [acc, b.const(2.0 / math.sqrt(math.pi))])
    xl = b.op('Max', [ax, two])
    t = xl
    for k in range(80, 0, -1):
        t = b.op('Add', [xl, b.op('Div', [b.const(k / 2.0), t])])
    erfc = b.op('Mul', [b.op('Exp', [b.op('Neg', [b.op('Mul', [xl, xl])])]), b.op('Div', [b.const(1.0 / math.sqrt(math.pi)), t])])
    large = b.op('Mul', [b.op('Sign', [x]), b.op('Sub', [b.const(1.0), erfc])])
    return b.op('Where', [small, taylor, large])


def check_erf():
    b = Builder('erfcheck')
    y = erf_nodes(b, 'x')
    g = h.make_graph(b.nodes, 'erf', [h.make_tensor_value_info('x', T.DOUBLE, [None])],
                     [h.make_tensor_value_info(y, T.DOUBLE, [None])], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', 17)], ir_version=8)
    xs = np.concatenate([np.linspace(-12, 12, 20001), [0.0, 1e-300, -1e-8, 2.0, -2.0, 2.0000001]])
    got = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider']).run(None, {'x': xs})[0]
    want = np.array([math.erf(v) for v in xs])
    err = np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))
    assert err < 1e-14, f'erf in float64 ONNX ops: worst relative error {err}'
    return float(err)


def to_f64_reference(model):
    """The QDQ model with exact QDQ semantics in float64; also returns the quantizers' uint8 outputs."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_inits, nodes, qouts = [], [], []
    for t in g.initializer:
        if t.data_type == T.FLOAT:
            new_inits.append(nh.from_array(nh.to_array(t).astype(np.float64), t.name))
        else:
            new_inits.append(t)
    for i, n in enumerate(g.node):
        b = Builder(f'f64/{i}')
        if n.op_type == 'DequantizeLinear':
            q, s = n.input[0], n.input[1]
            z = n.input[2] if len(n.input) > 2 and n.input[2] else None
            axis = next((a.i for a in n.attribute if a.name == 'axis'), 1)
            sd, zd = s, (b.op('Cast', [z], to=T.DOUBLE) if z else None)
            if s in inits and len(inits[s].dims) == 1 and q in inits:
                rank = len(inits[q].dims)
                if axis % rank != rank - 1:
                    shape = [1] * rank
                    shape[axis % rank] = inits[s].dims[0]
                    sd = b.op('Reshape', [s, b.const(shape, np.int64)])
                    zd = b.op('Reshape', [zd, b.const(shape, np.int64)]) if zd else None
            qd = b.op('Cast', [q], to=T.DOUBLE)
            if zd:
                qd = b.op('Sub', [qd, zd])
            b.nodes.append(h.make_node('Mul', [qd, sd], [n.output[0]], name=n.name + '/f64'))
        elif n.op_type == 'QuantizeLinear':
            x, s, z = n.input[0], n.input[1], n.input[2]
            zt = inits[z]
            lo, hi = (0.0, 255.0) if zt.data_type == T.UINT8 else (-128.0, 127.0)
            r = b.op('Round', [b.op('Div', [x, s])])
            r = b.op('Add', [r, b.op('Cast', [z], to=T.DOUBLE)])
            b.nodes.append(h.make_node('Clip', [r, b.const(lo), b.const(hi)], [n.output[0]], name=n.name + '/f64'))
            qouts.append(n.output[0])
        elif n.op_type == 'Erf':
            y = erf_nodes(b, n.input[0])
            b.nodes.append(h.make_node('Identity', [y], [n.output[0]], name=n.name + '/f64'))
        elif n.op_type == 'Cast' and any(a.name == 'to' and a.i == T.FLOAT for a in n.attribute):
            b.nodes.append(h.make_node('Cast', list(n.input), list(n.output), name=n.name, to=T.DOUBLE))
        elif n.op_type == 'Constant':
            a = n.attribute[0]
            if a.name == 'value' and a.t.data_type == T.FLOAT:
                v = nh.from_array(nh.to_array(a.t).astype(np.float64))
                b.nodes.append(h.make_node('Constant', [], list(n.output), name=n.name, value=v))
            elif a.name == 'value_float':
                b.nodes.append(h.make_node('Constant', [], list(n.output), name=n.name,
                                           value=nh.from_array(np.array(a.f, dtype=np.float64))))
            else:
                b.nodes.append(n)
        elif n.op_type == 'ConstantOfShape' and n.attribute and n.attribute[0].t.data_type == T.FLOAT:
            v = nh.from_array(nh.to_array(n.attribute[0].t).astype(np.float64))
            b.nodes.append(h.make_node('ConstantOfShape', list(n.input), list(n.output), name=n.name, value=v))
        else:
            b.nodes.append(n)
        nodes += b.nodes
        new_inits += b.inits
    outs = [h.make_tensor_value_info(o.name, T.DOUBLE, None) for o in g.output]
    outs += [h.make_tensor_value_info(q, T.DOUBLE, None) for q in qouts]
    graph = h.make_graph(nodes, 'qdq_f64', list(g.input), outs, new_inits)
    m = h.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return m, qouts


def with_quant_outputs(model, qouts):
    """The QDQ model on ORT, also returning its quantizers' outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for q in qouts:
        m.graph.output.append(h.make_tensor_value_info(q, T.UINT8, None))
    return m


def main():
    erf_err = check_erf()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(SPARSE)
    d = json.load(gzip.open(DEV))
    qs = [(q['question'], p['context']) for a in d['data'] for p in a['paragraphs'] for q in p['qas']][:N]
    enc = tok([q for q, _ in qs], [c for _, c in qs], truncation='only_second', max_length=384,
              padding='max_length', return_tensors='np')
    qdq_model = onnx.load(QDQ + '/model.onnx')
    ref_model, qouts = to_f64_reference(qdq_model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(ref_model.SerializeToString(), so, providers=['CPUExecutionProvider'])
    sb = ort.SessionOptions()
    sb.intra_op_num_threads = 2
    sb.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    qdq = ort.InferenceSession(with_quant_outputs(qdq_model, qouts).SerializeToString(), sb,
                               providers=['CPUExecutionProvider'])
    sl = ort.SessionOptions()
    sl.register_custom_ops_library(LIB)
    sl.intra_op_num_threads = 2
    sl.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    low = ort.InferenceSession(SPARSE + '/model.onnx', sl, providers=['CPUExecutionProvider'])
    names = [i.name for i in low.get_inputs()]
    R, Q, L, flips, qcount = [[], []], [[], []], [[], []], np.zeros(len(qouts)), np.zeros(len(qouts))
    for s in range(0, N, BATCH):
        feed = {n: enc[n][s:s + BATCH].astype(np.int64) for n in names}
        r = ref.run(None, feed)
        q = qdq.run(None, feed)
        lo = low.run(None, feed)
        for k in range(2):
            R[k].append(r[k])
            Q[k].append(q[k].astype(np.float64))
            L[k].append(lo[k].astype(np.float64))
        for j in range(len(qouts)):
            a, bq = r[2 + j], q[2 + j].astype(np.float64)
            flips[j] += np.sum(a != bq)
            qcount[j] += a.size
    mask = enc['attention_mask'][:N].astype(bool)
    report = {'windows': N, 'erf_check_max_rel_error': erf_err,
              'ort_qdq_quantizer_values_differing_from_f64': {
                  'total': int(flips.sum()), 'of': int(qcount.sum()),
                  'fraction': float(flips.sum() / qcount.sum()),
                  'worst_quantizer_fraction': float((flips / qcount).max()),
                  'by_quantizer': {q: float(f / c) for q, f, c in zip(qouts, flips, qcount)}}}
    for k, head in enumerate(['start_logits', 'end_logits']):
        r, q, lo = (np.concatenate(x[k]) for x in (R, Q, L))
        am = lambda x: np.where(mask, x, -1e9).argmax(1)
        entry = {}
        for side, x in [('ort_qdq', q), ('sparsec_lowered', lo)]:
            dd = np.abs(x - r)[mask]
            entry[side] = {'max_abs_vs_f64': float(dd.max()), 'median_abs_vs_f64': float(np.median(dd)),
                           'p99_abs_vs_f64': float(np.quantile(dd, 0.99)),
                           'argmax_differs_from_f64': int((am(x) != am(r)).sum())}
        dd = np.abs(q - lo)[mask]
        entry['lowered_vs_qdq'] = {'max_abs': float(dd.max()), 'median_abs': float(np.median(dd)),
                                   'argmax_differs': int((am(q) != am(lo)).sum())}
        report[head] = entry
    text = json.dumps(report, indent=1)
    print(text)
    if OUT:
        open(OUT, 'w').write(text + '\n')


if __name__ == '__main__':
    main()
