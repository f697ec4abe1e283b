"""Keycloak, a real OAuth 2 identity provider, for the Kafka OAUTHBEARER tests.

The server distribution comes from Maven Central (`deploy/local/stack.sh keycloak-home`,
cached) and runs on a Java 21+ (`stack.sh keycloak-java-home`); Kafka and the Java clients
stay on the default java. Each start gets a home of its own in a test folder: copies of the
small folders (bin, conf, lib/quarkus, ...) and a link to the jars, so the realm import,
the H2 database and the build Keycloak re-runs for dev mode never write into the shared
cache. That build (about 11 s here) is saved once per cache and copied into later homes.

The realm (keycloak-realm.json, imported at start) has confidential clients with the
client-credentials grant and 60 s access tokens, so refreshes happen within a test:

- `ocr-consumer`: the broker audience only with the optional scope `kafka`;
- `ocr-interop-client`: the Java producers and librdkafka readers, audience by default;
- `ocr-no-audience`: tokens the broker must refuse.

Every port it opens is on 127.0.0.1 (checked at start: dev mode opens one more than HTTP).
It runs in a process group of its own (kc.sh starts the JVM as its child) and is stopped
by that group's id, which is the PID we started.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.started import wait_until_ready
from tests.support.tls import TlsFiles

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
REALM_FILE = HERE / "keycloak-realm.json"
REALM = "ocr"
# What the broker checks in every token (sasl.oauthbearer.expected.audience).
AUDIENCE = "kafka-broker"
# The optional client scope that adds AUDIENCE to ocr-consumer's tokens.
KAFKA_SCOPE = "kafka"
START_TIMEOUT_S = 180.0  # a cold first start builds for dev mode (tens of seconds here)
STOP_TIMEOUT_S = 30.0


class KeycloakUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class OAuthClient:
    client_id: str
    secret: str


def _realm_clients() -> dict[str, OAuthClient]:
    realm = json.loads(REALM_FILE.read_text())
    return {c["clientId"]: OAuthClient(c["clientId"], c["secret"]) for c in realm["clients"]}


@dataclass(frozen=True)
class Keycloak:
    http_url: str  # http://127.0.0.1:PORT
    https_url: str  # https://127.0.0.1:PORT, with the test CA's server certificate
    pid: int
    log: Path

    @property
    def issuer(self) -> str:
        """The `iss` of every token, whichever URL it was fetched from (--hostname)."""
        return f"{self.http_url}/realms/{REALM}"

    def token_url(self, *, https: bool = False) -> str:
        base = self.https_url if https else self.http_url
        return f"{base}/realms/{REALM}/protocol/openid-connect/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.http_url}/realms/{REALM}/protocol/openid-connect/certs"

    @property
    def allowed_urls(self) -> str:
        """For Kafka 4's -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls."""
        return ",".join([self.jwks_url, self.token_url(), self.token_url(https=True)])

    @property
    def consumer(self) -> OAuthClient:
        return _realm_clients()["ocr-consumer"]

    @property
    def interop(self) -> OAuthClient:
        return _realm_clients()["ocr-interop-client"]

    @property
    def no_audience(self) -> OAuthClient:
        return _realm_clients()["ocr-no-audience"]


