#!/usr/bin/env bash
# Lays out the build context of deploy/Containerfile from local files:
#   deploy/stage.sh CONTEXT [MODEL_DIR]
# CONTEXT/bin/sparsec      target/release/sparsec (or $SPARSEC_BIN)
# CONTEXT/lib/             libonnxruntime.so from the pip-installed onnxruntime (or $ORT_DYLIB_PATH)
# CONTEXT/models/qa/       MODEL_DIR (model.onnx + tokenizer.json), if given; else mount one at
#                          /models/qa or pass other arguments (KServe mounts /mnt/models)
set -euo pipefail
out=${1:?usage: deploy/stage.sh CONTEXT [MODEL_DIR]}
model=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SPARSEC_BIN:-$root/target/release/sparsec}
[ -x "$bin" ] || { echo "error: no $bin: run cargo build --release first" >&2; exit 1; }
ort=${ORT_DYLIB_PATH:-$(python3 -c 'import glob, os, onnxruntime
print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))[0])')}
mkdir -p "$out/bin" "$out/lib" "$out/models"
cp "$bin" "$out/bin/sparsec"
cp "$ort" "$out/lib/libonnxruntime.so"
if [ -n "$model" ]; then
    [ -f "$model/model.onnx" ] && [ -f "$model/tokenizer.json" ] ||
        { echo "error: $model needs model.onnx and tokenizer.json" >&2; exit 1; }
    rm -rf "$out/models/qa"
    mkdir -p "$out/models/qa"
    cp -r "$model"/. "$out/models/qa/"
fi
cp "$root/deploy/Containerfile" "$out/Containerfile"
echo "staged $out: docker build -t sparsec:0.1.0 -f $out/Containerfile $out"
