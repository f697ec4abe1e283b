"""Render worker processes: where MuPDF and the image decoders run.

Why processes and not a thread pool: PyMuPDF holds the GIL for the whole of a page render
(measured with PyMuPDF 2.0: rendering a heavy vector page in a thread stalled the event loop
for the full 80 s of the render), so a render thread would freeze the loop, Kafka
heartbeats included. A child process renders
without touching our GIL, and a decoder crash or a runaway page kills only the child.

Why each worker runs its documents on a single thread: MuPDF's context is not thread-safe
in PyMuPDF, so each process serves one command at a time, and a document lives in one
process for its whole life (its MuPDF state cannot move). Workers are shared by every
document of the consumer (module-level pool) to bound processes and memory; there are
`OCR_RENDER_WORKERS` of them.

Each worker has one IPC thread in the parent that sends a command and waits for the reply,
so blocking pipe I/O and pickling stay off the loop and commands to one worker are
naturally serialised. That thread also enforces the per-command time limit: when a child
overruns, the thread kills it (by its own Popen handle, so by pid) and the next command
starts a fresh one, which re-opens its documents on demand.

Isolation between documents (one slow PDF must not hold up the others):
- A new document goes to the worker with the shortest queue (commands waiting or running),
  then the fewest documents: never behind a worker busy with a slow document's pages
  while another is idle.
- A worker serves opens and closes before any waiting render: a new document's open waits
  at most for the one command in progress (MuPDF cannot be interrupted mid-page).
- Waiting renders are served one page at a time, to the document served least recently:
  a new document's page waits for the page in progress, not for every page the others
  queued.
- A waiting command whose caller gave up (cancelled) is dropped unsent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from consumer.errors import OcrError
from schemas.common import ErrorCode

if TYPE_CHECKING:
    from consumer.documents import rasterize

T = TypeVar("T")

# The package root, so a child finds `consumer` however the parent was started.
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])
_REAP_TIMEOUT_S: Final = 5.0
# Closing only frees memory; a child that cannot do it in this time is stuck and replaced.
_CLOSE_TIMEOUT_S: Final = 60.0
# A cold interpreter importing MuPDF takes about a second; a loaded host can take longer.
_START_TIMEOUT_S: Final = 120.0


# -- the protocol (plain picklable values) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenCommand:
    doc_id: int
    data: bytes
    media_type: str
    max_pages: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class RenderCommand:
    doc_id: int
    page: int
    dpi: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class CloseCommand:
    doc_id: int


Command = OpenCommand | RenderCommand | CloseCommand


@dataclass(frozen=True, slots=True)
class Opened:
    page_count: int
    # Each page's size before rendering: (width, height) in points for a PDF, in pixels
    # for an image; empty when the document could not tell.
    page_sizes: tuple[tuple[float, float], ...] = ()
    in_points: bool = True


@dataclass(frozen=True, slots=True)
class Rendered:
    width: int
    height: int
    stride: int
    rgb: bytes
    dpi: int
    width_pt: float | None
    height_pt: float | None


@dataclass(frozen=True, slots=True)
class Closed:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    """First message of a child: imports are done, time limits may start counting."""


@dataclass(frozen=True, slots=True)
class NotOpen:
    """The worker does not hold the document (it was restarted since the open)."""


@dataclass(frozen=True, slots=True)
class Failed:
    code: str  # an ErrorCode value; exceptions are not pickled across the pipe
    message: str

    def error(self) -> OcrError:
        return OcrError(ErrorCode(self.code), self.message)


Reply = Opened | Rendered | Closed | NotOpen | Failed


# -- the child side ----------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Child entry point: `python -m consumer.documents.renderproc FD`."""
    serve(Connection(int(argv[1])))


