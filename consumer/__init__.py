"""ocr-stream consumer: Kafka in, OCR on pages, results/progress/timing out."""

__version__ = "0.1.0"
