#!/usr/bin/env bash
# System calls per inference when Python onnxruntime runs a lowered model through libsparsec_ops.so:
# `strace -f -c` of benches/python_syscalls.py with N1 and N2 inferences; the difference divided by
# N2 - N1 is the per-inference count (session creation cancels out).
#
#   benches/python_syscalls.sh LIB MODEL_ONNX [BATCH=1] [N1=2] [N2=12]
set -euo pipefail
LIB=$1; MODEL=$2; B=${3:-1}; N1=${4:-2}; N2=${5:-12}
here=$(dirname "$0")
count() { strace -f -qq -c -o /dev/stdout python3 "$here/python_syscalls.py" "$LIB" "$MODEL" "$B" "$1" | awk '$NF=="total" {print $(NF-2)}'; }
a=$(count "$N1"); b=$(count "$N2")
python3 -c "import json; print(json.dumps({'batch': $B, 'syscalls': [$a, $b], 'inferences': [$N1, $N2], 'syscalls_per_inference': ($b - $a) / ($N2 - $N1)}))"