def serve(conn: Connection) -> None:
    """Child main loop: one command at a time until the parent goes away."""
    # Ctrl-C reaches the whole process group; shutdown is the parent's decision.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Imported here so that only the children load MuPDF and the codecs.
    from consumer.documents import rasterize

    documents: dict[int, rasterize.RasterDocument] = {}
    configured_pixels = 0
    try:
        conn.send(Ready())
    except OSError:
        return
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            break
        if isinstance(command, OpenCommand | RenderCommand) and (
            command.max_pixels != configured_pixels
        ):
            rasterize.configure_worker_limits(command.max_pixels)
            configured_pixels = command.max_pixels
        reply = _handle(command, documents)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    for document in documents.values():
        document.close()


def _handle(command: Command, documents: dict[int, rasterize.RasterDocument]) -> Reply:
    from consumer.documents import rasterize

    try:
        if isinstance(command, OpenCommand):
            document = rasterize.open_raster(command.data, command.media_type, command.max_pages)
            documents[command.doc_id] = document
            return Opened(
                page_count=document.page_count, page_sizes=document.page_sizes(),
                in_points=isinstance(document, rasterize.PdfRaster),
            )
        if isinstance(command, RenderCommand):
            found = documents.get(command.doc_id)
            if found is None:
                return NotOpen()
            page = found.render(command.page, command.dpi, command.max_pixels)
            return Rendered(**page._asdict())
        closing = documents.pop(command.doc_id, None)
        if closing is not None:
            closing.close()
        return Closed()
    except OcrError as exc:
        return Failed(code=exc.code.value, message=exc.message)
    except Exception as exc:  # a decoder bug must fail this command, not the worker
        code = (
            ErrorCode.DOCUMENT_CORRUPT
            if isinstance(command, OpenCommand)
            else ErrorCode.PAGE_RENDER_FAILED
        )
        return Failed(
            code=code.value,
            message=f"the renderer failed: {type(exc).__name__}: {exc}; the document may be "
            "damaged: re-export it",
        )


# -- the parent side ---------------------------------------------------------------------


class WorkerLost(Exception):
    """The child died (crash, OOM kill) while it held the command."""


class WorkerTimedOut(Exception):
    """The child overran the command's time limit and was killed."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True, slots=True)
class Served:
    """A command's outcome and the time the child spent on it (reopen included)."""

    value: Any
    service_s: float


# Run on the IPC thread, so that a document's budget is settled before its next command
# is picked: `gate()` just before sending (an exception to fail the command with instead),
# `on_served(seconds, timed_out)` right after the child answered or overran.
Gate = Callable[[], BaseException | None]
OnServed = Callable[[float, bool], None]


@dataclass(eq=False, slots=True)
class _Job:
    command: Command
    timeout_s: float
    reopen: OpenCommand | None
    finish: Callable[[Reply], Any] | None
    gate: Gate | None = None
    on_served: OnServed | None = None
    future: concurrent.futures.Future[Served] = field(default_factory=concurrent.futures.Future)


