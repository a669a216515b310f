#!/usr/bin/env bash
# TensorRT check for a machine with an NVIDIA GPU: x86-64 with a CUDA 12 (r535+) or CUDA 13 (580.65+) driver,
# or a Jetson Orin on JetPack 6.1/6.2 (CUDA 12.6, TensorRT 10.3 from JetPack).
#
#   benchmarks/gpu_check.sh ARTIFACT_DIR [CALIB_TASK]      (CALIB_TASK: GLUE task for INT8, default cola)
#   INSTALL=1 benchmarks/gpu_check.sh ...                  (pip-installs the missing Python prerequisites first)
#   MIN_FREE_MB=4096 PYTHON=.venv/bin/python OUT=dir ...   (defaults: 2048, python3, benchmarks/results)
#
# 0. prerequisites, all checked before any work, each missing one named with its fix: a visible GPU and
#    its driver's CUDA major (which picks the extra: tensorrt-cu12, tensorrt-cu13, or jetson), the export
#    extra (`nanotrt build`), TensorRT 10.1-11.x with a builder and Polygraphy >= 0.50.3 (nanotrt's own
#    gates), cuda-python of the driver's CUDA major, free GPU memory, the artifact, the GLUE train split of
#    CALIB_TASK (../shared/data/glue or $NANOTRT_GLUE_DIR);
# 1. builds TensorRT FP32, FP16 and INT8 plans into ARTIFACT_DIR through the CLI (`nanotrt build`), and
#    predicts through the CLI under a 2-layer budget;
# 2. benchmarks/gpu_check.py: every plan vs ONNX Runtime on the ONNX it was parsed from (batch 1/8/32 x
#    seq 1/16/128), the swap runtime under a 2-layer budget with prefetch on and off (bit-for-bit equal),
#    deserialize time per plan, per-graph latency, peak device memory vs the budget;
#    report in $OUT/gpu_check.{json,md}.
# Exits non-zero on any failure.
set -uo pipefail

ART=${1:?usage: gpu_check.sh ARTIFACT_DIR [CALIB_TASK]}
CALIB_TASK=${2:-cola}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/results}
MIN_FREE_MB=${MIN_FREE_MB:-2048}
fails=0

fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# --- 0. prerequisites ---------------------------------------------------------------------------------
if [ -f /etc/nv_tegra_release ]; then
  # JetPack's TensorRT is a system package: a venv needs --system-site-packages to see it.
  EXTRA=jetson
  echo "Jetson: $(head -1 /etc/nv_tegra_release)"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L; then
  CUDA=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -1)
  echo "driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1), CUDA ${CUDA:-?}"
  case "${CUDA:-}" in
    12) EXTRA=tensorrt-cu12 ;;
    13) EXTRA=tensorrt-cu13 ;;
    *) echo "FAIL the driver supports CUDA ${CUDA:-?}: nanotrt's TensorRT path needs a CUDA 12 (r535+) or 13 (580.65+) driver"; exit 1 ;;
  esac
else
  echo "FAIL no NVIDIA GPU visible (nvidia-smi -L, /etc/nv_tegra_release)"; exit 1
fi
SPEC="$ROOT[tensorrt-build,$EXTRA]"

prereqs() {
  "$PY" -c "import nanotrt" 2>/dev/null || { echo "MISSING nanotrt itself: pip install -e '$SPEC'"; return 1; }
  "$PY" "$HERE/gpu_check.py" "$ART" --prereqs --calib-task "$CALIB_TASK" --min-free-mb "$MIN_FREE_MB"
}
if ! prereqs; then
  if [ "${INSTALL:-0}" = 1 ]; then
    "$PY" -m pip install -e "$SPEC" || { echo "FAIL pip install -e '$SPEC'"; exit 1; }
    prereqs || { echo "FAIL prerequisites still missing after the install (above)"; exit 1; }
  else
    echo "FAIL prerequisites missing (above): pip install -e '$SPEC' (or rerun with INSTALL=1), then fix the rest"
    exit 1
  fi
fi

# --- 1. builds and a prediction through the CLI -------------------------------------------------------
"$PY" -m nanotrt build "$ART" --backend tensorrt || fail "nanotrt build --backend tensorrt (FP32)"
"$PY" -m nanotrt build "$ART" --backend tensorrt --fp16 || fail "nanotrt build --backend tensorrt --fp16"
"$PY" -m nanotrt build "$ART" --backend tensorrt --int8 --calib-task "$CALIB_TASK" \
  || fail "nanotrt build --backend tensorrt --int8 --calib-task $CALIB_TASK"
"$PY" -m nanotrt predict "$ART" "a quick check" --backend tensorrt --precision fp16 --memory-budget 2layers --stats \
  || fail "nanotrt predict --backend tensorrt"

# --- 2. plans vs ONNX Runtime, swap runtime, timings, memory ------------------------------------------
"$PY" "$HERE/gpu_check.py" "$ART" --out "$OUT" || fail "gpu_check.py (see the FAIL lines above and $OUT/gpu_check.md)"

echo "gpu_check: $fails failure(s)"
[ "$fails" -eq 0 ]
