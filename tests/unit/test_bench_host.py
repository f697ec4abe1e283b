"""`ocr-bench engine` must run where only vLLM is installed: the GPU host carries no Kafka or
Redis client for the engine benchmark (deploy/gpu/run.sh bench runs
`python3 -m bench.ocr_bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# `sys.modules[name] = None` makes every later `import name` raise ImportError.
BLOCK_CLIENTS = (
    "import sys, runpy; "
    "sys.modules.update(aiokafka=None, redis=None); "
    "sys.argv = ['ocr_bench', 'engine', '--help']; "
    "runpy.run_module('bench.ocr_bench', run_name='__main__', alter_sys=True)"
)


def test_engine_benchmark_needs_no_kafka_or_redis_client() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_CLIENTS], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--max-tokens" in done.stdout


def test_the_client_blocker_works() -> None:
    # The test above proves something only if a blocked import really fails.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['aiokafka'] = None; import aiokafka"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "ImportError" in done.stderr or "ModuleNotFoundError" in done.stderr
