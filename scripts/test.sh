#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command).
set -uo pipefail
cd "$(dirname "$0")/.."
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-2}"
python3 -m pip install -q -e ".[test,torch,pt2e,onnx]" "torch==2.13.0" "torchao==0.18.0" || exit 1
python3 -m pytest -q -n 2 --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
