"""ocr-stream consumer: Kafka in, OCR on pages, results/progress/timing out."""

# The one version number: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"
