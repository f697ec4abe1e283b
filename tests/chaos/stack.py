"""The suite's own Kafka + Redis, driven through deploy/local/stack.sh.

Everything goes through the stack script with this suite's OCR_RUN_DIR and ports, so the
PID files it reads and the processes it signals are only ever the ones this suite started:
a developer's `make up` stack (.run/, :9092, :6379) is never looked at.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
# Broker start-up waits up to OCR_KAFKA_START_TIMEOUT (120 s) itself; this is the outer cap.
STACK_COMMAND_TIMEOUT_S = 300.0
# Variables that describe where the Kafka jars come from rather than which stack to use:
# a developer's choice there is respected, every other OCR_* variable is replaced.
_PASS_THROUGH = ("OCR_CACHE_DIR", "OCR_KAFKA_VERSION", "OCR_KAFKA_JAVA_OPTS",
                 "OCR_KAFKA_START_TIMEOUT")


class StackError(RuntimeError):
    pass


def clean_environment() -> dict[str, str]:
    """os.environ without OCR_* settings, so a developer's shell (OCR_KAFKA_BOOTSTRAP
    pointing at their own stack, say) cannot leak into the suite's stack or consumers."""
    return {
        key: value for key, value in os.environ.items()
        if not key.startswith("OCR_") or key in _PASS_THROUGH
    }


@dataclass
class ChaosStack:
    run_dir: Path
    kafka_port: int
    redis_port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        env = clean_environment()
        env.update(
            OCR_RUN_DIR=str(self.run_dir),
            OCR_KAFKA_BOOTSTRAP=self.bootstrap,
            OCR_KAFKA_CONTROLLER_PORT=str(self.kafka_port + 1),
            OCR_REDIS_URL=self.redis_url,
            OCR_STACK_CONSUMER="0",
            # stack.sh runs `python -m producer_tools.topics` with this; it must see our package.
            OCR_PYTHON=sys.executable,
        )
        return env

    def _append_log(self, command: str, output: str, seconds: float, rc: int) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"==== stack.sh {command} (rc {rc}, {seconds:.1f} s)\n{output}")

    async def call(self, command: str) -> float:
        """Run `stack.sh COMMAND` for this stack; returns its duration in seconds."""
        start = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            "bash", str(STACK_SCRIPT), command, env=self.env(), cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), STACK_COMMAND_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            # Only the script itself: the daemons it started are stopped by `down`.
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        seconds = time.monotonic() - start
        text = out.decode(errors="replace")
        rc = process.returncode if process.returncode is not None else -1
        self._append_log(command, text, seconds, rc)
        if rc != 0:
            raise StackError(f"stack.sh {command} failed (exit {rc}):\n{text[-3000:]}")
        return seconds

    def call_sync(self, command: str) -> int:
        """Blocking variant for the last-resort cleanup, when no event loop runs any more."""
        done = subprocess.run(
            ["bash", str(STACK_SCRIPT), command], env=self.env(), cwd=REPO,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=STACK_COMMAND_TIMEOUT_S, check=False,
        )
        self._append_log(command, done.stdout + done.stderr, 0.0, done.returncode)
        return done.returncode

    async def fresh_up(self) -> float:
        """A stack with empty Kafka and Redis data: down (a leftover of an aborted run),
        delete only this run directory's data and daemon logs, up."""
        start = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self.call("down")
        for name in ("kafka-data", "redis-data"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        for name in ("kafka-cluster-id", "kafka-server.properties", "kafka.log", "redis.log"):
            (self.run_dir / name).unlink(missing_ok=True)
        await self.call("up")
        return time.monotonic() - start
