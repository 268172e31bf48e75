"""A lean asyncio HTTP/1.1 load generator for loopback servers (benchmarks and reliability tests).

Each virtual client holds one keep-alive connection and sends the same pre-built request bytes in a
closed loop, reading only the status line, headers and Content-Length body. That costs far less CPU
per request than a general-purpose client, which matters when client and server share two cores.
Loops are bounded by a request count and a duration, and the target must be a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """Outcome of one load run."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)  # of 200 answers, when collected
    errors: int = 0  # connection failures (refused, reset)
    abandoned: int = 0  # open loop: still unanswered when the run's grace time ended
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        """Number of 200 answers."""
        return self.statuses.get(200, 0)

    def summary(self) -> dict:
        """Throughput and latency percentiles of the 200 answers."""
        lat = np.asarray(self.latencies_s) * 1000
        return {
            "requests": sum(self.statuses.values()),
            "ok": self.ok,
            "per_s": self.ok / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "abandoned": self.abandoned,
        }


def build_request(
    host: str, port: int, path: str, body: dict, headers: dict[str, str] | None = None
) -> bytes:
    """HTTP/1.1 POST with a JSON body, ready to send repeatedly."""
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _check_loopback(host: str) -> None:
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        raise ValueError(f"load generation is for loopback servers only, not {host}")


async def _read_response(reader: asyncio.StreamReader, want_id: bool) -> tuple[int, str | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, request_id = 0, None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name == "content-length":
            length = int(value)
        elif want_id and name == "x-request-id":
            request_id = value.strip()
    if length:
        await reader.readexactly(length)
    return status, request_id


async def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    collect_ids: bool = False,
) -> LoadResult:
    """Drive `concurrency` closed-loop clients until `max_requests` are sent or `max_seconds` pass."""
    _check_loopback(host)
    result = LoadResult()
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal sent
        reader = writer = None
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                start = time.perf_counter()
                writer.write(request)
                status, request_id = await _read_response(reader, collect_ids)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(time.perf_counter() - start)
                if request_id:
                    result.request_ids.append(request_id)
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


async def run_open_loop(
    host: str,
    port: int,
    request: bytes,
    rate_per_s: float,
    seconds: float,
    max_connections: int = 1024,
    grace_s: float = 60.0,
) -> LoadResult:
    """Send requests at a fixed rate whatever the server's speed (an open loop, unlike `run_load`).

    Request i is due at `i / rate_per_s`; its latency counts from that moment, so time spent waiting
    for a free connection (at most `max_connections` are open) counts too, as it would for real users.
    A request whose reused connection turns out closed by the server (an idle keep-alive timeout) is
    sent again on a new one, as HTTP clients do. Requests still unanswered `grace_s` after the last one
    was due are abandoned (counted apart).
    """
    _check_loopback(host)
    result = LoadResult()
    idle: list = []
    slots = asyncio.Semaphore(max_connections)

    async def one(due: float) -> None:
        async with slots:
            conn = idle.pop() if idle else None
            for attempt in (1, 2):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    reader, writer = conn
                    writer.write(request)
                    status, _ = await _read_response(reader, False)
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError) as exc:
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    stale = isinstance(exc, ConnectionResetError | BrokenPipeError) or (
                        isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
                    )
                    if reused and stale and attempt == 1:  # the server closed an idle keep-alive connection
                        continue
                    result.errors += 1
                    return
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(time.perf_counter() - due)
            idle.append(conn)

    tasks = []
    begin = time.perf_counter()
    for i in range(int(rate_per_s * seconds)):
        due = begin + i / rate_per_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    _, late = await asyncio.wait(tasks, timeout=grace_s)
    for task in late:
        task.cancel()
    result.abandoned = len(late)
    result.seconds = time.perf_counter() - begin
    for _, writer in idle:
        writer.close()
    return result
