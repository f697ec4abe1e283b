"""A redis-server of the test's own, stopped and restarted by its PID.

Outage tests kill Redis: they must not do it to the stack's Redis, which other tests of the
session share. This one listens on a free loopback port and lives in a temporary folder.
`persistent` keeps its data across a SIGKILL (an append-only file synced on every write),
as a restarted production Redis would; without it a restart comes back empty (a Redis that
lost its data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", str(self.directory / "redis.log"),
        ]
        if self.persistent:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        return command

    async def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.to_thread(
            subprocess.Popen, self._command(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(self._answers):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.directory / 'redis.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 20 s")
            await asyncio.sleep(0.05)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    async def kill(self) -> None:
        """SIGKILL by PID: no shutdown save, clients see their connections reset."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait, 10)

    def command(self, *args: str) -> object:
        """One command on a fresh connection (REPLICAOF for a failover, say)."""
        client = redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()


@asynccontextmanager
async def own_redis(directory: Path, *, persistent: bool = True) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory, persistent=persistent)
    await server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            await server.kill()
