"""Java clients for the interop tests: compiled once, cached, run as plain processes.

The classpath is the Kafka jars deploy/local/stack.sh already fetched from Maven Central
(kafka-clients, its lz4, snappy and zstd codecs, Jackson) plus the CloudEvents Java SDK's
Kafka binding, fetched by Maven from tests/support/java/pom.xml. The programs in
tests/support/java/src are compiled with javac into a cache folder named by a hash of
their sources and the jar list, so a second run (and CI with a warm cache) compiles
nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "java"
SOURCES = sorted((HERE / "src").glob("*.java"))
CACHE = Path(os.environ.get("OCR_CACHE_DIR", Path.home() / ".cache" / "ocr-stream"))
KAFKA_VERSION = os.environ.get("OCR_KAFKA_VERSION", "4.1.1")
KAFKA_LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
MAVEN_TIMEOUT_S = 600
REPO = HERE.parents[2]
# The local stack's broker data (deploy/local/stack.sh).
KAFKA_DATA = Path(os.environ.get("OCR_RUN_DIR", REPO / ".run")) / "kafka-data"


class JavaUnavailable(RuntimeError):
    pass


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise JavaUnavailable(
            f"{' '.join(command[:3])} ... failed (exit {done.returncode}):\n"
            + (done.stdout + done.stderr)[-3000:]
        )


def _cloudevents_libs() -> Path:
    pom = HERE / "pom.xml"
    target = CACHE / f"interop-java-{hashlib.sha256(pom.read_bytes()).hexdigest()[:12]}"
    if (target / ".complete").exists():
        return target
    staging = target.with_name(target.name + f".partial.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    _run(["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
          "dependency:copy-dependencies", "-DincludeScope=runtime",
          f"-DoutputDirectory={staging}"], MAVEN_TIMEOUT_S)
    (staging / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # an interrupted fetch never looks complete
    return target


def classpath() -> str:
    """The classpath of the compiled programs; fetches and compiles on first use."""
    if shutil.which("javac") is None or not (KAFKA_LIBS / ".complete").exists():
        raise JavaUnavailable(
            f"needs javac and the Kafka jars in {KAFKA_LIBS} (`make test-deps` installs both)"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".interop-java.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions share the cache
        ce_libs = _cloudevents_libs()
        libs = f"{KAFKA_LIBS}/*:{ce_libs}/*"
        digest = hashlib.sha256(libs.encode())
        for source in SOURCES:
            digest.update(source.read_bytes())
        classes = CACHE / f"interop-java-classes-{digest.hexdigest()[:12]}"
        if not (classes / ".complete").exists():
            staging = classes.with_name(classes.name + f".partial.{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            _run(["javac", "-d", str(staging), "-cp", libs, *map(str, SOURCES)], 300)
            (staging / ".complete").touch()
            shutil.rmtree(classes, ignore_errors=True)
            staging.rename(classes)
    return f"{classes}:{libs}"


def java_command(
    classpath_: str, main: str, *args: str, jvm_args: Sequence[str] = ()
) -> list[str]:
    """The command line running `main`; `jvm_args` are JVM options (-D...)."""
    return ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", *jvm_args, "-cp", classpath_, main,
            *args]


def java(classpath_: str, main: str, *args: str, stdin: str = "",
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        java_command(classpath_, main, *args),
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"java {main} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return done


def batch_codecs(classpath_: str, topic: str) -> Counter[str]:
    """The codec of every record batch of `topic`, as the broker stored it (Kafka's own
    log dump tool on the local stack's log segments)."""
    files = sorted(str(f) for f in KAFKA_DATA.glob(f"{topic}-*/*.log"))
    if not files:
        pytest.skip(f"no log segments of {topic} under {KAFKA_DATA} (not the local stack?)")
    done = java(classpath_, "kafka.tools.DumpLogSegments", "--files", ",".join(files))
    return Counter(c.lower() for c in re.findall(r"compresscodec: (\w+)", done.stdout))
