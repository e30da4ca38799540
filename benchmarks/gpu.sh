#!/usr/bin/env bash
# GPU check and throughput on a bare CUDA machine (no network needed).
#   bash benchmarks/gpu.sh [WHEEL_DIR] [extra args for python -m evmamba.bench_gpu]
# WHEEL_DIR holds a prebuilt mamba-ssm wheel (and its install_mamba_ssm.sh); without it, mamba-ssm must
# already be installed (pip install -r requirements-gpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ] && [ -d "$1" ]; then
  wheels="$1"; shift
  if [ -f "$wheels/install_mamba_ssm.sh" ]; then bash "$wheels/install_mamba_ssm.sh" "$wheels"
  else python -m pip install --no-deps --no-index "$wheels"/mamba_ssm-*.whl; fi
fi
python -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m evmamba.bench_gpu --out "${GPU_RESULTS:-gpu_results.json}" "$@"
