"""Record batches no consumer can read, put on the real broker as an estate could see them.

- `produce_lz4_bad_checksum`: an LZ4-compressed batch whose frame's content checksum is
  wrong, sent with a raw Produce request. The broker stores it (its LZ4 reader, like Java's
  client, does not verify content checksums); aiokafka's decoder (cramjam) refuses it.
- `corrupt_on_disk`: flips a byte of a stored record in the partition's segment file, as a
  failing disk would; the broker serves it as is and the batch CRC no longer matches.
"""

from __future__ import annotations

import struct
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from consumer.config import Settings
from consumer.settings.kafka import client_kwargs

# Record batch v2 header: offsets of the fields rewritten here, and its length.
BATCH_LENGTH_AT = 8
CRC_AT = 17
ATTRIBUTES_AT = 21
HEADER_BYTES = 61
LZ4 = 3  # the compression bits of the batch attributes

_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_M = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M


def xxh32(data: bytes, seed: int = 0) -> int:
    """xxHash32, the checksum of LZ4 frames."""
    n, i = len(data), 0
    if n >= 16:
        lanes = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i <= n - 16:
            for k in range(4):
                word = struct.unpack_from("<I", data, i + 4 * k)[0]
                lanes[k] = _rotl((lanes[k] + word * _P2) & _M, 13) * _P1 & _M
            i += 16
        h = (_rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12)
             + _rotl(lanes[3], 18)) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 4 <= n:
        h = _rotl((h + struct.unpack_from("<I", data, i)[0] * _P3) & _M, 17) * _P4 & _M
        i += 4
    while i < n:
        h = _rotl((h + data[i] * _P5) & _M, 11) * _P1 & _M
        i += 1
    h ^= h >> 15
    h = h * _P2 & _M
    h ^= h >> 13
    h = h * _P3 & _M
    return h ^ (h >> 16)


def lz4_frame(payload: bytes, *, checksum_ok: bool) -> bytes:
    """An LZ4 frame holding `payload` in one stored block, with a content checksum."""
    flags, block = 0b01100100, 0x40  # v01, independent blocks, content checksum; 64 KB
    frame = struct.pack("<I", 0x184D2204) + bytes([flags, block])
    frame += bytes([(xxh32(bytes([flags, block])) >> 8) & 0xFF])
    frame += struct.pack("<I", 0x80000000 | len(payload)) + payload + struct.pack("<I", 0)
    checksum = xxh32(payload)
    return frame + struct.pack("<I", checksum if checksum_ok else checksum ^ _M)


def lz4_batch(records: list[tuple[bytes, bytes]], *, checksum_ok: bool) -> bytes:
    """A v2 record batch of `records` (key, value), LZ4-compressed."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )
    for offset, (key, value) in enumerate(records):
        builder.append(offset, timestamp=None, key=key, value=value, headers=[])
    plain = bytes(builder.build())
    batch = bytearray(plain[:HEADER_BYTES] + lz4_frame(plain[HEADER_BYTES:],
                                                       checksum_ok=checksum_ok))
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", batch, ATTRIBUTES_AT, (attributes & ~0x07) | LZ4)
    struct.pack_into(">i", batch, BATCH_LENGTH_AT, len(batch) - 12)
    struct.pack_into(">I", batch, CRC_AT, calc_crc32c(bytes(batch[ATTRIBUTES_AT:])))
    return bytes(batch)


async def produce_batch(settings: Settings, partition: TopicPartition, batch: bytes) -> None:
    """One Produce request carrying `batch` as is (acks=all); raises on a broker error."""
    client = AIOKafkaClient(**client_kwargs(settings))
    await client.bootstrap()
    try:
        client.add_topic(partition.topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(partition)
        request = ProduceRequest(
            None, -1, 30_000, [(partition.topic, [(partition.partition, batch)])]
        )
        response = await client.send(leader, request)
        [(_, [(_, error_code, *_)])] = response.topics
        assert error_code == 0, f"the broker refused the batch: error {error_code}"
    finally:
        await client.close()


async def produce_lz4_bad_checksum(
    settings: Settings, partition: TopicPartition, records: list[tuple[bytes, bytes]]
) -> None:
    await produce_batch(settings, partition, lz4_batch(records, checksum_ok=False))


async def segment_file(settings: Settings, partition: TopicPartition) -> Path | None:
    """The partition's active segment on this machine, or None (a broker elsewhere)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        nodes = (await admin.describe_cluster())["brokers"]
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(nodes[0]["node_id"]))]
        )
    finally:
        await admin.close()
    log_dirs = next(
        value for name, value, *_ in described.resources[0][4] if name == "log.dirs"
    )
    for log_dir in str(log_dirs).split(","):
        folder = Path(log_dir) / f"{partition.topic}-{partition.partition}"
        segments = sorted(folder.glob("*.log")) if folder.is_dir() else []
        if segments:
            return segments[-1]
    return None


def corrupt_on_disk(segment: Path, marker: bytes) -> None:
    """Flip one byte of `marker` (a value's bytes) where the segment stores it."""
    data = bytearray(segment.read_bytes())
    at = data.find(marker)
    assert at >= 0, f"{marker!r} not found in {segment}"
    with segment.open("r+b") as file:
        file.seek(at)
        file.write(bytes([data[at] ^ 0x20]))
