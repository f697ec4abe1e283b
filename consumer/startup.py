"""Reaching Kafka and Redis at start, within a deadline (OCR_START_TIMEOUT_S).

A service that does not answer at start is tried again with backoff until the deadline,
then the consumer exits with status 4 and one line naming what did not answer, where, and
which setting to check. Waiting forever would look like a healthy process to a supervisor
(a pod Running, never Ready, and no error); giving up at once would crash-loop through an
ordinary broker restart. Once started, outages are waited out as before (the publisher and
the Redis store retry): this deadline is about first contact only.

Does not guarantee: that the service still answers a moment later; that it accepts us (a
refused login or a missing topic is another failure, with its own message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from consumer.config import Settings
from consumer.log import get_logger

log = get_logger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 15.0


@dataclass(frozen=True, slots=True)
class Service:
    """A service the consumer needs at start, as a message names it."""

    name: str  # "Kafka", "Redis"
    address: str  # where we looked, without credentials
    settings: str  # what to check, e.g. "OCR_KAFKA_BOOTSTRAP (and the OCR_KAFKA_SASL_*/SSL_*)"


def kafka_service(settings: Settings) -> Service:
    return Service(
        "Kafka", settings.kafka_bootstrap,
        "OCR_KAFKA_BOOTSTRAP (and OCR_KAFKA_SECURITY_PROTOCOL, OCR_KAFKA_SASL_*, "
        "OCR_KAFKA_SSL_* if the broker wants them)",
    )


def redis_service(settings: Settings) -> Service:
    url = urlsplit(settings.redis_url)
    # Host and port only: the URL may hold a password.
    where = f"{url.hostname}:{url.port or 6379}" if url.hostname else (url.path or url.scheme)
    return Service(
        "Redis", where, "OCR_REDIS_URL (and OCR_REDIS_PASSWORD, OCR_REDIS_SSL_* if it wants them)"
    )


class Unreachable(Exception):
    """`service` did not answer within the deadline; `error` is the last attempt's."""

    def __init__(self, service: Service, waited_s: float, error: BaseException | None) -> None:
        self.service = service
        self.waited_s = waited_s
        self.error = error
        last = "no answer" if error is None else f"last error {type(error).__name__}: {error}"
        super().__init__(
            f"{service.name} at {service.address} could not be reached within "
            f"{waited_s:g} s ({last}); check {service.settings}, or raise "
            "OCR_START_TIMEOUT_S if it is only slow to start"
        )


async def reach(
    service: Service, connect: Callable[[], Awaitable[object]], *, timeout_s: float,
    retry_on: tuple[type[BaseException], ...], stopping: asyncio.Event,
) -> bool:
    """Call `connect` until it returns (True), `stopping` is set (False), or `timeout_s`
    has passed (Unreachable). Errors in `retry_on` are tried again; others propagate. An
    attempt that hangs is cut at the deadline: a black-holed address never answers at all."""
    clock = asyncio.get_running_loop()
    deadline = clock.time() + timeout_s
    delay = FIRST_RETRY_S
    error: BaseException | None = None
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                await connect()
            return True
        except TimeoutError as exc:
            if clock.time() >= deadline:
                raise Unreachable(service, timeout_s, error) from None
            error = exc  # the client's own timeout, before ours
        except retry_on as exc:
            error = exc
        left = deadline - clock.time()
        if stopping.is_set():
            return False
        if left <= 0:
            raise Unreachable(service, timeout_s, error)
        wait = min(delay, left)
        log.warning(
            "service_unreachable", service=service.name, address=service.address,
            error=repr(error), retry_in=round(wait, 1), gives_up_in=round(left, 1),
        )
        try:
            await asyncio.wait_for(stopping.wait(), wait)
            return False
        except TimeoutError:
            delay = min(delay * 2, MAX_RETRY_S)
