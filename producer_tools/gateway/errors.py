"""HTTP errors of the gateway: a status, a code and a message a client can act on.

Bodies are `{"error": {"code": ..., "message": ...}}`, the shape of the contract's
ErrorInfo. Document and request problems reuse the contract's codes (schemas.common
.ErrorCode: DOCUMENT_TOO_MANY_PAGES, PAGE_TOO_MANY_PIXELS, REQUEST_INVALID, ...), so a
client sees the same code whether the gateway or the consumer refused its document.
`GatewayCode` adds the few that only HTTP has.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.common import ErrorCode


class GatewayCode(StrEnum):
    API_KEY_REQUIRED = "API_KEY_REQUIRED"  # 401: no key sent
    API_KEY_INVALID = "API_KEY_INVALID"  # 401: the key is not one of the accepted keys
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"  # 413
    OPEN_TASKS_LIMIT = "OPEN_TASKS_LIMIT"  # 429: the key's cap on open tasks is reached
    TASK_NOT_FOUND = "TASK_NOT_FOUND"  # 404: unknown, or expired from the view
    TASK_NOT_FINISHED = "TASK_NOT_FINISHED"  # 409: results are served once the task is final
    TASK_FINAL = "TASK_FINAL"  # 409: cancelling a task that already ended
    UNSUPPORTED_BODY = "UNSUPPORTED_BODY"  # 415: neither multipart nor JSON
    PAGE_NOT_FOUND = "PAGE_NOT_FOUND"  # 404: no result for that page (yet)
    PAGE_IMAGE_UNAVAILABLE = "PAGE_IMAGE_UNAVAILABLE"  # 404: not uploaded through the gateway
    UNAVAILABLE = "UNAVAILABLE"  # 503: Kafka or Redis does not answer


class GatewayError(Exception):
    def __init__(self, status: int, code: GatewayCode | ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code.value, "message": self.message}}


def invalid(message: str) -> GatewayError:
    return GatewayError(422, ErrorCode.REQUEST_INVALID, message)


def not_found(task_id: str) -> GatewayError:
    return GatewayError(
        404, GatewayCode.TASK_NOT_FOUND,
        f"no task {task_id!r}: it was never submitted, or it finished longer ago than the "
        "view keeps tasks (OCR_GATEWAY_VIEW_TTL_S); ocr-collect reads older results from "
        "the results topic",
    )
