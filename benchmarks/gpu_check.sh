#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and TensorRT >= 10: build every graph of an artifact with TensorRT and
# compare its outputs to ONNX Runtime (CPU) through Polygraphy. One PASS/FAIL line per graph.
#
#   benchmarks/gpu_check.sh ARTIFACT_DIR [fp32|fp16|int8]     (int8 needs --calib-task data: CALIB_TASK=cola)
set -uo pipefail
ART=${1:?usage: gpu_check.sh ARTIFACT_DIR [fp32|fp16|int8]}
PREC=${2:-fp16}
PY=${PYTHON:-python3}
case $PREC in fp32) TOL="--atol 1e-3 --rtol 1e-3";; fp16) TOL="--atol 3e-2 --rtol 3e-2";; *) TOL="--atol 0.15 --rtol 0.15";; esac
FLAGS=""
[ "$PREC" = fp16 ] && FLAGS="--fp16"
[ "$PREC" = int8 ] && FLAGS="--int8 --calib-task ${CALIB_TASK:-cola}"

nvidia-smi -L || { echo "FAIL no NVIDIA GPU"; exit 1; }
$PY -c "import tensorrt as t; print('TensorRT', t.__version__)" || { echo "FAIL TensorRT not importable"; exit 1; }

# 1) the nanotrt build itself (plans into the artifact)
$PY -m pipeline build "$ART" --backend tensorrt $FLAGS || { echo "FAIL nanotrt build --backend tensorrt"; exit 1; }

# 2) per graph: Polygraphy builds the same ONNX with TensorRT and compares against ONNX Runtime
fails=0
while IFS=$'\t' read -r name file shapes; do
  if polygraphy run "$ART/$file" --trt --onnxrt $TOL $([ "$PREC" = fp16 ] && echo --fp16) \
       --trt-min-shapes $shapes --trt-opt-shapes $shapes --trt-max-shapes $shapes --input-shapes $shapes \
       > "/tmp/gpu_check_$name.log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name (log: /tmp/gpu_check_$name.log)"; fails=$((fails + 1))
  fi
done < <($PY - "$ART" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
for name in dict.fromkeys([m["variants"]["fp32"]["embeddings"], *m["variants"]["fp32"]["layers"], *m["variants"]["fp32"]["ramps"]]):
    g = m["graphs"][name]
    dims = lambda s: "x".join(str(d if isinstance(d, int) and d else (2 if i == 0 else 16)) for i, d in enumerate(s))
    print(name, g["file"], " ".join(f"{i['name']}:[{dims(i['shape']).replace('x', ',')}]" for i in g["inputs"]), sep="\t")
PYEOF
)

# 3) the nanotrt runner on TensorRT vs ONNX Runtime, end to end
$PY - "$ART" "$PREC" <<'PYEOF' || fails=$((fails + 1))
import sys, numpy as np
from pipeline.runner import Runner
art, prec = sys.argv[1], sys.argv[2]
texts = ["a short one", "a somewhat longer sentence to classify here", "third"]
ref = Runner.from_artifact(art).predict(texts, batch_size=3)
with Runner.from_artifact(art, backend="tensorrt", precision=prec, memory_budget="2layers") as r:
    got = r.predict(texts, batch_size=3)
d = float(np.abs(got.ramp_logits - ref.ramp_logits).max())
print(("PASS" if d < {"fp32": 1e-3, "fp16": 5e-2}.get(prec, 0.5) else "FAIL"), f"runner end-to-end max abs diff {d:.2e}")
sys.exit(0 if d < 0.5 else 1)
PYEOF
echo "done: $fails failure(s)"
exit $((fails > 0))
