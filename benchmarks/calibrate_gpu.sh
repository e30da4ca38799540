#!/usr/bin/env bash
# The long-range ladder's GPU rungs on one bare CUDA machine (no network needed), as one prepared script:
#   bash benchmarks/calibrate_gpu.sh [WHEEL_DIR] [OUT] [RUNG ...]
# trains ES2D and the scan-free control on the rungs of ablations/study/study.toml's [calibration-gpu] (all,
# or those named; CALIBRATE_JOBS processes on the GPU, default 4) and writes the table to OUT (default:
# assets/study/calibration-gpu) after every rung. Runs already in OUT/cache are reused, so a second call
# resumes. WHEEL_DIR holds a prebuilt mamba-ssm wheel and its install_mamba_ssm.sh (else mamba-ssm must be
# installed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ] && [ -d "$1" ]; then bash benchmarks/install_wheel.sh "$1"; shift; fi
out="${1:-assets/study/calibration-gpu}"
[ $# -ge 1 ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EVMAMBA_IMAGE_CACHE="${EVMAMBA_IMAGE_CACHE:-$out/images}"
start=$(date +%s)
python -m ablations calibrate --ladder gpu --device cuda --jobs "${CALIBRATE_JOBS:-4}" --no-bar \
  --cache "${CALIBRATE_CACHE:-$out/cache}" --out "$out" ${1:+--rungs "$@"}
echo "calibration, gpu ladder: $(( $(date +%s) - start )) s"
