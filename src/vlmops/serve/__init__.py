"""The HTTP gateway: `vlmops serve` (FastAPI, dynamic batching, API keys, limits, a durable log)."""
