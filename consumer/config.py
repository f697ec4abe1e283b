"""The one settings object. Every field is an `OCR_*` environment variable and a CLI flag.

The README's configuration table is generated from this class (`python -m consumer.config`)
and a test fails when the two disagree.
"""

from __future__ import annotations

import argparse
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EngineName(StrEnum):
    AUTO = "auto"
    VLLM = "vllm"
    RAPIDOCR = "rapidocr"


class ResolutionMode(StrEnum):
    """DeepSeek-OCR's resolution modes; vLLM fixes one per engine."""

    TINY = "tiny"
    SMALL = "small"
    BASE = "base"
    LARGE = "large"
    GUNDAM = "gundam"


class NgramProcessor(StrEnum):
    """Which implementation of DeepSeek-OCR's no-repeat n-gram rule the engine runs."""

    BATCHED = "batched"  # consumer/engines/ngram_processor.py: the whole batch per step
    PER_REQUEST = "per-request"  # vLLM's NGramPerReqLogitsProcessor: Python per page


class Detokenize(StrEnum):
    """Where a page's output tokens become text."""

    FINAL = "final"  # once, when the page is done, off the event loop
    INCREMENTAL = "incremental"  # by vLLM after every engine step, on the event loop


_S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._=+~-]+")


def is_s3_bucket_name(name: str) -> bool:
    """S3's bucket naming rules: 3-63 of lower-case letters, digits, dots, hyphens, starting
    and ending with a letter or digit, no two dots in a row."""
    return bool(_S3_BUCKET_NAME.fullmatch(name)) and ".." not in name


class S3AddressingStyle(StrEnum):
    AUTO = "auto"  # botocore's choice: virtual-hosted where the bucket name allows it
    PATH = "path"  # endpoint/bucket/key: most S3-compatible stores (MinIO, Ceph, versitygw)
    VIRTUAL = "virtual"  # bucket.endpoint/key


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)


class CompressionType(StrEnum):
    """Kafka's record batch codecs; what we consume may use any of them, whatever this says."""

    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class SaslMechanism(StrEnum):
    """The SASL mechanisms that a user name and password are enough for."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


# aiokafka speaks these too, but they need settings we do not pass through.
_UNSUPPORTED_SASL = {
    "GSSAPI": "Kerberos options",
    "OAUTHBEARER": "a token provider",
}


def _absolute(path: Path) -> Path:
    """`path` made absolute once, when settings load: a relative root would name another
    folder in every working directory, so ocr-submit started elsewhere would hand files to
    a folder the consumer never reads, and messages could not say which folder was meant.
    `~` is expanded; symlinks are left for the fetch to resolve on every read."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _existing_file(field: str, path: Path | None) -> str | None:
    """A message when `path` is set and is not a readable file, else None."""
    if path is None:
        return None
    variable = env_name(field)
    if not path.exists():
        return f"{variable}={path} does not exist; mount the file or fix the path"
    if not path.is_file():
        return f"{variable}={path} is not a file; point it at a PEM file"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"{variable}={path} cannot be read ({exc.strerror}); make it readable"
    return None


def _refuse_unused(settings: Settings, fields: tuple[str, ...], why_and_fix: str) -> None:
    """Refuse settings given but never used: a user who set them expects them to act.
    `why_and_fix` says why they would not be used and what to do; `{them}` in it names
    them as "it" or "them"."""
    unused = [env_name(name) for name in fields if getattr(settings, name) is not None]
    if unused:
        them = "it" if len(unused) == 1 else "them"
        raise ValueError(f"{', '.join(unused)} set, but {why_and_fix.format(them=them)}")


def _check_tls_files(settings: Settings, client: str) -> None:
    """`<client>_ssl_*`: a key needs its certificate, and every file named must be there."""
    names = [f"{client}_ssl_{part}" for part in ("cafile", "certfile", "keyfile")]
    certfile, keyfile = names[1:]
    if getattr(settings, keyfile) is not None and getattr(settings, certfile) is None:
        raise ValueError(
            f"{env_name(keyfile)} is set without {env_name(certfile)}; a client key needs its "
            "certificate"
        )
    problems = [_existing_file(name, getattr(settings, name)) for name in names]
    if any(problems):
        raise ValueError("; ".join(problem for problem in problems if problem))


