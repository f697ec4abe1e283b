"""Reaching a service at start: retried until the deadline, then a message that names it.

In memory: `connect` is a scripted coroutine; the real services (a closed Kafka port, a
stopped Redis) are in tests/integration/test_start_deadline.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer import startup
from consumer.config import Settings
from consumer.startup import Service, Unreachable, kafka_service, reach, redis_service

SERVICE = Service("Kafka", "127.0.0.1:1", "OCR_KAFKA_BOOTSTRAP")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "FIRST_RETRY_S", 0.01)
    monkeypatch.setattr(startup, "MAX_RETRY_S", 0.05)


class Script:
    """Fails `failures` times with ConnectionError, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"refused #{self.calls}")


async def test_a_service_that_answers_late_within_the_deadline_is_reached() -> None:
    connect = Script(failures=3)
    assert await reach(SERVICE, connect, timeout_s=5, retry_on=(ConnectionError,),
                       stopping=asyncio.Event())
    assert connect.calls == 4


async def test_one_that_never_answers_ends_at_the_deadline_with_a_message() -> None:
    connect = Script(failures=10**9)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        await reach(SERVICE, connect, timeout_s=0.3, retry_on=(ConnectionError,),
                    stopping=asyncio.Event())
    assert 0.25 <= time.monotonic() - started < 2
    message = str(caught.value)
    assert message.startswith("Kafka at 127.0.0.1:1 could not be reached within 0.3 s")
    assert "ConnectionError: refused #" in message  # the last error, as it was
    assert "check OCR_KAFKA_BOOTSTRAP" in message and "OCR_START_TIMEOUT_S" in message


async def test_an_attempt_that_hangs_is_cut_at_the_deadline() -> None:
    async def black_hole() -> None:
        await asyncio.sleep(3600)

    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"within 0.2 s \(no answer\)"):
        await reach(SERVICE, black_hole, timeout_s=0.2, retry_on=(ConnectionError,),
                    stopping=asyncio.Event())
    assert time.monotonic() - started < 2


async def test_a_stop_during_the_wait_ends_it_without_an_error() -> None:
    stopping = asyncio.Event()
    connect = Script(failures=10**9)
    asyncio.get_running_loop().call_later(0.1, stopping.set)
    assert not await reach(SERVICE, connect, timeout_s=60, retry_on=(ConnectionError,),
                           stopping=stopping)


async def test_an_error_not_worth_retrying_propagates() -> None:
    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await reach(SERVICE, broken, timeout_s=5, retry_on=(ConnectionError,),
                    stopping=asyncio.Event())


def test_services_are_named_by_address_and_setting_never_with_a_password() -> None:
    settings = Settings(kafka_bootstrap="k1:9092,k2:9092",
                        redis_url="redis://user:s3cret@cache.internal:6380/2")
    kafka, redis = kafka_service(settings), redis_service(settings)
    assert (kafka.name, kafka.address) == ("Kafka", "k1:9092,k2:9092")
    assert "OCR_KAFKA_BOOTSTRAP" in kafka.settings
    assert (redis.name, redis.address) == ("Redis", "cache.internal:6380")
    assert "OCR_REDIS_URL" in redis.settings
    assert "s3cret" not in str(Unreachable(redis, 1, ConnectionError("x")))
