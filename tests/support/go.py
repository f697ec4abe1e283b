"""The Go interop clients (tests/support/go): built once, cached, run as a plain process.

One program, `gointerop`, publishes requests and reads progress with franz-go,
segmentio/kafka-go and IBM/sarama at the versions its go.mod pins. `make test-deps`
downloads those modules from the Go module proxy; the first build compiles them (30 s on
the 2-CPU VM with an empty Go build cache) into a cache folder named by a hash of
the sources, go.mod, go.sum and the Go version, so a second run builds nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / "go"
CACHE = Path(os.environ.get("OCR_CACHE_DIR", Path.home() / ".cache" / "ocr-stream"))
BUILD_TIMEOUT_S = 600


class GoUnavailable(RuntimeError):
    pass


def _inputs() -> list[Path]:
    return sorted([*HERE.glob("*.go"), HERE / "go.mod", HERE / "go.sum"])


def _go_version(go: str) -> str:
    done = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise GoUnavailable(f"`go version` failed: {(done.stdout + done.stderr)[-1000:]}")
    return done.stdout.strip()


def binary() -> Path:
    """The path of the built `gointerop`; builds it on first use."""
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable(
            "needs the Go toolchain (go 1.26 or newer) on PATH to build tests/support/go; "
            "install it, then `make test-deps` downloads the modules"
        )
    digest = hashlib.sha256(_go_version(go).encode())
    for source in _inputs():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    target = CACHE / f"interop-go-{digest.hexdigest()[:12]}"
    program = target / "gointerop"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".interop-go.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions share the cache
        if (target / ".complete").exists():
            return program
        staging = target.with_name(target.name + f".partial.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # -mod=readonly: go.sum is the pin; a build never edits the module files.
        done = subprocess.run(
            [go, "build", "-mod=readonly", "-buildvcs=false", "-trimpath",
             "-o", str(staging / "gointerop"), "."],
            cwd=HERE, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise GoUnavailable(
                f"go build in {HERE} failed (exit {done.returncode}):\n"
                + (done.stdout + done.stderr)[-3000:]
            )
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # an interrupted build never looks complete
    return program


def run(program: Path, *args: str, stdin: str = "",
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(program), *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"gointerop {args[0] if args else ''} exited {done.returncode}:\n"
            + (done.stdout + done.stderr)[-4000:]
        )
    return done
