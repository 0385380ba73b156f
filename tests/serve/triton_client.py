"""The Open Inference Protocol through the official tritonclient[http], against a running
`sparsec serve`: health, metadata, inference with BYTES inputs (JSON and binary), and the
protocol's errors. Prints one JSON object for tests/serve.rs to check against `sparsec qa`.

usage: triton_client.py HOST:PORT CASES.json   (CASES: [{"question", "context"}, ...])
"""
import json
import sys

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

url, cases_path = sys.argv[1], sys.argv[2]
cases = json.load(open(cases_path))
client = http.InferenceServerClient(url=url)
MODEL = "question_answering"


def bytes_input(name, values, binary):
    t = http.InferInput(name, [len(values)], "BYTES")
    t.set_data_from_numpy(np.array([v.encode("utf-8") for v in values], dtype=np.object_), binary_data=binary)
    return t


def infer(binary, outputs=None, model=MODEL, inputs=None):
    if inputs is None:
        inputs = [
            bytes_input("question", [c["question"] for c in cases], binary),
            bytes_input("context", [c["context"] for c in cases], binary),
        ]
    requested = None if outputs is None else [http.InferRequestedOutput(o, binary_data=False) for o in outputs]
    r = client.infer(model, inputs, outputs=requested, request_id="req-1")
    rows = []
    for i in range(len(cases)):
        answer = r.as_numpy("answer")[i]
        rows.append(
            {
                "answer": answer.decode("utf-8") if isinstance(answer, bytes) else str(answer),
                "score": float(r.as_numpy("score")[i]),
                "start": int(r.as_numpy("start")[i]),
                "end": int(r.as_numpy("end")[i]),
            }
        )
    resp = r.get_response()
    return rows, {"id": resp.get("id"), "model_version": resp.get("model_version"),
                  "dtypes": {o["name"]: str(r.as_numpy(o["name"]).dtype) for o in resp["outputs"]}}


def error(call):
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return None


out = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(MODEL),
    "model_ready_v1": client.is_model_ready(MODEL, "1"),
    "server_metadata": client.get_server_metadata(),
    "metadata": client.get_model_metadata(MODEL),
}
out["json"], out["json_meta"] = infer(binary=False, outputs=["answer", "score", "start", "end"])
out["binary"], out["binary_meta"] = infer(binary=True)

q = [cases[0]["question"]]
c = [cases[0]["context"]]
wrong_dtype = http.InferInput("question", [1], "FP32")
wrong_dtype.set_data_from_numpy(np.array([1.0], dtype=np.float32), binary_data=False)
out["errors"] = {
    "unknown_model_metadata": error(lambda: client.get_model_metadata("nope")),
    "unknown_model_infer": error(lambda: infer(False, model="nope")),
    "unknown_model_ready": client.is_model_ready("nope"),
    "wrong_datatype": error(lambda: infer(False, inputs=[wrong_dtype, bytes_input("context", c, False)])),
    "missing_input": error(lambda: infer(False, inputs=[bytes_input("question", q, False)])),
    "context_count": error(
        lambda: infer(False, inputs=[bytes_input("question", q * 3, False), bytes_input("context", c * 2, False)])
    ),
}
print(json.dumps(out))