class RenderWorker:
    """One child process, its queue of commands, and the IPC thread that serves them."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.documents = 0  # documents placed here; touched on the loop thread only
        self._lock = threading.Lock()  # guards the process fields against kill()/shutdown()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        # The queue, guarded by its condition: opens and closes first, then one render of
        # the document served least recently (never served: first).
        self._jobs = threading.Condition()
        self._control: deque[_Job] = deque()
        self._renders: dict[int, deque[_Job]] = {}
        self._served: dict[int, int] = {}  # document -> serial of its last render
        self._serial = 0
        self._running = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    @property
    def depth(self) -> int:
        """Commands waiting or running here: what a new document would queue behind."""
        with self._jobs:
            waiting = len(self._control) + sum(len(jobs) for jobs in self._renders.values())
            return waiting + (1 if self._running else 0)

    async def call(
        self,
        command: Command,
        *,
        timeout_s: float,
        reopen: OpenCommand | None = None,
        finish: Callable[[Reply], T],
        gate: Gate | None = None,
        on_served: OnServed | None = None,
    ) -> tuple[T, float]:
        """Send `command`; returns `finish(reply)` (run off the loop) and the child's time.

        `reopen` re-opens the document first when the child no longer holds it; the
        time limit counts only while the child works on this command, not while the
        command waits behind other documents' pages. Cancelled while waiting, the command
        is never sent; `gate` and `on_served` run on the IPC thread (see `Gate`).
        """
        job = _Job(command, timeout_s, reopen, finish, gate, on_served)
        self._submit(job)
        served = await asyncio.wrap_future(job.future)
        value: T = served.value
        return value, served.service_s

    def call_soon(self, command: Command) -> None:
        """Fire and forget (closing a document whose opener was cancelled)."""
        job = _Job(command, _CLOSE_TIMEOUT_S, None, None)
        if self._submit(job):
            job.future.add_done_callback(lambda done: done.exception())

    async def close_document(self, doc_id: int) -> None:
        """Release a document; it is released even if the awaiting task is cancelled."""
        job = _Job(CloseCommand(doc_id=doc_id), _CLOSE_TIMEOUT_S, None, None)
        if not self._submit(job):
            return  # the worker was shut down, and the document with it
        # Errors mean the document went with its worker: nothing left to release.
        with contextlib.suppress(WorkerLost, WorkerTimedOut):
            await asyncio.shield(asyncio.wrap_future(job.future))

    def drop_renders(self, doc_id: int, error: BaseException) -> int:
        """Fail the document's waiting renders with `error` (they will not be sent)."""
        with self._jobs:
            dropped = self._renders.pop(doc_id, deque())
        count = 0
        for job in dropped:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
                count += 1
        return count

    def shutdown(self) -> None:
        with self._jobs:
            self._stopped = True
            waiting = [*self._control, *(job for jobs in self._renders.values() for job in jobs)]
            self._control.clear()
            self._renders.clear()
            self._jobs.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerLost(f"render worker {self.index} shut down"))
        with self._lock:
            self._stop_locked()

    def _submit(self, job: _Job) -> bool:
        with self._jobs:
            if self._stopped:
                return False
            if isinstance(job.command, RenderCommand):
                self._renders.setdefault(job.command.doc_id, deque()).append(job)
            else:
                self._control.append(job)
                if isinstance(job.command, CloseCommand):
                    self._served.pop(job.command.doc_id, None)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"render-ipc-{self.index}", daemon=True
                )
                self._thread.start()
            self._jobs.notify()
        return True

    # Everything below runs on the IPC thread.

    def _next_job(self) -> _Job | None:
        with self._jobs:
            self._running = False
            while not self._stopped:
                if self._control:
                    job = self._control.popleft()
                elif self._renders:
                    doc_id = min(self._renders, key=lambda doc: self._served.get(doc, -1))
                    jobs = self._renders[doc_id]
                    job = jobs.popleft()
                    if not jobs:
                        del self._renders[doc_id]
                    self._serial += 1
                    self._served[doc_id] = self._serial
                else:
                    self._jobs.wait()
                    continue
                self._running = True
                return job
            return None

    def _serve(self) -> None:
        while (job := self._next_job()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited: never sent
            refusal = job.gate() if job.gate is not None else None
            if refusal is not None:
                job.future.set_exception(refusal)
                continue
            try:
                started = time.monotonic()
                try:
                    reply = self._exchange_with_reopen(job)
                except WorkerTimedOut as exc:
                    if job.on_served is not None:
                        job.on_served(exc.seconds, True)
                    raise
                except WorkerLost:
                    # A command that killed its worker (OOM, a crash) cost that time too,
                    # and counts as a strike like a timeout: else a PDF whose every page
                    # crashes the renderer escapes its render budget.
                    if job.on_served is not None:
                        job.on_served(time.monotonic() - started, True)
                    raise
                served_s = time.monotonic() - started
                if job.on_served is not None:
                    job.on_served(served_s, False)
                value = job.finish(reply) if job.finish is not None else reply
                job.future.set_result(Served(value, served_s))
            except BaseException as exc:  # handed to the awaiting caller, as an executor does
                job.future.set_exception(exc)

    def _exchange_with_reopen(self, job: _Job) -> Reply:
        reply = self._exchange(job.command, job.timeout_s)
        if isinstance(reply, NotOpen) and job.reopen is not None:
            opened = self._exchange(job.reopen, job.timeout_s)
            if not isinstance(opened, Opened):
                return opened
            reply = self._exchange(job.command, job.timeout_s)
        return reply

    def _exchange(self, command: Command, timeout_s: float) -> Reply:
        try:
            conn = self._started_connection()
            conn.send(command)
            if not conn.poll(timeout_s):
                with self._lock:
                    self._stop_locked()
                raise WorkerTimedOut(
                    f"render worker {self.index} overran {timeout_s:g} s", timeout_s
                )
            reply: Reply = conn.recv()
        except (EOFError, OSError) as exc:
            with self._lock:
                self._stop_locked()
            raise WorkerLost(f"render worker {self.index} died: {exc!r}") from exc
        return reply

    def _started_connection(self) -> Connection:
        with self._lock:
            if self._stopped:
                raise WorkerLost(f"render worker {self.index} shut down")
            if self._process is not None and self._process.poll() is None and self._conn:
                return self._conn
            self._stop_locked()
            self._conn, self._process = _start_child()
            return self._conn

    def _stop_locked(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        # Kill first: the IPC thread may be waiting on the connection, and the child's end
        # closing is what wakes it; closing our end under it would not.
        if process is not None:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_REAP_TIMEOUT_S)
        if conn is not None:
            conn.close()


def _diagnostics_fd() -> int:
    """Where the child's stdout goes: MuPDF's messages belong with our stderr logs."""
    try:
        return sys.__stderr__.fileno() if sys.__stderr__ is not None else subprocess.DEVNULL
    except (OSError, ValueError):
        return subprocess.DEVNULL


def _start_child() -> tuple[Connection, subprocess.Popen[bytes]]:
    """A fresh interpreter, not a fork: no inherited threads, locks, CUDA or event loop.

    Started with subprocess rather than multiprocessing's spawn, which would re-run the
    parent's __main__ in the child (any script without a main guard would recurse).
    """
    parent_end, child_end = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if part
    )
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer.documents.renderproc", str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=_diagnostics_fd(),
            env=env,
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    conn = Connection(parent_end.detach())
    # Wait for the child's imports here, so a command's time limit counts only its work.
    try:
        if not conn.poll(_START_TIMEOUT_S):
            raise WorkerLost(f"render worker did not start within {_START_TIMEOUT_S:g} s")
        greeting = conn.recv()
        if not isinstance(greeting, Ready):
            raise WorkerLost(f"render worker greeted with {greeting!r}")
    except (EOFError, OSError, WorkerLost) as exc:
        conn.close()
        if process.poll() is None:
            process.kill()
        process.wait(_REAP_TIMEOUT_S)
        if isinstance(exc, WorkerLost):
            raise
        raise WorkerLost(f"render worker exited while starting: {exc!r}") from exc
    return conn, process


class RenderPool:
    def __init__(self, size: int) -> None:
        self.workers = [RenderWorker(index) for index in range(size)]

    def place(self) -> RenderWorker:
        """The worker with the shortest queue, then the fewest documents: a worker busy
        with a slow document's pages is avoided while another has less to do."""
        return min(self.workers, key=lambda worker: (worker.depth, worker.documents))

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.shutdown()


_pool: RenderPool | None = None
_pool_lock = threading.Lock()
_doc_ids = itertools.count(1)


def render_pool(size: int) -> RenderPool:
    """The consumer-wide pool, created with the first document's OCR_RENDER_WORKERS."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = RenderPool(size)
        return _pool


def next_doc_id() -> int:
    return next(_doc_ids)


def shutdown_render_pool() -> None:
    """Stop the worker processes (at consumer shutdown; a later document starts new ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown()


if __name__ == "__main__":
    # Run as a script this file is `__main__`; the real module must serve, so that pickled
    # commands and the isinstance checks in `_handle` agree on one set of classes.
    from consumer.documents.renderproc import main as _child_main

    _child_main(sys.argv)
