"""Every Kafka codec is readable, and what we produce uses OCR_KAFKA_COMPRESSION_TYPE.

A record batch compressed with a codec whose library is missing made aiokafka raise
UnsupportedCodecError from getmany(), which stopped the consumer on a batch it could never
get past (issue 15). The libraries are dependencies now; these tests fail on an install
without them, before any broker is involved.
"""

from __future__ import annotations

import pytest
from aiokafka import codec
from aiokafka.producer import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from consumer.config import CompressionType, Settings
from consumer.settings.kafka import producer_kwargs

# aiokafka's attribute bits for each codec in a v2 record batch.
ATTRIBUTES = {
    CompressionType.NONE: DefaultRecordBatch.CODEC_NONE,
    CompressionType.GZIP: DefaultRecordBatch.CODEC_GZIP,
    CompressionType.SNAPPY: DefaultRecordBatch.CODEC_SNAPPY,
    CompressionType.LZ4: DefaultRecordBatch.CODEC_LZ4,
    CompressionType.ZSTD: DefaultRecordBatch.CODEC_ZSTD,
}

pytestmark = pytest.mark.usefixtures("clean_env")


def test_every_codec_library_is_installed() -> None:
    assert codec.has_gzip() and codec.has_snappy() and codec.has_lz4() and codec.has_zstd()


@pytest.mark.parametrize("kind", list(CompressionType))
def test_a_batch_of_each_codec_reads_back(kind: CompressionType) -> None:
    """What getmany() does with a fetched batch: decompress and iterate its records."""
    value = b'{"task_id": "doc-1", "source": {"uri": "file:///a.pdf"}}' * 20
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=ATTRIBUTES[kind], is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=b"doc-1", value=value, headers=[("h", b"v")])
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert batch.compression_type == ATTRIBUTES[kind]
    records = list(batch)
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (b"doc-1", value, [("h", b"v")])
    ]


@pytest.mark.parametrize("kind", list(CompressionType))
async def test_the_producer_is_built_with_the_codec(kind: CompressionType) -> None:
    kwargs = producer_kwargs(Settings(kafka_compression_type=kind))
    assert kwargs["compression_type"] == (None if kind is CompressionType.NONE else kind.value)
    # aiokafka refuses a codec whose library is missing when the producer is built.
    producer = AIOKafkaProducer(**kwargs)
    await producer.stop()


def test_the_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_KAFKA_COMPRESSION_TYPE", "lz4")
    assert Settings().kafka_compression_type is CompressionType.LZ4
    monkeypatch.setenv("OCR_KAFKA_COMPRESSION_TYPE", "brotli")
    with pytest.raises(ValueError, match="kafka_compression_type"):
        Settings()
