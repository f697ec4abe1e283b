#!/bin/bash
# On the GPU host, once per host: install this project's extra wheels, declare the vLLM
# plugin, build the dummy model, and print what the host has. Safe to repeat.
# Usage: bash deploy/gpu/setup.sh [WHEEL_DIR=.gpu/whl]
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
whl=${1:-$REPO/.gpu/whl}
python3 -V
python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|pillow|pytest|pytest-timeout|numpy|prometheus.client|psutil|pyzmq|msgpack) ' || true
nvidia-smi -L || true
nproc; free -g | head -2; df -h /tmp | tail -1
if ls "$whl"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ocrdeps "$whl"/*.whl && echo "wheels installed into /tmp/ocrdeps"
fi
# vLLM loads `vllm.general_plugins` entry points in each of its processes; this one lets a
# spawned engine core apply a non-default DeepSeek-OCR resolution mode (see
# consumer/engines/deepseek_modes.py). An installed ocr-stream declares it itself
# (pyproject.toml, [project.entry-points."vllm.general_plugins"]); here the code runs from
# the checkout without an install, so a dist-info folder declares the same entry point
# (tests/unit/test_packaging.py checks that the two agree).
dist=/tmp/ocrdeps/ocr_stream_gpu_plugin-0.1.0.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: ocr-stream-gpu-plugin\nVersion: 0.1.0\n' >"$dist/METADATA"
# The second names the vision encoder and n-gram rule in torch traces, only with
# OCR_BENCH_SCOPES=1 (bench/gpu_scopes.py); the benchmarks run from this checkout.
printf '[vllm.general_plugins]\nocr_stream_resolution = consumer.engines.deepseek_modes:vllm_general_plugin\nocr_bench_scopes = bench.gpu_scopes:vllm_general_plugin\n' \
  >"$dist/entry_points.txt"
[ -f /tmp/ocr-model/config.json ] || python3 "$REPO/deploy/gpu/make_model.py" /tmp/ocr-model
ls -la /tmp/ocr-model
