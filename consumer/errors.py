"""Coded failures. Every exception that ends a task or page carries an ErrorCode."""

from __future__ import annotations

from schemas.common import ErrorCode, ErrorInfo


class OcrError(Exception):
    """A failure a user can act on: a stable code plus a message saying what to change."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message[:2048])


class RecordTooLarge(OcrError):
    """A topic refused one of our records as too large (the producer's max_request_size or
    the topic's max.message.bytes): resending it cannot succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PAGE_OUTPUT_TOO_LARGE, message)


class EngineError(OcrError):
    def __init__(self, message: str, code: ErrorCode = ErrorCode.ENGINE_ERROR) -> None:
        super().__init__(code, message)


def document_too_large(shown: str, cap: int) -> OcrError:
    """The one message for a fetched document over the byte limit, whatever its source."""
    return OcrError(
        ErrorCode.SOURCE_TOO_LARGE,
        f"{shown} is larger than OCR_MAX_DOCUMENT_BYTES={cap}; split or compress the "
        "document, or raise the limit",
    )
