#!/usr/bin/env bash
# `make demo`: local stack + one consumer (engine auto: RapidOCR on a machine without a GPU),
# a generated two-page PDF submitted through Kafka, and its Markdown printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
make up
# The stack's consumer stores figures there; --out downloads them next to the Markdown.
export OCR_ARTIFACTS_URI="${OCR_ARTIFACTS_URI-.run/artifacts}"
mkdir -p .run/demo
.venv/bin/python deploy/local/sample_document.py .run/demo/report.pdf >/dev/null
echo "== submitting .run/demo/report.pdf through Kafka (ocr.requests)"
.venv/bin/ocr-submit --wait --timeout 600 --out .run/demo/out .run/demo/report.pdf
echo "== Markdown of .run/demo/report.pdf (.run/demo/out/report.md):"
cat .run/demo/out/report.md
echo
echo "== The stack and consumer keep running; stop them with: make down"
