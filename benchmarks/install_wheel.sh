#!/usr/bin/env bash
# Install mamba-ssm from WHEEL_DIR on a machine without a network: its install_mamba_ssm.sh when it has one,
# else the wheel in it, without dependencies.   bash benchmarks/install_wheel.sh WHEEL_DIR
set -euo pipefail
wheels="$1"
if [ -f "$wheels/install_mamba_ssm.sh" ]; then bash "$wheels/install_mamba_ssm.sh" "$wheels"
else python -m pip install --no-deps --no-index "$wheels"/mamba_ssm-*.whl; fi
