"""Group commit of prediction-log rows from the event loop to the database.

`await writer.write(row)` returns once the row is committed. A single writer thread takes every row
waiting at that moment and commits them in one transaction, so a commit is shared by a whole batch of
requests instead of paid per request. If the database fails, the waiting requests get the error (the
gateway answers 503): a prediction is never returned without its log row.

With a log in ``group`` sync mode (`vlmops.store.log`), a commit is acknowledged once SQLite has
written it (a killed server loses nothing) and a second thread fsyncs the log for every commit since
its last fsync, at most once per `sync_interval_s`: at low load a request no longer waits for the disk,
and at high load one fsync covers many groups.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable

from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

MAX_GROUP = 512
SYNC_INTERVAL_S = 0.05  # a power cut may take the rows acknowledged in about the last 50 ms (group mode)
_STOP = object()
logger = logging.getLogger("vlmops.serve")


class LogWriter:
    """A background thread that commits PredictionRows in groups (and one that fsyncs them)."""

    def __init__(
        self,
        log: PredictionLog,
        on_commit: Callable[[int, float], None] | None = None,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.log = log
        self.on_commit = on_commit  # called with (rows, seconds) after each commit, for metrics
        self.sync_interval_s = sync_interval_s
        self.syncs = 0  # fsyncs done by the sync thread
        self._queue: queue.Queue = queue.Queue()
        self._dirty = threading.Event()  # commits since the last fsync
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmops-log-writer", daemon=True)
        self._thread.start()
        self._syncer = None
        if log.wal_path is not None:
            self._syncer = threading.Thread(target=self._sync_loop, name="vlmops-log-sync", daemon=True)
            self._syncer.start()

    async def write(self, row: PredictionRow, chat: ChatExchange | None = None) -> None:
        """Commit one row, with its chat exchange if any (together with whatever else is waiting);
        raises if the database fails."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((row if chat is None else (row, chat), future, loop))
        await future

    def close(self) -> None:
        """Commit what is queued, fsync it, then stop the threads."""
        self._queue.put(_STOP)
        self._thread.join()
        self._stopping.set()
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join()

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
                rows = [row for row, _, _ in entries]
                self.log.write(r for r in rows if isinstance(r, PredictionRow))
                self.log.write_chat(r for r in rows if isinstance(r, tuple))
                error = None
            except Exception as exc:  # surfaced to every waiting request
                error = exc
            if error is None:
                self._dirty.set()
                if self.on_commit is not None:
                    self.on_commit(len(entries), time.perf_counter() - start)
            waiting: dict = {}  # one wake-up of each event loop per group, not one per row
            for _, future, loop in entries:
                waiting.setdefault(loop, []).append(future)
            for loop, futures in waiting.items():
                loop.call_soon_threadsafe(_settle_all, futures, error)

    def _sync_loop(self) -> None:
        """fsync the log whenever rows were committed since the last fsync, at most once per interval."""
        while True:
            self._dirty.wait()
            self._dirty.clear()
            stopping = self._stopping.is_set()
            try:
                self.log.sync()
                self.syncs += 1
            except OSError:  # the rows are committed; only a power cut before the next fsync loses them
                logger.exception("fsync of the prediction log failed")
            if stopping:
                return
            self._stopping.wait(self.sync_interval_s)


def _settle_all(futures: list[asyncio.Future], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
