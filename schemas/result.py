"""Per-page results on `ocr.results`, keyed `task_id/page` (compacted)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator

from schemas.common import (
    ContractModel,
    ErrorInfo,
    MetadataValue,
    TaskId,
    VersionedModel,
    check_metadata,
)
from schemas.request import PromptKind

MAX_PAGE_TEXT = 512 * 1024
MAX_ARTIFACT_URI = 2048
Box = Annotated[list[float], Field(min_length=4, max_length=4)]


class FinishReason(StrEnum):
    STOP = "stop"  # the engine ended the page itself
    LENGTH = "length"  # the page hit its token cap: output is truncated
    REPETITION = "repetition"  # the engine looped; the no-repeat guard cut it
    ERROR = "error"  # no output: see `error`


class PageStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class Artifact(ContractModel):
    """A file the consumer stored for a result (a figure crop, a page image): a claim check
    out. `uri` is `s3://bucket/key` or `file:///path` in the deployment's artifact store;
    readers fetch it with their own access to that store."""

    uri: str = Field(
        min_length=1, max_length=MAX_ARTIFACT_URI,
        description="Where the file is: s3://bucket/key or file:///path in the store.",
        examples=["s3://ocr-artifacts/figures/invoice-2026-0042/page-2-fig-1.png"],
    )
    media_type: str = Field(
        max_length=128, description="The file's media type.", examples=["image/png"]
    )
    bytes: int = Field(ge=0, description="Size of the stored file.")
    width_px: int = Field(ge=0, description="Image width in pixels.")
    height_px: int = Field(ge=0, description="Image height in pixels.")


class Block(ContractModel):
    """A layout block: its label (text, title, table, image, ...), text and boxes."""

    label: str = Field(
        max_length=64, description="Layout class: text, title, table, image, figure, ..."
    )
    text: str = Field(
        default="", max_length=MAX_PAGE_TEXT, description="The block's text (Markdown)."
    )
    bbox_px: Box = Field(description="x1,y1,x2,y2 in pixels of the rendered page image.")
    bbox_pdf: Box | None = Field(
        default=None, description="x1,y1,x2,y2 in PDF points (origin top-left); PDFs only."
    )
    confidence: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Recognition confidence 0-1 where the engine gives one (RapidOCR).",
    )
    artifact: Artifact | None = Field(
        default=None,
        description="Figures (label image): the stored crop; null when no store is "
        "configured or storing failed (the Markdown then says why).",
    )


class TokenCounts(ContractModel):
    prompt: int = Field(default=0, ge=0, description="Tokens in the prompt, image included.")
    output: int = Field(default=0, ge=0, description="Tokens the engine generated.")


class EngineIdentity(ContractModel):
    name: str = Field(
        max_length=64, examples=["vllm", "rapidocr"], description="Engine that ran the page."
    )
    model: str = Field(
        max_length=256, examples=["deepseek-ai/DeepSeek-OCR"], description="Model name or path."
    )
    version: str = Field(default="", max_length=64, description="Engine library version.")
    mode: str = Field(
        default="", max_length=32, examples=["gundam"],
        description="DeepSeek-OCR resolution mode; empty for engines without modes.",
    )


class PageImageInfo(ContractModel):
    width_px: int = Field(ge=0, description="Width of the image the engine saw, in pixels.")
    height_px: int = Field(ge=0, description="Height of that image, in pixels.")
    dpi: int = Field(ge=0, description="Resolution the page was rendered at.")
    width_pt: float | None = Field(
        default=None, ge=0, description="Page width in PDF points; PDFs only."
    )
    height_pt: float | None = Field(
        default=None, ge=0, description="Page height in PDF points; PDFs only."
    )
    artifact: Artifact | None = Field(
        default=None, description="The rendered page image, when the consumer stores it."
    )


class PageTimings(ContractModel):
    """Milliseconds spent on this page in each stage."""

    render_ms: float = Field(default=0.0, ge=0, description="Rendering the page image.")
    queue_ms: float = Field(default=0.0, ge=0, description="Waiting for the engine.")
    infer_ms: float = Field(default=0.0, ge=0, description="In the engine.")
    postprocess_ms: float = Field(
        default=0.0, ge=0, description="Turning engine output into Markdown, text and blocks."
    )


class PageResult(VersionedModel):
    task_id: TaskId
    page: int = Field(ge=1, description="1-based page number in the source document.")
    page_count: int = Field(ge=1, description="Pages in the source document.")
    attempt: int = Field(
        default=0, ge=0,
        description="The request's attempt: for one key, keep the result of the highest.",
    )
    status: PageStatus = Field(description="ok, or failed (see error).")
    prompt: PromptKind = Field(
        default=PromptKind.MARKDOWN, description="The request's prompt kind."
    )
    markdown: str = Field(
        default="", max_length=MAX_PAGE_TEXT, description="The page as Markdown."
    )
    text: str = Field(
        default="", max_length=MAX_PAGE_TEXT, description="The page as plain text."
    )
    raw_text: str = Field(
        default="", max_length=MAX_PAGE_TEXT,
        description="The engine's raw output, grounding tags kept (DeepSeek-OCR's "
        "<|ref|>/<|det|>), cut to the limit; for re-parsing boxes and debugging.",
    )
    blocks: Annotated[list[Block], Field(max_length=4096)] = Field(
        default_factory=list, description="Layout blocks in reading order, with boxes."
    )
    finish_reason: FinishReason = Field(
        description="stop, length (token cap hit), repetition (looped) or error."
    )
    truncated: bool = Field(default=False, description="True when the token cap cut the page.")
    error: ErrorInfo | None = Field(default=None, description="Why the page failed.")
    tokens: TokenCounts = Field(default_factory=TokenCounts, description="Token counts.")
    engine: EngineIdentity = Field(description="What produced the page.")
    image: PageImageInfo = Field(description="The rendered page image.")
    timings: PageTimings = Field(
        default_factory=PageTimings, description="Milliseconds per stage for this page."
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="The request's metadata, echoed."
    )
    produced_at: datetime = Field(description="When the result was published.")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)

    # Downstream readers size documents from page_count; a page past it would be dropped or
    # crash them, so it is refused where it is produced.
    @model_validator(mode="after")
    def _page_in_document(self) -> Self:
        if self.page > self.page_count:
            raise ValueError(f"page {self.page} is beyond page_count {self.page_count}")
        return self
