"""Input limits and per-key rate limiting."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """What the gateway accepts; everything beyond is refused with a 4xx that names the limit."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16_000_000  # decompression-bomb guard, checked before decoding
    max_images: int = 32  # per request
    max_texts: int = 256  # per /v1/embeddings request
    max_text_chars: int = 2_000
    max_labels: int = 1_000
    formats: frozenset[str] = field(default_factory=lambda: frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"}))


class TokenBucket:
    """Classic token bucket: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens, self._last = float(burst), clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens: 0.0 when granted, else the seconds until they would be available."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per API key id: in this process, or shared by the server's worker processes."""

    def __init__(self, shared=None) -> None:
        self.shared = shared  # a SharedTokenBuckets with --workers N, so a key's rate counts across them
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, rate: float, burst: int) -> float:
        """0.0 if the request may proceed, else the Retry-After in seconds."""
        if self.shared is not None:
            return self.shared.take(f"requests:{key_id}", rate, burst)
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
                bucket = self._buckets[key_id] = TokenBucket(rate, burst)
        return bucket.take()
