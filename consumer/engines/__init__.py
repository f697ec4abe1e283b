"""OCR engines behind one interface: vLLM (DeepSeek-OCR, GPU) and RapidOCR (CPU)."""
