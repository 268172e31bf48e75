"""Dynamic micro-batching: requests wait in a bounded queue and run through the model together.

A batch starts at once when the model is idle: a lone request never waits for company it may not get.
While the model is busy (running this batcher's previous batch, or another batcher's that shares its
thread through one `ModelSlot`), the next batch fills, and closes when it holds `max_batch` items, when
the model frees up, or `max_wait_ms` after its first item arrived, whichever comes first; so under
load batches grow with the load without any fixed wait. A full queue refuses new items at once
(`Overloaded`, which the gateway answers with 503 and Retry-After) instead of letting latency grow
without bound.

Fairness and isolation:
- items carry an owner (the API key); batches are filled round-robin across owners, so a key with
  thousands of queued items delays another key's item by at most one batch, not by its whole backlog;
- items whose caller gave up (a timed-out request, a client that went away) or whose deadline passed
  are dropped before they reach the model, and stop counting against the queue at once;
- when the model fails on a batch, its items are retried one by one, so one bad item fails only its
  own caller instead of every request that shared its batch;
- with `fill_when_idle_ms` (generation, where a batch runs for hundreds of milliseconds), a batch waits
  that long for company even while the model is idle: the answers of a batch come back together, and
  their clients' next requests arrive over the next few milliseconds, not all before the model frees;
- with `cost` and `max_cost`, a batch also closes before `max_cost` would be passed, counting every item
  at the cost of the dearest one (the model pads a batch to its longest text), so a batch of long texts
  cannot hold the model thread for seconds while other requests' images wait behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """The queue is full; the caller should shed the request."""


@dataclass(eq=False)
class _Item(Generic[T]):
    value: T | None
    future: asyncio.Future
    owner: Hashable
    deadline: float | None  # perf_counter time after which nobody waits for the result
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True


class ModelSlot:
    """Whether a model (one thread, shared by the batchers that feed it) is running a batch right now.

    Batchers waiting to fill a batch while the model is busy are woken the moment it frees up.
    """

    def __init__(self) -> None:
        self.running = 0
        self._listeners: list[asyncio.Event] = []

    @property
    def busy(self) -> bool:
        """True while a batch runs."""
        return self.running > 0

    def listen(self, event: asyncio.Event) -> None:
        """Set `event` whenever the model frees up."""
        self._listeners.append(event)

    def enter(self) -> None:
        """A batch starts."""
        self.running += 1

    def leave(self) -> None:
        """A batch ended; wake the batchers that wait for the model."""
        self.running -= 1
        if not self.running:
            for event in self._listeners:
                event.set()


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
        cost: Callable[[T], float] | None = None,
        max_cost: float | None = None,
        slot: ModelSlot | None = None,
        fill_when_idle_ms: float = 0.0,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_ms / 1000.0, queue_size
        self.fill_when_idle_s = fill_when_idle_ms / 1000.0
        self.on_batch = on_batch
        self.cost, self.max_cost = cost, max_cost
        self.slot = slot if slot is not None else ModelSlot()  # shared by batchers on one model thread
        self._queues: dict[Hashable, deque[_Item[T]]] = {}  # per owner; dict order = round-robin order
        self._live = 0  # queued items whose caller still waits
        self._busy = False
        self._running = 0  # items in the batch the model is running
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.seconds_per_item = 0.0  # moving average of the time per item (0 until measured)
        self._last: tuple[float, int, bool] | None = None  # previous batch: start, size, backlog left

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch) whose caller still waits."""
        return self._live

    def expected_wait(self, extra: int = 0) -> float:
        """Seconds until `extra` more items would be done, from the measured model time per item."""
        return (self._live + extra + self._running) * self.seconds_per_item

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self.slot.listen(self._wakeup)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued item, then stop."""
        if self._task is not None:
            while self._live or self._busy:
                await asyncio.sleep(0.01)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(self, value: T, owner: Hashable = None, deadline: float | None = None) -> asyncio.Future:
        """Queue one item; the future resolves to its result. Raises Overloaded when the queue is full."""
        if self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._live >= self.queue_size:
            raise Overloaded(f"queue full ({self.queue_size} waiting)")
        future = asyncio.get_running_loop().create_future()
        item = _Item(value, future, owner, deadline)
        future.add_done_callback(lambda _f, item=item: self._forget(item))
        self._queues.setdefault(owner, deque()).append(item)
        self._live += 1
        self._wakeup.set()
        return future

    def _forget(self, item: _Item[T]) -> None:
        """A queued item's caller gave up: it stops counting and lets go of its value at once."""
        if item.queued:
            item.queued = False
            item.value = None
            self._live -= 1

    def _take(self, batch: list[_Item[T]]) -> None:
        """Move live items into `batch`, one per owner in turn, until it is full or nothing is left."""
        now = time.perf_counter()
        dearest = max((self._cost(i) for i in batch), default=0.0)
        while len(batch) < self.max_batch and self._live and self._queues:
            for owner in list(self._queues):
                queue = self._queues.pop(owner)
                full = False
                while queue:
                    item = queue[0]
                    if not item.queued:  # cancelled while waiting
                        queue.popleft()
                        continue
                    if item.deadline is not None and item.deadline < now:
                        queue.popleft()
                        item.queued = False
                        self._live -= 1
                        item.future.cancel()  # its request has timed out already
                        continue
                    cost = max(dearest, self._cost(item))
                    if batch and self.max_cost is not None and cost * (len(batch) + 1) > self.max_cost:
                        full = True
                        break
                    queue.popleft()
                    item.queued = False
                    self._live -= 1
                    batch.append(item)
                    dearest = cost
                    break
                if queue:
                    self._queues[owner] = queue  # back of the line
                if full or len(batch) >= self.max_batch:
                    return

    def _cost(self, item: _Item[T]) -> float:
        return 1.0 if self.cost is None else self.cost(item.value)

    async def _collect(self) -> list[_Item[T]]:
        """The next batch: at once while the model is idle, else once full, the model frees up or the
        window since its first item closes."""
        assert self._wakeup is not None
        while not self._live:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Item[T]] = []
        while True:
            self._take(batch)
            if not batch or len(batch) >= self.max_batch or self._full(batch):
                return batch
            if not self.slot.busy and not self.fill_when_idle_s:
                return batch
            window = self.max_wait_s if self.slot.busy else self.fill_when_idle_s
            remaining = min(i.enqueued for i in batch) + window - time.perf_counter()
            if remaining <= 0:
                return batch
            self._wakeup.clear()  # set by a new item or by the model freeing up
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                self._take(batch)
                return batch

    def _full(self, batch: list[_Item[T]]) -> bool:
        """True when the next item (costing at least as much as the dearest so far) would not fit."""
        if self.max_cost is None or not batch:
            return False
        return max(self._cost(i) for i in batch) * (len(batch) + 1) > self.max_cost

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            self._busy, self._running = True, len(live)
            try:
                start = time.perf_counter()
                if self.on_batch is not None:
                    self.on_batch(len(live), [start - item.enqueued for item in live])
                previous, self._last = self._last, (start, len(live), self._live > 0)
                if previous is not None and previous[2]:  # a backlog all along: the full cycle counts
                    self._measure((start - previous[0]) / previous[1])
                await self._run_batch(live)
                if not self._live:  # no backlog: the model time alone
                    self._measure((time.perf_counter() - start) / len(live))
            finally:
                self._busy, self._running = False, 0

    def _measure(self, per_item: float) -> None:
        """Fold one sample of seconds per item (model time, plus the loop's lag under a backlog)."""
        old = self.seconds_per_item
        self.seconds_per_item = per_item if not old else 0.8 * old + 0.2 * per_item

    async def _run_batch(self, live: list[_Item[T]]) -> None:
        self.slot.enter()
        try:
            await self._call(live)
        finally:
            self.slot.leave()

    async def _call(self, live: list[_Item[T]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.fn, [i.value for i in live])
        except Exception as exc:
            if len(live) == 1:
                _settle(live[0].future, error=exc)
                return
            for item in live:  # one bad item must not fail its neighbours: retry each alone
                if item.future.done():
                    continue
                try:
                    (result,) = await loop.run_in_executor(self.executor, self.fn, [item.value])
                except Exception as item_exc:
                    _settle(item.future, error=item_exc)
                else:
                    _settle(item.future, result)
        else:
            for item, result in zip(live, results, strict=True):
                _settle(item.future, result)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
