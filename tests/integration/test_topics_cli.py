"""`ocr-topics create|check` on the real broker, in-process and as the installed command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from consumer.config import Settings
from producer_tools import topics as cli
from producer_tools.topic_admin import delete_topics, ensure_topics
from schemas.topics import TopicNames, TopicSpec

pytestmark = pytest.mark.integration


@pytest.fixture
async def fresh(stack: Settings, run_id: str) -> AsyncIterator[Settings]:
    """Settings naming five topics that do not exist yet; deleted afterwards."""
    settings = stack.with_topic_names(TopicNames().with_prefix(f"cli-{run_id}")).model_copy(
        update={"topic_partitions": 2}
    )
    yield settings
    await delete_topics(settings, [s.name for s in settings.topic_specs()])


def topic_flags(settings: Settings) -> list[str]:
    return [
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-requests", settings.topic_requests,
        "--topic-results", settings.topic_results,
        "--topic-progress", settings.topic_progress,
        "--topic-timing", settings.topic_timing,
        "--topic-dlq", settings.topic_dlq,
    ]


async def test_check_create_check(fresh: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli.run("check", fresh, wait_s=10) == 1
    out = capsys.readouterr().out
    assert out.count("MISMATCH") == 5 and "is missing" in out
    assert "run `ocr-topics create`" in out

    assert await cli.run("create", fresh, wait_s=10) == 0
    out = capsys.readouterr().out
    assert out.count("created ") == 5
    assert f"created {fresh.topic_results} (2 partitions, replication 1, compact)" in out

    assert await cli.run("create", fresh, wait_s=0) == 0  # idempotent
    assert capsys.readouterr().out.count("exists ") == 5

    assert await cli.run("check", fresh, wait_s=0) == 0
    assert "all 5 topics match" in capsys.readouterr().out


async def test_check_explains_partition_mismatches(
    fresh: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run("create", fresh, wait_s=10) == 0
    capsys.readouterr()
    wider = fresh.model_copy(update={"topic_partitions": 4})
    assert await cli.run("check", wider, wait_s=0) == 1
    out = capsys.readouterr().out
    assert f"topic {fresh.topic_requests!r}: partitions is 2, expected 4" in out
    assert "why it matters: partitions cap the number of busy consumers" in out


def _with_configs(
    specs: list[TopicSpec], name: str, configs: dict[str, str]
) -> list[TopicSpec]:
    """`specs` with the topic `name` created by someone who set `configs` differently."""
    return [
        replace(spec, configs=spec.configs | configs) if spec.name == name else spec
        for spec in specs
    ]


async def test_check_explains_a_results_topic_that_is_not_compacted(
    fresh: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # The mistake to catch: a results topic made by hand with the broker's default policy.
    specs = _with_configs(
        fresh.topic_specs(), fresh.topic_results, {"cleanup.policy": "delete"}
    )
    await ensure_topics(fresh, specs)
    assert await cli.run("check", fresh, wait_s=10) == 1
    out = capsys.readouterr().out
    results = fresh.topic_results
    assert f"topic {results!r}: config cleanup.policy is delete, expected compact" in out
    assert "why it matters: results must be compacted (keyed task_id/page)" in out
    assert out.count("MISMATCH") == 1


async def test_check_explains_a_shorter_retention(
    fresh: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    day_ms = str(24 * 3600 * 1000)
    specs = _with_configs(fresh.topic_specs(), fresh.topic_dlq, {"retention.ms": day_ms})
    await ensure_topics(fresh, specs)
    assert await cli.run("check", fresh, wait_s=10) == 1
    out = capsys.readouterr().out
    thirty_days_ms = str(30 * 24 * 3600 * 1000)
    assert (
        f"topic {fresh.topic_dlq!r}: config retention.ms is {day_ms}, expected {thirty_days_ms}"
        in out
    )
    assert "why it matters: records older than this are deleted and cannot be replayed" in out
    assert out.count("MISMATCH") == 1


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "producer_tools.topics", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_command_line_flags_and_exit_codes(fresh: Settings) -> None:
    flags = topic_flags(fresh)
    rc, out, _ = await _cli("create", "--partitions", "3", "--replication", "1", *flags)
    assert rc == 0, out
    assert f"created {fresh.topic_requests} (3 partitions" in out
    rc, out, _ = await _cli("check", "--partitions", "3", *flags)
    assert rc == 0, out
    rc, out, _ = await _cli("check", "--partitions", "5", *flags)
    assert rc == 1 and "expected 5" in out
    rc, _, err = await _cli("check", "--partitions", "0", *flags)
    assert rc == 2 and "invalid settings" in err
    # Nothing listens on port 1: a clear error and exit 4, not a traceback.
    rc, _, err = await _cli("check", "--wait", "1", "--kafka-bootstrap", "127.0.0.1:1")
    assert rc == 4 and err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
