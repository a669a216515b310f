#!/usr/bin/env bash
# TensorRT check for a machine with an NVIDIA GPU (x86-64 with CUDA 12/13, or a Jetson Orin on JetPack 6.1+).
#
#   benchmarks/gpu_check.sh ARTIFACT_DIR [CALIB_TASK]      (CALIB_TASK: GLUE task for INT8, default cola)
#   INSTALL=1 benchmarks/gpu_check.sh ...                  (pip-installs missing Python prerequisites first)
#
# 1. prerequisites: nvidia-smi, TensorRT 10.1-11.x Python bindings (nanotrt's own version gate), cuda-python,
#    Polygraphy, ONNX, ONNX Runtime;
# 2. builds TensorRT FP32, FP16 and INT8 plans into ARTIFACT_DIR through the CLI (`nanotrt build`);
# 3. benchmarks/gpu_check.py: every plan vs ONNX Runtime on the ONNX it was parsed from (batch 1/8/32 x
#    seq 1/16/128), the swap runtime under a 2-layer budget with prefetch on and off (bit-for-bit equal),
#    deserialize time per plan, per-graph latency, peak device memory vs the budget;
#    report in benchmarks/results/gpu_check.{json,md}.
# Exits non-zero on any failure. Needs the GLUE train split of CALIB_TASK (../shared/data/glue or
# $NANOTRT_GLUE_DIR) for INT8 calibration.
set -uo pipefail

ART=${1:?usage: gpu_check.sh ARTIFACT_DIR [CALIB_TASK]}
CALIB_TASK=${2:-cola}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/results}
fails=0

fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# --- 1. prerequisites ---------------------------------------------------------------------------------
if ! nvidia-smi -L; then
  echo "FAIL no NVIDIA GPU visible (nvidia-smi)"; exit 1
fi
prereqs() {
  "$PY" - <<'PYEOF'
import importlib, sys
from nanotrt.engines.tensorrt import require_builder
missing = []
for mod in ("cuda.bindings.runtime", "polygraphy", "onnx", "onnxruntime"):
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(mod)
if missing:
    print("missing:", ", ".join(missing)); sys.exit(1)
trt = require_builder()  # one clear line if TensorRT is absent or outside 10.1-11.x
print("TensorRT", trt.__version__, "OK")
PYEOF
}
if ! prereqs; then
  if [ "${INSTALL:-0}" = 1 ]; then
    "$PY" -m pip install -e "$HERE/..[tensorrt-build]" || { echo "FAIL pip install nanotrt[tensorrt-build]"; exit 1; }
    prereqs || { echo "FAIL prerequisites still missing after install"; exit 1; }
  else
    echo "FAIL prerequisites missing: rerun with INSTALL=1, or pip install -e '.[tensorrt-build]'"
    echo "     (on a Jetson: JetPack 6.1+ provides TensorRT; pip install cuda-python polygraphy onnx)"
    exit 1
  fi
fi

# --- 2. builds through the CLI ------------------------------------------------------------------------
"$PY" -m nanotrt build "$ART" --backend tensorrt || fail "nanotrt build --backend tensorrt (FP32)"
"$PY" -m nanotrt build "$ART" --backend tensorrt --fp16 || fail "nanotrt build --backend tensorrt --fp16"
"$PY" -m nanotrt build "$ART" --backend tensorrt --int8 --calib-task "$CALIB_TASK" \
  || fail "nanotrt build --backend tensorrt --int8 --calib-task $CALIB_TASK"
# The CLI end to end, streaming under a budget (the runner checks themselves are in gpu_check.py).
"$PY" -m nanotrt predict "$ART" "a quick check" --backend tensorrt --precision fp16 --memory-budget 2layers --stats \
  || fail "nanotrt predict --backend tensorrt"

# --- 3. plans vs ONNX Runtime, swap runtime, timings, memory ------------------------------------------
"$PY" "$HERE/gpu_check.py" "$ART" --out "$OUT" || fail "gpu_check.py (see the FAIL lines above and $OUT/gpu_check.md)"

echo "gpu_check: $fails failure(s)"
[ "$fails" -eq 0 ]
