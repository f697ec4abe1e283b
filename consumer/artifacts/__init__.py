"""The artifact store (figure crops, page images) and what the runner stores in it."""