def artifact_store_uri(text: str) -> str | None:
    """OCR_ARTIFACTS_URI in its one canonical form: `s3://bucket[/prefix]` (no trailing
    slash) or `file:///absolute/folder`; '' means no store. Raises ValueError saying why."""
    text = text.strip()
    if not text:
        return None
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _absolute(Path(text)).as_uri()
    if scheme.lower() == "file":
        path = unquote(rest[len("localhost"):] if rest.startswith("localhost/") else rest)
        if not path.startswith("/"):
            raise ValueError(
                f"{text!r} names no absolute folder: use file:///folder (three slashes)"
            )
        return Path(os.path.normpath(path)).as_uri()
    if scheme.lower() == "s3":
        bucket, _, prefix = rest.partition("/")
        segments = [segment for segment in prefix.split("/") if segment]
        if not is_s3_bucket_name(bucket):
            raise ValueError(f"{text!r} names no valid S3 bucket (3-63 of a-z, 0-9, '.', '-')")
        if any(segment in (".", "..") for segment in segments):
            raise ValueError(f"{text!r}: the key prefix may not hold '.' or '..' segments")
        if not all(_S3_PREFIX_SEGMENT.fullmatch(segment) for segment in segments):
            # The URIs of figures end up in Markdown links, which spaces and brackets break.
            raise ValueError(
                f"{text!r}: the key prefix may hold only A-Z a-z 0-9 . _ - = + ~ and '/'"
            )
        return "/".join([f"s3://{bucket}", *segments])
    raise ValueError(
        f"{text!r} is not an artifact store: use s3://bucket/prefix, file:///folder or a "
        "folder path (empty: no store)"
    )


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a terminal, JSON otherwise
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    # hide_input_in_errors: a validation message would otherwise echo every value given,
    # passwords included, into the terminal or the pod log.
    model_config = SettingsConfigDict(
        env_prefix="OCR_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only; unset: PLAIN)."
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (needed by SASL_*)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (needed by SASL_*)."
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle for SSL/SASL_SSL (unset: the system's CAs)."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (mTLS; may hold the key too)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Client key (mTLS), when not in the certificate file."
    )
    kafka_idempotence: bool = Field(
        True, description="Idempotent producer; turn off only for brokers without "
        "InitProducerId (e.g. Tansu's memory build)."
    )
    kafka_compression_type: CompressionType = Field(
        CompressionType.ZSTD, description="Codec of the batches we produce: none, gzip, "
        "snappy, lz4 or zstd (measured: bench/README.md). Any codec is read."
    )
    group_id: str = Field("ocr-stream", description="Consumer group id.")
    group_instance_id: str | None = Field(
        None, description="Static membership id: a quick restart causes no rebalance."
    )
    consumer_id: str | None = Field(
        None, description="Name in events and Redis ownership; default host-pid."
    )
    topic_requests: str = Field("ocr.requests", description="Requests topic.")
    topic_results: str = Field("ocr.results", description="Per-page results topic (compacted).")
    topic_progress: str = Field("ocr.progress", description="Task progress topic.")
    topic_timing: str = Field("ocr.timing", description="Timing topic.")
    topic_dlq: str = Field("ocr.requests.dlq", description="Dead-letter topic for bad requests.")
    topic_partitions: int = Field(6, ge=1, description="Partitions when ocr-topics creates topics.")
    topic_replication: int = Field(1, ge=1, description="Replication factor for ocr-topics.")
    session_timeout_ms: int = Field(30_000, ge=6_000, description="Kafka group session timeout.")
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="Max time between polls before the group evicts us."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often finished offsets commit.")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request record accepted; bigger go to DLQ."
    )

    # Redis
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (rediss:// for TLS).")
    redis_password: SecretStr | None = Field(None, description="Redis password (AUTH).")
    redis_ssl_cafile: Path | None = Field(
        None, description="CA bundle for rediss:// (unset: the system's CAs)."
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="Client certificate for rediss:// (mTLS; may hold the key too)."
    )
    redis_ssl_keyfile: Path | None = Field(
        None, description="Client key for rediss:// (mTLS), when not in the certificate file."
    )
    redis_key_prefix: str = Field("ocr:", description="Prefix of every Redis key.")
    state_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="Expiry of task state keys.")
    lease_ttl_s: int = Field(60, ge=5, description="Ownership lease of a running task.")

    # Scheduling
    max_inflight_pages: int = Field(
        0, ge=0,
        description="Pages rendered or in the engine at once (the in-flight budget); "
        "0 sizes it from the engine (vLLM: max_num_seqs + 25%).",
    )
    max_inflight_tasks: int = Field(
        64, ge=1, description="Tasks open at once; partitions pause beyond it."
    )
    render_workers: int = Field(
        2, ge=1, description="Worker processes rendering pages (PyMuPDF holds the GIL)."
    )
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="On SIGTERM, time for in-flight pages to finish."
    )

    # Inputs and limits
    allowed_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["file", "http", "https", "s3", "inline"],
        description="URI schemes a request may use (comma list).",
    )
    file_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("/srv/ocr-blobs")],
        description="Directories file:// URIs must resolve under (comma list; relative: to "
        "the working directory at start).",
    )
    blob_root: Path = Field(
        Path(".run/blobs"),
        description="Where ocr-submit hands files over: an existing folder under the "
        "consumer's OCR_FILE_ROOTS (relative: to the working directory at start).",
    )
    s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Buckets s3:// URIs may name (comma list; empty: s3:// refused).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (unset: AWS); credentials from the AWS chain."
    )
    s3_region: str | None = Field(None, description="S3 region (unset: from the AWS config).")
    s3_addressing_style: S3AddressingStyle = Field(
        S3AddressingStyle.AUTO, description="S3 bucket addressing: auto, path or virtual."
    )
    allow_private_networks: bool = Field(
        False, description="Allow http(s) to loopback/private/link-local addresses."
    )
    fetch_timeout_s: float = Field(30.0, gt=0, description="Whole-download time limit.")
    max_document_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Largest document fetched."
    )
    max_pages: int = Field(2000, ge=1, description="Most pages in a document.")
    max_page_pixels: int = Field(
        40_000_000, ge=10_000, description="Most pixels in a rendered page or input image."
    )
    page_timeout_s: float = Field(
        300.0, gt=0,
        description="One page's time limit in the engine (and to render); room for "
        "OCR_MAX_TOKENS=8192 at 30 ms a decode step in a full batch.",
    )
    task_timeout_s: float = Field(3600.0, gt=0, description="One task's total time limit.")

    # Engine
    engine: EngineName = Field(EngineName.AUTO, description="auto, vllm or rapidocr.")
    model: str = Field("deepseek-ai/DeepSeek-OCR", description="Model path or name (vllm).")
    load_format: str = Field("auto", description="vLLM load format; 'dummy' for random weights.")
    dtype: str = Field("bfloat16", description="vLLM dtype.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM GPU memory share.")
    max_model_len: int = Field(8192, ge=1024, description="vLLM max context length.")
    max_num_seqs: int = Field(256, ge=1, description="vLLM max sequences per step.")
    max_num_batched_tokens: int = Field(16384, ge=1024, description="vLLM tokens per step.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine.")
    preprocess_workers: int = Field(8, ge=1, description="vLLM image preprocessing threads.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (debugging only).")
    resolution_mode: ResolutionMode = Field(
        ResolutionMode.GUNDAM, description="DeepSeek-OCR resolution mode, one per engine."
    )
    max_tokens: int = Field(
        8192, ge=16,
        description="Output token cap per page (DeepSeek-OCR's own; vLLM also ends a page "
        "where prompt + output reach OCR_MAX_MODEL_LEN).",
    )
    ngram_size: int = Field(30, ge=0, description="No-repeat n-gram size (0 disables).")
    ngram_window: int = Field(90, ge=1, description="No-repeat window in tokens.")
    ngram_processor: NgramProcessor = Field(
        NgramProcessor.BATCHED, description="No-repeat rule: batched or per-request (vLLM's)."
    )
    vision_cudagraphs: bool | None = Field(
        None,
        description="vLLM's vision encoder batched in CUDA graphs; unset: on in gundam mode "
        "(measured, bench/README.md), off in the others (not measured).",
    )
    detokenize: Detokenize = Field(
        Detokenize.FINAL, description="Output text: final (once per page) or incremental."
    )
    ignore_eos: bool = Field(False, description="Benchmarks only: decode exactly max_tokens.")

    # Artifacts
    artifacts_uri: str | None = Field(
        None,
        description="Artifact store for figure crops: s3://bucket/prefix (with the OCR_S3_* "
        "endpoint and credentials), file:///folder or a folder (relative: to the working "
        "directory at start); unset: figures are not stored and the Markdown says so.",
    )
    artifact_page_images: bool = Field(
        False, description="Also store every rendered page image (PNG) in the artifact store."
    )

    # Operations
    metrics_host: str = Field("127.0.0.1", description="Metrics/health HTTP bind address.")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Metrics/health port (0: off).")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR.")
    log_format: LogFormat = Field(LogFormat.AUTO, description="auto, json or console.")

    @field_validator("allowed_schemes", "file_roots", "s3_buckets", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
        "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
        "redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable (a Secret or ConfigMap key left blank) means unset, not "." or "".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        # Kafka's own tools accept either case; aiokafka wants upper case.
        name = value.strip().upper()
        if name in _UNSUPPORTED_SASL:
            raise ValueError(
                f"SASL mechanism {name} needs {_UNSUPPORTED_SASL[name]}, which ocr-stream "
                "does not pass through; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        return name

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        setting = f"{env_name('kafka_security_protocol')}={protocol.value}"
        if protocol.uses_sasl:
            missing = [
                env_name(name)
                for name, value in (
                    ("kafka_sasl_username", self.kafka_sasl_username),
                    ("kafka_sasl_password", self.kafka_sasl_password),
                )
                if not (value.get_secret_value() if isinstance(value, SecretStr) else value)
            ]
            if missing:
                them = "it" if len(missing) == 1 else "them"
                raise ValueError(f"{setting} needs {' and '.join(missing)}; set {them}")
        else:
            _refuse_unused(
                self, ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"),
                f"{setting} would not use {{them}}; set SASL_SSL (or SASL_PLAINTEXT) or "
                "unset {them}",
            )
        if not protocol.uses_tls:
            _refuse_unused(
                self, ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"),
                f"{setting} does not use TLS; set SSL or SASL_SSL, or unset {{them}}",
            )
        _check_tls_files(self, "kafka")
        return self

    @model_validator(mode="after")
    def _redis_tls(self) -> Settings:
        if not self.redis_url.lower().startswith("rediss://"):
            _refuse_unused(
                self, ("redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile"),
                f"{env_name('redis_url')} is not a rediss:// URL, so Redis would be reached "
                "without TLS; use rediss:// or unset {them}",
            )
        _check_tls_files(self, "redis")
        return self

    @field_validator("file_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [_absolute(path) for path in value]

    @field_validator("blob_root")
    @classmethod
    def _absolute_blob_root(cls, value: Path) -> Path:
        return _absolute(value)

    @field_validator("artifacts_uri", mode="before")
    @classmethod
    def _artifact_store(cls, value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        return artifact_store_uri(value)

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError(
                f"{value!r} is not an endpoint URL: use http(s)://host[:port], e.g. "
                "http://minio:9000 (unset for AWS)"
            )
        return value

    @field_validator("s3_buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not is_s3_bucket_name(name)]
        if bad:
            raise ValueError(f"not S3 bucket names: {bad} (3-63 of a-z, 0-9, '.', '-')")
        return value

    @model_validator(mode="after")
    def _vision_graphs_need_graphs(self) -> Settings:
        if self.vision_cudagraphs and self.enforce_eager:
            raise ValueError(
                "vision_cudagraphs=true asks for CUDA graphs that enforce_eager=true forbids; "
                "unset one of them"
            )
        return self

    @model_validator(mode="after")
    def _output_fits_the_context(self) -> Settings:
        if self.max_tokens > self.max_model_len:
            raise ValueError(
                f"{env_name('max_tokens')}={self.max_tokens} is more than "
                f"{env_name('max_model_len')}={self.max_model_len}, which must also hold the "
                "page's image tokens (about 900-1,300 in gundam mode): lower the first or "
                "raise the second"
            )
        return self

    @model_validator(mode="after")
    def _ngram_rule(self) -> Settings:
        if self.ngram_size == 1:
            raise ValueError("ngram_size 1 would ban nothing: use 0 to disable, or >= 2")
        if self.ngram_size and self.ngram_window < self.ngram_size:
            raise ValueError(
                f"ngram_window ({self.ngram_window}) must be at least ngram_size "
                f"({self.ngram_size}): a shorter window holds no n-gram to ban"
            )
        return self

    @field_validator("kafka_bootstrap", "redis_url")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def env_name(field: str) -> str:
    return f"OCR_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per setting; flags override environment variables."""
    group = parser.add_argument_group("settings (each also an OCR_* variable)")
    for name, info in Settings.model_fields.items():
        group.add_argument(
            flag_name(name), dest=f"setting_{name}", default=None, metavar="V",
            help=f"{info.description} [{env_name(name)}]".replace("%", "%%"),
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, f"setting_{name}")
        for name in Settings.model_fields
        if getattr(args, f"setting_{name}", None) is not None
    }
    return Settings(**overrides)


def markdown_table() -> str:
    """The README table: variable, flag, default, meaning."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(str(item) for item in default)
        shown = "" if default is None else str(getattr(default, "value", default))
        rows.append(
            f"| `{env_name(name)}` | `{flag_name(name)}` | `{shown}` | {info.description} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
