"""`ocr-gateway`: the HTTP front door, served by uvicorn.

    ocr-gateway [--gateway-host H] [--gateway-port P] [--gateway-api-keys-file F] ...
                [any OCR_* setting as a flag]

Exit codes (the tools' table): 0 stopped by a signal, 2 invalid settings or a missing
topic, 4 Kafka or Redis unreachable at start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from consumer.log import configure_logging, get_logger
from consumer.settings.base import add_version_argument
from producer_tools import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ToolError,
    describe_validation,
)
from producer_tools.follow_progress import topic_partitions
from producer_tools.gateway.app import create_app
from producer_tools.gateway.service import Gateway
from producer_tools.gateway.settings import GatewayConfig, add_gateway_arguments, config_from_args

log = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-gateway",
        description="HTTP gateway of ocr-stream: POST /v1/tasks publishes OCR requests, "
        "GET /v1/tasks/{id} and its results are served from a view of the progress and "
        "results topics kept in Redis, / is a web page, /docs the OpenAPI UI. Binds to "
        "127.0.0.1:8080 unless told otherwise.",
        allow_abbrev=False,
    )
    add_version_argument(parser)
    add_gateway_arguments(parser)
    return parser


async def serve(config: GatewayConfig) -> int:
    core, own = config.core, config.gateway
    try:
        await topic_partitions(core, [core.topic_requests, core.topic_progress,
                                      core.topic_results])
    except ToolError as exc:
        print(f"ocr-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KafkaError, OSError) as exc:
        print(f"ocr-gateway: Kafka at {core.kafka_bootstrap} does not answer ({exc!r}); check "
              "OCR_KAFKA_BOOTSTRAP and that the broker is up", file=sys.stderr)
        return EXIT_UNREACHABLE
    gateway = Gateway(config)
    try:
        await gateway.store.ping()
        await gateway.start()
    except (KafkaError, RedisError, OSError) as exc:
        print(f"ocr-gateway: cannot reach Kafka or Redis at start ({exc!r}); check "
              "OCR_KAFKA_BOOTSTRAP and OCR_REDIS_URL", file=sys.stderr)
        await gateway.stop()
        return EXIT_UNREACHABLE
    if not own.loopback and not gateway.keys.required:
        log.warning(
            "gateway_open_without_keys", host=own.host,
            hint="anyone who reaches this address can submit work: set OCR_GATEWAY_API_KEYS "
            "or OCR_GATEWAY_API_KEYS_FILE",
        )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway, manage=False), host=own.host, port=own.port,
            log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10,
        )
    )
    try:
        await server.serve()
    finally:
        await gateway.stop()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"ocr-gateway: invalid settings: {describe_validation(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.core.log_level, config.core.log_format)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
