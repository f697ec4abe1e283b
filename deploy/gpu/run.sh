#!/bin/bash
# On the GPU host: assemble vLLM once, then run the engine benchmark and/or tests/gpu.
# Usage: bash deploy/gpu/run.sh bench|tests|all [ocr-bench arguments...]
# Expects the wheel parts in /tmp/acc (earlier commands copy one part each there, see
# deploy/gpu/README.md) and writes logs and the result JSON under $OUT.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
what=${1:-all}
shift || true
OUT=${OUT:-/tmp/ocr-out}
mkdir -p "$OUT"
began=$(date +%s)
if [ ! -d /tmp/site/vllm ]; then
  bash deploy/gpu/assemble.sh /tmp/acc /tmp/site >/dev/null || exit 1
  echo "vLLM tree assembled in $(($(date +%s) - began)) s"
fi
[ -d /tmp/ocrdeps ] && [ -f /tmp/ocr-model/config.json ] || bash deploy/gpu/setup.sh
# shellcheck source=deploy/gpu/env.sh
source deploy/gpu/env.sh
python3 -c "import vllm, consumer.engines.vllm; print('vllm', vllm.__version__)" || exit 1
rc=0
if [[ $what == bench || $what == all ]]; then
  python3 -m producer_tools.bench engine --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
  rc=$?
  echo "bench exit $rc after $(($(date +%s) - began)) s"
fi
if [[ $what == tests || $what == all ]]; then
  # Engine starts count against a test's time limit: allow a cold start.
  python3 -m pytest -q -s -p no:cacheprovider -o timeout=900 tests/gpu 2>&1 \
    | tee "$OUT/gpu-tests.log"
  test_rc=$?
  echo "tests exit $test_rc after $(($(date +%s) - began)) s"
  [ $rc -eq 0 ] && rc=$test_rc
fi
exit $rc
