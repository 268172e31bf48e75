"""Admission: what one request may ask of the model, counted from the moment it arrived.

A `Ticket` is issued when a request is admitted and returned when it ends. It carries the request's
owner (its API key), its deadline (arrival + timeout, so body reading, decoding, queueing and logging
all count) and what it holds: model items (images and texts not in the cache) and decoded pixels.

- requests in flight are capped (`queue`); a request that has already spent a quarter of its time
  before it could be admitted, or that would wait longer than a quarter of it behind the requests in
  flight (their number over the completion rate measured while the server was saturated: Little's
  law), is refused at once (503) rather than answered late;
- each key has a budget of model items per second (429 with Retry-After when spent) and a cap on the
  items it may have queued or running at once, so one key cannot occupy the model;
- decoded pixels in flight are budgeted across all requests (503 when the budget is spent).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from vlmops.errors import StoreError
from vlmops.serve.errors import ApiError
from vlmops.serve.limits import TokenBucket

# The owner (API key id, or client address) of the request the current task serves, for code below the
# route that queues model work without a Ticket (the chat backends): batches take one item per owner in turn.
REQUEST_OWNER: ContextVar[str | None] = ContextVar("vlmops_request_owner", default=None)
ADMIT_SHARE = 0.25  # refuse a request expected to spend more than this share of its time waiting
RATE_WINDOW_S = 0.5  # completions are counted over windows this long


@dataclass(eq=False)
class Ticket:
    """One admitted request: owner, deadline, and the model items it holds."""

    owner: str
    arrival: float  # perf_counter time the request arrived
    deadline: float  # perf_counter time its answer is due
    admission: Admission
    budgeted: bool = True  # False without API keys: no per-key item budget
    items: int = 0
    futures: list[asyncio.Future] = field(default_factory=list)
    watch: Callable[[], Awaitable[None]] | None = None  # returns when the client has gone away

    def remaining(self) -> float:
        """Seconds left before the deadline (negative when past)."""
        return self.deadline - time.perf_counter()

    def abandon(self) -> None:
        """The caller is gone: cancel every model item still waiting."""
        for future in self.futures:
            future.cancel()


def overloaded(message: str, retry_after: float = 1.0) -> ApiError:
    """A 503 that asks the client to come back later."""
    return ApiError(503, "overloaded", message, {"Retry-After": str(max(1, math.ceil(retry_after)))})


class Admission:
    """Counters behind tickets: requests in flight, per-key items and budgets, pixels being decoded."""

    def __init__(
        self,
        max_in_flight: int,
        timeout_s: float,
        key_items_per_s: float,
        key_items_in_flight: int,
        pixels_in_flight: int,
        saturated: int = 64,
        shared=None,
    ) -> None:
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s
        self.key_items_per_s, self.key_items_in_flight = key_items_per_s, key_items_in_flight
        self.max_pixels_in_flight = pixels_in_flight
        self.in_flight = 0
        self.saturated = saturated  # this many requests in flight: a queue has formed
        self.capacity = 0.0  # requests/s completed while saturated (0 until measured)
        self._window = (time.perf_counter(), 0, max_in_flight)  # start, completions, least in flight
        self.pixels = 0  # decoded pixels in flight (decoder threads change it: under the lock)
        self._items: defaultdict[str, int] = defaultdict(int)
        self._buckets: dict[str, TokenBucket] = {}
        self.shared = shared  # SharedTokenBuckets: a key's item budget counts across worker processes
        self._lock = threading.Lock()

    def admit(self, owner: str, arrival: float, budgeted: bool = True) -> Ticket:
        """A ticket for a request that arrived at `arrival`, or a 503 when it cannot be served in time."""
        now = time.perf_counter()
        if self.in_flight >= self.max_in_flight:
            raise overloaded(f"the server is at capacity ({self.in_flight} requests in flight); retry later")
        if now - arrival > ADMIT_SHARE * self.timeout_s:
            raise overloaded(
                f"the request waited {now - arrival:.1f} s before the server could take it "
                f"(timeout {self.timeout_s:g} s); retry shortly"
            )
        wait = self.expected_wait()
        if now - arrival + wait > ADMIT_SHARE * self.timeout_s:
            raise overloaded(
                f"{self.in_flight} requests are ahead of this one (about {wait:.1f} s at "
                f"{self.capacity:.0f} requests/s), more than it can wait (timeout {self.timeout_s:g} s); "
                "retry shortly",
                wait,
            )
        self.in_flight += 1
        return Ticket(owner, arrival, arrival + self.timeout_s, self, budgeted)

    def expected_wait(self) -> float:
        """Seconds a new request would wait behind those in flight; 0 while no queue has formed."""
        if self.in_flight < self.saturated or not self.capacity:
            return 0.0
        return self.in_flight / self.capacity

    def release(self, ticket: Ticket) -> None:
        """The request has ended: its slot and model items return."""
        self._count_completion()
        self.in_flight -= 1
        ticket.abandon()  # nothing it queued may still reach the model
        self._return_items(ticket, ticket.items)

    def _count_completion(self) -> None:
        """Measure the completion rate over windows in which the server stayed saturated."""
        start, done, least = self._window
        done, least = done + 1, min(least, self.in_flight)
        now = time.perf_counter()
        if now - start < RATE_WINDOW_S:
            self._window = (start, done, least)
            return
        if least >= self.saturated:
            rate = done / (now - start)
            self.capacity = rate if not self.capacity else 0.7 * self.capacity + 0.3 * rate
        self._window = (now, 0, self.in_flight)

    def take_items(self, ticket: Ticket, n: int) -> None:
        """Charge `n` model items to the ticket's key: 429 over its rate or its in-flight cap."""
        owner = ticket.owner
        if self._items[owner] + n > self.key_items_in_flight:
            raise ApiError(
                429,
                "too_much_work_in_flight",
                f"key {owner} has {self._items[owner]} images/texts waiting for the model and asked for "
                f"{n} more; at most {self.key_items_in_flight} at once: wait for earlier answers",
                {"Retry-After": "1"},
            )
        wait = self._take_budget(owner, n) if ticket.budgeted else 0.0
        if wait > 0:
            raise ApiError(
                429,
                "model_budget_spent",
                f"key {owner} is over its budget of {self.key_items_per_s:g} images and new texts per "
                f"second; this request needs {n}",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        self._items[owner] += n
        ticket.items += n

    def _take_budget(self, owner: str, n: int) -> float:
        """Take `n` items from the key's budget; the seconds until they would be there (0.0: taken)."""
        if self.shared is not None:
            try:
                return self.shared.take(f"items:{owner}", self.key_items_per_s, self.key_items_in_flight, n)
            except StoreError as exc:  # the database of replica-shared budgets (Postgres) is down
                raise overloaded(f"{exc}; retry shortly") from exc
        bucket = self._buckets.get(owner)
        if bucket is None:
            bucket = self._buckets[owner] = TokenBucket(self.key_items_per_s, self.key_items_in_flight)
        return bucket.take(n)

    def return_items(self, ticket: Ticket, n: int) -> None:
        """`n` of the ticket's items have left the model."""
        self._return_items(ticket, min(n, ticket.items))

    def _return_items(self, ticket: Ticket, n: int) -> None:
        ticket.items -= n
        left = self._items[ticket.owner] - n
        if left > 0:
            self._items[ticket.owner] = left
        else:
            self._items.pop(ticket.owner, None)

    def reserve_pixels(self, n: int) -> None:
        """Called by a decoder before it decodes `n` pixels: 503 when the pixel budget is spent."""
        with self._lock:
            if self.pixels + n > self.max_pixels_in_flight:
                raise overloaded(
                    f"the server is decoding {self.pixels} pixels and may hold {self.max_pixels_in_flight}; "
                    f"this image has {n}: retry shortly"
                )
            self.pixels += n

    def release_pixels(self, n: int) -> None:
        """A decoder's buffers for `n` pixels are gone."""
        with self._lock:
            self.pixels -= n