def _stack_path(command: str) -> Path:
    done = subprocess.run(
        ["bash", str(STACK_SCRIPT), command], capture_output=True, text=True, timeout=900,
        check=False, cwd=REPO,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise KeycloakUnavailable(
            f"stack.sh {command} failed (exit {done.returncode}); `make test-deps` fetches "
            f"Keycloak and says which Java to install:\n{(done.stdout + done.stderr)[-2000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dev_build(dist: Path) -> Path:
    """Where the dev-mode build of `dist` (its lib/quarkus) is kept once made."""
    return dist.with_name(dist.name + "-dev-build")


def _make_home(dist: Path, home: Path) -> None:
    """A Keycloak home of our own: small folders copied, the 160 MB of jars linked."""
    home.mkdir(parents=True)
    (home / "bin").mkdir()
    shutil.copy2(dist / "bin" / "kc.sh", home / "bin" / "kc.sh")
    for name in ("conf", "providers", "themes"):
        shutil.copytree(dist / name, home / name)
    shutil.copy2(dist / "version.txt", home / "version.txt")
    (home / "lib").mkdir()
    shutil.copy2(dist / "lib" / "quarkus-run.jar", home / "lib" / "quarkus-run.jar")
    shutil.copytree(dist / "lib" / "app", home / "lib" / "app")
    built = _dev_build(dist)
    source = built if (built / ".complete").exists() else dist / "lib" / "quarkus"
    shutil.copytree(source, home / "lib" / "quarkus", ignore=shutil.ignore_patterns(".complete"))
    (home / "lib" / "lib").symlink_to(dist / "lib" / "lib")
    (home / "data" / "import").mkdir(parents=True)
    # --import-realm wants the file named after the realm.
    shutil.copy2(REALM_FILE, home / "data" / "import" / f"{REALM}-realm.json")


def _save_dev_build(dist: Path, home: Path) -> None:
    built = _dev_build(dist)
    if (built / ".complete").exists():
        return
    with (dist.parent / ".keycloak-dev-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions share the cache
        if (built / ".complete").exists():
            return
        staging = built.with_name(built.name + f".partial.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(home / "lib" / "quarkus", staging)
        (staging / ".complete").touch()
        shutil.rmtree(built, ignore_errors=True)
        staging.rename(built)  # an interrupted copy never looks complete


def _listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        except OSError:
            continue
    found: set[tuple[str, int]] = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = [raw[i:i + 4][::-1] for i in range(0, size, 4)]
            packed = b"".join(words)
            if size == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
                packed = packed[12:]  # IPv4-mapped
            family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
            found.add((socket.inet_ntop(family, packed), int(port_hex, 16)))
    return found


def _group_pids(pgid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            pids.add(int(entry.name))
    return pids


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we started (kc.sh and its JVM), then SIGKILL."""
    if process.poll() is None or _group_pids(process.pid):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
            process.poll()
        if _group_pids(process.pid):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


@contextmanager
def running_keycloak(folder: Path, tls: TlsFiles) -> Iterator[Keycloak]:
    """Keycloak in dev mode on free loopback ports (HTTP, and HTTPS with `tls`'s server
    certificate), the test realm imported; stopped (by its process group) on exit."""
    dist = _stack_path("keycloak-home")
    java_home = _stack_path("keycloak-java-home")
    home = folder / "keycloak-home"
    _make_home(dist, home)
    http_port, https_port = free_port(), free_port()
    http_url = f"http://127.0.0.1:{http_port}"
    log_path = folder / "keycloak.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KC_", "JAVA_OPTS"))},
        "JAVA_HOME": str(java_home),
        "PATH": f"{java_home / 'bin'}:{os.environ.get('PATH', '')}",
    }
    command = [
        str(home / "bin" / "kc.sh"), "start-dev",
        "--http-host", "127.0.0.1", "--http-port", str(http_port),
        "--https-port", str(https_port),
        "--https-certificate-file", str(tls.server_cert),
        "--https-certificate-key-file", str(tls.server_key),
        # One issuer, whichever URL a client fetches its token from.
        "--hostname", http_url,
        "--health-enabled", "false", "--metrics-enabled", "false",
        "--import-realm",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    keycloak = Keycloak(http_url, f"https://127.0.0.1:{https_port}", process.pid, log_path)
    try:
        well_known = f"{keycloak.issuer}/.well-known/openid-configuration"
        wait_until_ready(
            process, lambda: _answers(well_known), what="Keycloak", waiting_for="answer",
            timeout_s=START_TIMEOUT_S, log=log_path, tail_chars=3000, error=KeycloakUnavailable,
        )
        _save_dev_build(dist, home)
        exposed = {
            (address, port) for address, port in _listening_addresses(_group_pids(process.pid))
            if not address.startswith("127.")
        }
        assert not exposed, f"Keycloak listens beyond the loopback interface: {exposed}"
        yield keycloak
    finally:
        _stop(process)
