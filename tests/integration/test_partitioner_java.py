"""schemas.keys partitions exactly as the Java client does: the same murmur2, and the same
partition for a keyed record (BuiltInPartitioner, the default since Kafka 3.3), computed
by the kafka-clients jar the local stack runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from schemas.keys import murmur2, result_key, task_partition

LIBS = (
    Path(os.environ.get("OCR_CACHE_DIR", Path.home() / ".cache" / "ocr-stream"))
    / f"kafka-{os.environ.get('OCR_KAFKA_VERSION', '4.1.1')}"
    / "libs"
)
KEYS = ["21", "foobar", "a", "ab", "abc", "invoice-2026-0042", "é-ü", "x" * 128, "t:1@2+3=4"]
PARTITIONS = (1, 6, 7, 64)

JAVA = """
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;
import java.nio.charset.StandardCharsets;
public class Partitions {
    public static void main(String[] keys) {
        for (String key : keys) {
            byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
            StringBuilder line = new StringBuilder().append(Utils.murmur2(bytes));
            for (int n : new int[] {%s}) {
                line.append(' ').append(BuiltInPartitioner.partitionForKey(bytes, n));
            }
            System.out.println(line);
        }
    }
}
"""


def test_partitions_match_the_java_client(tmp_path: Path) -> None:
    jars = sorted(LIBS.glob("kafka-clients-*.jar")) + sorted(LIBS.glob("slf4j-api-*.jar"))
    if len(jars) < 2 or shutil.which("java") is None:
        pytest.skip(f"no Java or no kafka-clients jar under {LIBS} (make test-deps)")
    source = tmp_path / "Partitions.java"
    source.write_text(JAVA % ", ".join(map(str, PARTITIONS)))
    done = subprocess.run(
        ["java", "-cp", os.pathsep.join(map(str, jars)), str(source), *KEYS],
        capture_output=True, text=True, timeout=120, check=True,
    )
    expected = [line.split() for line in done.stdout.splitlines() if line[:1] in "-0123456789"]
    ours = [
        [str(murmur2(key.encode())), *(str(task_partition(key, n)) for n in PARTITIONS)]
        for key in KEYS
    ]
    assert ours == expected
    # A page result's key lands with its task (what the Java client would do with the bare
    # task id, since a key is hashed on the part before '/').
    assert [task_partition(result_key(key, 3), 7) for key in KEYS] == [
        int(row[PARTITIONS.index(7) + 1]) for row in expected
    ]
