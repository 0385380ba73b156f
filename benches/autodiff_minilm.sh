#!/usr/bin/env bash
# One forward+backward training step of MiniLM-L6 (batch 8 x seq 384) on sparsec's gradient graph
# in ONNX Runtime, next to PyTorch autograd on an equally sized BertForQuestionAnswering, on the
# same machine in the same command. Also reports the gradient graph's build time and node count.
# Usage: benches/autodiff_minilm.sh   (REPS=n timed steps, default 3; RELEASE=1 for a release build,
# default: the test profile, sparsec at opt-level 1 with dependencies at 2, which shares the debug
# build's dependencies; ORT itself is the same prebuilt library either way)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "${RELEASE:-0}" = 1 ]; then
  cargo bench --bench autodiff_minilm --quiet | tee /tmp/autodiff_minilm_sparsec.json
else
  cargo test --bench autodiff_minilm --quiet | tee /tmp/autodiff_minilm_sparsec.json
fi
python3 benches/autodiff_minilm_torch.py | tee /tmp/autodiff_minilm_torch.json
python3 - <<'PY'
import json
s = json.load(open("/tmp/autodiff_minilm_sparsec.json"))
t = json.load(open("/tmp/autodiff_minilm_torch.json"))
print(f"gradient graph: {s['training_graph_nodes']} nodes ({s['forward_nodes']} forward), built in {s['build_graph_s']:.3f} s")
print(f"step (fwd+bwd, batch {s['batch']} x seq {s['seq']}): sparsec/ORT {s['step_s_median']:.3f} s, "
      f"PyTorch {t['step_s_median']:.3f} s, ratio ORT/PyTorch {s['step_s_median'] / t['step_s_median']:.2f}")
PY
