import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng=np.random.default_rng(0)
K,N,B,S=32,64,2,23
W=rng.integers(-127,128,(K,N)).astype(np.int8)
mask=rng.random((K,N//4))<0.2; W=W*np.repeat(mask,4,axis=1)
ws=(rng.random(N)*0.01+0.001).astype(np.float32); bias=rng.standard_normal(N).astype(np.float32)
xs=np.float32(0.02); xzp=np.uint8(120)
x=(rng.standard_normal((B,S,K))).astype(np.float32)
inits=[nh.from_array(W,'W'),nh.from_array(ws,'ws'),nh.from_array(np.zeros(N,np.int8),'wzp'),nh.from_array(bias,'b'),nh.from_array(np.array(xs),'xs'),nh.from_array(np.array(xzp),'xzp')]
nodes=[h.make_node('QuantizeLinear',['x','xs','xzp'],['xq']),h.make_node('DequantizeLinear',['xq','xs','xzp'],['xd']),
 h.make_node('DequantizeLinear',['W','ws','wzp'],['wd'],axis=1),h.make_node('MatMul',['xd','wd'],['mm']),h.make_node('Add',['mm','b'],['y'])]
g=h.make_graph(nodes,'g',[h.make_tensor_value_info('x',T.FLOAT,['B','S',K])],[h.make_tensor_value_info('y',T.FLOAT,None)],inits)
m=h.make_model(g,opset_imports=[h.make_opsetid('',17)],ir_version=9)
so=ort.SessionOptions(); so.graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
ref=ort.InferenceSession(m.SerializeToString(),so).run(None,{'x':x})[0]
so3=ort.SessionOptions()
ref3=ort.InferenceSession(m.SerializeToString(),so3).run(None,{'x':x})[0]
# numpy exact
q=np.clip(np.rint(x/xs)+xzp,0,255)
exact=((q-float(xzp))@W.astype(np.float64))*(float(xs)*ws.astype(np.float64))+bias
n2=[h.make_node('SparseLinear',['x','W','ws','b'],['y'],domain='ai.sparsec',epilogue='none',x_scale=float(xs),x_zero_point=int(xzp))]
g2=h.make_graph(n2,'g',[h.make_tensor_value_info('x',T.FLOAT,['B','S',K])],[h.make_tensor_value_info('y',T.FLOAT,None)],inits[:2]+inits[3:4])
m2=h.make_model(g2,opset_imports=[h.make_opsetid('',17),h.make_opsetid('ai.sparsec',1)],ir_version=9)
so2=ort.SessionOptions(); so2.register_custom_ops_library('/work/main/target/debug/deps/libsparsec_ops.so')
out=ort.InferenceSession(m2.SerializeToString(),so2).run(None,{'x':x})[0]
print('basic vs exact', np.abs(ref-exact).max(), 'L3 vs exact', np.abs(ref3-exact).max(), 'sparsec vs exact', np.abs(out-exact).max())
