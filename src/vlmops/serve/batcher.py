"""Dynamic micro-batching: requests wait in a bounded queue and run through the model together.

A batch closes when it holds `max_batch` items or `max_wait_ms` after its first item arrived, whichever
comes first; while the model runs one batch the next one fills, so under load batches form without
waiting at all. A full queue refuses new items at once (`Overloaded`, which the gateway answers with
503 and Retry-After) instead of letting latency grow without bound. Items whose caller gave up (a
timed-out request) are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """The queue is full; the caller should shed the request."""


@dataclass
class _Item(Generic[T]):
    value: T
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T]):
    """Collects single items into batches and runs `fn(list of items) -> sequence of results` on them."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[Any]],
        executor: Executor,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        queue_size: int = 512,
        on_batch: Callable[[int, Sequence[float]], None] | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_ms / 1000.0, queue_size
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item[T]] | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued item, then stop."""
        if self._queue is not None and self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, value: T) -> asyncio.Future:
        """Queue one item; the future resolves to its result. Raises Overloaded when the queue is full."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(value, future))
        except asyncio.QueueFull:
            raise Overloaded(f"queue full ({self.queue_size} waiting)") from None
        return future

    async def _collect(self) -> list[_Item[T]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]
            try:
                if live:
                    now = time.perf_counter()
                    if self.on_batch is not None:
                        self.on_batch(len(live), [now - item.enqueued for item in live])
                    try:
                        results = await loop.run_in_executor(self.executor, self.fn, [i.value for i in live])
                    except Exception as exc:  # the model failed: every caller in the batch gets the error
                        for item in live:
                            if not item.future.done():
                                item.future.set_exception(exc)
                    else:
                        for item, result in zip(live, results, strict=True):
                            if not item.future.done():
                                item.future.set_result(result)
            finally:
                for _ in batch:
                    self._queue.task_done()
