#!/usr/bin/env bash
# GPU check and throughput on a bare CUDA machine (no network needed).
#   bash benchmarks/gpu.sh [WHEEL_DIR] [extra args for python -m evmamba.bench_gpu]
# 1. the kernel against the torch backend and throughput per variant (python -m evmamba.bench_gpu);
# 2. analyses, the browser demo and the trainer on the GPU against the CPU (benchmarks/gpu_smoke.py).
# WHEEL_DIR holds a prebuilt mamba-ssm wheel (and its install_mamba_ssm.sh); without it, mamba-ssm must
# already be installed (pip install -r requirements-gpu.txt).
# GPU_BUDGET (seconds, default 420) bounds the throughput rows; GPU_SMOKE=0 skips step 2 (run it on its
# own with `python benchmarks/gpu_smoke.py --device cuda`); GPU_RESULTS names the results file.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ] && [ -d "$1" ]; then bash benchmarks/install_wheel.sh "$1"; shift; fi
# the checkout itself on the path (no install step: a machine without a network would stall in pip's retries)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
# eager and compiled rows; rows not started within GPU_BUDGET seconds are listed as not timed
python -m evmamba.bench_gpu --out "${GPU_RESULTS:-gpu_results.json}" --budget "${GPU_BUDGET:-420}" "$@" || status=$?
if [ "${GPU_SMOKE:-1}" != 0 ]; then python benchmarks/gpu_smoke.py --device cuda || status=$?; fi
exit $status
