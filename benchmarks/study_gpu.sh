#!/usr/bin/env bash
# The study's GPU mode on one bare CUDA machine (no network needed), as one prepared script:
#   bash benchmarks/study_gpu.sh [WHEEL_DIR] [OUT]
# trains every design of ablations/study.toml's [gpu] mode (4 processes on the GPU, each with 2 data workers
# on the CPU cores), then writes the report to OUT/study (default: assets/study/gpu) and the 8-bit models
# of its ship task to OUT/models. Runs already in OUT/cache are reused, so a second call resumes.
# WHEEL_DIR holds a prebuilt mamba-ssm wheel and its install_mamba_ssm.sh (else mamba-ssm must be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ] && [ -d "$1" ]; then bash benchmarks/install_wheel.sh "$1"; shift; fi
out="${1:-assets/study/gpu}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
python -m ablations study --mode gpu --device cuda --jobs "${STUDY_JOBS:-4}" --no-bar \
  --cache "${STUDY_CACHE:-$out/cache}" --out "$out/study" --ship "$out/models"
echo "study gpu mode: $(( $(date +%s) - start )) s"
