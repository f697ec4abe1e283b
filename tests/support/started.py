"""Waiting for a server the tests started to serve: until `ready()`, the process's exit, or
a deadline, whichever comes first; the last two raise with the tail of its log."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.3


def wait_until_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], *, what: str, waiting_for: str,
    timeout_s: float, log: Path, tail_chars: int, error: type[Exception],
) -> float:
    """Returns the deadline (time.monotonic()), for the checks that follow to share it."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise error(
                f"{what} exited ({process.returncode}) during start-up:\n"
                + log.read_text(errors="replace")[-tail_chars:]
            )
        if time.monotonic() > deadline:
            raise error(
                f"{what} did not {waiting_for} within {timeout_s:.0f}s:\n"
                + log.read_text(errors="replace")[-tail_chars:]
            )
        time.sleep(POLL_S)
    return deadline
