"""Consumer processes: the real `ocr-consumer` console script, one process per member.

Each runs in its own session (process group), so a Ctrl-C on the suite's terminal does not
reach it: the suite decides when consumers stop. Every signal goes to a PID this module
started; the render workers a consumer spawned are found by their process group and
command line and are also signalled by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.chaos.stack import REPO

CONSUMER_BIN = Path(sys.executable).parent / "ocr-consumer"
RENDER_WORKER_MARKER = "consumer.documents.renderproc"


def _group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are render workers (our consumer's children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Field 5 of /proc/PID/stat is the process group; the name field before it may
        # contain spaces, so count from the closing parenthesis.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and RENDER_WORKER_MARKER in cmdline:
            members.append(int(entry.name))
    return members


def parse_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events in `path` (other lines, e.g. tracebacks, are skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


class ConsumerProcess:
    def __init__(self, consumer_id: str, env: dict[str, str], log_path: Path) -> None:
        self.consumer_id = consumer_id
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.stopped_by_us = False  # set before any signal: an exit we caused is no crash
        self.static = False  # runs with OCR_GROUP_INSTANCE_ID (static group membership)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def start(self) -> None:
        if not CONSUMER_BIN.exists():
            raise RuntimeError(f"{CONSUMER_BIN} not found: install the project in this venv")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CONSUMER_BIN), env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL: no drain, no lease release, no commit."""
        self.stopped_by_us = True
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)

    def terminate(self) -> None:
        self.stopped_by_us = True
        if self.alive:
            os.kill(self.pid, signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the process exited, or None if it is still running after timeout."""
        assert self.process is not None
        start = time.monotonic()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return None
        return time.monotonic() - start

    async def stop(self, grace: float) -> float | None:
        """SIGTERM, then SIGKILL after `grace`; returns the SIGTERM-to-exit time if it
        exited by itself."""
        if not self.alive:
            self.reap_children()
            return 0.0
        self.terminate()
        took = await self.wait_exit(grace)
        if took is None:
            self.kill()
            await self.wait_exit(10.0)
        self.reap_children()
        return took

    def reap_children(self) -> int:
        """SIGKILL render workers left behind by a dead consumer; returns how many.

        They exit by themselves when their socket to the consumer closes, but one busy in a
        render notices only when that render ends; the suite must leave nothing behind.
        """
        if self.process is None or self.alive:
            return 0
        count = 0
        for pid in _group_members(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                count += 1
        return count

    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.log_path)

    def has_logged(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

    async def wait_logged(self, event: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.has_logged(event):
                return True
            if not self.alive:
                return False
            await asyncio.sleep(0.25)
        return False

    def tail(self, lines: int = 40) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []
