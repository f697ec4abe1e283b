"""ocr-stream consumer: Kafka in, OCR on pages, results/progress/timing out."""

from __future__ import annotations

import argparse

# The one version number: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version` on a command: every tool prints its name and the package version."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s (ocr-stream {__version__})"
    )
