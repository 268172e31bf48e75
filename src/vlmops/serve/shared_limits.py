"""Token buckets shared by the worker processes of one server, so a key's rate is the key's, not per process.

With ``--workers N`` every process would otherwise keep its own buckets, and a key spread over N
connections would get N times its rate. The buckets live in a small file that every worker maps into
memory (`vlmops serve` creates it next to the Prometheus multiprocess files and removes it at exit); a
take locks the file (flock) for a few microseconds. Slots are found by a 64-bit hash of the bucket name
with linear probing; when every probed slot is taken, the least recently used one is reused (a fresh,
full bucket: the only error is in the client's favour, and needs more than `PROBES` live names on
one probe run).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path

SLOTS = 8192
PROBES = 32
_RECORD = struct.Struct("<Qdd")  # name hash (0 = free), tokens, last refill (CLOCK_MONOTONIC seconds)


class SharedTokenBuckets:
    """Named token buckets in one file shared by processes; `take` answers as `TokenBucket.take` does."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        size = SLOTS * _RECORD.size
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < size:  # the first process sizes it (zeros: every slot free)
                os.ftruncate(self._fd, size)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)
        self._lock = threading.Lock()  # flock does not exclude threads of one process

    def take(self, name: str, rate: float, burst: float, n: float = 1.0) -> float:
        """Take `n` tokens from bucket `name`: 0.0 when granted, else the seconds until they would be."""
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()  # one clock for every process of the machine
                offset, tokens, last = self._find(key, burst, now)
                tokens = min(burst, tokens + max(0.0, now - last) * rate)
                wait = 0.0 if tokens >= n else (n - tokens) / rate
                if wait == 0.0:
                    tokens -= n
                _RECORD.pack_into(self._map, offset, key, tokens, now)
                return wait
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _find(self, key: int, burst: float, now: float) -> tuple[int, float, float]:
        """(offset, tokens, last refill) of the bucket of `key`; a new bucket starts full."""
        start = key % SLOTS
        oldest, oldest_last = None, float("inf")
        for probe in range(PROBES):
            offset = ((start + probe) % SLOTS) * _RECORD.size
            found, tokens, last = _RECORD.unpack_from(self._map, offset)
            if found == key:
                return offset, tokens, last
            if found == 0:
                return offset, burst, now
            if last < oldest_last:
                oldest, oldest_last = offset, last
        assert oldest is not None
        return oldest, burst, now

    def close(self) -> None:
        """Unmap and close the file (it stays for the other processes)."""
        self._map.close()
        os.close(self._fd)
