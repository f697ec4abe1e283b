"""A real S3 server for tests: Versity's S3 gateway over a temporary directory, on loopback.

`deploy/local/stack.sh s3-bin` builds the binary once per cache (see `stack.sh deps`); each
server is started on a free 127.0.0.1 port and stopped by its PID.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.documents import s3fetch

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "ocr-stream-test"
SECRET_KEY = "ocr-stream-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    root: Path  # buckets are its directories

    def client(self, *, secret: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )


def server_binary() -> Path:
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "stack.sh"), "s3-bin"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"stack.sh s3-bin failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def s3_server(root: Path, log: Path) -> Iterator[S3Server]:
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(server_binary()), "--port", f"127.0.0.1:{port}", "--access", ACCESS_KEY,
             "--secret", SECRET_KEY, "--region", REGION, "posix", str(root)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the S3 server exited at start:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the S3 server did not listen within 30 s") from None
                time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}", root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def server_credentials(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """The test server's credentials and nothing of the machine's AWS set-up (profiles,
    config files, instance metadata, endpoint overrides). Clients keep the credentials
    they were made with: each test starts with none cached."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fetch.forget_clients()
    try:
        yield
    finally:
        s3fetch.forget_clients()
