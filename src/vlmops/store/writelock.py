"""A lock that queues the prediction log's writers of one SQLite file, across threads and processes.

SQLite lets one writer in at a time; another that finds the write lock taken sleeps in its busy handler
(1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms ...) and tries again, so it usually enters well after
the lock came free. With two server processes committing groups of log rows every few milliseconds,
each collision added that sleep to every request of the group (bench/RESULTS.md, issue 15). Writers that
first take an `flock` on a sidecar file instead wait in the kernel and enter the moment the holder leaves.
Writers that do not take it (keys, feedback, the CLI) still meet SQLite's busy handler as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

SUFFIX = "-writer-lock"


class WriterLock:
    """Exclusive `flock` on `<database>-writer-lock`, held around each transaction of the log's writers."""

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{database}{SUFFIX}")
        self._thread_lock = threading.Lock()  # flock is per open file: threads of one process queue here
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (waiting, without polling, for any other writer to leave)."""
        with self._thread_lock:
            fd = self._open()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        if fcntl is None:
            return None
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:  # a read-only folder: SQLite's busy handler alone
                return None
        return self._fd

    def close(self) -> None:
        """Close the lock file (the file itself stays: another process may hold it open)."""
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
