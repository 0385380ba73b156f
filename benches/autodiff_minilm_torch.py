"""PyTorch baseline for benches/autodiff_minilm.sh: one forward+backward step of an equally sized
BertForQuestionAnswering (config from ../shared/models/minilm-l6-squad/config.json, random
weights, eval mode as the ONNX graph has no dropout) at batch 8 x seq 384, on CPU. Prints one
JSON line."""
import json, os, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from transformers import BertConfig, BertForQuestionAnswering

here = os.path.dirname(os.path.abspath(__file__))
cfg = BertConfig.from_json_file(os.path.join(here, "..", "..", "shared", "models", "minilm-l6-squad", "config.json"))
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
model = BertForQuestionAnswering(cfg).eval()
batch, seq = 8, 384
reps = int(os.environ.get("REPS", "3"))
n = batch * seq
ids = torch.tensor([1000 + (i * 7919) % 29000 for i in range(n)]).view(batch, seq)
inputs = dict(
    input_ids=ids,
    attention_mask=torch.ones(batch, seq, dtype=torch.long),
    token_type_ids=torch.tensor([int((i % seq) >= seq // 4) for i in range(n)]).view(batch, seq),
    start_positions=torch.arange(batch) + 100,
    end_positions=torch.arange(batch) + 110,
)


def step():
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.item()


step()
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({
    "engine": f"pytorch {torch.__version__} autograd", "threads": torch.get_num_threads(),
    "batch": batch, "seq": seq, "step_s_median": times[len(times) // 2], "step_s_all": times, "loss": loss,
}))
