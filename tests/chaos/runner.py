"""The suite: own stack up, scenarios one after another, report, everything stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tests.chaos.harness import Harness, ScenarioResult, Suite
from tests.chaos.scenarios import SCENARIOS, log_in_process_to, silence_in_process_logs
from tests.chaos.stack import REPO, ChaosStack, clean_environment
from tests.support.documents import make_pdf

DEFAULT_SEED = 20261124
DEFAULT_ROUNDS = 3
SCENARIO_TIMEOUT_S = 20 * 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Fault-injection suite on its own local Kafka + Redis stack.",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of every random choice (default {DEFAULT_SEED})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="rounds per scenario (default %(default)s)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable; default all)")
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run" / "chaos",
                        help="OCR_RUN_DIR of the suite's own stack (default .run/chaos)")
    parser.add_argument("--kafka-port", type=int, default=29092,
                        help="broker port on 127.0.0.1 (the controller uses the next one)")
    parser.add_argument("--redis-port", type=int, default=26379)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="where <date>-chaos-<host>.json is written")
    parser.add_argument("--keep-stack", action="store_true",
                        help="leave the suite's stack running at the end (for debugging)")
    return parser


def _prune(run_dir: Path, keep_logs: int = 5) -> None:
    """Earlier runs' documents (needed only while a run lasts) and all but the newest log
    folders: the run directory must not grow with every `make chaos`."""
    shutil.rmtree(run_dir / "blobs", ignore_errors=True)
    logs = sorted((run_dir / "logs").glob("*"), key=lambda path: path.stat().st_mtime)
    for old in logs[:-keep_logs] if len(logs) > keep_logs else []:
        shutil.rmtree(old, ignore_errors=True)


def _write_documents(blob_dir: Path) -> dict[int, Path]:
    # Few lines per page: RapidOCR then takes ~0.3-0.6 s a page on a 2-core machine.
    return {pages: make_pdf(blob_dir / f"doc-{pages}p.pdf", pages, lines=4)
            for pages in range(1, 5)}


def _table(results: list[ScenarioResult]) -> str:
    header = ("scenario", "result", "rounds", "tasks", "pages", "kills", "faults",
              "missed", "dup", "lost", "wall s")
    rows = [header] + [
        (r.name, r.verdict, str(r.rounds), str(r.tasks), str(r.pages),
         str(r.kills), str(r.faults), str(r.missed), str(r.duplicates), str(r.lost),
         f"{r.wall_s:.1f}")
        for r in results
    ]
    totals = (
        "total", "", "", str(sum(r.tasks for r in results)),
        str(sum(r.pages for r in results)), str(sum(r.kills for r in results)),
        str(sum(r.faults for r in results)), str(sum(r.missed for r in results)),
        str(sum(max(r.duplicates, 0) for r in results)),
        str(sum(r.lost for r in results)), f"{sum(r.wall_s for r in results):.1f}",
    )
    rows.append(totals)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        if index in (1, len(rows) - 1):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
            enumerate(zip(row, widths, strict=True))
        ))
    return "\n".join(lines)


class ChaosSuite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir: Path = args.run_dir.resolve()
        self.run_id = datetime.now(UTC).strftime("%H%M%S") + uuid.uuid4().hex[:4]
        self.log_dir = self.run_dir / "logs" / self.run_id
        self.stack = ChaosStack(
            self.run_dir, args.kafka_port, args.redis_port, self.log_dir / "stack.log"
        )
        self.suite: Suite | None = None
        self.results: list[ScenarioResult] = []
        self.stack_up = False

    def echo(self, line: str) -> None:
        print(line, flush=True)

    async def run(self) -> int:
        args = self.args
        names = args.scenario or list(SCENARIOS)
        _prune(self.run_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.echo(f"chaos: seed {args.seed}, {args.rounds} rounds, scenarios {', '.join(names)}")
        self.echo(f"chaos: own stack Kafka {self.stack.bootstrap}, Redis {self.stack.redis_url}, "
                  f"OCR_RUN_DIR {self.run_dir}; logs in {self.log_dir}")
        with (self.log_dir / "suite.log").open("a") as log_stream:
            self._quiet_libraries(log_stream)
            try:
                await self._run_scenarios(names, log_stream)
            finally:
                await self._stop_everything()
                # Nothing may log into the closed file after this (aiokafka's destructors).
                logging.getLogger().handlers[:] = [logging.NullHandler()]
                silence_in_process_logs()
        wall = time.monotonic() - started
        return self._report(wall)

    async def _run_scenarios(self, names: list[str], log_stream: TextIO) -> None:
        args = self.args
        try:
            seconds = await self.stack.fresh_up()
        except Exception as exc:  # reported as every scenario failing, not a traceback
            self.stack_up = True  # partly up, maybe: `down` must still run
            self.echo(f"chaos: could not start the suite's stack: {exc}")
            return
        self.stack_up = True
        self.echo(f"chaos: stack up in {seconds:.1f} s")
        blob_dir = self.run_dir / "blobs" / self.run_id
        self.suite = Suite(
            stack=self.stack, run_id=self.run_id, seed=args.seed, rounds=args.rounds,
            blob_dir=blob_dir, log_dir=self.log_dir, documents=_write_documents(blob_dir),
            echo=self.echo, log_stream=log_stream,
        )
        for name in names:
            self.results.append(await self._scenario(name, log_stream))

    def _quiet_libraries(self, stream: TextIO) -> None:
        # aiokafka logs every refused connection while the broker is down on purpose; the
        # suite's report stays readable and the details stay in suite.log.
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING)
        log_in_process_to(stream)

    async def _scenario(self, name: str, log_stream: TextIO) -> ScenarioResult:
        assert self.suite is not None
        scenario = SCENARIOS[name]
        description = (scenario.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        self.echo(f"\n== {name}: {' '.join(description.split())}")
        harness = Harness(self.suite, name, " ".join(description.split()))
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT_S):
                await harness.setup()
                await scenario(harness)
        except Exception as exc:  # a broken scenario is a failed scenario, not a dead suite
            harness.problem(f"scenario aborted: {exc!r}")
            traceback.print_exc(file=log_stream)
        except BaseException:  # interrupted: stop its consumers and clients, then go
            await harness.close()
            raise
        result = await harness.finish()
        verdict = result.verdict
        self.echo(
            f"   {verdict} {name}: {result.tasks} tasks, {result.pages} pages, "
            f"{result.kills} kills, {result.faults} faults ({result.missed} missed), "
            f"{result.duplicates} duplicates, "
            f"{result.lost} lost, {result.wall_s:.1f} s"
        )
        if result.log_events:
            self.echo(f"   consumer log events: {result.log_events}")
        if result.known_issue is not None:
            shown = (
                "failed as expected" if verdict == "XFAIL"
                else "PASSED although marked known: remove its known_issue"
            )
            self.echo(f"   known issue ({shown}): {result.known_issue}")
        for problem in result.problems:
            self.echo(f"   problem: {problem}")
        for line in result.log_excerpt[-15:]:
            self.echo(f"   log: {line}")
        return result

    async def _stop_everything(self) -> None:
        if self.suite is not None:
            running = [p for p in self.suite.processes if p.alive]
            for p in running:
                p.stopped_by_us = True
            await asyncio.gather(*(p.stop(20.0) for p in running), return_exceptions=True)
            for p in self.suite.processes:
                p.reap_children()
        if not self.args.keep_stack:
            try:
                await self.stack.call("down")
                self.stack_up = False
            except Exception as exc:  # reported; the sync fallback in main() tries again
                self.echo(f"chaos: stack.sh down failed: {exc}")

    def emergency_cleanup(self) -> None:
        """Last resort after an interrupted event loop: signal our PIDs, stop our stack."""
        if self.suite is not None:
            for p in self.suite.processes:
                if p.alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
        if self.stack_up and not self.args.keep_stack:
            self.stack.call_sync("down")

    def _report(self, wall: float) -> int:
        failed = [r for r in self.results if r.counts_as_failure]
        known = [r for r in self.results if r.verdict == "XFAIL"]
        passed = len(self.results) - len(failed) - len(known)
        expected = len(self.args.scenario or SCENARIOS)
        missing = expected - len(self.results)  # scenarios that never ran count as failed
        summary = f"{passed} passed, {len(failed) + missing} failed"
        if known:
            summary += f", {len(known)} known failures ({', '.join(r.name for r in known)})"
        document: dict[str, Any] = {
            "suite": "chaos",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{socket.gethostname()} ({os.cpu_count()} CPUs, "
                       f"{platform.machine()}, Python {platform.python_version()})",
            "kafka": os.environ.get("OCR_KAFKA_VERSION", "4.1.1") + " (KRaft, single node)",
            "engine": "rapidocr",
            "seed": self.args.seed,
            "rounds": self.args.rounds,
            "wall_s": round(wall, 1),
            "summary": summary,
            "totals": {
                key: sum(max(getattr(r, key), 0) for r in self.results)
                for key in ("tasks", "pages", "kills", "faults", "missed", "duplicates",
                            "lost")
            },
            "scenarios": [r.as_json() for r in self.results],
            "logs": str(self.log_dir),
        }
        self.args.out.mkdir(parents=True, exist_ok=True)
        path = self.args.out / f"{datetime.now(UTC):%Y-%m-%d}-chaos-{socket.gethostname()}.json"
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        self.echo("")
        self.echo(_table(self.results))
        for result in known:
            self.echo(f"XFAIL {result.name}: {result.known_issue}")
        self.echo(f"\nseed {self.args.seed}, wall time {wall:.0f} s; figures in {path}")
        self.echo(summary)
        return 0 if not failed and not missing else 1


def _single_instance(run_dir: Path) -> TextIO | None:
    """A lock held for the suite's life: two suites on one run directory would stop each
    other's stack."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = (run_dir / "suite.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


async def _main_task(suite: ChaosSuite) -> int:
    # SIGTERM to the suite cancels it like Ctrl-C does, so the finally blocks stop what
    # it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await suite.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1:
        print("chaos: --rounds must be at least 1", file=sys.stderr)
        return 2
    lock = _single_instance(args.run_dir.resolve())
    if lock is None:
        print(f"chaos: another chaos suite is running on {args.run_dir}", file=sys.stderr)
        return 2
    # Settings() in this process read OCR_* variables: only the suite's own may count.
    environment = clean_environment()
    os.environ.clear()
    os.environ.update(environment)
    suite = ChaosSuite(args)
    try:
        return asyncio.run(_main_task(suite))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nchaos: interrupted; stopped what the suite started", file=sys.stderr)
        passed = sum(1 for r in suite.results if r.passed)
        print(f"{passed} passed, {len(args.scenario or SCENARIOS) - passed} failed")
        return 130
    finally:
        suite.emergency_cleanup()
        lock.close()
