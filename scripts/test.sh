#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command).
set -uo pipefail
cd "$(dirname "$0")/.."
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-2}"
python3 -m pip install -q -e ".[test,torch,pt2e,onnx]" "torch==2.13.0" "torchao==0.18.0" || exit 1
# C++ runner + aarch64 cross tests (tests/runtime/test_cpp_runner.py, test_aarch64.py): install
# their tools with apt when we can; otherwise those tests skip, naming the missing tool.
need=()
for t in cmake:cmake g++:g++ aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64:qemu-user; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: apt-get install ${need[*]}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${need[@]}"; } >/dev/null \
    || echo "test.sh: apt-get install failed; the C++ runner tests will skip" >&2
fi
python3 -m pytest -q -n 2 --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
