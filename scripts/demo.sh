#!/usr/bin/env bash
# The README's first command: install qcompiler and compile + run a quantized model.
set -euo pipefail
cd "$(dirname "$0")/.."
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-$(nproc)}"
python3 -m pip install -q -e ".[torch]" "torch==2.13.0"
python3 examples/quickstart.py "$@"
