"""Keys and partitions (schemas.keys): the Java client's murmur2 without a Kafka client."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from schemas.common import TASK_ID_PATTERN
from schemas.keys import TaskPartitioner, murmur2, parse_key, result_key, task_partition

# From Kafka's own UtilsTest.testMurmur2 (Utils.murmur2 returns a signed int).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

task_ids = st.from_regex(TASK_ID_PATTERN, fullmatch=True)


@pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2.items())
def test_murmur2_is_the_java_clients(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@given(st.binary(max_size=300))
def test_murmur2_agrees_with_aiokafka(data: bytes) -> None:
    # aiokafka returns the same 32 bits unsigned.
    assert murmur2(data) & 0xFFFFFFFF == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(task_ids, st.integers(min_value=1, max_value=10_000), st.integers(1, 500))
def test_a_page_result_lands_with_its_task(task_id: str, page: int, partitions: int) -> None:
    home = task_partition(task_id, partitions)
    assert 0 <= home < partitions
    assert task_partition(result_key(task_id, page).encode(), partitions) == home


@given(task_ids, st.integers(min_value=1, max_value=10_000))
def test_keys_parse_back(task_id: str, page: int) -> None:
    assert parse_key(result_key(task_id, page)) == (task_id, page)
    assert parse_key(result_key(task_id, page).encode()) == (task_id, page)
    assert parse_key(task_id) == (task_id, None)


@pytest.mark.parametrize("key", ["t/", "t/x", "t/1/2", "t/-1", "t/١"])
def test_a_key_with_no_page_number_after_the_slash_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="is not a page number"):
        parse_key(key)


def test_the_partitioner_hook_maps_keys_onto_the_partitions_it_is_given() -> None:
    partitioner = TaskPartitioner()
    # aiokafka hands the partition ids unordered; the n-th in order is partition n.
    assert partitioner(b"abc/4", [3, 1, 0, 2], [0]) == task_partition(b"abc", 4)
    assert partitioner(None, [0, 1], [1]) == 1
