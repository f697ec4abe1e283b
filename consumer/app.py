"""Wiring: engine, Redis state, artifact store, publisher, scheduler, Kafka loop, cancel
watch, health; the entry point.

Start-up order matters: the artifact store is checked, and Redis and the Kafka producer are
reached (seconds, or exit 4 after OCR_START_TIMEOUT_S), before minutes of engine loading
are spent; then the engine loads (minutes for vLLM), and only then the consumer joins the
group: otherwise it would hold partitions it cannot serve.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumer import __version__
from consumer.artifacts.store import (
    ArtifactError,
    ArtifactStore,
    ArtifactStoreUnreachable,
    open_artifact_store,
)
from consumer.cancel import CancelWatch, RunningTasks
from consumer.config import Settings, add_settings_arguments, settings_from_args
from consumer.documents.render import shutdown_renderers, warm_up_renderers
from consumer.engines.base import Engine
from consumer.errors import EngineError, OcrError
from consumer.health import HealthServer
from consumer.log import configure_logging, get_logger
from consumer.loop import ConsumerLoop, request_consumer
from consumer.metrics import ConsumerMetrics
from consumer.publisher import EventPublisher
from consumer.read_errors import (
    EXIT_KAFKA_REFUSED,
    Identity,
    KafkaRefused,
    ReadError,
    ReadErrorKind,
    classify,
)
from consumer.scheduler import PageScheduler
from consumer.settings import add_version_argument
from consumer.settings.kafka_login import login_refusal
from consumer.startup import Service, Unreachable, kafka_service, reach, redis_service
from consumer.state import TaskStateStore, redis_client
from consumer.tasks import TaskRunner

log = get_logger(__name__)

ENGINE_STATS_INTERVAL_S = 2.0
# Exit statuses of ocr-consumer: 0 stopped by a signal, 1 a bug escaped, 2 settings, 3 the
# engine died, 4 a service unreachable at start. A dead engine: any supervisor (kubelet,
# compose's restart policy, systemd) restarts the process, and its open tasks resume.
EXIT_SETTINGS = 2  # invalid settings, or a store that refuses us (nothing a restart fixes)
EXIT_ENGINE_DEAD = 3
EXIT_UNREACHABLE = 4  # Kafka or Redis not reached within OCR_START_TIMEOUT_S at start
# How long an artifact store that does not answer is waited for at start (it may be
# starting beside us), before the process gives up with EXIT_UNREACHABLE.
STORE_WAIT_S = 30.0


def default_consumer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def page_budget(settings: Settings, engine: Engine) -> int:
    """Keep the engine full: its own concurrency plus a margin for pages being rendered
    or published while others decode."""
    if settings.max_inflight_pages > 0:
        return settings.max_inflight_pages
    return max(math.ceil(engine.suggested_inflight_pages * 1.25), 2)


class App:
    """One consumer process: `await App(settings).run()` until `stop()` or a signal."""

    def __init__(
        self, settings: Settings, *, engine: Engine | None = None,
        metrics: ConsumerMetrics | None = None, health_port: int | None = None,
    ) -> None:
        """`health_port` overrides OCR_METRICS_PORT and always serves, 0 on an ephemeral
        port (read `app.health.url`): the setting's 0 means "off", which tests cannot use."""
        self.settings = settings
        self.consumer_id = settings.consumer_id or default_consumer_id()
        self.metrics = metrics or ConsumerMetrics()
        self._engine = engine
        self._owns_engine = engine is None
        self._loop: ConsumerLoop | None = None
        self._stop_requested = asyncio.Event()
        self.exit_code = 0
        self._reached = False
        self._engine_ready = False
        self._serve_health = health_port is not None or settings.metrics_port != 0
        self.health = HealthServer(
            settings, self.metrics.registry, liveness=self.liveness, readiness=self.readiness,
            port=health_port,
        )

    @property
    def ready(self) -> bool:
        return self._engine_ready and self._loop is not None and self._loop.joined

    def liveness(self) -> tuple[bool, str]:
        """A dead engine never recovers on its own: only a restart of the process brings
        the consumer back (it also exits by itself, EXIT_ENGINE_DEAD; this answer covers
        the moments before, and a kubelet that asks first)."""
        engine = self._engine
        health = engine.health() if engine is not None else None
        if health is not None and not health.alive:
            return False, f"engine dead: {health.reason}"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        alive, reason = self.liveness()
        if not alive:
            return False, reason
        if not self._reached:
            return False, "reaching Kafka and Redis"
        if not self._engine_ready:
            return False, "engine starting"
        if self._loop is None or not self._loop.joined:
            return False, "joining consumer group"
        return True, "ready"

    def stop(self) -> None:
        self._stop_requested.set()
        if self._loop is not None:
            self._loop.stop()

    async def run(self) -> None:
        settings = self.settings
        if self._serve_health:
            await self.health.start()
        artifacts = await self._artifact_store()
        if self.exit_code:
            if self._serve_health:
                await self.health.stop()
            return
        redis = redis_client(settings)
        store = TaskStateStore(
            redis, settings, on_error=self.metrics.redis_error, outages=self.metrics,
        )
        publisher = EventPublisher(
            settings, consumer_id=self.consumer_id, on_retry=self.metrics.publish_retry
        )
        try:
            if await self._reach(
                self._reach_one(redis_service(settings), redis.ping,
                                (RedisConnectionError, RedisTimeoutError, OSError)),
                self._reach_one(kafka_service(settings), self._refusing(publisher.start),
                                (KafkaError,)),
            ):
                await self._run_engine(store, publisher, artifacts)
        except KafkaRefused as exc:
            # Kafka refuses us for good (authorization, a fenced static member, a missing
            # topic): restarting as is cannot help, and the status says so to a supervisor.
            log.error("consumer_exiting", cause=exc.error.cause, message=exc.error.message,
                      exit_code=EXIT_KAFKA_REFUSED)
            self.exit_code = EXIT_KAFKA_REFUSED
        finally:
            await publisher.stop()
            await store.close()
            if self._serve_health:
                await self.health.stop()

    async def _run_engine(
        self, store: TaskStateStore, publisher: EventPublisher,
        artifacts: ArtifactStore | None,
    ) -> None:
        settings = self.settings
        engine = self._engine
        if engine is None:
            from consumer.engines.factory import create_engine

            try:
                engine = self._engine = create_engine(settings)
            except OcrError as exc:
                # The engine cannot exist here (its extra is not installed): a restart as
                # is cannot help, so the settings status, with the fix in the message.
                self._engine_failed(exc, EXIT_SETTINGS)
                return
        try:
            identity = engine.identity
            self.metrics.set_info(
                consumer_id=self.consumer_id, engine=identity.name, model=identity.model,
                engine_version=identity.version, mode=identity.mode, version=__version__,
            )
            log.info("engine_starting", engine=identity.name, model=identity.model)
            try:
                await engine.start()
            except EngineError as exc:
                # It failed to start (out of GPU memory, a model it cannot load): the
                # engine-dead status, which a supervisor may retry.
                self._engine_failed(exc, EXIT_ENGINE_DEAD)
                return
            except OcrError as exc:
                # It refused our settings (a resolution mode it cannot run).
                self._engine_failed(exc, EXIT_SETTINGS)
                return
            self._engine_ready = True
            if self._stop_requested.is_set():
                return
            await self._serve(engine, store, publisher, artifacts)
        finally:
            if self._owns_engine:
                await engine.close()

    def _engine_failed(self, exc: OcrError, exit_code: int) -> None:
        log.error("engine_failed_to_start", code=exc.code.value, error=exc.message,
                  exit_code=exit_code)
        self.exit_code = exit_code

    async def _artifact_store(self) -> ArtifactStore | None:
        """The store OCR_ARTIFACTS_URI names, written to once: a store that refuses us ends
        the process with EXIT_SETTINGS, one that does not answer within STORE_WAIT_S with
        EXIT_UNREACHABLE (before the group is joined: no partition waits on us)."""
        store = open_artifact_store(self.settings)
        if store is None:
            log.info("artifact_store_off", hint="figures are not stored; set OCR_ARTIFACTS_URI")
            return None
        delay = 1.0
        deadline = asyncio.get_running_loop().time() + STORE_WAIT_S
        while True:
            try:
                await store.check()
            except ArtifactStoreUnreachable as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    self._refused_store(exc, EXIT_UNREACHABLE)
                    return None
                log.warning("artifact_store_unreachable", store=store.uri, error=exc.message,
                            retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
                continue
            except ArtifactError as exc:
                self._refused_store(exc, EXIT_SETTINGS)
                return None
            log.info("artifact_store_ready", store=store.uri)
            return store

    def _refused_store(self, exc: ArtifactError, exit_code: int) -> None:
        log.error("artifact_store_failed", store=self.settings.artifacts_uri,
                  code=exc.code.value, error=exc.message, exit_code=exit_code)
        self.exit_code = exit_code

    async def _serve(
        self, engine: Engine, store: TaskStateStore, publisher: EventPublisher,
        artifacts: ArtifactStore | None,
    ) -> None:
        settings = self.settings
        budget = page_budget(settings, engine)
        scheduler = PageScheduler(
            budget, budget_pixels=settings.max_inflight_megapixels * 1_000_000
        )
        running = RunningTasks()
        runner = TaskRunner(
            settings=settings, engine=engine, scheduler=scheduler, store=store,
            events=publisher, metrics=self.metrics, consumer_id=self.consumer_id,
            artifacts=artifacts, running=running,
        )
        consumer = request_consumer(settings, self.consumer_id)
        self._loop = ConsumerLoop(
            consumer=consumer, settings=settings, runner=runner, scheduler=scheduler,
            metrics=self.metrics,
        )
        stats = asyncio.create_task(self._pump_engine_stats(engine))
        # Before joining: a cancel of a task we are about to take finds its run registered
        # or is found by the run's own check as it starts.
        cancels = asyncio.create_task(CancelWatch(store, running).run())
        await warm_up_renderers(settings)
        try:
            if not await self._reach(
                self._reach_one(
                    kafka_service(settings), self._refusing(self._loop.start), (KafkaError,)
                )
            ):
                await consumer.stop()  # never ran: nothing to drain or commit
                return
            log.info(
                "consumer_started", consumer_id=self.consumer_id, group=settings.group_id,
                topic=settings.topic_requests, page_budget=budget, version=__version__,
            )
            if self._stop_requested.is_set():
                self._loop.stop()
            await self._loop.run()
        finally:
            stats.cancel()
            cancels.cancel()
            await asyncio.gather(cancels, return_exceptions=True)
            # Tasks have drained: no page is rendering any more.
            await asyncio.to_thread(shutdown_renderers)

    def _reach_one(
        self, service: Service, connect: Callable[[], Awaitable[object]],
        retry_on: tuple[type[BaseException], ...],
    ) -> Awaitable[bool]:
        return reach(service, connect, timeout_s=self.settings.start_timeout_s,
                     retry_on=retry_on, stopping=self._stop_requested)

    async def _reach(self, *attempts: Awaitable[bool]) -> bool:
        """Wait for services at start, together: True once all answered. False when a stop
        was asked meanwhile, or when any could not be reached within OCR_START_TIMEOUT_S:
        then the process ends with EXIT_UNREACHABLE, each of them named in the log."""
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Unreachable):
                raise outcome
        failed = [outcome for outcome in outcomes if isinstance(outcome, Unreachable)]
        for unreachable in failed:
            log.error("unreachable_at_start", service=unreachable.service.name,
                      message=str(unreachable), exit_code=EXIT_UNREACHABLE)
        if failed:
            self.exit_code = EXIT_UNREACHABLE
            return False
        self._reached = all(outcomes)
        return self._reached

    def _refusing(self, connect: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        """`connect`, with the Kafka errors no retry fixes (authorization, authentication)
        raised as KafkaRefused: `reach` then stops at once instead of retrying them until
        OCR_START_TIMEOUT_S and exiting 4."""
        settings = self.settings
        who = Identity(settings.topic_requests, settings.group_id, settings.group_instance_id)

        async def attempt() -> None:
            try:
                await connect()
            except KafkaError as exc:
                error = classify(exc, who)
                if error.kind is ReadErrorKind.FATAL:
                    raise KafkaRefused(error) from exc
                if isinstance(exc, KafkaConnectionError):
                    # aiokafka's bootstrap hides a refused login behind "Unable to bootstrap".
                    refused = await login_refusal(settings)
                    if refused is not None:
                        error = ReadError(ReadErrorKind.FATAL, refused.cause, refused.message)
                        raise KafkaRefused(error) from exc
                raise

        return attempt

    async def _pump_engine_stats(self, engine: Engine) -> None:
        while True:
            self.metrics.set_engine_stats(engine.stats())
            health = engine.health()
            if not health.alive:
                # A dead engine does not come back. Pages that meet it leave their tasks
                # unfinished (EngineDead), so stopping now loses nothing: the offsets stay
                # uncommitted and the tasks resume after the restart. Not waiting for the
                # liveness probe also covers supervisors that have none.
                log.error("engine_dead", reason=health.reason, exit_code=EXIT_ENGINE_DEAD)
                self.exit_code = EXIT_ENGINE_DEAD
                self.stop()
                return
            await asyncio.sleep(ENGINE_STATS_INTERVAL_S)


async def _run_until_signalled(app: App) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop)
    await app.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ocr-consumer",
        description="Consume OCR requests from Kafka and publish per-page results.",
    )
    add_version_argument(parser)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"ocr-consumer: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    app = App(settings)
    asyncio.run(_run_until_signalled(app))
    return app.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
