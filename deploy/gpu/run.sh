#!/bin/bash
# On the GPU host: assemble vLLM once, then run the engine benchmark and/or tests/gpu.
# Usage: bash deploy/gpu/run.sh bench|steady|decoding|passes|pipeline|scaleout|tune-moe|tests|all [args...]
#   bench     ocr-bench engine (pages straight into the engine)
#   steady    bench/steady.py [its arguments]: closed-loop steady state, the engine at each
#             length and (--pipeline-lengths) the pipeline; py-spy of both processes when
#             /tmp/pyspy/py-spy exists; with --torch-profile a torch trace of the engine
#             core, its kernels filed by stage (bench/gpu_trace.py). Result, log, profiles
#             to $OUT
#   decoding  ocr-bench decoding --with-pipeline: the engine run once per decoding pass
#             (n-gram rule per-request/batched/off, detokenization incremental/final) on
#             one engine, then the pipeline; py-spy profiles when /tmp/pyspy/py-spy exists
#   passes    the same passes without the pipeline (no broker started): engine settings
#             compared call by call, e.g. OCR_VISION_CUDAGRAPHS, on one warm host
#   scaleout  bench/scaleout.py [its arguments]: consumer processes in one group, one
#             alone, then all, then one SIGKILLed (writes $OUT/scaleout.json)
#   pipeline  ocr-bench all: the engine run, then the same pages as documents through
#             Kafka (Tansu) -> consumer -> result topics with the same started engine
#   all       pipeline, then tests/gpu
#   tune-moe  bench/tune_moe.py [its arguments]: fused-MoE tables for DeepSeek-OCR's shapes
#             on this GPU (no engine started), written to $OUT/moe
# Expects the wheel parts in /tmp/acc and the pipeline bundle in /tmp/pipe (earlier
# commands copy them there, see deploy/gpu/README.md); logs and the result JSON go to $OUT.
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
if [[ $what == tune-moe ]]; then
  python3 -m bench.tune_moe --out "$OUT" "$@" 2>&1 | tee "$OUT/tune-moe.log"
  rc=${PIPESTATUS[0]}
  echo "tune-moe exit $rc after $(($(date +%s) - began)) s"
  exit "$rc"
fi
command=engine
[[ $what == passes ]] && command=decoding
if [[ $what == pipeline || $what == all || $what == scaleout || $what == decoding || $what == steady ]]; then
  command=all
  [[ $what == decoding ]] && command=decoding
  bash deploy/gpu/services.sh start || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/ocrpipe"
  export OCR_KAFKA_BOOTSTRAP=127.0.0.1:9092 OCR_REDIS_URL=redis://127.0.0.1:6379/0
  # Tansu's memory build has no InitProducerId (see services.sh).
  export OCR_KAFKA_IDEMPOTENCE=false
  export OCR_RENDER_WORKERS=${OCR_RENDER_WORKERS:-8}
fi
if [[ $what == scaleout ]]; then
  # A killed member's partitions move after the session timeout: 10 s, not 30 s, here.
  export OCR_SESSION_TIMEOUT_MS=${OCR_SESSION_TIMEOUT_MS:-10000}
  # Two engines sharing a GPU take longer a page than the consumer's 120 s default allows
  # for a page queued behind a full batch; the benchmark measures throughput, not limits.
  export OCR_PAGE_TIMEOUT_S=${OCR_PAGE_TIMEOUT_S:-600}
  # A fixed output length, as ocr-bench decodes: dummy weights rarely emit EOS, so without
  # it every page runs to the 4,096-token default (the 2026-12-03 warm-up run did).
  export OCR_MAX_TOKENS=${OCR_MAX_TOKENS:-1000} OCR_IGNORE_EOS=${OCR_IGNORE_EOS:-true}
  python3 bench/scaleout.py --out "$OUT/scaleout.json" "$@" 2>&1 | tee "$OUT/scaleout.log"
  rc=$?
  echo "scaleout exit $rc after $(($(date +%s) - began)) s"
  bash deploy/gpu/services.sh stop
  exit $rc
fi
if [[ $what == steady ]]; then
  extra=(--profile-dir "$OUT/profiles")
  [ -x /tmp/pyspy/py-spy ] && extra+=(--pyspy /tmp/pyspy/py-spy)
  if [[ " $* " == *" --torch-profile "* ]]; then
    # Names for the vision encoder and the n-gram rule in the trace (bench/gpu_scopes.py):
    # the plugin installs them in a spawned engine core (a forked one would inherit a
    # parent that loaded plugins before the scopes could be installed).
    export OCR_BENCH_SCOPES=1 VLLM_WORKER_MULTIPROC_METHOD=spawn
  fi
  python3 bench/steady.py --out-dir "$OUT" "${extra[@]}" "$@" 2>&1 | tee "$OUT/steady.log"
  rc=$?
  echo "steady exit $rc after $(($(date +%s) - began)) s"
  bash deploy/gpu/services.sh stop
  exit $rc
fi
if [[ $what != tests ]]; then
  extra=()
  if [[ $command == decoding ]]; then
    extra=(--profile-dir "$OUT/profiles")
    [[ $what == decoding ]] && extra+=(--with-pipeline)
    [ -x /tmp/pyspy/py-spy ] && extra+=(--pyspy /tmp/pyspy/py-spy)
  fi
  # Needs no aiokafka: `bench` carries none (tests/unit/test_bench_host.py keeps it so).
  python3 -m bench.ocr_bench $command --out-dir "$OUT" \
    --variant-file /tmp/ocr-vllm-variant "${extra[@]}" "$@" 2>&1 | tee "$OUT/bench.log"
  rc=$?
  echo "bench ($command) exit $rc after $(($(date +%s) - began)) s"
  [[ $command != engine && $what != passes ]] && bash deploy/gpu/services.sh stop
fi
if [[ $what == tests || $what == all ]]; then
  # The engine variant the benchmark found working (see bench/ocr_bench.py).
  OCR_TEST_VLLM_VARIANT=$(cat /tmp/ocr-vllm-variant 2>/dev/null || true)
  export OCR_TEST_VLLM_VARIANT
  echo "tests use vLLM variant '${OCR_TEST_VLLM_VARIANT:-default}'"
  # Engine starts count against a test's time limit: allow a cold start.
  python3 -m pytest -q -s -p no:cacheprovider -o timeout=420 tests/gpu 2>&1 \
    | tee "$OUT/gpu-tests.log"
  test_rc=$?
  echo "tests exit $test_rc after $(($(date +%s) - began)) s"
  [ $rc -eq 0 ] && rc=$test_rc
fi
exit $rc
