"""Turning raw engine output into Markdown, plain text and located blocks."""
