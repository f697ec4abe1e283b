# Source on the GPU host (bash): the environment every GPU step below runs in.
# Paths: /tmp/site = the vLLM 0.26 tree from assemble.sh, /tmp/ocrdeps = this project's
# extra wheels (.gpu/whl) plus the vLLM plugin entry point, the repository for `consumer`.
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export PYTHONPATH="$REPO:/tmp/ocrdeps:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The no-repeat n-gram logits processor is a V1 processor (the engine sets this too).
export VLLM_USE_V2_MODEL_RUNNER=0
# Nothing outside the host can be reached: never try the Hub or usage reporting.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# One engine configuration for the benchmark and tests/gpu, so the second engine start
# reuses the kernels the first one compiled (vLLM caches them by configuration).
export OCR_ENGINE=vllm OCR_MODEL=/tmp/ocr-model OCR_GPU_MODEL=/tmp/ocr-model
export OCR_LOAD_FORMAT=dummy OCR_MAX_NUM_SEQS=${OCR_MAX_NUM_SEQS:-256}
export OCR_MAX_NUM_BATCHED_TOKENS=${OCR_MAX_NUM_BATCHED_TOKENS:-16384}
export OCR_GPU_MEMORY_UTILIZATION=${OCR_GPU_MEMORY_UTILIZATION:-0.85}
export OCR_MAX_MODEL_LEN=8192 OCR_PREPROCESS_WORKERS=${OCR_PREPROCESS_WORKERS:-8}
export OCR_LOG_FORMAT=console
# Let a stuck engine core print its threads' stacks on SIGUSR1 (the benchmark sends it
# when a first page does not finish; see consumer/engines/deepseek_modes.py).
export OCR_VLLM_STACKS_ON_SIGUSR1=1
