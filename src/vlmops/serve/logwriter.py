"""Group commit of prediction-log rows from the event loop to the database.

`await writer.write(row)` returns once the row is committed. A single writer thread takes every row
waiting at that moment and commits them in one transaction, so an fsync is shared by a whole batch of
requests instead of paid per request. If the database fails, the waiting requests get the error (the
gateway answers 503): a prediction is never returned without its log row.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable

from vlmops.store.log import PredictionLog, PredictionRow

MAX_GROUP = 512
_STOP = object()


class LogWriter:
    """A background thread that commits PredictionRows in groups."""

    def __init__(self, log: PredictionLog, on_commit: Callable[[int, float], None] | None = None) -> None:
        self.log = log
        self.on_commit = on_commit  # called with (rows, seconds) after each commit, for metrics
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vlmops-log-writer", daemon=True)
        self._thread.start()

    async def write(self, row: PredictionRow) -> None:
        """Commit one row (together with whatever else is waiting); raises if the database fails."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((row, future, loop))
        await future

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            group = [self._queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(entry is _STOP for entry in group)
            entries = [entry for entry in group if entry is not _STOP]
            if not entries:
                continue
            start = time.perf_counter()
            try:
                self.log.write(row for row, _, _ in entries)
                error = None
            except Exception as exc:  # surfaced to every waiting request
                error = exc
            if error is None and self.on_commit is not None:
                self.on_commit(len(entries), time.perf_counter() - start)
            for _, future, loop in entries:
                loop.call_soon_threadsafe(_settle, future, error)


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
